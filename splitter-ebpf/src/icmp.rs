//! ICMP errors about packets of tracked flows, translated so they reach the party that sent the
//! packet, in the addresses and ports that party used (RFC 5508 asks the same of NATs).
//!
//! An error (IPv4 destination unreachable, fragmentation needed included, and time exceeded;
//! ICMPv6 destination unreachable, packet too big and time exceeded) quotes the offending
//! packet: its IP header and at least 8 bytes of L4, the ports. The quoted packet is one this
//! node's NAT wrote, so its reversed tuple is a conntrack key. Three cases reach XDP ingress:
//!
//! - **Local flow, reply packet** (VIP:vp -> client:cp, reverse-NATed by TC egress; a router on
//!   the client's side answers the VIP): forward entry (client -> VIP). The error goes to the
//!   backend, quoting backend:bp -> client:cp. The outer source (the router) stays: the
//!   backend is on this node and the stack forwards to it (`XDP_PASS`), as it does DNATed
//!   packets.
//! - **SNAT flow, reply packet** (the same, for a remote backend): forward entry with
//!   `FLOW_SNAT`. The error goes to the backend quoting backend:bp -> node:np, and comes from
//!   the node's SNAT address: the backend's network knows the node, not the client side's
//!   routers (a router between nodes may drop foreign sources). A node-sourced packet is a
//!   martian to IP input, so TC ingress routes it (`XDP_MARK_ROUTE`), as SNAT legs.
//! - **SNAT flow, forward packet** (node:np -> backend:bp; a router on the pods' side answers
//!   the node): reply entry (backend -> node:np). The error goes to the client quoting
//!   client:cp -> VIP:vp, and comes from the VIP: the client never saw the pods' network. The
//!   VIP may be a node address, so this one is routed by TC ingress too.
//!
//! One case leaves through TC egress ([`on_egress`]):
//!
//! - **Local flow, forward packet** (client:cp -> backend:bp after DNAT; the node's stack, e.g.
//!   a smaller MTU towards the pod, or the pod itself, e.g. port unreachable, answers the
//!   client): reply entry (backend -> client) without `FLOW_SNAT`. The quote becomes
//!   client:cp -> VIP:vp, what the client sent; an error the backend itself sent gets the VIP
//!   as source (the client never heard of the backend), one from the node keeps the node's.
//!
//! Checksums are updated incrementally (RFC 1624): the outer IPv4 header's for its addresses,
//! the quoted IPv4 header's for the quoted addresses, and the ICMP checksum for every word it
//! covers that changed (the quoted header and ports, the quoted header's checksum, and for
//! ICMPv6 the pseudo-header's addresses). The quoted L4 checksum is left alone: the quote is
//! usually truncated, and receivers match errors to sockets by addresses and ports only.

use aya_ebpf::{
    bindings::xdp_action,
    programs::{TcContext, XdpContext},
};
use splitter_common::{
    counters::{IPPROTO_TCP, IPPROTO_UDP},
    csum,
    l4::{CONFIG_ICMP_UNTRANSLATED, DIR_FORWARD, DIR_REPLY, FLOW_SNAT, FlowKey, FlowKey4, L4Event},
};

use crate::{
    counters::count_event,
    forward::route_out,
    maps::{CONNTRACK, CONNTRACK_V4, L4_CONFIG},
    parse::{Family, Frame, IPPROTO_ICMP, IPPROTO_ICMPV6, PacketMeta, bytes_at},
    select::copy_words,
};

/// Outer IPv4 header (no options) + ICMP header + quoted IPv4 header (no options) + ports.
const V4_SPAN: usize = 20 + 8 + 20 + 8;
/// ICMPv6 header + quoted IPv6 header + ports; the outer header is read separately.
const V6_SPAN: usize = 8 + 40 + 8;
const IPV6_HDR_LEN: usize = 40;

const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMPV6_DEST_UNREACH: u8 = 1;
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const ICMPV6_TIME_EXCEEDED: u8 = 3;

