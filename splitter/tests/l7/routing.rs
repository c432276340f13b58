//! Matching precedence, hostnames, filters (header modifiers, redirect, URL rewrite), proxy
//! header hygiene, h2c and streamed bodies, all through real HTTP.

use crate::support::*;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use splitter_plan::plan::l7::{
    Filter, HeaderMatch, HeaderModifier, PathMatch, PathModifier, Redirect, UrlRewrite, ValueMatch,
};

fn hn(name: &'static str) -> http::HeaderName {
    http::HeaderName::from_static(name)
}

fn hv(value: &'static str) -> http::HeaderValue {
    http::HeaderValue::from_static(value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_matching_route_wins() {
    let (x, y, z, h) = (
        echo("exact").await,
        echo("prefix").await,
        echo("root").await,
        echo("header").await,
    );
    let mut by_header = prefix_route("by-header", "/a", vec![backend("h", 1, &[h.local_addr()])]);
    by_header.matched.headers.push(HeaderMatch {
        name: http::HeaderName::from_static("x-canary"),
        value: ValueMatch::Exact("yes".into()),
    });
    // The plan hands the routes over in precedence order; the proxy takes the first match.
    let t = table(vec![
        route(
            "exact",
            PathMatch::Exact("/a/b".into()),
            vec![backend("x", 1, &[x.local_addr()])],
        ),
        by_header,
        prefix_route("prefix", "/a", vec![backend("y", 1, &[y.local_addr()])]),
        prefix_route("root", "/", vec![backend("z", 1, &[z.local_addr()])]),
    ]);
    let (_proxy, listener) = start_proxy(&t).await;
    let mut conn = Connection::open(listener.local_addr()).await;
    let name = |r: Reply| r.echo().name;
    assert_eq!(name(conn.get("/a/b").await), "exact");
    assert_eq!(name(conn.get("/a/c").await), "prefix");
    assert_eq!(name(conn.get("/a").await), "prefix");
    assert_eq!(name(conn.get("/ab").await), "root");
    assert_eq!(name(conn.get("/").await), "root");
    let mut canary = get("/a/c");
    canary
        .headers_mut()
        .insert("X-Canary", "yes".parse().unwrap());
    assert_eq!(name(conn.send(canary).await.unwrap()), "header");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostnames_select_routes() {
    let (exact, wild) = (echo("exact-host").await, echo("wildcard").await);
    let mut r1 = prefix_route("foo", "/", vec![backend("exact", 1, &[exact.local_addr()])]);
    r1.hostnames = vec!["foo.example.com".into()];
    let mut r2 = prefix_route("wild", "/", vec![backend("wild", 1, &[wild.local_addr()])]);
    r2.hostnames = vec!["*.example.com".into()];
    let (_proxy, listener) = start_proxy(&table(vec![r1, r2])).await;
    let mut conn = Connection::open(listener.local_addr()).await;
    let mut ask = async |host: &str| conn.send(request("GET", "/x", host)).await.unwrap();
    assert_eq!(ask("foo.example.com").await.echo().name, "exact-host");
    assert_eq!(ask("FOO.example.com:8080").await.echo().name, "exact-host");
    assert_eq!(ask("bar.example.com").await.echo().name, "wildcard");
    assert_eq!(ask("a.b.example.com").await.echo().name, "wildcard");
    assert_eq!(ask("example.com").await.status, StatusCode::NOT_FOUND);
    assert_eq!(ask("other.test").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_rewrites() {
    let e = echo("e").await;
    let b = || vec![backend("e", 1, &[e.local_addr()])];
    let mut prefix = prefix_route("prefix", "/old", b());
    prefix.filters.push(Filter::UrlRewrite(UrlRewrite {
        hostname: Some(http::HeaderValue::from_static("internal.svc")),
        path: Some(PathModifier::ReplacePrefixMatch("/new".into())),
    }));
    let mut full = prefix_route("full", "/full", b());
    full.filters.push(Filter::UrlRewrite(UrlRewrite {
        hostname: None,
        path: Some(PathModifier::ReplaceFullPath("/replaced".into())),
    }));
    let (_proxy, listener) = start_proxy(&table(vec![prefix, full])).await;
    let mut conn = Connection::open(listener.local_addr()).await;
    let seen = conn.get("/old/x/y?q=1").await.echo();
    assert_eq!(seen.path, "/new/x/y");
    assert_eq!(seen.query.as_deref(), Some("q=1"));
    assert_eq!(seen.header("host"), vec!["internal.svc"]);
    let seen = conn.get("/full/anything").await.echo();
    assert_eq!(seen.path, "/replaced");
    assert_eq!(
        seen.header("host"),
        vec!["gateway.test"],
        "Host kept unless rewritten"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_modifiers() {
    let e = echo("e").await;
    let mut r = prefix_route("hdr", "/", vec![backend("e", 1, &[e.local_addr()])]);
    r.filters
        .push(Filter::RequestHeaderModifier(HeaderModifier {
            set: vec![(hn("x-set"), hv("set-value"))],
            add: vec![(hn("x-add"), hv("added"))],
            remove: vec![hn("x-remove")],
        }));
    r.filters
        .push(Filter::ResponseHeaderModifier(HeaderModifier {
            set: vec![(hn("x-echo-name"), hv("hidden"))],
            add: vec![(hn("x-resp-add"), hv("1"))],
            remove: vec![hn("content-type")],
        }));
    let (_proxy, listener) = start_proxy(&table(vec![r])).await;
    let mut req = get("/h");
    req.headers_mut().insert("x-set", "client".parse().unwrap());
    req.headers_mut().insert("x-add", "client".parse().unwrap());
    req.headers_mut()
        .insert("x-remove", "client".parse().unwrap());
    let reply = send_once(listener.local_addr(), req).await;
    let seen = reply.echo();
    assert_eq!(seen.header("x-set"), vec!["set-value"]);
    assert_eq!(seen.header("x-add"), vec!["client", "added"]);
    assert!(seen.header("x-remove").is_empty());
    assert_eq!(reply.headers["x-echo-name"], "hidden");
    assert_eq!(reply.headers["x-resp-add"], "1");
    assert!(reply.headers.get("content-type").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_redirect() {
    let mut r = prefix_route("redir", "/old", vec![]);
    r.filters.push(Filter::RequestRedirect(Redirect {
        scheme: Some(http::uri::Scheme::HTTPS),
        hostname: Some("new.example.com".into()),
        path: Some(PathModifier::ReplacePrefixMatch("/new".into())),
        port: None,
        status_code: StatusCode::MOVED_PERMANENTLY,
    }));
    let mut keep_port = prefix_route("port", "/port", vec![]);
    keep_port.filters.push(Filter::RequestRedirect(Redirect {
        scheme: None,
        hostname: None,
        path: None,
        port: None,
        status_code: StatusCode::FOUND,
    }));
    let (_proxy, listener) = start_proxy(&table(vec![r, keep_port])).await;
    let port = listener.local_addr().port();
    let mut conn = Connection::open(listener.local_addr()).await;
    let reply = conn.get("/old/page?a=b").await;
    assert_eq!(reply.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        reply.headers["location"],
        "https://new.example.com/new/page?a=b"
    );
    let reply = conn.get("/port/x").await;
    assert_eq!(reply.status, StatusCode::FOUND);
    assert_eq!(
        reply.headers["location"],
        format!("http://gateway.test:{port}/port/x").as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_and_hop_by_hop_headers() {
    let e = echo("e").await;
    let (_proxy, listener) = proxy_to(e.local_addr(), test_config()).await;
    let mut req = get("/");
    req.headers_mut()
        .insert("x-forwarded-for", "203.0.113.7".parse().unwrap());
    req.headers_mut()
        .insert("connection", "x-hop".parse().unwrap());
    req.headers_mut().insert("x-hop", "secret".parse().unwrap());
    req.headers_mut().insert("te", "trailers".parse().unwrap());
    let seen = send_once(listener.local_addr(), req).await.echo();
    assert_eq!(
        seen.header("x-forwarded-for"),
        vec!["203.0.113.7, 127.0.0.1"]
    );
    assert_eq!(seen.header("x-forwarded-proto"), vec!["http"]);
    assert!(seen.header("x-hop").is_empty(), "{seen:?}");
    assert!(seen.header("te").is_empty(), "{seen:?}");
    assert_eq!(seen.header("host"), vec!["gateway.test"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_is_served() {
    let e = echo("h2-backend").await;
    let (_proxy, listener) = proxy_to(e.local_addr(), test_config()).await;
    let stream = tokio::net::TcpStream::connect(listener.local_addr())
        .await
        .unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    tokio::spawn(conn);
    for i in 0..3 {
        let req = Request::builder()
            .uri(format!("http://gateway.test/h2/{i}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.expect("h2 request");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.version(), http::Version::HTTP_2);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let seen: splitter::echo::EchoReply = serde_json::from_slice(&body).unwrap();
        assert_eq!(seen.path, format!("/h2/{i}"));
        assert_eq!(seen.header("host"), vec!["gateway.test"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_is_streamed_through() {
    let e = echo("e").await;
    let (_proxy, listener) = proxy_to(e.local_addr(), test_config()).await;
    const SIZE: usize = 8 << 20;
    let req = Request::builder()
        .method("POST")
        .uri("/upload")
        .header("host", "gateway.test")
        .body(Full::new(Bytes::from(vec![7u8; SIZE])))
        .unwrap();
    let seen = send_once(listener.local_addr(), req).await.echo();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body_bytes, SIZE as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_upgrade_is_spliced() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let e = echo("e").await;
    let (_proxy, listener) = proxy_to(e.local_addr(), test_config()).await;
    let mut s = tokio::net::TcpStream::connect(listener.local_addr())
        .await
        .unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: gateway.test\r\nConnection: Upgrade\r\nUpgrade: echo-bytes\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: echo-bytes"), "{head}");
    for msg in [&b"ping"[..], b"a longer second message"] {
        s.write_all(msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).await.unwrap();
        assert_eq!(back, msg);
    }
}
