//! `cargo xtask setup`: installs what building and testing splitter needs, idempotently.
//!
//! With everything present it only looks, and finishes in seconds.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

const BPF_LINKER_VERSION: &str = "0.13.0";
/// The LLVM major version of the preinstalled nightly; bpf-linker must link this very LLVM.
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";

/// (command on PATH, Debian package that provides it).
const DEBIAN_TOOLS: &[(&str, &str)] = &[
    // jemalloc (the agent's allocator) is built from C by its crate's build script.
    ("cc", "gcc"),
    ("make", "make"),
    ("ip", "iproute2"),
    ("bpftool", "bpftool"),
    ("ethtool", "ethtool"),
    ("curl", "curl"),
];

pub fn run() -> anyhow::Result<()> {
    rust_src()?;
    bpf_linker()?;
    debian_tools(DEBIAN_TOOLS)?;
    println!("setup: everything is in place");
    Ok(())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn status(cmd: &mut Command) -> anyhow::Result<()> {
    let st = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed: {st}");
    }
    Ok(())
}

fn rust_src() -> anyhow::Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: rust-src for nightly: present");
        return Ok(());
    }
    println!("setup: installing rust-src for nightly");
    status(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

fn nightly_sysroot() -> anyhow::Result<PathBuf> {
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    Ok(PathBuf::from(sysroot.trim()))
}

/// bpf-linker must load the nightly's own libLLVM. Its build looks for `lib/libLLVM.so` under
/// LLVM_PREFIX, which rustup does not ship (only the versioned file), so we add that symlink in
/// the sysroot itself: the linker's rpath points there, so it must stay.
fn ensure_llvm_symlink(sysroot: &Path) -> anyhow::Result<()> {
    let lib = sysroot.join("lib");
    let link = lib.join("libLLVM.so");
    if link.exists() {
        return Ok(());
    }
    let versioned = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so.") || (n.starts_with("libLLVM-") && n.ends_with(".so")))
        .with_context(|| {
            format!(
                "no libLLVM in {}: is the nightly toolchain complete?",
                lib.display()
            )
        })?;
    let _ = std::fs::remove_file(&link); // a dangling link
    std::os::unix::fs::symlink(&versioned, &link)
        .with_context(|| format!("linking {} -> {versioned}", link.display()))?;
    println!("setup: linked {} -> {versioned}", link.display());
    Ok(())
}

fn bpf_linker_ok() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .output()
        .map(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)
        })
        .unwrap_or(false)
}

fn bpf_linker() -> anyhow::Result<()> {
    let sysroot = nightly_sysroot()?;
    ensure_llvm_symlink(&sysroot)?;
    if bpf_linker_ok() {
        println!("setup: bpf-linker {BPF_LINKER_VERSION}: present");
        return Ok(());
    }
    println!(
        "setup: installing bpf-linker {BPF_LINKER_VERSION} against {}",
        sysroot.display()
    );
    status(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--force",
                "--no-default-features",
                "--features",
                BPF_LINKER_LLVM_FEATURE,
            ])
            .env("LLVM_PREFIX", &sysroot)
            // Run from outside the workspace so its toolchain and config do not apply.
            .current_dir(std::env::temp_dir()),
    )?;
    if !bpf_linker_ok() {
        bail!(
            "bpf-linker installed but `bpf-linker --version` does not report {BPF_LINKER_VERSION}"
        );
    }
    Ok(())
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Installs the Debian packages whose commands are missing (one `apt-get update` at most).
pub fn debian_tools(tools: &[(&str, &str)]) -> anyhow::Result<()> {
    let missing: Vec<&str> = tools
        .iter()
        .filter(|(cmd, _)| !on_path(cmd) && !Path::new("/usr/sbin").join(cmd).is_file())
        .map(|(_, pkg)| *pkg)
        .collect();
    if missing.is_empty() {
        println!(
            "setup: {}: present",
            tools.iter().map(|(c, _)| *c).collect::<Vec<_>>().join(", ")
        );
        return Ok(());
    }
    println!("setup: installing Debian packages {}", missing.join(" "));
    status(Command::new("apt-get").args(["update", "-qq"]))?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
