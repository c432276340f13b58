//! HTTPS listeners: certificateRefs resolved to Secrets, checked (PEM, key match, expiry),
//! reported as listener conditions, and carried to the proxy in the L7 table.

use splitter_plan::{
    model::{
        Object,
        parse::{Parsed, parse},
    },
    plan::{
        self, ListenerPlan, Plan, PlanConfig,
        status::{ConditionStatus, ListenerStatus},
        tls::Clock,
    },
};

use crate::support::*;

fn pem(name: &str) -> String {
    fixture(&format!("tls/{name}"))
}

fn b64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                out.push(char::from(A[((v >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A `kubernetes.io/tls` Secret in `ns` holding the fixture certificate and key, as `data`
/// (base64, as the API server returns it).
fn tls_secret(ns: &str, name: &str, cert: &str, key: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         type: kubernetes.io/tls\ndata:\n  tls.crt: {}\n  tls.key: {}\n",
        b64(pem(cert).as_bytes()),
        b64(pem(key).as_bytes())
    )
}

/// Gateway `infra/tls-gw` with the given listeners (YAML flow entries) and a route `infra/web`
/// attached to it sending everything to Service `a`.
fn gateway(listeners: &[&str]) -> String {
    let mut out = String::from(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {name: tls-gw, namespace: infra, creationTimestamp: \"2026-01-02T00:00:00Z\"}\n\
         spec:\n  gatewayClassName: splitter\n  listeners:\n",
    );
    for l in listeners {
        out.push_str(&format!("  - {l}\n"));
    }
    out.push_str(
        "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
         metadata: {name: web, namespace: infra}\n\
         spec:\n  parentRefs: [{name: tls-gw}]\n  rules:\n  - backendRefs: [{name: a, port: 8080}]\n",
    );
    out
}

fn https(name: &str, hostname: Option<&str>, refs: &str) -> String {
    let host = hostname.map_or(String::new(), |h| format!(", hostname: \"{h}\""));
    format!(
        "{{name: {name}, protocol: HTTPS, port: 443{host}, tls: {{mode: Terminate, certificateRefs: [{refs}]}}}}"
    )
}

fn build(texts: &[String], clock: Clock) -> Plan {
    let mut all = vec![fixture("base.yaml")];
    all.extend(texts.iter().cloned());
    let refs: Vec<&str> = all.iter().map(String::as_str).collect();
    plan::build(
        &index_of(&refs),
        &PlanConfig {
            clock,
            ..PlanConfig::default()
        },
        None,
    )
}

fn tls_listener<'a>(plan: &'a Plan, name: &str) -> &'a ListenerStatus {
    plan.gateways
        .iter()
        .find(|g| g.gateway.name == "tls-gw")
        .and_then(|g| g.listeners.iter().find(|l| l.name == name))
        .unwrap_or_else(|| panic!("no status for listener {name}: {:#?}", plan.gateways))
}

fn assert_refused(plan: &Plan, name: &str, reason: &str, message: &str) {
    let l = tls_listener(plan, name);
    let refs = condition(&l.conditions, "ResolvedRefs");
    assert_eq!(refs.status, ConditionStatus::False, "{refs:?}");
    assert_eq!(refs.reason, reason, "{refs:?}");
    assert!(
        refs.message.contains(message),
        "{:?} lacks {message:?}",
        refs.message
    );
    let programmed = condition(&l.conditions, "Programmed");
    assert_eq!(programmed.status, ConditionStatus::False);
    assert!(programmed.message.contains(message), "{programmed:?}");
    assert!(
        plan.listeners.iter().all(|l| l.key().port != 443),
        "a listener whose certificates do not resolve is not served"
    );
    // The HTTP listener of the other Gateway is served regardless.
    let _ = listener(plan, 80);
    assert!(
        plan.problems().iter().any(|p| p.contains(message)),
        "`splitter check` reports it: {:?}",
        plan.problems()
    );
}

#[test]
fn https_listener_terminates_with_the_secret_certificate() {
    let plan = build(
        &[
            gateway(&[&https("https", None, "{name: a-cert}")]),
            tls_secret("infra", "a-cert", "a.crt", "a.key"),
        ],
        Clock::Off,
    );
    let l = tls_listener(&plan, "https");
    for t in ["Accepted", "ResolvedRefs", "Programmed"] {
        assert_eq!(
            condition(&l.conditions, t).status,
            ConditionStatus::True,
            "{t}"
        );
    }
    assert_eq!(l.attached_routes, 1);
    // One rule taking every request would go to the kernel on HTTP; TLS needs the proxy.
    let ListenerPlan::L7 { l7, .. } = listener(&plan, 443) else {
        panic!("HTTPS is served by the proxy");
    };
    assert_eq!(l7.routes.len(), 1);
    let tls = l7.tls.as_ref().expect("the table carries the certificates");
    assert_eq!(tls.certificates.len(), 1);
    let cert = &tls.certificates[0].certificate;
    assert_eq!(cert.secret.to_string(), "Secret infra/a-cert");
    assert_eq!(cert.names, ["a.example.com", "*.wild.example.com"]);
    // notAfter 2126-11-06: 100 years from the fixture's making.
    assert!(
        (4_940_000_000..4_960_000_000).contains(&cert.not_after),
        "{}",
        cert.not_after
    );
    assert_eq!(cert.chain.len(), 1);
    assert!(cert.certified_key().is_ok());
    // The key never appears in the plan's JSON (`splitter check -o json`) nor in Debug.
    let json = serde_json::to_string(&plan).unwrap();
    assert!(json.contains("a.example.com"));
    assert!(
        !json.contains("PRIVATE") && !json.contains("chain"),
        "{json}"
    );
    assert!(!format!("{plan:?}").contains("PRIVATE"));
    // Nor in the index's Debug.
    let index = index_of(&[&tls_secret("infra", "a-cert", "a.crt", "a.key")]);
    let debug = format!("{index:?}");
    assert!(
        debug.contains("redacted") && !debug.contains("PRIVATE"),
        "{debug}"
    );
}

#[test]
fn string_data_secrets_from_manifests_are_read_too() {
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: a-cert, namespace: infra}}\n\
         type: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}\n  tls.key: |\n{}\n",
        indent(&pem("a.crt")),
        indent(&pem("a.key"))
    );
    let plan = build(
        &[gateway(&[&https("https", None, "{name: a-cert}")]), secret],
        Clock::Off,
    );
    let l = tls_listener(&plan, "https");
    assert_eq!(
        condition(&l.conditions, "Programmed").status,
        ConditionStatus::True
    );
}

