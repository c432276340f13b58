//! Listeners: accept, guard, terminate TLS on HTTPS listeners (`tls`), and hand connections to
//! hyper (HTTP/1.1 keep-alive and h2c on one port, or both behind TLS by ALPN); swap route
//! tables and TLS configurations, and drain on shutdown.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use arc_swap::{ArcSwap, ArcSwapOption};
use futures::FutureExt;
use http::{Request, Version};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use prometheus_client::metrics::gauge::Gauge;
use socket2::{Domain, Socket, Type};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};
use tokio_util::task::AbortOnDropHandle;

use super::{
    accept_task::{AcceptTask, StopSignals},
    access::AccessLog,
    drain::Drain,
    error::ProxyError,
    handler::{self, ClientGone, ListenerShared},
    hygiene::XffPolicy,
    idle::{
        Drainable, Metered, Progress, StreamLimits, Supervised, Timeouts, TrackedBody, in_flight,
    },
    metrics::{ListenerLabels, ProxyMetrics},
    slots::{SourceSlot, SourceSlots},
    table::{ServingTable, TableIssue},
    tls::{self, ClientIo},
    upstream::{Upstream, UpstreamConfig, client_address},
    workers::{ProxyWorkers, WorkerSlot, default_workers},
};
use splitter_plan::plan::{l7::L7RouteTable, tls::TlsPlan};

/// hyper refuses read buffers smaller than this (and panics when asked to).
const MIN_HEADER_BUFFER: usize = 8192;
/// hyper's limit on header fields in an HTTP/1.1 request head when none is set.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// Limits and timeouts of the proxy. The defaults suit a node agent facing untrusted clients.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// A client must send a complete request head within this time of connecting, or the
    /// connection is closed; a keep-alive connection that stays without a complete request
    /// head for one to two times this long after its last response is closed too (`idle`).
    pub header_read_timeout: Duration,
    /// Largest request head accepted (HTTP/1.1 read buffer, HTTP/2 header list); at least 8 KiB.
    /// Larger heads get 431.
    pub max_header_bytes: usize,
    /// Most header fields in one HTTP/1.1 request head.
    pub max_headers: usize,
    /// Connections served at once per listener, upgraded tunnels included; more are closed at
    /// accept.
    pub max_connections: usize,
    /// Connections one client source (an IPv4 address, an IPv6 /64) may hold open at once,
    /// over all listeners; more from it are closed at accept, while other sources are still
    /// served. 0: no limit (for a node behind a load balancer that hides client addresses).
    pub max_connections_per_source: usize,
    /// An HTTP/1.1 request whose body stops arriving for this long (the server waiting on the
    /// socket for it) has its connection closed.
    pub body_read_timeout: Duration,
    /// A connection whose client takes none of what is written to it for this long (the
    /// socket's send buffer stays full) is closed.
    pub response_write_timeout: Duration,
    /// An HTTP/2 response whose stream takes no data for this long (its flow-control window
    /// stays shut) loses its backend side, and the stream fails.
    pub h2_stream_idle_timeout: Duration,
    /// A connection this old is drained (GOAWAY on HTTP/2, `Connection: close` on HTTP/1.1),
    /// and cut a drain timeout later if still open.
    pub max_connection_age: Duration,
    /// An upgraded connection (WebSocket and the like) with no byte in either direction for
    /// this long is closed.
    pub tunnel_idle_timeout: Duration,
    pub h2_max_concurrent_streams: u32,
    /// Requests of one HTTP/2 connection in flight to backends at once, counting those whose
    /// stream the client reset until their backend answers; more wait for a place.
    pub h2_max_requests_in_flight: usize,
    /// Streams an HTTP/2 client may reset before their response, beyond as many as it got
    /// answered, before its connection is closed with GOAWAY (paced rapid reset).
    pub h2_max_early_resets: u32,
    /// On shutdown, how long in-flight requests may take before their connections are cut.
    pub drain_timeout: Duration,
    /// Threads serving connections (at least one); each serves its connections and their
    /// backend connections by itself, like an nginx worker process.
    pub workers: usize,
    pub upstream: UpstreamConfig,
    /// One line per request (`access`); `None`, the default: no log.
    pub access_log: Option<AccessLog>,
    /// Whose `X-Forwarded-For` is forwarded (`--xff`).
    pub xff: XffPolicy,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            max_headers: HYPER_DEFAULT_MAX_HEADERS,
            max_connections: 10_000,
            max_connections_per_source: 256,
            body_read_timeout: Duration::from_secs(30),
            response_write_timeout: Duration::from_secs(30),
            h2_stream_idle_timeout: Duration::from_secs(60),
            max_connection_age: Duration::from_secs(3600),
            tunnel_idle_timeout: Duration::from_secs(300),
            h2_max_concurrent_streams: 256,
            h2_max_requests_in_flight: 256,
            h2_max_early_resets: 100,
            drain_timeout: Duration::from_secs(30),
            workers: default_workers(),
            upstream: UpstreamConfig::default(),
            access_log: None,
            xff: XffPolicy::default(),
        }
    }
}

