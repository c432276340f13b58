//! `cargo xtask bench l7`: the agent's L7 proxy against nginx, same topology, same backends,
//! same client, same run.
//!
//! The namespaces are the demo's (`topology`): wrk in the client namespace, the proxy under
//! test in the gateway namespace on port 80 (one proxy at a time), one `splitter-echo` per
//! backend namespace. Veths rather than loopback because that is the path a node's traffic
//! takes, and both proxies pay it equally. The agent runs without `--iface`: the route has a
//! path match, so it is served by the proxy, and the kernel programs would only pass its
//! packets (nginx gets no such programs either).
//!
//! Both proxies get the same parallelism: the agent gets as many proxy worker threads
//! (`--proxy-workers`) as nginx gets worker processes, the machine's CPUs by default. Each side
//! also has a mostly idle supervisor: nginx its master process, the agent its control-plane
//! runtime (file watcher, admin endpoint, accept loop). Rounds interleave the two proxies and alternate which goes first, so drift in the
//! machine's load (builds, other benches) lands on both; the summary is the median per proxy.
//!
//! `--tls` races the agent and nginx over HTTPS instead (`tls`): the Gateway's listener is
//! HTTPS on 443 with a certificate made at run time, nginx listens with TLS on 443 with the same
//! files; two cases, keep-alive GETs over TLS (wrk) and new connections with a full handshake
//! each (`splitter-tls-load`).

use std::{ffi::OsString, fmt, path::Path, time::Duration};

use anyhow::{Context, bail};
use clap::Args;

use super::{
    callgrind::Callgrind,
    cpu, haproxy, interrupted, nginx, tls,
    wrk::{Load, WrkReport},
};
use crate::topology::{self, ECHO_PORT, GATEWAY, Profile, TermGuard, Topology, write_l7_manifests};

const PATH: &str = "/echo/hostname";
const PORT: u16 = 80;

#[derive(Args, Clone, Debug)]
pub struct L7Options {
    /// Measured rounds; each round runs both proxies once.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds of load per proxy per round.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Seconds of load before each measurement (discarded), to fill connection pools.
    #[arg(long, default_value_t = 2)]
    warmup: u64,
    /// Concurrent client connections (wrk -c).
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// wrk threads (default: the machine's CPUs).
    #[arg(long)]
    threads: Option<u32>,
    /// Proxy parallelism: agent proxy worker threads and nginx worker processes (default: the
    /// machine's CPUs, which is also the agent's own default).
    #[arg(long)]
    workers: Option<usize>,
    /// Another build of the agent to race in the same rounds (`baseline`), e.g. the previous
    /// commit's `target/release/splitter` copied aside: every case, ratios splitter/baseline.
    #[arg(long)]
    baseline: Option<std::path::PathBuf>,
    /// Instead of timed rounds, count the instructions each proxy executes per request under
    /// valgrind's callgrind (one worker each, wrk -t1 -c4 for --seconds after --warmup).
    #[arg(long)]
    instructions: bool,
    /// Keep the work directory (configurations, logs, callgrind dumps for `callgrind_annotate`)
    /// instead of removing it at exit.
    #[arg(long)]
    keep: bool,
    /// Race the agent and nginx over HTTPS instead: keep-alive GETs over TLS, and new
    /// connections with a full TLS handshake each (no resumption), on port 443.
    #[arg(long, conflicts_with = "instructions")]
    tls: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Peer {
    Splitter,
    /// The agent with `--access-log` on (one line per request to its log file).
    SplitterLog,
    Nginx,
    Haproxy,
    /// `--baseline`: another build of the agent.
    Baseline,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Peer::Splitter => "splitter",
            Peer::SplitterLog => "split+log",
            Peer::Nginx => "nginx",
            Peer::Haproxy => "haproxy",
            Peer::Baseline => "baseline",
        })
    }
}

const PEERS: [Peer; 4] = [
    Peer::Splitter,
    Peer::Nginx,
    Peer::Haproxy,
    Peer::SplitterLog,
];

