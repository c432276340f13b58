//! RequestMirror, backendRef filters and CORS through the real proxy over loopback: what the
//! client gets, and what each backend (the mirror included) received.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::support::*;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use splitter_plan::plan::l7::{
    Allowed, Cors, Filter, Fraction, HeaderModifier, OriginPattern, PlannedBackend, PlannedMirror,
};
use tokio::net::TcpListener;

/// What a recording backend received.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A backend that records every request it reads whole and answers `200 mirror`. Requests are
/// served with hyper, so a body that does not match its framing is never recorded.
struct Recorder {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start() -> Self {
        let listener = TcpListener::bind(loopback()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                let svc = service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await?.to_bytes();
                        log.lock().unwrap().push(Seen {
                            method: parts.method.to_string(),
                            path: parts.uri.to_string(),
                            headers: parts.headers,
                            body,
                        });
                        Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from_static(
                            b"mirror",
                        ))))
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            seen,
            _task: task,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (up to 5 s) until `n` requests were recorded.
    async fn wait_for(&self, n: usize) -> Vec<Seen> {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let seen = self.seen();
            if seen.len() >= n || Instant::now() > until {
                return seen;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn mirror_to(name: &str, addr: SocketAddr, numerator: u32, denominator: u32) -> PlannedMirror {
    PlannedMirror {
        name: format!("default/{name}:80"),
        endpoints: vec![addr],
        fraction: Fraction {
            numerator,
            denominator,
        },
    }
}

fn set_header(name: &'static str, value: &'static str) -> HeaderModifier {
    HeaderModifier {
        set: vec![(
            http::HeaderName::from_static(name),
            http::HeaderValue::from_static(value),
        )],
        ..HeaderModifier::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_gets_a_copy_with_path_headers_and_body_while_the_client_gets_the_primary() {
    let primary = echo("primary").await;
    let mirror = Recorder::start().await;
    let mut r = prefix_route("m", "/", vec![backend("p", 1, &[primary.local_addr()])]);
    r.filters
        .push(Filter::RequestHeaderModifier(set_header("x-rule", "yes")));
    r.mirrors.push(mirror_to("mirror", mirror.addr, 1, 1));
    let (_proxy, listener) = start_proxy(&table(vec![r])).await;
    let mut conn = Connection::open(listener.local_addr()).await;

    let got = conn.get("/mirror/a?q=1").await;
    assert_eq!(got.echo().name, "primary");
    let body = Bytes::from(vec![b'x'; 10_000]);
    let post = Request::builder()
        .method("POST")
        .uri("/upload")
        .header("host", "gateway.test")
        .header("x-client", "c1")
        .body(Full::new(body.clone()))
        .unwrap();
    let got = conn.send(post).await.unwrap();
    assert_eq!(got.echo().name, "primary");
    assert_eq!(got.echo().body_bytes, 10_000);

    let seen = mirror.wait_for(2).await;
    assert_eq!(seen.len(), 2, "the mirror got both requests: {seen:?}");
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].path, "/mirror/a?q=1");
    assert_eq!(seen[0].headers["host"], "gateway.test");
    assert_eq!(seen[0].headers["x-rule"], "yes");
    assert!(seen[0].body.is_empty());
    assert_eq!(seen[1].method, "POST");
    assert_eq!(seen[1].path, "/upload");
    assert_eq!(seen[1].headers["x-client"], "c1");
    assert_eq!(seen[1].body, body);
}

/// A chunked upload (no Content-Length, written in pieces by a raw client): the mirror gets the
/// whole body once the client's last chunk arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_is_mirrored_whole() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let primary = echo("primary").await;
    let mirror = Recorder::start().await;
    let mut r = prefix_route("m", "/", vec![backend("p", 1, &[primary.local_addr()])]);
    r.mirrors.push(mirror_to("mirror", mirror.addr, 1, 1));
    let (_proxy, listener) = start_proxy(&table(vec![r])).await;
    let mut s = tokio::net::TcpStream::connect(listener.local_addr())
        .await
        .unwrap();
    s.write_all(
        b"POST /chunked HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.write_all(b"6\r\n world\r\n0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"name\":\"primary\""), "{answer}");
    let seen = mirror.wait_for(1).await;
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/chunked");
    assert_eq!(&seen[0].body[..], b"hello world");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_bound_is_not_mirrored_and_the_primary_gets_it_whole() {
    let primary = echo("primary").await;
    let mirror = Recorder::start().await;
    let mut r = prefix_route("m", "/", vec![backend("p", 1, &[primary.local_addr()])]);
    r.mirrors.push(mirror_to("mirror", mirror.addr, 1, 1));
    let (_proxy, listener) = start_proxy(&table(vec![r])).await;
    let mut conn = Connection::open(listener.local_addr()).await;
    let big = Request::builder()
        .method("POST")
        .uri("/big")
        .header("host", "gateway.test")
        .body(Full::new(Bytes::from(vec![b'y'; 64 * 1024 + 1])))
        .unwrap();
    let got = conn.send(big).await.unwrap();
    assert_eq!(got.echo().body_bytes, 64 * 1024 + 1);
    conn.get("/small").await;
    let seen = mirror.wait_for(1).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let paths: Vec<String> = mirror.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, vec!["/small"], "{seen:?}");
}

