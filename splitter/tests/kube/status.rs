//! The status writer: the pure patch decisions (plain tests), then the exact requests the
//! writer sends to a scripted API, and the Lease that decides whether it sends any.

use std::{path::PathBuf, sync::Arc, time::Duration};

use crate::support::{MockApi, Recorded, eventually, not_found};
use serde_json::{Value, json};
use splitter::status::{
    self, LeaseConfig, Observed, ObservedStatus, StatusContext, WriterConfig, patches,
};
use splitter_plan::{
    model::{Kind, ObjectKey},
    plan::{self, Plan, PlanConfig},
};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(10);
const NOW: &str = "2026-11-27T01:00:00Z";
const CONTROLLER: &str = "splitter.dev/gateway-controller";
const QUERY: &str = "?&force=true&fieldManager=splitter.dev%2Fgateway-controller";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../splitter-plan/tests/fixtures")
        .join(name)
}

fn the_plan() -> Plan {
    let (index, report) =
        splitter::source::file::load(&[fixture("base.yaml"), fixture("status-reasons.yaml")]);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    plan::build(&index, &PlanConfig::default(), None)
}

/// Every object of the plan, seen with no status yet.
fn fresh(plan: &Plan) -> Observed {
    let mut keys = Vec::new();
    keys.extend(
        plan.gateway_classes
            .iter()
            .map(|c| ObjectKey::new(Kind::GatewayClass, "", &c.class.name)),
    );
    keys.extend(
        plan.gateways
            .iter()
            .map(|g| ObjectKey::new(Kind::Gateway, &g.gateway.namespace, &g.gateway.name)),
    );
    keys.extend(plan.routes.iter().map(|r| r.route.clone()));
    keys.into_iter()
        .map(|k| {
            let rv = format!("rv-{}", k.name);
            (
                k,
                Arc::new(ObservedStatus::new(Some(1), Some(rv), &Value::Null)),
            )
        })
        .collect()
}

fn ctx() -> StatusContext<'static> {
    StatusContext {
        controller_name: CONTROLLER,
        default_addresses: &[],
        node: None,
        now: NOW,
    }
}

fn route_key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey::new(Kind::HttpRoute, ns, name)
}

fn cond(type_: &str, status: &str, reason: &str, message: &str, generation: i64) -> Value {
    json!({"type": type_, "status": status, "reason": reason, "message": message,
           "observedGeneration": generation, "lastTransitionTime": NOW})
}

fn route_body(ns: &str, name: &str, section: Option<&str>, conditions: Vec<Value>) -> Value {
    let mut parent_ref = json!({"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                "namespace": "infra", "name": "gw"});
    if let Some(s) = section {
        parent_ref["sectionName"] = json!(s);
    }
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": ns, "resourceVersion": format!("rv-{name}")},
        "status": {"parents": [{
            "parentRef": parent_ref,
            "controllerName": CONTROLLER,
            "conditions": conditions,
        }]}
    })
}

