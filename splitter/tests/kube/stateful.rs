//! The agent's kube source, control loop, Lease and status writer against the stateful mock
//! API server ([`crate::apiserver`]): what happens when versions move, history is compacted,
//! writes race and leadership changes hands.

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};
use splitter::{
    control::{self, LoopSettings, PlanMetrics},
    status::{self, LeaseConfig, Observed, WriterConfig},
};
use splitter_plan::{
    access,
    model::{Kind, ObjectKey},
    plan::{Plan, PlanConfig, status::ConditionStatus},
};
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};

use crate::{
    apiserver::{
        ApiServer, Logged, agent_resources,
        store::{Part, resource_id},
    },
    support::{eventually, yaml},
};

const WAIT: Duration = Duration::from_secs(15);
const NS: &str = "splitter-system";
const OURS: &str = "splitter.dev/gateway-controller";

fn httproutes() -> String {
    resource_id("gateway.networking.k8s.io", "v1", "httproutes")
}

fn route(backends: Value) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": "split", "namespace": "infra"},
        "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": backends}]}
    })
}

fn two_backends() -> Value {
    route(json!([{"name": "a", "port": 8080}, {"name": "b", "port": 8080}]))
}

/// A server of every kind the agent watches but `except`, holding the plan fixtures and the
/// route `infra/split` over Services a and b.
fn seeded(except: &[&str]) -> ApiServer {
    let api = ApiServer::new(agent_resources(except));
    for o in yaml("../splitter-plan/tests/fixtures/base.yaml") {
        api.put(o);
    }
    api.put(two_backends());
    api
}

/// One agent's kube half: source and control loop, and (after [`Agent::write_status`]) the
/// Lease campaign and the status writer. Dropping it stops every task, as a killed pod.
struct Agent {
    node: String,
    client: kube::Client,
    plans: watch::Receiver<Option<Arc<Plan>>>,
    observed: watch::Receiver<Arc<Observed>>,
    metrics: PlanMetrics,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn agent(api: &ApiServer, node: &str) -> Agent {
    let client = api.client(node).await;
    let (updates_tx, updates) = mpsc::channel(4);
    let (observed_tx, observed) = watch::channel(Arc::default());
    let (plans_tx, plans) = watch::channel(None);
    let metrics = PlanMetrics::default();
    let settings = LoopSettings {
        metrics: metrics.clone(),
        ..Default::default()
    };
    let tasks = vec![
        tokio::spawn(splitter::source::kube::run(
            client.clone(),
            updates_tx,
            observed_tx,
        )),
        tokio::spawn(control::run(
            updates,
            PlanConfig::default(),
            plans_tx,
            watch::channel(Default::default()).1,
            settings,
        )),
    ];
    Agent {
        node: node.into(),
        client,
        plans,
        observed,
        metrics,
        tasks,
    }
}

impl Agent {
    fn plan(&self) -> Arc<Plan> {
        self.plans.borrow().clone().unwrap_or_default()
    }

    /// Starts campaigning for the Lease (1 s, looked at every 100 ms) and writing status while
    /// holding it.
    fn write_status(&mut self) {
        let (leader_tx, leader) = watch::channel(false);
        let lease = LeaseConfig {
            duration: Duration::from_secs(1),
            renew_every: Duration::from_millis(100),
            ..LeaseConfig::new(NS, &self.node)
        };
        let leases = kube::Api::namespaced(self.client.clone(), NS);
        self.tasks
            .push(tokio::spawn(status::lease::run(leases, lease, leader_tx)));
        let config = WriterConfig {
            controller_name: OURS.into(),
            default_addresses: Vec::new(),
            agent_pods: None,
            resync: Duration::from_secs(3600),
        };
        let (client, plans, observed) = (
            self.client.clone(),
            self.plans.clone(),
            self.observed.clone(),
        );
        self.tasks.push(tokio::spawn(async move {
            // No node report: the plan's conditions are written as they are.
            let (_, reports) = watch::channel(None);
            status::writer::run(client, config, plans, observed, leader, reports).await;
        }));
    }
}

fn weights(plan: &Plan) -> Vec<u32> {
    plan.listeners
        .iter()
        .find(|l| l.key().port == 80)
        .and_then(|l| l.l4())
        .map(|l4| l4.backends.iter().map(|b| b.weight).collect())
        .unwrap_or_default()
}

fn resolved(plan: &Plan) -> Option<(ConditionStatus, String)> {
    plan.routes
        .first()
        .and_then(|r| r.parents.first())
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == "ResolvedRefs"))
        .map(|c| (c.status, c.reason.clone()))
}

