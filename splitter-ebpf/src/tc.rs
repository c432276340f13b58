//! TC egress: replies from a backend to a client leave with the VIP as their source, and ICMP
//! errors about a local flow's forward packets quote what the client sent (`icmp`).
//!
//! TC has checksum helpers that know the skb's checksum state (CHECKSUM_PARTIAL from a local
//! stack included), so the reverse path uses them instead of hand-made incremental updates.

use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::TcContext,
};
use splitter_common::{
    counters::IPPROTO_UDP,
    l4::{DIR_REPLY, FLOW_CLOSING, FlowKey, FlowKey4},
};

use crate::{
    half_open, icmp,
    maps::{CONNTRACK, CONNTRACK_V4, HALF_OPEN, HALF_OPEN_V4, SCRATCH},
    parse::{Family, IPPROTO_ICMP, IPPROTO_ICMPV6, TCP_FLAG_FIN, TCP_FLAG_RST, parse_frame},
    rewrite::l4_csum_offset,
};

#[inline(always)]
pub fn reverse_nat(ctx: &TcContext) -> Result<(), ()> {
    let meta = SCRATCH.get_ptr_mut(1).ok_or(())?;
    // SAFETY: this CPU's TC scratch slot.
    let meta = unsafe { &mut *meta };
    parse_frame(ctx, meta).map_err(|_| ())?;
    if meta.key.proto == IPPROTO_ICMP || meta.key.proto == IPPROTO_ICMPV6 {
        icmp::on_egress(ctx, meta);
        return Ok(());
    }
    // The reply entry is keyed by the tuple as the reply carries it: look it up in place (by
    // reference: the key stays in the scratch map instead of being copied to the stack).
    let mut half_open = false;
    let ct = match meta.family {
        Family::V4 => {
            meta.key4.dir = DIR_REPLY;
            let key: &FlowKey4 = &meta.key4;
            match CONNTRACK_V4.get_ptr_mut(key) {
                Some(ct) => Some(ct),
                None => {
                    half_open = true;
                    HALF_OPEN_V4.get_ptr_mut(key)
                }
            }
        }
        Family::V6 => {
            meta.key.dir = DIR_REPLY;
            let key: &FlowKey = &meta.key;
            match CONNTRACK.get_ptr_mut(key) {
                Some(ct) => Some(ct),
                None => {
                    half_open = true;
                    HALF_OPEN.get_ptr_mut(key)
                }
            }
        }
    };
    let Some(ct) = ct else {
        return Ok(());
    };
    // SAFETY: an entry of the map, alive for this program run; concurrent writers can only set
    // the same bit.
    let ct_ref = unsafe { &mut *ct };
    if meta.tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST) != 0 && ct_ref.flags & FLOW_CLOSING == 0 {
        // The backend closes: the entry may be reaped once the close is over (userspace).
        ct_ref.flags |= FLOW_CLOSING;
    }
    let value = *ct_ref;
    if half_open {
        // A SYN-ACK is recorded, a UDP answer confirms (the entry may move to conntrack).
        half_open::on_reply(meta, ct);
    }
    let ct = value;
    let csum_off = meta.l4_offset as usize + l4_csum_offset(meta.key.proto);
    let mangled0 = if meta.key.proto == IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    let pseudo = BPF_F_PSEUDO_HDR as u64 | mangled0;
    match meta.family {
        Family::V4 => {
            let old = u32::from_ne_bytes([
                meta.key.src[12],
                meta.key.src[13],
                meta.key.src[14],
                meta.key.src[15],
            ]);
            let new_bytes = [ct.addr[12], ct.addr[13], ct.addr[14], ct.addr[15]];
            let new = u32::from_ne_bytes(new_bytes);
            ctx.l4_csum_replace(csum_off, old as u64, new as u64, pseudo | 4)
                .map_err(|_| ())?;
            ctx.l3_csum_replace(meta.l3_offset as usize + 10, old as u64, new as u64, 4)
                .map_err(|_| ())?;
            ctx.store(meta.l3_offset as usize + 12, &new_bytes, 0)
                .map_err(|_| ())?;
        }
        Family::V6 => {
            for i in 0..4 {
                let o = u32::from_ne_bytes([
                    meta.key.src[4 * i],
                    meta.key.src[4 * i + 1],
                    meta.key.src[4 * i + 2],
                    meta.key.src[4 * i + 3],
                ]);
                let n = u32::from_ne_bytes([
                    ct.addr[4 * i],
                    ct.addr[4 * i + 1],
                    ct.addr[4 * i + 2],
                    ct.addr[4 * i + 3],
                ]);
                ctx.l4_csum_replace(csum_off, o as u64, n as u64, pseudo | 4)
                    .map_err(|_| ())?;
            }
            ctx.store(meta.l3_offset as usize + 8, &ct.addr, 0)
                .map_err(|_| ())?;
        }
    }
    let old_port = meta.key.src_port.to_be();
    let new_port = ct.port.to_be();
    ctx.l4_csum_replace(csum_off, old_port as u64, new_port as u64, mangled0 | 2)
        .map_err(|_| ())?;
    ctx.store(meta.l4_offset as usize, &new_port, 0)
        .map_err(|_| ())?;
    Ok(())
}