/// The expected route patches: the accepted route and one per refusal or unresolved reason.
fn expected_routes() -> Vec<(ObjectKey, Value)> {
    let ok_resolved = |g| cond("ResolvedRefs", "True", "ResolvedRefs", "", g);
    let accepted = |g| cond("Accepted", "True", "Accepted", "", g);
    vec![
        (
            route_key("infra", "accepted"),
            route_body("infra", "accepted", None, vec![accepted(2), ok_resolved(2)]),
        ),
        (
            route_key("infra", "backend-not-found"),
            route_body(
                "infra",
                "backend-not-found",
                None,
                vec![
                    accepted(1),
                    cond(
                        "ResolvedRefs",
                        "False",
                        "BackendNotFound",
                        "backendRef infra/nonexistent:8080: Service not found",
                        1,
                    ),
                ],
            ),
        ),
        (
            route_key("infra", "invalid-kind"),
            route_body(
                "infra",
                "invalid-kind",
                None,
                vec![
                    accepted(1),
                    cond(
                        "ResolvedRefs",
                        "False",
                        "InvalidKind",
                        "backendRef infra/x: kind NonExistent in group unknownkind.example.com is not supported (only core Service)",
                        1,
                    ),
                ],
            ),
        ),
        (
            route_key("infra", "ref-not-permitted"),
            route_body(
                "infra",
                "ref-not-permitted",
                None,
                vec![
                    accepted(1),
                    cond(
                        "ResolvedRefs",
                        "False",
                        "RefNotPermitted",
                        "backendRef other/web:8080: no ReferenceGrant in namespace other allows HTTPRoutes from infra to Service web",
                        1,
                    ),
                ],
            ),
        ),
        (
            route_key("other", "not-allowed"),
            route_body(
                "other",
                "not-allowed",
                None,
                vec![
                    cond(
                        "Accepted",
                        "False",
                        "NotAllowedByListeners",
                        "no listener of Gateway infra/gw allows HTTPRoutes from namespace other",
                        1,
                    ),
                    ok_resolved(1),
                ],
            ),
        ),
        (
            route_key("infra", "no-matching-parent"),
            route_body(
                "infra",
                "no-matching-parent",
                Some("nope"),
                vec![
                    cond(
                        "Accepted",
                        "False",
                        "NoMatchingParent",
                        "no listener named \"nope\"",
                        1,
                    ),
                    ok_resolved(1),
                ],
            ),
        ),
    ]
}

#[test]
fn route_patches_for_each_reason() {
    let plan = the_plan();
    let out = patches(&plan, &fresh(&plan), &ctx());
    // GatewayClass, Gateway, six routes.
    assert_eq!(out.len(), 8, "{out:#?}");
    for (key, body) in expected_routes() {
        let p = out
            .iter()
            .find(|p| p.key == key)
            .unwrap_or_else(|| panic!("no patch for {key}"));
        assert_eq!(p.body, body, "{key}");
    }
}

#[test]
fn gateway_and_class_patches() {
    let plan = the_plan();
    let addresses = ["192.0.2.10".parse().unwrap()];
    let c = StatusContext {
        default_addresses: &addresses,
        ..ctx()
    };
    let out = patches(&plan, &fresh(&plan), &c);
    let class = out
        .iter()
        .find(|p| p.key.kind == Kind::GatewayClass)
        .unwrap();
    assert_eq!(
        class.body,
        json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
               "metadata": {"name": "splitter"},
               "status": {"conditions": [cond("Accepted", "True", "Accepted",
                                              "handled by splitter.dev/gateway-controller", 1)]}})
    );
    let gw = out.iter().find(|p| p.key.kind == Kind::Gateway).unwrap();
    let status = &gw.body["status"];
    // Gateways are not guarded by resourceVersion: their status is ours alone.
    assert_eq!(
        gw.body["metadata"],
        json!({"name": "gw", "namespace": "infra"})
    );
    assert_eq!(
        status["addresses"],
        json!([{"type": "IPAddress", "value": "192.0.2.10"}])
    );
    assert_eq!(
        status["conditions"],
        json!([
            cond("Accepted", "True", "Accepted", "", 3),
            cond("Programmed", "True", "Programmed", "", 3)
        ])
    );
    let listener = &status["listeners"][0];
    assert_eq!(listener["name"], "http");
    // accepted, backend-not-found, invalid-kind, ref-not-permitted: refused ones do not count.
    assert_eq!(listener["attachedRoutes"], 4);
    assert_eq!(
        listener["supportedKinds"],
        json!([
            {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"},
            {"group": "gateway.networking.k8s.io", "kind": "GRPCRoute"}
        ])
    );
    let types: Vec<&str> = listener["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "Accepted",
            "ResolvedRefs",
            "Conflicted",
            "Programmed",
            "splitter.dev/Dataplane"
        ]
    );
}

