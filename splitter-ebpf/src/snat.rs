//! Source NAT for flows to remote backends: a source port of the reserved range chosen without
//! collisions, and the reply leg that brings the backend's answers back to the client.
//!
//! The reply entry (backend -> SNAT address:port) is the port's reservation: inserting it with
//! `BPF_NOEXIST` into the half-open table, and finding no confirmed flow with it in conntrack,
//! either claims the port for this flow or says another flow to the same backend has it.

use aya_ebpf::bindings::BPF_NOEXIST;
use splitter_common::{
    csum,
    l4::{
        CONFIG_SNAT_V4, CONFIG_SNAT_V6, DIR_REPLY, FLOW_CLOSING, FLOW_SNAT, FlowKey, FlowKey4,
        FlowValue, SNAT_PORT_TRIES,
    },
};

use crate::{
    half_open,
    maps::{CONNTRACK, CONNTRACK_V4, HALF_OPEN, HALF_OPEN_V4, L4_CONFIG},
    parse::{Family, PacketMeta, TCP_FLAG_FIN, TCP_FLAG_RST},
    select::copy_words,
};

pub enum ClaimError {
    /// No SNAT address of the packet's family is configured.
    NoAddress,
    /// Every port tried is held by another flow to the same backend.
    Exhausted,
}

/// The one's-complement sum that turns a checksum over (`old_a`, `old_b`) into one over
/// (`new_a`, `new_b`): the address part of a two-address rewrite, both families.
#[inline(always)]
fn addr_delta(
    family: Family,
    old_a: &[u8; 16],
    new_a: &[u8; 16],
    old_b: &[u8; 16],
    new_b: &[u8; 16],
) -> u16 {
    match family {
        Family::V4 => csum::add(
            csum::delta(&csum::words4(old_a), &csum::words4(new_a)),
            csum::delta(&csum::words4(old_b), &csum::words4(new_b)),
        ),
        Family::V6 => csum::add(
            csum::delta(&csum::words16(old_a), &csum::words16(new_a)),
            csum::delta(&csum::words16(old_b), &csum::words16(new_b)),
        ),
    }
}

/// Completes `meta.flow` (a new flow to a remote backend, filled by `select::from_table`) with
/// this node's SNAT address and a free port, and inserts the flow's reply entry. The forward
/// entry is `select::track`'s.
#[inline(never)]
pub fn claim(meta: &mut PacketMeta) -> Result<(), ClaimError> {
    let Some(cfg) = L4_CONFIG.get(0) else {
        return Err(ClaimError::NoAddress);
    };
    let (have, snat) = match meta.family {
        Family::V4 => (cfg.flags & CONFIG_SNAT_V4, &cfg.snat_v4),
        Family::V6 => (cfg.flags & CONFIG_SNAT_V6, &cfg.snat_v6),
    };
    let (port_min, port_max) = (cfg.port_min, cfg.port_max);
    if have == 0 || port_min == 0 || port_min > port_max {
        return Err(ClaimError::NoAddress);
    }
    let size = (port_max - port_min) as u32 + 1;

    // Address parts of both legs' deltas. Forward: destination VIP -> backend, source client
    // -> SNAT address. Reply: source backend -> VIP, destination SNAT address -> client.
    let fwd_addr = addr_delta(
        meta.family,
        &meta.key.dst,
        &meta.flow.addr,
        &meta.key.src,
        snat,
    );
    let rev_addr = addr_delta(
        meta.family,
        &meta.flow.addr,
        &meta.key.dst,
        snat,
        &meta.key.src,
    );
    let l3 = |d: u16| if meta.family == Family::V4 { d } else { 0 };

    let r = &mut meta.reply;
    copy_words(&mut r.addr, &meta.key.dst);
    r.port = meta.key.dst_port;
    r.l3_csum_delta = l3(rev_addr);
    r.backend_id = meta.flow.backend_id;
    r.route_id = meta.flow.route_id;
    r.flags = FLOW_SNAT;
    r._pad = 0;
    copy_words(&mut r.nat_addr, &meta.key.src);
    r.nat_port = meta.key.src_port;
    r._pad2 = 0;
    r.syn_ack_seq = 0;

    let k6 = &mut meta.reply_key;
    copy_words(&mut k6.src, &meta.flow.addr);
    copy_words(&mut k6.dst, snat);
    k6.src_port = meta.flow.port;
    k6.proto = meta.key.proto;
    k6.dir = DIR_REPLY;
    k6._pad = [0; 2];
    let k4 = &mut meta.reply_key4;
    for i in 0..4 {
        k4.src[i] = meta.flow.addr[12 + i];
        k4.dst[i] = snat[12 + i];
    }
    k4.src_port = meta.flow.port;
    k4.proto = meta.key.proto;
    k4.dir = DIR_REPLY;
    k4._pad = [0; 2];

    let start = meta.hash % size;
    let mut claimed = None;
    for i in 0..SNAT_PORT_TRIES {
        if i >= size {
            break;
        }
        let port = port_min + ((start + i) % size) as u16;
        meta.reply.l4_csum_delta = csum::add(
            rev_addr,
            csum::delta(
                &[meta.flow.port, port],
                &[meta.key.dst_port, meta.key.src_port],
            ),
        );
        // Keys and value by reference: they stay in the scratch map, off the stack. The claim
        // is made in the half-open table (where the flow lives until it is confirmed) and must
        // not collide with a confirmed flow either: `half_open::promote` inserts into conntrack
        // before it removes from the half-open table, so checking conntrack after our insert
        // cannot miss a flow that moves meanwhile.
        let value: &FlowValue = &meta.reply;
        let free = match meta.family {
            Family::V4 => {
                meta.reply_key4.dst_port = port;
                let k: &FlowKey4 = &meta.reply_key4;
                HALF_OPEN_V4.insert(k, value, BPF_NOEXIST as u64).is_ok()
                    && (CONNTRACK_V4.get_ptr(k).is_none() || {
                        let _ = HALF_OPEN_V4.remove(k);
                        false
                    })
            }
            Family::V6 => {
                meta.reply_key.dst_port = port;
                let k: &FlowKey = &meta.reply_key;
                HALF_OPEN.insert(k, value, BPF_NOEXIST as u64).is_ok()
                    && (CONNTRACK.get_ptr(k).is_none() || {
                        let _ = HALF_OPEN.remove(k);
                        false
                    })
            }
        };
        if free {
            claimed = Some(port);
            break;
        }
    }
    let Some(port) = claimed else {
        return Err(ClaimError::Exhausted);
    };

    let f = &mut meta.flow;
    copy_words(&mut f.nat_addr, snat);
    f.nat_port = port;
    f.l3_csum_delta = l3(fwd_addr);
    f.l4_csum_delta = csum::add(
        fwd_addr,
        csum::delta(&[meta.key.dst_port, meta.key.src_port], &[f.port, port]),
    );
    f.flags = FLOW_SNAT;
    Ok(())
}

