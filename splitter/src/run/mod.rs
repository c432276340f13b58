//! `splitter run`: manifests or the cluster in, data plane (and, with `--kube`, status) out.
//! Wiring only: the source (files or kube watchers) feeds the index,
//! each change of the index becomes a new plan (pure), and the plan goes to both actuators, the
//! kernel (L4 listeners) and the hyper proxy (L7 listeners).

mod default_iface;
mod l4;
pub mod node_ports;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use tokio::sync::{mpsc, watch};

use crate::{
    agent::{AgentConfig, run_l7},
    control,
    dataplane::{
        ebpf::{TcAttachMode, XdpAttachMode},
        proxy::ProxyConfig,
    },
    health::KernelHealth,
    source::{self, FileSource},
    status::{self, LeaseConfig, WriterConfig},
};
use splitter_plan::plan::{Plan, PlanConfig};

pub use default_iface::default_route_iface;
pub use l4::{
    ATTACH_RETRY, FlowLimits, L4Runner, L4Settings, SnatPorts, l4_programs, merge_reserved_ports,
    snat_config,
};

/// Where the objects come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// `--manifests`: files or directories, polled for changes.
    Manifests(Vec<PathBuf>),
    /// `--kube`: the cluster (kubeconfig or in-cluster); this agent also competes for the
    /// status writer's Lease.
    Kube(KubeOptions),
}

#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// This node (`--node-name` or `NODE_NAME`): the Lease holder identity.
    pub node_name: String,
    /// The agent's namespace, where the Lease lives (`POD_NAMESPACE`).
    pub namespace: String,
    /// `status.addresses` of Gateways without `spec.addresses` (`--status-address`).
    pub status_addresses: Vec<IpAddr>,
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub source: Source,
    /// Where the L4 programs attach; without any, the interface of the default route, and
    /// without one either, L4 listeners are planned but not served.
    pub ifaces: Vec<String>,
    pub pin_dir: PathBuf,
    pub admin: SocketAddr,
    pub gateway_class: String,
    pub xdp_mode: XdpAttachMode,
    /// How the TC programs attach (`--tc-attach`).
    pub tc_mode: TcAttachMode,
    pub poll_interval: Duration,
    /// L7 proxy worker threads; `None` for one per CPU.
    pub proxy_workers: Option<usize>,
    /// This node (`--node-name`): endpoints on other nodes are source-NATed. Without it, every
    /// endpoint is treated as local.
    pub node_name: Option<String>,
    /// Source ports of SNAT flows (`--snat-ports`).
    pub snat_ports: SnatPorts,
    /// The cluster's NodePort range (`--node-port-range`), which listeners on the node's
    /// addresses may not take.
    pub node_port_range: SnatPorts,
    /// Flood guards of the kernel half (`--flood-threshold`, `--new-flows-per-source`).
    pub flow_limits: FlowLimits,
}

/// Runs until SIGTERM/SIGINT. The kernel programs stay attached (pinned) when the agent exits,
/// so established L4 connections survive a restart; `splitter detach` removes them.
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let config = PlanConfig {
        gateway_class: opts.gateway_class.clone(),
        ..Default::default()
    };
    let (updates_tx, updates) = mpsc::channel(4);
    let (plans_tx, plans) = watch::channel::<Option<Arc<Plan>>>(None);
    match &opts.source {
        Source::Manifests(paths) => {
            tokio::spawn(source::watch(
                FileSource::new(paths.clone()),
                opts.poll_interval,
                updates_tx,
            ));
        }
        Source::Kube(kube) => start_kube(kube, &config, updates_tx, plans.clone()).await?,
    }
    let ports = node_ports::watch(opts.node_port_range, opts.snat_ports);
    tokio::spawn(control::run(updates, config, plans_tx, ports));

    let mut ifaces = opts.ifaces.clone();
    if ifaces.is_empty() {
        match default_route_iface() {
            Some(iface) => {
                tracing::info!(%iface, "no --iface: attaching to the interface of the default route");
                ifaces.push(iface);
            }
            None => tracing::warn!(
                "no --iface and no default route: L4 listeners are planned but not served"
            ),
        }
    }
    // The kernel half never stops the agent: while it cannot start, L7 serves and it retries.
    let kernel = if ifaces.is_empty() {
        None
    } else {
        let health = KernelHealth::new(&ifaces);
        let settings = L4Settings {
            ifaces,
            pin_dir: opts.pin_dir.clone(),
            mode: opts.xdp_mode,
            tc_mode: opts.tc_mode,
            node_name: opts.node_name.clone(),
            snat_ports: opts.snat_ports,
            flow_limits: opts.flow_limits,
        };
        tokio::spawn(l4::supervise(settings, plans.clone(), health.clone()));
        Some(health)
    };

    let agent = AgentConfig {
        admin: opts.admin,
        proxy: ProxyConfig {
            workers: opts
                .proxy_workers
                .unwrap_or_else(crate::dataplane::proxy::default_workers),
            ..ProxyConfig::default()
        },
        kernel,
    };
    let shutdown = async {
        if let Err(e) = crate::signal::terminated().await {
            tracing::error!("signal handler: {e}");
            std::future::pending::<()>().await;
        }
        tracing::info!("termination signal received");
    };
    run_l7(agent, plans, Plan::l7_tables, shutdown).await?;
    Ok(())
}

/// The kube source, the Lease campaign and the status writer.
async fn start_kube(
    opts: &KubeOptions,
    config: &PlanConfig,
    updates: mpsc::Sender<Vec<splitter_plan::model::index::Update>>,
    plans: watch::Receiver<Option<Arc<Plan>>>,
) -> anyhow::Result<()> {
    if opts.node_name.is_empty() {
        anyhow::bail!("--kube needs this node's name: --node-name or NODE_NAME");
    }
    let client = kube::Client::try_default().await.map_err(|e| {
        anyhow::anyhow!("connecting to the Kubernetes API (kubeconfig or in-cluster): {e}")
    })?;
    tracing::info!(node = %opts.node_name, "watching the cluster");
    let (observed_tx, observed) = watch::channel(Arc::default());
    tokio::spawn(source::kube::run(client.clone(), updates, observed_tx));
    let (leader_tx, leader) = watch::channel(false);
    let leases = kube::Api::namespaced(client.clone(), &opts.namespace);
    tokio::spawn(status::lease::run(
        leases,
        LeaseConfig::new(&opts.namespace, &opts.node_name),
        leader_tx,
    ));
    let writer = WriterConfig {
        controller_name: config.controller_name.clone(),
        default_addresses: opts.status_addresses.clone(),
        resync: Duration::from_secs(300),
    };
    tokio::spawn(status::writer::run(client, writer, plans, observed, leader));
    Ok(())
}
