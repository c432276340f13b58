//! Half-open flows: where new state lives until the backend's side confirms it, so that a flood
//! of spoofed flows churns a small table of its own and never evicts an established flow from
//! conntrack (whose draining connections a re-selection could not find again).
//!
//! A flow enters `HALF_OPEN(_V4)` on a SYN, a first UDP datagram, or a recreation (a non-SYN
//! miss on a dedicated VIP), both directions like conntrack. It moves to conntrack when:
//! - TCP: the client acknowledges the backend's SYN-ACK. TC (or the SNAT reply leg) records the
//!   SYN-ACK's sequence number; the client's ACK must carry exactly that + 1. A spoofed source
//!   never sees the SYN-ACK, so its blind ACK confirms nothing (the backend answers a spoofed
//!   SYN with a SYN-ACK too, which is why the SYN-ACK alone cannot be the proof).
//! - UDP, and recreated TCP flows: the backend answers (not with a RST, which is how a backend
//!   answers a packet of a connection it does not know).
//!
//! Two guards bound what a flood can create here: a per-source token bucket for every new flow,
//! and a per-CPU rate above which the node is under flood and non-SYN misses start nothing
//! (Katran's switch). ICMP errors about half-open flows are not translated: until it is
//! confirmed a flow has sent a SYN or a datagram, not the large segments PMTU is about.

use aya_ebpf::helpers::bpf_ktime_get_ns;
use splitter_common::{
    counters::IPPROTO_TCP,
    l4::{
        FLOW_RECREATED, FLOW_SYN_ACK_SEEN, FlowKey, FlowKey4, FlowValue, L4Config, L4Event,
        NANO_TOKENS_PER_FLOW, SourceBucket,
    },
};

use crate::{
    counters::count_event,
    maps::{CONNTRACK, CONNTRACK_V4, FLOOD_WINDOW, HALF_OPEN, HALF_OPEN_V4, SOURCE_RATE},
    parse::{Family, PacketMeta, TCP_FLAG_ACK, TCP_FLAG_RST, TCP_FLAG_SYN},
    select::copy_words,
};

const SECOND_NS: u64 = 1_000_000_000;

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: a helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Whether this CPU created more half-open flows in the current second than the threshold.
#[inline(always)]
pub fn under_flood(cfg: Option<&L4Config>, now: u64) -> bool {
    let Some(threshold) = cfg.map(|c| c.flood_threshold).filter(|t| *t > 0) else {
        return false;
    };
    let Some(w) = FLOOD_WINDOW.get(0) else {
        return false;
    };
    now.wrapping_sub(w.start_ns) < SECOND_NS && w.new_flows >= u64::from(threshold)
}

/// Counts a new half-open flow in this CPU's window.
#[inline(always)]
fn note_new_flow(now: u64) {
    let Some(w) = FLOOD_WINDOW.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's slot of a per-CPU array.
    let w = unsafe { &mut *w };
    if now.wrapping_sub(w.start_ns) >= SECOND_NS {
        w.start_ns = now;
        w.new_flows = 0;
    }
    w.new_flows += 1;
}

/// Takes a token from the packet's source for a new flow; false when the source is over its
/// rate. No limit without a configuration or with `source_rate` 0.
#[inline(never)]
pub fn source_allows(meta: &PacketMeta, cfg: Option<&L4Config>, now: u64) -> bool {
    let Some(cfg) = cfg else {
        return true;
    };
    let rate = u64::from(cfg.source_rate);
    if rate == 0 {
        return true;
    }
    let burst = u64::from(cfg.source_burst.max(1)) * NANO_TOKENS_PER_FLOW;
    let key: &[u8; 16] = &meta.key.src;
    match SOURCE_RATE.get_ptr_mut(key) {
        Some(b) => {
            // SAFETY: an entry of the map, alive for this program run (see `SOURCE_RATE` on
            // the race with other CPUs).
            let b = unsafe { &mut *b };
            // Capped so the product fits in u64 for any u32 rate.
            let elapsed = now.wrapping_sub(b.last_ns).min(1 << 32);
            let tokens = b.nano_tokens.saturating_add(elapsed * rate).min(burst);
            b.last_ns = now;
            if tokens < NANO_TOKENS_PER_FLOW {
                b.nano_tokens = tokens;
                false
            } else {
                b.nano_tokens = tokens - NANO_TOKENS_PER_FLOW;
                true
            }
        }
        None => {
            let fresh = SourceBucket {
                nano_tokens: burst - NANO_TOKENS_PER_FLOW,
                last_ns: now,
            };
            // A full LRU pushes out the least recent source, which starts over when it returns.
            let _ = SOURCE_RATE.insert(key, fresh, 0);
            true
        }
    }
}

