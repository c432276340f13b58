//! The L7 half of `splitter run`: the admin endpoint and the L7 listeners, following a stream
//! of plans until shutdown.
//!
//! It is generic over the plan type: it only needs the plan to be serialisable (for
//! `/debug/plan`) and a function that extracts the L7 listeners (bind address -> route table).
//! Where plans come from (manifest files, the API server) is the caller's business.

use std::{
    collections::BTreeMap,
    future::Future,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use arc_swap::ArcSwapOption;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::watch;

use crate::{
    admin::{AdminError, AdminServer, AdminState, PlanSnapshot, Readiness},
    dataplane::proxy::{ApplyReport, L7Listeners, Proxy, ProxyConfig, ProxyError, ProxyMetrics},
    health::{Heartbeat, KernelHealth},
};
use splitter_plan::plan::l7::L7RouteTable;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Admin(#[from] AdminError),
}

/// Settings of the L7 agent.
#[derive(Clone)]
pub struct AgentConfig {
    /// `--admin`: where `/healthz`, `/readyz`, `/metrics` and `/debug/plan` are served.
    pub admin: SocketAddr,
    pub proxy: ProxyConfig,
    /// The kernel half, when `splitter run` has one: shown on `/readyz`, `/debug/l4` and
    /// `/metrics`.
    pub kernel: Option<KernelHealth>,
    /// The control loop's heartbeat, when there is one: `/healthz` fails while it is stale.
    pub heartbeat: Option<Heartbeat>,
    /// `/debug/status`: the statuses as this node would write them, when the caller has them.
    pub status: Option<PlanSnapshot>,
    /// The control loop's figures (`splitter_plan_*` on `/metrics`), when there is one.
    pub plan_metrics: Option<crate::control::PlanMetrics>,
    /// Where the agent records which listeners are bound (shared with whoever reports it).
    pub binds: L7Binds,
    /// How often listeners that failed to bind are tried again.
    pub bind_retry: Duration,
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("admin", &self.admin)
            .field("proxy", &self.proxy)
            .field("bind_retry", &self.bind_retry)
            .finish_non_exhaustive()
    }
}

impl AgentConfig {
    /// An agent on `admin` with nothing but its L7 listeners.
    pub fn new(admin: SocketAddr, proxy: ProxyConfig) -> Self {
        AgentConfig {
            admin,
            proxy,
            kernel: None,
            heartbeat: None,
            plan_metrics: None,
            status: None,
            binds: L7Binds::default(),
            bind_retry: BIND_RETRY,
        }
    }
}

/// How often the agent tries again to bind listeners that failed (the port was taken, the
/// address not yet there).
pub const BIND_RETRY: Duration = Duration::from_secs(3);

/// Every L7 listener address of the last plan applied, bound (`Ok`) or not (`Err` with the
/// error). An address of a family the host does not have counts as bound: it can never be.
#[derive(Clone, Debug)]
pub struct L7Binds {
    applied: Arc<Mutex<BTreeMap<SocketAddr, Result<(), String>>>>,
    version: Arc<watch::Sender<u64>>,
}

impl Default for L7Binds {
    fn default() -> Self {
        L7Binds {
            applied: Arc::default(),
            version: Arc::new(watch::channel(0).0),
        }
    }
}

