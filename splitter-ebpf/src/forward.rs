//! The L4 policy for a parsed packet at XDP ingress: VIP lookup, backend choice, NAT or reject.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use splitter_common::{
    counters::IPPROTO_TCP,
    l4::{
        FLOW_CLOSING, FLOW_SNAT, L4Event, VIP_DEDICATED, VipKey, XDP_MARK_BOUNCE, XDP_MARK_ROUTE,
    },
};

use crate::{
    counters::{count_backend, count_event, count_route},
    half_open,
    maps::{L4_CONFIG, VIPS},
    mark::mark,
    parse::{PacketMeta, TCP_FLAG_ACK, TCP_FLAG_RST, TCP_FLAG_SYN},
    reject, rewrite,
    select::{self, Choice},
    snat::{self, ClaimError},
};

/// Handles a packet if it belongs to the L4 path; `None` when it is not for a VIP.
///
/// Conntrack is looked up first: an established flow (the common case) then costs one hash
/// lookup, not two. A flow whose VIP was removed keeps its backend until it ends or is evicted,
/// like any established connection.
#[inline(always)]
pub fn on_packet(ctx: &XdpContext, meta: &mut PacketMeta, bytes: u64) -> Option<u32> {
    let is_tcp = meta.key.proto == IPPROTO_TCP;
    let flags = meta.tcp_flags;
    let is_syn = is_tcp && flags & TCP_FLAG_SYN != 0 && flags & TCP_FLAG_ACK == 0;

    // Conntrack, then the half-open table: a flow a SYN started and the backend has not
    // confirmed yet lives there (`half_open`).
    let mut half_open_hit = false;
    let hit = match select::tracked(meta, false) {
        Some((Choice::Forward { .. }, _)) if is_syn && meta.flow.flags & FLOW_CLOSING != 0 => {
            // The client reuses the tuple of a connection that closed: a new connection, which
            // takes a slot of the live table like any other (not the old, maybe draining,
            // backend).
            select::forget(meta);
            half_open_hit = true;
            select::tracked(meta, true)
        }
        Some(hit) => Some(hit),
        None => {
            half_open_hit = true;
            select::tracked(meta, true)
        }
    };
    let mut recreated = false;
    let (choice, route_id) = match hit {
        Some((Choice::Gone, route_id)) => {
            count_event(L4Event::BackendGone);
            if is_tcp && !is_syn {
                // The connection's backend is gone: tell the client now rather than let it hang.
                return Some(reject_tcp(ctx, meta, route_id, bytes));
            }
            (select::from_table(meta, route_id), route_id)
        }
        Some(hit) => {
            if half_open_hit {
                half_open::confirm_by_ack(meta);
            }
            hit
        }
        None => {
            let vip_key = VipKey {
                addr: meta.key.dst,
                port: meta.key.dst_port,
                proto: meta.key.proto,
                _pad: 0,
            };
            // SAFETY: copied out at once.
            let Some(vip) = unsafe { VIPS.get(vip_key) }.copied() else {
                return reply_leg(ctx, meta);
            };
            // Only a SYN or a UDP datagram starts a flow; on a dedicated VIP a non-SYN miss
            // (agent restart with lost state, eviction) recreates one.
            let non_syn_miss = is_tcp && !is_syn;
            if non_syn_miss {
                if vip.flags & VIP_DEDICATED == 0 {
                    // On a node address the packet may belong to a host socket: not ours.
                    count_event(L4Event::NonSynMissPassed);
                    return None;
                }
                if flags & TCP_FLAG_RST != 0 {
                    // A reset of a flow nobody tracks: nothing to forward it to.
                    return Some(xdp_action::XDP_DROP);
                }
                count_event(L4Event::NonSynMiss);
            }
            let cfg = L4_CONFIG.get(0);
            let now = half_open::now_ns();
            if non_syn_miss && half_open::under_flood(cfg, now) {
                // A flood's blind ACKs must not fill the half-open table; a real flow whose
                // state was lost retransmits, and is recreated once the flood is over.
                count_event(L4Event::NonSynMissFlood);
                return Some(xdp_action::XDP_DROP);
            }
            if !half_open::source_allows(meta, cfg, now) {
                count_event(L4Event::SourceRateLimited);
                count_route(vip.route_id, bytes, false, true);
                return Some(xdp_action::XDP_DROP);
            }
            let choice = select::from_table(meta, vip.route_id);
            if non_syn_miss
                && matches!(choice, Choice::Forward { .. })
                && meta.flow.flags & FLOW_SNAT != 0
            {
                // Recreating it would pick another SNAT port: the backend knows no such flow.
                count_event(L4Event::SnatFlowLost);
                return Some(reject_tcp(ctx, meta, vip.route_id, bytes));
            }
            recreated = non_syn_miss;
            (choice, vip.route_id)
        }
    };

    match choice {
        Choice::Forward { new_flow } => {
            let snat = meta.flow.flags & FLOW_SNAT != 0;
            if snat && new_flow {
                match snat::claim(meta) {
                    Ok(()) => {}
                    Err(ClaimError::NoAddress) => {
                        count_event(L4Event::SnatNoAddress);
                        return Some(reject_any(ctx, meta, route_id, bytes, is_tcp));
                    }
                    Err(ClaimError::Exhausted) => {
                        count_event(L4Event::SnatPortsExhausted);
                        return Some(reject_any(ctx, meta, route_id, bytes, is_tcp));
                    }
                }
            }
            let rewritten = if snat {
                rewrite::snat(ctx, meta, false)
            } else {
                rewrite::dnat(ctx, meta)
            };
            if rewritten.is_err() {
                return Some(reject_any(ctx, meta, route_id, bytes, is_tcp));
            }
            if new_flow {
                half_open::track(meta, recreated);
            }
            count_route(route_id, bytes, new_flow, false);
            count_backend(meta.flow.backend_id, bytes, new_flow);
            if snat {
                // Its source is this node's address: IP input would drop it as a martian.
                return Some(route_out(ctx));
            }
            Some(xdp_action::XDP_PASS)
        }
        Choice::Reject { no_table } => {
            if no_table {
                count_event(L4Event::NoTable);
            }
            Some(reject_any(ctx, meta, route_id, bytes, is_tcp))
        }
        Choice::Gone => Some(reject_any(ctx, meta, route_id, bytes, is_tcp)),
    }
}

