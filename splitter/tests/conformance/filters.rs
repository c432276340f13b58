//! Upstream HTTPRoute conformance tests of the RequestMirror, backendRef filter and CORS
//! features: `HTTPRouteRequestMirror`, `HTTPRouteRequestMultipleMirrors`,
//! `HTTPRouteRequestPercentageMirror`, `HTTPRouteBackendRequestHeaderModifier`,
//! `HTTPRouteRequestHeaderModifierBackendWeights`, `HTTPRouteCORS`,
//! `HTTPRouteCORSAllowCredentialsBehavior`.

use std::time::Duration;

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

/// The request of the `*-and-modify-headers` cases and what the primary must see.
fn modified(path: &str) -> Case {
    Case::get(path)
        .backend("infra-backend-v1")
        .header("X-Header-Remove", "remove-val")
        .header("X-Header-Add-Append", "append-val-1")
        .expect_header("X-Header-Add", "header-val-1")
        .expect_header("X-Header-Add-Append", "append-val-1,header-val-2")
        .expect_header("X-Header-Set", "set-overwrites-values")
        .absent("X-Header-Remove")
}

/// HTTPRouteRequestMirror: the client gets infra-backend-v1, and infra-backend-v2's pods log
/// the same path (upstream `ExpectMirroredRequest`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_request_mirror() {
    let s = suite!("httproute-request-mirror.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "request-mirror")]);
    let gw = s.gateway(SAME.0, SAME.1);
    let cases = [
        (Case::get("/mirror").backend("infra-backend-v1"), "/mirror"),
        (
            modified("/mirror-and-modify-headers"),
            "/mirror-and-modify-headers",
        ),
    ];
    for (case, path) in cases {
        expect_all("HTTPRouteRequestMirror", gw, &[case]).await;
        s.expect_mirrored("HTTPRouteRequestMirror", &["infra-backend-v2"], path)
            .await;
        assert_eq!(
            s.echo_log_count(INFRA, "infra-backend-v3", path),
            0,
            "only the mirror gets copies"
        );
    }
    s.shutdown().await;
}

/// HTTPRouteRequestMultipleMirrors: two mirror filters on a rule, each backend gets a copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_request_multiple_mirrors() {
    let s = suite!("httproute-request-multiple-mirrors.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "request-multiple-mirrors")]);
    let gw = s.gateway(SAME.0, SAME.1);
    let both = ["infra-backend-v2", "infra-backend-v3"];
    let cases = [
        (
            Case::get("/multi-mirror").backend("infra-backend-v1"),
            "/multi-mirror",
        ),
        (
            modified("/multi-mirror-and-modify-request-headers"),
            "/multi-mirror-and-modify-request-headers",
        ),
    ];
    for (case, path) in cases {
        expect_all("HTTPRouteRequestMultipleMirrors", gw, &[case]).await;
        s.expect_mirrored("HTTPRouteRequestMultipleMirrors", &both, path)
            .await;
    }
    s.shutdown().await;
}

/// HTTPRouteRequestPercentageMirror: after the usual case check, 500 requests 10 at a time;
/// the mirror's pods log within 5% of `percent` of them (upstream `tolerancePercentage`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_request_percentage_mirror() {
    const TOTAL: usize = 500;
    const CONCURRENT: usize = 10;
    let s = suite!("httproute-request-percentage-mirror.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "request-percentage-mirror")]);
    let gw = s.gateway(SAME.0, SAME.1);
    let cases = [
        (
            Case::get("/percent-mirror").backend("infra-backend-v1"),
            "/percent-mirror",
            20.0,
        ),
        (
            Case::get("/percent-mirror-fraction").backend("infra-backend-v1"),
            "/percent-mirror-fraction",
            50.0,
        ),
        (
            modified("/percent-mirror-and-modify-headers"),
            "/percent-mirror-and-modify-headers",
            35.0,
        ),
    ];
    for (case, path, percent) in cases {
        expect_all(
            "HTTPRouteRequestPercentageMirror",
            gw,
            std::slice::from_ref(&case),
        )
        .await;
        // Copies of the checks above may still be on their way.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = s.echo_log_count(INFRA, "infra-backend-v2", path);
        for _ in 0..TOTAL / CONCURRENT {
            let batch: Vec<_> = (0..CONCURRENT)
                .map(|_| {
                    let headers = case.headers.clone();
                    tokio::spawn(async move { round_trip(gw, "GET", "", path, &headers).await })
                })
                .collect();
            for b in batch {
                let got = b.await.unwrap().expect("request");
                assert_eq!(got.status, 200, "HTTPRouteRequestPercentageMirror: {path}");
            }
        }
        let expected = TOTAL as f64 * percent / 100.0;
        let (min, max) = (expected * 0.95, expected * 1.05);
        let until = std::time::Instant::now() + Duration::from_secs(10);
        let mut got;
        loop {
            got = (s.echo_log_count(INFRA, "infra-backend-v2", path) - before) as f64;
            if got >= min || std::time::Instant::now() > until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        got = (s.echo_log_count(INFRA, "infra-backend-v2", path) - before) as f64;
        assert!(
            got >= min && got <= max,
            "HTTPRouteRequestPercentageMirror {path}: {got} copies of {TOTAL}, want {min}..={max}"
        );
    }
    s.shutdown().await;
}

/// HTTPRouteBackendRequestHeaderModifier: upstream runs HTTPRouteRequestHeaderModifier's cases
/// with the filters on the backendRef.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_backend_request_header_modifier() {
    crate::httproute::request_header_modifier(
        "HTTPRouteBackendRequestHeaderModifier",
        "httproute-request-header-modifier-backend.yaml",
    )
    .await;
}

