//! Bounds-checked header parsing. Policy (what to do with a packet) lives elsewhere: this module
//! only answers "what is this frame" or "why could it not be read".

use core::mem::size_of;

use aya_ebpf::programs::{TcContext, XdpContext};
use splitter_common::{
    DestKey, ParseOutcome,
    counters::{IPPROTO_TCP, IPPROTO_UDP},
    l4::{DIR_FORWARD, FlowKey, FlowKey4, FlowValue},
};

const ETH_HDR_LEN: usize = 14;
const VLAN_HDR_LEN: usize = 4;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPV4_MIN_HDR_LEN: usize = 20;
const IPV6_HDR_LEN: usize = 40;
const TCP_MIN_HDR_LEN: usize = 20;
const UDP_HDR_LEN: usize = 8;
pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_ICMPV6: u8 = 58;
const IPV4_FRAG_OFFSET_MASK: u16 = 0x1fff;
const MAX_HEADER_OFFSET: usize = 128;
const MAX_HEADER_LEN: usize = 64;

/// A frame the parser can read: XDP and TC contexts both expose direct packet access.
pub trait Frame {
    fn start(&self) -> usize;
    fn end(&self) -> usize;
}

impl Frame for XdpContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn start(&self) -> usize {
        self.data()
    }
    #[inline(always)]
    fn end(&self) -> usize {
        self.data_end()
    }
}

pub const TCP_FLAG_FIN: u8 = 0x01;
pub const TCP_FLAG_RST: u8 = 0x04;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_ACK: u8 = 0x10;

/// What the data path needs to know about a TCP/UDP packet. It lives in a per-CPU scratch map
/// (`maps::SCRATCH`), not on the stack: the 512-byte BPF stack cannot hold it next to the
/// conntrack keys and values.
#[repr(C, align(8))]
pub struct PacketMeta {
    /// The packet's 5-tuple, already in conntrack key form (`dir` = forward), so the
    /// established path looks it up in place instead of copying 40 bytes to the stack.
    pub key: FlowKey,
    /// For IPv4 packets, the same tuple as `CONNTRACK_V4` keys it (unused for IPv6).
    pub key4: FlowKey4,
    /// TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
    pub family: Family,
    pub _pad: [u8; 2],
    /// Offset of the IP header from the start of the frame.
    pub l3_offset: u32,
    /// IPv4 header length in bytes (40 for IPv6).
    pub l3_len: u32,
    /// Offset of the TCP/UDP header from the start of the frame.
    pub l4_offset: u32,
    /// Where this packet goes once a backend is chosen: the conntrack entry of an established
    /// flow, copied, or the one a new flow will insert. Filled by `select`, read by `rewrite`.
    pub flow: FlowValue,
    /// The reply entry a new SNAT flow claims (`snat`), kept here rather than on the stack.
    pub reply_key: FlowKey,
    pub reply_key4: FlowKey4,
    pub reply: FlowValue,
    /// The flow hash `select::from_table` chose by; where the SNAT port search starts.
    pub hash: u32,
    /// TCP sequence and acknowledgment numbers, host byte order (0 for UDP): how a half-open
    /// flow is confirmed (`half_open`).
    pub tcp_seq: u32,
    pub tcp_ack: u32,
    pub _pad2: u32,
}

#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4 = 4,
    V6 = 6,
}

impl PacketMeta {
    #[inline(always)]
    pub fn dest_key(&self) -> DestKey {
        DestKey::v6(self.key.dst, self.key.dst_port, self.key.proto)
    }
}