/// Handles an ICMP or ICMPv6 packet at XDP ingress (`meta` parsed by `parse_frame`).
/// `None`: not an error about a tracked flow (or translation is off); it passes untouched.
#[inline(never)]
pub fn on_error(ctx: &XdpContext, meta: &mut PacketMeta) -> Option<u32> {
    if translation_off() {
        return None;
    }
    quote(ctx, meta)?;
    if lookup(meta, Leg::Ingress).is_none() {
        count_event(L4Event::IcmpUntracked);
        return None;
    }
    let snat = meta.flow.flags & FLOW_SNAT != 0;
    plan(meta, snat);
    if translate(ctx, meta, snat).is_none() {
        // Checked by `quote`, so unreachable in practice; a half-written error helps nobody.
        return Some(xdp_action::XDP_DROP);
    }
    count_event(L4Event::IcmpTranslated);
    if snat {
        Some(route_out(ctx))
    } else {
        Some(xdp_action::XDP_PASS)
    }
}

/// Handles an ICMP or ICMPv6 packet leaving through TC egress (`meta` parsed by
/// `parse_frame`): errors about a local flow's forward packets get the quote the client
/// knows. Errors about anything else leave untouched.
#[inline(never)]
pub fn on_egress(ctx: &TcContext, meta: &mut PacketMeta) {
    if translation_off() {
        return;
    }
    // Direct access reaches only the linear head: pull what the longest quote needs (a
    // locally built error is linear anyway; a short packet is pulled whole).
    let want = (meta.l3_offset as usize + IPV6_HDR_LEN + V6_SPAN) as u32;
    let len = ctx.len();
    if ctx.pull_data(if len < want { len } else { want }).is_err() {
        return;
    }
    if quote(ctx, meta).is_none() {
        return;
    }
    if lookup(meta, Leg::Egress).is_none() {
        count_event(L4Event::IcmpUntracked);
        return;
    }
    // Quote client:cp -> backend:bp becomes client:cp -> VIP:vp.
    let r = &mut meta.reply_key;
    copy_words(&mut r.src, &meta.key.dst);
    r.src_port = meta.key.dst_port;
    copy_words(&mut r.dst, &meta.flow.addr);
    r.dst_port = meta.flow.port;
    // The backend's own error (outer source = the quoted destination) comes from the VIP.
    let from_backend = outer_src_is(ctx, meta).unwrap_or(false);
    if translate(ctx, meta, from_backend).is_some() {
        count_event(L4Event::IcmpTranslated);
    }
}

#[inline(always)]
fn translation_off() -> bool {
    match L4_CONFIG.get(0) {
        Some(cfg) => cfg.flags & CONFIG_ICMP_UNTRANSLATED != 0,
        None => true,
    }
}

/// Whether the error's outer source is the quoted packet's destination (`meta.key.src`).
#[inline(always)]
fn outer_src_is<F: Frame>(ctx: &F, meta: &PacketMeta) -> Option<bool> {
    let l3 = meta.l3_offset as usize;
    let p = bytes_at(ctx, l3, IPV6_HDR_LEN).ok()?;
    let mut same = true;
    // SAFETY: bytes_at checked 40 bytes, enough for either family's source address.
    unsafe {
        match meta.family {
            Family::V4 => {
                for i in 0..4 {
                    same &= *p.add(12 + i) == meta.key.src[12 + i];
                }
            }
            Family::V6 => {
                for i in 0..16 {
                    same &= *p.add(8 + i) == meta.key.src[i];
                }
            }
        }
    }
    Some(same)
}

#[inline(always)]
fn quote<F: Frame>(ctx: &F, meta: &mut PacketMeta) -> Option<()> {
    // Not an error, or one whose quote cannot be read: not counted, like any other ICMP.
    match meta.family {
        Family::V4 => quote_v4(ctx, meta),
        Family::V6 => quote_v6(ctx, meta),
    }
}

/// Rewrites the error by `meta.reply_key` (see [`plan`]); with `outer_src`, its source too.
#[inline(always)]
fn translate<F: Frame>(ctx: &F, meta: &PacketMeta, outer_src: bool) -> Option<()> {
    match meta.family {
        Family::V4 => rewrite_v4(ctx, meta, outer_src),
        Family::V6 => rewrite_v6(ctx, meta, outer_src),
    }
}

