//! Upstream Gateway conformance tests the project's model covers: listener isolation, route
//! kinds, TLS certificate references and ReferenceGrants for Secrets (statuses, as
//! `kubernetes.GatewayStatusMustHaveListeners` checks them).

use crate::harness::*;

macro_rules! suite {
    ($($file:expr),+) => {
        match Suite::start(&[$($file),+]).await {
            Some(s) => s,
            None => return,
        }
    };
}

/// GatewayHTTPListenerIsolation (feature GatewayHTTPListenerIsolation): a request is served
/// only by the routes of the most specific listener its host matches, with hostnames on the
/// listeners only and with intersecting hostnames on the routes too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_http_listener_isolation() {
    let s = suite!(
        "gateway-http-listener-isolation.yaml",
        "gateway-http-listener-isolation-with-hostname-intersection.yaml"
    );
    let ok = |host: &str, path: &str| Case::get(path).host(host).backend("infra-backend-v1");
    let nf = |host: &str, path: &str| Case::get(path).host(host).status(404);
    let cases = [
        ok("bar.com", "/empty-hostname"),
        nf("bar.com", "/wildcard-example-com"),
        nf("bar.com", "/wildcard-foo-example-com"),
        nf("bar.com", "/abc-foo-example-com"),
        nf("bar.example.com", "/empty-hostname"),
        ok("bar.example.com", "/wildcard-example-com"),
        nf("bar.example.com", "/wildcard-foo-example-com"),
        nf("bar.example.com", "/abc-foo-example-com"),
        nf("bar.foo.example.com", "/empty-hostname"),
        nf("bar.foo.example.com", "/wildcard-example-com"),
        ok("bar.foo.example.com", "/wildcard-foo-example-com"),
        nf("bar.foo.example.com", "/abc-foo-example-com"),
        nf("abc.foo.example.com", "/empty-hostname"),
        nf("abc.foo.example.com", "/wildcard-example-com"),
        nf("abc.foo.example.com", "/wildcard-foo-example-com"),
        ok("abc.foo.example.com", "/abc-foo-example-com"),
    ];
    for (gw, suffix) in [
        ("http-listener-isolation", ""),
        (
            "http-listener-isolation-with-hostname-intersection",
            "-with-hostname-intersection",
        ),
    ] {
        let routes: Vec<String> = [
            "empty-hostname",
            "wildcard-example-com",
            "wildcard-foo-example-com",
            "abc-foo-example-com",
        ]
        .iter()
        .map(|l| format!("attaches-to-{l}{suffix}"))
        .collect();
        let routes: Vec<(&str, &str)> = routes.iter().map(|r| (INFRA, r.as_str())).collect();
        s.routes_must_be_accepted((INFRA, gw), &routes);
        expect_all(
            &format!("GatewayHTTPListenerIsolation/{gw}"),
            s.gateway(INFRA, gw),
            &cases,
        )
        .await;
    }
    s.shutdown().await;
}

fn listener_must_have(s: &Suite, gw: &str, listener: &str, want: &[(&str, bool, &str)]) {
    let l = s.listener(INFRA, gw, listener);
    for (type_, status, reason) in want {
        let ok = l.conditions.iter().any(|c| {
            c.type_ == *type_
                && c.is_true() == *status
                && (reason.is_empty() || c.reason == *reason)
        });
        assert!(
            ok,
            "Gateway {gw} listener {listener}: expected {type_}={status} ({reason}), got {:#?}",
            l.conditions
        );
    }
}

/// GatewayInvalidRouteKind: a listener allowing only an unknown kind, and one allowing it
/// next to HTTPRoute: ResolvedRefs=False (InvalidRouteKinds), supportedKinds without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_invalid_route_kind() {
    let s = suite!("gateway-invalid-route-kind.yaml");
    for (gw, kinds) in [
        ("gateway-only-invalid-route-kind", vec![]),
        (
            "gateway-supported-and-invalid-route-kind",
            vec!["HTTPRoute"],
        ),
    ] {
        listener_must_have(
            &s,
            gw,
            "http",
            &[("ResolvedRefs", false, "InvalidRouteKinds")],
        );
        let l = s.listener(INFRA, gw, "http");
        let got: Vec<&str> = l.supported_kinds.iter().map(|k| k.kind.as_str()).collect();
        assert_eq!(got, kinds, "Gateway {gw}: supportedKinds");
    }
    s.shutdown().await;
}

/// GatewayInvalidTLSConfiguration: a missing Secret, a ref of another group or kind, and a
/// malformed Secret: each listener ResolvedRefs=False (InvalidCertificateRef), not Programmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_invalid_tls_configuration() {
    let s = suite!("gateway-invalid-tls-configuration.yaml");
    for gw in [
        "gateway-certificate-nonexistent-secret",
        "gateway-certificate-unsupported-group",
        "gateway-certificate-unsupported-kind",
        "gateway-certificate-malformed-secret",
    ] {
        listener_must_have(
            &s,
            gw,
            "https",
            &[
                ("ResolvedRefs", false, "InvalidCertificateRef"),
                ("Programmed", false, ""),
            ],
        );
    }
    s.shutdown().await;
}

