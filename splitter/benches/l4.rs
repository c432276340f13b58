//! `cargo xtask bench l4` (or `cargo bench -p splitter --bench l4`): the L4 data path against
//! its floor and its peer, measured in the same run. Root only. Prints figures and ratios; it
//! asserts nothing about speed (these machines are noisy).
//!
//! (a) ns per packet through BPF_PROG_TEST_RUN, against an empty XDP program:
//!     - established: an ACK of a tracked flow, `repeat` 1e6. The kernel reruns the program on
//!       the same buffer, which the first run already rewrote, so the VIP here is the backend's
//!       own address: every rerun is a VIP hit, a conntrack hit and a full rewrite with checksum
//!       updates (to the same values), i.e. exactly the established path.
//!       The flow is confirmed first (the backend's answer through TC), so it is in conntrack,
//!       not the half-open table.
//!     - new flow (SYN): conntrack and half-open misses, the source's token bucket (a new
//!       source every time, the costlier case: an insert), table lookup, two half-open inserts,
//!       rewrite, with the agent's default flood guards. A rerun would hit the half-open table,
//!       so each SYN is its own run (repeat 1, distinct source addresses and ports), and the
//!       floor is measured the same way.
//! (b) new TCP connections per second from a client namespace through a gateway namespace to
//!     two backends, split 3:1 by splitter (XDP + TC) and by iptables DNAT with
//!     `-m statistic --mode random` as kube-proxy does it: same topology, backends and client.
//!     Two ceilings are measured in the same run, so the ratios can be read against what is
//!     possible at all on this machine: the gateway only routing (no NAT: the client connects
//!     to the backends themselves), and no gateway hop at all (the backend listens in the
//!     gateway namespace). The client runs enough blocking connect loops to keep every CPU
//!     busy: with fewer, the CPUs idle between round trips and the rate measures latency as much
//!     as cost.

use std::{
    io::Read,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use etherparse::PacketBuilder;
use splitter::dataplane::ebpf::{self, L4Actuator, L4Proto, L4RouteProgram};
use splitter_common::maps::XDP_FLOOR_PROGRAM;
use testbed::{AddressPlan, ClusterNet, ClusterPlan, GatewayNet, NetNs, Routing};

const REPEAT: u32 = 1_000_000;
const SYN_RUNS: u16 = 10_000;
const PER_PACKET_ROUNDS: usize = 5;
const CPS_SECONDS: u64 = 5;
const CPS_CLIENT_THREADS: usize = 16;
const CPS_ROUNDS: usize = 3;

fn frame(src: SocketAddr, dst: SocketAddr, syn: bool) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("v4 only")
    };
    let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(s.octets(), d.octets(), 64)
        .tcp(src.port(), dst.port(), 1000, 64240);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut out = Vec::new();
    b.write(&mut out, &[]).expect("frame");
    out
}

fn run(prog: &Xdp, data: &[u8], repeat: u32) -> Duration {
    prog.test_run(TestRunOptions {
        data_in: Some(data),
        repeat,
        ..Default::default()
    })
    .expect("test_run")
    .duration
}

