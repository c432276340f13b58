//! `cargo xtask bench scale`: the control plane at cluster scale, fed from manifest files or
//! from a Kubernetes API server.
//!
//! A synthetic cluster (HTTPRoutes over Services whose EndpointSlices hold made-up addresses
//! nobody connects to: [`cluster`]) is given to the agent by one source or the other
//! (`--source`): written as manifest files it watches (`splitter run --manifests`, [`files`]),
//! or stored in a mock API server it watches (`splitter run --kube`, [`kube`]), which also
//! takes the agent's Lease and status writes. The agent runs in a network namespace of its own,
//! with its kernel half attached (XDP and TC) to one end of a veth pair whose both ends are in
//! that namespace, maps pinned on a private bpffs; the mock API server listens on loopback in
//! that namespace. Nothing leaves the namespace: the bench sends no packet to the kernel route,
//! it reads the kernel's tables. Two real echo servers in the namespace answer a probe route.
//! The bench prints the agent's memory, the time from start to the probe route served, and
//! three latencies over `--changes` changes each, while `--churn` other EndpointSlices per
//! second change (in other files, or in the store):
//!
//! - **endpoint change -> served**: the probe Service's EndpointSlice is rewritten to name the
//!   other echo server; the latency ends with the first response from it;
//! - **route edit -> served**: an HTTPRoute is rewritten to send its host to the other echo
//!   Service; the same;
//! - **endpoint change -> kernel table**: one of the four endpoints of the Service behind an L4
//!   listener (a TCPRoute on a TCP listener of the same Gateway, served by XDP) is swapped for
//!   another address in its EndpointSlice; the latency ends when the live half of the route's
//!   Maglev table names the new endpoint set. The bench reads the route's meta from the pinned
//!   `ROUTES` map about every millisecond; when the live half flips (the agent's publish step),
//!   it reads the whole live half and its backends (that read is not counted).
//!
//! Each latency starts when the change is written: the file renamed into place, or the object
//! written into the API server's store (the watch event still has to reach the agent over
//! HTTP). The first two include everything a user waits for: the notification (file system or
//! watch), the plan, the proxy table install, and a request (one keep-alive connection, a
//! request every 200 µs); the third the notification, plan and the kernel table write. Nothing
//! is asserted; the figures are printed next to the targets.

mod cluster;
mod files;
mod kube;
mod measure;

use std::{
    net::SocketAddr,
    path::Path,
    process::Stdio,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;
use testbed::{BpfFs, ChildGuard, NetNs, VethPair};

use super::{interrupted, pinned::PinnedL4};
use crate::topology::{self, Profile};
use cluster::kernel_endpoints;
use measure::{heap, measure, measure_kernel, memory, plan_builds, scrape_path, wait_served};

#[derive(clap::Args, Debug)]
pub struct ScaleOptions {
    /// Cluster sizes to run, as ROUTES/SERVICES/ENDPOINTS (repeatable).
    #[arg(long = "size", default_values = ["1000/500/5000", "10000/5000/50000"])]
    sizes: Vec<Size>,
    /// Where the agent reads the cluster from (repeatable): manifest files, or a (mock)
    /// Kubernetes API server.
    #[arg(long = "source", default_values = ["files", "kube"])]
    sources: Vec<Source>,
    /// Changes measured per kind (endpoint change, route edit).
    #[arg(long, default_value_t = 1000)]
    changes: usize,
    /// Other objects changed per second while measuring (0: none).
    #[arg(long, default_value_t = 100)]
    churn: u32,
    /// The agent's log filter (`RUST_LOG`). Other than the default, the work directory (the
    /// manifests or kubeconfig, and `agent.log`) is kept, and the bench prints its path.
    /// `info,splitter::control=debug` logs each plan published and each kernel apply with its
    /// time, to match with the slowest changes the bench lists.
    #[arg(long, default_value = DEFAULT_AGENT_LOG)]
    agent_log: String,
}

const DEFAULT_AGENT_LOG: &str = "warn";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Source {
    /// `splitter run --manifests DIR`.
    Files,
    /// `splitter run --kube`, against the mock API server.
    Kube,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Files => "files",
            Source::Kube => "kube",
        })
    }
}