/// Records both directions of a new flow in the half-open table: forward (client -> VIP) as
/// `meta.flow`, reply (backend -> client) back to the VIP. A SNAT flow's reply entry is in
/// already (claiming it is how its port was chosen). Not inlined: its keys and values would
/// otherwise share the caller's 512-byte stack frame.
#[inline(never)]
pub fn track(meta: &mut PacketMeta, recreated: bool) {
    if recreated {
        meta.flow.flags |= FLOW_RECREATED;
    }
    note_new_flow(now_ns());
    count_event(L4Event::HalfOpenCreated);
    let f = &meta.flow;
    if f.flags & splitter_common::l4::FLOW_SNAT != 0 {
        // By reference: the key stays in the scratch map instead of being copied to the stack.
        let _ = match meta.family {
            Family::V4 => {
                let k: &FlowKey4 = &meta.key4;
                HALF_OPEN_V4.insert(k, f, 0)
            }
            Family::V6 => {
                let k: &FlowKey = &meta.key;
                HALF_OPEN.insert(k, f, 0)
            }
        };
        return;
    }
    // The reply path rewrites with TC's checksum helpers, which need no deltas.
    let reply = FlowValue {
        addr: meta.key.dst,
        port: meta.key.dst_port,
        backend_id: f.backend_id,
        route_id: f.route_id,
        flags: f.flags & FLOW_RECREATED,
        ..FlowValue::default()
    };
    // A full LRU pushes out the least recent half-open flow; an insert failure leaves the flow
    // untracked and its next packet is handled as a miss.
    match meta.family {
        Family::V4 => {
            let k: &FlowKey4 = &meta.key4;
            let rk = k.twin(f);
            take_over_v4(&rk);
            let _ = HALF_OPEN_V4.insert(k, f, 0);
            let _ = HALF_OPEN_V4.insert(rk, reply, 0);
        }
        Family::V6 => {
            let k: &FlowKey = &meta.key;
            let rk = k.twin(f);
            take_over_v6(&rk);
            let _ = HALF_OPEN.insert(k, f, 0);
            let _ = HALF_OPEN.insert(rk, reply, 0);
        }
    }
}

// The reply key (backend -> client) does not name the VIP: a client that reuses a port for a
// connection to another VIP, or to another port of it, that lands on the same backend makes a
// new flow with an older flow's reply key. The backend can hold one connection per tuple, so
// the new SYN means the old connection is over; it gives the key up, with its forward entry
// (left behind, it would be reaped later together with its twin, which by then is the new
// flow's). Without this the old entry, looked up first, sends the new SYN-ACK out as the old
// VIP and the connection never opens.

#[inline(always)]
fn take_over_v4(rk: &FlowKey4) {
    if let Some(old) = CONNTRACK_V4.get_ptr(rk) {
        // SAFETY: an entry of the map, alive for this program run.
        let _ = CONNTRACK_V4.remove(rk.twin(unsafe { &*old }));
        let _ = CONNTRACK_V4.remove(rk);
    }
    if let Some(old) = HALF_OPEN_V4.get_ptr(rk) {
        // SAFETY: as above.
        let _ = HALF_OPEN_V4.remove(rk.twin(unsafe { &*old }));
    }
}

#[inline(always)]
fn take_over_v6(rk: &FlowKey) {
    if let Some(old) = CONNTRACK.get_ptr(rk) {
        // SAFETY: an entry of the map, alive for this program run.
        let _ = CONNTRACK.remove(rk.twin(unsafe { &*old }));
        let _ = CONNTRACK.remove(rk);
    }
    if let Some(old) = HALF_OPEN.get_ptr(rk) {
        // SAFETY: as above.
        let _ = HALF_OPEN.remove(rk.twin(unsafe { &*old }));
    }
}