impl L7Binds {
    /// The outcome of every address of the last plan applied.
    pub fn snapshot(&self) -> BTreeMap<SocketAddr, Result<(), String>> {
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The addresses that are not bound, with the error.
    pub fn failed(&self) -> Vec<(SocketAddr, String)> {
        self.snapshot()
            .into_iter()
            .filter_map(|(a, r)| r.err().map(|e| (a, e)))
            .collect()
    }

    /// `Err(why)` while a listener of the plan is not bound.
    pub fn ready(&self) -> Result<(), String> {
        let failed = self.failed();
        if failed.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = failed.into_iter().map(|(_, e)| e).collect();
        Err(format!(
            "L7 listener not bound (retried every {}s): {}",
            BIND_RETRY.as_secs(),
            list.join("; ")
        ))
    }

    /// Changes each time an apply changes an outcome.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Records the outcome of one apply; returns the addresses whose error is new.
    fn record(&self, outcome: BTreeMap<SocketAddr, Result<(), String>>) -> Vec<String> {
        let mut applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        let new: Vec<String> = outcome
            .iter()
            .filter_map(|(a, r)| match r {
                Err(e) if applied.get(a) != Some(r) => Some(e.clone()),
                _ => None,
            })
            .collect();
        if *applied != outcome {
            *applied = outcome;
            self.version.send_modify(|v| *v += 1);
        }
        new
    }
}

/// L7 listeners by bind address, as the plan wants them.
pub type L7Tables = BTreeMap<SocketAddr, Arc<L7RouteTable>>;

/// A running L7 agent: admin endpoint up, listeners following [`Self::apply`].
pub struct L7Agent<P> {
    admin: AdminServer,
    listeners: L7Listeners,
    readiness: Readiness,
    current: Arc<ArcSwapOption<P>>,
    binds: L7Binds,
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
        crate::heap::register(&mut registry);
        if let Some(k) = &config.kernel {
            k.register(&mut registry);
        }
        if let Some(p) = &config.plan_metrics {
            p.register(&mut registry);
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
                heartbeat: config.heartbeat.clone(),
                status: config.status.clone(),
                binds: Some(config.binds.clone()),
            },
        )
        .await?;
        tracing::info!(admin = %admin.local_addr(), "admin endpoint up");
        Ok(Self {
            admin,
            listeners: L7Listeners::new(Proxy::new(config.proxy, metrics)),
            readiness,
            current,
            binds: config.binds,
        })
    }

    /// Which listeners of the last plan are bound.
    pub fn binds(&self) -> &L7Binds {
        &self.binds
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

    /// Applies one plan: listeners bound, swapped or drained as needed; one that fails to bind
    /// is recorded in [`Self::binds`] (so `/readyz` fails, naming it) and does not stop the
    /// others. The agent becomes ready once a plan has been applied.
    pub async fn apply(&mut self, plan: Arc<P>, tables: &L7Tables) -> ApplyReport {
        let report = self.listeners.apply(tables).await;
        let outcome: BTreeMap<SocketAddr, Result<(), String>> = tables
            .keys()
            .map(|addr| {
                let ok =
                    self.listeners.local_addr(addr).is_some() || report.unsupported.contains(addr);
                let outcome = if ok {
                    Ok(())
                } else {
                    let why = report
                        .failed
                        .iter()
                        .find(|e| matches!(e, ProxyError::Bind { addr: a, .. } if a == addr))
                        .or_else(|| {
                            report
                                .failed
                                .iter()
                                .find(|e| matches!(e, ProxyError::Workers(_)))
                        })
                        .map_or_else(|| format!("{addr}: not started"), ToString::to_string);
                    Err(why)
                };
                (*addr, outcome)
            })
            .collect();
        for e in self.binds.record(outcome) {
            tracing::error!(
                error = %e,
                "L7 listener not started (retried every {}s)",
                BIND_RETRY.as_secs()
            );
        }
        for addr in &report.unsupported {
            tracing::info!(listener = %addr, "address family not available on this host; skipped");
        }
        for (addr, issue) in &report.issues {
            tracing::warn!(listener = %addr, %issue, "route not served");
        }
        if !(report.started.is_empty() && report.updated.is_empty() && report.stopped.is_empty())
            || self.current.load().is_none()
        {
            tracing::info!(
                started = ?report.started,
                updated = ?report.updated,
                stopped = ?report.stopped,
                "L7 plan applied"
            );
        }
        self.current.store(Some(plan));
        self.readiness.set(true);
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
    let retry_every = config.bind_retry;
    let mut agent = L7Agent::start(config).await?;
    tokio::pin!(shutdown);
    let mut retry = tokio::time::interval(retry_every);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The receiver may already hold a plan; mark it seen and apply it first.
    let mut next = plans.borrow_and_update().clone();
    let mut applied: Option<(Arc<P>, L7Tables)> = None;
    let mut open = true;
    loop {
        if let Some(plan) = next.take() {
            let tables = l7_tables(&plan);
            agent.apply(plan.clone(), &tables).await;
            applied = Some((plan, tables));
        }
        tokio::select! {
            _ = &mut shutdown => break,
            _ = retry.tick() => {
                // Listeners that failed to bind are bound as soon as their address is free.
                if let Some((plan, tables)) = &applied
                    && !agent.binds().failed().is_empty()
                {
                    agent.apply(plan.clone(), tables).await;
                }
            }
            changed = plans.changed(), if open => match changed {
                Ok(()) => next = plans.borrow_and_update().clone(),
                // No publisher left: keep serving the last plan until shutdown (and retrying
                // listeners that failed to bind).
                Err(_) => open = false,
            },
        }
    }
    tracing::info!("shutting down: draining L7 listeners");
    agent.shutdown().await;
    Ok(())
}
