//! The L7 agent loop: plans published on a channel become listeners, `/readyz` follows, and
//! shutdown drains in-flight requests before returning.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use crate::support::*;
use serde::Serialize;
use splitter::agent::{AgentConfig, L7Tables, run_l7};
use splitter_plan::plan::l7::L7RouteTable;
use tokio::sync::{oneshot, watch};

#[derive(Serialize)]
struct TestPlan {
    generation: u32,
    listeners: Vec<(SocketAddr, L7RouteTable)>,
}

fn tables(p: &TestPlan) -> L7Tables {
    p.listeners
        .iter()
        .map(|(a, t)| (*a, Arc::new(t.clone())))
        .collect::<BTreeMap<_, _>>()
}

async fn free_port() -> SocketAddr {
    let l = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    l.local_addr().unwrap()
}

/// Retries `check` until it holds; the agent applies plans asynchronously.
async fn eventually<F: AsyncFnMut() -> bool>(what: &str, mut check: F) {
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never happened: {what}");
}

async fn try_get(addr: SocketAddr, path: &str) -> Option<Reply> {
    let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    drop(stream);
    Some(get_once(addr, path).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plans_drive_listeners_until_shutdown() {
    let (one, two) = (echo("one").await, echo("two").await);
    let (admin, gw) = (free_port().await, free_port().await);
    let plan = |generation, name: &str, addr| {
        Arc::new(TestPlan {
            generation,
            listeners: vec![(
                gw,
                table(vec![prefix_route(
                    "r",
                    "/",
                    vec![backend(name, 1, &[addr])],
                )]),
            )],
        })
    };
    let (tx, rx) = watch::channel(None);
    let (stop, stopped) = oneshot::channel::<()>();
    let config = AgentConfig::new(admin, test_config());
    let agent = tokio::spawn(run_l7(config, rx, tables, async move {
        let _ = stopped.await;
    }));

    eventually(
        "admin answers, not ready",
        async || matches!(try_get(admin, "/readyz").await, Some(r) if r.status == 503),
    )
    .await;
    tx.send_replace(Some(plan(1, "one", one.local_addr())));
    eventually(
        "plan 1 served",
        async || matches!(try_get(gw, "/hostname").await, Some(r) if r.text() == "one"),
    )
    .await;
    assert_eq!(get_once(admin, "/readyz").await.status, 200);
    let shown: serde_json::Value =
        serde_json::from_slice(&get_once(admin, "/debug/plan").await.body).unwrap();
    assert_eq!(shown["generation"], 1);

    let mut conn = Connection::open(gw).await;
    tx.send_replace(Some(plan(2, "two", two.local_addr())));
    eventually("plan 2 served on the same connection", async || {
        conn.get("/hostname").await.text() == "two"
    })
    .await;

    let in_flight = tokio::spawn(async move {
        let mut slow = get("/slow");
        slow.headers_mut()
            .insert("x-echo-delay-ms", "800".parse().unwrap());
        conn.send(slow).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.send(()).unwrap();
    let reply = in_flight
        .await
        .unwrap()
        .expect("in-flight request finishes during the drain");
    assert_eq!(reply.status, 200);
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("agent returns after draining")
        .unwrap()
        .expect("agent ran without error");
    assert!(tokio::net::TcpStream::connect(gw).await.is_err());
    assert!(tokio::net::TcpStream::connect(admin).await.is_err());
}

/// A listener whose port another socket holds: `/readyz` fails naming the address and the OS
/// error, the other listener serves meanwhile, and once the port is free the retry binds it and
/// `/readyz` is green again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_whose_port_is_taken_fails_readyz_until_the_retry_binds_it() {
    let one = echo("one").await;
    let (admin, free) = (free_port().await, free_port().await);
    let squatter = std::net::TcpListener::bind(loopback()).unwrap();
    let taken = squatter.local_addr().unwrap();
    let route = || {
        table(vec![prefix_route(
            "r",
            "/",
            vec![backend("one", 1, &[one.local_addr()])],
        )])
    };
    let (tx, rx) = watch::channel(Some(Arc::new(TestPlan {
        generation: 1,
        listeners: vec![(free, route()), (taken, route())],
    })));
    let (stop, stopped) = oneshot::channel::<()>();
    let mut config = AgentConfig::new(admin, test_config());
    config.bind_retry = Duration::from_millis(100);
    let binds = config.binds.clone();
    let agent = tokio::spawn(run_l7(config, rx, tables, async move {
        let _ = stopped.await;
    }));

    eventually(
        "the free listener serves",
        async || matches!(try_get(free, "/hostname").await, Some(r) if r.text() == "one"),
    )
    .await;
    let ready = get_once(admin, "/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.text());
    assert!(
        ready
            .text()
            .contains(&format!("cannot listen on {taken}: Address already in use")),
        "{}",
        ready.text()
    );
    assert_eq!(binds.failed().len(), 1, "{:?}", binds.failed());
    // Retries keep failing while the port is held, and keep the agent running.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(get_once(admin, "/readyz").await.status, 503);

    drop(squatter);
    eventually(
        "the retry binds the freed port",
        async || matches!(try_get(taken, "/hostname").await, Some(r) if r.text() == "one"),
    )
    .await;
    let ready = get_once(admin, "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text());
    assert!(binds.failed().is_empty());
    assert_eq!(binds.snapshot().len(), 2);

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), agent)
        .await
        .expect("agent returns")
        .unwrap()
        .expect("agent ran without error");
    drop(tx);
}
