//! Upstream TLSRoute tests (feature TLSRoute: passthrough by SNI; Terminate on a TLS listener
//! is not supported and is refused as upstream's `...TerminateNotSupported` tests expect), and
//! HTTPRouteDisallowedKind, which needs a TLS listener. Traffic goes through the proxy's
//! passthrough listeners (the suite forces L7; the kernel case is `tests/kernel/tls_netns.rs`)
//! to backends that terminate TLS with their own certificate: the client sees that
//! certificate, so the proxy did not terminate.

use crate::{harness::*, tcp::*};

macro_rules! suite {
    ($($file:expr),+) => {
        match Suite::start(&[$($file),+]).await {
            Some(s) => s,
            None => return,
        }
    };
}

/// A `tls-backend` or `tls-backend-2` pod of `namespace` answered (echo-basic over HTTPS: the
/// backend's own TLS; the client gets its certificate).
fn https_case(host: &str, backend: &str) -> Case {
    Case::get("/").host(host).backend(backend).namespace(INFRA)
}

/// TLSRouteSimpleSameNamespace: `abc.example.com` through a `*.example.com` passthrough
/// listener reaches `tcp-backend` over TLS, which saw the server name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlsroute_simple_same_namespace() {
    let s = suite!("tlsroute-simple-same-namespace.yaml");
    let gw = (INFRA, "gateway-tlsroute");
    let route = (INFRA, "gateway-conformance-infra-test");
    s.tls_routes_must_be_accepted(gw, &[route]);
    let addr = s.gateway_port(INFRA, "gateway-tlsroute", 443);
    for _ in 0..3 {
        let a = tcp_over_tls(addr, "abc.example.com")
            .await
            .expect("a valid TCP response");
        assert_eq!(a.is_tls, "true", "BackendIsTLS");
        assert_eq!(a.namespace, INFRA);
        assert!(a.pod.starts_with("tcp-backend-"), "pod {}", a.pod);
        assert_eq!(a.server_name, "abc.example.com");
        assert_eq!(
            a.leaf,
            backend_leaf(),
            "the backend's certificate, not the gateway's"
        );
    }
    s.shutdown().await;
}

/// TLSRouteHostnameIntersection: four listeners (exact, more and less specific wildcards, no
/// hostname), routes attached by intersecting names, each name to its backend, others refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlsroute_hostname_intersection() {
    let s = suite!("tlsroute-hostname-intersection.yaml");
    let cases: [(&str, &[&str], bool, &str); 4] = [
        (
            "gw-tlsroute-exact-hostname-x-1",
            &["tlsroute-more-specific-wc-hostname-x-1"],
            false,
            "non.matching.com",
        ),
        (
            "gw-tlsroute-more-specific-wc-hostname-x-2",
            &[
                "tlsroute-exact-hostname-x-2",
                "tlsroute-less-specific-wc-hostname-x-2",
            ],
            true,
            "non.matching.com",
        ),
        (
            "gw-tlsroute-less-specific-wc-hostname-x-3",
            &[
                "tlsroute-exact-hostname-x-3",
                "tlsroute-more-specific-wc-hostname-x-3",
            ],
            true,
            "non.matching.com",
        ),
        (
            "gw-tlsroute-empty-hostname-x-4",
            &[
                "tlsroute-exact-hostname-x-4",
                "tlsroute-less-specific-wc-hostname-x-4",
            ],
            true,
            "non.matching.org",
        ),
    ];
    for (gw, routes, wildcard, other) in cases {
        let routes: Vec<(&str, &str)> = routes.iter().map(|r| (INFRA, *r)).collect();
        s.tls_routes_must_be_accepted((INFRA, gw), &routes);
        for r in &routes {
            s.route_must_have(*r, (INFRA, gw), "ResolvedRefs", true, "ResolvedRefs");
        }
        let addr = s.gateway_port(INFRA, gw, 443);
        let mut expected = vec![https_case("abc.example.com", "tls-backend")];
        if wildcard {
            expected.push(https_case("other.example.com", "tls-backend-2"));
        }
        expect_all_tls(
            &format!("TLSRouteHostnameIntersection/{gw}"),
            addr,
            &expected,
        )
        .await;
        expect_tls_rejected(addr, other).await;
    }
    s.shutdown().await;
}

