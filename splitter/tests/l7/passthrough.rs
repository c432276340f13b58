//! TLS passthrough (TLSRoute) over loopback: real TLS clients that verify the certificate
//! against the test CA (`splitter-plan/tests/fixtures/tls`), through the proxy, to real TLS
//! backends that each present their own certificate (`a`, `a2` or `b`). The leaf the client
//! verified and the pod named inside the encrypted stream both tell which backend answered:
//! the proxy cannot terminate TLS, it holds no key.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::{Duration, Instant},
};

use rustls::{
    ClientConfig, RootCertStore,
    crypto::ring,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use splitter::{
    dataplane::proxy::{L7Listeners, PassthroughLabels, Proxy, ProxyConfig, ProxyMetrics},
    echo_tls::{TlsEchoReply, TlsEchoServer, WELCOME, server_config},
};
use splitter_plan::{
    model::{
        Index,
        parse::{Parsed, parse},
    },
    plan::{
        self, ObjectKey, PlanConfig,
        l7::L7RouteTable,
        passthrough::{PassthroughTable, SniRoute},
    },
};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream};

use crate::support::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../splitter-plan/tests/fixtures/tls/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn leaf_der(cert: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(&fixture(&format!("{cert}.crt")))
        .expect("PEM")
        .to_vec()
}

/// A TLS backend named `name` presenting fixture certificate `cert`.
async fn tls_backend(name: &str, cert: &str) -> TlsEchoServer {
    let config = server_config(
        &fixture(&format!("{cert}.crt")),
        &fixture(&format!("{cert}.key")),
    )
    .expect("fixture certificate");
    TlsEchoServer::bind(loopback(), name, "infra", config)
        .await
        .expect("TLS backend binds a loopback port")
}

