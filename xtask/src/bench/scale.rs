//! `cargo xtask bench scale`: the control plane at cluster scale, in files mode.
//!
//! A synthetic cluster (HTTPRoutes over Services whose EndpointSlices hold made-up addresses
//! nobody connects to) is written as manifest files, and the agent runs on them in a network
//! namespace of its own, with its kernel half attached (XDP and TC) to one end of a veth pair
//! whose both ends are in that namespace, maps pinned on a private bpffs. Nothing leaves the
//! namespace: the bench sends no packet to the kernel route, it reads the kernel's tables.
//! Two real echo servers in the namespace answer a probe route. The bench prints the agent's
//! memory, the time from start to the probe route served, and three latencies over `--changes`
//! changes each, while `--churn` other objects per second change in other files:
//!
//! - **endpoint change -> served**: the probe Service's EndpointSlice file is rewritten to name
//!   the other echo server; the latency ends with the first response from it;
//! - **route edit -> served**: an HTTPRoute file is rewritten to send its host to the other
//!   echo Service; the same;
//! - **endpoint change -> kernel table**: one of the four endpoints of the Service behind an L4
//!   listener (a TCPRoute on a TCP listener of the same Gateway, served by XDP) is swapped for
//!   another address in its EndpointSlice file; the latency ends when the live half of the
//!   route's Maglev table names the new endpoint set. The bench reads the route's meta from the
//!   pinned `ROUTES` map about every millisecond; when the live half flips (the agent's publish
//!   step), it reads the whole live half and its backends (that read is not counted).
//!
//! The first two include everything a user waits for: the file system notification, the scan,
//! the plan, the proxy table install, and a request (one keep-alive connection, a request
//! every 200 µs); the third the notification, scan, plan and the kernel table write. Nothing is
//! asserted; the figures are printed next to the targets.

use std::{
    collections::BTreeSet,
    fmt::Write as _,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, bail};
use testbed::{BpfFs, ChildGuard, NetNs, VethPair};

use super::{interrupted, pinned::PinnedL4};
use crate::topology::{self, Profile};

#[derive(clap::Args, Debug)]
pub struct ScaleOptions {
    /// Cluster sizes to run, as ROUTES/SERVICES/ENDPOINTS (repeatable).
    #[arg(long = "size", default_values = ["1000/500/5000", "10000/5000/50000"])]
    sizes: Vec<Size>,
    /// Changes measured per kind (endpoint change, route edit).
    #[arg(long, default_value_t = 1000)]
    changes: usize,
    /// Other objects changed per second while measuring (0: none).
    #[arg(long, default_value_t = 100)]
    churn: u32,
    /// The agent's log filter (`RUST_LOG`). Other than the default, the work directory (the
    /// manifests and `agent.log`) is kept, and the bench prints its path. `info,splitter::control=debug` logs each plan published and each
    /// kernel apply with its time, to match with the slowest changes the bench lists.
    #[arg(long, default_value = DEFAULT_AGENT_LOG)]
    agent_log: String,
}

const DEFAULT_AGENT_LOG: &str = "warn";

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
/// Objects per generated file: a rewrite of one (churn) re-reads this many.
const PER_FILE: usize = 500;
/// The node address on the interface the kernel half attaches to: the L4 listener's VIP.
const NODE: &str = "10.77.0.1";
/// The Gateway's TCP listener, served in the kernel.
const KERNEL_PORT: u16 = 9090;
/// The endpoints' port of the Service behind the TCP listener.
const KERNEL_TARGET: u16 = 8080;

pub fn run(opts: &ScaleOptions) -> anyhow::Result<()> {
    if !testbed::is_root() {
        bail!("bench scale creates a network namespace: run it as root");
    }
    super::catch_interrupt()?;
    crate::setup::run()?;
    println!("bench scale: building the agent and the echo backend (release)");
    let bins = topology::build_binaries(Profile::Release)?;
    println!(
        "bench scale: files mode, one proxy worker, --coalesce-ms 100; {} changes of each kind, {} other objects changed per second meanwhile",
        opts.changes, opts.churn
    );
    for size in &opts.sizes {
        interrupted()?;
        println!();
        println!("== {size}");
        one_size(&bins, *size, opts)?;
    }
    println!();
    println!(
        "targets (issue 18): endpoint change -> live p99 < 50 ms, file edit -> live < 250 ms, RSS < 64 MiB at 1k routes, < 128 MiB at 10k"
    );
    Ok(())
}

