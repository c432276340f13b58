//! The `splitter` binary: wiring only; every subcommand's logic lives in the library.

use std::{path::PathBuf, process::ExitCode};

use clap::{Args, Parser, Subcommand};
use splitter::{check, dataplane::ebpf, doctor, inspect};
use splitter_common::pin::DEFAULT_PIN_DIR;

mod allocator;

#[derive(Parser)]
#[command(
    name = "splitter",
    version,
    about = "eBPF/XDP-accelerated traffic splitter for the Kubernetes Gateway API"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check whether this node can run the agent (kernel, BTF, bpffs, capabilities, load, attach).
    Doctor(DoctorArgs),
    /// Print the live kernel state read from the pinned maps.
    Inspect(InspectArgs),
    /// Load manifests, build the plan and print it: listeners with their mode and why, weighted
    /// shares per backend, statuses. Exits 1 when anything is invalid.
    Check(CheckArgs),
    /// Run the agent: serve the Gateways of the manifests or of the cluster (L7 listeners in the
    /// proxy, L4 listeners in the kernel on each --iface), following changes until SIGTERM;
    /// with --kube, the elected agent also writes status.
    Run(Box<RunArgs>),
    /// Remove the pinned XDP/TC attachments from each --iface (the agent leaves them in place
    /// on exit so that connections survive restarts); with --all, everything the agent made
    /// under --pin-dir (programs on every interface, maps, the pin directory): uninstall.
    Detach(DetachArgs),
}

#[derive(Args)]
struct DoctorArgs {
    /// Also attach the XDP program to this interface (and detach it again).
    #[arg(long)]
    iface: Option<String>,
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// The `--tc-attach` mode `splitter run` will get; the check says what it means here.
    #[arg(long = "tc-attach", value_enum, default_value_t = ebpf::TcAttachMode::Auto)]
    tc_attach: ebpf::TcAttachMode,
}

#[derive(Args)]
struct InspectArgs {
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
}

#[derive(Args)]
struct CheckArgs {
    /// A manifest file or a directory of them (repeatable).
    #[arg(long = "manifests", required = true)]
    manifests: Vec<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = check::Output::Text)]
    output: check::Output,
    #[arg(long, default_value = splitter_plan::plan::listener::DEFAULT_GATEWAY_CLASS)]
    gateway_class: String,
}

