//! Shared pieces of the L7 tests: route tables built by hand, echo backends and the proxy on
//! 127.0.0.1 ephemeral ports, and an HTTP/1.1 client that keeps exactly one connection.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use splitter::{
    dataplane::proxy::{Proxy, ProxyConfig, ProxyListener, ProxyMetrics},
    echo::{EchoReply, EchoServer},
};
use splitter_plan::plan::{
    ObjectKey,
    l7::{
        BackendTarget, Filter, InvalidReason, L7Route, L7RouteTable, PathMatch, PathModifier,
        PlannedBackend, RouteMatch, Timeouts, UrlRewrite,
    },
};
use tokio::net::TcpStream;

pub const LOOPBACK: &str = "127.0.0.1:0";

pub fn loopback() -> SocketAddr {
    LOOPBACK.parse().expect("literal address")
}

pub fn http_route(name: &str) -> ObjectKey {
    ObjectKey {
        kind: splitter_plan::model::Kind::HttpRoute,
        namespace: "default".into(),
        name: name.into(),
    }
}

pub fn matching(path: PathMatch) -> RouteMatch {
    RouteMatch {
        path,
        headers: vec![],
        query: vec![],
        method: None,
        grpc: None,
    }
}

/// Rule 0 of HTTPRoute `name`, matching path prefix `prefix`.
pub fn prefix_route(name: &str, prefix: &str, backends: Vec<PlannedBackend>) -> L7Route {
    route(name, PathMatch::Prefix(prefix.into()), backends)
}

pub fn route(name: &str, path: PathMatch, backends: Vec<PlannedBackend>) -> L7Route {
    L7Route {
        route: http_route(name),
        rule_index: 0,
        hostnames: vec![],
        shadowed_by: vec![],
        matched: matching(path),
        filters: vec![],
        backends,
        timeouts: Timeouts::default(),
        mirrors: vec![],
    }
}

pub fn backend(name: &str, weight: u32, endpoints: &[SocketAddr]) -> PlannedBackend {
    PlannedBackend {
        name: format!("default/{name}:80"),
        weight,
        target: BackendTarget::Endpoints(endpoints.to_vec()),
        filters: vec![],
        protocol: Default::default(),
    }
}

pub fn no_endpoints(name: &str, weight: u32) -> PlannedBackend {
    PlannedBackend {
        name: format!("default/{name}:80"),
        weight,
        target: BackendTarget::NoEndpoints,
        filters: vec![],
        protocol: Default::default(),
    }
}

pub fn invalid(name: &str, weight: u32) -> PlannedBackend {
    PlannedBackend {
        name: format!("default/{name}:80"),
        weight,
        target: BackendTarget::Invalid(InvalidReason::BackendNotFound),
        filters: vec![],
        protocol: Default::default(),
    }
}

/// The `konghq.com/strip-path: "true"` annotation as the plan renders it.
pub fn strip_path() -> Filter {
    Filter::UrlRewrite(UrlRewrite {
        hostname: None,
        path: Some(PathModifier::ReplacePrefixMatch("/".into())),
    })
}

pub fn table(routes: Vec<L7Route>) -> L7RouteTable {
    L7RouteTable {
        routes: routes.into_iter().map(std::sync::Arc::new).collect(),
        tls: None,
        passthrough: None,
    }
}

pub async fn echo(name: &str) -> EchoServer {
    EchoServer::bind(loopback(), name)
        .await
        .expect("echo backend binds a loopback port")
}

/// Test settings: a header timeout short enough that a stuck test fails fast, long enough that
/// a loaded machine never trips it on a well-behaved client.
pub fn test_config() -> ProxyConfig {
    ProxyConfig {
        header_read_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(10),
        ..ProxyConfig::default()
    }
}

pub async fn start_proxy(t: &L7RouteTable) -> (Proxy, ProxyListener) {
    start_proxy_with(test_config(), t).await
}

/// A proxy with one route, `/`, to one backend at `addr`: the set-up of tests about one
/// exchange rather than about routing or splitting.
pub async fn proxy_to(addr: SocketAddr, config: ProxyConfig) -> (Proxy, ProxyListener) {
    let t = table(vec![prefix_route("r", "/", vec![backend("b", 1, &[addr])])]);
    start_proxy_with(config, &t).await
}

pub async fn start_proxy_with(config: ProxyConfig, t: &L7RouteTable) -> (Proxy, ProxyListener) {
    let proxy = Proxy::new(config, ProxyMetrics::default());
    let (listener, issues) = proxy
        .listen(loopback(), t)
        .await
        .expect("proxy binds a loopback port");
    assert!(issues.is_empty(), "table issues: {issues:?}");
    (proxy, listener)
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn echo(&self) -> EchoReply {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not an echo reply ({e}): {}", self.text()))
    }
}

/// One HTTP/1.1 keep-alive connection: every request goes over the same TCP stream, and a
/// request fails if the server closed it.
pub struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
}

impl Connection {
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the proxy");
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("HTTP/1.1 handshake");
        tokio::spawn(conn);
        Self { sender }
    }

    pub async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Reply, hyper::Error> {
        self.sender.ready().await?;
        let resp = self.sender.send_request(req).await?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    pub async fn get(&mut self, path: &str) -> Reply {
        self.send(get(path))
            .await
            .expect("request over the connection")
    }
}

/// `GET path` with `Host: gateway.test`.
pub fn get(path: &str) -> Request<Full<Bytes>> {
    request("GET", path, "gateway.test")
}

pub fn request(method: &str, path: &str, host: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .expect("valid request")
}

/// One request on a fresh connection.
pub async fn get_once(addr: SocketAddr, path: &str) -> Reply {
    Connection::open(addr).await.get(path).await
}

pub async fn send_once(addr: SocketAddr, req: Request<Full<Bytes>>) -> Reply {
    Connection::open(addr)
        .await
        .send(req)
        .await
        .expect("request on a fresh connection")
}

/// How many times each body (or status, for non-200 answers) was seen.
pub fn tally(replies: &[Reply]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for r in replies {
        let key = if r.status == StatusCode::OK {
            r.text()
        } else {
            r.status.as_u16().to_string()
        };
        *out.entry(key).or_default() += 1;
    }
    out
}
