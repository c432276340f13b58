//! Backends that fail: a timeout gives 504, a dead endpoint 502, and neither disturbs the
//! requests that go elsewhere.

use std::time::{Duration, Instant};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_timeout_gives_504() {
    let slow = echo("slow").await;
    let mut r = prefix_route("slow", "/", vec![backend("slow", 1, &[slow.local_addr()])]);
    r.timeouts.request = Some(Duration::from_millis(300));
    let (_proxy, listener) = start_proxy(&table(vec![r])).await;
    let mut conn = Connection::open(listener.local_addr()).await;

    let mut late = get("/slow");
    late.headers_mut()
        .insert("x-echo-delay-ms", "5000".parse().unwrap());
    let started = Instant::now();
    let reply = conn.send(late).await.expect("the proxy answers");
    assert_eq!(reply.status, 504);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "answered at the timeout, not after the backend"
    );

    // Within the timeout the same route works, on the same client connection.
    let mut prompt = get("/fast");
    prompt
        .headers_mut()
        .insert("x-echo-delay-ms", "10".parse().unwrap());
    assert_eq!(conn.send(prompt).await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_request_timeout_gives_504() {
    let slow = echo("slow").await;
    let mut r = prefix_route("slow", "/", vec![backend("slow", 1, &[slow.local_addr()])]);
    r.timeouts.request = Some(Duration::from_secs(30));
    r.timeouts.backend_request = Some(Duration::from_millis(300));
    let (_proxy, listener) = start_proxy(&table(vec![r])).await;
    let mut late = get("/slow");
    late.headers_mut()
        .insert("x-echo-delay-ms", "5000".parse().unwrap());
    assert_eq!(send_once(listener.local_addr(), late).await.status, 504);
}

/// An address nothing listens on: bind an ephemeral port, then close it.
async fn dead_address() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoint_gives_502_and_live_one_keeps_serving() {
    let live = echo("live").await;
    let dead = dead_address().await;
    let t = table(vec![prefix_route(
        "half-dead",
        "/",
        vec![backend("svc", 1, &[live.local_addr(), dead])],
    )]);
    let (_proxy, listener) = start_proxy(&t).await;
    let mut conn = Connection::open(listener.local_addr()).await;
    let mut replies = Vec::new();
    for _ in 0..10 {
        replies.push(conn.get("/hostname").await);
    }
    let counts = tally(&replies);
    assert_eq!(counts.get("live"), Some(&5), "{counts:?}");
    assert_eq!(counts.get("502"), Some(&5), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_dying_mid_flight_gives_502() {
    let doomed = echo("doomed").await;
    let addr = doomed.local_addr();
    let (_proxy, listener) = proxy_to(addr, test_config()).await;
    let mut conn = Connection::open(listener.local_addr()).await;
    assert_eq!(conn.get("/hostname").await.text(), "doomed");
    doomed.shutdown().await;
    // The pooled upstream connection is gone and nothing listens any more.
    assert_eq!(conn.get("/hostname").await.status, 502);
}

/// A backend that answers every request with keep-alive framing and then closes the
/// connection anyway, as a backend whose idle timeout fires between two requests does.
async fn closing_backend() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nclosed")
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_closing_idle_connections_loses_no_request() {
    let addr = closing_backend().await;
    let (_proxy, listener) = proxy_to(addr, test_config()).await;
    let mut conn = Connection::open(listener.local_addr()).await;
    // Each request finds the previous upstream connection closed, or about to be: it is either
    // skipped in the pool or, when the close arrives while the request is being sent, retried
    // on a fresh connection. Never a 502.
    for i in 0..50 {
        let reply = conn.get("/x").await;
        assert_eq!(reply.status, 200, "request {i}: {reply:?}");
        assert_eq!(reply.text(), "closed");
    }
}
