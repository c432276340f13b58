//! The admin endpoint (`--admin`, default 127.0.0.1:9901): `/healthz` (the control loop is
//! alive), `/readyz` (the node serves every listener of its plan), `/metrics` (Prometheus text
//! format), `/debug/plan` (the current plan as JSON), `/debug/status` (the Gateway and route
//! statuses as this node would write them) and `/debug/l4` (the kernel half's state). `/debug/*` answers loopback peers only, whatever `--admin` binds: the
//! plan names every backend address, which is no business of the network.
//!
//! It knows nothing about plan types: the caller hands it a closure that returns the plan as a
//! `serde_json::Value` (see [`plan_snapshot`]), and a registry with every metric family already
//! registered.

mod routes;

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use hyper::service::service_fn;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

/// Default admin address (DESIGN section 7).
pub const DEFAULT_ADMIN_ADDR: &str = "127.0.0.1:9901";

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
}

/// Whether the agent should get traffic: false until the first plan is applied, and false
/// again once shutdown starts, so load balancers stop sending before connections drain.
#[derive(Clone, Debug, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Returns the plan to show on `/debug/plan`.
pub type PlanSnapshot = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

/// A [`PlanSnapshot`] reading any serialisable value out of an `ArcSwap`, so the admin page
/// always shows the plan most recently stored.
pub fn plan_snapshot<T>(current: Arc<arc_swap::ArcSwap<T>>) -> PlanSnapshot
where
    T: Serialize + Send + Sync + 'static,
{
    Arc::new(move || {
        serde_json::to_value(&**current.load())
            .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }))
    })
}

/// What the admin endpoint serves.
#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    pub readiness: Readiness,
    pub plan: PlanSnapshot,
    /// The kernel half, when this agent runs one: `/readyz` fails while it is off.
    pub kernel: Option<crate::health::KernelHealth>,
    /// The control loop's heartbeat: `/healthz` fails while it is stale. Without one,
    /// `/healthz` only says the endpoint answers.
    pub heartbeat: Option<crate::health::Heartbeat>,
    /// `/debug/status`: the statuses as this node would write them.
    pub status: Option<PlanSnapshot>,
    /// The L7 listeners' binds: `/readyz` fails while one is not bound.
    pub binds: Option<crate::agent::L7Binds>,
}

impl std::fmt::Debug for AdminState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminState")
            .field("ready", &self.readiness.get())
            .finish_non_exhaustive()
    }
}

/// A running admin endpoint.
#[derive(Debug)]
pub struct AdminServer {
    local_addr: SocketAddr,
    stop: watch::Sender<()>,
    task: JoinHandle<()>,
}

impl AdminServer {
    pub async fn serve(addr: SocketAddr, state: AdminState) -> Result<Self, AdminError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| AdminError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| AdminError::Bind { addr, source })?;
        let (stop, stop_rx) = watch::channel(());
        let task = tokio::spawn(accept_loop(listener, Arc::new(state), stop_rx));
        Ok(Self {
            local_addr,
            stop,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub async fn shutdown(self) {
        drop(self.stop);
        let _ = self.task.await;
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<AdminState>, mut stop: watch::Receiver<()>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let svc = service_fn(move |req| routes::answer(state.clone(), peer, req));
        let conn = graceful.watch(
            builder
                .serve_connection(TokioIo::new(stream), svc)
                .into_owned(),
        );
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "admin: connection error");
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(5), graceful.shutdown()).await;
}