fn one_size(bins: &topology::Binaries, size: Size, opts: &ScaleOptions) -> anyhow::Result<()> {
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
    let work = tempfile::Builder::new()
        .prefix("splitter-bench-scale-")
        .tempdir()?;
    let dir = work.path().join("manifests");
    std::fs::create_dir(&dir)?;
    let written = Instant::now();
    write_cluster(&dir, size)?;
    write_probe_slice(&dir, 0)?;
    write_edit_route(&dir, 0)?;
    write_kernel_slice(&dir, 0)?;
    println!(
        "manifests: {} files, {:.1} MiB, written in {:.1} s",
        std::fs::read_dir(&dir)?.count(),
        dir_bytes(&dir)? as f64 / (1 << 20) as f64,
        written.elapsed().as_secs_f64()
    );

    let log = std::fs::File::create(work.path().join("agent.log"))?;
    let started = Instant::now();
    let agent = ChildGuard(
        ns.command(&bins.splitter)
            .args(["run", "--manifests"])
            .arg(&dir)
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
    let pid = agent.id();
    ns.run(|| wait_served("probe.scale.test", ECHO[0].1, Duration::from_secs(300)))
        .with_context(|| format!("the probe route (agent log: {})", work.path().display()))?;
    let first = started.elapsed();
    let rss_start = memory(pid)?;
    // What the agent keeps, rather than what it freed a moment ago and its allocator has not
    // handed back yet (about a second: `splitter/src/allocator.rs`).
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
    let vip = SocketAddr::new(NODE.parse()?, KERNEL_PORT);
    let (kernel, route) = wait_kernel(&pin_dir, vip, Duration::from_secs(300))
        .with_context(|| format!("the kernel route (agent log: {})", work.path().display()))?;
    let meta = kernel.meta(route)?;
    println!(
        "kernel: {} on {}; {vip}/tcp is route {route}, a {}-slot table over {} endpoints",
        xdp_attachment(&ns, &link.a)?,
        link.a,
        meta.table_size,
        kernel_endpoints(0).len()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let churned = Arc::new(AtomicU64::new(0));
    let churn = (opts.churn > 0).then(|| {
        let (dir, stop, churned, rate) = (dir.clone(), stop.clone(), churned.clone(), opts.churn);
        std::thread::spawn(move || churn_loop(&dir, size, rate, &stop, &churned))
    });
    let measured = ns.run(|| -> anyhow::Result<_> {
        let endpoint = measure(opts.changes, "probe.scale.test", |i| {
            write_probe_slice(&dir, i % 2)?;
            Ok(ECHO[i % 2].1)
        })?;
        let edit = measure(opts.changes, "edit.scale.test", |i| {
            write_edit_route(&dir, i % 2)?;
            Ok(ECHO[i % 2].1)
        })?;
        let table = measure_kernel(opts.changes, &kernel, route, |i| {
            write_kernel_slice(&dir, i % 2)?;
            Ok(kernel_endpoints(i % 2))
        })?;
        Ok((endpoint, edit, table))
    });
    stop.store(true, Ordering::Relaxed);
    if let Some(c) = churn {
        let _ = c.join();
    }
    let (endpoint, edit, (table, other_publishes)) = measured?;
    let rss_end = memory(pid)?;
    std::thread::sleep(SETTLE);
    let rss_end_settled = memory(pid)?;
    let builds = ns.run(plan_builds).unwrap_or(f64::NAN);
    drop(kernel);
    drop(agent);
    drop(echoes);
    println!("endpoint change -> served:       {endpoint}");
    println!("route edit -> served:            {edit}");
    println!("endpoint change -> kernel table: {table}");
    println!(
        "  (from the EndpointSlice file's rename to the route's live table half naming the new \
         endpoints, read from the pinned maps about every 1 ms; no packet sent; {other_publishes} \
         other publishes of that route seen meanwhile)"
    );
    for (what, l) in [
        ("endpoint change -> served", &endpoint),
        ("route edit -> served", &edit),
        ("endpoint change -> kernel table", &table),
    ] {
        println!("  slowest {what}: {}", l.slowest(3));
    }
    if opts.agent_log != DEFAULT_AGENT_LOG {
        println!(
            "  (agent log kept: {})",
            work.keep().join("agent.log").display()
        );
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
    Ok(())
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

/// The synthetic cluster: Services with made-up endpoints, routes over them, and the probe's
/// Services, which the measured changes switch between.
fn write_cluster(dir: &Path, size: Size) -> anyhow::Result<()> {
    let mut base = String::from(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: splitter}\n\
         spec: {controllerName: splitter.dev/gateway-controller}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: gw, namespace: scale}\n\
         spec:\n  gatewayClassName: splitter\n",
    );
    let _ = writeln!(
        base,
        "  listeners:\n  - {{name: http, protocol: HTTP, port: {PORT}}}\n  \
         - {{name: tcp, protocol: TCP, port: {KERNEL_PORT}}}"
    );
    for (i, (addr, _)) in ECHO.iter().enumerate() {
        base.push_str(&service(&format!("echo{i}")));
        base.push_str(&slice(
            &format!("echo{i}"),
            "1",
            &[addr.to_string()],
            ECHO_PORT,
        ));
    }
    base.push_str(&service("probe"));
    base.push_str(&route("probe", "probe.scale.test", "/", &[("probe", 1)]));
    // The L4 listener's route: always served in the kernel.
    base.push_str(&service("kern"));
    base.push_str(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: TCPRoute\n\
         metadata: {name: kern, namespace: scale}\n\
         spec:\n  parentRefs: [{name: gw, sectionName: tcp}]\n  \
         rules: [{backendRefs: [{name: kern, port: 80}]}]\n",
    );
    std::fs::write(dir.join("base.yaml"), base)?;

    let per_service = size.endpoints.div_ceil(size.services).max(1);
    for chunk in 0..size.services.div_ceil(PER_FILE) {
        let mut y = String::new();
        for s in chunk * PER_FILE..((chunk + 1) * PER_FILE).min(size.services) {
            y.push_str(&service(&format!("svc{s}")));
            y.push_str(&slice(
                &format!("svc{s}"),
                "1",
                &made_up(s, per_service, 0),
                8080,
            ));
        }
        std::fs::write(dir.join(format!("services-{chunk:03}.yaml")), y)?;
    }
    for chunk in 0..size.routes.div_ceil(PER_FILE) {
        let mut y = String::new();
        for r in chunk * PER_FILE..((chunk + 1) * PER_FILE).min(size.routes) {
            let a = format!("svc{}", r % size.services);
            let b = format!("svc{}", (r + 1) % size.services);
            y.push_str(&route(
                &format!("r{r}"),
                &format!("h{}.scale.test", r % 1000),
                &format!("/r{r}"),
                &[(&a, 70), (&b, 30)],
            ));
        }
        std::fs::write(dir.join(format!("routes-{chunk:03}.yaml")), y)?;
    }
    Ok(())
}

/// Made-up endpoints of Service `s` (TEST-NET and 10/8 addresses that nothing connects to),
/// shifted by `version` so that a rewrite changes them.
fn made_up(s: usize, n: usize, version: u64) -> Vec<String> {
    (0..n)
        .map(|e| {
            let x = s * n + e + version as usize;
            format!("10.{}.{}.{}", (x >> 16) & 255, (x >> 8) & 255, x & 255)
        })
        .collect()
}

fn service(name: &str) -> String {
    format!(
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: scale}}\n\
         spec: {{ports: [{{name: http, port: 80, targetPort: http}}]}}\n"
    )
}

