//! The L7 half of `splitter run`: the admin endpoint and the L7 listeners, following a stream
//! of plans until shutdown.
//!
//! It is generic over the plan type: it only needs the plan to be serialisable (for
//! `/debug/plan`) and a function that extracts the L7 listeners (bind address -> route table).
//! Where plans come from (manifest files, the API server) is the caller's business.

use std::{collections::BTreeMap, future::Future, net::SocketAddr, sync::Arc};

use arc_swap::ArcSwapOption;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::watch;

use crate::{
    admin::{AdminError, AdminServer, AdminState, PlanSnapshot, Readiness},
    dataplane::proxy::{ApplyReport, L7Listeners, Proxy, ProxyConfig, ProxyMetrics},
    health::KernelHealth,
};
use splitter_plan::plan::l7::L7RouteTable;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Admin(#[from] AdminError),
}

/// Settings of the L7 agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// `--admin`: where `/healthz`, `/readyz`, `/metrics` and `/debug/plan` are served.
    pub admin: SocketAddr,
    pub proxy: ProxyConfig,
    /// The kernel half, when `splitter run` has one: shown on `/readyz`, `/debug/l4` and
    /// `/metrics`.
    pub kernel: Option<KernelHealth>,
}

/// L7 listeners by bind address, as the plan wants them.
pub type L7Tables = BTreeMap<SocketAddr, L7RouteTable>;

/// A running L7 agent: admin endpoint up, listeners following [`Self::apply`].
pub struct L7Agent<P> {
    admin: AdminServer,
    listeners: L7Listeners,
    readiness: Readiness,
    current: Arc<ArcSwapOption<P>>,
}

impl<P> std::fmt::Debug for L7Agent<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L7Agent")
            .field("admin", &self.admin.local_addr())
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

impl<P> L7Agent<P>
where
    P: Serialize + Send + Sync + 'static,
{
    /// Starts the admin endpoint; no listener runs and `/readyz` fails until the first plan.
    pub async fn start(config: AgentConfig) -> Result<Self, AgentError> {
        let metrics = ProxyMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        if let Some(k) = &config.kernel {
            k.register(&mut registry);
        }
        let readiness = Readiness::default();
        let current: Arc<ArcSwapOption<P>> = Arc::new(ArcSwapOption::empty());
        let snapshot: PlanSnapshot = {
            let current = current.clone();
            Arc::new(move || match current.load().as_deref() {
                Some(plan) => serde_json::to_value(plan)
                    .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() })),
                None => serde_json::Value::Null,
            })
        };
        let admin = AdminServer::serve(
            config.admin,
            AdminState {
                registry: Arc::new(registry),
                readiness: readiness.clone(),
                plan: snapshot,
                kernel: config.kernel.clone(),
            },
        )
        .await?;
        tracing::info!(admin = %admin.local_addr(), "admin endpoint up");
        Ok(Self {
            admin,
            listeners: L7Listeners::new(Proxy::new(config.proxy, metrics)),
            readiness,
            current,
        })
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr()
    }

    /// The readiness flag `/readyz` reports; the L4 side may share it.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// The address actually bound for a listener the plan asked for.
    pub fn listener_addr(&self, requested: &SocketAddr) -> Option<SocketAddr> {
        self.listeners.local_addr(requested)
    }

    /// Applies one plan: listeners bound, swapped or drained as needed. The agent becomes ready
    /// once a plan has been applied with every listener bound.
    pub async fn apply(&mut self, plan: Arc<P>, tables: &L7Tables) -> ApplyReport {
        let report = self.listeners.apply(tables).await;
        for e in &report.failed {
            tracing::error!(error = %e, "L7 listener not started");
        }
        for addr in &report.unsupported {
            tracing::info!(listener = %addr, "address family not available on this host; skipped");
        }
        for (addr, issue) in &report.issues {
            tracing::warn!(listener = %addr, %issue, "route not served");
        }
        tracing::info!(
            started = ?report.started,
            updated = ?report.updated,
            stopped = ?report.stopped,
            "L7 plan applied"
        );
        self.current.store(Some(plan));
        if report.failed.is_empty() {
            self.readiness.set(true);
        }
        report
    }

    /// Fails `/readyz` first (so load balancers stop sending), then drains every listener and
    /// stops the admin endpoint.
    pub async fn shutdown(self) {
        self.readiness.set(false);
        self.listeners.shutdown().await;
        self.admin.shutdown().await;
    }
}

/// Runs the L7 agent: applies every plan published on `plans` (the latest one wins when
/// several arrive during an apply) until `shutdown` resolves, then drains.
pub async fn run_l7<P, F>(
    config: AgentConfig,
    mut plans: watch::Receiver<Option<Arc<P>>>,
    l7_tables: F,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError>
where
    P: Serialize + Send + Sync + 'static,
    F: Fn(&P) -> L7Tables,
{
    let mut agent = L7Agent::start(config).await?;
    tokio::pin!(shutdown);
    // The receiver may already hold a plan; mark it seen and apply it first.
    let mut next = plans.borrow_and_update().clone();
    loop {
        if let Some(plan) = next.take() {
            let tables = l7_tables(&plan);
            agent.apply(plan, &tables).await;
        }
        tokio::select! {
            _ = &mut shutdown => break,
            changed = plans.changed() => match changed {
                Ok(()) => next = plans.borrow_and_update().clone(),
                // No publisher left: keep serving the last plan until shutdown.
                Err(_) => {
                    (&mut shutdown).await;
                    break;
                }
            },
        }
    }
    tracing::info!("shutting down: draining L7 listeners");
    agent.shutdown().await;
    Ok(())
}
