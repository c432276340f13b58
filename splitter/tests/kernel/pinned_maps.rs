//! Maps pinned on a private bpffs: bpftool dumps them with named fields, a second load adopts
//! them (counts survive), and `splitter inspect` reads them from the pins.

use std::process::Command;

use crate::support::*;
use serde_json::Value;
use splitter::dataplane::ebpf;
use splitter_common::{
    maps::{DEST_STATS, PARSE_STATS},
    pin::PIN_SUBDIR,
};
use testbed::BpfFs;

fn bpftool_dump(path: &std::path::Path) -> Value {
    let out = Command::new("bpftool")
        .args(["--json", "map", "dump", "pinned"])
        .arg(path)
        .output()
        .expect("run bpftool (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "bpftool failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("bpftool JSON")
}

#[test]
fn pinned_maps_dump_with_named_fields_and_survive_reload() {
    if !testbed::require_root("pinned_maps_dump_with_named_fields_and_survive_reload") {
        return;
    }
    let fs = BpfFs::new().expect("private bpffs");
    let pin_dir = fs.path().join(PIN_SUBDIR);
    let frame = ipv4_tcp([10, 7, 7, 7], 443, b"x");

    {
        let mut obj = ebpf::load_object(Some(&pin_dir)).expect("load with pins");
        assert_eq!(run_xdp(&mut obj, &frame).expect("run"), XDP_PASS);
    }
    assert!(
        pin_dir.join(DEST_STATS).exists() && pin_dir.join(PARSE_STATS).exists(),
        "maps pinned"
    );

    // A new load adopts the pinned maps: the count continues instead of restarting.
    let mut obj = ebpf::load_object(Some(&pin_dir)).expect("reload adopting pins");
    assert_eq!(run_xdp(&mut obj, &frame).expect("run"), XDP_PASS);
    let d = dest_counts(&obj);
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].stats.packets, 2, "count survived the reload");

    // bpftool shows BTF field names for key and per-CPU values.
    let dump = bpftool_dump(&pin_dir.join(DEST_STATS));
    let text = dump.to_string();
    for field in [
        "\"addr\"",
        "\"port\"",
        "\"proto\"",
        "\"packets\"",
        "\"bytes\"",
    ] {
        assert!(text.contains(field), "bpftool dump lacks {field}: {text}");
    }
    let entry = &dump.as_array().expect("array of entries")[0];
    let formatted = entry.get("formatted").unwrap_or(entry);
    assert_eq!(
        formatted["key"]["port"], 443,
        "key printed by field: {formatted}"
    );

    // The operator's view through the real binary.
    let out = Command::new(env!("CARGO_BIN_EXE_splitter"))
        .args(["inspect", "--pin-dir"])
        .arg(&pin_dir)
        .output()
        .expect("run splitter inspect");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "inspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("10.7.7.7:443/tcp"), "{stdout}");
    assert!(stdout.contains("packets          2"), "{stdout}");
}

#[test]
fn inspect_reports_missing_pins_precisely() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(env!("CARGO_BIN_EXE_splitter"))
        .args(["inspect", "--pin-dir"])
        .arg(dir.path())
        .output()
        .expect("run splitter inspect");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("PARSE_STATS") && stderr.contains("--pin-dir"),
        "{stderr}"
    );
}

#[test]
fn a_pin_with_another_layout_is_refused_precisely() {
    if !testbed::require_root("a_pin_with_another_layout_is_refused_precisely") {
        return;
    }
    use aya::maps::MapData;
    let fs = BpfFs::new().expect("private bpffs");
    let pin_dir = fs.path().join(PIN_SUBDIR);
    {
        // A well-formed pin set, then ROUTES replaced by a map of another value size, as an
        // older agent with a different RouteMeta would have left it.
        let _obj = ebpf::load_object(Some(&pin_dir)).expect("first load");
    }
    let routes = pin_dir.join(splitter_common::l4::ROUTES);
    std::fs::remove_file(&routes).expect("unpin ROUTES");
    let mut other = ebpf::load_object(None).expect("scratch object");
    let stats = other
        .ebpf
        .take_map(PARSE_STATS)
        .expect("a map of another layout");
    let data: MapData = match stats {
        aya::maps::Map::PerCpuArray(d) => d,
        m => panic!("unexpected map {m:?}"),
    };
    data.pin(&routes).expect("pin a wrong-layout map as ROUTES");
    let err = match ebpf::load_object(Some(&pin_dir)) {
        Ok(_) => panic!("a pin with a foreign layout was adopted"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("ROUTES") && err.contains("incompatible agent"),
        "{err}"
    );
    // The pin is compared field by field with what the embedded object declares, type included.
    assert!(
        err.contains("is PerCpuArray key=4 value=8")
            && err.contains("declares Array key=4 value=16"),
        "{err}"
    );
}
