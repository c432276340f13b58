//! `cargo xtask build-ebpf`: the kernel object, built by the agent's build script.
//!
//! The recipe (nightly, `-Z build-std=core`, `--release`, `-C debuginfo=2`, `-C link-arg=--btf`)
//! lives only in `splitter/build.rs` via aya-build. This task runs that build script through cargo
//! and reports where it left the object, so what an operator inspects with bpftool is byte for
//! byte what the agent embeds.

use std::{
    io::BufReader,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, bail};
use cargo_metadata::{Message, MetadataCommand};

/// The package whose build script builds the object.
const AGENT_PACKAGE: &str = "splitter";
/// File name of the object in the build script's `OUT_DIR` (the eBPF crate's bin name).
const OBJECT_NAME: &str = "splitter-ebpf";

pub fn run(release: bool) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let metadata = MetadataCommand::new()
        .cargo_path(&cargo)
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let agent = metadata
        .workspace_packages()
        .into_iter()
        .find(|p| p.name == AGENT_PACKAGE)
        .map(|p| p.id.clone())
        .with_context(|| format!("no package {AGENT_PACKAGE} in the workspace"))?;

    let mut cmd = Command::new(&cargo);
    cmd.args([
        "check",
        "--package",
        AGENT_PACKAGE,
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
    for message in Message::parse_stream(BufReader::new(stdout)) {
        if let Message::BuildScriptExecuted(script) = message?
            && script.package_id == agent
        {
            out_dir = Some(script.out_dir.into_std_path_buf());
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
