//! GRPCRoute in the plan: attachment to HTTP listeners, method and header matches lowered to
//! the proxy's matches, GRPCRoute precedence, filters, HTTP/2 backends, the HTTPRoute/GRPCRoute
//! hostname conflict; and the Service port `appProtocol` of HTTPRoute backends (GEP-1911).

use http::{HeaderMap, HeaderValue, Method};

use crate::support::*;
use splitter_plan::{
    model::Kind,
    plan::{
        Mode,
        l7::{BackendProtocol, BackendTarget, Filter, InvalidReason, L7Route},
        l7_match::RequestView,
    },
};

/// The first route of the listener on port 80 that takes a gRPC call of `path` on `host`.
fn pick<'a>(
    routes: &'a [std::sync::Arc<L7Route>],
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Option<&'a L7Route> {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    let view = RequestView {
        method: &Method::POST,
        path,
        query: None,
        headers: &map,
    };
    routes
        .iter()
        .find(|r| {
            splitter_plan::plan::l7_match::hostname_matches(&r.hostnames, Some(host))
                && r.matched.matches(&view)
        })
        .map(|r| &**r)
}

#[test]
fn grpc_method_and_header_matches_route_calls_in_grpc_precedence() {
    let plan = plan_with(&["grpc.yaml"]);
    let l = listener(&plan, 80);
    assert_eq!(l.mode(), Mode::L7, "{}", l.reason());
    let routes = &l.l7().unwrap().routes;
    let grpc: Vec<&L7Route> = routes
        .iter()
        .map(|r| &**r)
        .filter(|r| r.route.kind == Kind::GrpcRoute)
        .collect();
    assert!(!grpc.is_empty());
    let host = "grpc.example.com";
    let rule = |path: &str, headers: &[(&str, &str)]| {
        pick(routes, host, path, headers).map(|r| (r.route.kind, r.rule_index))
    };
    // Exact service and method.
    assert_eq!(rule("/pkg.Svc/Get", &[]), Some((Kind::GrpcRoute, 0)));
    // Exact service (any method) with a header: the longer service+method of rule 0 wins for
    // Get even with the header; another method needs the header.
    assert_eq!(
        rule("/pkg.Svc/Get", &[("x-tier", "gold")]),
        Some((Kind::GrpcRoute, 0))
    );
    assert_eq!(
        rule("/pkg.Svc/Put", &[("x-tier", "gold")]),
        Some((Kind::GrpcRoute, 1))
    );
    assert_eq!(rule("/pkg.Svc/Put", &[]), None);
    // Regular expressions over service and method, anchored.
    assert_eq!(rule("/pkg.Other/List", &[]), Some((Kind::GrpcRoute, 2)));
    assert_eq!(rule("/pkg.Other/Lists", &[]), None);
    assert_eq!(rule("/xpkg.Other/List", &[]), None);
    // Method only: any service.
    assert_eq!(rule("/any.Service/Ping", &[]), Some((Kind::GrpcRoute, 3)));
    // Not the route's hostname.
    assert!(pick(routes, "other.example.com", "/pkg.Svc/Get", &[]).is_none());
    // Every GRPCRoute backend is spoken to over HTTP/2, the filter is kept.
    for r in &grpc {
        assert!(
            r.backends
                .iter()
                .all(|b| b.protocol == BackendProtocol::H2c),
            "{r:?}"
        );
    }
    let r1 = grpc.iter().find(|r| r.rule_index == 1).unwrap();
    assert!(matches!(r1.filters[..], [Filter::RequestHeaderModifier(_)]));
    assert_eq!(
        r1.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
        [3, 1]
    );
}