fn slice(service: &str, suffix: &str, addrs: &[String], port: u16) -> String {
    let mut y = format!(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {service}-{suffix}, namespace: scale, labels: {{kubernetes.io/service-name: {service}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: {port}, protocol: TCP}}]\nendpoints:\n"
    );
    for a in addrs {
        let _ = writeln!(y, "- addresses: [{a}]");
    }
    y
}

fn route(name: &str, host: &str, prefix: &str, backends: &[(&str, u32)]) -> String {
    let mut y = format!(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {{name: {name}, namespace: scale}}\n\
         spec:\n  parentRefs: [{{name: gw}}]\n  hostnames: [{host}]\n  rules:\n\
         \x20 - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    backendRefs:\n"
    );
    for (b, w) in backends {
        let _ = writeln!(y, "    - {{name: {b}, port: 80, weight: {w}}}");
    }
    y
}

/// The probe Service's slice, naming echo server `which`.
fn write_probe_slice(dir: &Path, which: usize) -> anyhow::Result<()> {
    let y = slice("probe", "1", &[ECHO[which].0.to_string()], ECHO_PORT);
    topology::write_atomically(&dir.join("probe-slice.yaml"), &y)
}

/// The edited route, sending its host to echo Service `which`.
fn write_edit_route(dir: &Path, which: usize) -> anyhow::Result<()> {
    let y = route(
        "edit",
        "edit.scale.test",
        "/",
        &[(&format!("echo{which}"), 1)],
    );
    topology::write_atomically(&dir.join("edit-route.yaml"), &y)
}