fn client_config() -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(&fixture("ca.crt")).expect("CA PEM"))
        .expect("CA");
    Arc::new(
        ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

type ClientTls = TlsStream<Box<dyn Io>>;

/// One verified TLS connection through the proxy, past the backend's welcome line.
struct Session {
    lines: tokio::io::Lines<BufReader<tokio::io::ReadHalf<ClientTls>>>,
    tx: tokio::io::WriteHalf<ClientTls>,
    /// The leaf certificate the client verified.
    leaf: Vec<u8>,
}

impl Session {
    /// Connects to `addr` asking for `sni` (an IP address: no SNI is sent).
    async fn open(addr: SocketAddr, sni: &str) -> std::io::Result<Session> {
        let tcp = TcpStream::connect(addr).await?;
        Self::over(tcp, sni).await
    }

    async fn over<S>(io: S, sni: &str) -> std::io::Result<Session>
    where
        S: Into<TcpStreamLike>,
    {
        let io: TcpStreamLike = io.into();
        let name = match sni.parse::<IpAddr>() {
            Ok(ip) => ServerName::IpAddress(ip.into()),
            Err(_) => ServerName::try_from(sni.to_string()).expect("server name"),
        };
        let tls = tokio::time::timeout(
            Duration::from_secs(10),
            TlsConnector::from(client_config()).connect(name, io.0),
        )
        .await
        .map_err(|_| std::io::Error::other("handshake timed out"))??;
        let leaf = tls.get_ref().1.peer_certificates().expect("a certificate")[0].to_vec();
        let (rx, tx) = tokio::io::split(tls);
        let mut session = Session {
            lines: BufReader::new(rx).lines(),
            tx,
            leaf,
        };
        let welcome = session.line().await?;
        assert_eq!(format!("{welcome}\n"), WELCOME);
        Ok(session)
    }

    async fn line(&mut self) -> std::io::Result<String> {
        tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await
            .map_err(|_| std::io::Error::other("no line within 10 s"))??
            .ok_or_else(|| std::io::Error::other("connection closed"))
    }

    async fn ask(&mut self, what: &str) -> String {
        self.tx
            .write_all(format!("{what}\n").as_bytes())
            .await
            .expect("write");
        // A slow socket leaves TLS records queued in the session until flushed.
        self.tx.flush().await.expect("flush");
        self.line().await.expect("an answer")
    }

    async fn test(&mut self) -> TlsEchoReply {
        serde_json::from_str(&self.ask("TEST").await).expect("TEST answer")
    }
}

/// A plain TCP stream, or one that trickles what it writes (`Trickle`).
struct TcpStreamLike(Box<dyn Io>);
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
impl From<TcpStream> for TcpStreamLike {
    fn from(s: TcpStream) -> Self {
        Self(Box::new(s))
    }
}
impl From<Trickle> for TcpStreamLike {
    fn from(s: Trickle) -> Self {
        Self(Box::new(s))
    }
}

/// Writes at most 8 bytes at a time, 2 ms apart, each its own TCP segment (no Nagle): a
/// ClientHello arrives in dozens of pieces.
struct Trickle {
    inner: TcpStream,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl AsyncRead for Trickle {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Trickle {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if let Some(p) = &mut this.pause {
            ready!(p.as_mut().poll(cx));
            this.pause = None;
        }
        let n = buf.len().min(8);
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, &buf[..n]));
        this.pause = Some(Box::pin(tokio::time::sleep(Duration::from_millis(2))));
        Poll::Ready(written)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

use std::future::Future as _;

fn tls_route(name: &str) -> ObjectKey {
    ObjectKey::new(splitter_plan::model::Kind::TlsRoute, "infra", name)
}

fn sni_route(
    name: &str,
    hostname: Option<&str>,
    backends: Vec<plan::l7::PlannedBackend>,
) -> SniRoute {
    SniRoute {
        route: tls_route(name),
        hostname: hostname.map(str::to_string),
        backends,
        shadowed_by: Vec::new(),
    }
}

/// The passthrough table the plan builds for `yaml` (one TLS passthrough listener).
fn planned_table(yaml: &str) -> PassthroughTable {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(yaml).expect("YAML");
    let objects = docs
        .into_iter()
        .filter(|d| !d.is_null())
        .filter_map(|d| match parse(d) {
            Ok(Parsed::Object(o)) => Some(*o),
            Ok(Parsed::Skipped { .. }) => None,
            Err(e) => panic!("{e}"),
        });
    let plan = plan::build(&Index::from_objects(objects), &PlanConfig::default(), None);
    assert!(plan.problems().is_empty(), "{:#?}", plan.problems());
    let mut tables = plan
        .l7_listeners()
        .filter_map(|(_, t)| t.passthrough.clone());
    let table = tables.next().expect("one passthrough listener");
    assert!(tables.next().is_none());
    table
}

/// A Service `name` (port 443) whose one ready endpoint is `backend`.
fn service(name: &str, backend: SocketAddr) -> String {
    format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: infra}}
spec:
  ports: [{{name: tls, port: 443, targetPort: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: infra, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: tls, port: {port}, protocol: TCP}}]
endpoints:
- addresses: [{ip}]
",
        port = backend.port(),
        ip = backend.ip()
    )
}

async fn passthrough_proxy(
    config: ProxyConfig,
    table: &PassthroughTable,
) -> (Proxy, splitter::dataplane::proxy::PassthroughListener) {
    let proxy = Proxy::new(config, ProxyMetrics::default());
    let listener = proxy
        .listen_passthrough(loopback(), table)
        .await
        .expect("binds a loopback port");
    (proxy, listener)
}

fn outcomes(
    proxy: &Proxy,
    listener: SocketAddr,
    route: &str,
    backend: &str,
    outcome: &'static str,
) -> u64 {
    proxy.metrics().passthrough_with(&PassthroughLabels {
        listener: Arc::from(listener.to_string()),
        route: Arc::from(route),
        backend: Arc::from(backend),
        outcome,
    })
}

#[tokio::test]
async fn each_server_name_reaches_its_routes_backend_verified_end_to_end() {
    let alpha = tls_backend("alpha", "a").await;
    let alpha2 = tls_backend("alpha2", "a2").await;
    let beta = tls_backend("beta", "b").await;
    // Through the plan: a listener without hostname, three TLSRoutes by name.
    let yaml = format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: splitter}}