#[test]
fn unchanged_statuses_are_not_patched_and_transition_times_are_kept() {
    let plan = the_plan();
    let first = patches(&plan, &fresh(&plan), &ctx());
    // The API server now shows exactly what was written, an hour ago.
    let observed: Observed = first
        .iter()
        .map(|p| {
            (
                p.key.clone(),
                Arc::new(ObservedStatus::new(
                    Some(1),
                    Some(format!("rv-{}", p.key.name)),
                    &p.body["status"].clone(),
                )),
            )
        })
        .collect();
    let later = StatusContext {
        now: "2026-11-27T02:00:00Z",
        ..ctx()
    };
    assert_eq!(patches(&plan, &observed, &later), vec![]);

    // A condition whose status flips gets the new time; the one that stays keeps the old.
    let mut flipped = observed.clone();
    let key = route_key("infra", "accepted");
    let seen = Arc::make_mut(flipped.get_mut(&key).unwrap());
    let mut status = seen.status();
    status["parents"][0]["conditions"][1]["status"] = json!("False");
    seen.set_status(&status);
    let out = patches(&plan, &flipped, &later);
    assert_eq!(out.len(), 1);
    let conditions = &out[0].body["status"]["parents"][0]["conditions"];
    assert_eq!(conditions[0]["lastTransitionTime"], NOW);
    assert_eq!(conditions[1]["lastTransitionTime"], "2026-11-27T02:00:00Z");
}

#[test]
fn other_controllers_parents_are_kept_and_stale_ones_of_ours_removed() {
    let plan = the_plan();
    let mut observed = fresh(&plan);
    let theirs = json!({"parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                      "namespace": "infra", "name": "their-gw"},
                        "controllerName": "example.com/other", "conditions": []});
    let stale_ours = json!({"parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                          "namespace": "infra", "name": "gone"},
                            "controllerName": CONTROLLER, "conditions": []});
    Arc::make_mut(observed.get_mut(&route_key("infra", "accepted")).unwrap())
        .set_status(&json!({"parents": [theirs.clone(), stale_ours.clone()]}));
    // A route that no longer reaches any of our Gateways but still carries our entry.
    observed.insert(
        route_key("infra", "moved-away"),
        Arc::new(ObservedStatus::new(
            Some(4),
            Some("rv-moved".into()),
            &json!({"parents": [stale_ours, theirs.clone()]}),
        )),
    );
    let out = patches(&plan, &observed, &ctx());
    let accepted = out
        .iter()
        .find(|p| p.key == route_key("infra", "accepted"))
        .unwrap();
    let parents = accepted.body["status"]["parents"].as_array().unwrap();
    assert_eq!(parents.len(), 2);
    assert_eq!(parents[0], theirs);
    assert_eq!(parents[1]["parentRef"]["name"], "gw");
    let moved = out
        .iter()
        .find(|p| p.key == route_key("infra", "moved-away"))
        .unwrap();
    assert_eq!(moved.body["status"], json!({"parents": [theirs]}));
    assert_eq!(moved.body["metadata"]["resourceVersion"], "rv-moved");
}

#[test]
fn objects_never_seen_are_not_patched() {
    let plan = the_plan();
    assert_eq!(patches(&plan, &Observed::new(), &ctx()), vec![]);
}

// ---- the writer and the Lease against a scripted API ----

fn writer_config() -> WriterConfig {
    WriterConfig {
        controller_name: CONTROLLER.into(),
        default_addresses: Vec::new(),
        agent_pods: None,
        resync: Duration::from_secs(3600),
    }
}

fn lease_config() -> LeaseConfig {
    LeaseConfig {
        renew_every: Duration::from_millis(100),
        ..LeaseConfig::new("splitter-system", "node-a")
    }
}

const LEASE_URI: &str =
    "/apis/coordination.k8s.io/v1/namespaces/splitter-system/leases/splitter-status-writer";

/// A read of the Lease: from the cache (`resourceVersion=0`) while not holding it, else the latest.
fn is_lease_get(r: &Recorded) -> bool {
    r.method == "GET" && (r.uri == LEASE_URI || r.uri == format!("{LEASE_URI}?&resourceVersion=0"))
}

