//! `splitter run`: manifests in, data plane out. Wiring only: the file source feeds the index,
//! each change of the index becomes a new plan (pure), and the plan goes to both actuators, the
//! kernel (L4 listeners) and the hyper proxy (L7 listeners).

mod l4;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::{mpsc, watch};

use crate::{
    agent::{AgentConfig, L7Tables, run_l7},
    dataplane::{ebpf::XdpAttachMode, proxy::ProxyConfig},
    model::index::Index,
    plan::{self, Plan, PlanConfig},
    source::{self, FileSource},
};

pub use l4::{L4Runner, l4_programs};

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub manifests: Vec<PathBuf>,
    /// Where the L4 programs attach; without any, L4 listeners are planned but not served.
    pub ifaces: Vec<String>,
    pub pin_dir: PathBuf,
    pub admin: SocketAddr,
    pub gateway_class: String,
    pub xdp_mode: XdpAttachMode,
    pub poll_interval: Duration,
}

/// The L7 listeners of a plan by bind address.
pub fn l7_tables(plan: &Plan) -> L7Tables {
    let mut out = L7Tables::new();
    for l in plan.l7_listeners() {
        if let Some(table) = &l.l7 {
            for addr in l.bind() {
                out.insert(addr, table.clone());
            }
        }
    }
    out
}

/// Runs until SIGTERM/SIGINT. The kernel programs stay attached (pinned) when the agent exits,
/// so established L4 connections survive a restart; `splitter detach` removes them.
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let config = PlanConfig {
        gateway_class: opts.gateway_class.clone(),
        ..Default::default()
    };
    let (updates_tx, mut updates) = mpsc::channel(4);
    tokio::spawn(source::watch(
        FileSource::new(opts.manifests.clone()),
        opts.poll_interval,
        updates_tx,
    ));

    let (plans_tx, plans) = watch::channel::<Option<Arc<Plan>>>(None);
    tokio::spawn(async move {
        let mut index = Index::new();
        let mut previous: Option<Arc<Plan>> = None;
        while let Some(batch) = updates.recv().await {
            for u in batch {
                index.update(u);
            }
            let next = Arc::new(plan::build(&index, &config, previous.as_deref()));
            if previous.as_deref() == Some(&*next) {
                continue;
            }
            for p in next.problems() {
                tracing::warn!("plan: {p}");
            }
            tracing::info!(
                listeners = next.listeners.len(),
                l4 = next.l4_listeners().count(),
                l7 = next.l7_listeners().count(),
                "new plan"
            );
            previous = Some(next.clone());
            if plans_tx.send(Some(next)).is_err() {
                return;
            }
        }
    });

    if opts.ifaces.is_empty() {
        tracing::warn!("no --iface: L4 listeners are planned but not served");
    } else {
        let runner = L4Runner::start(&opts.ifaces, &opts.pin_dir, opts.xdp_mode)?;
        tokio::spawn(runner.follow(plans.clone()));
    }

    let agent = AgentConfig {
        admin: opts.admin,
        proxy: ProxyConfig::default(),
    };
    let shutdown = async {
        if let Err(e) = crate::signal::terminated().await {
            tracing::error!("signal handler: {e}");
            std::future::pending::<()>().await;
        }
        tracing::info!("termination signal received");
    };
    run_l7(agent, plans, l7_tables, shutdown).await?;
    Ok(())
}
