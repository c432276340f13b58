//! The kernel object: embedding, loading (with or without pinned maps) and reading counters.

mod bpffs;
mod counters;
mod l4_actuator;
mod l4_delta;
#[cfg(test)]
mod l4_fake;
mod l4_maps;
mod l4_state;
mod l4_sweep;
mod layout;
mod links;
mod loader;

pub use bpffs::{BpfFsError, prepare_pin_dir};
pub use counters::{DestCount, ParseCounts, read_dest_stats, read_parse_stats};
pub use l4_actuator::{
    ApplyReport, L4Actuator, L4ApplyError, L4Proto, L4RouteProgram, SweepReport, addr16, vip_key,
};
pub use l4_maps::{KernelL4Maps, L4Maps};
pub use l4_state::{BackendShare, L4State, RouteState, read_events, read_l4_state};
pub use l4_sweep::CtKey;
pub use layout::{MapLayout, PINNED_MAPS};
pub use links::{
    Attachment, DetachReport, LinkPinError, TcAttachMode, XdpAttachMode, attach_pinned,
    attached_ifaces, detach_all, detach_pinned, has_tcx, is_occupied, tc_ingress_pin_path,
    tc_netlink_record_path, tc_pin_path, xdp_pin_path,
};
pub use loader::{
    EbpfLoadError, KernelObject, attach_tc_egress, attach_tc_ingress, attach_xdp, load_object,
    tc_ingress_program, tc_program, xdp_program,
};