#[derive(Clone, Copy, Debug)]
struct Size {
    routes: usize,
    services: usize,
    endpoints: usize,
}

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let n: Vec<usize> = s
            .split('/')
            .map(|p| p.parse().map_err(|e| format!("{s}: {e}")))
            .collect::<Result<_, _>>()?;
        match n[..] {
            [routes, services, endpoints] if services > 1 && routes > 0 => Ok(Size {
                routes,
                services,
                endpoints,
            }),
            _ => Err(format!(
                "{s}: expected ROUTES/SERVICES/ENDPOINTS, at least 1 route and 2 Services"
            )),
        }
    }
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} routes, {} Services, {} endpoints",
            self.routes, self.services, self.endpoints
        )
    }
}

const PORT: u16 = 8080;
const ADMIN: &str = "127.0.0.1:19901";
const ECHO: [(&str, &str); 2] = [("127.0.0.2", "scale-a"), ("127.0.0.3", "scale-b")];
const ECHO_PORT: u16 = 1027;
/// How long the bench leaves the agent idle before reading its settled RSS.
const SETTLE: Duration = Duration::from_secs(3);
/// The node address on the interface the kernel half attaches to: the L4 listener's VIP.
const NODE: &str = "10.77.0.1";
/// The Gateway's TCP listener, served in the kernel.
const KERNEL_PORT: u16 = 9090;
/// The endpoints' port of the Service behind the TCP listener.
const KERNEL_TARGET: u16 = 8080;
/// The agent's node name in kube mode (the Lease holder).
const NODE_NAME: &str = "scale-node";

pub fn run(opts: &ScaleOptions) -> anyhow::Result<()> {
    if !testbed::is_root() {
        bail!("bench scale creates a network namespace: run it as root");
    }
    super::catch_interrupt()?;
    crate::setup::run()?;
    println!("bench scale: building the agent and the echo backend (release)");
    let bins = topology::build_binaries(Profile::Release)?;
    println!(
        "bench scale: one proxy worker, --coalesce-ms 100; {} changes of each kind, {} other objects changed per second meanwhile",
        opts.changes, opts.churn
    );
    for size in &opts.sizes {
        for source in &opts.sources {
            interrupted()?;
            println!();
            println!("== {size}, {source} source");
            one_size(&bins, *size, *source, opts)?;
        }
    }
    println!();
    println!(
        "targets (issue 18): endpoint change -> live p99 < 50 ms, file edit -> live < 250 ms, RSS < 64 MiB at 1k routes, < 128 MiB at 10k"
    );
    Ok(())
}

/// Where the cluster lives, and how a change reaches the agent.
enum Feed {
    /// Manifest files in a directory the agent watches.
    Files(files::Manifests),
    /// Objects in the mock API server the agent watches.
    Kube(kube::MockApi),
}

impl Feed {
    /// Writes `object` as a change: files mode replaces the manifest `file` that holds it.
    fn write(&self, file: &str, object: Value) -> anyhow::Result<()> {
        match self {
            Feed::Files(m) => m.replace(file, &object),
            Feed::Kube(api) => {
                api.put(object);
                Ok(())
            }
        }
    }
}

