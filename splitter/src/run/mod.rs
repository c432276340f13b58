//! `splitter run`: manifests in, data plane out. Wiring only: the file source feeds the index,
//! each change of the index becomes a new plan (pure), and the plan goes to both actuators, the
//! kernel (L4 listeners) and the hyper proxy (L7 listeners).

mod l4;

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::{mpsc, watch};

use crate::{
    agent::{AgentConfig, run_l7},
    control,
    dataplane::{ebpf::XdpAttachMode, proxy::ProxyConfig},
    plan::{Plan, PlanConfig},
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

/// Runs until SIGTERM/SIGINT. The kernel programs stay attached (pinned) when the agent exits,
/// so established L4 connections survive a restart; `splitter detach` removes them.
pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let config = PlanConfig {
        gateway_class: opts.gateway_class.clone(),
        ..Default::default()
    };
    let (updates_tx, updates) = mpsc::channel(4);
    tokio::spawn(source::watch(
        FileSource::new(opts.manifests.clone()),
        opts.poll_interval,
        updates_tx,
    ));

    let (plans_tx, plans) = watch::channel::<Option<Arc<Plan>>>(None);
    tokio::spawn(control::run(updates, config, plans_tx));

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
    run_l7(agent, plans, Plan::l7_tables, shutdown).await?;
    Ok(())
}
