//! Upstream tests of route attachment and statuses: parentRefs that match no listener, routes
//! a listener does not allow, attachedRoutes, parentRef ports, rule names and timeouts.

use std::collections::BTreeMap;

use crate::harness::*;

const SAME: (&str, &str) = (INFRA, "same-namespace");

macro_rules! suite {
    ($($file:expr),+) => {
        match Suite::start(&[$($file),+]).await {
            Some(s) => s,
            None => return,
        }
    };
}

fn attached_total(s: &Suite, gw: (&str, &str)) -> u32 {
    s.attached_routes(gw.0, gw.1).values().sum()
}

/// HTTPRouteInvalidParentRefNotMatchingSectionName: sectionName `http1` names no listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_invalid_parent_ref_not_matching_section_name() {
    let s = suite!("httproute-invalid-parentref-not-matching-section-name.yaml");
    s.route_must_have(
        (INFRA, "httproute-listener-not-matching-section-name"),
        SAME,
        "Accepted",
        false,
        "NoMatchingParent",
    );
    assert_eq!(
        attached_total(&s, SAME),
        0,
        "the Gateway has 0 routes attached"
    );
    s.shutdown().await;
}

/// HTTPRouteInvalidParentRefNotMatchingListenerPort (feature HTTPRouteParentRefPort): port 81
/// is no listener's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_invalid_parent_ref_not_matching_listener_port() {
    let s = suite!("httproute-invalid-parentref-not-matching-listener-port.yaml");
    let r = (INFRA, "httproute-listener-not-matching-route-port");
    s.route_must_have(r, SAME, "Accepted", false, "NoMatchingParent");
    s.route_must_have(r, SAME, "ResolvedRefs", true, "ResolvedRefs");
    assert_eq!(
        attached_total(&s, SAME),
        0,
        "the Gateway has 0 routes attached"
    );
    s.shutdown().await;
}

/// HTTPRouteInvalidParentRefSectionNameNotMatchingPort (feature HTTPRouteParentRefPort):
/// sectionName `http` with port 81.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_invalid_parent_ref_section_name_not_matching_port() {
    let s = suite!("httproute-invalid-parentref-section-name-not-matching-port.yaml");
    let gw = (
        INFRA,
        "gateway-with-one-not-matching-port-and-section-name-route",
    );
    s.route_must_have(
        (INFRA, "httproute-listener-section-name-not-matching-port"),
        gw,
        "Accepted",
        false,
        "NoMatchingParent",
    );
    assert_eq!(
        attached_total(&s, gw),
        0,
        "the Gateway has 0 routes attached"
    );
    s.shutdown().await;
}

/// HTTPRouteInvalidCrossNamespaceParentRef: a route in web-backend on a Gateway that allows
/// routes from its own namespace only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_invalid_cross_namespace_parent_ref() {
    let s = suite!("httproute-invalid-cross-namespace-parent-ref.yaml");
    s.route_must_have(
        (WEB, "invalid-cross-namespace-parent-ref"),
        SAME,
        "Accepted",
        false,
        "NotAllowedByListeners",
    );
    assert_eq!(
        attached_total(&s, SAME),
        0,
        "the Gateway has 0 routes attached"
    );
    s.shutdown().await;
}

/// GatewayWithAttachedRoutes: attachedRoutes 1 and 2 (a route whose hostnames intersect no
/// listener is not counted); an HTTPS listener whose certificate is missing still counts its
/// route, with ResolvedRefs=False (InvalidCertificateRef) and Programmed=False.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_with_attached_routes() {
    let s = suite!("gateway-with-attached-routes.yaml");
    assert_eq!(
        s.attached_routes(INFRA, "gateway-with-one-attached-route"),
        BTreeMap::from([("http".to_owned(), 1)])
    );
    assert_eq!(
        s.attached_routes(INFRA, "gateway-with-two-attached-routes"),
        BTreeMap::from([("http".to_owned(), 2)])
    );
    s.route_must_have(
        (INFRA, "http-route-not-accepted"),
        (INFRA, "gateway-with-two-attached-routes"),
        "Accepted",
        false,
        "NoMatchingListenerHostname",
    );
    let unresolved = "unresolved-gateway-with-one-attached-unresolved-route";
    let tls = s.listener(INFRA, unresolved, "tls");
    assert_eq!(tls.attached_routes, 1, "{tls:#?}");
    let cond = |t: &str| {
        tls.conditions
            .iter()
            .find(|c| c.type_ == t)
            .unwrap_or_else(|| panic!("{t}: {tls:#?}"))
            .clone()
    };
    assert!(!cond("Programmed").is_true(), "{tls:#?}");
    let refs = cond("ResolvedRefs");
    assert!(!refs.is_true(), "{tls:#?}");
    assert_eq!(refs.reason, "InvalidCertificateRef", "{tls:#?}");
    s.shutdown().await;
}

