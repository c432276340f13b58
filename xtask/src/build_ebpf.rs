//! `cargo xtask build-ebpf`: the kernel object, built by the agent's build script.
//!
//! The recipe (nightly, `-Z build-std=core`, `--release`, `-C debuginfo=2`, `-C link-arg=--btf`)
//! lives only in `splitter/build.rs` via aya-build. This task runs that build script through cargo
//! and reports where it left the object, so what an operator inspects with bpftool is byte for
//! byte what the agent embeds.

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

/// File name of the object in the build script's `OUT_DIR` (the eBPF crate's bin name).
const OBJECT_NAME: &str = "splitter-ebpf";

pub fn run(release: bool) -> anyhow::Result<PathBuf> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "check",
        "--package",
        "splitter",
        "--message-format=json-render-diagnostics",
    ]);
    if release {
        cmd.arg("--release");
    }
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let stdout = child.stdout.take().context("cargo stdout")?;
    let mut out_dir = None;
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let is_agent_build_script = msg["reason"] == "build-script-executed"
            && msg["package_id"].as_str().is_some_and(|id| {
                id.contains("/splitter#") || id.contains("splitter@") || id.ends_with("/splitter")
            });
        if is_agent_build_script {
            out_dir = msg["out_dir"].as_str().map(PathBuf::from);
        }
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    let out_dir = out_dir.context("cargo reported no build-script run for the splitter package")?;
    let object = out_dir.join(OBJECT_NAME);
    if !object.is_file() {
        bail!("the build script ran but {} is missing", object.display());
    }
    Ok(object)
}