/// Reads an IPv4 ICMP error's quote into `meta.key` and `meta.key4` as the reversed tuple
/// (quoted destination -> quoted source): the key conntrack knows the flow by.
#[inline(always)]
fn quote_v4<F: Frame>(ctx: &F, meta: &mut PacketMeta) -> Option<()> {
    let p = bytes_at(ctx, meta.l3_offset as usize, V4_SPAN).ok()?;
    // SAFETY: bytes_at checked all V4_SPAN bytes against the packet.
    unsafe {
        // Outer and quoted headers without options (options are rare on errors, and fixed
        // offsets keep this simple for the verifier); no fragments, which quote no ports.
        if *p != 0x45 || *p.add(9) != IPPROTO_ICMP || *p.add(6) & 0x3f != 0 || *p.add(7) != 0 {
            return None;
        }
        let t = *p.add(20);
        if t != ICMP_DEST_UNREACH && t != ICMP_TIME_EXCEEDED {
            return None;
        }
        let q = p.add(28);
        let proto = *q.add(9);
        if *q != 0x45 || *q.add(6) & 0x1f != 0 || *q.add(7) != 0 {
            return None;
        }
        if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
            return None;
        }
        // A genuine error is addressed to the quoted packet's source.
        for i in 0..4 {
            if *p.add(16 + i) != *q.add(12 + i) {
                return None;
            }
        }
        let k4 = &mut meta.key4;
        for i in 0..4 {
            k4.src[i] = *q.add(16 + i);
            k4.dst[i] = *q.add(12 + i);
            meta.key.src[12 + i] = *q.add(16 + i);
            meta.key.dst[12 + i] = *q.add(12 + i);
        }
        k4.src_port = u16::from_be_bytes([*q.add(22), *q.add(23)]);
        k4.dst_port = u16::from_be_bytes([*q.add(20), *q.add(21)]);
        k4.proto = proto;
        k4.dir = DIR_FORWARD;
        k4._pad = [0; 2];
        // parse_ipv4 left the v4-mapped prefix in meta.key; the quote is the same family.
        meta.key.src_port = k4.src_port;
        meta.key.dst_port = k4.dst_port;
        meta.key.proto = proto;
        meta.key.dir = DIR_FORWARD;
    }
    Some(())
}