/// A pointer to `len` readable bytes at `offset`, or `Truncated`. Every read goes through this
/// check so the verifier sees a bound for each access.
#[inline(always)]
pub fn bytes_at<F: Frame>(ctx: &F, offset: usize, len: usize) -> Result<*mut u8, ParseOutcome> {
    // Offsets read back from the scratch map are unknown scalars to the verifier: bound them
    // before any pointer arithmetic. No header we touch starts beyond byte 128.
    if offset > MAX_HEADER_OFFSET || len > MAX_HEADER_LEN {
        return Err(ParseOutcome::Truncated);
    }
    let start = ctx.start();
    let end = ctx.end();
    if start + offset + len > end {
        return Err(ParseOutcome::Truncated);
    }
    Ok((start + offset) as *mut u8)
}

#[inline(always)]
fn read_be16<F: Frame>(ctx: &F, offset: usize) -> Result<u16, ParseOutcome> {
    let p = bytes_at(ctx, offset, size_of::<u16>())?;
    // SAFETY: bytes_at checked that both bytes lie inside the frame.
    Ok(u16::from_be_bytes(unsafe { [*p, *p.add(1)] }))
}

/// Parses Ethernet, at most one VLAN tag (802.1Q or 802.1ad), IPv4 or IPv6, and TCP, UDP,
/// ICMP or ICMPv6. ICMP packets parse with ports 0: callers that only deal with TCP and UDP
/// check `meta.key.proto`; what an ICMP message says is `icmp`'s business.
#[inline(always)]
pub fn parse_frame<F: Frame>(ctx: &F, meta: &mut PacketMeta) -> Result<(), ParseOutcome> {
    let mut ether_type = read_be16(ctx, 12)?;
    let mut l3_offset = ETH_HDR_LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        ether_type = read_be16(ctx, ETH_HDR_LEN + 2)?;
        l3_offset += VLAN_HDR_LEN;
    }
    match ether_type {
        ETH_P_IPV4 => parse_ipv4(ctx, l3_offset, meta),
        ETH_P_IPV6 => parse_ipv6(ctx, l3_offset, meta),
        _ => Err(ParseOutcome::NonIp),
    }
}

#[inline(always)]
fn parse_ipv4<F: Frame>(ctx: &F, l3: usize, meta: &mut PacketMeta) -> Result<(), ParseOutcome> {
    let p = bytes_at(ctx, l3, IPV4_MIN_HDR_LEN)?;
    // SAFETY: the fixed 20-byte header is inside the frame (checked above).
    let (version_ihl, frag, proto) =
        unsafe { (*p, u16::from_be_bytes([*p.add(6), *p.add(7)]), *p.add(9)) };
    if version_ihl >> 4 != 4 {
        return Err(ParseOutcome::Malformed);
    }
    let hdr_len = ((version_ihl & 0x0f) as usize) * 4;
    if hdr_len < IPV4_MIN_HDR_LEN {
        return Err(ParseOutcome::Malformed);
    }
    // Options are skipped by length; the whole header must still be present.
    bytes_at(ctx, l3, hdr_len)?;
    if frag & IPV4_FRAG_OFFSET_MASK != 0 {
        return Err(ParseOutcome::Fragment);
    }
    let l4 = l3 + hdr_len;
    parse_l4(ctx, l4, proto, meta)?;
    // v4-mapped (::ffff:a.b.c.d), written in place. The 12-byte prefix is stored as one u64 and
    // one u32: `meta` lives in map memory, which the kernel aligns to 8, and `key` is its first
    // field with `src` at offset 0 and `dst` at 16.
    const MAPPED_HI: u64 = 0;
    const MAPPED_LO: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
    // SAFETY: see above for alignment; both arrays are 16 bytes long.
    unsafe {
        let src = meta.key.src.as_mut_ptr();
        let dst = meta.key.dst.as_mut_ptr();
        (src as *mut u64).write(MAPPED_HI);
        (src.add(8) as *mut u32).write(MAPPED_LO);
        (dst as *mut u64).write(MAPPED_HI);
        (dst.add(8) as *mut u32).write(MAPPED_LO);
    }
    // SAFETY: the fixed 20-byte header is inside the frame (checked above).
    unsafe {
        for i in 0..4 {
            meta.key.src[12 + i] = *p.add(12 + i);
            meta.key.dst[12 + i] = *p.add(16 + i);
        }
    }
    meta.key.dir = DIR_FORWARD;
    meta.key._pad = [0; 2];
    meta.family = Family::V4;
    meta.key.proto = proto;
    // SAFETY: the fixed 20-byte header is inside the frame (checked above).
    unsafe {
        for i in 0..4 {
            meta.key4.src[i] = *p.add(12 + i);
            meta.key4.dst[i] = *p.add(16 + i);
        }
    }
    meta.key4.src_port = meta.key.src_port;
    meta.key4.dst_port = meta.key.dst_port;
    meta.key4.proto = proto;
    meta.key4.dir = DIR_FORWARD;
    meta.key4._pad = [0; 2];
    meta.l3_offset = l3 as u32;
    meta.l3_len = hdr_len as u32;
    meta.l4_offset = l4 as u32;
    Ok(())
}