/// `--tls` races the agent against nginx only (the peer).
const TLS_PEERS: [Peer; 2] = [Peer::Splitter, Peer::Nginx];

/// One kind of request the proxies are raced on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    /// Keep-alive GETs of a short body (the backend's name).
    Get,
    /// POSTs of a 4 KiB body (the backend answers with a short JSON echo).
    Post4k,
    /// GETs of a 100 KiB body.
    Get100k,
    /// `--tls`: keep-alive GETs of a short body over TLS (one handshake per wrk connection).
    TlsGet,
    /// `--tls`: one GET per new TLS connection, every handshake a full one; its "requests" are
    /// connections.
    TlsNew,
    /// `--tls`: as `TlsNew`, the client offering the sessions it was given (resumption).
    TlsResumed,
}

const CASES: [Case; 3] = [Case::Get, Case::Post4k, Case::Get100k];
const TLS_CASES: [Case; 3] = [Case::TlsGet, Case::TlsNew, Case::TlsResumed];

impl Case {
    fn path(self) -> &'static str {
        match self {
            Case::Get | Case::Post4k | Case::TlsGet | Case::TlsNew | Case::TlsResumed => PATH,
            Case::Get100k => "/echo/bytes/102400",
        }
    }

    /// The access-log round runs only the GET case: it measures the log's cost per request.
    fn runs(self, peer: Peer) -> bool {
        self == Case::Get || peer != Peer::SplitterLog
    }
}

impl fmt::Display for Case {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Case::Get => "GET",
            Case::Post4k => "POST 4 KiB",
            Case::Get100k => "GET 100 KiB",
            Case::TlsGet => "TLS GET",
            Case::TlsNew => "TLS new conn",
            Case::TlsResumed => "TLS resumed",
        })
    }
}

/// wrk's script for the POST case.
const POST_SCRIPT: &str = "wrk.method = \"POST\"\nwrk.body = string.rep(\"x\", 4096)\nwrk.headers[\"Content-Type\"] = \"application/octet-stream\"\n";

/// What a round needs to start either proxy.
struct Setup<'a> {
    topo: &'a Topology,
    splitter: &'a Path,
    work: &'a Path,
    workers: usize,
    baseline: Option<&'a Path>,
    /// `http://GATEWAY` or, with `--tls`, `https://GATEWAY`.
    origin: String,
    /// curl's extra arguments for `origin` (`--cacert` with `--tls`).
    curl_args: Vec<String>,
}

impl Setup<'_> {
    /// Starts `peer` in the gateway namespace and waits until it serves the route and splits
    /// it over both backends.
    fn start(&self, peer: Peer) -> anyhow::Result<TermGuard> {
        self.start_under(peer, &[])
    }

    /// [`start`](Self::start), with the proxy run by `prefix` (e.g. valgrind) if not empty.
    fn start_under(&self, peer: Peer, prefix: &[OsString]) -> anyhow::Result<TermGuard> {
        let mut server = match peer {
            Peer::Splitter | Peer::SplitterLog | Peer::Baseline => {
                let binary = match (peer, self.baseline) {
                    (Peer::Baseline, Some(b)) => b,
                    _ => self.splitter,
                };
                let mut cmd = topology::agent_command_under(
                    &self.topo.net.gateway,
                    prefix,
                    binary,
                    &self.work.join("manifests"),
                    &self.work.join("agent.log"),
                )?;
                cmd.args(["--proxy-workers", &self.workers.to_string()]);
                if peer == Peer::SplitterLog {
                    cmd.arg("--access-log");
                }
                TermGuard::new(cmd.spawn().context("starting the agent")?)
            }
            Peer::Haproxy => {
                let dir = self.work.join("haproxy");
                haproxy::start(&self.topo.net.gateway, &dir.join("haproxy.cfg"), prefix)?
            }
            Peer::Nginx => {
                let dir = self.work.join("nginx");
                nginx::start(
                    &self.topo.net.gateway,
                    &dir,
                    &dir.join("nginx.conf"),
                    prefix,
                )?
            }
        };
        let url = format!("{}{PATH}", self.origin);
        let args: Vec<&str> = self.curl_args.iter().map(String::as_str).collect();
        if let Err(e) = self
            .topo
            .wait_until_answers(&url, &args, Duration::from_secs(30))
        {
            server.check_running(&peer.to_string())?;
            return Err(e);
        }
        self.check_split(peer)?;
        Ok(server)
    }

    /// Both proxies must spread requests over both backends, or the comparison is void.
    fn check_split(&self, peer: Peer) -> anyhow::Result<()> {
        let url = format!("{}{PATH}?n=[1-4]", self.origin);
        let mut args: Vec<&str> = self.curl_args.iter().map(String::as_str).collect();
        args.extend(["-s", "-w", "\\n", &url]);
        let seen = self.topo.curl(&args)?;
        for b in &self.topo.backends {
            if !seen.lines().any(|l| l == b.pod) {
                bail!("{peer} sent none of 4 requests to {}: {seen:?}", b.pod);
            }
        }
        Ok(())
    }
}

