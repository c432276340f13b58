//! The kube source against a scripted API: the initial list and watch of every kind feed the
//! index; added, modified and deleted objects change the plan; a 410 Gone makes the watcher
//! list again and the relist replaces the kind's content.

use std::{sync::Arc, time::Duration};

use crate::support::{MockApi, eventually, yaml};
use serde_json::{Value, json};
use splitter::{control, status::Observed};
use splitter_plan::{
    access,
    model::index::Update,
    plan::{Plan, PlanConfig, status::ConditionStatus},
};
use tokio::sync::{mpsc, watch};

const WAIT: Duration = Duration::from_secs(10);

fn route(name: &str, backends: Value, rv: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "infra", "generation": 1, "resourceVersion": rv,
                     "creationTimestamp": "2026-01-02T00:00:00Z"},
        "spec": {"parentRefs": [{"name": "gw"}], "rules": [{"backendRefs": backends}]}
    })
}

/// The fixture objects by the plural they are listed under; every watched kind has a list.
fn lists_of(objects: Vec<Value>) -> Vec<(&'static str, Vec<Value>)> {
    access::WATCHED
        .iter()
        .map(|r| {
            let items = objects
                .iter()
                .filter(|o| o["kind"] == r.kind.as_str())
                .cloned()
                .collect();
            (r.plural, items)
        })
        .collect()
}

struct Running {
    mock: MockApi,
    plans: watch::Receiver<Option<Arc<Plan>>>,
    observed: watch::Receiver<Arc<Observed>>,
}