/// A mirror that accepts and never answers, one whose port is closed and one that resets every
/// connection: the client's answers come from the primary as fast as without a mirror (bound:
/// 2 s for 20 requests, where the hung mirror alone would hold each for the 10 s mirror
/// timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_or_down_mirror_neither_slows_nor_fails_the_client() {
    let primary = echo("primary").await;
    let hung = TcpListener::bind(loopback()).await.unwrap();
    let hung_addr = hung.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = hung.accept().await {
            keep.lock().unwrap().push(s);
        }
    });
    let down = {
        let l = std::net::TcpListener::bind(loopback()).unwrap();
        l.local_addr().unwrap()
    };
    // Accepts and resets at once (linger 0).
    let resets = TcpListener::bind(loopback()).await.unwrap();
    let resets_addr = resets.local_addr().unwrap();
    let reset_count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = reset_count.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = resets.accept().await {
            let _ = s.set_zero_linger();
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            drop(s);
        }
    });
    let mut r = prefix_route("m", "/", vec![backend("p", 1, &[primary.local_addr()])]);
    r.mirrors.push(mirror_to("hung", hung_addr, 1, 1));
    r.mirrors.push(mirror_to("down", down, 1, 1));
    r.mirrors.push(mirror_to("resets", resets_addr, 1, 1));
    let (_proxy, listener) = start_proxy(&table(vec![r])).await;
    let mut conn = Connection::open(listener.local_addr()).await;
    let started = Instant::now();
    for i in 0..20 {
        let post = Request::builder()
            .method("POST")
            .uri(format!("/p{i}"))
            .header("host", "gateway.test")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap();
        let got = conn.send(post).await.unwrap();
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.echo().name, "primary");
        assert_eq!(got.echo().path, format!("/p{i}"));
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "20 requests took {took:?}");
    // The hung and resetting mirrors did get the copies (so the test measured real ones).
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!held.lock().unwrap().is_empty());
    assert!(reset_count.load(std::sync::atomic::Ordering::Relaxed) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fractional_mirror_copies_exactly_its_share_and_several_mirrors_each_get_theirs() {
    let primary = echo("primary").await;
    let (a, b) = (Recorder::start().await, Recorder::start().await);
    let mut r = prefix_route("m", "/", vec![backend("p", 1, &[primary.local_addr()])]);
    r.mirrors.push(mirror_to("a", a.addr, 20, 100));
    r.mirrors.push(mirror_to("b", b.addr, 25, 50));
    let (_proxy, listener) = start_proxy(&table(vec![r])).await;
    let mut conn = Connection::open(listener.local_addr()).await;
    for i in 0..100 {
        assert_eq!(conn.get(&format!("/{i}")).await.echo().name, "primary");
    }
    let (sa, sb) = (a.wait_for(20).await, b.wait_for(50).await);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(a.seen().len(), 20, "20% of 100: {}", sa.len());
    assert_eq!(b.seen().len(), 50, "25/50 of 100: {}", sb.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_filters_apply_only_to_their_backend_under_weights() {
    let (v1, v2) = (echo("v1").await, echo("v2").await);
    let with = |b: PlannedBackend, value: &'static str, resp: &'static str| PlannedBackend {
        filters: vec![
            Filter::RequestHeaderModifier(set_header("backend", value)),
            Filter::ResponseHeaderModifier(set_header("x-answered-by", resp)),
        ],
        ..b
    };
    let r = prefix_route(
        "w",
        "/",
        vec![
            with(
                backend("v1", 1, &[v1.local_addr()]),
                "infra-backend-v1",
                "one",
            ),
            with(
                backend("v2", 1, &[v2.local_addr()]),
                "infra-backend-v2",
                "two",
            ),
        ],
    );
    let (_proxy, listener) = start_proxy(&table(vec![r])).await;
    let mut conn = Connection::open(listener.local_addr()).await;
    let mut per = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..20 {
        let got = conn.get("/").await;
        let e = got.echo();
        let (want_req, want_resp) = match e.name.as_str() {
            "v1" => ("infra-backend-v1", "one"),
            _ => ("infra-backend-v2", "two"),
        };
        assert_eq!(e.header("backend"), vec![want_req], "{}", e.name);
        assert_eq!(got.headers["x-answered-by"], want_resp);
        *per.entry(e.name).or_default() += 1;
    }
    assert_eq!(per.get("v1"), Some(&10));
    assert_eq!(per.get("v2"), Some(&10));
}

fn cors(credentials: bool) -> Cors {
    Cors {
        allow_origins: vec![
            OriginPattern::Origin {
                scheme: "https".into(),
                host: "www.foo.com".into(),
                port: None,
            },
            OriginPattern::Origin {
                scheme: "https".into(),
                host: "*.bar.com".into(),
                port: None,
            },
        ],
        allow_methods: Allowed::List(Some("GET, OPTIONS".into())),
        allow_headers: Allowed::List(Some("x-header-1, x-header-2".into())),
        expose_headers: Some("x-header-3, x-header-4".into()),
        max_age: 3600,
        allow_credentials: credentials,
    }
}

fn with_headers(method: &str, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut req = request(method, path, "gateway.test");
    for (n, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_by_the_proxy_and_actual_responses_get_the_headers() {
    let primary = echo("primary").await;
    let mut r = prefix_route("c", "/", vec![backend("p", 1, &[primary.local_addr()])]);
    r.filters.push(Filter::Cors(cors(true)));
    let (_proxy, listener) = start_proxy(&table(vec![r])).await;
    let mut conn = Connection::open(listener.local_addr()).await;

    let pre = conn
        .send(with_headers(
            "OPTIONS",
            "/cors",
            &[
                ("origin", "https://xpto.www.bar.com"),
                ("access-control-request-method", "GET"),
                ("access-control-request-headers", "x-header-1"),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(pre.status, StatusCode::OK);
    assert!(pre.body.is_empty(), "answered by the proxy: {}", pre.text());
    let h = &pre.headers;
    assert_eq!(h["access-control-allow-origin"], "https://xpto.www.bar.com");
    assert_eq!(h["access-control-allow-methods"], "GET, OPTIONS");
    assert_eq!(h["access-control-allow-headers"], "x-header-1, x-header-2");
    assert_eq!(h["access-control-expose-headers"], "x-header-3, x-header-4");
    assert_eq!(h["access-control-max-age"], "3600");
    assert_eq!(h["access-control-allow-credentials"], "true");

    // A preflight from another origin is refused by the proxy, with no CORS header.
    let other = conn
        .send(with_headers(
            "OPTIONS",
            "/cors",
            &[
                ("origin", "https://foobar.com"),
                ("access-control-request-method", "GET"),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(other.status, StatusCode::FORBIDDEN);
    assert!(other.body.is_empty(), "not the backend's: {}", other.text());
    assert!(!other.headers.contains_key("access-control-allow-origin"));
    // An OPTIONS that is no preflight (no Access-Control-Request-Method) is the backend's.
    let plain = conn
        .send(with_headers(
            "OPTIONS",
            "/cors",
            &[("origin", "https://www.foo.com")],
        ))
        .await
        .unwrap();
    assert_eq!(plain.echo().method, "OPTIONS");
    assert_eq!(
        plain.headers["access-control-allow-origin"],
        "https://www.foo.com"
    );

    let actual = conn
        .send(with_headers(
            "GET",
            "/cors",
            &[("origin", "https://www.foo.com")],
        ))
        .await
        .unwrap();
    assert_eq!(actual.echo().name, "primary");
    assert_eq!(
        actual.headers["access-control-allow-origin"],
        "https://www.foo.com"
    );
    assert_eq!(actual.headers["access-control-allow-credentials"], "true");
    assert_eq!(
        actual.headers["access-control-expose-headers"],
        "x-header-3, x-header-4"
    );

    let refused = conn
        .send(with_headers(
            "GET",
            "/cors",
            &[("origin", "https://foobar.com")],
        ))
        .await
        .unwrap();
    assert_eq!(refused.echo().name, "primary");
    assert!(!refused.headers.contains_key("access-control-allow-origin"));
    assert!(
        !refused
            .headers
            .contains_key("access-control-allow-credentials")
    );
}

/// Every copy's outcome is counted in `splitter_l7_mirrored_requests_total`: sent, failed
/// (the mirror's port is closed), body_too_large.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_outcomes_are_counted_in_the_metrics() {
    use prometheus_client::{encoding::text::encode, registry::Registry};
    use splitter::dataplane::proxy::{Proxy, ProxyMetrics};
    let primary = echo("primary").await;
    let ok = Recorder::start().await;
    let down = {
        let l = std::net::TcpListener::bind(loopback()).unwrap();
        l.local_addr().unwrap()
    };
    let mut r = prefix_route("m", "/", vec![backend("p", 1, &[primary.local_addr()])]);
    r.mirrors.push(mirror_to("ok", ok.addr, 1, 1));
    r.mirrors.push(mirror_to("down", down, 1, 1));
    let metrics = ProxyMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let proxy = Proxy::new(test_config(), metrics);
    let (listener, _) = proxy.listen(loopback(), &table(vec![r])).await.unwrap();
    let mut conn = Connection::open(listener.local_addr()).await;
    for _ in 0..3 {
        conn.get("/").await;
    }
    let big = Request::builder()
        .method("POST")
        .uri("/big")
        .header("host", "gateway.test")
        .body(Full::new(Bytes::from(vec![b'z'; 100_000])))
        .unwrap();
    assert_eq!(conn.send(big).await.unwrap().status, StatusCode::OK);
    ok.wait_for(3).await;
    let count = |mirror: &str, outcome: &str| -> u64 {
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        text.lines()
            .find(|l| {
                l.starts_with("splitter_l7_mirrored_requests_total{")
                    && l.contains(&format!("mirror=\"default/{mirror}:80\""))
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    let until = Instant::now() + Duration::from_secs(5);
    while (count("ok", "sent") < 3 || count("down", "failed") < 3) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count("ok", "sent"), 3);
    assert_eq!(count("down", "failed"), 3);
    assert_eq!(count("ok", "body_too_large"), 1);
    assert_eq!(count("down", "body_too_large"), 1);
}

/// A mirror that never answers holds at most 256 copies at once: 300 requests leave 256 copies
/// waiting and 44 not sent (`outcome="busy"`), and every client answer still comes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_to_a_hung_mirror_are_bounded() {
    use prometheus_client::{encoding::text::encode, registry::Registry};
    use splitter::dataplane::proxy::{Proxy, ProxyMetrics};
    let primary = echo("primary").await;
    let hung = TcpListener::bind(loopback()).await.unwrap();
    let hung_addr = hung.local_addr().unwrap();
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = hung.accept().await {
            keep.lock().unwrap().push(s);
        }
    });
    let mut r = prefix_route("m", "/", vec![backend("p", 1, &[primary.local_addr()])]);
    r.mirrors.push(mirror_to("hung", hung_addr, 1, 1));
    let metrics = ProxyMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let proxy = Proxy::new(test_config(), metrics);
    let (listener, _) = proxy.listen(loopback(), &table(vec![r])).await.unwrap();
    let mut conn = Connection::open(listener.local_addr()).await;
    let started = Instant::now();
    for _ in 0..300 {
        assert_eq!(conn.get("/").await.echo().name, "primary");
    }
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "300 requests took {took:?}");
    let mut text = String::new();
    encode(&mut text, &registry).unwrap();
    let busy = text
        .lines()
        .find(|l| l.starts_with("splitter_l7_mirrored_requests_total{") && l.contains("busy"))
        .unwrap_or_else(|| panic!("no busy copies in:\n{text}"));
    assert!(busy.ends_with(" 44"), "{busy}");
}

/// An h2c client's requests are mirrored as HTTP/1.1 copies with their Host (from
/// `:authority`) and body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_requests_are_mirrored() {
    let primary = echo("primary").await;
    let mirror = Recorder::start().await;
    let mut r = prefix_route("m", "/", vec![backend("p", 1, &[primary.local_addr()])]);
    r.mirrors.push(mirror_to("mirror", mirror.addr, 1, 1));
    let (_proxy, listener) = start_proxy(&table(vec![r])).await;
    let stream = tokio::net::TcpStream::connect(listener.local_addr())
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .method("PUT")
        .uri("http://gateway.test/h2/put")
        .body(Full::new(Bytes::from_static(b"over h2")))
        .unwrap();
    let resp = sender.send_request(req).await.expect("h2 request");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let seen: splitter::echo::EchoReply = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen.name, "primary");
    let copies = mirror.wait_for(1).await;
    assert_eq!(copies.len(), 1);
    assert_eq!(copies[0].method, "PUT");
    assert_eq!(copies[0].path, "/h2/put");
    assert_eq!(copies[0].headers["host"], "gateway.test");
    assert_eq!(&copies[0].body[..], b"over h2");
}
