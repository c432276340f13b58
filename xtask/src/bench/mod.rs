//! `cargo xtask bench l4 | l7 | plan | scale`: benchmarks, not tests. They print figures and ratios
//! against peers measured in the same run, and assert nothing about speed.

mod callgrind;
mod cpu;
mod haproxy;
mod l7;
mod nginx;
mod pinned;
mod scale;
mod tls;
mod wrk;

use std::{
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::bail;
use clap::Subcommand;
use nix::sys::signal::{SigHandler, Signal, signal};

pub use l7::L7Options;
pub use scale::ScaleOptions;

#[derive(Subcommand)]
pub enum Bench {
    /// The kernel data path against an empty XDP program and iptables DNAT (`cargo bench
    /// --bench l4`; root).
    L4 {
        /// Instead: the gateway's marginal CPU per new connection at a fixed rate below
        /// saturation, against iptables DNAT and plain routing.
        #[arg(long)]
        cost: bool,
    },
    /// The L7 proxy against nginx with the same weighted upstream, driven by wrk (root);
    /// `--tls`: over HTTPS, keep-alive and new connections.
    L7(L7Options),
    /// Planning 10,000 HTTPRoutes and building a Maglev table (`cargo bench -p splitter-plan --bench plan`).
    Plan,
    /// The control plane at scale: memory, time to the first plan, and endpoint-change and
    /// route-edit latencies to the proxy, and endpoint-change latency to the kernel table, at
    /// 1k and 10k routes, fed from manifest files and from a mock Kubernetes API server (root).
    Scale(ScaleOptions),
}

pub fn run(bench: Bench) -> anyhow::Result<()> {
    match bench {
        Bench::L4 { cost } => {
            // The peer: iptables DNAT as kube-proxy programs it.
            crate::setup::debian_tools(&[("iptables", "iptables")])?;
            cargo_bench("splitter", "l4", if cost { &["cost"] } else { &[] })
        }
        Bench::Plan => cargo_bench("splitter-plan", "plan", &[]),
        Bench::L7(opts) => l7::run(&opts),
        Bench::Scale(opts) => scale::run(&opts),
    }
}

/// `cargo bench -p PACKAGE --bench NAME -- PARTS`: the benches that live in the crate they
/// measure.
fn cargo_bench(package: &str, name: &str, parts: &[&str]) -> anyhow::Result<()> {
    let st = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["bench", "--package", package, "--bench", name, "--"])
        .args(parts)
        .status()?;
    if !st.success() {
        bail!("cargo bench --bench {name} failed: {st}");
    }
    Ok(())
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: nix::libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Turns Ctrl-C into an error at the next [`interrupted`] check, so the bench unwinds through
/// its guards (processes stopped, namespaces deleted) instead of dying with them in place.
/// Children get the terminal's SIGINT themselves (exec resets the handler).
fn catch_interrupt() -> anyhow::Result<()> {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe { signal(Signal::SIGINT, SigHandler::Handler(on_interrupt)) }?;
    Ok(())
}

fn interrupted() -> anyhow::Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}
