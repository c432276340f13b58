//! The L7 actuator: listeners follow the plan's map of address to table, changing only what
//! changed, and a port that cannot be bound does not stop the others.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use crate::support::*;
use splitter::dataplane::proxy::{L7Listeners, Proxy, ProxyMetrics};
use splitter_plan::plan::l7::L7RouteTable;

fn plan(entries: &[(SocketAddr, &L7RouteTable)]) -> BTreeMap<SocketAddr, Arc<L7RouteTable>> {
    entries
        .iter()
        .map(|(a, t)| (*a, Arc::new((*t).clone())))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_follow_the_plan() {
    let (one, two) = (echo("one").await, echo("two").await);
    let to_one = table(vec![prefix_route(
        "r",
        "/",
        vec![backend("one", 1, &[one.local_addr()])],
    )]);
    let to_two = table(vec![prefix_route(
        "r",
        "/",
        vec![backend("two", 1, &[two.local_addr()])],
    )]);
    let a: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let b: SocketAddr = "127.0.0.2:0".parse().unwrap();
    let mut l7 = L7Listeners::new(Proxy::new(test_config(), ProxyMetrics::default()));

    let report = l7.apply(&plan(&[(a, &to_one)])).await;
    assert_eq!(report.started, vec![a]);
    let bound_a = l7.local_addr(&a).unwrap();
    let mut conn = Connection::open(bound_a).await;
    assert_eq!(conn.get("/hostname").await.text(), "one");

    let report = l7.apply(&plan(&[(a, &to_one)])).await;
    assert!(
        report.started.is_empty() && report.updated.is_empty(),
        "{report:?}"
    );

    let report = l7.apply(&plan(&[(a, &to_two)])).await;
    assert_eq!(report.updated, vec![a]);
    assert_eq!(l7.local_addr(&a), Some(bound_a), "same socket, new table");
    assert_eq!(
        conn.get("/hostname").await.text(),
        "two",
        "same keep-alive connection"
    );

    let report = l7.apply(&plan(&[(b, &to_one)])).await;
    assert_eq!((report.stopped, report.started), (vec![a], vec![b]));
    let bound_b = l7.local_addr(&b).unwrap();
    assert_eq!(get_once(bound_b, "/hostname").await.text(), "one");
    assert!(
        tokio::net::TcpStream::connect(bound_a).await.is_err(),
        "a listener left out of the plan stops accepting"
    );

    // A port someone else holds: reported, and the other listener keeps serving.
    let squatter = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let taken = squatter.local_addr().unwrap();
    let report = l7.apply(&plan(&[(b, &to_one), (taken, &to_two)])).await;
    assert_eq!(report.failed.len(), 1, "{report:?}");
    assert!(report.failed[0].to_string().contains(&taken.to_string()));
    assert_eq!(get_once(bound_b, "/hostname").await.text(), "one");
    drop(squatter);
    let report = l7.apply(&plan(&[(b, &to_one), (taken, &to_two)])).await;
    assert_eq!(report.started, vec![taken], "retried on the next apply");
    assert_eq!(get_once(taken, "/hostname").await.text(), "two");

    l7.shutdown().await;
    assert!(tokio::net::TcpStream::connect(bound_b).await.is_err());
}

/// The bind addresses of one Gateway listener (`0.0.0.0` and `[::]`) get one table: they serve
/// one compiled copy and one balancer, so requests split over both keep the exact sequence
/// (weights 1/1 alternate a, b, a, b whichever address each request comes through). With a
/// table per address each would start its own sequence: a, a, b, b.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_addresses_of_one_listener_share_one_table_and_balancer() {
    let (one, two) = (echo("one").await, echo("two").await);
    let table = Arc::new(table(vec![prefix_route(
        "r",
        "/",
        vec![
            backend("one", 1, &[one.local_addr()]),
            backend("two", 1, &[two.local_addr()]),
        ],
    )]));
    let a: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let b: SocketAddr = "127.0.0.2:0".parse().unwrap();
    let desired = BTreeMap::from([(a, table.clone()), (b, table.clone())]);
    let mut l7 = L7Listeners::new(Proxy::new(test_config(), ProxyMetrics::default()));
    let report = l7.apply(&desired).await;
    assert_eq!(report.started, vec![a, b]);
    let (bound_a, bound_b) = (l7.local_addr(&a).unwrap(), l7.local_addr(&b).unwrap());
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(get_once(bound_a, "/hostname").await.text());
        seen.push(get_once(bound_b, "/hostname").await.text());
    }
    assert_eq!(
        seen,
        ["one", "two", "one", "two", "one", "two", "one", "two"]
    );

    // A new plan (a new, equal table for both): still one balancer, and it carried over.
    let again = Arc::new((*table).clone());
    let report = l7
        .apply(&BTreeMap::from([(a, again.clone()), (b, again)]))
        .await;
    assert!(report.updated.is_empty(), "unchanged: {report:?}");
    seen.clear();
    for _ in 0..2 {
        seen.push(get_once(bound_b, "/hostname").await.text());
        seen.push(get_once(bound_a, "/hostname").await.text());
    }
    assert_eq!(seen, ["one", "two", "one", "two"]);
    l7.shutdown().await;
}
