//! Pinned map layouts: what the embedded object declares, what a pin left behind, and whether an
//! agent may adopt the pin.
//!
//! The declared layouts come from parsing the embedded object (aya-obj, no syscalls), so the
//! check needs no table of its own: what the kernel program declares is what a pin must match.

use std::{fmt, path::Path};

use aya::maps::{MapError, MapInfo, MapType};
use aya_obj::{EbpfSectionKind, Object, generated::bpf_map_type};
use splitter_common::{
    l4::{
        BACKEND_STATS, BACKENDS, CONNTRACK, CONNTRACK_V4, FLOOD_WINDOW, HALF_OPEN, HALF_OPEN_V4,
        L4_CONFIG, L4_DROPS, ROUTE_STATS, ROUTES, SOURCE_RATE, TABLES, VIPS,
    },
    maps::{DEST_STATS, PARSE_STATS},
};

use super::loader::{EbpfLoadError, OBJECT};

/// Maps that are pinned (and so survive an agent restart) when a pin directory is given: every
/// map that holds state, so conntrack and tables outlive the process and established flows keep
/// flowing. Only the per-CPU scratch space is left out.
pub const PINNED_MAPS: [&str; 16] = [
    DEST_STATS,
    PARSE_STATS,
    VIPS,
    ROUTES,
    TABLES,
    BACKENDS,
    CONNTRACK,
    CONNTRACK_V4,
    HALF_OPEN,
    HALF_OPEN_V4,
    SOURCE_RATE,
    FLOOD_WINDOW,
    ROUTE_STATS,
    BACKEND_STATS,
    L4_DROPS,
    L4_CONFIG,
];

/// What the kernel fixes when it creates a map, and so what a pin must match to be reused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MapLayout {
    pub map_type: MapType,
    pub key_size: u32,
    pub value_size: u32,
    pub max_entries: u32,
    pub flags: u32,
}

impl MapLayout {
    /// The layout of a pinned map, as the kernel reports it.
    pub fn of_pin(path: &Path) -> Result<Self, MapError> {
        let info = MapInfo::from_pin(path)?;
        Ok(Self {
            map_type: info.map_type()?,
            key_size: info.key_size(),
            value_size: info.value_size(),
            max_entries: info.max_entries(),
            flags: info.map_flags(),
        })
    }

    fn of_object_map(map: &aya_obj::Map) -> Result<Self, MapError> {
        Ok(Self {
            map_type: bpf_map_type::try_from(map.map_type())?.try_into()?,
            key_size: map.key_size(),
            value_size: map.value_size(),
            max_entries: map.max_entries(),
            flags: map.map_flags(),
        })
    }
}

impl fmt::Display for MapLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} key={} value={} max_entries={} flags={:#x}",
            self.map_type, self.key_size, self.value_size, self.max_entries, self.flags
        )
    }
}

/// The layout of every declared map of the embedded object (global data sections such as
/// `.rodata` are left out: they are never pinned), in name order. The loader overrides no map's
/// type, sizes, capacity or flags, so these are the maps it creates.
fn object_layouts() -> Result<Vec<(String, MapLayout)>, EbpfLoadError> {
    let object = Object::parse(OBJECT).map_err(aya::EbpfError::from)?;
    let mut layouts = object
        .maps
        .iter()
        .filter(|(_, map)| {
            matches!(
                map.section_kind(),
                EbpfSectionKind::Maps | EbpfSectionKind::BtfMaps
            )
        })
        .map(|(name, map)| {
            MapLayout::of_object_map(map)
                .map(|layout| (name.clone(), layout))
                .map_err(|source| EbpfLoadError::ObjectMap {
                    name: name.clone(),
                    source,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    layouts.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(layouts)
}

/// Refuses pins under `dir` whose layout differs from the embedded object's.
pub(super) fn check_pinned_layouts(dir: &Path) -> Result<(), EbpfLoadError> {
    let declared = object_layouts()?;
    for name in PINNED_MAPS {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let expected = declared
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, layout)| *layout)
            .ok_or(EbpfLoadError::MissingMap { name })?;
        let found = MapLayout::of_pin(&path).map_err(|source| EbpfLoadError::PinnedInfo {
            path: path.clone(),
            source,
        })?;
        if found != expected {
            return Err(EbpfLoadError::PinnedLayout {
                path,
                found,
                expected,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use splitter_common::pin::{LAYOUT_FINGERPRINTS, LAYOUT_VERSION};

    use super::*;

    /// The fingerprint [`splitter_common::pin::LAYOUT_FINGERPRINTS`] keeps per version: one line per
    /// pinned map, in name order.
    fn pinned_fingerprint(layouts: &[(String, MapLayout)]) -> String {
        layouts
            .iter()
            .filter(|(name, _)| PINNED_MAPS.contains(&name.as_str()))
            .map(|(name, layout)| format!("{name} {layout}\n"))
            .collect()
    }

    #[test]
    fn every_pinned_map_is_declared_by_the_object() {
        let layouts = object_layouts().expect("parse the embedded object");
        for name in PINNED_MAPS {
            assert!(
                layouts.iter().any(|(n, _)| n == name),
                "{name} is not a map of the object: {layouts:?}"
            );
        }
    }

    /// A pinned map whose layout changes must come with a new `LAYOUT_VERSION` (and so a new pin
    /// directory): otherwise an upgraded agent would refuse the pins its predecessor left, or a
    /// rolled-back one would misread them.
    #[test]
    fn pinned_layouts_match_the_layout_version() {
        let fingerprint = pinned_fingerprint(&object_layouts().expect("parse the embedded object"));
        let committed = LAYOUT_FINGERPRINTS
            .iter()
            .find(|(version, _)| *version == LAYOUT_VERSION)
            .map(|(_, fingerprint)| *fingerprint);
        let next = LAYOUT_VERSION + 1;
        match committed {
            None => panic!(
                "splitter-common/src/pin.rs: LAYOUT_FINGERPRINTS has no entry for \
                 LAYOUT_VERSION {LAYOUT_VERSION}; add it:\n\
                 ({LAYOUT_VERSION}, \"\\\n{fingerprint}\"),"
            ),
            Some(committed) => assert!(
                committed == fingerprint,
                "the pinned maps of the kernel object no longer match layout v{LAYOUT_VERSION} \
                 (splitter-common/src/pin.rs).\n\
                 A map's type, key or value size, capacity or flags changed: bump LAYOUT_VERSION \
                 to {next} and add its entry to LAYOUT_FINGERPRINTS (keep the older ones), so \
                 that the new layout gets a pin directory of its own:\n\
                 ({next}, \"\\\n{fingerprint}\"),\n\
                 v{LAYOUT_VERSION} is:\n{committed}"
            ),
        }
    }
}
