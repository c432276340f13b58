//! `splitter run`: manifests or the cluster in, data plane (and, with `--kube`, status) out.
//! Wiring only: the source (files or kube watchers) feeds the index,
//! each change of the index becomes a new plan (pure), and the plan goes to both actuators, the
//! kernel (L4 listeners) and the hyper proxy (L7 listeners).

mod default_iface;
mod l4;
pub mod node_ports;
pub mod report;

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use tokio::sync::{mpsc, watch};

use crate::{
    admin::PlanSnapshot,
    agent::{AgentConfig, L7Binds, run_l7},
    control,
    dataplane::{
        ebpf::{TcAttachMode, XdpAttachMode},
        proxy::ProxyConfig,
    },
    health::{Heartbeat, KernelHealth},
    source::{self, FileSource},
    status::{self, LeaseConfig, WriterConfig},
};
use splitter_plan::{
    plan::{
        Plan, PlanConfig,
        applied::{NodeReport, NodeView},
    },
    status::{Observed, StatusContext},
};

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
    /// The label selector of the agent's own pods (`--agent-selector`): without
    /// `--status-address`, the nodes of the Ready ones are `status.addresses`.
    pub agent_selector: String,
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
    /// See [`control::run`] (`--coalesce-ms`).
    pub coalesce: Duration,
    /// L7 proxy worker threads; `None` for one per CPU.
    pub proxy_workers: Option<usize>,
    /// One line per L7 request on standard output (`--access-log`).
    pub access_log: bool,
    /// Whose `X-Forwarded-For` the L7 proxy forwards (`--xff`).
    pub xff: crate::dataplane::proxy::XffPolicy,
    /// See [`ProxyConfig::max_connections_per_source`].
    pub max_connections_per_source: usize,
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
    // First, so that a pod stopped while it starts shuts down as it should rather than dying of
    // the signal's default action.
    let terminated = crate::signal::terminated()
        .map_err(|e| anyhow::anyhow!("cannot install the signal handlers: {e}"))?;
    // Every connection is a file descriptor: at a soft limit of 1,024, a few hundred idle
    // clients would make accept fail for everyone.
    match crate::dataplane::proxy::raise_nofile_limit() {
        Ok(limit) => tracing::info!(
            limit,
            "open file limit (RLIMIT_NOFILE) raised to the hard limit"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open file limit (RLIMIT_NOFILE)"),
    }
    let config = PlanConfig {
        gateway_class: opts.gateway_class.clone(),
        clock: splitter_plan::plan::tls::Clock::System,
        ..Default::default()
    };
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
    let node = match &opts.source {
        Source::Kube(k) => k.node_name.clone(),
        Source::Manifests(_) => opts.node_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "this node".into())
        }),
    };
    let binds = L7Binds::default();
    let (updates_tx, updates) = mpsc::channel(4);
    let (plans_tx, plans) = watch::channel::<Option<Arc<Plan>>>(None);
    let (reports_tx, reports) = watch::channel::<Option<NodeView>>(None);
    let status_addresses = match &opts.source {
        Source::Manifests(paths) => {
            tokio::spawn(source::watch(
                FileSource::new(paths.clone()),
                opts.poll_interval,
                updates_tx,
            ));
            Vec::new()
        }
        Source::Kube(kube) => {
            start_kube(kube, &config, updates_tx, plans.clone(), reports).await?;
            kube.status_addresses.clone()
        }
    };
    let ports = node_ports::watch(opts.node_port_range, opts.snat_ports);
    let heartbeat = Heartbeat::default();
    let plan_metrics = control::PlanMetrics::default();
    tokio::spawn(control::run(
        updates,
        config.clone(),
        plans_tx,
        ports,
        control::LoopSettings {
            heartbeat: heartbeat.clone(),
            coalesce: opts.coalesce,
            metrics: plan_metrics.clone(),
        },
    ));

    // The kernel half never stops the agent: while it cannot start, L7 serves and it retries.
    let kernel = if ifaces.is_empty() {
        None
    } else {
        let health = KernelHealth::new(&ifaces).with_pin_dir(&opts.pin_dir);
        let settings = L4Settings {
            ifaces: ifaces.clone(),
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
    let reporter = Reporter {
        node,
        ifaces,
        binds: binds.clone(),
        kernel: kernel.clone(),
    };
    tokio::spawn(reporter.clone().run(plans.clone(), reports_tx));

    let mut agent = AgentConfig::new(
        opts.admin,
        ProxyConfig {
            workers: opts
                .proxy_workers
                .unwrap_or_else(crate::dataplane::proxy::default_workers),
            access_log: opts
                .access_log
                .then(crate::dataplane::proxy::AccessLog::stdout),
            xff: opts.xff,
            max_connections_per_source: opts.max_connections_per_source,
            ..ProxyConfig::default()
        },
    );
    agent.kernel = kernel;
    agent.heartbeat = Some(heartbeat);
    agent.plan_metrics = Some(plan_metrics);
    agent.binds = binds;
    agent.status = Some(status_page(
        reporter,
        plans.clone(),
        config.controller_name.clone(),
        status_addresses,
    ));
    let shutdown = async {
        terminated.await;
        tracing::info!("termination signal received");
    };
    run_l7(agent, plans, Plan::l7_tables, shutdown).await?;
    Ok(())
}

/// How often the node report is recomputed besides after each L7 apply (the kernel half's
/// state and the node's addresses change on their own).
const REPORT_EVERY: Duration = Duration::from_secs(2);

/// Gathers this node's report on the plan (see [`report::node_report`]).
#[derive(Clone)]
struct Reporter {
    node: String,
    ifaces: Vec<String>,
    binds: L7Binds,
    kernel: Option<KernelHealth>,
}

impl Reporter {
    fn report(&self, plan: &Plan) -> NodeReport {
        let kernel = self.kernel.as_ref().map(KernelHealth::snapshot);
        report::node_report(
            plan,
            &self.binds.snapshot(),
            kernel.as_ref(),
            &self.node,
            node_status_addresses(&self.ifaces),
        )
    }

    /// Publishes the report with its plan on `out` when it changes, once the L7 agent has
    /// applied the plan (a report naming listeners "not applied yet" would flap the status):
    /// after each plan, each change of the binds, and every [`REPORT_EVERY`] (the kernel half and
    /// the node's addresses change on their own). Returns when the plan channel closes.
    async fn run(
        self,
        mut plans: watch::Receiver<Option<Arc<Plan>>>,
        out: watch::Sender<Option<NodeView>>,
    ) {
        let mut binds = self.binds.subscribe();
        let mut tick = tokio::time::interval(REPORT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let plan = plans.borrow_and_update().clone();
            let applied = self.binds.snapshot();
            if let Some(plan) = plan
                && plan
                    .l7_tables()
                    .keys()
                    .all(|addr| applied.contains_key(addr))
            {
                let report = self.report(&plan);
                out.send_if_modified(|view| {
                    let changed = view
                        .as_ref()
                        .is_none_or(|v| !Arc::ptr_eq(&v.plan, &plan) || v.report != report);
                    if changed {
                        let was = view.as_ref().map(|v| &v.report.unserved);
                        if !report.unserved.is_empty() && was != Some(&report.unserved) {
                            for u in &report.unserved {
                                tracing::warn!(
                                    port = u.listener.port,
                                    "listener not served on this node: {}",
                                    u.why
                                );
                            }
                        }
                        *view = Some(NodeView {
                            plan: plan.clone(),
                            report,
                        });
                    }
                    changed
                });
            }
            tokio::select! {
                _ = tick.tick() => {}
                r = binds.changed() => if r.is_err() { return },
                r = plans.changed() => if r.is_err() { return },
            }
        }
    }
}

/// The addresses `status.addresses` names for Gateways without `spec.addresses` when no
/// `--status-address` is given: the first interface's (the default route's, or the first
/// `--iface`), loopback and link-local ones left out.
fn node_status_addresses(ifaces: &[String]) -> Vec<IpAddr> {
    l4::iface_addresses(&ifaces[..1.min(ifaces.len())])
        .unwrap_or_default()
        .into_iter()
        .filter(|a| !a.is_loopback())
        .collect()
}

/// `/debug/status`: every GatewayClass, Gateway and route status of the current plan as this
/// node would write it (what the status writer patches in kube mode; the only place files mode
/// shows it), with `Programmed` from this node's report, computed when asked.
fn status_page(
    reporter: Reporter,
    plans: watch::Receiver<Option<Arc<Plan>>>,
    controller_name: String,
    default_addresses: Vec<IpAddr>,
) -> PlanSnapshot {
    Arc::new(move || {
        let Some(plan) = plans.borrow().clone() else {
            return serde_json::Value::Null;
        };
        let report = reporter.report(&plan);
        let keys = plan
            .gateway_classes
            .iter()
            .map(|c| c.class.clone())
            .chain(plan.gateways.iter().map(|g| g.gateway.clone()))
            .chain(plan.routes.iter().map(|r| r.route.clone()));
        let observed: Observed = keys.map(|k| (k, Arc::default())).collect();
        let now = status::writer::now();
        let ctx = StatusContext {
            controller_name: &controller_name,
            default_addresses: &default_addresses,
            node: Some(&report),
            now: &now,
        };
        let objects: Vec<serde_json::Value> =
            splitter_plan::status::patches(&plan, &observed, &ctx)
                .into_iter()
                .map(|p| {
                    serde_json::json!({
                        "kind": p.key.kind.as_str(),
                        "namespace": p.key.namespace,
                        "name": p.key.name,
                        "status": p.body["status"],
                    })
                })
                .collect();
        serde_json::json!({ "node": report.node, "objects": objects })
    })
}

/// The kube source, the Lease campaign and the status writer.
async fn start_kube(
    opts: &KubeOptions,
    config: &PlanConfig,
    updates: mpsc::Sender<Vec<splitter_plan::model::index::Update>>,
    plans: watch::Receiver<Option<Arc<Plan>>>,
    reports: watch::Receiver<Option<NodeView>>,
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
        agent_pods: Some(status::agents::AgentPods {
            namespace: opts.namespace.clone(),
            selector: opts.agent_selector.clone(),
        }),
        resync: Duration::from_secs(300),
    };
    tokio::spawn(status::writer::run(
        client, writer, plans, observed, leader, reports,
    ));
    Ok(())
}