/// GatewaySecretMissingReferenceGrant and GatewaySecretInvalidReferenceGrant: a Secret in
/// another namespace without a (matching) grant: ResolvedRefs=False (RefNotPermitted), not
/// Programmed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_secret_missing_or_invalid_reference_grant() {
    for (file, gw) in [
        (
            "gateway-secret-missing-reference-grant.yaml",
            "gateway-secret-missing-reference-grant",
        ),
        (
            "gateway-secret-invalid-reference-grant.yaml",
            "gateway-secret-invalid-reference-grant",
        ),
    ] {
        let s = suite!(file);
        listener_must_have(
            &s,
            gw,
            "https",
            &[
                ("ResolvedRefs", false, "RefNotPermitted"),
                ("Programmed", false, ""),
            ],
        );
        s.shutdown().await;
    }
}

/// GatewaySecretReferenceGrantAllInNamespace and GatewaySecretReferenceGrantSpecific: the grant
/// permits the Secret: the listener is Accepted, Programmed and ResolvedRefs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_secret_reference_grant() {
    for (file, gw) in [
        (
            "gateway-secret-reference-grant-all-in-namespace.yaml",
            "gateway-secret-reference-grant-all-in-namespace",
        ),
        (
            "gateway-secret-reference-grant-specific.yaml",
            "gateway-secret-reference-grant-specific",
        ),
    ] {
        let s = suite!(file);
        listener_must_have(
            &s,
            gw,
            "https",
            &[
                ("Accepted", true, ""),
                ("Programmed", true, ""),
                ("ResolvedRefs", true, "ResolvedRefs"),
            ],
        );
        s.shutdown().await;
    }
}

/// GatewayModifyListeners: a listener added to a Gateway is programmed, gets its route and
/// serves it (the traffic check is ours); a removed listener is gone from the status and stops
/// serving. Conditions carry the new generation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_modify_listeners() {
    let mut s = suite!("gateway-modify-listeners.yaml");
    let ok = |want: &[(&str, u32)], s: &Suite, gw: &str, generation: i64| {
        let st = s.gateway_status(INFRA, gw);
        let got: Vec<(&str, u32)> = st
            .listeners
            .iter()
            .map(|l| (l.name.as_str(), l.attached_routes))
            .collect();
        assert_eq!(got, want, "Gateway {gw}: {st:#?}");
        for l in &st.listeners {
            listener_must_have(
                s,
                gw,
                &l.name,
                &[("Accepted", true, ""), ("ResolvedRefs", true, "")],
            );
            assert!(
                l.conditions
                    .iter()
                    .all(|c| c.observed_generation == generation),
                "{st:#?}"
            );
        }
        assert!(
            st.conditions
                .iter()
                .all(|c| c.observed_generation == generation),
            "{st:#?}"
        );
    };

    let add = "gateway-add-listener";
    ok(&[("https", 1)], &s, add, 1);
    let ip = s.gateway_port(INFRA, add, 443).ip();
    let generation = s
        .edit("Gateway", INFRA, add, |d| {
            d["spec"]["listeners"]
                .as_array_mut()
                .unwrap()
                .push(serde_json::json!({
                    "name": "http",
                    "port": 80 + PORT_OFFSET,
                    "protocol": "HTTP",
                    "hostname": "data.test.com",
                    "allowedRoutes": {"namespaces": {"from": "All"}},
                }));
        })
        .await;
    ok(&[("https", 1), ("http", 1)], &s, add, generation);
    let http = std::net::SocketAddr::new(ip, 80 + PORT_OFFSET);
    expect_all(
        "GatewayModifyListeners/added",
        http,
        &[Case::get("/")
            .host("data.test.com")
            .backend("infra-backend-v1")],
    )
    .await;

    let remove = "gateway-remove-listener";
    ok(&[("https", 1), ("http", 1)], &s, remove, 1);
    let https = s.gateway_port(INFRA, remove, 443);
    expect_all_tls(
        "GatewayModifyListeners/before removal",
        https,
        &[Case::get("/")
            .host("secure.test.com")
            .backend("infra-backend-v1")],
    )
    .await;
    let generation = s
        .edit("Gateway", INFRA, remove, |d| {
            d["spec"]["listeners"]
                .as_array_mut()
                .unwrap()
                .retain(|l| l["name"] == "http");
        })
        .await;
    ok(&[("http", 1)], &s, remove, generation);
    assert!(
        tokio::net::TcpStream::connect(https).await.is_err(),
        "the removed listener stops serving"
    );
    s.shutdown().await;
}

/// GatewayClassObservedGenerationBump: a changed description (generation 2) is reflected in
/// the class's conditions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gatewayclass_observed_generation_bump() {
    let mut s = suite!("httproute-simple-same-namespace.yaml");
    let class = |s: &Suite| {
        s.plan
            .gateway_classes
            .iter()
            .find(|c| c.class.name == "splitter")
            .cloned()
            .expect("GatewayClass status")
    };
    let before = class(&s);
    assert!(
        before
            .conditions
            .iter()
            .any(|c| c.type_ == "Accepted" && c.is_true() && c.observed_generation == 1),
        "{before:#?}"
    );
    let generation = s
        .edit("GatewayClass", "", "splitter", |d| {
            d["spec"]["description"] = "an update".into();
        })
        .await;
    let after = class(&s);
    assert!(
        after
            .conditions
            .iter()
            .all(|c| c.observed_generation == generation),
        "{after:#?}"
    );
    assert!(
        after
            .conditions
            .iter()
            .any(|c| c.type_ == "Accepted" && c.is_true()),
        "{after:#?}"
    );
    s.shutdown().await;
}