/// The controllers with an entry in the stored route's `status.parents`.
fn parent_controllers(api: &ApiServer) -> Vec<String> {
    api.get(&httproutes(), "infra", "split")
        .and_then(|r| r["status"]["parents"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p["controllerName"].as_str().map(str::to_string))
        .collect()
}

/// Walks the log in order, following the Lease holder as last written: checks that every
/// status write that went through, and every read of the latest Lease (a renewal's), came from
/// the holder of that moment; returns the status writers in turn.
fn writes_by_holders(log: &[Logged]) -> Vec<String> {
    let mut holder: Option<&str> = None;
    let mut writers: Vec<String> = Vec::new();
    let mut renewals = 0;
    for l in log {
        let ok = (200..300).contains(&l.code);
        if ok && l.is_write() && l.path.contains("/leases") {
            holder = l.body["spec"]["holderIdentity"].as_str();
        }
        if ok && is_status_write(l) {
            assert_eq!(holder, Some(l.client.as_str()), "{l:#?}");
            if writers.last() != Some(&l.client) {
                writers.push(l.client.clone());
            }
        }
        // Followers read the API server's cache; only the holder asks for the latest.
        if l.method == "GET" && l.path.contains("/leases/") && l.param("resourceVersion").is_none()
        {
            assert_eq!(
                holder,
                Some(l.client.as_str()),
                "a latest read by a follower: {l:#?}"
            );
            renewals += 1;
        }
    }
    assert!(renewals >= 1, "the holder never renewed");
    writers
}

fn is_status_write(l: &Logged) -> bool {
    l.method == "PATCH" && l.path.ends_with("/status")
}

async fn all_watching(api: &ApiServer, watches: usize) {
    eventually(WAIT, "every kind watched", || {
        access::WATCHED
            .iter()
            .all(|r| api.log().iter().filter(|l| l.is_watch_of(r.plural)).count() >= watches)
    })
    .await;
}

#[tokio::test]
async fn lists_come_from_the_watch_cache_and_watches_ask_for_bookmarks() {
    let api = seeded(&[]);
    let listed_at = api.resource_version().to_string();
    let a = agent(&api, "node-a").await;
    eventually(WAIT, "the first plan", || weights(&a.plan()) == [1, 1]).await;
    all_watching(&api, 1).await;
    for r in &access::WATCHED {
        let log = api.log();
        let lists: Vec<&Logged> = log.iter().filter(|l| l.is_list_of(r.plural)).collect();
        assert_eq!(lists.len(), 1, "{}", r.plural);
        // `resourceVersion=0`: any version the watch cache holds, no quorum read of etcd.
        assert_eq!(
            lists[0].param("resourceVersion"),
            Some("0"),
            "{:?}",
            lists[0]
        );
        assert_eq!(lists[0].param("resourceVersionMatch"), Some("NotOlderThan"));
        assert_eq!(lists[0].param("limit"), None, "{:?}", lists[0]);
        let watch = log.iter().find(|l| l.is_watch_of(r.plural)).unwrap();
        assert_eq!(
            watch.param("allowWatchBookmarks"),
            Some("true"),
            "{watch:?}"
        );
        // The watch starts where the list was.
        assert_eq!(watch.param("resourceVersion"), Some(listed_at.as_str()));
    }
}

#[tokio::test]
async fn a_bookmark_keeps_a_quiet_watch_resumable_after_compaction() {
    let api = seeded(&[]);
    let a = agent(&api, "node-a").await;
    eventually(WAIT, "the first plan", || weights(&a.plan()) == [1, 1]).await;
    all_watching(&api, 1).await;
    // Other writes move the version on; only the Service watch sees them.
    for i in 0..5 {
        api.put(json!({"apiVersion": "v1", "kind": "Service",
                       "metadata": {"name": format!("churn-{i}"), "namespace": "other"},
                       "spec": {"ports": [{"port": 80}]}}));
    }
    let bookmarks = api.bookmark();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The connections drop (an API server restart) and the history goes with them.
    api.partition();
    api.compact();
    api.heal();
    all_watching(&api, 2).await;
    // Every watch resumed from its bookmark: no 410, no relist.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = api.log();
    assert!(
        log.iter().all(|l| l.watch_error.is_none()),
        "{:#?}",
        log.iter()
            .filter(|l| l.watch_error.is_some())
            .collect::<Vec<_>>()
    );
    for r in &access::WATCHED {
        assert_eq!(
            log.iter().filter(|l| l.is_list_of(r.plural)).count(),
            1,
            "{}",
            r.plural
        );
    }
    assert_eq!(bookmarks, access::WATCHED.len());
    // And the resumed watches deliver.
    api.put(route(json!([{"name": "a", "port": 8080, "weight": 200},
                         {"name": "b", "port": 8080, "weight": 100}])));
    eventually(WAIT, "weights 200/100", || weights(&a.plan()) == [200, 100]).await;
}

#[tokio::test]
async fn a_watch_from_a_compacted_version_relists_and_converges() {
    let api = seeded(&[]);
    let a = agent(&api, "node-a").await;
    eventually(WAIT, "the first plan", || {
        resolved(&a.plan()) == Some((ConditionStatus::True, "ResolvedRefs".into()))
    })
    .await;
    all_watching(&api, 1).await;
    // While the agent is cut off, Service b goes and the history of it is compacted away.
    api.partition();
    api.delete(&resource_id("", "v1", "services"), "infra", "b");
    api.compact();
    api.heal();
    eventually(WAIT, "the relist without Service b", || {
        resolved(&a.plan()) == Some((ConditionStatus::False, "BackendNotFound".into()))
    })
    .await;
    let log = api.log();
    let services: Vec<&Logged> = log
        .iter()
        .filter(|l| l.is_watch_of("services") || l.is_list_of("services"))
        .collect();
    assert!(
        services.iter().any(|l| l.watch_error == Some(410)),
        "{services:#?}"
    );
    let relists: Vec<&&Logged> = services
        .iter()
        .filter(|l| l.is_list_of("services"))
        .collect();
    assert_eq!(relists.len(), 2, "{services:#?}");
    assert!(
        relists
            .iter()
            .all(|l| l.param("resourceVersion") == Some("0"))
    );
}

#[tokio::test]
async fn a_kind_the_server_does_not_serve_is_answered_404_and_the_rest_is_planned() {
    // Gateway API before v1.6: no TCPRoute/UDPRoute v1. The agent must count them as empty,
    // or no plan is ever published (every kind must be listed first).
    let api = seeded(&["tcproutes", "udproutes"]);
    let a = agent(&api, "node-a").await;
    eventually(WAIT, "the plan without L4 routes", || {
        weights(&a.plan()) == [1, 1]
    })
    .await;
    let log = api.log();
    let tcp = log
        .iter()
        .find(|l| l.is_list_of("tcproutes"))
        .expect("a list");
    assert_eq!(tcp.code, 404);
    // Later kinds keep working.
    api.put(route(json!([{"name": "a", "port": 8080, "weight": 3},
                         {"name": "b", "port": 8080, "weight": 1}])));
    eventually(WAIT, "weights 3/1", || weights(&a.plan()) == [3, 1]).await;
}

#[tokio::test]
async fn a_status_write_on_a_stale_version_gets_409_and_is_retried_on_the_new_one() {
    let api = seeded(&[]);
    // Between the agent's read and its write, another controller adds its own parent entry.
    let other = json!({"parentRef": {"name": "mesh", "kind": "Service", "group": ""},
                       "controllerName": "example.com/mesh",
                       "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                       "message": "", "observedGeneration": 1,
                                       "lastTransitionTime": "2026-01-01T00:00:00Z"}]});
    let id = httproutes();
    api.race_next_write(
        |l| is_status_write(l) && l.path.ends_with("/httproutes/split/status"),
        move |store| {
            let patch = json!({"status": {"parents": [other]}});
            store
                .merge_patch(&id, "infra", "split", Part::Status, &patch)
                .unwrap()
                .1
        },
    );
    let mut a = agent(&api, "node-a").await;
    a.write_status();
    eventually(WAIT, "both controllers' entries", || {
        let c = parent_controllers(&api);
        c.contains(&"example.com/mesh".to_string()) && c.contains(&OURS.to_string())
    })
    .await;
    let log = api.log();
    let writes: Vec<&Logged> = log
        .iter()
        .filter(|l| is_status_write(l) && l.path.ends_with("/httproutes/split/status"))
        .collect();
    // No write that went through erased the other controller's entry.
    assert!(
        writes
            .iter()
            .filter(|w| w.code == 200)
            .all(|w| w.body["status"]["parents"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["controllerName"] == "example.com/mesh"))),
        "{writes:#?}"
    );
    assert_eq!(
        writes.iter().map(|w| w.code).collect::<Vec<_>>(),
        [409, 200],
        "{writes:#?}"
    );
    // Both carried the version they were computed from, the retry the one after the race.
    let v = |w: &Logged| {
        w.body["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_string)
    };
    let first: u64 = v(writes[0]).unwrap().parse().unwrap();
    let second: u64 = v(writes[1]).unwrap().parse().unwrap();
    assert!(second > first, "{first} then {second}");
}