#[derive(Args)]
struct RunArgs {
    /// A manifest file or a directory of them (repeatable); changes are picked up.
    #[arg(
        long = "manifests",
        required_unless_present = "kube",
        conflicts_with = "kube"
    )]
    manifests: Vec<PathBuf>,
    /// Watch the cluster (kubeconfig or in-cluster) instead of files, and write status
    /// while holding the status writer Lease.
    #[arg(long)]
    kube: bool,
    /// This node's name: the Lease holder identity, and how endpoints on other nodes are told
    /// apart (their L4 flows are source-NATed). The DaemonSet sets NODE_NAME from the
    /// downward API. Without it (files mode) every endpoint is treated as local.
    #[arg(long, env = "NODE_NAME", required_if_eq("kube", "true"))]
    node_name: Option<String>,
    /// Source ports for L4 flows to backends on other nodes (SNAT), MIN-MAX. Added to
    /// net.ipv4.ip_local_reserved_ports so local sockets stay out of them.
    #[arg(long, default_value_t = splitter::run::SnatPorts::default())]
    snat_ports: splitter::run::SnatPorts,
    /// The cluster's NodePort range, MIN-MAX (the API server's --service-node-port-range):
    /// listeners on the node's addresses may not take it.
    #[arg(long, default_value_t = splitter::run::node_ports::DEFAULT_NODE_PORT_RANGE)]
    node_port_range: splitter::run::SnatPorts,
    /// New half-open L4 flows per second per CPU above which the node counts as under flood:
    /// a packet of an unknown flow that is not a SYN (on a VIP no host socket shares) is then
    /// dropped rather than given a backend. 0: never under flood.
    #[arg(long, default_value_t = splitter_common::l4::DEFAULT_FLOOD_THRESHOLD)]
    flood_threshold: u32,
    /// New L4 flows per second one client address may start (SYNs and first datagrams over it
    /// are dropped). 0: no limit.
    #[arg(long, default_value_t = splitter_common::l4::DEFAULT_SOURCE_RATE)]
    new_flows_per_source: u32,
    /// How many new L4 flows a client address may start at once (the per-source burst).
    #[arg(long, default_value_t = splitter_common::l4::DEFAULT_SOURCE_BURST)]
    new_flows_burst: u32,
    /// The agent's namespace, where the status writer Lease lives.
    #[arg(long, env = "POD_NAMESPACE", default_value = "splitter-system")]
    namespace: String,
    /// `status.addresses` for Gateways without `spec.addresses` (repeatable), e.g. a
    /// load balancer that reaches every node. Default: the writing agent's node's addresses
    /// (its first interface's).
    #[arg(long = "status-address")]
    status_addresses: Vec<std::net::IpAddr>,
    /// Label selector of the agent's own pods (the DaemonSet's): the status writer lists them
    /// in the agent's namespace, and the nodes of the Ready ones are `status.addresses` of
    /// Gateways without `spec.addresses` or `--status-address`.
    #[arg(long, default_value = splitter::status::agents::DEFAULT_SELECTOR)]
    agent_selector: String,
    /// Client-facing interface for the XDP/TC programs (repeatable). Default: the interface
    /// of the default route (IPv4, else IPv6) of the agent's network namespace.
    #[arg(long = "iface")]
    ifaces: Vec<String>,
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
    /// Admin endpoint: /healthz, /readyz, /metrics, and /debug/plan, /debug/status and
    /// /debug/l4 (these answer loopback peers only, whatever the address).
    #[arg(long, default_value = splitter::admin::DEFAULT_ADMIN_ADDR)]
    admin: std::net::SocketAddr,
    #[arg(long, default_value = splitter_plan::plan::listener::DEFAULT_GATEWAY_CLASS)]
    gateway_class: String,
    #[arg(long, value_enum, default_value_t = ebpf::XdpAttachMode::Auto)]
    xdp_mode: ebpf::XdpAttachMode,
    /// How the TC programs attach: tcx links (kernel 6.6+, pinned, replaced atomically on
    /// restart), netlink (clsact filters, as kernels before 6.6 need; re-attached at start),
    /// or auto (tcx where the kernel has it).
    #[arg(long = "tc-attach", value_enum, default_value_t = ebpf::TcAttachMode::Auto)]
    tc_attach: ebpf::TcAttachMode,
    /// L7 proxy worker threads, each serving its connections by itself (default: one per
    /// CPU). The control plane runs on a separate runtime (`TOKIO_WORKER_THREADS`).
    #[arg(long, env = "SPLITTER_PROXY_WORKERS", value_parser = clap::value_parser!(u16).range(1..))]
    proxy_workers: Option<u16>,
    /// One JSON line per L7 request on standard output (route, backend, endpoint, status,
    /// body bytes, duration, upstream time). Off by default.
    #[arg(long)]
    access_log: bool,
    /// Whose X-Forwarded-For the L7 proxy forwards: `append` keeps the client's and appends
    /// the peer address (behind a trusted load balancer); `replace` drops the client's and
    /// writes the peer address alone (clients connect directly and could claim any address).
    #[arg(long, value_enum, env = "SPLITTER_XFF", default_value_t = splitter::dataplane::proxy::XffPolicy::Append)]
    xff: splitter::dataplane::proxy::XffPolicy,
    /// L7 connections one client address (IPv6: one /64) may hold open at once, over all
    /// listeners; 0: no limit. Set 0 (or high) when clients arrive through a load balancer or
    /// NAT that hides their addresses.
    #[arg(long, default_value_t = splitter::dataplane::proxy::ProxyConfig::default().max_connections_per_source)]
    max_connections_per_source: usize,
    /// Milliseconds within which changes (watch events, file edits) are planned together: a
    /// change after a quiet spell is planned at once, a stream of them at most once per this
    /// long. 0: every batch is planned on its own.
    #[arg(long, default_value_t = splitter::control::DEFAULT_COALESCE.as_millis() as u64)]
    coalesce_ms: u64,
}

