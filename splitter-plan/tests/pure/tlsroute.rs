//! TLSRoute and TLS passthrough listeners: attachment, statuses, the kernel/proxy decision and
//! the SNI table.

use std::net::SocketAddr;

use crate::support::*;
use splitter_plan::{
    model::parse::parse,
    plan::{
        Mode,
        l7::{BackendTarget, InvalidReason},
        maglev::TableTarget,
        status::{ConditionStatus, GatewayStatus},
    },
};

fn tls_gateway(plan: &splitter_plan::plan::Plan) -> &GatewayStatus {
    plan.gateways
        .iter()
        .find(|g| g.gateway.name == "tls")
        .expect("Gateway infra/tls has a status")
}

fn listener_condition(g: &GatewayStatus, listener: &str, type_: &str) -> (ConditionStatus, String) {
    let l = g.listeners.iter().find(|l| l.name == listener).unwrap();
    let c = condition(&l.conditions, type_);
    (c.status, c.reason.clone())
}

#[test]
fn a_listener_whose_one_route_takes_every_name_is_split_in_the_kernel() {
    let plan = plan_with(&["tls-passthrough.yaml"]);
    let l = listener(&plan, 8443);
    assert_eq!(l.mode(), Mode::L4, "{}", l.reason());
    assert!(l.reason().contains("every server name"), "{}", l.reason());
    let l4 = l.l4().unwrap();
    assert_eq!(l4.route.as_ref().unwrap().to_string(), "TLSRoute infra/all");
    // Weights 3:1 over a's and b's two ready endpoints each.
    let m = f64::from(l4.table.m);
    for (ep, share) in [
        ("10.1.0.1:3000", 0.375),
        ("10.1.0.2:3000", 0.375),
        ("10.2.0.1:3000", 0.125),
        ("10.2.0.2:3000", 0.125),
    ] {
        let q = f64::from(
            l4.table
                .quota_of(&TableTarget::Endpoint(ep.parse::<SocketAddr>().unwrap())),
        );
        assert!((q - m * share).abs() < 1.0, "{ep}: {q}");
    }
}

#[test]
fn several_routes_by_name_are_routed_by_the_proxy_most_specific_first() {
    let plan = plan_with(&["tls-passthrough.yaml"]);
    let l = listener(&plan, 9443);
    assert_eq!(l.mode(), Mode::L7, "{}", l.reason());
    assert!(l.reason().contains("ClientHello"), "{}", l.reason());
    let table = l
        .l7()
        .unwrap()
        .passthrough
        .as_ref()
        .expect("a passthrough table");
    assert!(l.l7().unwrap().routes.is_empty());
    let to = |sni: Option<&str>| table.route_for(sni).map(|r| r.route.name.as_str());
    // The exact name wins over the older wildcard route.
    assert_eq!(to(Some("abc.example.com")), Some("exact"));
    assert_eq!(to(Some("x.abc.example.com")), Some("wild"));
    assert_eq!(to(Some("example.com")), None, "*. needs a label");
    assert_eq!(to(Some("abc.example.org")), None);
    assert_eq!(to(None), None, "no SNI, no catch-all route");
    // The invalid backendRef keeps its share (refused), never given to b.
    let wild = table.route_for(Some("x.example.com")).unwrap();
    assert_eq!(
        wild.backends
            .iter()
            .map(|b| (
                b.weight,
                matches!(
                    b.target,
                    BackendTarget::Invalid(InvalidReason::BackendNotFound)
                )
            ))
            .collect::<Vec<_>>(),
        [(2, false), (1, true)]
    );
    let status = route(&plan, "infra", "wild");
    let c = condition(&status.parents[0].conditions, "ResolvedRefs");
    assert_eq!(
        (c.status, c.reason.as_str()),
        (ConditionStatus::False, "BackendNotFound")
    );
    let c = condition(&status.parents[0].conditions, "Accepted");
    assert_eq!(c.status, ConditionStatus::True);
}

#[test]
fn a_listener_hostname_is_checked_by_the_proxy_even_for_one_route() {
    let plan = plan_with(&["tls-passthrough.yaml"]);
    let l = listener(&plan, 10443);
    assert_eq!(l.mode(), Mode::L7, "{}", l.reason());
    let table = l.l7().unwrap().passthrough.as_ref().unwrap();
    assert_eq!(table.routes.len(), 1);
    assert_eq!(table.routes[0].hostname.as_deref(), Some("*.example.com"));
    assert!(table.route_for(Some("www.example.org")).is_none());
}

#[test]
fn terminate_on_a_tls_listener_is_refused_and_mixed_modes_conflict() {
    let plan = plan_with(&["tls-passthrough.yaml"]);
    let g = tls_gateway(&plan);
    assert_eq!(
        listener_condition(g, "terminate", "Accepted"),
        (ConditionStatus::False, "UnsupportedValue".to_string())
    );
    for name in ["mixed-terminate", "mixed-passthrough"] {
        assert_eq!(
            listener_condition(g, name, "Accepted"),
            (ConditionStatus::False, "ProtocolConflict".to_string()),
            "{name}"
        );
    }
    assert!(
        plan.listeners
            .iter()
            .all(|l| ![11443, 12443].contains(&l.key().port))
    );
    // The other listeners are served.
    assert_eq!(
        listener_condition(g, "sni", "Accepted"),
        (ConditionStatus::True, "Accepted".to_string())
    );
}