#[inline(always)]
fn reject_any(ctx: &XdpContext, meta: &PacketMeta, route_id: u32, bytes: u64, is_tcp: bool) -> u32 {
    if is_tcp {
        reject_tcp(ctx, meta, route_id, bytes)
    } else {
        count_route(route_id, bytes, false, true);
        count_event(L4Event::RejectDrop);
        xdp_action::XDP_DROP
    }
}

#[inline(always)]
fn reject_tcp(ctx: &XdpContext, meta: &PacketMeta, route_id: u32, bytes: u64) -> u32 {
    count_route(route_id, bytes, false, true);
    if meta.tcp_flags & TCP_FLAG_RST != 0 {
        // Never answer a RST with a RST.
        return xdp_action::XDP_DROP;
    }
    match reject::rst_in_place(ctx, meta) {
        Ok(()) => {
            count_event(L4Event::RejectRst);
            // XDP_TX fails on veth in native mode (the peer has no NAPI to take it); TC
            // ingress sends it back out instead.
            if mark(ctx, XDP_MARK_BOUNCE).is_ok() {
                xdp_action::XDP_PASS
            } else {
                xdp_action::XDP_DROP
            }
        }
        Err(()) => {
            count_event(L4Event::RejectDropTcp);
            xdp_action::XDP_DROP
        }
    }
}

/// A packet to this node's SNAT address: the reply leg of a flow to a remote backend gets the
/// VIP as source and the client as destination and is routed out; anything else is not ours.
#[inline(always)]
fn reply_leg(ctx: &XdpContext, meta: &mut PacketMeta) -> Option<u32> {
    snat::reply_leg(meta)?;
    if rewrite::snat(ctx, meta, true).is_err() {
        return Some(xdp_action::XDP_DROP);
    }
    Some(route_out(ctx))
}

/// Hands a translated SNAT leg to TC ingress, which routes it out.
#[inline(always)]
pub fn route_out(ctx: &XdpContext) -> u32 {
    if mark(ctx, XDP_MARK_ROUTE).is_ok() {
        xdp_action::XDP_PASS
    } else {
        xdp_action::XDP_DROP
    }
}
