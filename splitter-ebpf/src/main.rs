//! splitter's kernel programs.
//!
//! Parsing, maps and counters each have their own module (Katran's shape); this file only wires
//! them into program entry points. The layout of every map is written down in `splitter-common`.
#![no_std]
#![no_main]
#![expect(
    clippy::needless_range_loop,
    reason = "index loops drive raw packet-pointer offsets (`p.add(2 * i)`); iterators would hide \
              the offset arithmetic the verifier has to accept"
)]

mod counters;
mod forward;
mod half_open;
mod icmp;
mod maps;
mod mark;
mod parse;
mod reject;
mod rewrite;
mod select;
mod snat;
mod tc;
mod tc_ingress;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use splitter_common::ParseOutcome;

/// XDP ingress on each client-facing interface: frames that are not for a VIP are counted by
/// parse outcome and TCP/UDP ones by destination; packets for an L4 VIP are split to a backend (DNAT, then
/// passed to the stack, which routes them) or rejected; everything else passes untouched.
#[xdp]
pub fn splitter_xdp(ctx: XdpContext) -> u32 {
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    let Some(meta) = maps::SCRATCH.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: this CPU's scratch slot; nothing else uses slot 0 while this program runs.
    let meta = unsafe { &mut *meta };
    match parse::parse_frame(&ctx, meta) {
        Ok(())
            if meta.key.proto == parse::IPPROTO_ICMP || meta.key.proto == parse::IPPROTO_ICMPV6 =>
        {
            if let Some(action) = icmp::on_error(&ctx, meta) {
                return action;
            }
            // Counted as before the ICMP path existed: not TCP or UDP.
            counters::count_outcome(ParseOutcome::OtherL4);
            xdp_action::XDP_PASS
        }
        Ok(()) => {
            if let Some(action) = forward::on_packet(&ctx, meta, frame_len) {
                // VIP traffic is counted per route and backend instead.
                return action;
            }
            counters::count_outcome(ParseOutcome::Ok);
            if !counters::count_destination(&meta.dest_key(), frame_len) {
                counters::count_outcome(ParseOutcome::DestTableFull);
            }
            xdp_action::XDP_PASS
        }
        Err(outcome) => {
            counters::count_outcome(outcome);
            xdp_action::XDP_PASS
        }
    }
}

/// An XDP program that does nothing: the floor the benchmarks measure against.
#[xdp]
pub fn splitter_xdp_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// TC egress on the same interfaces: replies of tracked flows get the VIP back as source.
///
/// Every packet goes on to the next program on the hook, ours (rewritten) included: a CNI
/// attached after us enforces policy and keeps its own state on egress, and a rewritten reply
/// is an ordinary packet from the VIP to it. `TC_ACT_OK` would end the tcx chain there. With
/// netlink (clsact) attachment the same value means "unspecified": the next filter runs, and
/// after the last one the packet is sent.
#[classifier]
pub fn splitter_tc_egress(ctx: TcContext) -> i32 {
    // A reply that cannot be rewritten is still sent: dropping it would not help the client.
    let _ = tc::reverse_nat(&ctx);
    tc_ingress::TCX_NEXT
}

/// TC ingress on the same interfaces: sends out what XDP marked (RSTs, SNAT legs); passes
/// everything else on to the next program.
#[classifier]
pub fn splitter_tc_ingress(ctx: TcContext) -> i32 {
    tc_ingress::on_packet(&ctx)
}

/// Test-only programs: the kernel tests attach these before and after ours on the same tcx
/// hooks, as a CNI would, and read how many IPv4 TCP packets each saw from `TEST_HOOK_COUNTS`
/// (slot per program, see `splitter_common::l4::TEST_COUNT_PROGRAMS`). Never attached by the
/// agent; the map is not pinned.
macro_rules! test_counter {
    ($name:ident, $slot:expr) => {
        #[classifier]
        pub fn $name(ctx: TcContext) -> i32 {
            counters::count_test_hook(&ctx, $slot);
            tc_ingress::TCX_NEXT
        }
    };
}
test_counter!(splitter_test_count_in_first, 0);
test_counter!(splitter_test_count_in_last, 1);
test_counter!(splitter_test_count_eg_first, 2);
test_counter!(splitter_test_count_eg_last, 3);

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
