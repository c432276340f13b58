//! Upstream HTTPRoute conformance tests (kubernetes-sigs/gateway-api v1.5.1,
//! `conformance/tests/<name>.go`), each named after the upstream test and replaying its cases
//! against the translated manifests (`harness`).

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

/// HTTPRouteSimpleSameNamespace: a route in the Gateway's namespace, `/` to infra-backend-v1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_simple_same_namespace() {
    let s = suite!("httproute-simple-same-namespace.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "gateway-conformance-infra-test")]);
    let gw = s.gateway(SAME.0, SAME.1);
    expect_all(
        "HTTPRouteSimpleSameNamespace",
        gw,
        &[Case::get("/").backend("infra-backend-v1")],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteCrossNamespace: a route in gateway-conformance-web-backend attached to the
/// `backend-namespaces` Gateway (allowedRoutes by namespace selector).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_cross_namespace() {
    let s = suite!("httproute-cross-namespace.yaml");
    let gw = (INFRA, "backend-namespaces");
    s.routes_must_be_accepted(gw, &[(WEB, "cross-namespace")]);
    expect_all(
        "HTTPRouteCrossNamespace",
        s.gateway(gw.0, gw.1),
        &[Case::get("/").backend("web-backend").namespace(WEB)],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteExactPathMatching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_exact_path_matching() {
    let s = suite!("httproute-exact-path-matching.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "exact-matching")]);
    expect_all(
        "HTTPRouteExactPathMatching",
        s.gateway(SAME.0, SAME.1),
        &[
            Case::get("/one").backend("infra-backend-v1"),
            Case::get("/two").backend("infra-backend-v2"),
            Case::get("/").status(404),
            Case::get("/one/example").status(404),
            Case::get("/two/").status(404),
            Case::get("/Two").status(404),
        ],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteMatching: path prefix or header matches, across two rules.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_matching() {
    let s = suite!("httproute-matching.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "matching")]);
    expect_all(
        "HTTPRouteMatching",
        s.gateway(SAME.0, SAME.1),
        &[
            Case::get("/").backend("infra-backend-v1"),
            Case::get("/example").backend("infra-backend-v1"),
            Case::get("/")
                .header("Version", "one")
                .backend("infra-backend-v1"),
            Case::get("/v2").backend("infra-backend-v2"),
            Case::get("/v2/example").backend("infra-backend-v2"),
            Case::get("/")
                .header("Version", "two")
                .backend("infra-backend-v2"),
            Case::get("/v2/").backend("infra-backend-v2"),
            // Not a path segment prefix, so it does not match "/v2".
            Case::get("/v2example").backend("infra-backend-v1"),
            Case::get("/foo/v2/example").backend("infra-backend-v1"),
        ],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteMatchingAcrossRoutes: two routes on one Gateway, with hostnames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_matching_across_routes() {
    let s = suite!("httproute-matching-across-routes.yaml");
    s.routes_must_be_accepted(
        SAME,
        &[(INFRA, "matching-part1"), (INFRA, "matching-part2")],
    );
    expect_all(
        "HTTPRouteMatchingAcrossRoutes",
        s.gateway(SAME.0, SAME.1),
        &[
            Case::get("/")
                .host("example.com")
                .backend("infra-backend-v1"),
            Case::get("/example")
                .host("example.com")
                .backend("infra-backend-v1"),
            Case::get("/example")
                .host("example.net")
                .backend("infra-backend-v1"),
            Case::get("/example")
                .host("example.com")
                .header("Version", "one")
                .backend("infra-backend-v1"),
            Case::get("/v2")
                .host("example.com")
                .backend("infra-backend-v2"),
            Case::get("/v2/example")
                .host("example.com")
                .backend("infra-backend-v2"),
            Case::get("/")
                .host("example.com")
                .header("Version", "two")
                .backend("infra-backend-v2"),
            // matching-part2 has no example.net hostname.
            Case::get("/v2")
                .host("example.net")
                .backend("infra-backend-v1"),
            Case::get("/v2/example")
                .host("example.net")
                .backend("infra-backend-v1"),
            Case::get("/")
                .host("example.net")
                .header("Version", "two")
                .backend("infra-backend-v1"),
        ],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRoutePathMatchOrder: exact beats prefix, longer prefix beats shorter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_path_match_order() {
    let s = suite!("httproute-path-match-order.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "path-matching-order")]);
    expect_all(
        "HTTPRoutePathMatchOrder",
        s.gateway(SAME.0, SAME.1),
        &[
            Case::get("/match/exact/one").backend("infra-backend-v3"),
            Case::get("/match/exact").backend("infra-backend-v2"),
            Case::get("/match").backend("infra-backend-v1"),
            Case::get("/match/prefix/one/any").backend("infra-backend-v2"),
            Case::get("/match/prefix/any").backend("infra-backend-v1"),
            Case::get("/match/any").backend("infra-backend-v3"),
        ],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteHeaderMatching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_header_matching() {
    let s = suite!("httproute-header-matching.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "header-matching")]);
    let h = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .fold(Case::get("/"), |c, (n, v)| c.header(n, v))
    };
    expect_all(
        "HTTPRouteHeaderMatching",
        s.gateway(SAME.0, SAME.1),
        &[
            h(&[("Version", "one")]).backend("infra-backend-v1"),
            h(&[("Version", "two")]).backend("infra-backend-v2"),
            h(&[("Version", "two"), ("Color", "orange")]).backend("infra-backend-v1"),
            h(&[("Version", "one"), ("Color", "blue")]).backend("infra-backend-v1"),
            h(&[("Version", "two"), ("Color", "blue")]).backend("infra-backend-v2"),
            h(&[("Color", "orange")]).status(404),
            h(&[("Some", "Other")]).status(404),
            h(&[("Color", "blue")]).backend("infra-backend-v1"),
            h(&[("Color", "green")]).backend("infra-backend-v1"),
            h(&[("Color", "red")]).backend("infra-backend-v2"),
            h(&[("Color", "yellow")]).backend("infra-backend-v2"),
            h(&[("Color", "purple")]).status(404),
        ],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteHostnameIntersection: routes attach to listeners whose hostnames intersect theirs
/// and serve only the intersection; a route intersecting none is not Accepted
/// (NoMatchingListenerHostname) and not counted in attachedRoutes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_hostname_intersection() {
    let s = suite!("httproute-hostname-intersection.yaml");
    let gwn = (INFRA, "httproute-hostname-intersection");
    let routes = [
        (INFRA, "specific-host-matches-listener-specific-host"),
        (INFRA, "specific-host-matches-listener-wildcard-host"),
        (INFRA, "wildcard-host-matches-listener-specific-host"),
        (INFRA, "wildcard-host-matches-listener-wildcard-host"),
    ];
    s.routes_must_be_accepted(gwn, &routes);
    let gw = s.gateway(gwn.0, gwn.1);
    let ok = |host: &str, path: &str, b: &str| Case::get(path).host(host).backend(b);
    let nf = |host: &str, path: &str| Case::get(path).host(host).status(404);
    expect_all(
        "HTTPRouteHostnameIntersection/intersecting",
        gw,
        &[
            ok("very.specific.com", "/s1", "infra-backend-v1"),
            ok("very.specific.com:1234", "/s1", "infra-backend-v1"),
            nf("non.matching.com", "/s1"),
            nf("foo.nonmatchingwildcard.io", "/s1"),
            nf("foo.wildcard.io", "/s1"),
            nf("very.specific.com", "/non-matching-prefix"),
            ok("foo.wildcard.io", "/s2", "infra-backend-v2"),
            ok("bar.wildcard.io", "/s2", "infra-backend-v2"),
            ok("foo.bar.wildcard.io", "/s2", "infra-backend-v2"),
            nf("non.matching.com", "/s2"),
            nf("wildcard.io", "/s2"),
            nf("very.specific.com", "/s2"),
            nf("foo.wildcard.io", "/non-matching-prefix"),
            ok("very.specific.com", "/s3", "infra-backend-v3"),
            nf("non.matching.com", "/s3"),
            nf("foo.specific.com", "/s3"),
            nf("foo.wildcard.io", "/s3"),
            nf("very.specific.com", "/non-matching-prefix"),
            ok("foo.anotherwildcard.io", "/s4", "infra-backend-v1"),
            ok("bar.anotherwildcard.io", "/s4", "infra-backend-v1"),
            ok("foo.bar.anotherwildcard.io", "/s4", "infra-backend-v1"),
            nf("anotherwildcard.io", "/s4"),
            nf("foo.wildcard.io", "/s4"),
            nf("very.specific.com", "/s4"),
            nf("foo.anotherwildcard.io", "/non-matching-prefix"),
        ],
    )
    .await;

    s.route_must_have(
        (INFRA, "no-intersecting-hosts"),
        gwn,
        "Accepted",
        false,
        "NoMatchingListenerHostname",
    );
    expect_all(
        "HTTPRouteHostnameIntersection/not intersecting",
        gw,
        &[
            nf("specific.but.wrong.com", "/s5"),
            nf("wildcard.io", "/s5"),
        ],
    )
    .await;

    let attached = s.attached_routes(gwn.0, gwn.1);
    assert_eq!(
        attached,
        BTreeMap::from([
            ("listener-1".to_owned(), 2),
            ("listener-2".to_owned(), 1),
            ("listener-3".to_owned(), 1),
        ]),
        "HTTPRouteHostnameIntersection: attachedRoutes counts Accepted routes only"
    );

    let all = (INFRA, "httproute-hostname-intersection-all");
    s.routes_must_be_accepted(all, &[(INFRA, "httproute-hostname-intersection-all")]);
    expect_all(
        "HTTPRouteHostnameIntersection/unspecified hostname listener",
        s.gateway(all.0, all.1),
        &[
            ok("first.com", "/", "infra-backend-v2"),
            ok("sub.first.com", "/", "infra-backend-v2"),
            ok("second.com", "/", "infra-backend-v2"),
            ok("sub.second.com", "/", "infra-backend-v2"),
            nf("third.com", "/"),
            nf("sub.third.com", "/"),
        ],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteListenerHostnameMatching: routes bound by sectionName to listeners with
/// hostnames; the most specific listener wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_listener_hostname_matching() {
    let s = suite!("httproute-listener-hostname-matching.yaml");
    let gwn = (INFRA, "httproute-listener-hostname-matching");
    s.routes_must_be_accepted(
        gwn,
        &[
            (INFRA, "backend-v1"),
            (INFRA, "backend-v2"),
            (INFRA, "backend-v3"),
        ],
    );
    let ok = |host: &str, b: &str| Case::get("/").host(host).backend(b);
    expect_all(
        "HTTPRouteListenerHostnameMatching",
        s.gateway(gwn.0, gwn.1),
        &[
            ok("bar.com", "infra-backend-v1"),
            ok("foo.bar.com", "infra-backend-v2"),
            ok("baz.bar.com", "infra-backend-v3"),
            ok("boo.bar.com", "infra-backend-v3"),
            ok("multiple.prefixes.bar.com", "infra-backend-v3"),
            ok("multiple.prefixes.foo.com", "infra-backend-v3"),
            Case::get("/").host("foo.com").status(404),
            Case::get("/").host("no.matching.host").status(404),
        ],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteRequestHeaderModifier: set overwrites, add appends, remove deletes, names are
/// case-insensitive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_request_header_modifier() {
    request_header_modifier(
        "HTTPRouteRequestHeaderModifier",
        "httproute-request-header-modifier.yaml",
    )
    .await;
}

/// HTTPRouteRequestHeaderModifier's cases on `file`'s route `request-header-modifier`: upstream
/// runs the same cases for the rule's filters and, as HTTPRouteBackendRequestHeaderModifier, for
/// the same filters on the backendRef.
pub(crate) async fn request_header_modifier(test: &str, file: &str) {
    let s = suite!(file);
    s.routes_must_be_accepted(SAME, &[(INFRA, "request-header-modifier")]);
    let v1 = |c: Case| c.backend("infra-backend-v1");
    expect_all(
        test,
        s.gateway(SAME.0, SAME.1),
        &[
            v1(Case::get("/set")
                .header("Some-Other-Header", "val")
                .expect_header("Some-Other-Header", "val")
                .expect_header("X-Header-Set", "set-overwrites-values")),
            v1(Case::get("/set")
                .header("Some-Other-Header", "val")
                .header("X-Header-Set", "some-other-value")
                .expect_header("Some-Other-Header", "val")
                .expect_header("X-Header-Set", "set-overwrites-values")),
            v1(Case::get("/add")
                .header("Some-Other-Header", "val")
                .expect_header("Some-Other-Header", "val")
                .expect_header("X-Header-Add", "add-appends-values")),
            v1(Case::get("/add")
                .header("Some-Other-Header", "val")
                .header("X-Header-Add", "some-other-value")
                .expect_header("Some-Other-Header", "val")
                .expect_header("X-Header-Add", "some-other-value,add-appends-values")),
            v1(Case::get("/remove")
                .header("X-Header-Remove", "val")
                .absent("X-Header-Remove")),
            v1(Case::get("/multiple")
                .header("X-Header-Set-2", "set-val-2")
                .header("X-Header-Add-2", "add-val-2")
                .header("X-Header-Remove-2", "remove-val-2")
                .header("Another-Header", "another-header-val")
                .expect_header("X-Header-Set-1", "header-set-1")
                .expect_header("X-Header-Set-2", "header-set-2")
                .expect_header("X-Header-Add-1", "header-add-1")
                .expect_header("X-Header-Add-2", "add-val-2,header-add-2")
                .expect_header("X-Header-Add-3", "header-add-3")
                .expect_header("Another-Header", "another-header-val")
                .absent("X-Header-Remove-1")
                .absent("X-Header-Remove-2")),
            v1(Case::get("/case-insensitivity")
                .header("x-header-set", "original-val-set")
                .header("x-header-add", "original-val-add")
                .header("x-header-remove", "original-val-remove")
                .header("Another-Header", "another-header-val")
                .expect_header("X-Header-Set", "header-set")
                .expect_header("X-Header-Add", "original-val-add,header-add")
                .expect_header("Another-Header", "another-header-val")
                .absent("x-header-remove")
                .absent("X-Header-Remove")),
        ],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteRedirectHostAndStatus: RequestRedirect with a hostname, default 302 and explicit
/// 301.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_redirect_host_and_status() {
    let s = suite!("httproute-redirect-host-and-status.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "redirect-host-and-status")]);
    let to = |host| Redirect {
        host,
        ..Redirect::default()
    };
    expect_all(
        "HTTPRouteRedirectHostAndStatus",
        s.gateway(SAME.0, SAME.1),
        &[
            Case::get("/hostname-redirect").redirect(302, to("example.org")),
            Case::get("/host-and-status").redirect(301, to("example.org")),
        ],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteWeight: 500 requests, 10 at a time, half with a random `X-Jitter` header; each
/// backend's share within 0.05 of 0.7 / 0.3, and weight 0 gets exactly nothing
/// (`conformance/utils/weight`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_weight() {
    let s = suite!("httproute-weight.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "weighted-backends")]);
    let gw = s.gateway(SAME.0, SAME.1);
    expect_all("HTTPRouteWeight/warm-up", gw, &[Case::get("/").status(200)]).await;
    expect_weights(
        gw,
        &[
            ("infra-backend-v1", 0.7),
            ("infra-backend-v2", 0.3),
            ("infra-backend-v3", 0.0),
        ],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteInvalidNonExistentBackendRef: Accepted, ResolvedRefs=False (BackendNotFound), and
/// the rule answers 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_invalid_nonexistent_backend_ref() {
    let s = suite!("httproute-invalid-nonexistent-backendref.yaml");
    let r = (INFRA, "invalid-nonexistent-backend-ref");
    s.route_must_have(r, SAME, "Accepted", true, "Accepted");
    s.route_must_have(r, SAME, "ResolvedRefs", false, "BackendNotFound");
    expect_all(
        "HTTPRouteInvalidNonExistentBackendRef",
        s.gateway(SAME.0, SAME.1),
        &[Case::get("/").status(500)],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteInvalidBackendRefUnknownKind: ResolvedRefs=False (InvalidKind), 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_invalid_backend_ref_unknown_kind() {
    let s = suite!("httproute-invalid-backendref-unknown-kind.yaml");
    let r = (INFRA, "invalid-backend-ref-unknown-kind");
    s.route_must_have(r, SAME, "Accepted", true, "Accepted");
    s.route_must_have(r, SAME, "ResolvedRefs", false, "InvalidKind");
    expect_all(
        "HTTPRouteInvalidBackendRefUnknownKind",
        s.gateway(SAME.0, SAME.1),
        &[Case::get("/v2").status(500)],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteInvalidCrossNamespaceBackendRef: no ReferenceGrant, ResolvedRefs=False
/// (RefNotPermitted), 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_invalid_cross_namespace_backend_ref() {
    let s = suite!("httproute-invalid-cross-namespace-backend-ref.yaml");
    let r = (INFRA, "invalid-cross-namespace-backend-ref");
    s.route_must_have(r, SAME, "Accepted", true, "Accepted");
    s.route_must_have(r, SAME, "ResolvedRefs", false, "RefNotPermitted");
    expect_all(
        "HTTPRouteInvalidCrossNamespaceBackendRef",
        s.gateway(SAME.0, SAME.1),
        &[Case::get("/").status(500)],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteInvalidReferenceGrant: seven near-miss grants, none of which permits the ref.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_invalid_reference_grant() {
    let s = suite!("httproute-invalid-reference-grant.yaml");
    let r = (INFRA, "reference-grant");
    s.route_must_have(r, SAME, "Accepted", true, "Accepted");
    s.route_must_have(r, SAME, "ResolvedRefs", false, "RefNotPermitted");
    expect_all(
        "HTTPRouteInvalidReferenceGrant",
        s.gateway(SAME.0, SAME.1),
        &[Case::get("/").status(500)],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteReferenceGrant: the grant permits the cross-namespace ref; once deleted, 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_reference_grant() {
    let mut s = suite!("httproute-reference-grant.yaml");
    let r = (INFRA, "reference-grant");
    s.routes_must_be_accepted(SAME, &[r]);
    let gw = s.gateway(SAME.0, SAME.1);
    expect_all(
        "HTTPRouteReferenceGrant",
        gw,
        &[Case::get("/").backend("web-backend").namespace(WEB)],
    )
    .await;
    s.delete("ReferenceGrant", WEB, "reference-grant").await;
    s.route_must_have(r, SAME, "ResolvedRefs", false, "RefNotPermitted");
    expect_all(
        "HTTPRouteReferenceGrant/after the grant is deleted",
        gw,
        &[Case::get("/").status(500)],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRoutePartiallyInvalidViaInvalidReferenceGrant: the grant covers app-backend-v1 only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_partially_invalid_via_invalid_reference_grant() {
    let s = suite!("httproute-partially-invalid-via-invalid-reference-grant.yaml");
    let r = (INFRA, "invalid-reference-grant");
    s.route_must_have(r, SAME, "Accepted", true, "Accepted");
    s.route_must_have(r, SAME, "ResolvedRefs", false, "RefNotPermitted");
    expect_all(
        "HTTPRoutePartiallyInvalidViaInvalidReferenceGrant",
        s.gateway(SAME.0, SAME.1),
        &[
            Case::get("/v2").status(500),
            Case::get("/").backend("app-backend-v1").namespace(APP),
        ],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteHTTPSListener: routes on the HTTPS listeners of `same-namespace-with-https-listener`,
/// each request over TLS with its host as the server name (the client does not verify the
/// certificate, which is the project's test one rather than upstream's generated one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_https_listener() {
    let s = suite!("httproute-https-listener.yaml");
    let gw = (INFRA, "same-namespace-with-https-listener");
    s.routes_must_be_accepted(
        gw,
        &[
            (INFRA, "httproute-https-test"),
            (INFRA, "httproute-https-test-no-hostname"),
        ],
    );
    expect_all_tls(
        "HTTPRouteHTTPSListener",
        s.gateway_port(gw.0, gw.1, 443),
        &[
            Case::get("/")
                .host("example.org")
                .backend("infra-backend-v1"),
            Case::get("/").host("unknown-example.org").status(404),
            Case::get("/")
                .host("second-example.org")
                .backend("infra-backend-v2"),
        ],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteServiceTypes: a headless Service, and Services (headless or not) without selector
/// whose EndpointSlices are written by hand (filled with infra-backend-v1's pods, as upstream
/// does at run time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_service_types() {
    let s = suite!("httproute-service-types.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "service-types")]);
    expect_all(
        "HTTPRouteServiceTypes",
        s.gateway(SAME.0, SAME.1),
        &[
            Case::get("/headless").backend("infra-backend-v1"),
            Case::get("/manual-endpointslices").backend("infra-backend-v1"),
            Case::get("/headless-manual-endpointslices").backend("infra-backend-v1"),
        ],
    )
    .await;
    s.shutdown().await;
}