fn is_status_patch(r: &Recorded) -> bool {
    r.method == "PATCH" && r.uri.contains("/status?")
}

/// Replaces every lastTransitionTime (checked to be a timestamp) with [`NOW`].
fn normalise(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                if k == "lastTransitionTime" {
                    let t = v.as_str().unwrap_or_default();
                    assert!(t.ends_with('Z') && t.len() == 20, "{t}");
                    *v = json!(NOW);
                } else {
                    normalise(v);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalise),
        _ => {}
    }
}

fn echo(r: &Recorded) -> (u16, Value) {
    if is_status_patch(r) {
        (200, r.body.clone())
    } else {
        panic!("unexpected call {} {}", r.method, r.uri)
    }
}

/// Starts the status writer on `the_plan()` (observed statuses all fresh), led either by a
/// fixed `leader` flag or, with `None`, by the Lease election against the mock.
fn start_writer(client: kube::Client, leader: Option<bool>) {
    let plan = the_plan();
    let (plans_tx, plans) = watch::channel(Some(Arc::new(plan.clone())));
    let (observed_tx, observed) = watch::channel(Arc::new(fresh(&plan)));
    let (leader_tx, leader_rx) = watch::channel(leader.unwrap_or(false));
    let fixed_leader = match leader {
        Some(_) => Some(leader_tx),
        None => {
            let leases = kube::Api::namespaced(client.clone(), "splitter-system");
            tokio::spawn(status::lease::run(leases, lease_config(), leader_tx));
            None
        }
    };
    tokio::spawn(async move {
        // The senders live as long as the writer: a closed channel would read as a change.
        let _senders = (plans_tx, observed_tx, fixed_leader);
        // No node report (nothing is applied here): the plan's conditions are written.
        let (_, reports) = watch::channel(None);
        status::writer::run(client, writer_config(), plans, observed, leader_rx, reports).await;
    });
}

#[tokio::test]
async fn the_leader_writes_each_status_once_with_server_side_apply() {
    let (client, mock) = MockApi::start(echo);
    start_writer(client, Some(true));

    eventually(WAIT, "eight status patches", || mock.calls().len() >= 8).await;
    // Nothing more follows: the observed statuses did not change, so nothing is repeated.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = mock.calls();
    assert_eq!(calls.len(), 8, "{calls:#?}");
    for (key, body) in expected_routes() {
        let uri = format!(
            "/apis/gateway.networking.k8s.io/v1/namespaces/{}/httproutes/{}/status{QUERY}",
            key.namespace, key.name
        );
        let call = calls
            .iter()
            .find(|c| c.uri == uri)
            .unwrap_or_else(|| panic!("no {uri}"));
        assert_eq!(call.method, "PATCH");
        let mut got = call.body.clone();
        normalise(&mut got);
        assert_eq!(got, body, "{uri}");
    }
    assert!(calls.iter().any(|c| c.method == "PATCH"
        && c.uri
            == format!(
                "/apis/gateway.networking.k8s.io/v1/gatewayclasses/splitter/status{QUERY}"
            )));
    assert!(calls.iter().any(|c| c.method == "PATCH"
        && c.uri
            == format!(
                "/apis/gateway.networking.k8s.io/v1/namespaces/infra/gateways/gw/status{QUERY}"
            )));
}

#[tokio::test]
async fn a_non_leader_writes_nothing() {
    let renewed = status::writer::now();
    let (client, mock) = MockApi::start(move |r| {
        if is_lease_get(r) {
            (
                200,
                json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": "splitter-status-writer", "namespace": "splitter-system",
                                 "resourceVersion": "42"},
                    "spec": {"holderIdentity": "node-b", "leaseDurationSeconds": 15,
                             "renewTime": renewed.replace('Z', ".000000Z")}
                }),
            )
        } else {
            panic!("unexpected call {} {}", r.method, r.uri)
        }
    });
    start_writer(client, None);

    tokio::time::sleep(Duration::from_secs(1)).await;
    let calls = mock.calls();
    assert!(
        calls.len() >= 5,
        "the lease is looked at every 100 ms: {calls:#?}"
    );
    assert!(
        calls
            .iter()
            // A follower reads the API server's cache, never etcd.
            .all(|c| c.method == "GET" && c.uri == format!("{LEASE_URI}?&resourceVersion=0")),
        "{calls:#?}"
    );
}