fn one_size(
    bins: &topology::Binaries,
    size: Size,
    source: Source,
    opts: &ScaleOptions,
) -> anyhow::Result<()> {
    let ns = NetNs::new("scale")?;
    // The kernel half's interface: a veth pair with both ends in the namespace, so nothing the
    // programs could pass on leaves it. Removed with the namespace.
    let link = VethPair::new(&ns, &[&format!("{NODE}/24")], &ns, &[])?;
    let pins = BpfFs::new()?;
    let pin_dir = pins.path().join(splitter_common::pin::PIN_SUBDIR);
    // Declared after the namespace and the bpffs, so it runs before they go (and after the
    // agent, declared later, has stopped).
    let _detach = Detach {
        ns: &ns,
        splitter: &bins.splitter,
        pin_dir: &pin_dir,
    };
    let mut echoes = Vec::new();
    for (addr, name) in ECHO {
        let child = ns
            .command(&bins.echo)
            .args(["--listen", &format!("{addr}:{ECHO_PORT}"), "--name", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting splitter-echo")?;
        echoes.push(ChildGuard(child));
    }
    let mut work = tempfile::Builder::new()
        .prefix("splitter-bench-scale-")
        .tempdir()?;
    let written = Instant::now();
    let mut agent = ns.command(&bins.splitter);
    let feed = match source {
        Source::Files => {
            let dir = work.path().join("manifests");
            std::fs::create_dir(&dir)?;
            let manifests = files::Manifests::write(dir, size)?;
            let (n, bytes) = manifests.footprint()?;
            println!(
                "manifests: {n} files, {:.1} MiB, written in {:.1} s",
                bytes as f64 / (1 << 20) as f64,
                written.elapsed().as_secs_f64()
            );
            agent.args(["run", "--manifests"]).arg(&manifests.dir);
            Feed::Files(manifests)
        }
        Source::Kube => {
            let api = kube::MockApi::start(&ns, size)?;
            let kubeconfig = work.path().join("kubeconfig");
            api.write_kubeconfig(&kubeconfig)?;
            println!(
                "API server: {} objects stored in {:.1} s, served at http://{} in the namespace",
                api.stored,
                written.elapsed().as_secs_f64(),
                api.addr
            );
            // The Gateway's addresses are given, so that the status writer does not list the
            // agent's pods (which the mock does not serve).
            agent
                .args([
                    "run",
                    "--kube",
                    "--node-name",
                    NODE_NAME,
                    "--status-address",
                ])
                .arg(NODE)
                .env("KUBECONFIG", &kubeconfig);
            Feed::Kube(api)
        }
    };
    let log_path = work.path().join("agent.log");
    let log = std::fs::File::create(&log_path)?;
    let started = Instant::now();
    let agent = ChildGuard(
        agent
            .args([
                "--admin",
                ADMIN,
                "--proxy-workers",
                "1",
                "--coalesce-ms",
                "100",
                "--iface",
                &link.a,
                "--pin-dir",
            ])
            .arg(&pin_dir)
            .env("RUST_LOG", &opts.agent_log)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the agent")?,
    );
    let run = Run {
        ns: &ns,
        link: &link,
        pin_dir: &pin_dir,
        feed: &feed,
        pid: agent.id(),
        work: work.path(),
        started,
        size,
        opts,
    };
    let result = run.measure();
    drop(agent);
    drop(feed);
    drop(echoes);
    if let Err(e) = result {
        work.disable_cleanup(true);
        return Err(e.context(format!("agent log: {}", log_path.display())));
    }
    if opts.agent_log != DEFAULT_AGENT_LOG {
        println!(
            "  (agent log and allocator reports kept: {})",
            work.keep().display()
        );
    }
    Ok(())
}

/// One agent's run, from its start: what the bench waits for and measures.
struct Run<'a> {
    ns: &'a NetNs,
    link: &'a VethPair,
    pin_dir: &'a Path,
    feed: &'a Feed,
    pid: u32,
    /// Where the agent's allocator reports go (`heap-start.txt`, `heap-end.txt`), kept with
    /// the agent's log.
    work: &'a Path,
    started: Instant,
    size: Size,
    opts: &'a ScaleOptions,
}

impl Run<'_> {
    /// The allocator's figures from `/metrics`, with its full report (`/debug/heap`) saved
    /// as `file` in the work directory.
    fn heap(&self, file: &str) -> String {
        if let Ok(report) = self.ns.run(|| scrape_path("/debug/heap")) {
            let _ = std::fs::write(self.work.join(file), report);
        }
        self.ns.run(heap).unwrap_or_else(|e| format!("heap: {e:#}"))
    }

    fn measure(&self) -> anyhow::Result<()> {
        let Self {
            ns,
            link,
            pin_dir,
            feed,
            pid,
            size,
            opts,
            ..
        } = *self;
        let requests = || match feed {
            Feed::Kube(api) => Some(api.requests()),
            Feed::Files(_) => None,
        };
        ns.run(|| wait_served("probe.scale.test", ECHO[0].1, Duration::from_secs(300)))
            .context("the probe route")?;
        let first = self.started.elapsed();
        let asked_start = requests();
        let rss_start = memory(pid)?;
        // What the agent keeps, rather than what it freed a moment ago and its allocator has
        // not handed back yet (about a second: `splitter/src/allocator.rs`).
        std::thread::sleep(SETTLE);
        let rss_settled = memory(pid)?;
        println!(
            "start -> probe route served: {:.2} s; RSS {:.1} MiB then, {:.1} MiB {} s later (peak {:.1} MiB)",
            first.as_secs_f64(),
            rss_start.0,
            rss_settled.0,
            SETTLE.as_secs(),
            rss_settled.1
        );
        println!("  {}", self.heap("heap-start.txt"));
        let vip = SocketAddr::new(NODE.parse()?, KERNEL_PORT);
        let (kernel, route) =
            wait_kernel(pin_dir, vip, Duration::from_secs(300)).context("the kernel route")?;
        let meta = kernel.meta(route)?;
        println!(
            "kernel: {} on {}; {vip}/tcp is route {route}, a {}-slot table over {} endpoints",
            xdp_attachment(ns, &link.a)?,
            link.a,
            meta.table_size,
            kernel_endpoints(0).len()
        );

        let asked_before = requests();
        let stop = AtomicBool::new(false);
        let churned = AtomicU64::new(0);
        let measured = std::thread::scope(|s| {
            if opts.churn > 0 {
                s.spawn(|| churn_loop(feed, size, opts.churn, &stop, &churned));
            }
            let measured = ns.run(|| -> anyhow::Result<_> {
                let endpoint = measure(opts.changes, "probe.scale.test", |i| {
                    feed.write(cluster::PROBE_SLICE, cluster::probe_slice(i % 2))?;
                    Ok(ECHO[i % 2].1)
                })?;
                let edit = measure(opts.changes, "edit.scale.test", |i| {
                    feed.write(cluster::EDIT_ROUTE, cluster::edit_route(i % 2))?;
                    Ok(ECHO[i % 2].1)
                })?;
                let table = measure_kernel(opts.changes, &kernel, route, |i| {
                    feed.write(cluster::KERNEL_SLICE, cluster::kernel_slice(i % 2))?;
                    Ok(kernel_endpoints(i % 2))
                })?;
                Ok((endpoint, edit, table))
            });
            stop.store(true, Ordering::Relaxed);
            measured
        });
        let (endpoint, edit, (table, other_publishes)) = measured?;
        let asked_after = requests();
        let rss_end = memory(pid)?;
        std::thread::sleep(SETTLE);
        let rss_end_settled = memory(pid)?;
        let builds = ns.run(plan_builds).unwrap_or(f64::NAN);
        let written = match feed {
            Feed::Files(_) => "the EndpointSlice file's rename",
            Feed::Kube(_) => "the EndpointSlice's write into the API server's store",
        };
        println!("endpoint change -> served:       {endpoint}");
        println!("route edit -> served:            {edit}");
        println!("endpoint change -> kernel table: {table}");
        println!(
            "  (from {written} to the route's live table half naming the new endpoints, read \
             from the pinned maps about every 1 ms; no packet sent; {other_publishes} other \
             publishes of that route seen meanwhile)"
        );
        for (what, l) in [
            ("endpoint change -> served", &endpoint),
            ("route edit -> served", &edit),
            ("endpoint change -> kernel table", &table),
        ] {
            println!("  slowest {what}: {}", l.slowest(3));
        }
        println!(
            "other objects changed meanwhile: {}; plans built: {builds}",
            churned.load(Ordering::Relaxed)
        );
        println!(
            "RSS after: {:.1} MiB as the changes end, {:.1} MiB {} s later (peak {:.1} MiB)",
            rss_end.0,
            rss_end_settled.0,
            SETTLE.as_secs(),
            rss_end_settled.1
        );
        println!("  {}", self.heap("heap-end.txt"));
        if let (Some(start), Some(before), Some(after), Some(all)) =
            (asked_start, asked_before, asked_after, requests())
        {
            println!("API server, the agent's requests:");
            println!("  start -> probe route served: {start}");
            println!("  then, until the changes:     {}", before.since(start));
            println!("  during the changes:          {}", after.since(before));
            println!("  in all:                      {all}");
        }
        Ok(())
    }
}

