//! TLS passthrough listeners: TLSRoutes by server name, TLS left to the backends.
//!
//! Each accepted connection is held to the proxy's limits (connections per listener and per
//! client source, as HTTP connections are); its ClientHello is read without answering anything
//! (`client_hello`: at most 16 KiB, within the header read timeout); the table picks the route
//! by the server name (most specific first) and a backend by the route's weights, per
//! connection; the proxy connects, writes what it read, and splices both ways until both
//! sides have closed (a half-close is passed on) or neither moved a byte for the tunnel idle
//! timeout. A client that sends nothing, or no ClientHello, is closed; one whose name no route
//! takes gets a TLS `unrecognized_name` alert and is closed; a connection picked for an
//! invalid backendRef or a Service without endpoints is closed (its share is refused, never
//! given to the others). Tables are swapped atomically: a new table routes new connections,
//! and established ones carry on where they were spliced.

mod client_hello;
mod table;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use prometheus_client::metrics::gauge::Gauge;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};

pub use client_hello::{ClientHello, HelloError, MAX_CLIENT_HELLO, read_client_hello};
pub use table::{Pick, ServingSniTable};

use super::{
    accept_task::{AcceptTask, StopSignals},
    error::ProxyError,
    metrics::{ListenerLabels, PassthroughLabels, ProxyMetrics},
    server::{Proxy, ProxyConfig, bind},
    slots::{SourceSlot, SourceSlots},
    upgrade::splice_idle,
    upstream::Upstream,
};
use splitter_plan::plan::passthrough::PassthroughTable;

/// What a passthrough connection needs from its listener.
struct Shared {
    table: ArcSwap<ServingSniTable>,
    metrics: ProxyMetrics,
    /// Connects under the per-endpoint cap and the connect timeout, as HTTP requests do.
    upstream: Upstream,
    listener: Arc<str>,
    header_read_timeout: Duration,
    tunnel_idle_timeout: Duration,
}

/// A serving passthrough listener. Dropping it stops accepting and drains, like
/// [`Self::shutdown`] without waiting.
pub struct PassthroughListener {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    accept: AcceptTask,
}

impl std::fmt::Debug for PassthroughListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassthroughListener")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Binds `addr` and serves the passthrough `table` on it until
    /// [`PassthroughListener::shutdown`] (or drop).
    pub async fn listen_passthrough(
        &self,
        addr: SocketAddr,
        table: &PassthroughTable,
    ) -> Result<PassthroughListener, ProxyError> {
        let (config, sources, upstream, metrics) = self.parts();
        let listener = bind(addr).map_err(|source| ProxyError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ProxyError::Bind { addr, source })?;
        let shared = Arc::new(Shared {
            table: ArcSwap::from_pointee(ServingSniTable::compile(
                table,
                &ServingSniTable::default(),
            )),
            metrics: metrics.clone(),
            upstream: upstream.clone(),
            listener: Arc::from(local_addr.to_string()),
            header_read_timeout: config.header_read_timeout,
            tunnel_idle_timeout: config.tunnel_idle_timeout,
        });
        let accept = AcceptTask::spawn("passthrough", |signals| {
            accept_loop(
                listener,
                shared.clone(),
                config.clone(),
                sources.clone(),
                signals,
            )
        });
        Ok(PassthroughListener {
            shared,
            local_addr,
            accept,
        })
    }
}

impl PassthroughListener {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Installs a new table for the next connections; established ones are not touched.
    pub fn install(&self, table: &PassthroughTable) {
        let previous = self.shared.table.load();
        self.shared
            .table
            .store(Arc::new(ServingSniTable::compile(table, &previous)));
        self.shared
            .metrics
            .table_installs
            .get_or_create(&ListenerLabels {
                listener: self.shared.listener.clone(),
            })
            .inc();
    }

    /// Stops accepting and returns once the listening socket is closed.
    pub async fn stop_accepting(&mut self) {
        self.accept.stop_accepting().await;
    }

    /// Stops accepting, lets open connections go on for the drain timeout, then cuts them.
    pub async fn shutdown(self) {
        self.accept.shutdown().await;
    }
}