/// The IPv6 counterpart of [`quote_v4`] (no extension headers, outer or quoted).
#[inline(always)]
fn quote_v6<F: Frame>(ctx: &F, meta: &mut PacketMeta) -> Option<()> {
    let l3 = meta.l3_offset as usize;
    let p = bytes_at(ctx, l3, IPV6_HDR_LEN).ok()?;
    let q = bytes_at(ctx, l3 + IPV6_HDR_LEN, V6_SPAN).ok()?;
    // SAFETY: bytes_at checked both spans against the packet.
    unsafe {
        if *p.add(6) != IPPROTO_ICMPV6 {
            return None;
        }
        let t = *q;
        if t != ICMPV6_DEST_UNREACH && t != ICMPV6_PACKET_TOO_BIG && t != ICMPV6_TIME_EXCEEDED {
            return None;
        }
        let inner = q.add(8);
        let proto = *inner.add(6);
        if *inner >> 4 != 6 || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
            return None;
        }
        for i in 0..16 {
            if *p.add(24 + i) != *inner.add(8 + i) {
                return None;
            }
        }
        let k = &mut meta.key;
        for i in 0..16 {
            k.src[i] = *inner.add(24 + i);
            k.dst[i] = *inner.add(8 + i);
        }
        let ports = q.add(8 + IPV6_HDR_LEN);
        k.src_port = u16::from_be_bytes([*ports.add(2), *ports.add(3)]);
        k.dst_port = u16::from_be_bytes([*ports, *ports.add(1)]);
        k.proto = proto;
        k.dir = DIR_FORWARD;
        k._pad = [0; 2];
    }
    Some(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Leg {
    /// XDP ingress: errors about packets this node sent towards a client or a remote backend.
    Ingress,
    /// TC egress: errors about packets this node delivered to a local backend.
    Egress,
}

/// Looks the reversed quote up and copies the entry to `meta.flow`; `meta.key.dir` says which
/// one it was. Ingress: a forward entry (the quote is a reply packet, VIP -> client), else a
/// SNAT flow's reply entry (the quote is a forward leg, node:port -> backend). Egress: a local
/// flow's reply entry (the quote is a DNATed forward packet, client -> backend).
#[inline(always)]
fn lookup(meta: &mut PacketMeta, leg: Leg) -> Option<()> {
    for dir in [DIR_FORWARD, DIR_REPLY] {
        if leg == Leg::Egress && dir == DIR_FORWARD {
            continue;
        }
        meta.key.dir = dir;
        meta.key4.dir = dir;
        let found = match meta.family {
            Family::V4 => {
                let k: &FlowKey4 = &meta.key4;
                CONNTRACK_V4.get_ptr(k)
            }
            Family::V6 => {
                let k: &FlowKey = &meta.key;
                CONNTRACK.get_ptr(k)
            }
        };
        if let Some(ct) = found {
            // SAFETY: an entry of the map, alive for this program run.
            let ct = unsafe { &*ct };
            let snat = ct.flags & FLOW_SNAT != 0;
            // A local flow's reply entry at ingress: its forward packets never leave through
            // the client-facing interface. A SNAT reply entry at egress: its forward legs
            // leave by redirect, and errors about them come back through ingress.
            if dir == DIR_REPLY && snat == (leg == Leg::Egress) {
                return None;
            }
            copy_words(&mut meta.flow, ct);
            return Some(());
        }
    }
    None
}

/// The translated quote of an error at ingress into `meta.reply_key`: `src`/`src_port` the new
/// quoted source (also the error's new destination), `dst`/`dst_port` the new quoted
/// destination (for SNAT flows also the error's new source). `meta.key` still holds the old
/// quote, reversed.
#[inline(never)]
fn plan(meta: &mut PacketMeta, snat: bool) {
    let f = &meta.flow;
    let r = &mut meta.reply_key;
    if meta.key.dir == DIR_FORWARD {
        // Quote VIP:vp -> client:cp; the backend sent backend:bp -> client:cp (local) or
        // backend:bp -> node:np (SNAT).
        copy_words(&mut r.src, &f.addr);
        r.src_port = f.port;
        if snat {
            copy_words(&mut r.dst, &f.nat_addr);
            r.dst_port = f.nat_port;
        } else {
            copy_words(&mut r.dst, &meta.key.src);
            r.dst_port = meta.key.src_port;
        }
    } else {
        // Quote node:np -> backend:bp; the client sent client:cp -> VIP:vp.
        copy_words(&mut r.src, &f.nat_addr);
        r.src_port = f.nat_port;
        copy_words(&mut r.dst, &f.addr);
        r.dst_port = f.port;
    }
}

/// # Safety
/// `p` and `p + 1` are readable.
#[inline(always)]
unsafe fn read16(p: *const u8) -> u16 {
    // SAFETY: the caller's contract.
    unsafe { u16::from_be_bytes([*p, *p.add(1)]) }
}

/// # Safety
/// `p` and `p + 1` are writable.
#[inline(always)]
unsafe fn write16(p: *mut u8, v: u16) {
    let b = v.to_be_bytes();
    // SAFETY: the caller's contract.
    unsafe {
        *p = b[0];
        *p.add(1) = b[1];
    }
}

/// The quoted ports' part of the ICMP checksum change.
#[inline(always)]
fn ports_delta(meta: &PacketMeta) -> u16 {
    // Old quote: source = key.dst_port, destination = key.src_port (the key is reversed).
    csum::delta(
        &[meta.key.dst_port, meta.key.src_port],
        &[meta.reply_key.src_port, meta.reply_key.dst_port],
    )
}

#[inline(never)]
fn rewrite_v4<F: Frame>(ctx: &F, meta: &PacketMeta, outer_src: bool) -> Option<()> {
    let p = bytes_at(ctx, meta.l3_offset as usize, V4_SPAN).ok()?;
    let (k, r) = (&meta.key, &meta.reply_key);
    // Old quote: source k.dst (the outer destination too), destination k.src.
    let quoted_src = csum::delta(&csum::words4(&k.dst), &csum::words4(&r.src));
    let quoted_dst = csum::delta(&csum::words4(&k.src), &csum::words4(&r.dst));
    let quoted_addrs = csum::add(quoted_src, quoted_dst);
    // SAFETY: bytes_at checked all V4_SPAN bytes against the packet.
    unsafe {
        let q = p.add(28);
        // Outer: the destination becomes the new quoted source; with `outer_src` the source
        // becomes the new quoted destination.
        let mut outer = quoted_src;
        if outer_src {
            let mut old = [0u8; 16];
            for i in 0..4 {
                old[12 + i] = *p.add(12 + i);
            }
            outer = csum::add(
                outer,
                csum::delta(&csum::words4(&old), &csum::words4(&r.dst)),
            );
            for i in 0..4 {
                *p.add(12 + i) = r.dst[12 + i];
            }
        }
        write16(p.add(10), csum::apply(read16(p.add(10)), outer));
        for i in 0..4 {
            *p.add(16 + i) = r.src[12 + i];
        }
        // Quoted header: addresses and its own checksum.
        let old_check = read16(q.add(10));
        let new_check = csum::apply(old_check, quoted_addrs);
        write16(q.add(10), new_check);
        for i in 0..4 {
            *q.add(12 + i) = r.src[12 + i];
            *q.add(16 + i) = r.dst[12 + i];
        }
        write16(q.add(20), r.src_port);
        write16(q.add(22), r.dst_port);
        // ICMP checksum: every covered word that changed.
        let icmp = csum::add(
            csum::add(quoted_addrs, ports_delta(meta)),
            csum::delta(&[old_check], &[new_check]),
        );
        write16(p.add(22), csum::apply(read16(p.add(22)), icmp));
    }
    Some(())
}

/// Adds `~old + new` for the eight words of two 16-byte addresses to `acc` (RFC 1624's
/// `~m + m'`, unfolded): word by word, no arrays, so the frame stays small.
///
/// # Safety
/// `old` points at 16 readable bytes.
#[inline(always)]
unsafe fn acc_delta16(mut acc: u32, old: *const u8, new: &[u8; 16]) -> u32 {
    for i in 0..8 {
        // SAFETY: the caller's contract.
        let o = unsafe { read16(old.add(2 * i)) };
        acc += (!o) as u32 + u16::from_be_bytes([new[2 * i], new[2 * i + 1]]) as u32;
    }
    acc
}

/// Checksum first (it reads the old addresses from the packet), then the addresses: two frames,
/// each small enough for the 512-byte stack under the program's own.
#[inline(always)]
fn rewrite_v6<F: Frame>(ctx: &F, meta: &PacketMeta, outer_src: bool) -> Option<()> {
    checksum_v6(ctx, meta, outer_src)?;
    addresses_v6(ctx, meta, outer_src)
}

#[inline(never)]
fn checksum_v6<F: Frame>(ctx: &F, meta: &PacketMeta, outer_src: bool) -> Option<()> {
    let l3 = meta.l3_offset as usize;
    let p = bytes_at(ctx, l3, IPV6_HDR_LEN).ok()?;
    let q = bytes_at(ctx, l3 + IPV6_HDR_LEN, V6_SPAN).ok()?;
    let (k, r) = (&meta.key, &meta.reply_key);
    // SAFETY: bytes_at checked both spans against the packet; the key's addresses are 16 bytes.
    unsafe {
        // Quoted source (old k.dst), twice: the pseudo-header's destination changes with it.
        let src = acc_delta16(0, k.dst.as_ptr(), &r.src);
        let mut acc = acc_delta16(src, k.dst.as_ptr(), &r.src);
        acc = acc_delta16(acc, k.src.as_ptr(), &r.dst);
        acc += ports_delta(meta) as u32;
        if outer_src {
            acc = acc_delta16(acc, p.add(8), &r.dst);
        }
        write16(q.add(2), csum::apply(read16(q.add(2)), csum::fold(acc)));
    }
    Some(())
}

#[inline(never)]
fn addresses_v6<F: Frame>(ctx: &F, meta: &PacketMeta, outer_src: bool) -> Option<()> {
    let l3 = meta.l3_offset as usize;
    let p = bytes_at(ctx, l3, IPV6_HDR_LEN).ok()?;
    let q = bytes_at(ctx, l3 + IPV6_HDR_LEN, V6_SPAN).ok()?;
    let r = &meta.reply_key;
    // SAFETY: bytes_at checked both spans against the packet.
    unsafe {
        if outer_src {
            for i in 0..16 {
                *p.add(8 + i) = r.dst[i];
            }
        }
        let inner = q.add(8);
        for i in 0..16 {
            *p.add(24 + i) = r.src[i];
        }
        for i in 0..16 {
            *inner.add(8 + i) = r.src[i];
        }
        for i in 0..16 {
            *inner.add(24 + i) = r.dst[i];
        }
        let ports = inner.add(IPV6_HDR_LEN);
        write16(ports, r.src_port);
        write16(ports.add(2), r.dst_port);
    }
    Some(())
}
