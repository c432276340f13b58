//! Map names and sizes shared by the kernel program and the agent.

/// Per-CPU per-destination packet counters: [`crate::DestKey`] -> [`crate::DestStats`].
pub const DEST_STATS: &str = "DEST_STATS";
/// Capacity of [`DEST_STATS`]; a full map stops counting new destinations (counted as
/// [`crate::ParseOutcome::DestTableFull`]) rather than evicting old ones.
pub const DEST_STATS_MAX_ENTRIES: u32 = 4096;

/// Per-CPU counters indexed by [`crate::ParseOutcome`].
pub const PARSE_STATS: &str = "PARSE_STATS";

/// Name of the XDP ingress program in the object.
pub const XDP_PROGRAM: &str = "splitter_xdp";
/// An empty XDP program (returns XDP_PASS), the floor benchmarks compare against.
pub const XDP_FLOOR_PROGRAM: &str = "splitter_xdp_floor";