/// The reply entry for a packet to this node's SNAT address and a port of the range, copied
/// into `meta.flow` (source becomes the VIP, destination the client). `None` when the packet is
/// not a SNAT reply of a tracked flow.
#[inline(never)]
pub fn reply_leg(meta: &mut PacketMeta) -> Option<()> {
    let cfg = L4_CONFIG.get(0)?;
    let (have, snat) = match meta.family {
        Family::V4 => (cfg.flags & CONFIG_SNAT_V4, &cfg.snat_v4),
        Family::V6 => (cfg.flags & CONFIG_SNAT_V6, &cfg.snat_v6),
    };
    let port = meta.key.dst_port;
    if have == 0 || port < cfg.port_min || port > cfg.port_max || meta.key.dst != *snat {
        return None;
    }
    let mut half_open = false;
    let ct = match meta.family {
        Family::V4 => {
            meta.key4.dir = DIR_REPLY;
            let k: &FlowKey4 = &meta.key4;
            match CONNTRACK_V4.get_ptr_mut(k) {
                Some(ct) => Some(ct),
                None => {
                    half_open = true;
                    HALF_OPEN_V4.get_ptr_mut(k)
                }
            }
        }
        Family::V6 => {
            meta.key.dir = DIR_REPLY;
            let k: &FlowKey = &meta.key;
            match CONNTRACK.get_ptr_mut(k) {
                Some(ct) => Some(ct),
                None => {
                    half_open = true;
                    HALF_OPEN.get_ptr_mut(k)
                }
            }
        }
    };
    let found = ct.and_then(|ct| {
        // SAFETY: an entry of the map, alive for this program run; concurrent writers can only
        // set the same bit.
        let r = unsafe { &mut *ct };
        if r.flags & FLOW_SNAT == 0 {
            return None;
        }
        if meta.tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0 && r.flags & FLOW_CLOSING == 0 {
            r.flags |= FLOW_CLOSING;
        }
        copy_words(&mut meta.flow, r);
        if half_open {
            // The key is still the reply key here, as `on_reply` expects.
            half_open::on_reply(meta, ct);
        }
        Some(())
    });
    meta.key4.dir = 0;
    meta.key.dir = 0;
    found
}