#[tokio::test]
async fn the_agent_creates_a_missing_lease_then_writes() {
    let (client, mock) = MockApi::start(|r| {
        if is_lease_get(r) {
            not_found()
        } else if r.method == "POST"
            && r.uri == "/apis/coordination.k8s.io/v1/namespaces/splitter-system/leases?"
        {
            (201, r.body.clone())
        } else {
            echo(r)
        }
    });
    start_writer(client, None);

    eventually(WAIT, "status patches", || {
        mock.calls().iter().filter(|c| is_status_patch(c)).count() == 8
    })
    .await;
    let calls = mock.calls();
    let create = calls.iter().find(|c| c.method == "POST").expect("a create");
    let spec = &create.body["spec"];
    assert_eq!(create.body["metadata"]["name"], "splitter-status-writer");
    assert_eq!(spec["holderIdentity"], "node-a");
    assert_eq!(spec["leaseDurationSeconds"], 15);
    assert_eq!(spec["leaseTransitions"], 0);
    // The first patch comes only after the Lease was created.
    let first_patch = calls.iter().position(is_status_patch).unwrap();
    let create_at = calls.iter().position(|c| c.method == "POST").unwrap();
    assert!(create_at < first_patch);
}

#[tokio::test]
async fn an_expired_lease_is_taken_over_with_its_resource_version() {
    // node-b's record never changes: after its 1 s duration has passed on our clock, node-a
    // replaces it, guarded by the resourceVersion it read.
    let (client, mock) = MockApi::start(|r| {
        if is_lease_get(r) {
            (
                200,
                json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": "splitter-status-writer", "namespace": "splitter-system",
                                 "resourceVersion": "42"},
                    "spec": {"holderIdentity": "node-b", "leaseDurationSeconds": 1,
                             "leaseTransitions": 3,
                             "renewTime": "2026-11-27T01:00:00.000000Z"}
                }),
            )
        } else if r.method == "PUT" && r.uri == format!("{LEASE_URI}?") {
            (200, r.body.clone())
        } else {
            panic!("unexpected call {} {}", r.method, r.uri)
        }
    });
    let (leader_tx, mut leader) = watch::channel(false);
    let leases = kube::Api::namespaced(client, "splitter-system");
    tokio::spawn(status::lease::run(leases, lease_config(), leader_tx));
    tokio::time::timeout(WAIT, leader.wait_for(|l| *l))
        .await
        .expect("leadership within the wait")
        .unwrap();
    let calls = mock.calls();
    let puts: Vec<_> = calls.iter().filter(|c| c.method == "PUT").collect();
    assert_eq!(puts.len(), 1, "{calls:#?}");
    let body = &puts[0].body;
    assert_eq!(body["metadata"]["resourceVersion"], "42");
    assert_eq!(body["spec"]["holderIdentity"], "node-a");
    assert_eq!(body["spec"]["leaseTransitions"], 4);
    // At least a lease duration of unchanged reads came first.
    let gets_before = calls.iter().take_while(|c| c.method == "GET").count();
    assert!(gets_before >= 10, "{gets_before} reads before taking over");
}