/// HTTPRouteRequestHeaderModifierBackendWeights: two backendRefs of equal weight each set
/// `Backend` to their own name; over 100 requests each answer comes from the pod the header
/// names, and exactly one `Backend` header is seen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_request_header_modifier_backend_weights() {
    let s = suite!("httproute-request-header-modifier-backend-weights.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "request-header-modifier-backend-weights")]);
    let gw = s.gateway(SAME.0, SAME.1);
    expect_all(
        "HTTPRouteRequestHeaderModifierBackendWeights",
        gw,
        &[Case::get("/")],
    )
    .await;
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..100 {
        let got = round_trip(gw, "GET", "", "/", &[]).await.expect("request");
        let req = got.request.expect("echo answer");
        let backends = req.headers.get("backend").cloned().unwrap_or_default();
        assert_eq!(backends.len(), 1, "one Backend header: {backends:?}");
        assert!(
            req.pod.starts_with(&backends[0]),
            "pod {} got Backend {}",
            req.pod,
            backends[0]
        );
        *seen.entry(backends[0].clone()).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "both backends answered: {seen:?}");
    s.shutdown().await;
}

/// HTTPRouteCORS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_cors() {
    let s = suite!("httproute-cors.yaml");
    s.routes_must_be_accepted(
        SAME,
        &[
            (INFRA, "cors-multiple-origins-methods-headers"),
            (INFRA, "cors-wildcard-methods"),
            (INFRA, "cors-wildcard-origin"),
            (INFRA, "cors-wildcard-methods-headers"),
        ],
    );
    let preflight = |path: &str, origin: &str, method: &str| {
        Case::get(path)
            .method("OPTIONS")
            .namespace("")
            .header("Origin", origin)
            .header("access-control-request-method", method)
    };
    let cors1 = |c: Case, origin: &str| {
        c.header("access-control-request-headers", "x-header-1, x-header-2")
            .response_one_of("access-control-allow-origin", &[origin])
            .response_one_of(
                "access-control-allow-methods",
                &["GET, OPTIONS", "OPTIONS, GET"],
            )
            .response_one_of(
                "access-control-allow-headers",
                &["x-header-1, x-header-2", "x-header-2, x-header-1"],
            )
            .response_one_of(
                "access-control-expose-headers",
                &["x-header-3, x-header-4", "x-header-4, x-header-3"],
            )
            .response_one_of("access-control-max-age", &["3600"])
            .response_one_of("access-control-allow-credentials", &["true"])
    };
    let simple = |path: &str, method: &str, origin: &str| {
        Case::get(path).method(method).header("Origin", origin)
    };
    expect_all(
        "HTTPRouteCORS",
        s.gateway(SAME.0, SAME.1),
        &[
            cors1(
                preflight("/cors-1", "https://www.foo.com", "GET"),
                "https://www.foo.com",
            )
            .statuses(&[200, 204]),
            cors1(
                preflight("/cors-1", "https://www.bar.com", "GET"),
                "https://www.bar.com",
            ),
            cors1(
                preflight("/cors-1", "https://xpto.www.bar.com", "GET"),
                "https://xpto.www.bar.com",
            ),
            preflight("/cors-1", "https://foobar.com", "GET")
                .statuses(&[200, 204, 403])
                .absent_response("access-control-allow-origin"),
            simple("/cors-1", "GET", "https://www.foo.com")
                .header("access-control-request-method", "GET")
                .header("access-control-request-headers", "x-header-1, x-header-2")
                .statuses(&[200, 204])
                .response_header("access-control-allow-origin", "https://www.foo.com"),
            simple("/cors-1", "GET", "https://www.bar.com")
                .header("access-control-request-method", "GET")
                .header("access-control-request-headers", "x-header-1, x-header-2")
                .statuses(&[200, 204])
                .response_header("access-control-allow-origin", "https://www.bar.com"),
            simple("/cors-1", "GET", "https://foobar.com")
                .header("access-control-request-method", "GET")
                .absent_response("access-control-allow-origin"),
            preflight("/cors-2", "https://www.foo.com", "POST")
                .statuses(&[200, 204])
                .response_one_of("access-control-allow-methods", &["POST", "*"])
                .response_header("access-control-allow-origin", "https://www.foo.com")
                .absent_response("access-control-allow-credentials"),
            preflight("/cors-2", "https://www.foo.com", "POST")
                .absent_response("Access-Control-Allow-Credentials"),
            preflight("/cors-wildcard-origin", "https://foobar.com", "PUT")
                .statuses(&[200, 204])
                .response_one_of("access-control-allow-origin", &["https://foobar.com", "*"])
                .response_one_of("access-control-allow-methods", &["PUT"])
                .absent_response("Access-Control-Allow-Credentials"),
            preflight("/cors-wildcard-origin", "https://foobar.com:12345", "PUT")
                .statuses(&[200, 204])
                .response_one_of(
                    "access-control-allow-origin",
                    &["https://foobar.com:12345", "*"],
                )
                .response_one_of("access-control-allow-methods", &["PUT"])
                .absent_response("Access-Control-Allow-Credentials"),
            simple("/cors-wildcard-origin", "PUT", "https://foobar.com:12345")
                .statuses(&[200])
                .response_one_of(
                    "access-control-allow-origin",
                    &["https://foobar.com:12345", "*"],
                ),
            simple("/cors-wildcard-origin", "PUT", "https://foobar.com")
                .statuses(&[200, 204])
                .response_one_of("access-control-allow-origin", &["https://foobar.com", "*"])
                .absent_response("Access-Control-Allow-Credentials"),
            preflight(
                "/cors-wildcard-methods-headers",
                "https://other.foo.com",
                "PUT",
            )
            .header("access-control-request-headers", "x-header-1, x-header-2")
            .response_one_of("access-control-allow-origin", &["https://other.foo.com"])
            .response_one_of("access-control-allow-methods", &["PUT"])
            .response_one_of(
                "access-control-allow-headers",
                &["x-header-1, x-header-2", "x-header-2, x-header-1"],
            )
            .response_one_of("access-control-allow-credentials", &["true"]),
            preflight(
                "/cors-wildcard-methods-headers-unauth",
                "https://other.foo.com",
                "PUT",
            )
            .header("access-control-request-headers", "x-header-1, x-header-2")
            .response_one_of(
                "access-control-allow-origin",
                &["https://other.foo.com", "*"],
            )
            .response_one_of("access-control-allow-methods", &["PUT", "*"])
            .response_one_of(
                "access-control-allow-headers",
                &["x-header-1, x-header-2", "x-header-2, x-header-1", "*"],
            )
            .absent_response("access-control-allow-credentials"),
            simple(
                "/cors-wildcard-methods-headers",
                "GET",
                "https://other.foo.com",
            )
            .header("Authorization", "Bearer test")
            .response_one_of("access-control-allow-origin", &["https://other.foo.com"])
            .response_one_of("access-control-allow-credentials", &["true"]),
            simple(
                "/cors-wildcard-methods-headers-unauth",
                "GET",
                "https://other.foo.com",
            )
            .header("Authorization", "Bearer test")
            .response_one_of("access-control-allow-origin", &["https://other.foo.com"])
            .absent_response("access-control-allow-credentials"),
        ],
    )
    .await;
    s.shutdown().await;
}

/// HTTPRouteCORSAllowCredentialsBehavior: `Access-Control-Allow-Credentials` only when
/// configured true, and then only with a matching origin.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_cors_allow_credentials_behavior() {
    let s = suite!("httproute-cors-allow-credentials-behavior.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "cors-allow-credentials")]);
    let with_creds = |path: &str, origin: &str| {
        Case::get(path)
            .header("Origin", origin)
            .header("Cookie", "sid=abc123")
            .header("Authorization", "Bearer test")
    };
    expect_all(
        "HTTPRouteCORSAllowCredentialsBehavior",
        s.gateway(SAME.0, SAME.1),
        &[
            with_creds("/cors-behavior-creds-false", "https://app.example")
                .absent_response("Access-Control-Allow-Credentials"),
            with_creds("/cors-behavior-creds-true", "http://not-app.example")
                .absent_response("Access-Control-Allow-Credentials"),
            with_creds("/cors-behavior-creds-true", "https://app.example")
                .response_header("Access-Control-Allow-Credentials", "true")
                .response_header("Access-Control-Allow-Origin", "https://app.example"),
        ],
    )
    .await;
    s.shutdown().await;
}
