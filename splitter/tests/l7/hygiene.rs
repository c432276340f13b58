//! Hostile route authors and hostile clients (issue 16): framing headers are the proxy's, paths
//! lose their dot segments before they are matched, a request with two Hosts is refused,
//! `Connection: host` keeps Host, the forwarding headers are the proxy's to write, and HTTP/2
//! cookie fields reach an HTTP/1.1 backend as one. Real proxy, real backends, loopback.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::support::*;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use splitter::dataplane::proxy::{ProxyConfig, XffPolicy};
use splitter_plan::plan::{
    self, PlanConfig,
    l7::{Filter, HeaderModifier, PathMatch, PathModifier, UrlRewrite},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// What a client smuggles: a whole second request as the body of its first.
const SMUGGLED: &[u8] = b"GET /internal HTTP/1.1\r\nHost: gateway.test\r\n\r\n";

/// A backend that reads request heads only and never a GET's body (as some servers do), and
/// records every request line's target. Every request is answered `200 ok`.
async fn naive_backend() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let target = head.split(' ').nth(1).unwrap_or("?").to_owned();
                        log.lock().unwrap().push(target);
                        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A GET whose chunked body is `SMUGGLED`, sent raw on a fresh connection; returns what the
/// proxy answered.
async fn smuggle(proxy: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: gateway.test\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n",
        SMUGGLED.len()
    )
    .into_bytes();
    req.extend_from_slice(SMUGGLED);
    req.extend_from_slice(b"\r\n0\r\n\r\n");
    s.write_all(&req).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // One response is all that is wanted; the proxy keeps the connection open.
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// A backend that records every request head whole and answers `200 ok`, reading no body.
async fn head_recorder() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let log = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        log.lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&buf[..end]).into_owned());
                        buf.drain(..end + 4);
                        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, heads)
}

fn hn(name: &'static str) -> HeaderName {
    HeaderName::from_static(name)
}

fn hv(value: &'static str) -> HeaderValue {
    HeaderValue::from_static(value)
}

const SMUGGLING_ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: splitter}
spec: {controllerName: splitter.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: splitter
  listeners: [{name: http, protocol: HTTP, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: app, namespace: default}
spec:
  ports: [{name: http, port: 8080, targetPort: BACKEND_PORT}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: app-1, namespace: default, labels: {kubernetes.io/service-name: app}}
addressType: IPv4
ports: [{name: http, port: BACKEND_PORT, protocol: TCP}]
endpoints: [{addresses: [127.0.0.1]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: smuggler, namespace: default}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /app}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: Content-Length, value: "SMUGGLED_LEN"}]}
    backendRefs: [{name: app, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /ok}}]
    backendRefs: [{name: app, port: 8080}]
"#;

/// A route author's `RequestHeaderModifier` that sets `Content-Length` (to the length of a
/// smuggled request, which a backend that ignores GET bodies would then read as a second
/// request) drops its rule with a condition naming the field; the request that matched it gets
/// 404 and the smuggled request never reaches the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_filter_setting_content_length_is_refused_and_nothing_is_smuggled() {
    let (backend_addr, seen) = naive_backend().await;
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("routes.yaml");
    std::fs::write(
        &manifests,
        SMUGGLING_ROUTE
            .replace("BACKEND_PORT", &backend_addr.port().to_string())
            .replace("SMUGGLED_LEN", &SMUGGLED.len().to_string()),
    )
    .unwrap();
    let (index, report) = splitter::source::file::load(&[manifests]);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let plan = plan::build(&index, &PlanConfig::default(), None);
    let status = plan
        .routes
        .iter()
        .find(|r| r.route.name == "smuggler")
        .expect("the route has a status");
    let partial = status.parents[0]
        .conditions
        .iter()
        .find(|c| c.type_ == "PartiallyInvalid")
        .expect("PartiallyInvalid");
    assert!(
        partial.is_true()
            && partial.reason == "UnsupportedValue"
            && partial.message.contains(
                "spec.rules[0].filters[0].requestHeaderModifier.set[0].name: header \"content-length\""
            ),
        "{partial:?}"
    );
    let table = plan
        .l7_tables()
        .into_values()
        .next()
        .expect("an L7 listener");
    let (_proxy, listener) = start_proxy(&table).await;

    let answer = smuggle(listener.local_addr(), "/app").await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    assert_eq!(get_once(listener.local_addr(), "/ok").await.text(), "ok");
    assert_eq!(*seen.lock().unwrap(), vec!["/ok".to_owned()]);
}

