//! `splitter check` end to end: the binary on the repo's manifests.

use std::{path::PathBuf, process::Command};

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn check(args: &[PathBuf], json: bool) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_splitter"));
    cmd.arg("check").env("RUST_LOG", "off");
    for a in args {
        cmd.arg("--manifests").arg(a);
    }
    if json {
        cmd.args(["-o", "json"]);
    }
    let out = cmd.output().expect("run splitter");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn the_guide_checks_clean() {
    let (ok, out) = check(
        &[
            repo("../deploy/gatewayclass.yaml"),
            repo("../deploy/examples"),
        ],
        false,
    );
    assert!(ok, "{out}");
    assert!(out.contains("listener *:80/tcp: L7"), "{out}");
    assert!(out.contains("50.00%"), "{out}");
    assert!(
        out.contains("filter URLRewrite ReplacePrefixMatch \"/\""),
        "{out}"
    );
    assert!(out.contains("attachedRoutes 1"), "{out}");
}

#[test]
fn invalid_input_exits_1_but_prints_everything_else() {
    let fixtures = repo("../splitter-plan/tests/fixtures");
    let (ok, out) = check(
        &[
            fixtures.join("base.yaml"),
            fixtures.join("invalid-backends.yaml"),
        ],
        false,
    );
    assert!(!ok);
    assert!(out.contains("invalid: BackendNotFound (500)"), "{out}");
    assert!(out.contains("no ready endpoints (503)"), "{out}");
    assert!(out.contains("ResolvedRefs=False (RefNotPermitted"), "{out}");
    assert!(out.contains("INVALID"), "{out}");

    let (ok, out) = check(
        &[fixtures.join("base.yaml"), fixtures.join("l4-routes.yaml")],
        true,
    );
    assert!(!ok, "the UDPRoute has a missing backend");
    let v: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(v["ok"], false);
    let listeners = v["plan"]["listeners"].as_array().unwrap();
    assert!(
        listeners
            .iter()
            .any(|l| l["mode"] == "L4" && l["l4"]["table"]["m"] == 16381)
    );
}

#[test]
fn an_unservable_regex_is_an_error_naming_the_field() {
    let fixtures = repo("../splitter-plan/tests/fixtures");
    let (ok, out) = check(
        &[
            fixtures.join("base.yaml"),
            fixtures.join("unservable-values.yaml"),
        ],
        false,
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("HTTPRoute infra/bad-path-regex")
            && out.contains("spec.rules[0].matches[0].path.value: invalid regular expression"),
        "{out}"
    );
}

/// A route filter that would write a framing header is an error of `splitter check`, naming the
/// file and document, the object and the field.
#[test]
fn a_filter_on_a_framing_header_is_an_error_naming_the_field() {
    let fixtures = repo("../splitter-plan/tests/fixtures");
    let (ok, out) = check(
        &[
            fixtures.join("base.yaml"),
            fixtures.join("unservable-values.yaml"),
        ],
        false,
    );
    assert!(!ok, "{out}");
    let problem = out
        .lines()
        .find(|l| l.contains("HTTPRoute infra/smuggling-filters parent"))
        .unwrap_or_else(|| panic!("no problem line for the route: {out}"));
    assert!(
        problem.contains("unservable-values.yaml: document 5: HTTPRoute infra/smuggling-filters")
            && problem.contains("PartiallyInvalid=True (UnsupportedValue")
            && problem.contains(
                "spec.rules[0].filters[0].requestHeaderModifier.set[1].name: header \"content-length\" frames the message"
            ),
        "{problem}"
    );
}