pub fn run(opts: &L7Options) -> anyhow::Result<()> {
    if !testbed::is_root() {
        bail!("bench l7 creates network namespaces: run it as root");
    }
    super::catch_interrupt()?;
    crate::setup::run()?;
    crate::setup::debian_tools(&[("nginx", "nginx"), ("wrk", "wrk"), ("haproxy", "haproxy")])?;
    println!("bench l7: building the agent and the echo backend (release)");
    let bins = topology::build_binaries(Profile::Release)?;
    if opts.instructions {
        crate::setup::debian_tools(&[("valgrind", "valgrind")])?;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Under callgrind: one worker, and nginx as one process (`nginx::config` with 0).
    let workers = if opts.instructions {
        1
    } else {
        opts.workers.unwrap_or(cpus)
    };
    let load = Load {
        threads: opts.threads.unwrap_or(u32::try_from(cpus).unwrap_or(1)),
        connections: opts.connections,
        duration: Duration::from_secs(opts.seconds),
    };
    let warmup = Load {
        duration: Duration::from_secs(opts.warmup),
        ..load
    };

    let topo = Topology::new("l7", &bins.echo)?;
    let mut work = tempfile::Builder::new()
        .prefix("splitter-bench-l7-")
        .tempdir()?;
    if opts.keep {
        work.disable_cleanup(true);
        println!("bench l7: work dir {} (kept)", work.path().display());
    }
    let manifests = work.path().join("manifests");
    std::fs::create_dir(&manifests)?;
    write_l7_manifests(&manifests, None)?;
    let tls_files = if opts.tls {
        let files = tls::generate(work.path())?;
        tls::write_manifests(&manifests, &files)?;
        Some(files)
    } else {
        None
    };
    let (port, cases, origin) = match &tls_files {
        None => (PORT, &CASES[..], format!("http://{GATEWAY}")),
        Some(_) => (tls::PORT, &TLS_CASES[..], format!("https://{GATEWAY}")),
    };
    let curl_args = match &tls_files {
        None => vec![],
        Some(f) => vec!["--cacert".into(), f.cert.display().to_string()],
    };
    let nginx_dir = work.path().join("nginx");
    std::fs::create_dir(&nginx_dir)?;
    let upstreams: Vec<String> = topo
        .backends
        .iter()
        .map(|b| format!("{}:{ECHO_PORT}", b.addr))
        .collect();
    std::fs::write(
        nginx_dir.join("nginx.conf"),
        nginx::config(
            &nginx_dir,
            if opts.instructions { 0 } else { workers },
            port,
            &upstreams,
            tls_files.as_ref(),
        ),
    )?;
    let haproxy_dir = work.path().join("haproxy");
    std::fs::create_dir(&haproxy_dir)?;
    std::fs::write(
        haproxy_dir.join("haproxy.cfg"),
        haproxy::config(&haproxy_dir, workers, PORT, &upstreams),
    )?;
    let post_script = work.path().join("post.lua");
    std::fs::write(&post_script, POST_SCRIPT)?;
    let setup = Setup {
        topo: &topo,
        splitter: &bins.splitter,
        work: work.path(),
        workers,
        baseline: opts.baseline.as_deref(),
        origin: origin.clone(),
        curl_args,
    };

    let url = format!("{origin}{PATH}");
    if opts.instructions {
        return count_instructions(&setup, &url, opts);
    }
    println!(
        "bench l7: client -> gateway :{port} -> 2 backends ({}), each in its own network namespace, over veth",
        upstreams.join(", ")
    );
    if opts.tls {
        println!(
            "bench l7 --tls: HTTPS on :{port}, a self-signed ECDSA P-256 certificate made at run time, the same files for both (agent: Secret kubernetes.io/tls; nginx: ssl_certificate, TLS 1.2+1.3, ALPN h2+http/1.1, ssl_session_cache shared:SSL:10m, session tickets on); TLS new conn: splitter-tls-load (rustls client, X25519 offered, resumption disabled and every handshake checked to be full, certificate verified, one GET with Connection: close per connection, {} in flight): its requests/s are connections/s, its p99 connect-to-last-byte, its CPU per connection; TLS resumed: the same client offering the sessions (tickets) it was given, the share resumed printed",
            load.connections
        );
    }
    println!(
        "bench l7: {cpus} CPUs; proxies get {workers} workers (agent: --proxy-workers; nginx: worker_processes, reuseport; haproxy: nbthread, http-reuse always)"
    );
    println!(
        "bench l7: wrk {} ({} s warm-up first), {} rounds; cases: {}; {}peer order rotates per round",
        load.args(&url).join(" "),
        opts.warmup,
        opts.rounds,
        cases
            .iter()
            .map(|c| format!("{c} {}", c.path()))
            .collect::<Vec<_>>()
            .join(", "),
        if opts.tls {
            ""
        } else {
            "POST bodies by wrk -s (4096 bytes); split+log (agent with --access-log) runs the GET case only; "
        },
    );
    println!(
        "bench l7: work dir {} (removed at exit)",
        work.path().display()
    );
    println!();
    println!(
        "{:<6} {:<12} {:<10} {:>12} {:>10} {:>7} {:>13} {:>9} {:>8}",
        "round",
        "case",
        "proxy",
        "requests/s",
        "p99",
        "errors",
        "CPU µs/req",
        "in kernel",
        "stolen"
    );

    let mut peers = if opts.tls {
        TLS_PEERS.to_vec()
    } else {
        PEERS.to_vec()
    };
    if opts.baseline.is_some() {
        peers.push(Peer::Baseline);
    }
    let mut results: Vec<Result_> = Vec::new();
    for round in 0..opts.rounds {
        let mut order = peers.clone();
        order.rotate_left(round % peers.len());
        for peer in order {
            interrupted()?;
            let server = setup.start(peer)?;
            for case in cases.iter().copied().filter(|c| c.runs(peer)) {
                let url = format!("{origin}{}", case.path());
                let script = (case == Case::Post4k).then_some(post_script.as_path());
                // The report, and the share of resumed handshakes for the new-connection cases.
                let drive = |load: &Load| match (case, &tls_files) {
                    (Case::TlsNew | Case::TlsResumed, Some(f)) => tls::new_connections(
                        &topo.net.client,
                        &bins.tls_load,
                        &f.cert,
                        case.path(),
                        load,
                        case == Case::TlsResumed,
                    )
                    .map(|h| {
                        let share = h.resumed as f64 / h.report.requests.max(1) as f64;
                        (h.report, Some(share))
                    }),
                    _ => load
                        .run_script(&topo.net.client, &url, script)
                        .map(|r| (r, None)),
                };
                if opts.warmup > 0 {
                    drive(&warmup)?;
                }
                interrupted()?;
                let cpu_before = cpu::process_tree(server.id());
                let machine_before = cpu::machine_ticks();
                let (wrk, resumed) = drive(&load)?;
                let stolen = cpu::stolen_share(machine_before, cpu::machine_ticks());
                let cpu = cpu::process_tree(server.id()).since(cpu_before);
                let m = Measured {
                    cpu_per_request: cpu.total().as_secs_f64() / wrk.requests.max(1) as f64,
                    kernel_share: cpu.system.as_secs_f64() / cpu.total().as_secs_f64().max(1e-9),
                    wrk,
                    stolen,
                };
                println!(
                    "{:<6} {:<12} {}{}",
                    round + 1,
                    case.to_string(),
                    Row(peer, &m),
                    resumed.map_or(String::new(), |r| format!("  resumed {:.1}%", r * 100.0))
                );
                results.push(Result_ {
                    round,
                    case,
                    peer,
                    m,
                });
            }
            interrupted()?;
            drop(server);
        }
    }

    println!();
    for case in cases.iter().copied() {
        for peer in peers.iter().copied().filter(|p| case.runs(*p)) {
            let s = summary(&results, case, peer);
            println!("{:<6} {:<12} {}", "median", case.to_string(), Row(peer, &s));
        }
    }
    println!();
    println!(
        "ratios: median of the per-round ratios [min-max over rounds]; requests/s above 1 and p99 below 1 favour the first proxy"
    );
    for case in cases.iter().copied() {
        let mut pairs = vec![(Peer::Splitter, Peer::Nginx)];
        if peers.contains(&Peer::Haproxy) {
            pairs.push((Peer::Splitter, Peer::Haproxy));
        }
        if case == Case::Get {
            pairs.push((Peer::SplitterLog, Peer::Splitter));
        }
        if opts.baseline.is_some() {
            pairs.push((Peer::Splitter, Peer::Baseline));
        }
        for (a, b) in pairs {
            let rps = ratios(&results, case, a, b, |m| m.wrk.requests_per_sec);
            let p99 = ratios(&results, case, a, b, |m| m.wrk.p99.as_secs_f64());
            let cpu = ratios(&results, case, a, b, |m| m.cpu_per_request);
            println!(
                "{:<12} {a}/{b}: requests/s {}, p99 {}, CPU per request {}",
                case.to_string(),
                Spread(&rps),
                Spread(&p99),
                Spread(&cpu),
            );
        }
    }
    Ok(())
}

/// One proxy's run of one case in one round.
struct Result_ {
    round: usize,
    case: Case,
    peer: Peer,
    m: Measured,
}

/// `peer`'s medians over the rounds of `case`.
fn summary(results: &[Result_], case: Case, peer: Peer) -> Measured {
    let runs: Vec<&Measured> = results
        .iter()
        .filter(|r| r.case == case && r.peer == peer)
        .map(|r| &r.m)
        .collect();
    Measured {
        wrk: WrkReport {
            requests: runs.iter().map(|r| r.wrk.requests).sum(),
            requests_per_sec: median(runs.iter().map(|r| r.wrk.requests_per_sec)),
            p99: Duration::from_secs_f64(median(runs.iter().map(|r| r.wrk.p99.as_secs_f64()))),
            errors: runs.iter().map(|r| r.wrk.errors).sum(),
        },
        cpu_per_request: median(runs.iter().map(|r| r.cpu_per_request)),
        kernel_share: median(runs.iter().map(|r| r.kernel_share)),
        stolen: median(runs.iter().map(|r| r.stolen)),
    }
}

/// `a`'s figure over `b`'s, round by round, for the rounds that ran both.
fn ratios(
    results: &[Result_],
    case: Case,
    a: Peer,
    b: Peer,
    figure: impl Fn(&Measured) -> f64,
) -> Vec<f64> {
    let find = |round, peer| {
        results
            .iter()
            .find(|r| r.round == round && r.case == case && r.peer == peer)
    };
    results
        .iter()
        .filter(|r| r.case == case && r.peer == a)
        .filter_map(|r| Some(figure(&r.m) / figure(&find(r.round, b)?.m)))
        .collect()
}

/// A median ratio and its range: `1.12x [1.02-1.20]`.
struct Spread<'a>(&'a [f64]);