fn indent(s: &str) -> String {
    s.lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn a_missing_secret_leaves_the_listener_unserved_and_says_which() {
    let plan = build(
        &[gateway(&[&https("https", None, "{name: missing}")])],
        Clock::Off,
    );
    assert_refused(
        &plan,
        "https",
        "InvalidCertificateRef",
        "certificateRefs[0] (Secret missing): Secret infra/missing not found",
    );
}

#[test]
fn each_way_a_certificate_ref_is_invalid() {
    let cases: [(&str, String, &str); 6] = [
        (
            "{name: a-cert, kind: ConfigMap}",
            tls_secret("infra", "a-cert", "a.crt", "a.key"),
            "only core Secrets",
        ),
        (
            "{name: a-cert, group: example.com}",
            tls_secret("infra", "a-cert", "a.crt", "a.key"),
            "only core Secrets",
        ),
        (
            "{name: a-cert}",
            tls_secret("infra", "a-cert", "a.crt", "b.key"),
            "does not match the certificate",
        ),
        (
            "{name: a-cert}",
            tls_secret("infra", "a-cert", "README.md", "a.key"),
            "holds no PEM certificate",
        ),
        (
            "{name: a-cert}",
            tls_secret("infra", "a-cert", "a.crt", "README.md"),
            "tls.key holds no PEM private key",
        ),
        (
            "{name: a-cert}",
            tls_secret("infra", "a-cert", "a.crt", "a.key").replace("kubernetes.io/tls", "Opaque"),
            "is of type Opaque, not kubernetes.io/tls",
        ),
    ];
    for (refs, secret, message) in cases {
        let plan = build(
            &[gateway(&[&https("https", None, refs)]), secret],
            Clock::Off,
        );
        assert_refused(&plan, "https", "InvalidCertificateRef", message);
    }
}

#[test]
fn an_expired_certificate_is_refused_when_a_clock_is_set() {
    let texts = [
        gateway(&[&https("https", None, "{name: a-cert}")]),
        tls_secret("infra", "a-cert", "a.crt", "a.key"),
    ];
    // 2200-01-01: past the fixture's notAfter.
    let plan = build(&texts, Clock::At(7_258_118_400));
    assert_refused(
        &plan,
        "https",
        "InvalidCertificateRef",
        "expired at 2126-11-06T",
    );
    // Today it is valid, and so is it with no clock.
    for clock in [Clock::System, Clock::Off] {
        let plan = build(&texts, clock);
        assert!(listener(&plan, 443).l7().is_some(), "{clock:?}");
    }
}

#[test]
fn a_secret_in_another_namespace_needs_a_reference_grant() {
    let texts = vec![
        gateway(&[&https("https", None, "{name: a-cert, namespace: other}")]),
        tls_secret("other", "a-cert", "a.crt", "a.key"),
    ];
    let plan = build(&texts, Clock::Off);
    assert_refused(
        &plan,
        "https",
        "RefNotPermitted",
        "no ReferenceGrant in namespace other lets Gateways of infra use it",
    );
    let grant = |to: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: ReferenceGrant\n\
             metadata: {{name: certs, namespace: other}}\n\
             spec:\n  from: [{{group: gateway.networking.k8s.io, kind: Gateway, namespace: infra}}]\n  to: [{to}]\n"
        )
    };
    let mut granted = texts.clone();
    granted.push(grant("{group: \"\", kind: Secret, name: a-cert}"));
    let plan = build(&granted, Clock::Off);
    assert!(
        listener(&plan, 443)
            .l7()
            .and_then(|t| t.tls.as_ref())
            .is_some()
    );
    // A grant for another Secret does not do.
    let mut other = texts;
    other.push(grant("{group: \"\", kind: Secret, name: b-cert}"));
    let plan = build(&other, Clock::Off);
    assert_refused(&plan, "https", "RefNotPermitted", "no ReferenceGrant");
}

