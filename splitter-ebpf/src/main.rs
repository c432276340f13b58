//! splitter's kernel programs.
//!
//! Parsing, maps and counters each have their own module (Katran's shape); this file only wires
//! them into program entry points. The layout of every map is written down in `splitter-common`.
#![no_std]
#![no_main]

mod counters;
mod maps;
mod parse;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use splitter_common::ParseOutcome;

/// XDP ingress on each client-facing interface. For now it observes only: every frame is counted
/// by parse outcome, TCP/UDP frames by destination, and every frame is passed to the stack.
#[xdp]
pub fn splitter_xdp(ctx: XdpContext) -> u32 {
    let frame_len = (ctx.data_end() - ctx.data()) as u64;
    match parse::parse_frame(&ctx) {
        Ok(meta) => {
            counters::count_outcome(ParseOutcome::Ok);
            if !counters::count_destination(&meta.dest_key(), frame_len) {
                counters::count_outcome(ParseOutcome::DestTableFull);
            }
        }
        Err(outcome) => counters::count_outcome(outcome),
    }
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