impl fmt::Display for Spread<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let min = self.0.iter().copied().fold(f64::INFINITY, f64::min);
        let max = self.0.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        write!(
            f,
            "{:.2}x [{:.2}-{:.2}]",
            median(self.0.iter().copied()),
            min,
            max
        )
    }
}

/// `--instructions`: both proxies under callgrind, one after the other, the same load.
fn count_instructions(setup: &Setup<'_>, url: &str, opts: &L7Options) -> anyhow::Result<()> {
    let load = Load {
        threads: 1,
        connections: 4,
        duration: Duration::from_secs(opts.seconds),
    };
    let warmup = Load {
        duration: Duration::from_secs(opts.warmup.max(1)),
        ..load
    };
    println!(
        "bench l7 --instructions: each proxy under callgrind with one worker; wrk {} after {} s of warm-up",
        load.args(url).join(" "),
        warmup.duration.as_secs()
    );
    println!();
    println!(
        "{:<9} {:>10} {:>22}",
        "proxy", "requests", "instructions/request"
    );
    let mut per_request = Vec::new();
    for peer in [Peer::Splitter, Peer::Nginx] {
        interrupted()?;
        let cg = Callgrind::new(setup.work.join(format!("callgrind-{peer}.out")));
        let server = setup.start_under(peer, &cg.prefix())?;
        warmup.run(&setup.topo.net.client, url)?;
        cg.zero(server.id())?;
        let wrk = load.run(&setup.topo.net.client, url)?;
        let instructions = cg.instructions_since_zero(server.id())?;
        drop(server);
        if wrk.requests == 0 || wrk.errors > 0 {
            bail!(
                "{peer} under callgrind: {} requests, {} errors",
                wrk.requests,
                wrk.errors
            );
        }
        let n = instructions as f64 / wrk.requests as f64;
        println!("{:<9} {:>10} {:>22.0}", peer.to_string(), wrk.requests, n);
        per_request.push(n);
    }
    println!();
    println!(
        "splitter/nginx: instructions per request {:.2}x (below 1: splitter executes fewer; user-space only, start-up and warm-up excluded)",
        per_request[0] / per_request[1]
    );
    Ok(())
}

