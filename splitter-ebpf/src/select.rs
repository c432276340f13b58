//! Choosing a backend: conntrack first, then the half-open table, the route's live table for
//! new flows.
//!
//! Either way the outcome is written to `meta.flow`, the conntrack value the packet is rewritten
//! by, so the rewrite has one shape for established and new flows.

use splitter_common::{
    csum,
    hash::flow_hash,
    l4::{
        BACKEND_ACTIVE, BACKEND_EMPTY, BACKEND_FLAG_REMOTE, FLOW_CLOSING, FLOW_SNAT, FlowKey,
        FlowKey4, REJECT, table_index,
    },
};

use crate::{
    maps::{BACKENDS, CONNTRACK, CONNTRACK_V4, HALF_OPEN, HALF_OPEN_V4, ROUTES, TABLES},
    parse::{Family, PacketMeta, TCP_FLAG_FIN, TCP_FLAG_RST},
    rewrite::is_v4_mapped,
};

pub enum Choice {
    /// Forward as `meta.flow` says; `new_flow` when it came from the table.
    Forward { new_flow: bool },
    /// The flow's slot is REJECT (or the route has no table).
    Reject { no_table: bool },
    /// Conntrack names a backend that no longer exists.
    Gone,
}

/// The backend a tracked flow is pinned to, and the flow's route, if conntrack (or, with
/// `half_open`, the half-open table) knows the flow. A FIN or RST marks the entry closing,
/// which is what lets userspace reap it later.
#[inline(always)]
pub fn tracked(meta: &mut PacketMeta, half_open: bool) -> Option<(Choice, u32)> {
    // By reference: the key stays in the scratch map instead of being copied to the stack.
    let ct = match (meta.family, half_open) {
        (Family::V4, false) => {
            let key: &FlowKey4 = &meta.key4;
            CONNTRACK_V4.get_ptr_mut(key)?
        }
        (Family::V6, false) => {
            let key: &FlowKey = &meta.key;
            CONNTRACK.get_ptr_mut(key)?
        }
        (Family::V4, true) => {
            let key: &FlowKey4 = &meta.key4;
            HALF_OPEN_V4.get_ptr_mut(key)?
        }
        (Family::V6, true) => {
            let key: &FlowKey = &meta.key;
            HALF_OPEN.get_ptr_mut(key)?
        }
    };
    // SAFETY: an entry of the map, alive for this program run; other CPUs may write `flags`
    // concurrently, and both can only set the same bit.
    let ct = unsafe { &mut *ct };
    if meta.tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0 && ct.flags & FLOW_CLOSING == 0 {
        ct.flags |= FLOW_CLOSING;
    }
    let route_id = ct.route_id;
    // A backend id is reused only after no entry names it; the address check still catches an
    // entry that outlived its backend (e.g. restored from an older agent's pins).
    let choice = match BACKENDS.get(ct.backend_id) {
        Some(b) if b.state != BACKEND_EMPTY && b.port == ct.port && b.addr == ct.addr => {
            copy_words(&mut meta.flow, ct);
            Choice::Forward { new_flow: false }
        }
        _ => Choice::Gone,
    };
    Some((choice, route_id))
}

/// Removes a tracked flow (its forward entry, `meta.flow`, and its reply entry) from
/// conntrack: a SYN on the tuple of a connection that is closing starts another connection,
/// which must not follow the old one to its (maybe draining) backend.
#[inline(never)]
pub fn forget(meta: &mut PacketMeta) {
    match meta.family {
        Family::V4 => {
            meta.reply_key4 = meta.key4.twin(&meta.flow);
            // By reference: the keys stay in the scratch map instead of being copied.
            let (rk, k): (&FlowKey4, &FlowKey4) = (&meta.reply_key4, &meta.key4);
            let _ = CONNTRACK_V4.remove(rk);
            let _ = CONNTRACK_V4.remove(k);
        }
        Family::V6 => {
            meta.reply_key = meta.key.twin(&meta.flow);
            let (rk, k): (&FlowKey, &FlowKey) = (&meta.reply_key, &meta.key);
            let _ = CONNTRACK.remove(rk);
            let _ = CONNTRACK.remove(k);
        }
    }
}

/// Copies `T` in 8-byte words. A plain copy between two map values compiles to a call of a
/// byte-wise `memmove` (LLVM cannot prove they do not overlap): a load and a store per byte
/// where this takes one per word.
#[inline(always)]
pub fn copy_words<T>(dst: &mut T, src: &T) {
    let s = core::ptr::from_ref(src).cast::<u64>();
    let d = core::ptr::from_mut(dst).cast::<u64>();
    for i in 0..size_of::<T>() / 8 {
        // SAFETY: callers pass 8-aligned values whose size is a multiple of 8 (FlowValue, and
        // the addresses at the start of Backend and FlowValue); volatile keeps LLVM from turning
        // the loop back into a memmove call.
        unsafe { d.add(i).write_volatile(s.add(i).read_volatile()) }
    }
}

/// Selects from the route's live table by the shared flow hash and fills `meta.flow` with the
/// entry the flow will be tracked by (checksum deltas included).
#[inline(never)]
pub fn from_table(meta: &mut PacketMeta, route_id: u32) -> Choice {
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
    meta.hash = h;
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
    let Some(b) = BACKENDS.get(id) else {
        return Choice::Reject { no_table: true };
    };
    // No NAT46/64: userspace never programs it, and a packet must not be half-translated.
    if b.state != BACKEND_ACTIVE || is_v4_mapped(&b.addr) != (meta.family == Family::V4) {
        return Choice::Reject { no_table: true };
    }
    let (l3, l4) = match meta.family {
        Family::V4 => {
            let d = csum::delta(&csum::words4(&meta.key.dst), &csum::words4(&b.addr));
            (d, d)
        }
        Family::V6 => (
            0,
            csum::delta(&csum::words16(&meta.key.dst), &csum::words16(&b.addr)),
        ),
    };
    let f = &mut meta.flow;
    copy_words(&mut f.addr, &b.addr);
    f.port = b.port;
    f.l3_csum_delta = l3;
    f.backend_id = id;
    f.route_id = route_id;
    f.l4_csum_delta = csum::add(l4, csum::delta(&[meta.key.dst_port], &[b.port]));
    // A remote backend's flow is completed by `snat::claim` (source address, port, deltas).
    f.flags = if b.flags & BACKEND_FLAG_REMOTE != 0 {
        FLOW_SNAT
    } else {
        0
    };
    f._pad = 0;
    f.nat_addr = [0; 16];
    f.nat_port = 0;
    f._pad2 = 0;
    f.syn_ack_seq = 0;
    Choice::Forward { new_flow: true }
}