/// The L7 proxy: one set of worker threads (each with its upstream connection pool) and one
/// set of metrics for all its listeners.
#[derive(Clone, Debug)]
pub struct Proxy {
    config: ProxyConfig,
    upstream: Upstream,
    /// Shared by all listeners: the per-source limit counts a client's connections to any.
    sources: SourceSlots,
    metrics: ProxyMetrics,
    /// Started with the first listener, so that making a `Proxy` cannot fail.
    workers: Arc<Mutex<Option<Arc<ProxyWorkers>>>>,
}

impl Proxy {
    pub fn new(config: ProxyConfig, metrics: ProxyMetrics) -> Self {
        Self {
            upstream: Upstream::new(&config.upstream),
            sources: SourceSlots::new(config.max_connections_per_source),
            config,
            metrics,
            workers: Arc::default(),
        }
    }

    fn workers(&self) -> Result<Arc<ProxyWorkers>, ProxyError> {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(w) = &*workers {
            return Ok(w.clone());
        }
        let idle_timeout = self.config.upstream.pool_idle_timeout;
        let started = Arc::new(
            ProxyWorkers::start(
                self.config.workers,
                idle_timeout.clamp(Duration::from_millis(100), Duration::from_secs(5)),
                idle_timeout,
            )
            .map_err(ProxyError::Workers)?,
        );
        tracing::info!(workers = started.len(), "L7 proxy worker threads started");
        *workers = Some(started.clone());
        Ok(started)
    }

    pub fn metrics(&self) -> &ProxyMetrics {
        &self.metrics
    }

    /// What the passthrough listeners share with the HTTP ones: the limits and timeouts, the
    /// per-source slots (a client's connections count over every listener), the upstream side
    /// (its per-endpoint cap counts passthrough connections too) and the metrics.
    pub(super) fn parts(&self) -> (&ProxyConfig, &SourceSlots, &Upstream, &ProxyMetrics) {
        (&self.config, &self.sources, &self.upstream, &self.metrics)
    }

    /// Binds `addr` and serves `table` on it until [`ProxyListener::shutdown`] (or drop).
    /// Routes that cannot be served are left out and returned as issues.
    pub async fn listen(
        &self,
        addr: SocketAddr,
        table: &L7RouteTable,
    ) -> Result<(ProxyListener, Vec<TableIssue>), ProxyError> {
        self.listen_compiled(addr, table, None).await
    }