/// With this node's report: a listener the node does not serve is written `Programmed=False`
/// (`Pending`, naming the node and the error), and so is its Gateway; without
/// `--status-address`, `status.addresses` is the node's; once the node serves it, both are
/// `Programmed=True` again.
#[test]
fn the_node_report_decides_programmed_and_the_default_addresses() {
    use splitter_plan::plan::applied::{NodeReport, Unserved};
    let plan = the_plan();
    let key = plan
        .listeners
        .iter()
        .find(|l| l.sources().iter().any(|s| s.listener == "http"))
        .expect("the http listener")
        .key()
        .clone();
    let failed = NodeReport {
        node: "node-a".into(),
        addresses: vec!["10.0.0.7".parse().unwrap()],
        unserved: vec![Unserved {
            listener: key,
            why: "cannot listen on 0.0.0.0:80: Address already in use (os error 98)".into(),
        }],
    };
    let c = StatusContext {
        node: Some(&failed),
        ..ctx()
    };
    let out = patches(&plan, &fresh(&plan), &c);
    let status = &out
        .iter()
        .find(|p| p.key.kind == Kind::Gateway)
        .unwrap()
        .body["status"];
    assert_eq!(
        status["addresses"],
        json!([{"type": "IPAddress", "value": "10.0.0.7"}])
    );
    let programmed = |conditions: &Value| {
        conditions
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "Programmed")
            .cloned()
            .unwrap()
    };
    assert_eq!(
        programmed(&status["listeners"][0]["conditions"]),
        cond(
            "Programmed",
            "False",
            "Pending",
            "not programmed on node node-a: cannot listen on 0.0.0.0:80: Address already in use (os error 98)",
            3
        )
    );
    let gw = programmed(&status["conditions"]);
    assert_eq!(
        (&gw["status"], &gw["reason"]),
        (&json!("False"), &json!("Pending"))
    );
    assert!(
        gw["message"]
            .as_str()
            .unwrap()
            .starts_with("1 of 1 listeners not programmed on node node-a: http (cannot listen"),
        "{gw}"
    );

    let fixed = NodeReport {
        unserved: vec![],
        ..failed.clone()
    };
    let c = StatusContext {
        node: Some(&fixed),
        ..ctx()
    };
    let out = patches(&plan, &fresh(&plan), &c);
    let status = &out
        .iter()
        .find(|p| p.key.kind == Kind::Gateway)
        .unwrap()
        .body["status"];
    assert_eq!(
        programmed(&status["listeners"][0]["conditions"])["status"],
        "True"
    );
    assert_eq!(programmed(&status["conditions"])["status"], "True");
    // `--status-address` wins over the node's addresses.
    let explicit = ["192.0.2.10".parse().unwrap()];
    let c = StatusContext {
        default_addresses: &explicit,
        node: Some(&fixed),
        ..ctx()
    };
    let out = patches(&plan, &fresh(&plan), &c);
    let status = &out
        .iter()
        .find(|p| p.key.kind == Kind::Gateway)
        .unwrap()
        .body["status"];
    assert_eq!(
        status["addresses"],
        json!([{"type": "IPAddress", "value": "192.0.2.10"}])
    );
}