/// The endpoints of the Service behind the kernel route in state `which`: three fixed ones and
/// a fourth that the measured changes swap (TEST-NET-1 addresses nobody connects to).
fn kernel_endpoints(which: usize) -> BTreeSet<SocketAddr> {
    [1, 2, 3, 10 + which]
        .into_iter()
        .map(|h| SocketAddr::from(([192, 0, 2, h as u8], KERNEL_TARGET)))
        .collect()
}

/// The kernel route's Service's slice in state `which`.
fn write_kernel_slice(dir: &Path, which: usize) -> anyhow::Result<()> {
    let addrs: Vec<String> = kernel_endpoints(which)
        .iter()
        .map(|a| a.ip().to_string())
        .collect();
    let y = slice("kern", "1", &addrs, KERNEL_TARGET);
    topology::write_atomically(&dir.join("kernel-slice.yaml"), &y)
}

/// Rewrites the slice of one made-up Service after another, `rate` per second, each in a small
/// file of its own (as many watch events are: one object each).
fn churn_loop(dir: &Path, size: Size, rate: u32, stop: &AtomicBool, done: &AtomicU64) {
    let every = Duration::from_secs(1) / rate;
    let mut next = Instant::now();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let s = (n as usize * 7919) % size.services;
        let y = slice(&format!("svc{s}"), "2", &made_up(s, 2, n + 1), 8080);
        let path: PathBuf = dir.join(format!("churn-{:02}.yaml", n % 50));
        if topology::write_atomically(&path, &y).is_ok() {
            done.fetch_add(1, Ordering::Relaxed);
        }
        n += 1;
        next += every;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
}