fn start(objects: Vec<Value>, script: impl FnOnce(&MockApi)) -> Running {
    let (client, mock) = MockApi::start(|r| panic!("unexpected call {} {}", r.method, r.uri));
    for (plural, items) in lists_of(objects) {
        mock.lists(plural, vec![items]);
    }
    script(&mock);
    let (updates_tx, updates) = mpsc::channel::<Vec<Update>>(4);
    let (observed_tx, observed) = watch::channel(Arc::default());
    let (plans_tx, plans) = watch::channel(None);
    tokio::spawn(splitter::source::kube::run(client, updates_tx, observed_tx));
    tokio::spawn(control::run(
        updates,
        PlanConfig::default(),
        plans_tx,
        watch::channel(Default::default()).1,
        Default::default(),
    ));
    Running {
        mock,
        plans,
        observed,
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

fn current(r: &Running) -> Arc<Plan> {
    r.plans.borrow().clone().unwrap_or_default()
}

#[tokio::test]
async fn lists_then_watch_events_drive_the_plan() {
    let mut objects = yaml("../splitter-plan/tests/fixtures/base.yaml");
    objects.push(route(
        "split",
        json!([{"name": "a", "port": 8080}, {"name": "b", "port": 8080}]),
        "5",
    ));
    let mut routes = None;
    let r = start(objects, |m| routes = Some(m.watch("httproutes")));
    let routes = routes.unwrap();

    eventually(WAIT, "the first plan", || weights(&current(&r)) == [1, 1]).await;
    // One list per kind, and no other call (a missing kind would leave the plan unpublished).
    for res in &access::WATCHED {
        assert_eq!(r.mock.list_calls(res.plural), 1, "{}", res.plural);
    }
    assert!(r.mock.calls().is_empty(), "{:?}", r.mock.calls());
    let plan = current(&r);
    assert_eq!(plan.gateway_classes.len(), 1);
    assert_eq!(plan.gateways[0].listeners[0].attached_routes, 1);
    // The status writer sees the objects it may patch, with their versions.
    let observed = r.observed.borrow().clone();
    let key = splitter_plan::model::ObjectKey::new(
        splitter_plan::model::Kind::HttpRoute,
        "infra",
        "split",
    );
    assert_eq!(observed[&key].resource_version.as_deref(), Some("5"));

    // Modified: weights 200/100.
    let modified = route(
        "split",
        json!([{"name": "a", "port": 8080, "weight": 200}, {"name": "b", "port": 8080, "weight": 100}]),
        "6",
    );
    routes
        .send(json!({"type": "MODIFIED", "object": modified}))
        .unwrap();
    eventually(WAIT, "weights 200/100", || {
        weights(&current(&r)) == [200, 100]
    })
    .await;

    // Added: a second route on the same listener turns it into... still one listener, now L7
    // with two routes attached.
    let other = route("other", json!([{"name": "c", "port": 8080}]), "7");
    routes
        .send(json!({"type": "ADDED", "object": other.clone()}))
        .unwrap();
    eventually(WAIT, "two attached routes", || {
        current(&r)
            .gateways
            .first()
            .is_some_and(|g| g.listeners[0].attached_routes == 2)
    })
    .await;

    // Deleted: back to one.
    routes
        .send(json!({"type": "DELETED", "object": other}))
        .unwrap();
    eventually(WAIT, "one attached route", || {
        let p = current(&r);
        p.gateways
            .first()
            .is_some_and(|g| g.listeners[0].attached_routes == 1)
            && p.routes.len() == 1
    })
    .await;
    assert!(r.mock.calls().is_empty(), "{:?}", r.mock.calls());
}

#[tokio::test]
async fn gone_410_relists_the_kind() {
    let mut objects = yaml("../splitter-plan/tests/fixtures/base.yaml");
    objects.push(route(
        "split",
        json!([{"name": "a", "port": 8080}, {"name": "b", "port": 8080}]),
        "5",
    ));
    let lists = lists_of(objects);
    let services: Vec<Value> = lists
        .iter()
        .find(|(p, _)| *p == "services")
        .map(|(_, v)| v.clone())
        .unwrap();
    let without_b: Vec<Value> = services
        .iter()
        .filter(|s| s["metadata"]["name"] != "b")
        .cloned()
        .collect();
    let mut svc_watch = None;
    let r = start(lists.into_iter().flat_map(|(_, v)| v).collect(), |m| {
        m.lists("services", vec![services.clone(), without_b]);
        svc_watch = Some(m.watch("services"));
    });
    let svc_watch = svc_watch.unwrap();
    let resolved = |p: &Plan| {
        p.routes
            .first()
            .and_then(|r| r.parents.first())
            .and_then(|p| p.conditions.iter().find(|c| c.type_ == "ResolvedRefs"))
            .map(|c| (c.status, c.reason.clone()))
    };
    eventually(WAIT, "the first plan", || {
        resolved(&current(&r)) == Some((ConditionStatus::True, "ResolvedRefs".into()))
    })
    .await;
    assert_eq!(r.mock.list_calls("services"), 1);

    svc_watch
        .send(json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": "Expired", "code": 410, "message": "too old resource version: 1 (100)"}}))
        .unwrap();
    // The relist no longer has Service b: the route's backend b is now missing.
    eventually(WAIT, "the relist", || {
        resolved(&current(&r)) == Some((ConditionStatus::False, "BackendNotFound".into()))
    })
    .await;
    assert_eq!(r.mock.list_calls("services"), 2);
    for res in access::WATCHED
        .iter()
        .filter(|res| res.plural != "services")
    {
        assert_eq!(r.mock.list_calls(res.plural), 1, "{}", res.plural);
    }
}

#[tokio::test]
async fn tls_secrets_are_listed_by_type_and_resolve_an_https_listener() {
    let mut objects = yaml("../splitter-plan/tests/fixtures/base.yaml");
    let fixture = |f: &str| {
        std::fs::read(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../splitter-plan/tests/fixtures/tls")
                .join(f),
        )
        .unwrap()
    };
    // As the API server returns it: `data` in base64.
    let data = |f: &str| serde_json::to_value(k8s_openapi::ByteString(fixture(f))).unwrap();
    objects.push(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "site", "namespace": "infra", "resourceVersion": "3"},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": data("a.crt"), "tls.key": data("a.key")}
    }));
    objects.push(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "secure", "namespace": "infra", "generation": 1, "resourceVersion": "4"},
        "spec": {"gatewayClassName": "splitter", "listeners": [{
            "name": "https", "protocol": "HTTPS", "port": 443,
            "tls": {"certificateRefs": [{"name": "site"}]}
        }]}
    }));
    let r = start(objects, |_| {});
    eventually(WAIT, "the HTTPS listener with its certificate", || {
        current(&r).listeners.iter().any(|l| {
            l.key().port == 443
                && l.l7()
                    .and_then(|t| t.tls.as_ref())
                    .is_some_and(|t| t.certificates[0].certificate.names[0] == "a.example.com")
        })
    })
    .await;
    let uris = r.mock.watch_uris("secrets");
    assert!(!uris.is_empty());
    for uri in uris {
        assert!(
            uri.contains("fieldSelector=type%3Dkubernetes.io%2Ftls"),
            "every Secret list and watch asks for TLS Secrets only: {uri}"
        );
    }
}

