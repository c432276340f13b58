//! Route tables swapped under continuous traffic: no request fails because of a reload, on
//! kept-alive connections or on fresh ones.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::support::*;
use splitter_plan::plan::l7::L7RouteTable;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_swaps_under_load_lose_nothing() {
    let (a, b, c) = (echo("a").await, echo("b").await, echo("c").await);
    // Two plans that differ in every way a reload can: weights, backend sets, a rewrite, an
    // extra route. Both serve /svc/hostname with one of the three names.
    let plan_one = {
        let mut r = prefix_route(
            "svc",
            "/svc",
            vec![
                backend("a", 200, &[a.local_addr()]),
                backend("b", 100, &[b.local_addr()]),
            ],
        );
        r.filters.push(strip_path());
        table(vec![r])
    };
    let plan_two = {
        let mut r = prefix_route(
            "svc",
            "/svc",
            vec![
                backend("b", 1, &[b.local_addr()]),
                backend("c", 3, &[c.local_addr(), c.local_addr()]),
            ],
        );
        r.filters.push(strip_path());
        let other = prefix_route("other", "/other", vec![backend("a", 1, &[a.local_addr()])]);
        table(vec![other, r])
    };
    let (_proxy, listener) = start_proxy(&plan_one).await;
    let addr = listener.local_addr();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for client in 0..4 {
        let (stop, ok) = (stop.clone(), ok.clone());
        clients.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            // Half the clients keep one connection, half open one per request.
            let mut conn = Connection::open(addr).await;
            while !stop.load(Ordering::Relaxed) {
                let reply = if client % 2 == 0 {
                    conn.send(get("/svc/hostname")).await
                } else {
                    Connection::open(addr)
                        .await
                        .send(get("/svc/hostname"))
                        .await
                };
                match reply {
                    Ok(r) if r.status == 200 && ["a", "b", "c"].contains(&r.text().as_str()) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.push(format!("{} {}", r.status, r.text())),
                    Err(e) => failures.push(e.to_string()),
                }
            }
            failures
        }));
    }

    let swap = |t: &L7RouteTable| assert!(listener.install(t).is_empty());
    for i in 0..50 {
        swap(if i % 2 == 0 { &plan_two } else { &plan_one });
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for c in clients {
        failures.extend(c.await.expect("client task"));
    }
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        ok.load(Ordering::Relaxed) > 100,
        "traffic kept flowing through the swaps"
    );
    // The last install wins: plan_one.
    let mut conn = Connection::open(addr).await;
    let mut names = Vec::new();
    for _ in 0..3 {
        names.push(conn.get("/svc/hostname").await.text());
    }
    assert!(names.iter().all(|n| n == "a" || n == "b"), "{names:?}");
}
