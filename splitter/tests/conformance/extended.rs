//! Upstream HTTPRoute conformance tests of Extended features the project claims
//! (`HTTPRouteQueryParamMatching`, `HTTPRouteMethodMatching`, `HTTPRoutePathRewrite`,
//! `HTTPRouteHostRewrite`, `HTTPRouteResponseHeaderModification`, `HTTPRoutePathRedirect`,
//! `HTTPRoutePortRedirect`, `HTTPRouteSchemeRedirect`, `HTTPRoute303/307/308RedirectStatusCode`).

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

/// HTTPRouteQueryParamMatching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_query_param_matching() {
    let s = suite!("httproute-query-param-matching.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "query-param-matching")]);
    let ok = |p: &str, b: &str| Case::get(p).backend(b);
    let nf = |p: &str| Case::get(p).status(404);
    expect_all(
        "HTTPRouteQueryParamMatching",
        s.gateway(SAME.0, SAME.1),
        &[
            ok("/?animal=whale", "infra-backend-v1"),
            ok("/?animal=dolphin", "infra-backend-v2"),
            ok("/?animal=dolphin&color=blue", "infra-backend-v3"),
            ok("/?ANIMAL=Whale", "infra-backend-v3"),
            ok("/?animal=whale&otherparam=irrelevant", "infra-backend-v1"),
            ok("/?animal=dolphin&color=yellow", "infra-backend-v2"),
            nf("/?color=blue"),
            nf("/?animal=dog"),
            nf("/?animal=whaledolphin"),
            nf("/"),
            ok("/path1?animal=whale", "infra-backend-v1"),
            ok("/?animal=whale", "infra-backend-v2").header("version", "one"),
            ok("/path2?animal=whale", "infra-backend-v3").header("version", "two"),
            ok("/path3?animal=shark", "infra-backend-v1"),
            ok("/path4?animal=kraken", "infra-backend-v1").header("version", "three"),
            nf("/?animal=shark"),
            nf("/path4?animal=kraken"),
            ok("/path5?animal=hydra", "infra-backend-v1"),
            ok("/?animal=hydra", "infra-backend-v3").header("version", "four"),
        ],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteMethodMatching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_method_matching() {
    let s = suite!("httproute-method-matching.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "method-matching")]);
    let ok = |m: &str, p: &str, b: &str| Case::get(p).method(m).backend(b);
    let nf = |m: &str, p: &str| Case::get(p).method(m).status(404);
    expect_all(
        "HTTPRouteMethodMatching",
        s.gateway(SAME.0, SAME.1),
        &[
            ok("POST", "/", "infra-backend-v1"),
            ok("GET", "/", "infra-backend-v2"),
            nf("HEAD", "/"),
            ok("GET", "/path1", "infra-backend-v1"),
            ok("PUT", "/", "infra-backend-v2").header("version", "one"),
            ok("POST", "/path2", "infra-backend-v3").header("version", "two"),
            ok("PATCH", "/path3", "infra-backend-v1"),
            ok("DELETE", "/path4", "infra-backend-v1").header("version", "three"),
            nf("PUT", "/"),
            nf("DELETE", "/path4"),
            ok("PATCH", "/path5", "infra-backend-v1"),
            ok("PATCH", "/", "infra-backend-v2").header("version", "four"),
        ],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteRewritePath (feature HTTPRoutePathRewrite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_rewrite_path() {
    let s = suite!("httproute-rewrite-path.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "rewrite-path")]);
    let v1 = |p: &str, to: &str| Case::get(p).expect_path(to).backend("infra-backend-v1");
    let with_headers = |c: Case| {
        c.header("X-Header-Remove", "remove-val")
            .header("X-Header-Add-Append", "append-val-1")
            .header("X-Header-Set", "set-val")
            .expect_header("X-Header-Add", "header-val-1")
            .expect_header("X-Header-Add-Append", "append-val-1,header-val-2")
            .expect_header("X-Header-Set", "set-overwrites-values")
            .absent("X-Header-Remove")
    };
    expect_all(
        "HTTPRouteRewritePath",
        s.gateway(SAME.0, SAME.1),
        &[
            v1("/prefix/one/two", "/one/two"),
            v1("/strip-prefix/three", "/three"),
            v1("/strip-prefix", "/"),
            v1("/full/one/two", "/one"),
            with_headers(v1("/full/rewrite-path-and-modify-headers/test", "/test")),
            with_headers(v1(
                "/prefix/rewrite-path-and-modify-headers/one",
                "/prefix/one",
            )),
        ],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteRewriteHost (feature HTTPRouteHostRewrite).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_rewrite_host() {
    let s = suite!("httproute-rewrite-host.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "rewrite-host")]);
    expect_all(
        "HTTPRouteRewriteHost",
        s.gateway(SAME.0, SAME.1),
        &[
            Case::get("/one")
                .host("rewrite.example")
                .expect_host("one.example.org")
                .backend("infra-backend-v1"),
            Case::get("/two")
                .host("rewrite.example")
                .expect_host("example.org")
                .backend("infra-backend-v2"),
            Case::get("/rewrite-host-and-modify-headers")
                .host("rewrite.example")
                .header("X-Header-Remove", "remove-val")
                .header("X-Header-Add-Append", "append-val-1")
                .expect_host("test.example.org")
                .expect_header("X-Header-Add", "header-val-1")
                .expect_header("X-Header-Add-Append", "append-val-1,header-val-2")
                .expect_header("X-Header-Set", "set-overwrites-values")
                .absent("X-Header-Remove")
                .backend("infra-backend-v2"),
        ],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteResponseHeaderModifier (feature HTTPRouteResponseHeaderModification). The echo
/// sets the response headers named by the case (`BackendSetResponseHeaders`); the cases of
/// the v1.5.1 manifest's last two rules are written from the manifest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_response_header_modifier() {
    let s = suite!("httproute-response-header-modifier.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "response-header-modifier")]);
    let v1 = |p: &str| Case::get(p).backend("infra-backend-v1");
    expect_all(
        "HTTPRouteResponseHeaderModifier",
        s.gateway(SAME.0, SAME.1),
        &[
            v1("/set")
                .backend_sets("Some-Other-Header", "val")
                .response_header("Some-Other-Header", "val")
                .response_header("X-Header-Set", "set-overwrites-values"),
            v1("/set")
                .backend_sets("Some-Other-Header", "val")
                .backend_sets("X-Header-Set", "some-other-value")
                .response_header("Some-Other-Header", "val")
                .response_header("X-Header-Set", "set-overwrites-values"),
            v1("/add")
                .backend_sets("Some-Other-Header", "val")
                .response_header("Some-Other-Header", "val")
                .response_header("X-Header-Add", "add-appends-values"),
            v1("/add")
                .backend_sets("Some-Other-Header", "val")
                .backend_sets("X-Header-Add", "some-other-value")
                .response_header("Some-Other-Header", "val")
                .response_header("X-Header-Add", "some-other-value,add-appends-values"),
            v1("/remove")
                .backend_sets("X-Header-Remove", "val")
                .absent_response("X-Header-Remove"),
            v1("/multiple")
                .backend_sets("X-Header-Set-2", "set-val-2")
                .backend_sets("X-Header-Add-2", "add-val-2")
                .backend_sets("X-Header-Remove-2", "remove-val-2")
                .backend_sets("Another-Header", "another-header-val")
                .response_header("X-Header-Set-1", "header-set-1")
                .response_header("X-Header-Set-2", "header-set-2")
                .response_header("X-Header-Add-1", "header-add-1")
                .response_header("X-Header-Add-2", "add-val-2,header-add-2")
                .response_header("X-Header-Add-3", "header-add-3")
                .response_header("Another-Header", "another-header-val")
                .absent_response("X-Header-Remove-1")
                .absent_response("X-Header-Remove-2"),
            v1("/case-insensitivity")
                .backend_sets("x-header-set", "original-val-set")
                .backend_sets("x-header-add", "original-val-add")
                .backend_sets("x-header-remove", "original-val-remove")
                .backend_sets("Another-Header", "another-header-val")
                .response_header("X-Header-Set", "header-set")
                .response_header("X-Header-Add", "original-val-add,header-add")
                .response_header("x-lowercase-add", "lowercase-add")
                .response_header("x-mixedcase-add-1", "mixedcase-add-1")
                .response_header("x-mixedcase-add-2", "mixedcase-add-2")
                .response_header("x-uppercase-add", "uppercase-add")
                .response_header("Another-Header", "another-header-val")
                .absent_response("x-header-remove"),
            v1("/response-and-request-header-modifiers")
                .header("X-Header-Remove", "remove-val")
                .header("X-Header-Add-Append", "append-val-1")
                .backend_sets("X-Header-Remove-1", "val")
                .expect_header("X-Header-Set", "set-overwrites-values")
                .expect_header("X-Header-Add", "header-val-1")
                .expect_header("X-Header-Add-Append", "append-val-1,header-val-2")
                .absent("X-Header-Remove")
                .response_header("X-Header-Set-1", "header-set-1")
                .response_header("X-Header-Set-2", "header-set-2")
                .response_header("X-Header-Add-1", "header-add-1")
                .response_header("X-Header-Add-2", "header-add-2")
                .absent_response("X-Header-Remove-1"),
        ],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteRedirectPath (feature HTTPRoutePathRedirect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_redirect_path() {
    let s = suite!("httproute-redirect-path.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "redirect-path")]);
    let r = |host, path| Redirect {
        host,
        path,
        ..Redirect::default()
    };
    expect_all(
        "HTTPRouteRedirectPath",
        s.gateway(SAME.0, SAME.1),
        &[
            Case::get("/original-prefix/lemon").redirect(302, r("", "/replacement-prefix/lemon")),
            Case::get("/full/path/original").redirect(302, r("", "/full-path-replacement")),
            Case::get("/path-and-host").redirect(302, r("example.org", "/replacement-prefix")),
            Case::get("/path-and-status").redirect(301, r("", "/replacement-prefix")),
            Case::get("/full-path-and-host").redirect(302, r("example.org", "/replacement-full")),
            Case::get("/full-path-and-status").redirect(301, r("", "/replacement-full")),
        ],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteRedirectPort (feature HTTPRoutePortRedirect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_redirect_port() {
    let s = suite!("httproute-redirect-port.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "redirect-port")]);
    let r = |host| Redirect {
        host,
        port: "8083",
        ..Redirect::default()
    };
    expect_all(
        "HTTPRouteRedirectPort",
        s.gateway(SAME.0, SAME.1),
        &[
            Case::get("/port").redirect(302, r("")),
            Case::get("/port-and-host").redirect(302, r("example.org")),
            Case::get("/port-and-status").redirect(301, r("")),
            Case::get("/port-and-host-and-status").redirect(302, r("example.org")),
        ],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteRedirectScheme (feature HTTPRouteSchemeRedirect): https with no port keeps no
/// port (or 443).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_redirect_scheme() {
    let s = suite!("httproute-redirect-scheme.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "redirect-scheme")]);
    let r = |host| Redirect {
        scheme: "https",
        host,
        ..Redirect::default()
    };
    expect_all(
        "HTTPRouteRedirectScheme",
        s.gateway(SAME.0, SAME.1),
        &[
            Case::get("/scheme").redirect(302, r("")),
            Case::get("/scheme-and-host").redirect(302, r("example.org")),
            Case::get("/scheme-and-status").redirect(301, r("")),
            Case::get("/scheme-and-host-and-status").redirect(302, r("example.org")),
        ],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRoute303Redirect, HTTPRoute307Redirect, HTTPRoute308Redirect (provisional upstream).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_303_307_308_redirect() {
    let s = suite!(
        "httproute-303-redirect.yaml",
        "httproute-307-redirect.yaml",
        "httproute-308-redirect.yaml"
    );
    s.routes_must_be_accepted(
        SAME,
        &[
            (INFRA, "303-redirect"),
            (INFRA, "307-redirect"),
            (INFRA, "308-redirect"),
        ],
    );
    let gw = s.gateway(SAME.0, SAME.1);
    for (test, path, code) in [
        ("HTTPRoute303Redirect", "/see-other", 303),
        ("HTTPRoute307Redirect", "/temporary", 307),
        ("HTTPRoute308Redirect", "/permanent", 308),
    ] {
        expect_all(
            test,
            gw,
            &[Case::get(path).redirect(code, Redirect::default())],
        )
        .await;
    }
    s.shutdown().await;
}

/// HTTPRouteRedirectPortAndScheme (features HTTPRoutePortRedirect, GatewayPort8080): redirects
/// from listeners on 80, 8080 and 443 (HTTPS), with and without scheme and port; a port that is
/// the scheme's default may be left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_redirect_port_and_scheme() {
    let s = suite!("httproute-redirect-port-and-scheme.yaml");
    let on_80 = (INFRA, "same-namespace");
    let on_8080 = (INFRA, "same-namespace-with-http-listener-on-8080");
    let on_443 = (INFRA, "same-namespace-with-https-listener");
    s.routes_must_be_accepted(on_80, &[(INFRA, "http-route-for-listener-on-port-80")]);
    s.routes_must_be_accepted(on_8080, &[(INFRA, "http-route-for-listener-on-port-8080")]);
    s.routes_must_be_accepted(on_443, &[(INFRA, "http-route-for-listener-on-port-443")]);
    let to = |scheme, port| Redirect {
        scheme,
        host: "example.org",
        port,
        path: "",
    };
    let case = |path: &str, scheme, port| Case::get(path).redirect(302, to(scheme, port));
    expect_all(
        "HTTPRouteRedirectPortAndScheme/http-listener-on-80",
        s.gateway(on_80.0, on_80.1),
        &[
            case("/scheme-nil-and-port-nil", "http", ""),
            case("/scheme-nil-and-port-80", "http", ""),
            case("/scheme-nil-and-port-8080", "http", "8080"),
            case("/scheme-https-and-port-nil", "https", ""),
            case("/scheme-https-and-port-443", "https", ""),
            case("/scheme-https-and-port-8443", "https", "8443"),
        ],
    )
    .await;
    expect_all(
        "HTTPRouteRedirectPortAndScheme/http-listener-on-8080",
        s.gateway_port(on_8080.0, on_8080.1, 8080),
        &[
            case("/scheme-nil-and-port-nil", "http", "8080"),
            case("/scheme-nil-and-port-80", "http", ""),
            case("/scheme-https-and-port-nil", "https", ""),
        ],
    )
    .await;
    let tls = |path: &str, scheme, port| case(path, scheme, port).host("example.org");
    expect_all_tls(
        "HTTPRouteRedirectPortAndScheme/https-listener-on-443",
        s.gateway_port(on_443.0, on_443.1, 443),
        &[
            tls("/scheme-nil-and-port-nil", "https", ""),
            tls("/scheme-nil-and-port-443", "https", ""),
            tls("/scheme-nil-and-port-8443", "https", "8443"),
            tls("/scheme-http-and-port-nil", "http", ""),
            tls("/scheme-http-and-port-80", "http", ""),
            tls("/scheme-http-and-port-8080", "http", "8080"),
        ],
    )
    .await;
    s.shutdown().await;
}