/// Defence in depth: a framing header set by a request filter that got past the plan (a table
/// built by hand here) is undone by the proxy: the backend gets the request's own framing. A
/// bodyless GET whose filter set `Content-Length: 44` would otherwise make a backend wait for
/// 44 bytes that never come, or read the client's next request as this one's body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_framing_header_set_by_a_filter_is_undone_by_the_proxy() {
    let (backend_addr, heads) = head_recorder().await;
    let mut smuggler = prefix_route("smuggler", "/", vec![backend("n", 1, &[backend_addr])]);
    smuggler
        .filters
        .push(Filter::RequestHeaderModifier(HeaderModifier {
            set: vec![(
                http::header::CONTENT_LENGTH,
                HeaderValue::from(SMUGGLED.len()),
            )],
            add: vec![(hn("x-filtered"), hv("yes"))],
            remove: vec![],
        }));
    let (_proxy, listener) = start_proxy(&table(vec![smuggler])).await;
    assert_eq!(get_once(listener.local_addr(), "/app").await.text(), "ok");
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 1, "{heads:?}");
    let head = heads[0].to_ascii_lowercase();
    assert!(head.contains("x-filtered: yes"), "the filter ran: {head}");
    assert!(
        !head.contains("content-length"),
        "the filter's framing reached the backend: {head}"
    );
}

/// Defence in depth, responses: a response filter's `Content-Length: 0` is undone, so the
/// client gets the whole body and the next response on its connection is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_framing_header_set_by_a_filter_is_undone_by_the_proxy() {
    let e = echo("good").await;
    let mut spill = prefix_route("spill", "/", vec![backend("e", 1, &[e.local_addr()])]);
    spill
        .filters
        .push(Filter::ResponseHeaderModifier(HeaderModifier {
            set: vec![(http::header::CONTENT_LENGTH, hv("0"))],
            add: vec![(hn("x-filtered"), hv("yes"))],
            remove: vec![],
        }));
    let (_proxy, listener) = start_proxy(&table(vec![spill])).await;
    let mut conn = Connection::open(listener.local_addr()).await;
    for _ in 0..3 {
        let reply = conn.get("/hostname").await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(reply.text(), "good", "the whole body, and only it");
        assert_eq!(reply.headers["x-filtered"], "yes", "other edits apply");
    }
}

/// Dot segments (`..`, `.`, and their `%2e` spellings) are removed before matching, so
/// `/app/../internal` is the route for `/internal` and that backend sees `/internal`; a URL
/// rewrite works on the normalised path; `%2F` is not a separator and stays as it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_are_removed_before_matching_and_forwarding() {
    let (app, internal, rewritten) = (echo("app").await, echo("internal").await, echo("rw").await);
    let mut rw = prefix_route(
        "rw",
        "/old",
        vec![backend("rw", 1, &[rewritten.local_addr()])],
    );
    rw.filters.push(Filter::UrlRewrite(UrlRewrite {
        hostname: None,
        path: Some(PathModifier::ReplacePrefixMatch("/new".into())),
    }));
    let t = table(vec![
        route(
            "internal",
            PathMatch::Exact("/internal".into()),
            vec![backend("internal", 1, &[internal.local_addr()])],
        ),
        rw,
        prefix_route("app", "/app", vec![backend("app", 1, &[app.local_addr()])]),
    ]);
    let (_proxy, listener) = start_proxy(&t).await;
    let mut conn = Connection::open(listener.local_addr()).await;
    for (path, backend, seen_path, query) in [
        ("/app/../internal", "internal", "/internal", None),
        (
            "/app/%2e%2e/internal?x=1",
            "internal",
            "/internal",
            Some("x=1"),
        ),
        ("/app/.%2E/internal", "internal", "/internal", None),
        ("/app/./x/../y", "app", "/app/y", None),
        ("/app/..%2Finternal", "app", "/app/..%2Finternal", None),
        ("/old/a/../b", "rw", "/new/b", None),
        ("/old/%2e/../../internal", "internal", "/internal", None),
        ("/../../app/z", "app", "/app/z", None),
    ] {
        let seen = conn.get(path).await.echo();
        assert_eq!(
            (
                seen.name.as_str(),
                seen.path.as_str(),
                seen.query.as_deref()
            ),
            (backend, seen_path, query),
            "{path}"
        );
    }
}