#[derive(Args)]
struct DetachArgs {
    #[arg(
        long = "iface",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    ifaces: Vec<String>,
    /// Every interface the pin directory names, the maps' pins and the pin directory. Run in
    /// the node's network namespace (hostNetwork): netlink TC filters are found there.
    #[arg(long)]
    all: bool,
    #[arg(long, default_value = DEFAULT_PIN_DIR)]
    pin_dir: PathBuf,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Doctor(args) => doctor(args),
        Command::Inspect(args) => inspect(args),
        Command::Check(args) => check(args),
        Command::Run(args) => run(*args),
        Command::Detach(args) => detach(args),
    }
}

fn exit_code(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn doctor(
    DoctorArgs {
        iface,
        pin_dir,
        tc_attach,
    }: DoctorArgs,
) -> ExitCode {
    let checks = doctor::run(iface.as_deref(), &pin_dir, tc_attach);
    for c in &checks {
        println!("{c}");
    }
    exit_code(checks.iter().all(|c| c.ok))
}

fn inspect(InspectArgs { pin_dir }: InspectArgs) -> ExitCode {
    match inspect::render(&pin_dir) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("splitter inspect: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn check(
    CheckArgs {
        manifests,
        output,
        gateway_class,
    }: CheckArgs,
) -> ExitCode {
    let config = splitter_plan::plan::PlanConfig {
        gateway_class,
        clock: splitter_plan::plan::tls::Clock::System,
        ..Default::default()
    };
    let outcome = check::run(&manifests, output, &config);
    print!("{}", outcome.output);
    exit_code(outcome.ok)
}

fn run(args: RunArgs) -> ExitCode {
    let RunArgs {
        manifests,
        kube,
        node_name,
        namespace,
        status_addresses,
        agent_selector,
        ifaces,
        pin_dir,
        admin,
        gateway_class,
        xdp_mode,
        tc_attach,
        proxy_workers,
        access_log,
        xff,
        max_connections_per_source,
        snat_ports,
        node_port_range,
        flood_threshold,
        new_flows_per_source,
        new_flows_burst,
        coalesce_ms,
    } = args;
    let source = if kube {
        splitter::run::Source::Kube(splitter::run::KubeOptions {
            node_name: node_name.clone().unwrap_or_default(),
            namespace,
            status_addresses,
            agent_selector,
        })
    } else {
        splitter::run::Source::Manifests(manifests)
    };
    let opts = splitter::run::RunOptions {
        source,
        ifaces,
        pin_dir,
        admin,
        gateway_class,
        xdp_mode,
        tc_mode: tc_attach,
        poll_interval: splitter::source::DEFAULT_POLL_INTERVAL,
        coalesce: std::time::Duration::from_millis(coalesce_ms),
        proxy_workers: proxy_workers.map(usize::from),
        access_log,
        xff,
        max_connections_per_source,
        node_name,
        snat_ports,
        node_port_range,
        flow_limits: splitter::run::FlowLimits {
            flood_threshold,
            source_rate: new_flows_per_source,
            source_burst: new_flows_burst,
        },
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("splitter run: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(splitter::run::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("splitter run: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn detach(
    DetachArgs {
        ifaces,
        all,
        pin_dir,
    }: DetachArgs,
) -> ExitCode {
    if all {
        return match ebpf::detach_all(&pin_dir) {
            Ok(r) => {
                println!(
                    "splitter detach: removed the programs on {} interface(s) [{}], {} map pin(s) \
                     and {}",
                    r.ifaces.len(),
                    r.ifaces.join(", "),
                    r.maps,
                    pin_dir.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("splitter detach --all {}: {e}", pin_dir.display());
                ExitCode::FAILURE
            }
        };
    }
    let mut ok = true;
    for iface in &ifaces {
        if let Err(e) = ebpf::detach_pinned(iface, &pin_dir.join("links")) {
            eprintln!("splitter detach {iface}: {e}");
            ok = false;
        }
    }
    exit_code(ok)
}