/// With a node reporting (as `splitter run` does), the leader writes nothing before this node
/// has applied the plan, then writes `Programmed` as the node's report says.
#[tokio::test]
async fn the_leader_writes_once_its_node_reports_and_programmed_follows_the_report() {
    use splitter_plan::plan::applied::{NodeReport, NodeView, Unserved};
    let (client, mock) = MockApi::start(echo);
    let plan = Arc::new(the_plan());
    let (_plans_tx, plans) = watch::channel(Some(plan.clone()));
    let (_observed_tx, observed) = watch::channel(Arc::new(fresh(&plan)));
    let (_leader_tx, leader) = watch::channel(true);
    let (reports_tx, reports) = watch::channel(None);
    tokio::spawn(status::writer::run(
        client,
        writer_config(),
        plans,
        observed,
        leader,
        reports,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        mock.calls().len(),
        0,
        "written before the node applied the plan"
    );

    let key = plan.listeners[0].key().clone();
    reports_tx.send_replace(Some(NodeView {
        plan: plan.clone(),
        report: NodeReport {
            node: "node-a".into(),
            addresses: vec!["10.0.0.7".parse().unwrap()],
            unserved: vec![Unserved {
                listener: key,
                why: "cannot listen on 0.0.0.0:80: Address already in use (os error 98)".into(),
            }],
        },
    }));
    eventually(WAIT, "the Gateway's status", || {
        mock.calls()
            .iter()
            .any(|c| c.uri.contains("/gateways/gw/status"))
    })
    .await;
    let calls = mock.calls();
    let gw = calls
        .iter()
        .find(|c| c.uri.contains("/gateways/gw/status"))
        .unwrap();
    let status = &gw.body["status"];
    assert_eq!(
        status["addresses"],
        json!([{"type": "IPAddress", "value": "10.0.0.7"}])
    );
    let programmed = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Programmed")
        .unwrap();
    assert_eq!(programmed["status"], "False", "{programmed}");
    assert!(
        programmed["message"].as_str().unwrap().contains("node-a"),
        "{programmed}"
    );
}

/// Without `--status-address`, the leader lists the agent's pods and a Gateway without
/// `spec.addresses` reports the nodes of the Ready ones (not only its own node's).
#[tokio::test]
async fn gateways_without_addresses_report_the_nodes_of_ready_agent_pods() {
    use splitter::status::agents::AgentPods;
    use splitter_plan::plan::applied::{NodeReport, NodeView};
    let pods_uri = "/api/v1/namespaces/splitter-system/pods?&labelSelector=app.kubernetes.io%2Fname%3Dsplitter";
    let pod = |ip: &str, ready: &str| {
        json!({"metadata": {"name": format!("splitter-{ip}")},
               "status": {"hostIP": ip, "hostIPs": [{"ip": ip}],
                          "conditions": [{"type": "Ready", "status": ready}]}})
    };
    let pods = json!({"kind": "PodList", "apiVersion": "v1", "metadata": {},
        "items": [pod("10.0.0.9", "True"), pod("10.0.0.8", "True"), pod("10.0.0.7", "False")]});
    let (client, mock) = MockApi::start(move |r| {
        if r.method == "GET" && r.uri == pods_uri {
            (200, pods.clone())
        } else {
            echo(r)
        }
    });
    let plan = Arc::new(the_plan());
    let (_plans_tx, plans) = watch::channel(Some(plan.clone()));
    let (_observed_tx, observed) = watch::channel(Arc::new(fresh(&plan)));
    let (_leader_tx, leader) = watch::channel(true);
    // This node (10.0.0.7) reports; its own pod is not Ready, so it is not named.
    let (_reports_tx, reports) = watch::channel(Some(NodeView {
        plan: plan.clone(),
        report: NodeReport {
            node: "node-a".into(),
            addresses: vec!["10.0.0.7".parse().unwrap()],
            unserved: vec![],
        },
    }));
    let config = WriterConfig {
        agent_pods: Some(AgentPods {
            namespace: "splitter-system".into(),
            selector: "app.kubernetes.io/name=splitter".into(),
        }),
        ..writer_config()
    };
    tokio::spawn(status::writer::run(
        client, config, plans, observed, leader, reports,
    ));
    eventually(WAIT, "the Gateway's status", || {
        mock.calls()
            .iter()
            .any(|c| c.uri.contains("/gateways/gw/status"))
    })
    .await;
    let calls = mock.calls();
    assert!(
        calls.iter().any(|c| c.uri == pods_uri),
        "the agent's pods were listed: {:?}",
        calls.iter().map(|c| &c.uri).collect::<Vec<_>>()
    );
    let gw = calls
        .iter()
        .find(|c| c.uri.contains("/gateways/gw/status"))
        .unwrap();
    assert_eq!(
        gw.body["status"]["addresses"],
        json!([{"type": "IPAddress", "value": "10.0.0.8"},
               {"type": "IPAddress", "value": "10.0.0.9"}])
    );
}

/// A GRPCRoute's status goes to `grpcroutes/<name>/status`, with its conditions.
#[tokio::test]
async fn a_grpcroute_status_is_patched_on_grpcroutes() {
    let (index, report) =
        splitter::source::file::load(&[fixture("base.yaml"), fixture("grpc.yaml")]);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let plan = plan::build(&index, &PlanConfig::default(), None);
    let (client, mock) = MockApi::start(echo);
    let (_plans_tx, plans) = watch::channel(Some(Arc::new(plan.clone())));
    let (_observed_tx, observed) = watch::channel(Arc::new(fresh(&plan)));
    let (_leader_tx, leader) = watch::channel(true);
    tokio::spawn(async move {
        // No node report (nothing is applied here): the plan's conditions are written.
        let (_, reports) = watch::channel(None);
        status::writer::run(client, writer_config(), plans, observed, leader, reports).await;
    });
    let uri =
        format!("/apis/gateway.networking.k8s.io/v1/namespaces/infra/grpcroutes/g/status{QUERY}");
    eventually(WAIT, "the GRPCRoute patch", || {
        mock.calls().iter().any(|c| c.uri == uri)
    })
    .await;
    let calls = mock.calls();
    let call = calls.iter().find(|c| c.uri == uri).unwrap();
    assert_eq!(call.method, "PATCH");
    assert_eq!(call.body["kind"], "GRPCRoute");
    let conditions = &call.body["status"]["parents"][0]["conditions"];
    let reason = |t: &str| {
        conditions
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == t)
            .map(|c| c["reason"].clone())
    };
    assert_eq!(reason("Accepted"), Some(json!("Accepted")));
    assert_eq!(reason("ResolvedRefs"), Some(json!("RefNotPermitted")));
}

