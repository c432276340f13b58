//! The kernel object: embedding, loading (with or without pinned maps) and reading counters.

mod counters;
mod loader;

pub use counters::{DestCount, ParseCounts, read_dest_stats, read_parse_stats};
pub use loader::{
    EbpfLoadError, KernelObject, PINNED_MAPS, attach_tc_egress, attach_xdp, load_object,
    tc_program, xdp_program,
};
