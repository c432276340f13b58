//! `cargo xtask test`: the one command CI and developers run. It installs what is missing
//! (setup is idempotent), then checks formatting, lints everything including the kernel crate,
//! and runs every test, the privileged ones included (they need root and fail loudly under CI
//! without it).

use std::process::Command;

use anyhow::{Context, bail};

fn step(name: &str, cmd: &mut Command) -> anyhow::Result<()> {
    println!("xtask test: {name}: {cmd:?}");
    let start = std::time::Instant::now();
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    println!(
        "xtask test: {name}: {status} in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    if !status.success() {
        bail!("{name} failed");
    }
    Ok(())
}

pub fn run() -> anyhow::Result<()> {
    crate::setup::run()?;
    step(
        "fmt",
        Command::new("cargo").args(["fmt", "--all", "--", "--check"]),
    )?;
    step(
        "clippy (userspace)",
        Command::new("cargo").args([
            "clippy",
            "--workspace",
            "--exclude",
            "splitter-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    // The kernel crate only builds for the BPF target, with nightly and build-std.
    step(
        "clippy (kernel)",
        Command::new("cargo")
            .args([
                "+nightly",
                "clippy",
                "--package",
                "splitter-ebpf",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--release",
                "--",
                "-D",
                "warnings",
            ])
            .env_remove("RUSTUP_TOOLCHAIN")
            .env("CARGO_TARGET_DIR", "target/clippy-ebpf"),
    )?;
    step(
        "test",
        Command::new("cargo").args(["test", "--workspace", "--exclude", "splitter-ebpf"]),
    )?;
    Ok(())
}