spec: {{controllerName: splitter.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: tls, namespace: infra}}
spec:
  gatewayClassName: splitter
  addresses: [{{type: IPAddress, value: 127.0.0.1}}]
  listeners:
  - {{name: tls, protocol: TLS, port: 8443, tls: {{mode: Passthrough}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: a, namespace: infra, creationTimestamp: '2026-01-03T00:00:00Z'}}
spec:
  parentRefs: [{{name: tls}}]
  hostnames: [a.example.com, x.wild.example.com]
  rules:
  - backendRefs: [{{name: alpha, port: 443}}]
---
# Older than route a, but a wildcard: the exact name x.wild.example.com still goes to a.
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: wild, namespace: infra, creationTimestamp: '2026-01-01T00:00:00Z'}}
spec:
  parentRefs: [{{name: tls}}]
  hostnames: ['*.wild.example.com']
  rules:
  - backendRefs: [{{name: alpha2, port: 443}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {{name: b, namespace: infra}}
spec:
  parentRefs: [{{name: tls}}]
  hostnames: [b.example.com]
  rules:
  - backendRefs: [{{name: beta, port: 443}}]
{}{}{}",
        service("alpha", alpha.local_addr()),
        service("alpha2", alpha2.local_addr()),
        service("beta", beta.local_addr()),
    );
    let table = planned_table(&yaml);
    let (_proxy, listener) = passthrough_proxy(test_config(), &table).await;
    let addr = listener.local_addr();
    for (sni, pod, cert) in [
        ("a.example.com", "alpha", "a"),
        ("x.wild.example.com", "alpha", "a"),
        ("y.wild.example.com", "alpha2", "a2"),
        ("b.example.com", "beta", "b"),
    ] {
        let mut s = Session::open(addr, sni)
            .await
            .unwrap_or_else(|e| panic!("{sni}: {e}"));
        assert_eq!(
            s.leaf,
            leaf_der(cert),
            "{sni}: the backend's own certificate"
        );
        let reply = s.test().await;
        assert_eq!(
            (reply.pod.as_str(), reply.tls.server_name.as_str()),
            (pod, sni)
        );
        assert_eq!(s.ask("PING").await, "PONG");
        // Half-close: the client ends its side; the backend's answer after that still arrives.
        s.tx.shutdown().await.expect("close_notify and FIN");
        assert_eq!(s.line().await.expect("BYE"), "BYE 2");
        assert!(
            s.lines
                .next_line()
                .await
                .map(|l| l.is_none())
                .unwrap_or(true)
        );
    }
}

#[tokio::test]
async fn unknown_names_no_name_and_garbage_are_closed_before_any_backend() {
    let alpha = tls_backend("alpha", "a").await;
    let table = PassthroughTable {
        routes: vec![sni_route(
            "a",
            Some("a.example.com"),
            vec![backend("alpha", 1, &[alpha.local_addr()])],
        )],
    };
    let (proxy, listener) = passthrough_proxy(test_config(), &table).await;
    let addr = listener.local_addr();
    // A name no route takes: the client is told unrecognized_name.
    let e = Session::open(addr, "nobody.example.org")
        .await
        .err()
        .expect("refused");
    assert!(format!("{e:?}").contains("UnrecognisedName"), "{e:?}");
    // No SNI at all (an IP address as the name): no route takes it either.
    let e = Session::open(addr, "127.0.0.1")
        .await
        .err()
        .expect("refused");
    assert!(format!("{e:?}").contains("UnrecognisedName"), "{e:?}");
    // Not TLS: closed at once, nothing written back.
    let mut raw = TcpStream::connect(addr).await.expect("connect");
    raw.write_all(b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut buf))
        .await
        .expect("closed within the timeout")
        .unwrap_or(0);
    assert_eq!(n, 0, "nothing but a close: {buf:?}");
    let at = |outcome| outcomes(&proxy, addr, "", "", outcome);
    assert_eq!((at("no_route"), at("no_client_hello")), (2, 1));
    assert_eq!(
        outcomes(&proxy, addr, "infra/a", "default/alpha:80", "spliced"),
        0
    );
    // The route itself works.
    let mut s = Session::open(addr, "a.example.com")
        .await
        .expect("a.example.com");
    assert_eq!(s.test().await.pod, "alpha");
}