fn per_packet() {
    let mut obj = ebpf::load_object(None).expect("load");
    let mut act = L4Actuator::new(&mut obj).expect("actuator");
    // The agent's defaults: flood threshold and per-source buckets on.
    act.set_config(splitter::run::snat_config(
        &[],
        splitter::run::SnatPorts::default(),
    ))
    .expect("config");
    let backend: SocketAddr = "10.1.0.1:8080".parse().expect("addr");
    let vip: SocketAddr = "10.0.0.100:80".parse().expect("addr");
    act.apply(&[
        L4RouteProgram {
            key: "established".into(),
            vips: vec![(backend, L4Proto::Tcp)],
            table: vec![Some(backend); 16381],
            remote: Default::default(),
            // Not a node address: the first ACK creates the flow (a non-SYN miss on a node
            // address would pass untouched).
            dedicated: [backend.ip()].into(),
        },
        L4RouteProgram {
            key: "syn".into(),
            vips: vec![(vip, L4Proto::Tcp)],
            table: vec![Some(backend); 16381],
            remote: Default::default(),
            dedicated: Default::default(),
        },
    ])
    .expect("apply");
    let client: SocketAddr = "192.0.2.1:40000".parse().expect("addr");
    let ack = frame(client, backend, false);
    {
        let floor: &mut Xdp = obj
            .ebpf
            .program_mut(XDP_FLOOR_PROGRAM)
            .expect("floor")
            .try_into()
            .expect("xdp");
        floor.load().expect("load floor");
    }
    let n = |d: Duration| d.as_nanos() as f64;
    let syn_frame = |round: usize, p: u16| {
        // Distinct source addresses and ports in every round: each SYN is a new flow from a
        // new source (no bucket runs dry, which would make a SYN a cheap drop).
        let port = 1024 + (round as u16) * SYN_RUNS + p;
        let src = std::net::Ipv4Addr::new(192, 0, (port >> 8) as u8, port as u8);
        frame(SocketAddr::new(src.into(), port), vip, true)
    };
    // The backend's answer to the established flow: confirms it (TC moves it to conntrack).
    let answer = frame(backend, client, false);
    // Interleaved rounds, medians: other work on the machine drifts during a run.
    let (mut floor_reps, mut floor_singles, mut ests, mut syns) = (vec![], vec![], vec![], vec![]);
    for round in 0..PER_PACKET_ROUNDS {
        let floor: &Xdp = obj
            .ebpf
            .program(XDP_FLOOR_PROGRAM)
            .expect("floor")
            .try_into()
            .expect("xdp");
        floor_reps.push(n(run(floor, &ack, REPEAT)));
        let t: Duration = (0..SYN_RUNS)
            .map(|p| run(floor, &syn_frame(round, p), 1))
            .sum();
        floor_singles.push(n(t) / f64::from(SYN_RUNS));
        run(ebpf::xdp_program(&mut obj.ebpf).expect("xdp"), &ack, 1); // creates the flow (half-open)
        ebpf::tc_program(&mut obj.ebpf)
            .expect("tc")
            .test_run(TestRunOptions {
                data_in: Some(&answer),
                ..Default::default()
            })
            .expect("tc test_run"); // confirms it
        let prog = ebpf::xdp_program(&mut obj.ebpf).expect("xdp");
        ests.push(n(run(prog, &ack, REPEAT)));
        let t: Duration = (0..SYN_RUNS)
            .map(|p| run(prog, &syn_frame(round, p), 1))
            .sum();
        syns.push(n(t) / f64::from(SYN_RUNS));
    }
    let (floor_rep, floor_syn, est, syn) = (
        median(floor_reps),
        median(floor_singles),
        median(ests),
        median(syns),
    );
    println!("l4 per packet (BPF_PROG_TEST_RUN, median of {PER_PACKET_ROUNDS} interleaved rounds)");
    println!("  empty XDP program, repeat {REPEAT}:   {floor_rep:>7.1} ns");
    println!(
        "  established (conntrack hit + NAT):   {est:>7.1} ns   {:.2}x the floor",
        est / floor_rep.max(0.1)
    );
    println!("  empty XDP program, one run each:     {floor_syn:>7.1} ns");
    println!(
        "  new flow (SYN: misses, bucket, table, inserts): {syn:>7.1} ns   {:.2}x the floor",
        syn / floor_syn.max(0.1)
    );
}

const NET: AddressPlan = AddressPlan {
    front: "10.220.0",
    backends: "10.221",
    first: 0,
};

/// `NET.gateway()`, port 80.
const VIP: &str = "10.220.0.2:80";

fn backend(i: usize) -> SocketAddr {
    format!("{}:8080", NET.backend(i)).parse().expect("addr")
}