#[test]
fn grpc_route_status_mirrors_httproute_rules() {
    let plan = plan_with(&["grpc.yaml"]);
    let status = plan
        .routes
        .iter()
        .find(|r| r.route.kind == Kind::GrpcRoute && r.route.name == "g")
        .expect("GRPCRoute status");
    let c = &status.parents[0].conditions;
    assert!(condition(c, "Accepted").is_true(), "{c:#?}");
    assert_eq!(condition(c, "Accepted").observed_generation, 2);
    // Cross-namespace backend without a ReferenceGrant (for GRPCRoutes).
    let resolved = condition(c, "ResolvedRefs");
    assert!(!resolved.is_true());
    assert_eq!(resolved.reason, "RefNotPermitted", "{resolved:?}");
    assert!(
        resolved.message.contains("GRPCRoute"),
        "{}",
        resolved.message
    );
    // The RequestMirror rule is dropped, and says so.
    let partial = condition(c, "PartiallyInvalid");
    assert_eq!(partial.reason, "UnsupportedValue");
    assert!(
        partial.message.contains("spec.rules[4].filters[0]")
            && partial.message.contains("RequestMirror"),
        "{}",
        partial.message
    );
    let routes = &listener(&plan, 80).l7().unwrap().routes;
    assert!(
        !routes
            .iter()
            .any(|r| r.route.kind == Kind::GrpcRoute && r.rule_index == 4)
    );
    let ping = routes
        .iter()
        .find(|r| r.route.kind == Kind::GrpcRoute && r.rule_index == 3)
        .unwrap();
    assert_eq!(
        ping.backends[0].target,
        BackendTarget::Invalid(InvalidReason::RefNotPermitted)
    );
}

#[test]
fn grpc_route_is_refused_by_a_listener_that_allows_only_httproutes() {
    let listener_yaml = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra, generation: 3}
spec:
  gatewayClassName: splitter
  listeners:
  - name: http
    protocol: HTTP
    port: 80
    allowedRoutes: {kinds: [{kind: HTTPRoute}]}
"#;
    let mut texts = vec![fixture("base.yaml"), fixture("grpc.yaml")];
    texts.push(listener_yaml.to_string());
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let plan = plan_of(&refs);
    let status = plan
        .routes
        .iter()
        .find(|r| r.route.kind == Kind::GrpcRoute)
        .unwrap();
    let accepted = condition(&status.parents[0].conditions, "Accepted");
    assert!(!accepted.is_true());
    assert_eq!(accepted.reason, "NotAllowedByListeners");
    // By default an HTTP listener takes both kinds, and says so.
    let plan = plan_with(&["grpc.yaml"]);
    let gw = &plan.gateways[0];
    let kinds: Vec<&str> = gw.listeners[0]
        .supported_kinds
        .iter()
        .map(|k| k.kind.as_str())
        .collect();
    assert_eq!(kinds, ["HTTPRoute", "GRPCRoute"]);
}

#[test]
fn httproute_and_grpcroute_on_one_hostname_the_older_wins() {
    let plan = plan_with(&["grpc-conflict.yaml"]);
    let of = |kind: Kind, name: &str| {
        plan.routes
            .iter()
            .find(|r| r.route.kind == kind && r.route.name == name)
            .unwrap()
    };
    let web = condition(
        &of(Kind::HttpRoute, "web").parents[0].conditions,
        "Accepted",
    );
    assert!(web.is_true());
    let late = condition(
        &of(Kind::GrpcRoute, "late").parents[0].conditions,
        "Accepted",
    );
    assert!(!late.is_true());
    assert!(
        late.message.contains("HTTPRoute infra/web"),
        "{}",
        late.message
    );
    let elsewhere = condition(
        &of(Kind::GrpcRoute, "elsewhere").parents[0].conditions,
        "Accepted",
    );
    assert!(elsewhere.is_true());
    let routes = &listener(&plan, 80).l7().unwrap().routes;
    assert!(!routes.iter().any(|r| r.route.name == "late"));
    assert!(routes.iter().any(|r| r.route.name == "elsewhere"));
    assert_eq!(plan.gateways[0].listeners[0].attached_routes, 2);
}