#[tokio::test]
async fn weights_split_connections_exactly_and_an_invalid_share_is_refused() {
    let b1 = tls_backend("beta1", "b").await;
    let b2 = tls_backend("beta2", "b").await;
    let table = PassthroughTable {
        routes: vec![sni_route(
            "b",
            Some("b.example.com"),
            vec![
                backend("beta1", 3, &[b1.local_addr()]),
                backend("beta2", 1, &[b2.local_addr()]),
                invalid("missing", 1),
            ],
        )],
    };
    let (proxy, listener) = passthrough_proxy(test_config(), &table).await;
    let addr = listener.local_addr();
    let mut pods: BTreeMap<String, usize> = BTreeMap::new();
    let mut refused = 0;
    // 10 cycles of the weights' sum (3 + 1 + 1): exactly 30, 10 and 10 refused.
    for _ in 0..50 {
        match Session::open(addr, "b.example.com").await {
            Ok(mut s) => *pods.entry(s.test().await.pod).or_default() += 1,
            Err(_) => refused += 1,
        }
    }
    assert_eq!(
        pods,
        BTreeMap::from([("beta1".to_string(), 30), ("beta2".to_string(), 10)])
    );
    assert_eq!(
        refused, 10,
        "the invalid share is refused, never given to the others"
    );
    assert_eq!(
        outcomes(&proxy, addr, "infra/b", "default/missing:80", "refused"),
        10
    );
}

#[tokio::test]
async fn a_client_hello_sent_in_small_pieces_is_read_whole() {
    let alpha = tls_backend("alpha", "a").await;
    let table = PassthroughTable {
        routes: vec![sni_route(
            "a",
            Some("a.example.com"),
            vec![backend("alpha", 1, &[alpha.local_addr()])],
        )],
    };
    let (_proxy, listener) = passthrough_proxy(test_config(), &table).await;
    let tcp = TcpStream::connect(listener.local_addr())
        .await
        .expect("connect");
    tcp.set_nodelay(true).expect("nodelay");
    let trickle = Trickle {
        inner: tcp,
        pause: None,
    };
    let started = Instant::now();
    let mut s = Session::over(trickle, "a.example.com")
        .await
        .expect("handshake in pieces");
    assert!(
        started.elapsed() > Duration::from_millis(50),
        "the hello did arrive in pieces"
    );
    assert_eq!(s.leaf, leaf_der("a"));
    assert_eq!(s.test().await.pod, "alpha");
}

#[tokio::test]
async fn a_client_that_sends_nothing_is_closed_at_the_header_read_timeout() {
    let alpha = tls_backend("alpha", "a").await;
    let table = PassthroughTable {
        routes: vec![sni_route(
            "a",
            None,
            vec![backend("alpha", 1, &[alpha.local_addr()])],
        )],
    };
    let config = ProxyConfig {
        header_read_timeout: Duration::from_millis(300),
        ..test_config()
    };
    let (_proxy, listener) = passthrough_proxy(config, &table).await;
    let mut raw = TcpStream::connect(listener.local_addr())
        .await
        .expect("connect");
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf))
        .await
        .expect("closed by the proxy")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
}

#[tokio::test]
async fn a_new_table_routes_new_connections_and_open_ones_carry_on() {
    let b1 = tls_backend("beta1", "b").await;
    let b2 = tls_backend("beta2", "b").await;
    let table = |to: &TlsEchoServer, name: &str| {
        let mut t = BTreeMap::new();
        t.insert(
            loopback(),
            Arc::new(L7RouteTable {
                passthrough: Some(PassthroughTable {
                    routes: vec![sni_route(
                        "b",
                        Some("b.example.com"),
                        vec![backend(name, 1, &[to.local_addr()])],
                    )],
                }),
                ..L7RouteTable::default()
            }),
        );
        t
    };
    let mut listeners = L7Listeners::new(Proxy::new(test_config(), ProxyMetrics::default()));
    let report = listeners.apply(&table(&b1, "beta1")).await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let addr = listeners.local_addr(&loopback()).expect("bound");
    let mut open = Session::open(addr, "b.example.com").await.expect("first");
    assert_eq!(open.test().await.pod, "beta1");
    let report = listeners.apply(&table(&b2, "beta2")).await;
    assert_eq!(report.updated, [loopback()]);
    assert_eq!(
        listeners.local_addr(&loopback()),
        Some(addr),
        "the same socket"
    );
    // The open connection still talks to beta1; a new one goes to beta2.
    assert_eq!(open.ask("PING").await, "PONG");
    assert_eq!(open.test().await.pod, "beta1");
    let mut new = Session::open(addr, "b.example.com").await.expect("second");
    assert_eq!(new.test().await.pod, "beta2");
    // The same address turned into an HTTP listener: replaced, serving HTTP.
    let echo = echo("http").await;
    let mut http = BTreeMap::new();
    http.insert(loopback(), Arc::new(table_of_http(echo.local_addr())));
    let report = listeners.apply(&http).await;
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    let http_addr = listeners.local_addr(&loopback()).expect("bound");
    assert_eq!(get_once(http_addr, "/hostname").await.text(), "http");
    listeners.shutdown().await;
}

