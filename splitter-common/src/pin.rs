//! Where maps and links are pinned, and the layout version in that path.

/// The layout version as a literal, the one place the number is written: `concat!` takes
/// literals, not consts, and the pin directories below are spelled with it.
macro_rules! layout_version {
    () => {
        6
    };
}

/// The pin directory below a bpffs mount, `splitter/v{LAYOUT_VERSION}`.
macro_rules! pin_subdir {
    () => {
        concat!("splitter/v", layout_version!())
    };
}

/// Bumped whenever the layout of a pinned map changes, so that a new agent never adopts a pinned
/// map whose keys or values it would misread: the version is part of the pin directory, and the
/// agent refuses a pin whose type, sizes, capacity or flags differ from its object's (aya 0.14
/// does not check a reused pin's layout).
///
/// The agent's `pinned_layouts_match_the_layout_version` test fails when the maps of the kernel
/// object no longer match [`LAYOUT_FINGERPRINTS`] for this version.
pub const LAYOUT_VERSION: u32 = layout_version!();

/// Where this layout's pins live below a bpffs mount: `splitter/v{LAYOUT_VERSION}` (e.g.
/// `splitter/v6`).
pub const PIN_SUBDIR: &str = pin_subdir!();

/// Default pin directory: [`PIN_SUBDIR`] on the bpffs at `/sys/fs/bpf` (e.g.
/// `/sys/fs/bpf/splitter/v6`).
pub const DEFAULT_PIN_DIR: &str = concat!("/sys/fs/bpf/", pin_subdir!());

/// What each layout version's pinned maps are, one line per map in name order:
/// `NAME TYPE key=K value=V max_entries=M flags=F`, as the kernel object declares them.
///
/// The entry for [`LAYOUT_VERSION`] is checked against the embedded object by the agent's tests;
/// when a map changes, bump [`LAYOUT_VERSION`] and add the new version's entry (older entries stay
/// as the record of what each version was).
pub const LAYOUT_FINGERPRINTS: &[(u32, &str)] = &[
    (
        3,
        "\
BACKENDS Array key=4 value=24 max_entries=4096 flags=0x0
BACKEND_STATS PerCpuArray key=4 value=32 max_entries=4096 flags=0x0
CONNTRACK LruHash key=40 value=32 max_entries=262144 flags=0x0
CONNTRACK_V4 LruHash key=16 value=32 max_entries=262144 flags=0x0
DEST_STATS PerCpuHash key=20 value=16 max_entries=4096 flags=0x0
L4_DROPS PerCpuArray key=4 value=8 max_entries=7 flags=0x0
PARSE_STATS PerCpuArray key=4 value=8 max_entries=7 flags=0x0
ROUTES Array key=4 value=16 max_entries=32 flags=0x0
ROUTE_STATS PerCpuArray key=4 value=32 max_entries=32 flags=0x0
TABLES Array key=4 value=4 max_entries=4194368 flags=0x0
VIPS Hash key=20 value=8 max_entries=1024 flags=0x0
",
    ),
    (
        4,
        "\
BACKENDS Array key=4 value=24 max_entries=4096 flags=0x0
BACKEND_STATS PerCpuArray key=4 value=32 max_entries=4096 flags=0x0
CONNTRACK LruHash key=40 value=56 max_entries=262144 flags=0x0
CONNTRACK_V4 LruHash key=16 value=56 max_entries=262144 flags=0x0
DEST_STATS PerCpuHash key=20 value=16 max_entries=4096 flags=0x0
L4_CONFIG Array key=4 value=40 max_entries=1 flags=0x0
L4_DROPS PerCpuArray key=4 value=8 max_entries=14 flags=0x0
PARSE_STATS PerCpuArray key=4 value=8 max_entries=7 flags=0x0
ROUTES Array key=4 value=16 max_entries=32 flags=0x0
ROUTE_STATS PerCpuArray key=4 value=32 max_entries=32 flags=0x0
TABLES Array key=4 value=4 max_entries=4194368 flags=0x0
VIPS Hash key=20 value=8 max_entries=1024 flags=0x0
",
    ),
    (
        5,
        "\
BACKENDS Array key=4 value=24 max_entries=4096 flags=0x0
BACKEND_STATS PerCpuArray key=4 value=32 max_entries=4096 flags=0x0
CONNTRACK LruHash key=40 value=56 max_entries=262144 flags=0x0
CONNTRACK_V4 LruHash key=16 value=56 max_entries=262144 flags=0x0
DEST_STATS PerCpuHash key=20 value=16 max_entries=4096 flags=0x0
L4_CONFIG Array key=4 value=40 max_entries=1 flags=0x0
L4_DROPS PerCpuArray key=4 value=8 max_entries=16 flags=0x0
PARSE_STATS PerCpuArray key=4 value=8 max_entries=7 flags=0x0
ROUTES Array key=4 value=16 max_entries=32 flags=0x0
ROUTE_STATS PerCpuArray key=4 value=32 max_entries=32 flags=0x0
TABLES Array key=4 value=4 max_entries=4194368 flags=0x0
VIPS Hash key=20 value=8 max_entries=1024 flags=0x0
",
    ),
    (
        6,
        "\
BACKENDS Array key=4 value=24 max_entries=4096 flags=0x0
BACKEND_STATS PerCpuArray key=4 value=32 max_entries=4096 flags=0x0
CONNTRACK LruHash key=40 value=56 max_entries=262144 flags=0x0
CONNTRACK_V4 LruHash key=16 value=56 max_entries=262144 flags=0x0
DEST_STATS PerCpuHash key=20 value=16 max_entries=4096 flags=0x0
FLOOD_WINDOW PerCpuArray key=4 value=16 max_entries=1 flags=0x0
HALF_OPEN LruHash key=40 value=56 max_entries=65536 flags=0x0
HALF_OPEN_V4 LruHash key=16 value=56 max_entries=65536 flags=0x0
L4_CONFIG Array key=4 value=56 max_entries=1 flags=0x0
L4_DROPS PerCpuArray key=4 value=8 max_entries=20 flags=0x0
PARSE_STATS PerCpuArray key=4 value=8 max_entries=7 flags=0x0
ROUTES Array key=4 value=16 max_entries=32 flags=0x0
ROUTE_STATS PerCpuArray key=4 value=32 max_entries=32 flags=0x0
SOURCE_RATE LruHash key=16 value=16 max_entries=65536 flags=0x0
TABLES Array key=4 value=4 max_entries=4194368 flags=0x0
VIPS Hash key=20 value=8 max_entries=1024 flags=0x0
",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pin_directories_carry_the_layout_version() {
        let version = PIN_SUBDIR.strip_prefix("splitter/v").map(str::parse::<u32>);
        assert_eq!(version, Some(Ok(LAYOUT_VERSION)), "{PIN_SUBDIR}");
        assert_eq!(
            DEFAULT_PIN_DIR.strip_prefix("/sys/fs/bpf/"),
            Some(PIN_SUBDIR)
        );
    }

    #[test]
    fn the_current_version_has_a_fingerprint() {
        let (last, _) = LAYOUT_FINGERPRINTS[LAYOUT_FINGERPRINTS.len() - 1];
        assert_eq!(
            last, LAYOUT_VERSION,
            "LAYOUT_FINGERPRINTS must end with the entry for LAYOUT_VERSION"
        );
        assert!(
            LAYOUT_FINGERPRINTS.windows(2).all(|w| w[0].0 < w[1].0),
            "LAYOUT_FINGERPRINTS is in version order, one entry per version"
        );
    }
}
