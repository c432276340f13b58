//! Request splitting across backendRefs and endpoints, and the shares the proxy answers itself
//! (DESIGN section 3): invalid share 500, no endpoints 503, all weights 0 500, no route 404;
//! and the upstream connection a keep-alive client's requests reuse.

use std::collections::{BTreeMap, BTreeSet};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seventy_thirty_zero_over_fresh_connections() {
    let (a1, a2, b1, b2, c1) = (
        echo("a1").await,
        echo("a2").await,
        echo("b1").await,
        echo("b2").await,
        echo("c1").await,
    );
    let t = table(vec![prefix_route(
        "split",
        "/",
        vec![
            backend("a", 70, &[a1.local_addr(), a2.local_addr()]),
            backend("b", 30, &[b1.local_addr(), b2.local_addr()]),
            backend("c", 0, &[c1.local_addr()]),
        ],
    )]);
    let (_proxy, listener) = start_proxy(&t).await;
    const N: usize = 1000;
    let mut replies = Vec::with_capacity(N);
    for _ in 0..N {
        replies.push(get_once(listener.local_addr(), "/hostname").await);
    }
    let counts = tally(&replies);
    let n = |k: &str| counts.get(k).copied().unwrap_or(0);
    let share = |x: usize| x as f64 * 100.0 / N as f64;
    let (a, b) = (n("a1") + n("a2"), n("b1") + n("b2"));
    assert_eq!(a + b, N, "every request answered by a or b: {counts:?}");
    assert!(
        (share(a) - 70.0).abs() <= 5.0,
        "a got {}%: {counts:?}",
        share(a)
    );
    assert!(
        (share(b) - 30.0).abs() <= 5.0,
        "b got {}%: {counts:?}",
        share(b)
    );
    assert_eq!(n("c1"), 0, "weight 0 gets nothing: {counts:?}");
    // The Service weight is split evenly over its endpoints; replica counts never skew it.
    assert!(n("a1").abs_diff(n("a2")) <= 1, "{counts:?}");
    assert!(n("b1").abs_diff(n("b2")) <= 1, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_count_does_not_skew_the_split() {
    let eps: Vec<_> = start_echoes(["x1", "x2", "x3", "y1"]).await;
    let t = table(vec![prefix_route(
        "skew",
        "/",
        vec![
            backend(
                "x",
                1,
                &[
                    eps[0].local_addr(),
                    eps[1].local_addr(),
                    eps[2].local_addr(),
                ],
            ),
            backend("y", 1, &[eps[3].local_addr()]),
        ],
    )]);
    let (_proxy, listener) = start_proxy(&t).await;
    let mut conn = Connection::open(listener.local_addr()).await;
    let mut replies = Vec::new();
    for _ in 0..300 {
        replies.push(conn.get("/hostname").await);
    }
    let counts = tally(&replies);
    let expected: BTreeMap<String, usize> = [("x1", 50), ("x2", 50), ("x3", 50), ("y1", 150)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    assert_eq!(counts, expected);
}

async fn start_echoes<const N: usize>(names: [&str; N]) -> Vec<splitter::echo::EchoServer> {
    let mut out = Vec::with_capacity(N);
    for n in names {
        out.push(echo(n).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_share_gets_500_and_is_not_redistributed() {
    let good = echo("good").await;
    let t = table(vec![prefix_route(
        "half-invalid",
        "/",
        vec![
            backend("good", 1, &[good.local_addr()]),
            invalid("missing", 1),
        ],
    )]);
    let (_proxy, listener) = start_proxy(&t).await;
    let mut conn = Connection::open(listener.local_addr()).await;
    let mut replies = Vec::new();
    for _ in 0..400 {
        replies.push(conn.get("/hostname").await);
    }
    let counts = tally(&replies);
    let errors = counts.get("500").copied().unwrap_or(0);
    assert!((180..=220).contains(&errors), "about half 500: {counts:?}");
    assert_eq!(
        counts.get("good").copied().unwrap_or(0) + errors,
        400,
        "{counts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_endpoints_gets_503() {
    let t = table(vec![prefix_route(
        "empty",
        "/",
        vec![no_endpoints("scaled-to-zero", 1)],
    )]);
    let (_proxy, listener) = start_proxy(&t).await;
    let mut conn = Connection::open(listener.local_addr()).await;
    for _ in 0..3 {
        assert_eq!(conn.get("/").await.status, 503);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_zero_weights_and_no_backends_get_500() {
    let e = echo("e").await;
    let t = table(vec![
        prefix_route("zero", "/zero", vec![backend("e", 0, &[e.local_addr()])]),
        prefix_route("none", "/none", vec![]),
    ]);
    let (_proxy, listener) = start_proxy(&t).await;
    let mut conn = Connection::open(listener.local_addr()).await;
    assert_eq!(conn.get("/zero").await.status, 500);
    assert_eq!(conn.get("/none").await.status, 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_matching_route_gets_404() {
    let e = echo("e").await;
    let t = table(vec![prefix_route(
        "only",
        "/api",
        vec![backend("e", 1, &[e.local_addr()])],
    )]);
    let (_proxy, listener) = start_proxy(&t).await;
    let mut conn = Connection::open(listener.local_addr()).await;
    assert_eq!(conn.get("/other").await.status, 404);
    assert_eq!(conn.get("/apix").await.status, 404);
    assert_eq!(conn.get("/api/x").await.status, 200);
    let (_proxy, empty) = start_proxy(&table(vec![])).await;
    assert_eq!(get_once(empty.local_addr(), "/").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upstream_connection_serves_a_keep_alive_client() {
    let e = echo("e").await;
    let (_proxy, listener) = proxy_to(e.local_addr(), test_config()).await;
    let mut conn = Connection::open(listener.local_addr()).await;
    // Each connection goes back to the pool with its response head, before the body is read;
    // by the next request it is ready again, and it is the one used, not a new one.
    let mut upstream_peers = BTreeSet::new();
    for _ in 0..50 {
        let reply = conn.get("/x").await;
        assert_eq!(reply.status, 200);
        upstream_peers.insert(reply.echo().peer);
    }
    assert_eq!(upstream_peers.len(), 1, "{upstream_peers:?}");
}