#[test]
fn https_listeners_show_their_certificates_and_a_missing_secret_is_an_error() {
    let tls = repo("../splitter-plan/tests/fixtures/tls");
    let indent = |f: &str| {
        std::fs::read_to_string(tls.join(f))
            .unwrap()
            .lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let manifests = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\n\
         metadata: {{name: gw, namespace: infra}}\n\
         spec:\n  gatewayClassName: splitter\n  listeners:\n\
         \x20 - {{name: https, protocol: HTTPS, port: 443, tls: {{certificateRefs: [{{name: site}}]}}}}\n\
         \x20 - {{name: broken, protocol: HTTPS, port: 8443, tls: {{certificateRefs: [{{name: missing}}]}}}}\n\
         ---\napiVersion: v1\nkind: Secret\nmetadata: {{name: site, namespace: infra}}\n\
         type: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}\n  tls.key: |\n{}\n",
        indent("a.crt"),
        indent("a.key")
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tls.yaml");
    std::fs::write(&file, manifests).unwrap();
    let class = repo("../deploy/gatewayclass.yaml");
    let (ok, out) = check(&[class.clone(), file.clone()], false);
    assert!(!ok, "{out}");
    assert!(
        out.contains(
            "tls for *: Secret infra/site [a.example.com, *.wild.example.com] until 2126-"
        ),
        "{out}"
    );
    assert!(
        out.contains("ResolvedRefs=False (InvalidCertificateRef"),
        "{out}"
    );
    assert!(
        out.contains("certificateRefs[0] (Secret missing): Secret infra/missing not found"),
        "{out}"
    );
    assert!(!out.contains("listener *:8443"), "{out}");
    let (_, json) = check(&[class, file], true);
    assert!(json.contains("a.example.com"), "{json}");
    assert!(
        !json.contains("PRIVATE KEY"),
        "the key never leaves the agent: {json}"
    );
}

#[test]
fn grpc_routes_are_checked_and_a_bad_one_names_file_object_and_field() {
    let fixtures = repo("../splitter-plan/tests/fixtures");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad-grpc.yaml");
    std::fs::write(
        &bad,
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\n\
         metadata: {name: bad, namespace: infra}\nspec:\n  rules:\n  - matches:\n    \
         - method: {service: \"a/b\"}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_splitter"))
        .arg("check")
        .env("RUST_LOG", "off")
        .args(["--manifests"])
        .arg(fixtures.join("base.yaml"))
        .args(["--manifests"])
        .arg(fixtures.join("grpc.yaml"))
        .args(["--manifests"])
        .arg(&bad)
        .output()
        .expect("run splitter");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "{}: document 1: GRPCRoute infra/bad: spec.rules[0].matches[0].method.service",
            bad.display()
        )),
        "{text}"
    );
    // The valid GRPCRoute is planned: its rules, HTTP/2 backends, and gRPC answers.
    assert!(
        text.contains("GRPCRoute infra/g rule 0: path = /pkg.Svc/Get"),
        "{text}"
    );
    assert!(text.contains("infra/a:8080"), "{text}");
    assert!(text.contains("2 endpoints, h2c"), "{text}");
    assert!(
        text.contains("invalid: RefNotPermitted (UNAVAILABLE)"),
        "{text}"
    );
    assert!(
        text.contains("supportedKinds [HTTPRoute, GRPCRoute]"),
        "{text}"
    );
}

#[test]
fn tls_passthrough_listeners_say_kernel_or_proxy_and_why() {
    let fixtures = repo("../splitter-plan/tests/fixtures");
    let (ok, out) = check(
        &[
            fixtures.join("base.yaml"),
            fixtures.join("tls-passthrough.yaml"),
        ],
        false,
    );
    // The fixture holds a refused Terminate listener and a route that attaches nowhere.
    assert!(!ok, "{out}");
    assert!(out.contains("listener *:8443/tcp: L4"), "{out}");
    assert!(out.contains("takes every server name"), "{out}");
    assert!(out.contains("listener *:9443/tcp: L7"), "{out}");
    assert!(
        out.contains("TLSRoute infra/exact passthrough for SNI abc.example.com"),
        "{out}"
    );
    assert!(
        out.contains("TLSRoute infra/wild passthrough for SNI *.example.com"),
        "{out}"
    );
    assert!(out.contains("invalid: BackendNotFound (closed)"), "{out}");
    assert!(out.contains("Accepted=False (UnsupportedValue"), "{out}");
    assert!(!out.contains("listener *:11443"), "{out}");
}