#[tokio::test]
async fn the_leader_writes_tlsroute_statuses_to_their_own_resource() {
    let (index, report) =
        splitter::source::file::load(&[fixture("base.yaml"), fixture("tls-passthrough.yaml")]);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let plan = plan::build(&index, &PlanConfig::default(), None);
    let observed: Observed = plan
        .routes
        .iter()
        .map(|r| {
            (
                r.route.clone(),
                Arc::new(ObservedStatus::new(
                    Some(1),
                    Some(format!("rv-{}", r.route.name)),
                    &Value::Null,
                )),
            )
        })
        .collect();
    assert!(observed.keys().all(|k| k.kind == Kind::TlsRoute));
    let (client, mock) = MockApi::start(echo);
    let (plans_tx, plans) = watch::channel(Some(Arc::new(plan)));
    let (observed_tx, observed) = watch::channel(Arc::new(observed));
    let (leader_tx, leader) = watch::channel(true);
    tokio::spawn(async move {
        let _senders = (plans_tx, observed_tx, leader_tx);
        let (_, reports) = watch::channel(None);
        status::writer::run(client, writer_config(), plans, observed, leader, reports).await;
    });
    let uri =
        format!("/apis/gateway.networking.k8s.io/v1/namespaces/infra/tlsroutes/wild/status{QUERY}");
    eventually(WAIT, "the TLSRoute status patch", || {
        mock.calls().iter().any(|c| c.uri == uri)
    })
    .await;
    let calls = mock.calls();
    let call = calls.iter().find(|c| c.uri == uri).expect("patched");
    assert_eq!(call.method, "PATCH");
    let body = &call.body;
    assert_eq!(
        (body["apiVersion"].as_str(), body["kind"].as_str()),
        (Some("gateway.networking.k8s.io/v1"), Some("TLSRoute"))
    );
    let parents = body["status"]["parents"].as_array().expect("parents");
    // Two parentRefs (listeners sni and named), each Accepted with the missing backend named.
    assert_eq!(parents.len(), 2, "{body:#}");
    for p in parents {
        let reason = |t: &str| {
            p["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == t))
                .map(|c| (c["status"].clone(), c["reason"].clone()))
        };
        assert_eq!(reason("Accepted"), Some((json!("True"), json!("Accepted"))));
        assert_eq!(
            reason("ResolvedRefs"),
            Some((json!("False"), json!("BackendNotFound")))
        );
    }
}
