//! XDP destination NAT with incremental checksum updates (RFC 1624).
//!
//! XDP has no checksum helpers and sees the bytes as they arrived, so this assumes complete
//! checksums on the wire, as NICs deliver them. Locally generated packets on a veth can carry
//! partial checksums (CHECKSUM_PARTIAL); the tests turn tx checksum offload off on the sender.

use aya_ebpf::programs::XdpContext;
use splitter_common::{counters::IPPROTO_UDP, csum::apply};

use crate::parse::{Family, PacketMeta, bytes_at};

const V4_MAPPED_PREFIX: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

#[inline(always)]
pub fn is_v4_mapped(a: &[u8; 16]) -> bool {
    a[..12] == V4_MAPPED_PREFIX
}

/// The checksum field offset within the L4 header.
#[inline(always)]
pub fn l4_csum_offset(proto: u8) -> usize {
    if proto == IPPROTO_UDP { 6 } else { 16 }
}

/// # Safety
/// `p` and `p + 1` are readable (bounds-checked against the packet).
#[inline(always)]
unsafe fn read16(p: *const u8) -> u16 {
    // SAFETY: the caller's contract.
    unsafe { u16::from_be_bytes([*p, *p.add(1)]) }
}

/// # Safety
/// `p` and `p + 1` are writable (bounds-checked against the packet).
#[inline(always)]
unsafe fn write16(p: *mut u8, v: u16) {
    let b = v.to_be_bytes();
    // SAFETY: the caller's contract.
    unsafe {
        *p = b[0];
        *p.add(1) = b[1];
    }
}

/// A rewritten UDP checksum that came out 0 must be sent as 0xffff: 0 means "no checksum".
#[inline(always)]
fn udp_nonzero(proto: u8, c: u16) -> u16 {
    if proto == IPPROTO_UDP && c == 0 {
        0xffff
    } else {
        c
    }
}

/// Rewrites the destination to `meta.flow`'s backend, adding the flow's precomputed checksum
/// deltas. `select` only fills `meta.flow` with a backend of the packet's own family.
#[inline(always)]
pub fn dnat(ctx: &XdpContext, meta: &PacketMeta) -> Result<(), ()> {
    let f = &meta.flow;
    let l4 = bytes_at(ctx, meta.l4_offset as usize, 8).map_err(|_| ())?;
    let csum_off = l4_csum_offset(meta.key.proto);
    let csum_ptr = bytes_at(ctx, meta.l4_offset as usize + csum_off, 2).map_err(|_| ())?;
    match meta.family {
        Family::V4 => {
            let ip = bytes_at(ctx, meta.l3_offset as usize, 20).map_err(|_| ())?;
            // SAFETY: bytes_at checked the 20 bytes of the IPv4 header against the packet.
            unsafe {
                write16(ip.add(10), apply(read16(ip.add(10)), f.l3_csum_delta));
                for i in 0..4 {
                    *ip.add(16 + i) = f.addr[12 + i];
                }
            }
        }
        Family::V6 => {
            let ip = bytes_at(ctx, meta.l3_offset as usize, 40).map_err(|_| ())?;
            // SAFETY: bytes_at checked the 40 bytes of the IPv6 header against the packet.
            unsafe {
                for i in 0..16 {
                    *ip.add(24 + i) = f.addr[i];
                }
            }
        }
    }
    // SAFETY: bytes_at checked the checksum field and the first 8 bytes of the L4 header.
    unsafe {
        let l4_check = read16(csum_ptr);
        // A UDP checksum of 0 means "none": it stays none.
        if !(meta.key.proto == IPPROTO_UDP && l4_check == 0) {
            let c = apply(l4_check, f.l4_csum_delta);
            write16(csum_ptr, udp_nonzero(meta.key.proto, c));
        }
        write16(l4.add(2), f.port);
    }
    Ok(())
}

/// Rewrites both ends of a SNAT flow's packet by `meta.flow`. Forward leg (`reply` false): the
/// destination becomes the backend (`addr`, `port`) and the source this node's SNAT address
/// (`nat_addr`, `nat_port`). Reply leg: the source becomes the VIP (`addr`, `port`) and the
/// destination the client (`nat_addr`, `nat_port`). The entry's deltas cover all four changes.
#[inline(never)]
pub fn snat(ctx: &XdpContext, meta: &PacketMeta, reply: bool) -> Result<(), ()> {
    let f = &meta.flow;
    // Offsets of (addr, nat_addr) within the IP header and of (port, nat_port) within the L4
    // header.
    let (v4, v6, l4) = if reply {
        ((12, 16), (8, 24), (0, 2))
    } else {
        ((16, 12), (24, 8), (2, 0))
    };
    let l4p = bytes_at(ctx, meta.l4_offset as usize, 8).map_err(|_| ())?;
    let csum_off = l4_csum_offset(meta.key.proto);
    let csum_ptr = bytes_at(ctx, meta.l4_offset as usize + csum_off, 2).map_err(|_| ())?;
    match meta.family {
        Family::V4 => {
            let ip = bytes_at(ctx, meta.l3_offset as usize, 20).map_err(|_| ())?;
            // SAFETY: bytes_at checked the 20 bytes of the IPv4 header against the packet.
            unsafe {
                write16(ip.add(10), apply(read16(ip.add(10)), f.l3_csum_delta));
                for i in 0..4 {
                    *ip.add(v4.0 + i) = f.addr[12 + i];
                    *ip.add(v4.1 + i) = f.nat_addr[12 + i];
                }
            }
        }
        Family::V6 => {
            let ip = bytes_at(ctx, meta.l3_offset as usize, 40).map_err(|_| ())?;
            // SAFETY: bytes_at checked the 40 bytes of the IPv6 header against the packet.
            unsafe {
                for i in 0..16 {
                    *ip.add(v6.0 + i) = f.addr[i];
                    *ip.add(v6.1 + i) = f.nat_addr[i];
                }
            }
        }
    }
    // SAFETY: bytes_at checked the checksum field and the first 8 bytes of the L4 header.
    unsafe {
        let l4_check = read16(csum_ptr);
        if !(meta.key.proto == IPPROTO_UDP && l4_check == 0) {
            let c = apply(l4_check, f.l4_csum_delta);
            write16(csum_ptr, udp_nonzero(meta.key.proto, c));
        }
        write16(l4p.add(l4.0), f.port);
        write16(l4p.add(l4.1), f.nat_port);
    }
    Ok(())
}