#[test]
fn allowed_kinds_statuses_and_attached_routes() {
    let plan = plan_with(&["tls-passthrough.yaml"]);
    let g = tls_gateway(&plan);
    let kinds = g.listeners.iter().find(|l| l.name == "kinds").unwrap();
    assert_eq!(
        kinds
            .supported_kinds
            .iter()
            .map(|k| k.kind.as_str())
            .collect::<Vec<_>>(),
        ["TLSRoute"]
    );
    assert_eq!(
        listener_condition(g, "kinds", "ResolvedRefs"),
        (ConditionStatus::False, "InvalidRouteKinds".to_string())
    );
    let attached = |name: &str| {
        g.listeners
            .iter()
            .find(|l| l.name == name)
            .unwrap()
            .attached_routes
    };
    assert_eq!(attached("catchall"), 1);
    assert_eq!(attached("sni"), 2);
    assert_eq!(
        attached("named"),
        1,
        "wild only; elsewhere's name does not intersect"
    );
    let elsewhere = route(&plan, "infra", "elsewhere");
    let reasons: Vec<_> = elsewhere
        .parents
        .iter()
        .map(|p| condition(&p.conditions, "Accepted").reason.as_str())
        .collect();
    assert_eq!(
        reasons,
        ["NoMatchingListenerHostname", "NotAllowedByListeners"]
    );
}

#[test]
fn the_l4_annotation_puts_one_named_route_in_the_kernel_and_is_refused_for_two() {
    let one = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: k, namespace: infra, annotations: {splitter.dev/dataplane: l4}}
spec:
  gatewayClassName: splitter
  listeners:
  - {name: tls, protocol: TLS, port: 7443, tls: {mode: Passthrough}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {name: one, namespace: infra}
spec:
  parentRefs: [{name: k}]
  hostnames: [abc.example.com, "*.example.net"]
  rules:
  - backendRefs: [{name: a, port: 8080}]
"#;
    let two = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {name: two, namespace: infra}
spec:
  parentRefs: [{name: k}]
  hostnames: [other.example.com]
  rules:
  - backendRefs: [{name: b, port: 8080}]
"#;
    let base = fixture("base.yaml");
    let plan = plan_of(&[&base, one]);
    let l = listener(&plan, 7443);
    assert_eq!(l.mode(), Mode::L4, "{}", l.reason());
    assert!(
        l.reason().contains("does not read the server name"),
        "{}",
        l.reason()
    );
    let plan = plan_of(&[&base, one, two]);
    let l = listener(&plan, 7443);
    assert_eq!(l.mode(), Mode::L7, "{}", l.reason());
    let g = plan
        .gateways
        .iter()
        .find(|g| g.gateway.name == "k")
        .unwrap();
    assert_eq!(
        listener_condition(g, "tls", "splitter.dev/Dataplane"),
        (ConditionStatus::False, "L4Refused".to_string())
    );
}

#[test]
fn invalid_tlsroutes_are_refused_with_the_field_and_the_reason() {
    let bad = |spec: &str, version: &str| {
        let yaml = format!(
            "apiVersion: gateway.networking.k8s.io/{version}\nkind: TLSRoute\nmetadata: {{name: r, namespace: ns}}\nspec:\n{spec}"
        );
        let value: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        parse(value).expect_err(&yaml)
    };
    let rules = "  rules:\n  - backendRefs: [{name: a, port: 80}]\n";
    let e = bad(&format!("  hostnames: []\n{rules}"), "v1");
    assert_eq!(
        (e.object.as_str(), e.field.as_str()),
        ("TLSRoute ns/r", "spec.hostnames")
    );
    let e = bad(&format!("  hostnames: [10.0.0.1]\n{rules}"), "v1");
    assert_eq!(e.field, "spec.hostnames[0]");
    assert!(e.to_string().contains("IP address"), "{e}");
    let e = bad(
        "  hostnames: [a.example.com]\n  rules:\n  - backendRefs: [{name: a, port: 80}]\n  - backendRefs: [{name: b, port: 80}]\n",
        "v1",
    );
    assert_eq!(e.field, "spec.rules");
    let e = bad(
        "  hostnames: [a.example.com]\n  rules:\n  - backendRefs: []\n",
        "v1",
    );
    assert_eq!(e.field, "spec.rules[0].backendRefs");
    let e = bad(&format!("  hostnames: [a.example.com]\n{rules}"), "v9");
    assert_eq!(e.field, "apiVersion");
    // The alpha versions may leave hostnames out.
    let ok = format!(
        "apiVersion: gateway.networking.k8s.io/v1alpha3\nkind: TLSRoute\nmetadata: {{name: r, namespace: ns}}\nspec:\n{rules}"
    );
    assert!(parse(serde_saphyr::from_str(&ok).unwrap()).is_ok());
}

#[test]
fn listener_isolation_a_specific_listeners_name_is_its_own() {
    let yaml = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: iso, namespace: infra}
spec:
  gatewayClassName: splitter
  listeners:
  - {name: specific, protocol: TLS, port: 6443, hostname: abc.example.com, tls: {mode: Passthrough}}
  - {name: any, protocol: TLS, port: 6443, tls: {mode: Passthrough}}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: all, namespace: infra}
spec:
  parentRefs: [{name: iso, sectionName: any}]
  rules:
  - backendRefs: [{name: a, port: 8080}]
"#;
    let plan = plan_of(&[&fixture("base.yaml"), yaml]);
    let l = listener(&plan, 6443);
    // Not a catch-all: the other listener's name must not reach this route.
    assert_eq!(l.mode(), Mode::L7, "{}", l.reason());
    let table = l.l7().unwrap().passthrough.as_ref().unwrap();
    assert_eq!(
        table
            .route_for(Some("abc.example.com"))
            .map(|r| r.route.name.as_str()),
        None
    );
    assert_eq!(
        table
            .route_for(Some("x.example.com"))
            .map(|r| r.route.name.as_str()),
        Some("all")
    );
}
