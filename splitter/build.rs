//! Builds the kernel object (`splitter-ebpf`) for the BPF target and leaves it in `OUT_DIR`, where
//! `dataplane::ebpf::object` embeds it.
//!
//! This is the one build recipe for the object: aya-build runs `cargo +nightly build
//! --target bpfel-unknown-none -Z build-std=core --release` with `-C debuginfo=2 -C
//! link-arg=--btf`. `cargo xtask build-ebpf` drives this script instead of repeating it.

use std::path::Path;

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let ebpf_dir = Path::new(&manifest_dir)
        .parent()
        .expect("the agent crate sits in the workspace")
        .join("splitter-ebpf");
    let ebpf_dir = ebpf_dir.to_str().expect("workspace path is UTF-8");
    let package = aya_build::Package {
        name: "splitter-ebpf",
        root_dir: ebpf_dir,
        ..Default::default()
    };
    if let Err(err) = aya_build::build_ebpf([package], aya_build::Toolchain::default()) {
        panic!(
            "building the eBPF object failed: {err:#}\n\
             (run `cargo xtask setup` once: it installs rust-src for nightly and bpf-linker)"
        );
    }
}