    /// [`listen`](Self::listen), serving `compiled` when given: `table` as another listener
    /// already compiled it, shared (one copy of the routes, and one balancer, for the bind
    /// addresses of one Gateway listener).
    pub(crate) async fn listen_compiled(
        &self,
        addr: SocketAddr,
        table: &L7RouteTable,
        compiled: Option<Arc<ServingTable>>,
    ) -> Result<(ProxyListener, Vec<TableIssue>), ProxyError> {
        let workers = self.workers()?;
        let listener = bind(addr).map_err(|source| ProxyError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ProxyError::Bind { addr, source })?;
        let (compiled, issues) = match compiled {
            Some(c) => (c, Vec::new()),
            None => {
                let (c, issues) = ServingTable::compile(table, &ServingTable::default());
                (Arc::new(c), issues)
            }
        };
        let listener_label = local_addr.to_string();
        let tls = table
            .tls
            .as_ref()
            .map(|plan| tls::server_config(&listener_label, plan));
        let shared = Arc::new(ListenerShared {
            table: ArcSwap::new(compiled),
            access_log: self.config.access_log.clone(),
            tls: ArcSwapOption::new(tls),
            upstream: self.upstream.clone(),
            metrics: self.metrics.clone(),
            listener: Arc::from(listener_label),
            port: local_addr.port(),
            none: Arc::from(""),
            xff: self.config.xff,
            tunnel_idle_timeout: self.config.tunnel_idle_timeout,
            body_read_timeout: self.config.body_read_timeout,
        });
        report(&shared.listener, &issues);
        let accept = AcceptTask::spawn("L7", |signals| {
            accept_loop(
                listener,
                shared.clone(),
                workers,
                self.config.clone(),
                self.sources.clone(),
                signals,
            )
        });
        Ok((
            ProxyListener {
                shared,
                local_addr,
                install_lock: Mutex::new(table.tls.clone()),
                accept,
            },
            issues,
        ))
    }
}

pub(super) fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        // `[::]:port` and `0.0.0.0:port` are separate listeners (DESIGN section 7).
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

fn report(listener: &str, issues: &[TableIssue]) {
    for issue in issues {
        tracing::warn!(%listener, %issue, "route left out of the L7 table");
    }
}

/// A serving listener. Dropping it stops accepting and drains, like [`Self::shutdown`] without
/// waiting.
#[derive(Debug)]
pub struct ProxyListener {
    shared: Arc<ListenerShared>,
    local_addr: SocketAddr,
    /// Held while installing; the TLS plan installed last.
    install_lock: Mutex<Option<TlsPlan>>,
    accept: AcceptTask,
}

impl std::fmt::Debug for ListenerShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerShared")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

impl ProxyListener {
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Installs a new table atomically: requests already routed finish on the old one, the next
    /// request sees the new one. Balancer state of unchanged rules carries over. A changed TLS
    /// plan (a rotated certificate) applies to the next handshake; open connections keep theirs.
    pub fn install(&self, table: &L7RouteTable) -> Vec<TableIssue> {
        self.install_compiled(table, None)
    }

    /// The table being served.
    pub(crate) fn serving(&self) -> Arc<ServingTable> {
        self.shared.table.load_full()
    }

    /// [`install`](Self::install), installing `compiled` when given (`table` as another
    /// listener compiled it: shared).
    pub(crate) fn install_compiled(
        &self,
        table: &L7RouteTable,
        compiled: Option<Arc<ServingTable>>,
    ) -> Vec<TableIssue> {
        // Serialised so two installs cannot both compile against the same previous table and
        // lose one's carried-over state.
        let mut applied_tls = self.install_lock.lock().unwrap_or_else(|e| e.into_inner());
        if *applied_tls != table.tls {
            self.shared.tls.store(
                table
                    .tls
                    .as_ref()
                    .map(|plan| tls::server_config(&self.shared.listener, plan)),
            );
            applied_tls.clone_from(&table.tls);
        }
        let (compiled, issues) = match compiled {
            Some(c) => (c, Vec::new()),
            None => {
                let previous = self.shared.table.load();
                let (c, issues) = ServingTable::compile(table, &previous);
                (Arc::new(c), issues)
            }
        };
        self.shared.table.store(compiled);
        self.shared
            .metrics
            .table_installs
            .get_or_create(&ListenerLabels {
                listener: self.shared.listener.clone(),
            })
            .inc();
        report(&self.shared.listener, &issues);
        issues
    }

    /// Stops accepting and returns once the listening socket is closed: from then on the
    /// address refuses connections and can be bound again. In-flight requests go on until
    /// [`Self::shutdown`].
    pub async fn stop_accepting(&mut self) {
        self.accept.stop_accepting().await;
    }

    /// Stops accepting (new connections are refused), lets in-flight requests finish within the
    /// drain timeout, then cuts what is left.
    pub async fn shutdown(self) {
        self.accept.shutdown().await;
    }
}