#[tokio::test]
async fn the_echo_of_our_own_status_writes_builds_no_plan() {
    let api = seeded(&[]);
    let mut a = agent(&api, "node-a").await;
    eventually(WAIT, "the first plan", || weights(&a.plan()) == [1, 1]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let builds = a.metrics.builds();
    assert!(builds >= 1);
    a.write_status();
    // The class, the Gateway and the route, each written once and seen back by the watch.
    let key = ObjectKey::new(Kind::HttpRoute, "infra", "split");
    eventually(WAIT, "our status, echoed", || {
        a.observed.borrow().get(&key).is_some_and(|o| {
            o.status()["parents"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["controllerName"] == OURS))
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let log = api.log();
    let writes: Vec<&Logged> = log.iter().filter(|l| is_status_write(l)).collect();
    assert_eq!(writes.len(), 3, "{writes:#?}");
    assert!(writes.iter().all(|w| w.code == 200));
    assert_eq!(a.metrics.builds(), builds, "the echoes built a plan");
    assert!(a.metrics.unchanged() >= 1, "the echoes reached the loop");
}

#[tokio::test]
async fn the_lease_moves_to_the_second_agent_when_the_first_stops_and_never_both_write() {
    let api = seeded(&[]);
    let lease_id = resource_id("coordination.k8s.io", "v1", "leases");
    let holder = || {
        api.get(&lease_id, NS, "splitter-status-writer")
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    };
    let mut a = agent(&api, "node-a").await;
    let mut b = agent(&api, "node-b").await;
    a.write_status();
    b.write_status();
    eventually(WAIT, "our route status", || {
        parent_controllers(&api).contains(&OURS.to_string())
    })
    .await;
    let first = holder().expect("a holder");
    // The holder keeps renewing: well past the lease duration, nothing moves.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(holder().as_deref(), Some(first.as_str()));
    let (leader, follower) = if first == "node-a" { (a, b) } else { (b, a) };
    drop(leader);
    // A change only the new leader can write.
    api.put(route(
        json!([{"name": "a", "port": 8080}, {"name": "gone", "port": 8080}]),
    ));
    eventually(WAIT, "the takeover", || {
        holder() == Some(follower.node.clone())
    })
    .await;
    eventually(WAIT, "the new leader's status", || {
        api.get(&httproutes(), "infra", "split").is_some_and(|r| {
            r["status"]["parents"][0]["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["reason"] == "BackendNotFound")
        })
    })
    .await;
    let lease = api.get(&lease_id, NS, "splitter-status-writer").unwrap();
    assert_eq!(lease["spec"]["leaseTransitions"], 1);

    // The old leader's writes all came before the new one's.
    let log = api.log();
    assert_eq!(writes_by_holders(&log), [first, follower.node.clone()]);
    // The follower only read the Lease while it was held.
    assert!(
        log.iter()
            .any(|l| l.client == follower.node && l.method == "GET" && l.path.contains("/leases"))
    );
}

#[tokio::test]
async fn a_lease_create_that_loses_the_race_gets_409_and_the_agent_follows() {
    let api = seeded(&[]);
    let lease_id = resource_id("coordination.k8s.io", "v1", "leases");
    // node-z creates the Lease between node-a's read (none) and its create, then dies.
    let id = lease_id.clone();
    api.race_next_write(
        |l| l.method == "POST" && l.path.ends_with("/leases"),
        move |store| {
            let lease = json!({"metadata": {"name": "splitter-status-writer"},
                               "spec": {"holderIdentity": "node-z", "leaseDurationSeconds": 1}});
            Some(store.create(&id, NS, lease).unwrap().1)
        },
    );
    let mut a = agent(&api, "node-a").await;
    a.write_status();
    eventually(WAIT, "node-a's status after taking over", || {
        parent_controllers(&api).contains(&OURS.to_string())
    })
    .await;
    // A few renewals.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = api.log();
    let create = log
        .iter()
        .find(|l| l.method == "POST" && l.path.ends_with("/leases"))
        .expect("a create");
    assert_eq!(create.code, 409, "{create:#?}");
    // Nothing written while node-z held it: node-a's writes follow its takeover.
    assert_eq!(writes_by_holders(&log), ["node-a"]);
    let lease = api.get(&lease_id, NS, "splitter-status-writer").unwrap();
    assert_eq!(lease["spec"]["holderIdentity"], "node-a");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
}