/// A client packet of a half-open TCP flow (`meta.flow` holds its forward entry): if it
/// acknowledges the backend's SYN-ACK, the flow moves to conntrack.
#[inline(never)]
pub fn confirm_by_ack(meta: &mut PacketMeta) {
    let flags = meta.tcp_flags;
    if meta.key.proto != IPPROTO_TCP
        || flags & (TCP_FLAG_SYN | TCP_FLAG_RST) != 0
        || flags & TCP_FLAG_ACK == 0
        || meta.flow.flags & FLOW_RECREATED != 0
    {
        return;
    }
    let want = meta.tcp_ack.wrapping_sub(1);
    match meta.family {
        Family::V4 => {
            meta.reply_key4 = meta.key4.twin(&meta.flow);
            let rk: &FlowKey4 = &meta.reply_key4;
            let Some(r) = HALF_OPEN_V4.get_ptr(rk) else {
                return;
            };
            // SAFETY: an entry of the map, alive for this program run.
            let r = unsafe { &*r };
            if r.flags & FLOW_SYN_ACK_SEEN == 0 || r.syn_ack_seq != want {
                return;
            }
            copy_words(&mut meta.reply, r);
        }
        Family::V6 => {
            meta.reply_key = meta.key.twin(&meta.flow);
            let rk: &FlowKey = &meta.reply_key;
            let Some(r) = HALF_OPEN.get_ptr(rk) else {
                return;
            };
            // SAFETY: as above.
            let r = unsafe { &*r };
            if r.flags & FLOW_SYN_ACK_SEEN == 0 || r.syn_ack_seq != want {
                return;
            }
            copy_words(&mut meta.reply, r);
        }
    }
    promote(meta, false);
}

/// A packet from the backend of a half-open flow, `ct` its reply entry (keyed by `meta.key(4)`
/// with `dir` = reply). A SYN-ACK is recorded for `confirm_by_ack`; an answer to a UDP or a
/// recreated flow confirms it.
#[inline(never)]
pub fn on_reply(meta: &mut PacketMeta, ct: *mut FlowValue) {
    // SAFETY: an entry of the map, alive for this program run; copied before it is removed.
    let r = unsafe { &mut *ct };
    let flags = meta.tcp_flags;
    if meta.key.proto == IPPROTO_TCP {
        if flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN | TCP_FLAG_ACK {
            r.syn_ack_seq = meta.tcp_seq;
            r.flags |= FLOW_SYN_ACK_SEEN;
            return;
        }
        if r.flags & FLOW_RECREATED == 0 || flags & TCP_FLAG_RST != 0 {
            return;
        }
    }
    copy_words(&mut meta.reply, r);
    // The forward key is the reply entry's twin: (client -> VIP).
    match meta.family {
        Family::V4 => meta.reply_key4 = meta.key4.twin(&meta.reply),
        Family::V6 => meta.reply_key = meta.key.twin(&meta.reply),
    }
    promote(meta, true);
}

/// Moves a confirmed flow to conntrack: the reply entry from `meta.reply`, the forward entry
/// from the half-open table. `from_reply`: `meta.key(4)` is the reply key and
/// `meta.reply_key(4)` the forward key; otherwise the other way round (`meta.flow` then holds
/// the forward entry).
///
/// Each entry is inserted into conntrack before it leaves the half-open table, so a SNAT port
/// claim (`snat::claim`: half-open insert, then a conntrack check) always sees it in one.
#[inline(always)]
fn promote(meta: &mut PacketMeta, from_reply: bool) {
    meta.reply.flags &= !(FLOW_SYN_ACK_SEEN | FLOW_RECREATED);
    meta.reply.syn_ack_seq = 0;
    let r: &FlowValue = &meta.reply;
    match meta.family {
        Family::V4 => {
            let (rk, fk): (&FlowKey4, &FlowKey4) = if from_reply {
                (&meta.key4, &meta.reply_key4)
            } else {
                (&meta.reply_key4, &meta.key4)
            };
            let Some(f) = HALF_OPEN_V4.get_ptr(fk) else {
                return;
            };
            // SAFETY: an entry of the map, alive for this program run; copied by the insert.
            let f = unsafe { &*f };
            if CONNTRACK_V4.insert(rk, r, 0).is_err() || CONNTRACK_V4.insert(fk, f, 0).is_err() {
                return;
            }
            let _ = HALF_OPEN_V4.remove(rk);
            let _ = HALF_OPEN_V4.remove(fk);
        }
        Family::V6 => {
            let (rk, fk): (&FlowKey, &FlowKey) = if from_reply {
                (&meta.key, &meta.reply_key)
            } else {
                (&meta.reply_key, &meta.key)
            };
            let Some(f) = HALF_OPEN.get_ptr(fk) else {
                return;
            };
            // SAFETY: as above.
            let f = unsafe { &*f };
            if CONNTRACK.insert(rk, r, 0).is_err() || CONNTRACK.insert(fk, f, 0).is_err() {
                return;
            }
            let _ = HALF_OPEN.remove(rk);
            let _ = HALF_OPEN.remove(fk);
        }
    }
    count_event(L4Event::Confirmed);
}