/// Holds a connection's place under the listener's and its source's limits, and in the
/// open-connections gauge, for as long as the connection lives.
struct ConnectionGuard {
    open: Gauge,
    _permit: OwnedSemaphorePermit,
    _source: SourceSlot,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.open.dec();
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    config: ProxyConfig,
    sources: SourceSlots,
    (mut stop, closed): StopSignals,
) {
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let labels = ListenerLabels {
        listener: shared.listener.clone(),
    };
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let reject = || shared.metrics.rejected_connections.get_or_create(&labels).inc();
                    let Ok(permit) = limit.clone().try_acquire_owned() else {
                        reject();
                        continue;
                    };
                    let Some(source) = sources.acquire(peer.ip()) else {
                        tracing::debug!(%peer, "the client's source is at its connection limit; closing");
                        reject();
                        continue;
                    };
                    let open = shared.metrics.open_connections.get_or_create(&labels).clone();
                    open.inc();
                    let guard = ConnectionGuard { open, _permit: permit, _source: source };
                    conns.spawn(serve(stream, peer, shared.clone(), guard));
                }
                Err(e) => {
                    tracing::warn!(listener = %shared.listener, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let _ = closed.send(());
    let drained = async { while conns.join_next().await.is_some() {} };
    tokio::select! {
        () = drained => {}
        () = tokio::time::sleep(config.drain_timeout) => {
            tracing::warn!(listener = %shared.listener, remaining = conns.len(), "drain timeout; cutting passthrough connections");
        }
    }
    conns.shutdown().await;
}

/// How one connection ended, counted by `splitter_l7_passthrough_connections_total`.
#[derive(Clone, Copy, Debug)]
enum Outcome {
    Spliced,
    NoClientHello,
    NoRoute,
    Refused,
    ConnectFailed,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Self::Spliced => "spliced",
            Self::NoClientHello => "no_client_hello",
            Self::NoRoute => "no_route",
            Self::Refused => "refused",
            Self::ConnectFailed => "connect_failed",
        }
    }
}

async fn serve(
    mut client: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    _guard: ConnectionGuard,
) {
    let _ = client.set_nodelay(true);
    let count = |outcome: Outcome, route: &Arc<str>, backend: &Arc<str>| {
        shared
            .metrics
            .passthrough
            .get_or_create(&PassthroughLabels {
                listener: shared.listener.clone(),
                route: route.clone(),
                backend: backend.clone(),
                outcome: outcome.as_str(),
            })
            .inc();
    };
    let none: Arc<str> = Arc::from("");
    let hello =
        match read_client_hello(&mut client, MAX_CLIENT_HELLO, shared.header_read_timeout).await {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "passthrough: closing");
                count(Outcome::NoClientHello, &none, &none);
                return;
            }
        };
    let table = shared.table.load_full();
    let Some(route) = table.route_for(hello.server_name.as_deref()) else {
        tracing::debug!(%peer, server_name = ?hello.server_name, "passthrough: no route takes the name");
        let _ = client
            .write_all(&client_hello::UNRECOGNIZED_NAME_ALERT)
            .await;
        count(Outcome::NoRoute, &none, &none);
        return;
    };
    let (pick, backend) = route.pick();
    let backend = backend.unwrap_or_else(|| none.clone());
    let endpoint = match pick {
        Pick::Endpoint(e) => e,
        refused => {
            tracing::debug!(%peer, route = %route.label, ?refused, "passthrough: the connection's share is refused");
            count(Outcome::Refused, &route.label, &backend);
            return;
        }
    };
    // The permit (the endpoint's connection cap) lives as long as the splice.
    let (mut upstream, _permit) = match shared.upstream.connect(endpoint).await {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(%peer, %endpoint, error = %e, "passthrough: cannot connect");
            count(Outcome::ConnectFailed, &route.label, &backend);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    count(Outcome::Spliced, &route.label, &backend);
    let route = route.label.clone();
    // The table is not held while the connection lives: a later install frees it.
    drop(table);
    // What the client sent so far (the ClientHello, maybe more) goes first.
    if upstream.write_all(&hello.bytes).await.is_err() {
        return;
    }
    drop(hello);
    if let Err(e) = splice_idle(client, upstream, shared.tunnel_idle_timeout).await {
        tracing::debug!(%peer, %route, error = %e, "passthrough connection ended with an error");
    }
}
