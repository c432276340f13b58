//! Choosing a backend: conntrack first, the route's live table for new flows.

use splitter_common::{
    hash::flow_hash,
    l4::{
        BACKEND_ACTIVE, BACKEND_EMPTY, Backend, DIR_REPLY, FlowKey, FlowValue, REJECT, table_index,
    },
};

use crate::{
    maps::{BACKENDS, CONNTRACK, ROUTES, TABLES},
    parse::PacketMeta,
};

pub enum Choice {
    /// Forward to this backend; `new_flow` when it came from the table.
    Backend {
        id: u32,
        backend: Backend,
        new_flow: bool,
    },
    /// The flow's slot is REJECT (or the route has no table).
    Reject { no_table: bool },
    /// Conntrack names a backend that no longer exists.
    Gone,
}

#[inline(always)]
fn backend(id: u32) -> Option<Backend> {
    BACKENDS.get(id).copied()
}

/// The backend an established flow is pinned to, and the flow's route, if conntrack knows the
/// flow.
#[inline(always)]
pub fn tracked(key: &FlowKey) -> Option<(Choice, u32)> {
    // SAFETY: the value is copied out at once; a concurrent update can at worst give a stale copy.
    let ct = unsafe { CONNTRACK.get(key) }?;
    let choice = match BACKENDS.get(ct.backend_id) {
        Some(b) if b.state != BACKEND_EMPTY && b.port == ct.port && b.addr == ct.addr => {
            Choice::Backend {
                id: ct.backend_id,
                backend: *b,
                new_flow: false,
            }
        }
        _ => Choice::Gone,
    };
    Some((choice, ct.route_id))
}

/// Selects from the route's live table by the shared flow hash.
#[inline(never)]
pub fn from_table(meta: &PacketMeta, route_id: u32) -> Choice {
    let Some(route) = ROUTES.get(route_id).copied() else {
        return Choice::Reject { no_table: true };
    };
    let m = route.table_size;
    if m == 0 || m > splitter_common::l4::MAX_TABLE_SIZE || route.active > 1 {
        return Choice::Reject { no_table: true };
    }
    let h = flow_hash(
        &meta.key.src,
        &meta.key.dst,
        meta.key.src_port,
        meta.key.dst_port,
        meta.key.proto,
    );
    let slot = h % m;
    let Some(id) = TABLES
        .get(table_index(route_id, route.active, slot))
        .copied()
    else {
        return Choice::Reject { no_table: true };
    };
    if id == REJECT {
        return Choice::Reject { no_table: false };
    }
    match backend(id) {
        Some(b) if b.state == BACKEND_ACTIVE => Choice::Backend {
            id,
            backend: b,
            new_flow: true,
        },
        _ => Choice::Reject { no_table: true },
    }
}

/// Records both directions of a new flow: forward (client -> VIP) to the backend, reply
/// (backend -> client) back to the VIP. Not inlined: its keys and values would otherwise share
/// the caller's 512-byte stack frame.
#[inline(never)]
pub fn track(meta: &PacketMeta, key: &FlowKey, id: u32, b: &Backend, route_id: u32) {
    let fwd = FlowValue {
        addr: b.addr,
        port: b.port,
        _pad: 0,
        backend_id: id,
        route_id,
        _pad2: 0,
    };
    let reply_key = FlowKey {
        src: b.addr,
        dst: meta.key.src,
        src_port: b.port,
        dst_port: meta.key.src_port,
        proto: meta.key.proto,
        dir: DIR_REPLY,
        _pad: [0; 2],
    };
    let reply = FlowValue {
        addr: meta.key.dst,
        port: meta.key.dst_port,
        _pad: 0,
        backend_id: id,
        route_id,
        _pad2: 0,
    };
    // A full LRU evicts the least recent flow; an insert failure leaves the flow untracked and it
    // is re-selected (same slot, same backend while the table is unchanged) on its next packet.
    let _ = CONNTRACK.insert(key, fwd, 0);
    let _ = CONNTRACK.insert(reply_key, reply, 0);
}
