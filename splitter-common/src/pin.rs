//! Where maps and links are pinned, and the layout version in that path.

/// Bumped whenever a map layout in this crate changes, so that a new agent never adopts a pinned
/// map whose keys or values it would misread (aya 0.14 does not check a reused pin's layout).
pub const LAYOUT_VERSION: u32 = 3;

/// Default pin directory on bpffs: `/sys/fs/bpf/splitter/v{LAYOUT_VERSION}`.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/splitter/v3";
