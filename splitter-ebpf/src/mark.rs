//! Marks in the XDP metadata area: how XDP hands a packet to the TC ingress program to send out
//! (see `splitter_common::l4::XdpMark`).

use aya_ebpf::{helpers::bpf_xdp_adjust_meta, programs::XdpContext};
use splitter_common::l4::{L4Event, XDP_MARK_MAGIC, XdpMark};

use crate::counters::count_event;

/// Puts `XDP_MARK_MAGIC | kind` in front of the packet. Packet pointers taken before are invalid
/// afterwards: call it last.
#[inline(always)]
pub fn mark(ctx: &XdpContext, kind: u32) -> Result<(), ()> {
    let len = size_of::<XdpMark>() as i32;
    // SAFETY: plain helper call on this program's own context.
    if unsafe { bpf_xdp_adjust_meta(ctx.ctx, -len) } != 0 {
        count_event(L4Event::MarkFailed);
        return Err(());
    }
    // SAFETY: reading the context's fields.
    let (meta, data) = unsafe { ((*ctx.ctx).data_meta as usize, (*ctx.ctx).data as usize) };
    if meta + size_of::<XdpMark>() > data {
        count_event(L4Event::MarkFailed);
        return Err(());
    }
    // SAFETY: the four bytes lie in the metadata area (checked above); 4-aligned, as the
    // kernel keeps the metadata start.
    unsafe { (meta as *mut u32).write_unaligned(XDP_MARK_MAGIC | kind) };
    Ok(())
}