/// TLSRouteInvalidBackendRefNonexistent: Accepted, ResolvedRefs=False (BackendNotFound), and
/// the route's connections are rejected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlsroute_invalid_backend_ref_nonexistent() {
    let s = suite!("tlsroute-invalid-backendref-nonexistent.yaml");
    let gw = (INFRA, "gateway-tlsroute-invalid-backend-ref-nonexistent");
    let route = (INFRA, "invalid-backend-ref-nonexistent");
    s.tls_routes_must_be_accepted(gw, &[route]);
    s.route_must_have(route, gw, "ResolvedRefs", false, "BackendNotFound");
    expect_tls_rejected(s.gateway_port(gw.0, gw.1, 443), "example.com").await;
    s.shutdown().await;
}

/// TLSRouteInvalidBackendRefUnknownKind: ResolvedRefs=False (InvalidKind).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlsroute_invalid_backend_ref_unknown_kind() {
    let s = suite!("tlsroute-invalid-backendref-unknown-kind.yaml");
    let gw = (INFRA, "gateway-tlsroute-invalid-backend-ref-unknown-kind");
    let route = (INFRA, "invalid-backend-ref-unknown-kind");
    s.tls_routes_must_be_accepted(gw, &[route]);
    s.route_must_have(route, gw, "ResolvedRefs", false, "InvalidKind");
    expect_tls_rejected(s.gateway_port(gw.0, gw.1, 443), "example.com").await;
    s.shutdown().await;
}

/// TLSRouteInvalidNoMatchingListener: HTTP and HTTPS listeners do not take TLSRoutes
/// (NotAllowedByListeners); a sectionName no listener has (NoMatchingParent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlsroute_invalid_no_matching_listener() {
    let s = suite!("tlsroute-invalid-no-matching-listener.yaml");
    let http = (INFRA, "gateway-tlsroute-http-only");
    let https = (INFRA, "gateway-tlsroute-https-only");
    let passthrough = (INFRA, "gateway-tlsroute-tls-passthrough-only");
    let r_http = (INFRA, "tlsroute-not-allowed-protocol-http");
    let r_https = (INFRA, "tlsroute-not-allowed-protocol-https");
    let r_section = (INFRA, "tlsroute-no-matching-section-name");
    s.route_must_have(r_http, http, "Accepted", false, "NotAllowedByListeners");
    s.route_must_have(r_https, https, "Accepted", false, "NotAllowedByListeners");
    s.route_must_have(
        r_section,
        passthrough,
        "Accepted",
        false,
        "NoMatchingParent",
    );
    for r in [r_http, r_https, r_section] {
        s.route_has_no_accepted_parents(r.0, r.1);
    }
    for gw in [http, https] {
        let attached: u32 = s.attached_routes(gw.0, gw.1).values().sum();
        assert_eq!(attached, 0, "{gw:?} has 0 routes attached");
    }
    s.shutdown().await;
}

/// TLSRouteInvalidNoMatchingListenerHostname: no route name intersects the listener's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlsroute_invalid_no_matching_listener_hostname() {
    let s = suite!("tlsroute-invalid-no-matching-listener-hostname.yaml");
    for (route, gw) in [
        ("tlsroute-hostname-mismatch-1", "gateway-tls-exact-hostname"),
        (
            "tlsroute-hostname-mismatch-2",
            "gateway-tls-wildcard-hostname",
        ),
    ] {
        s.route_must_have(
            (INFRA, route),
            (INFRA, gw),
            "Accepted",
            false,
            "NoMatchingListenerHostname",
        );
        s.route_has_no_accepted_parents(INFRA, route);
        let attached: u32 = s.attached_routes(INFRA, gw).values().sum();
        assert_eq!(attached, 0, "{gw} has 0 routes attached");
    }
    s.shutdown().await;
}