#[test]
fn app_protocol_picks_the_backend_protocol() {
    let plan = plan_with(&["grpc.yaml"]);
    let routes = &listener(&plan, 80).l7().unwrap().routes;
    let backend = |rule: usize| {
        &routes
            .iter()
            .find(|r| r.route.name == "protocols" && r.rule_index == rule)
            .unwrap()
            .backends[0]
    };
    assert_eq!(backend(0).protocol, BackendProtocol::H2c);
    // WebSocket is HTTP/1.1 with an Upgrade; an unknown value is ignored.
    assert_eq!(backend(1).protocol, BackendProtocol::Http1);
    assert!(matches!(backend(1).target, BackendTarget::Endpoints(_)));
    assert_eq!(backend(3).protocol, BackendProtocol::Http1);
    assert!(matches!(backend(3).target, BackendTarget::Endpoints(_)));
    // wss needs TLS to the backend: an invalid ref, named in ResolvedRefs.
    assert_eq!(
        backend(2).target,
        BackendTarget::Invalid(InvalidReason::UnsupportedProtocol)
    );
    let status = route(&plan, "infra", "protocols");
    let resolved = condition(&status.parents[0].conditions, "ResolvedRefs");
    assert_eq!(resolved.reason, "UnsupportedProtocol");
    assert!(resolved.message.contains("kubernetes.io/wss"));
}

#[test]
fn grpc_route_field_errors_name_the_field() {
    let bad = |spec: &str| {
        let yaml = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: bad, namespace: infra}}\nspec:\n{spec}"
        );
        let doc: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        match splitter_plan::model::parse::parse(doc) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    };
    let e = bad("  rules:\n  - matches:\n    - method: {type: Exact}\n");
    assert!(
        e.contains("GRPCRoute infra/bad")
            && e.contains("spec.rules[0].matches[0].method")
            && e.contains("service"),
        "{e}"
    );
    let e = bad("  rules:\n  - matches:\n    - method: {service: \"a/b\", method: M}\n");
    assert!(e.contains("spec.rules[0].matches[0].method.service"), "{e}");
    let e = bad("  rules:\n  - backendRefs: [{name: a, port: 8080, weight: -1}]\n");
    assert!(e.contains("spec.rules[0].backendRefs[0].weight"), "{e}");
    let e = bad("  hostnames: [\"bad_host\"]\n");
    assert!(e.contains("spec.hostnames[0]"), "{e}");
}

#[test]
fn one_catch_all_rule_is_still_l7_for_a_grpcroute_or_an_h2c_backend() {
    let svc = r#"
apiVersion: v1
kind: Service
metadata: {name: h2, namespace: infra}
spec:
  ports: [{name: h2c, port: 9000, targetPort: 3000, appProtocol: kubernetes.io/h2c}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: h2-1, namespace: infra, labels: {kubernetes.io/service-name: h2}}
addressType: IPv4
ports: [{name: h2c, port: 3000, protocol: TCP}]
endpoints: [{addresses: [10.6.0.1]}]
"#;
    let route = |kind: &str, backend: &str, port: u16| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: {kind}\nmetadata: {{name: r, namespace: infra}}\n\
             spec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - backendRefs: [{{name: {backend}, port: {port}}}]\n"
        )
    };
    let base = fixture("base.yaml");
    for (text, why) in [
        (route("GRPCRoute", "a", 8080), "GRPCRoute"),
        (route("HTTPRoute", "h2", 9000), "kubernetes.io/h2c"),
    ] {
        let plan = plan_of(&[&base, svc, &text]);
        let l = listener(&plan, 80);
        assert_eq!(l.mode(), Mode::L7, "{}", l.reason());
        assert!(l.reason().contains(why), "{}", l.reason());
    }
    // The same catch-all HTTPRoute to a plain HTTP/1.1 Service stays in the kernel.
    let plan = plan_of(&[&base, svc, &route("HTTPRoute", "a", 8080)]);
    assert_eq!(listener(&plan, 80).mode(), Mode::L4);
}