/// Two Host fields make a request 400 (RFC 9112 section 3.2); the backend never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_host_is_a_400() {
    let (backend_addr, seen) = naive_backend().await;
    let (_proxy, listener) = proxy_to(backend_addr, test_config()).await;
    let mut s = TcpStream::connect(listener.local_addr()).await.unwrap();
    s.write_all(b"GET /two HTTP/1.1\r\nHost: gateway.test\r\nHost: internal.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(get_once(listener.local_addr(), "/one").await.text(), "ok");
    assert_eq!(*seen.lock().unwrap(), vec!["/one".to_owned()]);
}

/// A client that lists Host in Connection does not make the proxy drop it (the backend would
/// get the endpoint address instead of the client's Host).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_host_keeps_the_host() {
    let e = echo("e").await;
    let (_proxy, listener) = proxy_to(e.local_addr(), test_config()).await;
    let mut conn = Connection::open(listener.local_addr()).await;
    for method in ["GET", "POST"] {
        let mut req = request(method, "/", "gateway.test");
        req.headers_mut()
            .insert("connection", hv("keep-alive, host, x-hop"));
        req.headers_mut().insert("x-hop", hv("1"));
        if method == "POST" {
            *req.body_mut() = Full::new(Bytes::from_static(b"body"));
        }
        let seen = conn.send(req).await.unwrap().echo();
        assert_eq!(seen.header("host"), vec!["gateway.test"], "{method}");
        assert!(seen.header("x-hop").is_empty(), "{method}");
    }
}

/// `X-Forwarded-Proto` is the proxy's: the client's is replaced, on requests with and without
/// a body. `X-Forwarded-For` follows the `--xff` policy: `append` keeps the client's chain and
/// appends the peer, `replace` writes the peer alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_follow_the_policy() {
    let e = echo("e").await;
    for (policy, want_xff) in [
        (XffPolicy::Append, "203.0.113.7, 198.51.100.1, 127.0.0.1"),
        (XffPolicy::Replace, "127.0.0.1"),
    ] {
        let config = ProxyConfig {
            xff: policy,
            ..test_config()
        };
        let (_proxy, listener) = proxy_to(e.local_addr(), config).await;
        let mut conn = Connection::open(listener.local_addr()).await;
        for method in ["GET", "POST"] {
            let mut req = request(method, "/", "gateway.test");
            let h = req.headers_mut();
            h.append("x-forwarded-for", hv("203.0.113.7"));
            h.append("x-forwarded-for", hv("198.51.100.1"));
            h.insert("x-forwarded-proto", hv("https"));
            if method == "POST" {
                *req.body_mut() = Full::new(Bytes::from_static(b"body"));
            }
            let seen = conn.send(req).await.unwrap().echo();
            assert_eq!(
                seen.header("x-forwarded-for"),
                vec![want_xff],
                "{policy:?} {method}"
            );
            assert_eq!(
                seen.header("x-forwarded-proto"),
                vec!["http"],
                "{policy:?} {method}"
            );
        }
    }
}

/// An HTTP/2 client's cookie fields (HTTP/2 lets it split them) reach the HTTP/1.1 backend as
/// one field joined with "; " (RFC 9113 section 8.2.3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_cookie_fields_are_joined_for_http1_backends() {
    let e = echo("e").await;
    let (_proxy, listener) = proxy_to(e.local_addr(), test_config()).await;
    let stream = TcpStream::connect(listener.local_addr()).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    for body in [Bytes::new(), Bytes::from_static(b"body")] {
        let req = Request::builder()
            .method(if body.is_empty() { "GET" } else { "POST" })
            .uri("http://gateway.test/cookies")
            .header("cookie", "a=1")
            .header("cookie", "b=2; c=3")
            .body(Full::new(body))
            .unwrap();
        let resp = sender.send_request(req).await.expect("h2 request");
        assert_eq!(resp.status(), StatusCode::OK);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let seen: splitter::echo::EchoReply = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(seen.header("cookie"), vec!["a=1; b=2; c=3"], "{seen:?}");
    }
}