fn table_of_http(to: SocketAddr) -> L7RouteTable {
    table(vec![prefix_route(
        "r",
        "/",
        vec![backend("http", 1, &[to])],
    )])
}

#[tokio::test]
async fn an_idle_spliced_connection_is_closed_at_the_tunnel_idle_timeout() {
    let alpha = tls_backend("alpha", "a").await;
    let table = PassthroughTable {
        routes: vec![sni_route(
            "a",
            None,
            vec![backend("alpha", 1, &[alpha.local_addr()])],
        )],
    };
    let config = ProxyConfig {
        tunnel_idle_timeout: Duration::from_millis(400),
        ..test_config()
    };
    let (_proxy, listener) = passthrough_proxy(config, &table).await;
    let mut s = Session::open(listener.local_addr(), "a.example.com")
        .await
        .expect("spliced");
    // Traffic keeps it open past the timeout...
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(s.ask("PING").await, "PONG");
    }
    // ...silence closes it.
    let started = Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(5), s.lines.next_line())
        .await
        .expect("closed by the proxy within the idle timeout");
    assert!(!matches!(end, Ok(Some(_))), "closed, not answered: {end:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn connections_over_the_per_source_limit_are_closed_at_accept() {
    let alpha = tls_backend("alpha", "a").await;
    let table = PassthroughTable {
        routes: vec![sni_route(
            "a",
            None,
            vec![backend("alpha", 1, &[alpha.local_addr()])],
        )],
    };
    let config = ProxyConfig {
        max_connections_per_source: 1,
        ..test_config()
    };
    let (proxy, listener) = passthrough_proxy(config, &table).await;
    let addr = listener.local_addr();
    let mut first = Session::open(addr, "a.example.com").await.expect("first");
    assert!(
        Session::open(addr, "a.example.com").await.is_err(),
        "a second connection from the same source is closed"
    );
    assert_eq!(
        proxy.metrics().passthrough_with(&PassthroughLabels {
            listener: Arc::from(addr.to_string()),
            route: Arc::from("infra/a"),
            backend: Arc::from("default/alpha:80"),
            outcome: "spliced",
        }),
        1
    );
    assert_eq!(first.ask("PING").await, "PONG");
    drop(first);
    // The slot comes back when the connection closes.
    let mut again = None;
    for _ in 0..50 {
        if let Ok(s) = Session::open(addr, "a.example.com").await {
            again = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(again.expect("a slot again").test().await.pod, "alpha");
}

#[tokio::test]
async fn the_per_endpoint_connection_cap_counts_spliced_connections() {
    let alpha = tls_backend("alpha", "a").await;
    let table = PassthroughTable {
        routes: vec![sni_route(
            "a",
            None,
            vec![backend("alpha", 1, &[alpha.local_addr()])],
        )],
    };
    let config = ProxyConfig {
        upstream: splitter::dataplane::proxy::UpstreamConfig {
            max_connections_per_endpoint: 1,
            ..Default::default()
        },
        ..test_config()
    };
    let (proxy, listener) = passthrough_proxy(config, &table).await;
    let addr = listener.local_addr();
    let mut first = Session::open(addr, "a.example.com").await.expect("first");
    assert!(
        Session::open(addr, "a.example.com").await.is_err(),
        "the endpoint is at its cap: the second connection is closed"
    );
    assert_eq!(
        outcomes(
            &proxy,
            addr,
            "infra/a",
            "default/alpha:80",
            "connect_failed"
        ),
        1
    );
    assert_eq!(first.ask("PING").await, "PONG");
}
