//! The reference user journey (DESIGN section 1), over real HTTP: two echo Services behind one
//! prefix route with the strip-path rewrite; 200 requests over one keep-alive connection split
//! 100/100 by default and 133/67 after the weights are patched to 200/100.

use crate::support::*;
use splitter_plan::plan::l7::{L7RouteTable, PathMatch};

fn guide_table(
    echo: std::net::SocketAddr,
    echo2: std::net::SocketAddr,
    w1: u32,
    w2: u32,
) -> L7RouteTable {
    let mut r = prefix_route(
        "echo",
        "/echo",
        vec![backend("echo", w1, &[echo]), backend("echo2", w2, &[echo2])],
    );
    r.filters.push(strip_path());
    table(vec![r])
}

async fn two_hundred(conn: &mut Connection) -> Vec<Reply> {
    let mut out = Vec::with_capacity(200);
    for i in 1..=200 {
        out.push(conn.get(&format!("/echo/hostname?iteration={i}")).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guide_default_weights_then_patched_weights() {
    let (echo, echo2) = (echo("echo").await, echo("echo2").await);
    let (_proxy, listener) =
        start_proxy(&guide_table(echo.local_addr(), echo2.local_addr(), 1, 1)).await;

    let mut conn = Connection::open(listener.local_addr()).await;
    let counts = tally(&two_hundred(&mut conn).await);
    assert_eq!(counts.get("echo"), Some(&100), "{counts:?}");
    assert_eq!(counts.get("echo2"), Some(&100), "{counts:?}");
    assert_eq!(counts.len(), 2, "only the two pod names answer: {counts:?}");

    // `kubectl patch` the weights to 200/100; the same curl (a new keep-alive connection).
    let issues = listener.install(&guide_table(
        echo.local_addr(),
        echo2.local_addr(),
        200,
        100,
    ));
    assert!(issues.is_empty(), "{issues:?}");
    let mut conn = Connection::open(listener.local_addr()).await;
    let counts = tally(&two_hundred(&mut conn).await);
    assert_eq!(counts.get("echo"), Some(&133), "{counts:?}");
    assert_eq!(counts.get("echo2"), Some(&67), "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strip_path_forwards_the_rest_of_the_path() {
    let backend_srv = echo("echo").await;
    let (_proxy, listener) = start_proxy(&guide_table(
        backend_srv.local_addr(),
        backend_srv.local_addr(),
        1,
        0,
    ))
    .await;
    let mut conn = Connection::open(listener.local_addr()).await;
    let seen = conn.get("/echo/some/deep/path?x=1").await.echo();
    assert_eq!(seen.path, "/some/deep/path");
    assert_eq!(seen.query.as_deref(), Some("x=1"));
    let seen = conn.get("/echo").await.echo();
    assert_eq!(seen.path, "/");
    // `/echoes` is not under the `/echo` prefix.
    assert_eq!(conn.get("/echoes").await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_sequence_survives_an_unrelated_reload() {
    let (echo, echo2) = (echo("echo").await, echo("echo2").await);
    let t = guide_table(echo.local_addr(), echo2.local_addr(), 200, 100);
    let (_proxy, listener) = start_proxy(&t).await;
    let mut conn = Connection::open(listener.local_addr()).await;
    let mut replies = Vec::new();
    for i in 1..=100 {
        replies.push(conn.get(&format!("/echo/hostname?iteration={i}")).await);
    }
    // Another route appears (some other HTTPRoute changed); this rule's backendRefs did not.
    let mut changed = t.clone();
    changed.routes.push(
        route(
            "other",
            PathMatch::Exact("/other".into()),
            vec![backend("echo", 1, &[echo.local_addr()])],
        )
        .into(),
    );
    assert!(listener.install(&changed).is_empty());
    for i in 101..=200 {
        replies.push(conn.get(&format!("/echo/hostname?iteration={i}")).await);
    }
    // Restarting the sequence at the reload would give 67+67 / 33+33 = 134/66.
    let counts = tally(&replies);
    assert_eq!(counts.get("echo"), Some(&133), "{counts:?}");
    assert_eq!(counts.get("echo2"), Some(&67), "{counts:?}");
}
