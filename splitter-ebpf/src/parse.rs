//! Bounds-checked header parsing. Policy (what to do with a packet) lives elsewhere: this module
//! only answers "what is this frame" or "why could it not be read".

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use splitter_common::{
    DestKey, ParseOutcome,
    counters::{IPPROTO_TCP, IPPROTO_UDP},
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
const IPV4_FRAG_OFFSET_MASK: u16 = 0x1fff;

/// What the data path needs to know about a TCP/UDP packet.
pub struct PacketMeta {
    #[allow(dead_code)] // read by the L4 rewrite path
    pub family: Family,
    pub dst: [u8; 16],
    pub dst_port: u16,
    pub proto: u8,
    /// Offset of the IP header from the start of the frame.
    #[allow(dead_code)] // read by the L4 rewrite path
    pub l3_offset: usize,
    /// Offset of the TCP/UDP header from the start of the frame.
    #[allow(dead_code)] // read by the L4 rewrite path
    pub l4_offset: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl PacketMeta {
    #[inline(always)]
    pub fn dest_key(&self) -> DestKey {
        DestKey::v6(self.dst, self.dst_port, self.proto)
    }
}

/// A pointer to `len` readable bytes at `offset`, or `Truncated`. Every read goes through this
/// check so the verifier sees a bound for each access.
#[inline(always)]
fn bytes_at(ctx: &XdpContext, offset: usize, len: usize) -> Result<*const u8, ParseOutcome> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + len > end {
        return Err(ParseOutcome::Truncated);
    }
    Ok((start + offset) as *const u8)
}

#[inline(always)]
fn read_be16(ctx: &XdpContext, offset: usize) -> Result<u16, ParseOutcome> {
    let p = bytes_at(ctx, offset, size_of::<u16>())?;
    // SAFETY: bytes_at checked that both bytes lie inside the frame.
    Ok(u16::from_be_bytes(unsafe { [*p, *p.add(1)] }))
}

/// Parses Ethernet, at most one VLAN tag (802.1Q or 802.1ad), IPv4 or IPv6, and TCP or UDP.
#[inline(always)]
pub fn parse_frame(ctx: &XdpContext) -> Result<PacketMeta, ParseOutcome> {
    let mut ether_type = read_be16(ctx, 12)?;
    let mut l3_offset = ETH_HDR_LEN;
    if ether_type == ETH_P_8021Q || ether_type == ETH_P_8021AD {
        ether_type = read_be16(ctx, ETH_HDR_LEN + 2)?;
        l3_offset += VLAN_HDR_LEN;
    }
    match ether_type {
        ETH_P_IPV4 => parse_ipv4(ctx, l3_offset),
        ETH_P_IPV6 => parse_ipv6(ctx, l3_offset),
        _ => Err(ParseOutcome::NonIp),
    }
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, l3: usize) -> Result<PacketMeta, ParseOutcome> {
    let p = bytes_at(ctx, l3, IPV4_MIN_HDR_LEN)?;
    // SAFETY: the fixed 20-byte header is inside the frame (checked above).
    let (version_ihl, frag, proto, dst) = unsafe {
        (
            *p,
            u16::from_be_bytes([*p.add(6), *p.add(7)]),
            *p.add(9),
            [*p.add(16), *p.add(17), *p.add(18), *p.add(19)],
        )
    };
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
    let dst_port = parse_l4_dst_port(ctx, l4, proto)?;
    Ok(PacketMeta {
        family: Family::V4,
        dst: DestKey::v4(dst, 0, 0).addr,
        dst_port,
        proto,
        l3_offset: l3,
        l4_offset: l4,
    })
}

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, l3: usize) -> Result<PacketMeta, ParseOutcome> {
    let p = bytes_at(ctx, l3, IPV6_HDR_LEN)?;
    let mut dst = [0u8; 16];
    // SAFETY: the fixed 40-byte header is inside the frame (checked above).
    let (version, next_header) = unsafe {
        for (i, b) in dst.iter_mut().enumerate() {
            *b = *p.add(24 + i);
        }
        (*p >> 4, *p.add(6))
    };
    if version != 6 {
        return Err(ParseOutcome::Malformed);
    }
    let l4 = l3 + IPV6_HDR_LEN;
    // Extension headers are not walked: such packets count as OtherL4 and pass untouched.
    let dst_port = parse_l4_dst_port(ctx, l4, next_header)?;
    Ok(PacketMeta {
        family: Family::V6,
        dst,
        dst_port,
        proto: next_header,
        l3_offset: l3,
        l4_offset: l4,
    })
}

#[inline(always)]
fn parse_l4_dst_port(ctx: &XdpContext, l4: usize, proto: u8) -> Result<u16, ParseOutcome> {
    let hdr_len = match proto {
        IPPROTO_TCP => TCP_MIN_HDR_LEN,
        IPPROTO_UDP => UDP_HDR_LEN,
        _ => return Err(ParseOutcome::OtherL4),
    };
    bytes_at(ctx, l4, hdr_len)?;
    read_be16(ctx, l4 + 2)
}