/// GRPCRoutes are listed and watched like HTTPRoutes: a listed one attaches, a watched one is
/// added to the plan as a gRPC route with HTTP/2 backends, and its status is observed.
#[tokio::test]
async fn grpcroutes_are_listed_and_watched() {
    let grpc = |name: &str, rv: &str| {
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
            "metadata": {"name": name, "namespace": "infra", "generation": 1,
                         "resourceVersion": rv, "creationTimestamp": "2026-01-02T00:00:00Z"},
            "spec": {"parentRefs": [{"name": "gw"}], "hostnames": [format!("{name}.example.com")],
                     "rules": [{"matches": [{"method": {"service": "pkg.Svc", "method": "Get"}}],
                                "backendRefs": [{"name": "a", "port": 8080}]}]}
        })
    };
    let mut objects = yaml("../splitter-plan/tests/fixtures/base.yaml");
    objects.push(grpc("listed", "5"));
    let mut watch = None;
    let r = start(objects, |m| watch = Some(m.watch("grpcroutes")));
    let watch = watch.unwrap();
    let grpc_routes = |p: &Plan| {
        p.routes
            .iter()
            .filter(|r| r.route.kind == splitter_plan::model::Kind::GrpcRoute)
            .map(|r| r.route.name.clone())
            .collect::<Vec<_>>()
    };
    eventually(WAIT, "the listed GRPCRoute", || {
        grpc_routes(&current(&r)) == ["listed"]
    })
    .await;
    assert_eq!(r.mock.list_calls("grpcroutes"), 1);
    let key = splitter_plan::model::ObjectKey::new(
        splitter_plan::model::Kind::GrpcRoute,
        "infra",
        "listed",
    );
    assert_eq!(
        r.observed.borrow()[&key].resource_version.as_deref(),
        Some("5")
    );
    watch
        .send(json!({"type": "ADDED", "object": grpc("watched", "6")}))
        .unwrap();
    eventually(WAIT, "the watched GRPCRoute", || {
        grpc_routes(&current(&r)) == ["listed", "watched"]
    })
    .await;
    let plan = current(&r);
    let l7 = plan
        .listeners
        .iter()
        .find(|l| l.key().port == 80)
        .and_then(|l| l.l7())
        .expect("a GRPCRoute makes the listener L7");
    assert!(l7.routes.iter().all(|r| {
        r.backends
            .iter()
            .all(|b| b.protocol == splitter_plan::plan::l7::BackendProtocol::H2c)
    }));
    assert_eq!(plan.gateways[0].listeners[0].attached_routes, 2);
}

fn tls_route(name: &str, hostname: &str, rv: &str) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "TLSRoute",
        "metadata": {"name": name, "namespace": "infra", "generation": 1, "resourceVersion": rv},
        "spec": {"parentRefs": [{"name": "passthrough"}], "hostnames": [hostname],
                 "rules": [{"backendRefs": [{"name": "a", "port": 8080}]}]}
    })
}

/// SNI names of the passthrough listener on :8443, in table order.
fn sni_names(plan: &Plan) -> Vec<String> {
    plan.listeners
        .iter()
        .find(|l| l.key().port == 8443)
        .and_then(|l| l.l7())
        .and_then(|t| t.passthrough.as_ref())
        .map(|p| {
            p.routes
                .iter()
                .map(|r| r.hostname.clone().unwrap_or_default())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn tlsroutes_are_listed_and_watched_into_a_passthrough_listener() {
    let mut objects = yaml("../splitter-plan/tests/fixtures/base.yaml");
    objects.push(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "passthrough", "namespace": "infra", "generation": 1, "resourceVersion": "4"},
        "spec": {"gatewayClassName": "splitter", "listeners": [{
            "name": "tls", "protocol": "TLS", "port": 8443, "tls": {"mode": "Passthrough"}
        }]}
    }));
    objects.push(tls_route("exact", "abc.example.com", "5"));
    let mut watch = None;
    let r = start(objects, |m| watch = Some(m.watch("tlsroutes")));
    let watch = watch.unwrap();
    eventually(WAIT, "the listed TLSRoute", || {
        sni_names(&current(&r)) == ["abc.example.com"]
    })
    .await;
    assert_eq!(r.mock.list_calls("tlsroutes"), 1);
    let key = splitter_plan::model::ObjectKey::new(
        splitter_plan::model::Kind::TlsRoute,
        "infra",
        "exact",
    );
    assert_eq!(
        r.observed.borrow()[&key].resource_version.as_deref(),
        Some("5"),
        "the status writer may patch it"
    );
    let wild = tls_route("wild", "*.example.com", "6");
    watch
        .send(json!({"type": "ADDED", "object": wild.clone()}))
        .unwrap();
    eventually(
        WAIT,
        "the added wildcard route after the exact name",
        || sni_names(&current(&r)) == ["abc.example.com", "*.example.com"],
    )
    .await;
    watch
        .send(json!({"type": "DELETED", "object": wild}))
        .unwrap();
    eventually(WAIT, "the deleted route gone", || {
        sni_names(&current(&r)) == ["abc.example.com"]
    })
    .await;
    assert!(r.mock.calls().is_empty(), "{:?}", r.mock.calls());
}