fn connection_builder(config: &ProxyConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .max_buf_size(config.max_header_bytes.max(MIN_HEADER_BUFFER))
        .writev(false)
        // A client that shuts down its sending side after a request still gets the response.
        // Without this hyper also reads the client socket while each request is in flight, to
        // see such an end, and because the request head still shares hyper's read buffer at
        // that moment, the read allocates a new 8 KiB buffer for every request. The cost: a
        // client that goes away mid-request is noticed when its response is written, not
        // before (the request is not cancelled early).
        .half_close(true);
    if config.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        // Any explicit limit, even hyper's own, makes hyper fill a header array element by
        // element for every request; its default does not.
        builder.http1().max_headers(config.max_headers);
    }
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(config.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(config.h2_max_concurrent_streams)
        // h2's own guards, set to its defaults so that they are on record: streams reset before
        // the server accepted them (classic rapid reset), and streams the server had to reset
        // for the client's errors, each past its limit closing the connection with GOAWAY.
        // Streams reset after they reached the proxy are counted by `idle::in_flight`.
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// Holds a connection's slot, its source's, its place on its worker and in the
/// open-connections gauge. It lives in the socket ([`Metered`]), so it is released when the
/// socket closes: when the connection task ends however it ends (including being aborted at
/// the end of a drain), or, once the connection was upgraded, when the tunnel does.
struct ConnectionGuard {
    open: Gauge,
    _permit: OwnedSemaphorePermit,
    _source: SourceSlot,
    _worker: WorkerSlot,
}

/// hyper's connections (HTTP/1.1 or h2c) drain by its graceful shutdown.
impl<I, S, B> Drainable for auto::UpgradeableConnection<'_, I, S, TokioExecutor>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: http_body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: auto::HttpServerConnExec<S::Future, B>,
{
    fn start_draining(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl ConnectionGuard {
    fn new(
        open: Gauge,
        permit: OwnedSemaphorePermit,
        source: SourceSlot,
        worker: WorkerSlot,
    ) -> Self {
        open.inc();
        Self {
            open,
            _permit: permit,
            _source: source,
            _worker: worker,
        }
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Turns accepted sockets into connection tasks: limit, protocol detection, first-request
/// watchdog, registration for draining.
struct Acceptor {
    builder: auto::Builder<TokioExecutor>,
    drain: Arc<Drain>,
    shared: Arc<ListenerShared>,
    limit: Arc<Semaphore>,
    sources: SourceSlots,
    labels: ListenerLabels,
    /// Kept by each connection's watchdog (`idle`).
    timeouts: Timeouts,
    streams: StreamLimits,
}

impl Acceptor {
    /// The task serving one connection on `worker`, or `None` (socket closed) when over the
    /// limit. The task must run on that worker's runtime: it registers the socket there.
    fn admit(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        worker: WorkerSlot,
    ) -> Option<impl Future<Output = ()> + Send + 'static> {
        let reject = || {
            self.shared
                .metrics
                .rejected_connections
                .get_or_create(&self.labels)
                .inc();
        };
        let Ok(permit) = self.limit.clone().try_acquire_owned() else {
            reject();
            return None;
        };
        let Some(source) = self.sources.acquire(peer.ip()) else {
            tracing::debug!(%peer, "the client's source is at its connection limit; closing");
            reject();
            return None;
        };
        // Nagle would delay small responses behind the client's delayed ACK.
        let _ = stream.set_nodelay(true);
        // Accepted on the caller's runtime; moved to the worker's reactor in the task.
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "cannot hand the connection to a worker");
                return None;
            }
        };
        let progress = Arc::new(Progress::new(self.streams.max_in_flight));
        // Read at accept: a certificate rotated later applies to later connections.
        let tls = self.shared.tls.load_full();
        let https = tls.is_some();
        let svc = {
            let shared = self.shared.clone();
            let progress = progress.clone();
            let client = client_address(peer.ip());
            let limits = self.streams;
            service_fn(move |req: Request<Incoming>| {
                let version = req.version();
                let open = progress.request(version);
                // Boxed: hyper moves the future it is given, and this one is kilobytes.
                let resp = Box::pin(handler::handle(shared.clone(), client.clone(), https, req));
                // HTTP/2 requests run under their connection's in-flight limit and their
                // bodies are watched per stream; HTTP/1.1 has one at a time, watched through
                // the socket.
                let h2 = (version == Version::HTTP_2).then(|| progress.clone());
                async move {
                    Ok::<_, Infallible>(match h2 {
                        None => resp.await?.map(|body| TrackedBody::new(body, open)),
                        Some(progress) => in_flight(progress, limits, resp, |out| {
                            out.as_ref()
                                .is_ok_and(|r| r.extensions().get::<ClientGone>().is_none())
                        })
                        .await?
                        .map(|body| TrackedBody::watched(body, open)),
                    })
                }
            })
        };
        let guard = ConnectionGuard::new(
            self.shared
                .metrics
                .open_connections
                .get_or_create(&self.labels)
                .clone(),
            permit,
            source,
            worker,
        );
        let builder = self.builder.clone();
        let drain = self.drain.clone();
        let timeouts = self.timeouts;
        Some(async move {
            let stream = match TcpStream::from_std(stream) {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "cannot register the connection");
                    return;
                }
            };
            // Stopped when this task ends, however it ends.
            let watchdog = AbortOnDropHandle::new(tokio::spawn(progress.clone().watch(timeouts)));
            let _registered = drain.register(&progress);
            let io = Metered::new(stream, progress.clone(), guard);
            let io = match tls {
                None => ClientIo::Plain(io),
                // The handshake must end within the time a request head has to arrive.
                Some(config) => match tokio::time::timeout(
                    timeouts.header_read,
                    tokio_rustls::TlsAcceptor::from(config).accept(io),
                )
                .await
                {
                    Ok(Ok(tls)) => ClientIo::Tls(Box::new(tls)),
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                },
            };
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(io), svc)
                .into_owned();
            match Supervised::new(std::pin::pin!(conn), &progress).await {
                None if progress.closed_for_resets() => {
                    tracing::debug!(%peer, "the client reset too many streams before their response; closed with GOAWAY");
                }
                None => {
                    let why = watchdog.now_or_never().and_then(Result::ok);
                    tracing::debug!(%peer, why = ?why, "connection cut by its watchdog");
                }
                Some(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "client connection ended with an error");
                }
                Some(Ok(())) => {}
            }
        })
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<ListenerShared>,
    workers: Arc<ProxyWorkers>,
    config: ProxyConfig,
    sources: SourceSlots,
    (mut stop, closed): StopSignals,
) {
    let acceptor = Acceptor {
        builder: connection_builder(&config),
        drain: Arc::default(),
        limit: Arc::new(Semaphore::new(config.max_connections)),
        sources,
        labels: ListenerLabels {
            listener: shared.listener.clone(),
        },
        timeouts: Timeouts {
            header_read: config.header_read_timeout,
            body_read: config.body_read_timeout,
            response_write: config.response_write_timeout,
            h2_stream_idle: config.h2_stream_idle_timeout,
            max_age: config.max_connection_age,
            age_grace: config.drain_timeout,
        },
        streams: StreamLimits {
            max_in_flight: config.h2_max_requests_in_flight,
            max_early_resets: config.h2_max_early_resets,
            detached_for: config.h2_stream_idle_timeout,
        },
        shared,
    };
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            // Fires when the ProxyListener is shut down or dropped.
            _ = stop.changed() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let (worker, slot) = workers.place();
                    if let Some(task) = acceptor.admit(stream, peer, slot) {
                        conns.spawn_on(task, worker);
                    }
                }
                Err(e) => {
                    // Usually EMFILE/ENFILE: back off instead of spinning on the error.
                    tracing::warn!(listener = %acceptor.shared.listener, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    // Closing the socket refuses new connections while the old ones drain.
    drop(listener);
    let _ = closed.send(());
    acceptor.drain.start();
    let drained = async { while conns.join_next().await.is_some() {} };
    tokio::select! {
        _ = drained => {}
        _ = tokio::time::sleep(config.drain_timeout) => {
            tracing::warn!(
                listener = %acceptor.shared.listener,
                remaining = conns.len(),
                "drain timeout; cutting connections"
            );
        }
    }
    conns.shutdown().await;
}