fn cps_topology() -> GatewayNet {
    let t = GatewayNet::new("b", NET, 2).expect("topology");
    t.client_sends_full_checksums().expect("ethtool");
    t.client
        .sysctl("net/ipv4/ip_local_port_range", "1024 65000")
        .expect("sysctl");
    t.client
        .sysctl("net/ipv4/tcp_tw_reuse", "1")
        .expect("sysctl");
    for b in &t.backends {
        accept_and_close(b, "0.0.0.0:8080".parse().expect("addr"));
    }
    t
}

/// A server in `ns` that accepts connections and closes them at once: the cost measured is
/// the connection, not what a backend does with it.
fn accept_and_close(ns: &NetNs, at: SocketAddr) {
    let l = ns.run(|| TcpListener::bind(at).expect("listen"));
    ns.spawn(move || {
        for c in l.incoming().flatten() {
            drop(c);
        }
    });
}

/// What one case measures once its data plane is set up: the client connects to `targets` (the
/// VIP, or for the ceilings the backends or the gateway themselves).
type Measure = fn(&NetNs, &[SocketAddr]) -> f64;

/// What the client connects to: the VIP, or (for the ceiling) the backends themselves, 3:1.
fn connections_per_second(client: &NetNs, targets: &[SocketAddr]) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..CPS_CLIENT_THREADS)
        .map(|_| {
            let (done, failed, stop) = (done.clone(), failed.clone(), stop.clone());
            let targets = targets.to_vec();
            client.spawn(move || {
                let mut buf = [0u8; 16];
                for to in targets.iter().cycle() {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    match TcpStream::connect_timeout(to, Duration::from_secs(2)) {
                        Ok(mut s) => {
                            let _ = s.read(&mut buf); // EOF once the backend closes
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(CPS_SECONDS));
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    for t in threads {
        t.join().expect("client thread");
    }
    let f = failed.load(Ordering::Relaxed);
    if f > 0 {
        println!("    ({f} connections failed)");
    }
    done.load(Ordering::Relaxed) as f64 / elapsed
}

fn splitter_local(mode: ebpf::XdpAttachMode, measure: Measure) -> f64 {
    let pins = testbed::BpfFs::new().expect("bpffs");
    {
        let t = cps_topology();
        let mut obj = ebpf::load_object(Some(&pins.path().join("maps"))).expect("load");
        let links = pins.path().join("links");
        let iface = t.gateway_iface().to_owned();
        t.gateway.run(|| {
            ebpf::attach_pinned(&mut obj, &iface, &links, mode, ebpf::TcAttachMode::Auto)
                .expect("attach")
        });
        let mut act = L4Actuator::new(&mut obj).expect("actuator");
        let b: Vec<SocketAddr> = (0..2).map(backend).collect();
        let table = (0..16381)
            .map(|s| Some(if s % 4 < 3 { b[0] } else { b[1] }))
            .collect();
        act.apply(&[L4RouteProgram {
            key: "bench".into(),
            vips: vec![(VIP.parse().expect("vip"), L4Proto::Tcp)],
            table,
            remote: Default::default(),
            dedicated: Default::default(),
        }])
        .expect("apply");
        let r = measure(&t.client, &[VIP.parse().expect("vip")]);
        let _ = ebpf::detach_pinned(t.gateway_iface(), &links);
        r
    }
}

fn iptables_local(measure: Measure) -> f64 {
    let t = cps_topology();
    let rule = |prob: Option<&str>, to: &str| {
        let mut args = vec![
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-d",
            "10.220.0.2",
            "-p",
            "tcp",
            "--dport",
            "80",
        ];
        if let Some(p) = prob {
            args.extend(["-m", "statistic", "--mode", "random", "--probability", p]);
        }
        args.extend(["-j", "DNAT", "--to-destination", to]);
        t.gateway
            .exec("iptables", &args)
            .expect("iptables (cargo xtask bench installs it)");
    };
    rule(Some("0.75"), &backend(0).to_string());
    rule(None, &backend(1).to_string());
    measure(&t.client, &[VIP.parse().expect("vip")])
}

/// The ceiling of any data plane that leaves forwarding to the gateway's stack: no NAT at all,
/// the client connects to the backends themselves (3:1) and the gateway only routes.
fn routed(measure: Measure) -> f64 {
    let t = cps_topology();
    t.client
        .ip(&[
            "route",
            "add",
            &format!("{}.0.0/16", NET.backends),
            "via",
            &NET.gateway(),
        ])
        .expect("route");
    let (b0, b1) = (backend(0), backend(1));
    measure(&t.client, &[b0, b0, b0, b1])
}

/// The ceiling of any gateway: no hop at all, the backend listens in the gateway namespace.
fn hopless(measure: Measure) -> f64 {
    let t = cps_topology();
    let at: SocketAddr = format!("{}:8081", NET.gateway()).parse().expect("addr");
    accept_and_close(&t.gateway, at);
    measure(&t.client, &[at])
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A line of the CPS report: its label, the run that measures it, a note on its ratio.
type CpsLine = (&'static str, fn() -> f64, &'static str);

fn cps() {
    // iptables is the baseline the other lines are divided by.
    let lines: [CpsLine; 5] = [
        (
            "iptables DNAT -m statistic (kube-proxy)",
            || iptables_local(connections_per_second),
            "",
        ),
        (
            "splitter, native XDP + TC",
            || splitter_local(ebpf::XdpAttachMode::Driver, connections_per_second),
            "",
        ),
        (
            "splitter, generic XDP + TC",
            || splitter_local(ebpf::XdpAttachMode::Generic, connections_per_second),
            "",
        ),
        (
            "no NAT, the gateway only routes",
            || routed(connections_per_second),
            " (ceiling of stack forwarding)",
        ),
        (
            "no gateway hop (server in the gateway)",
            || hopless(connections_per_second),
            " (ceiling of any gateway)",
        ),
    ];
    // Interleaved rounds, medians: the machine's background load drifts during a run.
    let mut runs = vec![Vec::new(); lines.len()];
    for _ in 0..CPS_ROUNDS {
        for (line, (_, run, _)) in runs.iter_mut().zip(&lines) {
            line.push(run());
        }
    }
    let rates: Vec<f64> = runs.into_iter().map(median).collect();
    println!(
        "l4 new connections per second ({CPS_CLIENT_THREADS} client threads, {CPS_SECONDS} s runs, median of {CPS_ROUNDS} interleaved rounds, same topology)"
    );
    let iptables = rates[0];
    for (i, ((label, _, note), rate)) in lines.iter().zip(&rates).enumerate() {
        let label = format!("{label}:");
        if i == 0 {
            println!("  {label:<41}{rate:>9.0} /s");
        } else {
            println!(
                "  {label:<41}{rate:>9.0} /s   {:.2}x iptables{note}",
                rate / iptables.max(1.0)
            );
        }
    }
}

/// The offered rate of the cost runs: below what every case sustains here (the cps part prints
/// each ceiling), so every case carries the same load and its CPU time per connection compares.
const COST_RATE: u64 = 800;
const COST_SECONDS: u64 = 6;
const COST_ROUNDS: usize = 3;
const COST_CLIENT_THREADS: u64 = 8;

/// The machine's busy CPU time so far (every state but idle, iowait and steal), from
/// `/proc/stat` in USER_HZ ticks (100 per second on every Linux ABI). Sampled at the timer
/// tick, so it misses short bursts between idle periods: good enough to tell whether the
/// machine is idle, not to measure a light load.
fn busy_ticks() -> u64 {
    let text = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .expect("cpu line");
    // user nice system idle iowait irq softirq steal
    let t: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|v| v.parse().expect("tick count"))
        .collect();
    t[0] + t[1] + t[2] + t[5] + t[6]
}

/// CPU time of every task a connection runs on, in microseconds: this process (the client's
/// and the backends' threads, and with them the softirq work their sends and receives run in
/// their own context: the stack's forwarding, netfilter, XDP on veth) plus the `ksoftirqd`
/// threads (softirq work deferred out of those contexts). Both are the scheduler's exact
/// runtimes, unlike `/proc/stat`'s tick samples.
fn task_cpu_us() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let own = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
        us(ru.ru_utime) + us(ru.ru_stime)
    };
    let mut softirq_ticks = 0u64;
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let Some(close) = stat.rfind(')') else {
            continue;
        };
        if !stat[..close].contains("(ksoftirqd/") {
            continue;
        }
        let f: Vec<&str> = stat[close + 2..].split(' ').collect();
        let (Some(u), Some(s)) = (f.get(11), f.get(12)) else {
            continue;
        };
        softirq_ticks += u.parse::<u64>().unwrap_or(0) + s.parse::<u64>().unwrap_or(0);
    }
    own + softirq_ticks as f64 * 10_000.0
}

/// CPU microseconds per connection at the fixed offered rate ([`task_cpu_us`]): the client
/// paces connections over `COST_CLIENT_THREADS` threads, each connection opened, read to EOF
/// (the backend closes) and closed. Client, backends and data plane all count, which is why the
/// cost table subtracts the run without a gateway hop at the same rate: what remains is the
/// gateway's marginal cost.
fn cpu_per_connection(client: &NetNs, targets: &[SocketAddr]) -> f64 {
    settle();
    let total = COST_RATE * COST_SECONDS;
    let interval = Duration::from_secs_f64(1.0 / COST_RATE as f64);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(100);
    let before = task_cpu_us();
    let threads: Vec<_> = (0..COST_CLIENT_THREADS)
        .map(|k| {
            let (done, failed) = (done.clone(), failed.clone());
            let targets = targets.to_vec();
            client.spawn(move || {
                let mut buf = [0u8; 16];
                for i in (k..total).step_by(COST_CLIENT_THREADS as usize) {
                    let due = start + interval * i as u32;
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                    let to = &targets[i as usize % targets.len()];
                    match TcpStream::connect_timeout(to, Duration::from_secs(2)) {
                        Ok(mut s) => {
                            let _ = s.read(&mut buf);
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let busy_us = task_cpu_us() - before;
    let (ok, f) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    if f > 0 || elapsed > COST_SECONDS as f64 * 1.1 {
        println!(
            "    ({f} connections failed; {elapsed:.1} s for a {COST_SECONDS} s schedule: saturated?)"
        );
    }
    busy_us / ok.max(1) as f64
}

/// Waits (up to 20 s) until the machine is idle: deleting the previous case's namespaces runs in
/// a kernel workqueue after the case returns, and would otherwise land in this case's window.
fn settle() {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let before = busy_ticks();
        std::thread::sleep(Duration::from_millis(500));
        // Under 2% of one CPU over half a second.
        if busy_ticks() - before <= 1 {
            return;
        }
    }
    println!("    (the machine did not go idle before this case: its figure is noisy)");
}

/// A line of the cost report: its label and the run that measures it.
type CostLine = (&'static str, fn() -> f64);

/// Pods on node2 of a two-node ClusterNet, the gateway on node1: the backends are remote, so
/// their replies must come back through node1 (SNAT, or MASQUERADE for iptables). Four pods,
/// split evenly: a round's connections then stay within each backend's 4,000 SNAT ports, which
/// a closed flow holds for 60 s (the cost is what is measured here, not that capacity).
const REMOTE_NET: ClusterPlan = ClusterPlan { net: 231 };
const REMOTE_POD_PORT: u16 = 8080;
const REMOTE_PODS: usize = 4;

fn remote_topology() -> ClusterNet {
    let c = ClusterNet::new("bc", REMOTE_NET, Routing::Native, 2, REMOTE_PODS).expect("cluster");
    c.client()
        .sysctl("net/ipv4/ip_local_port_range", "1024 65000")
        .expect("sysctl");
    c.client()
        .sysctl("net/ipv4/tcp_tw_reuse", "1")
        .expect("sysctl");
    for j in 0..REMOTE_PODS {
        let pod = c.pod(1, j);
        accept_and_close(
            &pod.ns,
            SocketAddr::from((pod.address_v4(), REMOTE_POD_PORT)),
        );
    }
    c
}

/// node1's address, port 80: what the client connects to through either data plane.
fn remote_vip(c: &ClusterNet) -> SocketAddr {
    SocketAddr::from((c.node(0).address_v4(), 80))
}

fn remote_backends(c: &ClusterNet) -> Vec<SocketAddr> {
    (0..REMOTE_PODS)
        .map(|j| SocketAddr::from((c.pod(1, j).address_v4(), REMOTE_POD_PORT)))
        .collect()
}

/// The same load with no gateway: the server runs on node1 itself.
fn remote_hopless(measure: Measure) -> f64 {
    let c = remote_topology();
    let at = SocketAddr::from((c.node(0).address_v4(), 8081));
    accept_and_close(&c.node(0).ns, at);
    measure(c.client(), &[at])
}

/// kube-proxy's way: DNAT with `-m statistic`, then MASQUERADE towards the other node's
/// pods so their replies come back through node1.
fn iptables_remote(measure: Measure) -> f64 {
    let c = remote_topology();
    let node = &c.node(0).ns;
    let vip = remote_vip(&c);
    let backends = remote_backends(&c);
    let vip_ip = vip.ip().to_string();
    // kube-proxy's even split: rule i takes 1/(n-i) of what the rules before it left.
    for (i, to) in backends.iter().enumerate() {
        let to = to.to_string();
        let left = backends.len() - i;
        let prob = format!("{:.5}", 1.0 / left as f64);
        let mut args = vec![
            "-t",
            "nat",
            "-A",
            "PREROUTING",
            "-d",
            &vip_ip,
            "-p",
            "tcp",
            "--dport",
            "80",
        ];
        if left > 1 {
            args.extend([
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &prob,
            ]);
        }
        args.extend(["-j", "DNAT", "--to-destination", &to]);
        node.exec("iptables", &args)
            .expect("iptables (cargo xtask bench installs it)");
    }
    let cidr = c.node(1).pod_cidr_v4();
    node.exec(
        "iptables",
        &[
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-d",
            &cidr,
            "-j",
            "MASQUERADE",
        ],
    )
    .expect("iptables");
    measure(c.client(), &[vip])
}

/// splitter on node1's uplink: DNAT + SNAT to node1's address in XDP, both legs sent by TC.
fn splitter_remote(measure: Measure) -> f64 {
    let pins = testbed::BpfFs::new().expect("bpffs");
    let c = remote_topology();
    let node = c.node(0);
    let mut obj = ebpf::load_object(Some(&pins.path().join("maps"))).expect("load");
    let links = pins.path().join("links");
    node.ns.run(|| {
        ebpf::attach_pinned(
            &mut obj,
            &node.uplink,
            &links,
            ebpf::XdpAttachMode::Driver,
            ebpf::TcAttachMode::Auto,
        )
        .expect("attach")
    });
    let mut act = L4Actuator::new(&mut obj).expect("actuator");
    let node_addr = IpAddr::from(node.address_v4());
    act.set_config(splitter::run::snat_config(
        &[node_addr],
        splitter::run::SnatPorts::default(),
    ))
    .expect("config");
    let b = remote_backends(&c);
    let table = (0..16381).map(|s| Some(b[s % b.len()])).collect();
    act.apply(&[L4RouteProgram {
        key: "bench".into(),
        vips: vec![(remote_vip(&c), L4Proto::Tcp)],
        table,
        remote: b.into_iter().collect(),
        dedicated: Default::default(),
    }])
    .expect("apply");
    let r = measure(c.client(), &[remote_vip(&c)]);
    let _ = node.ns.run(|| ebpf::detach_pinned(&node.uplink, &links));
    r
}

/// Prints one cost table: the first line is the baseline the marginals subtract; `ratios`
/// names, for the line it is on, the lines its marginal is divided by.
fn cost_table(title: &str, lines: &[CostLine], ratios: &[(usize, &[usize])]) -> Vec<f64> {
    let mut runs = vec![Vec::new(); lines.len()];
    for _ in 0..COST_ROUNDS {
        for (line, (_, run)) in runs.iter_mut().zip(lines) {
            line.push(run());
        }
    }
    let costs: Vec<f64> = runs.into_iter().map(median).collect();
    let marginal: Vec<f64> = costs.iter().map(|c| c - costs[0]).collect();
    println!("{title}");
    for (i, ((label, _), (c, m))) in lines.iter().zip(costs.iter().zip(&marginal)).enumerate() {
        let label = format!("{label}:");
        if i == 0 {
            println!("  {label:<37}{c:>7.1} us/conn");
            continue;
        }
        print!("  {label:<37}{c:>7.1} us/conn   marginal {m:>6.1} us");
        for (line, against) in ratios.iter().filter(|(l, _)| *l == i) {
            let parts: Vec<String> = against
                .iter()
                .map(|&j| format!("{:.2}x {}", marginal[*line] / marginal[j], lines[j].0))
                .collect();
            print!("   {}", parts.join(", "));
        }
        println!();
    }
    marginal
}

/// The gateway's marginal CPU per new connection at a fixed offered rate below saturation:
/// whole-machine CPU time per connection minus that of the same load with no gateway hop, for
/// local backends (GatewayNet) and for remote ones (pods on another node of a ClusterNet).
fn cost() {
    let header = format!(
        "{COST_RATE} connections/s offered for {COST_SECONDS} s, CPU of every task involved, median of {COST_ROUNDS} interleaved rounds"
    );
    let local: [CostLine; 4] = [
        ("no gateway hop (baseline)", || hopless(cpu_per_connection)),
        ("plain routing", || routed(cpu_per_connection)),
        ("iptables DNAT", || iptables_local(cpu_per_connection)),
        ("splitter, native XDP + TC", || {
            splitter_local(ebpf::XdpAttachMode::Driver, cpu_per_connection)
        }),
    ];
    cost_table(
        &format!("l4 cost per new connection, local backends ({header})"),
        &local,
        &[(3, &[2, 1])],
    );
    let remote: [CostLine; 3] = [
        ("server on node1 (baseline)", || {
            remote_hopless(cpu_per_connection)
        }),
        ("iptables DNAT + MASQUERADE", || {
            iptables_remote(cpu_per_connection)
        }),
        ("splitter DNAT + SNAT", || {
            splitter_remote(cpu_per_connection)
        }),
    ];
    cost_table(
        &format!("l4 cost per new connection, remote backends ({header})"),
        &remote,
        &[(2, &[1])],
    );
}

fn main() {
    if !testbed::is_root() {
        eprintln!("bench l4 needs root (BPF, network namespaces)");
        std::process::exit(1);
    }
    // `cargo bench --bench l4 -- per-packet` (or `cps`, or `cost`) runs one part; no argument
    // runs per-packet and cps.
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |part: &str| only.is_empty() || only.iter().any(|a| a == part);
    if wants("per-packet") {
        per_packet();
    }
    if wants("cps") {
        cps();
    }
    // Not part of the default run: it takes a minute and a half of fixed-rate load.
    if only.iter().any(|a| a == "cost") {
        cost();
    }
}