/// HTTPRouteListenerPortMatching (feature HTTPRouteParentRefPort): a parentRef port attaches
/// to every listener on that port (and sectionName narrows it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_listener_port_matching() {
    let s = suite!("httproute-listener-port-matching.yaml");
    let gw = (INFRA, "httproute-listener-port-matching");
    s.routes_must_be_accepted(
        gw,
        &[
            (INFRA, "backend-v1"),
            (INFRA, "backend-v2"),
            (INFRA, "backend-v3"),
        ],
    );
    let at = |p| s.gateway_port(gw.0, gw.1, p);
    let ok = |host: &str, b: &str| Case::get("/").host(host).backend(b);
    expect_all(
        "HTTPRouteListenerPortMatching/80",
        at(80),
        &[
            ok("foo.com", "infra-backend-v1"),
            Case::get("/").host("bar.com").status(404),
        ],
    )
    .await;
    expect_all(
        "HTTPRouteListenerPortMatching/8080",
        at(8080),
        &[
            ok("foo.com", "infra-backend-v2"),
            ok("bar.com", "infra-backend-v2"),
        ],
    )
    .await;
    expect_all(
        "HTTPRouteListenerPortMatching/8090",
        at(8090),
        &[
            ok("foo.com", "infra-backend-v3"),
            Case::get("/").host("bar.com").status(404),
        ],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteNamedRule (provisional upstream): rule names change nothing in routing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_named_rule() {
    let s = suite!("httproute-named-rule.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "http-named-rules")]);
    expect_all(
        "HTTPRouteNamedRule",
        s.gateway(SAME.0, SAME.1),
        &[
            Case::get("/named").backend("infra-backend-v1"),
            Case::get("/unnamed").backend("infra-backend-v2"),
        ],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteRequestTimeout (feature HTTPRouteRequestTimeout): 500ms, and 0s disables it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_timeout_request() {
    let s = suite!("httproute-timeout-request.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "request-timeout")]);
    expect_all(
        "HTTPRouteRequestTimeout",
        s.gateway(SAME.0, SAME.1),
        &[
            Case::get("/request-timeout").status(200),
            Case::get("/request-timeout?delay=1s").status(504),
            Case::get("/disable-request-timeout?delay=1s").status(200),
        ],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteBackendRequestTimeout (feature HTTPRouteBackendTimeout): 500ms, and 0s disables it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_timeout_backend_request() {
    let s = suite!("httproute-timeout-backend-request.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "backend-request-timeout")]);
    expect_all(
        "HTTPRouteBackendRequestTimeout",
        s.gateway(SAME.0, SAME.1),
        &[
            Case::get("/backend-timeout").status(200),
            Case::get("/backend-timeout?delay=1s").status(504),
            Case::get("/disable-backend-timeout?delay=1s").status(200),
        ],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteObservedGenerationBump: after a spec change (a generation bump, which the harness
/// makes as the API server would; the change, the first backendRef becoming infra-backend-v2,
/// is ours), every condition of the route's parent status carries the new observedGeneration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_observed_generation_bump() {
    let mut s = suite!("httproute-observed-generation-bump.yaml");
    let r = (INFRA, "observed-generation-bump");
    s.routes_must_be_accepted(SAME, &[r]);
    let latest = |s: &Suite, generation: i64| {
        let conds = s.route_conditions(r.0, r.1, SAME);
        assert!(!conds.is_empty());
        for c in &conds {
            assert_eq!(c.observed_generation, generation, "{conds:#?}");
        }
    };
    latest(&s, 1);
    let generation = s
        .edit("HTTPRoute", r.0, r.1, |d| {
            d["spec"]["rules"][0]["backendRefs"][0]["name"] = "infra-backend-v2".into();
        })
        .await;
    assert_eq!(generation, 2);
    s.routes_must_be_accepted(SAME, &[r]);
    latest(&s, 2);
    expect_all(
        "HTTPRouteObservedGenerationBump",
        s.gateway(SAME.0, SAME.1),
        &[Case::get("/").backend("infra-backend-v2")],
    )
    .await;
    s.shutdown().await;
}

/// GatewayObservedGenerationBump: a listener is added (generation 2): the Gateway's and every
/// listener's conditions carry the new observedGeneration, and both listeners are listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_observed_generation_bump() {
    let mut s = suite!("gateway-observed-generation-bump.yaml");
    let gw = (INFRA, "gateway-observed-generation-bump");
    let latest = |s: &Suite, generation: i64, listeners: &[&str]| {
        let st = s.gateway_status(gw.0, gw.1);
        for c in &st.conditions {
            assert_eq!(c.observed_generation, generation, "{st:#?}");
        }
        let names: Vec<&str> = st.listeners.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, listeners, "{st:#?}");
        for l in &st.listeners {
            for c in &l.conditions {
                assert_eq!(c.observed_generation, generation, "{st:#?}");
            }
        }
    };
    latest(&s, 1, &["http"]);
    let generation = s
        .edit("Gateway", gw.0, gw.1, |d| {
            let listeners = d["spec"]["listeners"].as_array_mut().unwrap();
            listeners.push(serde_json::json!({
                "name": "alternate",
                "port": 8080 + PORT_OFFSET,
                "protocol": "HTTP",
            }));
        })
        .await;
    assert_eq!(generation, 2);
    latest(&s, 2, &["http", "alternate"]);
    s.shutdown().await;
}
