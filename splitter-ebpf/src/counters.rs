//! Counter updates. Every counter map is per-CPU, so updates need no atomics (the BPF target has
//! no 64-bit fetch-add in `core`) and never contend; userspace sums the CPUs.

use aya_ebpf::bindings::BPF_NOEXIST;
use splitter_common::{DestKey, DestStats, ParseOutcome};

use crate::maps::{DEST_STATS, PARSE_STATS};

#[inline(always)]
pub fn count_outcome(outcome: ParseOutcome) {
    if let Some(slot) = PARSE_STATS.get_ptr_mut(outcome as u32) {
        // SAFETY: this CPU's slot of a per-CPU array; nothing else writes it while we run.
        unsafe { *slot += 1 };
    }
}

/// Adds one packet of `bytes` to `key`. Returns false when the map is full and the destination is
/// new, so the caller can count the miss instead of losing it silently.
#[inline(always)]
pub fn count_destination(key: &DestKey, bytes: u64) -> bool {
    if let Some(stats) = DEST_STATS.get_ptr_mut(key) {
        // SAFETY: this CPU's value of a per-CPU hash entry, alive for the program's run.
        unsafe {
            (*stats).packets += 1;
            (*stats).bytes += bytes;
        }
        return true;
    }
    let first = DestStats { packets: 1, bytes };
    // NOEXIST: a concurrent insert of the same key from another CPU must not reset its counts;
    // losing this one packet's count in that race is the cheaper outcome.
    DEST_STATS.insert(key, first, BPF_NOEXIST as u64).is_ok()
        || DEST_STATS.get_ptr_mut(key).is_some()
}

use splitter_common::l4::{FlowStats, L4Event};

use crate::maps::{BACKEND_STATS, L4_DROPS, ROUTE_STATS};

#[inline(always)]
pub fn count_event(event: L4Event) {
    if let Some(slot) = L4_DROPS.get_ptr_mut(event as u32) {
        // SAFETY: this CPU's slot of a per-CPU array.
        unsafe { *slot += 1 };
    }
}

#[inline(always)]
fn add(stats: Option<*mut FlowStats>, bytes: u64, new_flow: bool, reject: bool) {
    if let Some(s) = stats {
        // SAFETY: this CPU's slot of a per-CPU array.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
            (*s).new_flows += new_flow as u64;
            (*s).rejects += reject as u64;
        }
    }
}

#[inline(always)]
pub fn count_route(route_id: u32, bytes: u64, new_flow: bool, reject: bool) {
    add(ROUTE_STATS.get_ptr_mut(route_id), bytes, new_flow, reject);
}

#[inline(always)]
pub fn count_backend(backend_id: u32, bytes: u64, new_flow: bool) {
    add(
        BACKEND_STATS.get_ptr_mut(backend_id),
        bytes,
        new_flow,
        false,
    );
}

use aya_ebpf::programs::TcContext;

use crate::maps::TEST_HOOK_COUNTS;

/// Counts an IPv4 TCP packet in `slot` of `TEST_HOOK_COUNTS` (the test-only counting programs).
/// Only TCP: ARP and neighbour discovery may arrive while a test reads the counters.
#[inline(always)]
pub fn count_test_hook(ctx: &TcContext, slot: u32) {
    const ETH_P_IP: u16 = 0x0800;
    const IPPROTO_TCP: u8 = 6;
    let ethertype = ctx.load::<u16>(12).map(u16::from_be);
    let proto = ctx.load::<u8>(14 + 9);
    if ethertype == Ok(ETH_P_IP)
        && proto == Ok(IPPROTO_TCP)
        && let Some(n) = TEST_HOOK_COUNTS.get_ptr_mut(slot)
    {
        // SAFETY: this CPU's slot of a per-CPU array; nothing else writes it while we run.
        unsafe { *n += 1 };
    }
}