#[test]
fn sni_picks_among_listeners_and_certificates() {
    // Two HTTPS listeners on one port (one data plane listener), and one catch-all with two
    // certificates.
    let plan = build(
        &[
            gateway(&[
                &https("a", Some("a.example.com"), "{name: a-cert}"),
                &https("b", Some("b.example.com"), "{name: b-cert}"),
                &https(
                    "any",
                    Some("*.example.com"),
                    "{name: b-cert}, {name: a-cert}",
                ),
            ]),
            tls_secret("infra", "a-cert", "a.crt", "a.key"),
            tls_secret("infra", "b-cert", "b.crt", "b.key"),
        ],
        Clock::Off,
    );
    let tls = listener(&plan, 443)
        .l7()
        .and_then(|t| t.tls.clone())
        .expect("tls");
    assert_eq!(tls.certificates.len(), 4);
    let pick = |sni: Option<&str>| tls.select(sni).map(|c| c.secret.name.clone());
    assert_eq!(pick(Some("a.example.com")).as_deref(), Some("a-cert"));
    assert_eq!(pick(Some("B.example.com")).as_deref(), Some("b-cert"));
    // The wildcard listener: the certificate whose names include the SNI (a's *.wild), else
    // its first.
    assert_eq!(pick(Some("x.wild.example.com")).as_deref(), Some("a-cert"));
    assert_eq!(pick(Some("c.example.com")).as_deref(), Some("b-cert"));
    // No SNI, or one no listener takes: the first certificate.
    assert_eq!(pick(None).as_deref(), Some("a-cert"));
    assert_eq!(pick(Some("elsewhere.test")).as_deref(), Some("a-cert"));
}

#[test]
fn http_and_https_on_one_port_conflict() {
    let plan = build(
        &[
            gateway(&[
                "{name: plain, protocol: HTTP, port: 443}",
                &https("https", None, "{name: a-cert}"),
            ]),
            tls_secret("infra", "a-cert", "a.crt", "a.key"),
        ],
        Clock::Off,
    );
    let c = condition(&tls_listener(&plan, "https").conditions, "Conflicted");
    assert_eq!(c.status, ConditionStatus::True);
    assert_eq!(c.reason, "ProtocolConflict");
}

#[test]
fn passthrough_https_is_not_supported() {
    let plan = build(
        &[gateway(&[
            "{name: pt, protocol: HTTPS, port: 443, tls: {mode: Passthrough}}",
        ])],
        Clock::Off,
    );
    let c = condition(&tls_listener(&plan, "pt").conditions, "Accepted");
    assert_eq!(c.status, ConditionStatus::False);
    assert_eq!(c.reason, "UnsupportedProtocol");
    assert!(c.message.contains("Passthrough"), "{c:?}");
}

#[test]
fn tls_is_required_on_https_and_refused_on_http() {
    let parse_gw = |listener: &str| {
        let text = gateway(&[listener]);
        let doc: serde_json::Value = serde_saphyr::from_multiple::<serde_json::Value>(&text)
            .unwrap()
            .remove(0);
        parse(doc).map(|p| matches!(p, Parsed::Object(o) if matches!(*o, Object::Gateway(_))))
    };
    let e = parse_gw("{name: h, protocol: HTTPS, port: 443}").unwrap_err();
    assert_eq!(e.field, "spec.listeners[0].tls", "{e}");
    let e = parse_gw("{name: h, protocol: HTTP, port: 80, tls: {certificateRefs: [{name: x}]}}")
        .unwrap_err();
    assert_eq!(e.field, "spec.listeners[0].tls", "{e}");
    let e = parse_gw("{name: h, protocol: HTTPS, port: 443, tls: {mode: Terminate}}").unwrap_err();
    assert_eq!(e.field, "spec.listeners[0].tls.certificateRefs", "{e}");
    assert!(parse_gw(&https("h", None, "{name: x}")).unwrap());
}