/// TLSRouteInvalidReferenceGrant: none of the grants covers the cross-namespace backendRef.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlsroute_invalid_reference_grant() {
    let s = suite!("tlsroute-invalid-reference-grant.yaml");
    let gw = (INFRA, "gateway-tlsroute-referencegrant");
    let route = (INFRA, "gateway-conformance-infra-test");
    s.tls_routes_must_be_accepted(gw, &[route]);
    s.route_must_have(route, gw, "ResolvedRefs", false, "RefNotPermitted");
    s.shutdown().await;
}

/// TLSRouteListenerPassthroughSupportedKinds: TCPRoute is not taken by a TLS listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlsroute_listener_passthrough_supported_kinds() {
    let s = suite!("tlsroute-listener-passthrough-supported-kinds.yaml");
    let l = s.listener(
        INFRA,
        "gateway-tlsroute-passthrough-supported-kind",
        "tls-passthrough",
    );
    let kinds: Vec<(&str, &str)> = l
        .supported_kinds
        .iter()
        .map(|k| (k.group.as_str(), k.kind.as_str()))
        .collect();
    assert_eq!(kinds, [("gateway.networking.k8s.io", "TLSRoute")]);
    let c = l
        .conditions
        .iter()
        .find(|c| c.type_ == "ResolvedRefs")
        .expect("ResolvedRefs");
    assert_eq!(
        (c.is_true(), c.reason.as_str()),
        (false, "InvalidRouteKinds")
    );
    assert_eq!(l.attached_routes, 0);
    s.shutdown().await;
}

/// TLSRouteListenerTerminateNotSupported: a TLS listener with `tls.mode: Terminate` is not
/// accepted (UnsupportedValue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlsroute_listener_terminate_not_supported() {
    let s = suite!("tlsroute-listener-terminate-not-supported.yaml");
    let l = s.listener(
        INFRA,
        "gateway-tlsroute-terminate-unsupported",
        "tls-terminate",
    );
    let c = l
        .conditions
        .iter()
        .find(|c| c.type_ == "Accepted")
        .expect("Accepted");
    assert_eq!(
        (c.is_true(), c.reason.as_str()),
        (false, "UnsupportedValue")
    );
    assert_eq!(l.attached_routes, 0);
    assert!(
        s.plan.listeners.iter().all(|l| l
            .sources()
            .iter()
            .all(|src| src.gateway.name != "gateway-tlsroute-terminate-unsupported")),
        "nothing serves the refused listener: {:#?}",
        s.plan.listeners
    );
    s.shutdown().await;
}

/// TLSRouteListenerMixedTerminationNotSupported: Terminate and Passthrough on one port conflict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tlsroute_listener_mixed_termination_not_supported() {
    let s = suite!("tlsroute-listener-mixed-termination-not-supported.yaml");
    for name in ["tls-terminate", "tls-passthrough"] {
        let l = s.listener(
            INFRA,
            "gateway-tlsroute-mixed-termination-not-supported",
            name,
        );
        let c = l
            .conditions
            .iter()
            .find(|c| c.type_ == "Accepted")
            .expect("Accepted");
        assert_eq!(
            (c.is_true(), c.reason.as_str()),
            (false, "ProtocolConflict"),
            "{name}"
        );
        assert_eq!(l.attached_routes, 0, "{name}");
    }
    s.shutdown().await;
}

/// HTTPRouteDisallowedKind: a listener that takes only TLSRoutes refuses an HTTPRoute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_disallowed_kind() {
    let s = suite!("httproute-disallowed-kind.yaml");
    let gw = (INFRA, "tlsroutes-only");
    let route = (INFRA, "disallowed-kind");
    s.route_must_have(route, gw, "ResolvedRefs", true, "ResolvedRefs");
    s.route_must_have(route, gw, "Accepted", false, "NotAllowedByListeners");
    s.route_has_no_accepted_parents(route.0, route.1);
    let attached: u32 = s.attached_routes(gw.0, gw.1).values().sum();
    assert_eq!(attached, 0);
    s.shutdown().await;
}
