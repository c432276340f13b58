//! TC ingress: sends out what XDP marked (see `mark`). Everything else is not ours and goes on
//! to the next program on the hook and to the stack.
//!
//! XDP cannot send these itself: XDP_TX fails on veth in native mode, and XDP_PASS alone hands
//! the stack a packet whose source is one of this node's addresses (a SNAT leg) or that must
//! leave through the interface it came in on (a RST), which IP input drops.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, TC_ACT_SHOT, bpf_fib_lookup,
        bpf_redir_neigh,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect, bpf_redirect_neigh},
    programs::TcContext,
};
use splitter_common::l4::{
    L4Event, XDP_MARK_BOUNCE, XDP_MARK_KIND_MASK, XDP_MARK_MAGIC, XDP_MARK_ROUTE, XdpMark,
};

use crate::{
    counters::count_event,
    maps::SCRATCH,
    parse::{Family, parse_frame},
};

/// "Not ours": the next program on the hook sees the packet (tcx; plain TC treats it as
/// "unspecified", which passes too).
pub const TCX_NEXT: i32 = -1;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

/// The mark XDP left, if the packet carries one of ours.
#[inline(always)]
fn read_mark(ctx: &TcContext) -> Option<u32> {
    // SAFETY: reading the context's fields.
    let (meta, data) = unsafe {
        (
            (*ctx.skb.skb).data_meta as usize,
            (*ctx.skb.skb).data as usize,
        )
    };
    if meta + size_of::<XdpMark>() > data {
        return None;
    }
    // SAFETY: the four bytes lie in the metadata area (checked above).
    let word = unsafe { (meta as *const u32).read_unaligned() };
    (word & !XDP_MARK_KIND_MASK == XDP_MARK_MAGIC).then_some(word & XDP_MARK_KIND_MASK)
}

#[inline(always)]
pub fn on_packet(ctx: &TcContext) -> i32 {
    match read_mark(ctx) {
        Some(XDP_MARK_BOUNCE) => {
            // SAFETY: reading the context's fields.
            let ifindex = unsafe { (*ctx.skb.skb).ifindex };
            // SAFETY: plain helper call.
            let r = unsafe { bpf_redirect(ifindex, 0) } as i32;
            if r == TC_ACT_SHOT {
                count_event(L4Event::RedirectFailed);
            }
            r
        }
        Some(XDP_MARK_ROUTE) => route(ctx),
        _ => TCX_NEXT,
    }
}

/// Sends a translated SNAT leg out of the interface the FIB names for its new destination; the
/// kernel resolves the next hop's MAC (`bpf_redirect_neigh`), so any device type works.
#[inline(never)]
fn route(ctx: &TcContext) -> i32 {
    let Some(meta) = SCRATCH.get_ptr_mut(2) else {
        count_event(L4Event::RouteFailed);
        return TC_ACT_SHOT;
    };
    // SAFETY: this CPU's TC ingress scratch slot.
    let meta = unsafe { &mut *meta };
    // Translated ICMP errors are routed too: they parse with ports 0.
    if parse_frame(ctx, meta).is_err() {
        count_event(L4Event::RouteFailed);
        return TC_ACT_SHOT;
    }
    // SAFETY: all-zero is a valid bpf_fib_lookup (plain integers and unions of them).
    let mut p: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    p.l4_protocol = meta.key.proto;
    p.sport = meta.key.src_port.to_be();
    p.dport = meta.key.dst_port.to_be();
    p.__bindgen_anon_1.tot_len = (ctx.len() - meta.l3_offset) as u16;
    // SAFETY: reading the context's fields.
    p.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let word = |a: &[u8; 16], i: usize| {
        u32::from_ne_bytes([a[4 * i], a[4 * i + 1], a[4 * i + 2], a[4 * i + 3]])
    };
    match meta.family {
        Family::V4 => {
            p.family = AF_INET;
            p.__bindgen_anon_3.ipv4_src = word(&meta.key.src, 3);
            p.__bindgen_anon_4.ipv4_dst = word(&meta.key.dst, 3);
        }
        Family::V6 => {
            p.family = AF_INET6;
            for i in 0..4 {
                // SAFETY: writing one member of a union of plain integers.
                unsafe {
                    p.__bindgen_anon_3.ipv6_src[i] = word(&meta.key.src, i);
                    p.__bindgen_anon_4.ipv6_dst[i] = word(&meta.key.dst, i);
                }
            }
        }
    }
    // SAFETY: helper call with a pointer to a stack struct of the size given.
    let r = unsafe {
        fib_lookup(
            ctx.skb.skb.cast(),
            &mut p,
            size_of::<bpf_fib_lookup>() as i32,
            0,
        )
    };
    if r != BPF_FIB_LKUP_RET_SUCCESS as i64 && r != BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
        count_event(L4Event::RouteFailed);
        return TC_ACT_SHOT;
    }
    // SAFETY: plain helper call; no next-hop parameters: the kernel looks the route up again
    // for the next hop and resolves its neighbour.
    let r = unsafe { bpf_redirect_neigh(p.ifindex, core::ptr::null_mut::<bpf_redir_neigh>(), 0, 0) }
        as i32;
    if r == TC_ACT_SHOT {
        count_event(L4Event::RedirectFailed);
    }
    r
}