/// Rewrites the second slice of one made-up Service after another, `rate` per second: in a
/// small file of its own each (as many watch events are: one object each), or in the store.
fn churn_loop(feed: &Feed, size: Size, rate: u32, stop: &AtomicBool, done: &AtomicU64) {
    let every = Duration::from_secs(1) / rate;
    let mut next = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if feed
            .write(&files::churn_file(n), cluster::churn_slice(size, n))
            .is_ok()
        {
            done.fetch_add(1, Ordering::Relaxed);
        }
        n += 1;
        next += every;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

/// Removes what the agent leaves pinned on exit (its XDP/TC links, its maps) with `splitter
/// detach --all`, on every way out of [`one_size`]; the bpffs is unmounted after it.
struct Detach<'a> {
    ns: &'a NetNs,
    splitter: &'a Path,
    pin_dir: &'a Path,
}

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        if !self.pin_dir.exists() {
            return;
        }
        match self
            .ns
            .command(self.splitter)
            .args(["detach", "--all", "--pin-dir"])
            .arg(self.pin_dir)
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "bench scale: splitter detach --all: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("bench scale: splitter detach --all: {e}"),
        }
    }
}

/// Waits until the maps are pinned, `vip` names a route and its live table names the endpoints
/// of [`write_kernel_slice`]`(0)`.
fn wait_kernel(
    pin_dir: &Path,
    vip: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<(PinnedL4, u32)> {
    let t0 = Instant::now();
    let want = kernel_endpoints(0);
    loop {
        interrupted()?;
        let last = match PinnedL4::open(pin_dir) {
            Ok(kernel) => match kernel.route_of(vip)? {
                Some(route) => {
                    let meta = kernel.meta(route)?;
                    let live = kernel.live_backends(route, &meta)?;
                    if live == want {
                        return Ok((kernel, route));
                    }
                    format!("route {route} names {live:?}")
                }
                None => format!("no route for {vip}"),
            },
            Err(e) => format!("{e:#}"),
        };
        if t0.elapsed() > timeout {
            bail!("{vip} not programmed within {timeout:?}: {last}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How XDP is attached to `iface`, from `ip -d link show`; fails when it is not.
fn xdp_attachment(ns: &NetNs, iface: &str) -> anyhow::Result<&'static str> {
    let out = ns.ip(&["-d", "link", "show", "dev", iface])?;
    let text = String::from_utf8_lossy(&out.stdout);
    // iproute2 prints `xdp`, `xdpgeneric`, `xdpdrv` or `xdpoffload` after the MTU.
    let mode = text
        .split_whitespace()
        .find_map(|w| match w {
            "xdpgeneric" => Some("XDP (generic mode)"),
            "xdp" | "xdpdrv" => Some("XDP (driver mode)"),
            "xdpoffload" => Some("XDP (offloaded)"),
            _ => None,
        })
        .with_context(|| format!("no XDP program on {iface}: {text}"))?;
    Ok(mode)
}