#[inline(always)]
fn parse_ipv6<F: Frame>(ctx: &F, l3: usize, meta: &mut PacketMeta) -> Result<(), ParseOutcome> {
    let p = bytes_at(ctx, l3, IPV6_HDR_LEN)?;
    // SAFETY: the fixed 40-byte header is inside the frame (checked above).
    let (version, next_header) = unsafe { (*p >> 4, *p.add(6)) };
    if version != 6 {
        return Err(ParseOutcome::Malformed);
    }
    let l4 = l3 + IPV6_HDR_LEN;
    // Extension headers are not walked: such packets count as OtherL4 and pass untouched.
    parse_l4(ctx, l4, next_header, meta)?;
    // SAFETY: the fixed 40-byte header is inside the frame (checked above).
    unsafe {
        for i in 0..16 {
            meta.key.src[i] = *p.add(8 + i);
            meta.key.dst[i] = *p.add(24 + i);
        }
    }
    meta.key.dir = DIR_FORWARD;
    meta.key._pad = [0; 2];
    meta.family = Family::V6;
    meta.key.proto = next_header;
    meta.l3_offset = l3 as u32;
    meta.l3_len = IPV6_HDR_LEN as u32;
    meta.l4_offset = l4 as u32;
    Ok(())
}

#[inline(always)]
fn parse_l4<F: Frame>(
    ctx: &F,
    l4: usize,
    proto: u8,
    meta: &mut PacketMeta,
) -> Result<(), ParseOutcome> {
    let hdr_len = match proto {
        IPPROTO_TCP => TCP_MIN_HDR_LEN,
        IPPROTO_UDP => UDP_HDR_LEN,
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            // Lengths are checked where the message is read: a short ICMP packet still counts
            // as OtherL4, as it did before ICMP was parsed.
            meta.key.src_port = 0;
            meta.key.dst_port = 0;
            meta.tcp_flags = 0;
            meta.tcp_seq = 0;
            meta.tcp_ack = 0;
            return Ok(());
        }
        _ => return Err(ParseOutcome::OtherL4),
    };
    let p = bytes_at(ctx, l4, hdr_len)?;
    // SAFETY: the whole minimal L4 header is inside the frame (checked above).
    unsafe {
        meta.key.src_port = u16::from_be_bytes([*p, *p.add(1)]);
        meta.key.dst_port = u16::from_be_bytes([*p.add(2), *p.add(3)]);
        if proto == IPPROTO_TCP {
            meta.tcp_flags = *p.add(13);
            meta.tcp_seq = u32::from_be_bytes([*p.add(4), *p.add(5), *p.add(6), *p.add(7)]);
            meta.tcp_ack = u32::from_be_bytes([*p.add(8), *p.add(9), *p.add(10), *p.add(11)]);
        } else {
            meta.tcp_flags = 0;
            meta.tcp_seq = 0;
            meta.tcp_ack = 0;
        }
    }
    Ok(())
}