/// Latencies of `changes` changes: each made by `change(i)`, which returns the name of the echo
/// server that answers once it is live.
fn measure(
    changes: usize,
    host: &str,
    mut change: impl FnMut(usize) -> anyhow::Result<&'static str>,
) -> anyhow::Result<Latencies> {
    let mut client = Client::connect()?;
    let mut took = Vec::with_capacity(changes);
    // Change 0 is the state at start; the measured changes alternate from there.
    for i in 1..=changes {
        interrupted()?;
        let wall = SystemTime::now();
        let want = change(i)?;
        let t0 = Instant::now();
        loop {
            if client.get(host)? == want {
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("change {i} to {host} not served after 30 s");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        took.push((t0.elapsed(), wall));
        // Spaced out, so that changes are not all coalesced with the previous one.
        std::thread::sleep(Duration::from_millis(20 + (i as u64 * 37) % 80));
    }
    Ok(Latencies(took))
}

/// Latencies of `changes` changes to the Service behind the kernel route: each made by
/// `change(i)`, which returns the endpoints the route's table names once it is live. Polls the
/// route's meta (one map lookup) about every millisecond; a changed meta is a publish (a flip of
/// the live half with a new generation), after which the live half is read whole: the change
/// is live when it names exactly the wanted endpoints. The latency is taken at the poll that saw
/// the flip, before that read. Also returns how many publishes did not carry the change (the
/// agent republishing the route for another reason).
fn measure_kernel(
    changes: usize,
    kernel: &PinnedL4,
    route: u32,
    mut change: impl FnMut(usize) -> anyhow::Result<BTreeSet<SocketAddr>>,
) -> anyhow::Result<(Latencies, usize)> {
    let mut took = Vec::with_capacity(changes);
    let mut other = 0;
    let mut seen = kernel.meta(route)?;
    for i in 1..=changes {
        interrupted()?;
        let wall = SystemTime::now();
        let want = change(i)?;
        let t0 = Instant::now();
        loop {
            let meta = kernel.meta(route)?;
            let at = t0.elapsed();
            if meta != seen {
                seen = meta;
                if kernel.live_backends(route, &meta)? == want {
                    took.push((at, wall));
                    break;
                }
                other += 1;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("change {i} to the kernel route not in its table after 30 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        // Spaced out as the other changes are.
        std::thread::sleep(Duration::from_millis(20 + (i as u64 * 37) % 80));
    }
    Ok((Latencies(took), other))
}

/// Each change's latency, and when (wall clock) its file was written.
struct Latencies(Vec<(Duration, SystemTime)>);

impl Latencies {
    /// The `n` slowest changes, each with the UTC time of its write (the agent logs in UTC).
    fn slowest(&self, n: usize) -> String {
        let mut v = self.0.clone();
        v.sort_by_key(|x| std::cmp::Reverse(x.0));
        v.iter()
            .take(n)
            .map(|(took, at)| {
                let ms = at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis();
                let s = (ms / 1000) % 86_400;
                format!(
                    "{:.1} ms at {:02}:{:02}:{:02}.{:03}",
                    took.as_secs_f64() * 1e3,
                    s / 3600,
                    s / 60 % 60,
                    s % 60,
                    ms % 1000
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Display for Latencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut v: Vec<Duration> = self.0.iter().map(|(d, _)| *d).collect();
        v.sort();
        let at = |q: f64| {
            let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
            v[i].as_secs_f64() * 1e3
        };
        if v.is_empty() {
            return write!(f, "no changes");
        }
        write!(
            f,
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} changes",
            at(0.5),
            at(0.99),
            at(1.0),
            v.len()
        )
    }
}

/// One keep-alive HTTP/1.1 connection to the gateway; reconnects when the proxy closes it.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect() -> anyhow::Result<Self> {
        let s = TcpStream::connect(("127.0.0.1", PORT)).context("connecting to the gateway")?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Self {
            reader: BufReader::new(s),
        })
    }

    /// `GET /hostname` for `host`: the body (the echo server's name) of a 200, else "".
    fn get(&mut self, host: &str) -> anyhow::Result<String> {
        match self.try_get(host) {
            Ok(body) => Ok(body),
            Err(_) => {
                *self = Self::connect()?;
                self.try_get(host)
            }
        }
    }

    fn try_get(&mut self, host: &str) -> anyhow::Result<String> {
        write!(
            self.reader.get_mut(),
            "GET /hostname HTTP/1.1\r\nHost: {host}\r\n\r\n"
        )?;
        let mut status = String::new();
        if self.reader.read_line(&mut status)? == 0 {
            bail!("closed");
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("closed");
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        if !status.contains(" 200 ") {
            return Ok(String::new());
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

/// Polls until `host` is answered by `want`.
fn wait_served(host: &str, want: &str, timeout: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        if let Ok(mut c) = Client::connect()
            && c.get(host).is_ok_and(|b| b == want)
        {
            return Ok(());
        }
        if t0.elapsed() > timeout {
            bail!("{host} not served by {want} within {timeout:?}");
        }
        interrupted()?;
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `(VmRSS, VmHWM)` of a process, in MiB.
fn memory(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |field: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    Ok((kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0))
}

/// `splitter_plan_builds_total` from the agent's `/metrics`.
fn plan_builds() -> anyhow::Result<f64> {
    let mut s = TcpStream::connect(ADMIN)?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    text.lines()
        .find_map(|l| l.strip_prefix("splitter_plan_builds_total "))
        .and_then(|v| v.trim().parse().ok())
        .context("no splitter_plan_builds_total on /metrics")
}

fn dir_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut n = 0;
    for e in std::fs::read_dir(dir)? {
        n += e?.metadata()?.len();
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_change_swaps_one_of_four_endpoints() {
        let (a, b) = (kernel_endpoints(0), kernel_endpoints(1));
        assert_eq!((a.len(), b.len()), (4, 4));
        assert_eq!(a.intersection(&b).count(), 3);
    }

    #[test]
    fn the_gateway_has_a_tcp_listener_with_a_route() {
        let dir = tempfile::tempdir().expect("tempdir");
        let size = "2/2/4".parse::<Size>().expect("size");
        write_cluster(dir.path(), size).expect("write");
        let base = std::fs::read_to_string(dir.path().join("base.yaml")).expect("read");
        assert!(base.contains(&format!(
            "{{name: tcp, protocol: TCP, port: {KERNEL_PORT}}}"
        )));
        assert!(base.contains("kind: TCPRoute"));
        assert!(base.contains("parentRefs: [{name: gw, sectionName: tcp}]"));
    }
}
