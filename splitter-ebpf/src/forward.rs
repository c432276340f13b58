//! The L4 policy for a parsed packet at XDP ingress: VIP lookup, backend choice, NAT or reject.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use splitter_common::{
    counters::IPPROTO_TCP,
    l4::{L4Event, VipKey},
};

use crate::{
    counters::{count_backend, count_event, count_route},
    maps::VIPS,
    parse::{PacketMeta, TCP_FLAG_ACK, TCP_FLAG_RST, TCP_FLAG_SYN},
    reject, rewrite,
    select::{self, Choice},
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

    let (choice, route_id) = match select::tracked(meta) {
        Some((Choice::Gone, route_id)) => {
            count_event(L4Event::BackendGone);
            if is_tcp && !is_syn {
                // The connection's backend is gone: tell the client now rather than let it hang.
                return Some(reject_tcp(ctx, meta, route_id, bytes));
            }
            (select::from_table(meta, route_id), route_id)
        }
        Some(hit) => hit,
        None => {
            let vip_key = VipKey {
                addr: meta.key.dst,
                port: meta.key.dst_port,
                proto: meta.key.proto,
                _pad: 0,
            };
            // SAFETY: copied out at once.
            let vip = unsafe { VIPS.get(vip_key) }.copied()?;
            if is_tcp && !is_syn && flags & TCP_FLAG_RST == 0 {
                count_event(L4Event::NonSynMiss);
            }
            (select::from_table(meta, vip.route_id), vip.route_id)
        }
    };

    match choice {
        Choice::Forward { new_flow } => {
            if rewrite::dnat(ctx, meta).is_err() {
                return Some(reject_any(ctx, meta, route_id, bytes, is_tcp));
            }
            if new_flow {
                select::track(meta);
            }
            count_route(route_id, bytes, new_flow, false);
            count_backend(meta.flow.backend_id, bytes, new_flow);
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
            xdp_action::XDP_TX
        }
        Err(()) => {
            count_event(L4Event::RejectDropTcp);
            xdp_action::XDP_DROP
        }
    }
}