/// One proxy's run: wrk's view, and the proxy's own CPU time (every thread or process of it,
/// user and system) per request served. The proxy shares the machine with the client, the
/// backends and whatever else runs, so requests/s moves with that load; the CPU cost per
/// request moves much less, and says which proxy does the same work cheaper.
struct Measured {
    wrk: WrkReport,
    cpu_per_request: f64,
    /// The part of that CPU time spent in the kernel (system time: sockets, TCP, epoll).
    kernel_share: f64,
    /// The machine's CPU time the hypervisor gave to other guests during the round: rounds
    /// with much of it measured the host, not the proxy.
    stolen: f64,
}

struct Row<'a>(Peer, &'a Measured);

impl fmt::Display for Row<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let w = &self.1.wrk;
        write!(
            f,
            "{:<10} {:>12.0} {:>7.2} ms {:>7} {:>13.1} {:>8.0}% {:>7.1}%",
            self.0.to_string(),
            w.requests_per_sec,
            w.p99.as_secs_f64() * 1e3,
            w.errors,
            self.1.cpu_per_request * 1e6,
            self.1.kernel_share * 100.0,
            self.1.stolen * 100.0
        )
    }
}

/// The median (the mean of the middle two for an even count).
fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median([3.0, 1.0, 2.0].into_iter()), 2.0);
        assert_eq!(median([4.0, 1.0, 3.0, 2.0].into_iter()), 2.5);
        assert!(median(std::iter::empty()).is_nan());
    }

    #[test]
    fn spreads() {
        assert_eq!(Spread(&[1.1, 0.9, 1.3]).to_string(), "1.10x [0.90-1.30]");
    }
}
