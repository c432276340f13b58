//! The admin endpoint over real HTTP: health, readiness, Prometheus metrics fed by proxied
//! requests, and the plan as JSON.

use std::{sync::Arc, time::Duration};

use crate::support::*;
use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use splitter::{
    admin::{AdminServer, AdminState, Readiness, plan_snapshot},
    dataplane::proxy::{Proxy, ProxyMetrics},
    health::Heartbeat,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_pages() {
    let e = echo("e").await;
    let t = table(vec![prefix_route(
        "metered",
        "/",
        vec![backend("e", 1, &[e.local_addr()])],
    )]);
    let metrics = ProxyMetrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    let proxy = Proxy::new(test_config(), metrics);
    let (listener, _) = proxy.listen(loopback(), &t).await.unwrap();

    let readiness = Readiness::default();
    let current = Arc::new(ArcSwap::from_pointee(t.clone()));
    let admin = AdminServer::serve(
        loopback(),
        AdminState {
            registry: Arc::new(registry),
            readiness: readiness.clone(),
            plan: plan_snapshot(current.clone()),
            kernel: None,
            heartbeat: None,
            status: None,
            binds: None,
        },
    )
    .await
    .unwrap();
    let addr = admin.local_addr();

    assert_eq!(get_once(addr, "/healthz").await.status, 200);
    assert_eq!(get_once(addr, "/readyz").await.status, 503);
    readiness.set(true);
    assert_eq!(get_once(addr, "/readyz").await.status, 200);
    assert_eq!(get_once(addr, "/nope").await.status, 404);

    let mut conn = Connection::open(listener.local_addr()).await;
    for _ in 0..3 {
        assert_eq!(conn.get("/hostname").await.status, 200);
    }
    let metrics = get_once(addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    let line = text
        .lines()
        .find(|l| {
            l.starts_with("splitter_l7_requests_total{")
                && l.contains("route=\"default/metered/0\"")
                && l.contains("backend=\"default/e:80\"")
                && l.contains("status=\"200\"")
        })
        .unwrap_or_else(|| panic!("no request counter in:\n{text}"));
    assert!(line.ends_with(" 3"), "{line}");
    assert!(
        text.contains("splitter_l7_request_duration_seconds_bucket{"),
        "{text}"
    );

    let plan = get_once(addr, "/debug/plan").await;
    assert_eq!(plan.headers["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_slice(&plan.body).unwrap();
    assert_eq!(json["routes"][0]["route"]["name"], "metered");
    // The page follows the plan as it is replaced.
    current.store(Arc::new(table(vec![])));
    let json: serde_json::Value =
        serde_json::from_slice(&get_once(addr, "/debug/plan").await.body).unwrap();
    assert_eq!(json["routes"].as_array().map(Vec::len), Some(0));

    // The allocator's report, for telling held memory from fragmentation.
    let heap = get_once(addr, "/debug/heap").await;
    assert_eq!(heap.status, 200);
    assert!(heap.text().contains("Allocated:"), "{}", heap.text());
    admin.shutdown().await;
}

/// `/healthz` follows the control loop's heartbeat: green while it beats, 503 saying so once
/// the last beat is older than the bound (a stalled loop), green again when it beats.
#[tokio::test]
async fn healthz_fails_while_the_control_loop_does_not_beat() {
    let heartbeat = Heartbeat::with_bound(Duration::from_millis(200));
    let admin = AdminServer::serve(
        loopback(),
        AdminState {
            registry: Arc::new(Registry::default()),
            readiness: Readiness::default(),
            plan: Arc::new(|| serde_json::Value::Null),
            kernel: None,
            heartbeat: Some(heartbeat.clone()),
            status: None,
            binds: None,
        },
    )
    .await
    .unwrap();
    let addr = admin.local_addr();
    let r = get_once(addr, "/healthz").await;
    assert_eq!(r.status, 503, "never beaten: {}", r.text());
    heartbeat.beat();
    assert_eq!(get_once(addr, "/healthz").await.status, 200);
    // The loop stalls.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = get_once(addr, "/healthz").await;
    assert_eq!(r.status, 503);
    assert!(
        r.text().contains("the control loop has not run for"),
        "{}",
        r.text()
    );
    heartbeat.beat();
    assert_eq!(get_once(addr, "/healthz").await.status, 200);
    admin.shutdown().await;
}
