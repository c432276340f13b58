//! The file source: multi-document files and directories, skipped kinds, precise errors, the
//! last good version of a broken object, and change detection.

use std::{fs, path::Path};

use splitter::source::{FileSource, SourceError};
use splitter_plan::model::{Kind, Object, index::Update};

const ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: ns}
spec:
  parentRefs: [{name: gw}]
  rules:
  - backendRefs: [{name: a, port: 80, weight: WEIGHT}]
"#;

fn write(dir: &Path, name: &str, text: &str) {
    fs::write(dir.join(name), text).unwrap();
}

fn route_weight(source: &FileSource) -> Option<u32> {
    source.objects().into_iter().find_map(|o| match o {
        Object::HttpRoute(r) => Some(r.rules[0].backends[0].weight),
        _ => None,
    })
}

#[test]
fn directories_of_multi_document_files_with_skipped_kinds() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: d}}\n---\n{}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c}}\n",
        ROUTE.replace("WEIGHT", "5")
    );
    write(dir.path(), "all.yaml", &text);
    write(dir.path(), "notes.txt", "not a manifest");
    fs::create_dir(dir.path().join("..data")).unwrap();
    write(&dir.path().join("..data"), "hidden.yaml", "{{{ not yaml");
    let mut source = FileSource::new([dir.path().to_path_buf()]);
    let report = source.scan();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(
        report
            .skipped
            .iter()
            .map(|s| s.kind.as_str())
            .collect::<Vec<_>>(),
        ["Deployment", "ConfigMap"]
    );
    assert_eq!(report.skipped[1].document, 3);
    assert_eq!(route_weight(&source), Some(5));
    // A relist per kind, the route in its own.
    let updates = source.updates();
    assert_eq!(updates.len(), Kind::ALL.len());
    assert!(
        updates
            .iter()
            .any(|u| matches!(u, Update::Reset(Kind::HttpRoute, v) if v.len() == 1))
    );
}

#[test]
fn a_bad_object_is_reported_precisely_and_its_last_good_version_kept() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("route.yaml");
    let other = "apiVersion: v1\nkind: Namespace\nmetadata: {name: ns}\n---\n";
    fs::write(&file, format!("{other}{}", ROUTE.replace("WEIGHT", "5"))).unwrap();
    let mut source = FileSource::new([file.clone()]);
    assert!(source.scan().errors.is_empty());

    // Out of range: rejected as CRD validation would; the weight-5 version stays.
    fs::write(
        &file,
        format!("{other}{}", ROUTE.replace("WEIGHT", "2000000")),
    )
    .unwrap();
    bump_mtime(&file);
    let report = source.scan();
    assert!(report.changed);
    assert_eq!(report.errors.len(), 1);
    let e = &report.errors[0];
    let SourceError::Object {
        path,
        document,
        error,
    } = e
    else {
        panic!("{e}")
    };
    assert_eq!(path, &file);
    assert_eq!(*document, 2);
    assert_eq!(error.object, "HTTPRoute ns/r");
    assert_eq!(error.field, "spec.rules[0].backendRefs[0].weight");
    assert!(error.reason.contains("0..=1000000"), "{}", error.reason);
    let line = e.to_string();
    assert!(
        line.contains(
            "route.yaml: document 2: HTTPRoute ns/r: spec.rules[0].backendRefs[0].weight"
        ),
        "{line}"
    );
    assert_eq!(route_weight(&source), Some(5));
    assert_eq!(source.objects().len(), 2, "the namespace still applies");

    // Not YAML at all: the file keeps everything it had.
    fs::write(&file, "key: [unclosed").unwrap();
    bump_mtime(&file);
    let report = source.scan();
    assert!(matches!(report.errors[0], SourceError::Yaml { .. }));
    assert_eq!(route_weight(&source), Some(5));

    // Fixed: the new version applies and the errors are gone.
    fs::write(&file, ROUTE.replace("WEIGHT", "7")).unwrap();
    bump_mtime(&file);
    let report = source.scan();
    assert!(report.errors.is_empty());
    assert_eq!(route_weight(&source), Some(7));
    assert_eq!(
        source.objects().len(),
        1,
        "the namespace was removed from the file"
    );

    // Unchanged: nothing to do.
    assert!(!source.scan().changed);
    // Deleted: its objects go.
    fs::remove_file(&file).unwrap();
    let report = source.scan();
    assert!(report.changed);
    assert!(matches!(report.errors[0], SourceError::Read { .. }));
    assert!(source.objects().is_empty());
}

#[test]
fn crd_validation_errors_name_the_field() {
    let cases = [
        (
            "{name: a, port: 80, weight: -1}",
            "spec.rules[0].backendRefs[0].weight",
        ),
        ("{name: a}", "spec.rules[0].backendRefs[0].port"),
        (
            "{name: a, port: 70000}",
            "spec.rules[0].backendRefs[0].port",
        ),
    ];
    for (backend, field) in cases {
        let text = ROUTE.replace("{name: a, port: 80, weight: WEIGHT}", backend);
        let e = parse_err(&text);
        assert_eq!(e.field, field, "{backend}");
    }
    let bad_path = ROUTE
        .replace(
            "- backendRefs",
            "- matches: [{path: {value: \"/a//b\"}}]\n    backendRefs",
        )
        .replace("WEIGHT", "1");
    let e = parse_err(&bad_path);
    assert_eq!(e.field, "spec.rules[0].matches[0].path.value");
    assert!(e.reason.contains("//"), "{}", e.reason);
    let rewrite_two_matches = ROUTE
        .replace(
            "- backendRefs",
            "- matches: [{path: {value: /a}}, {path: {value: /b}}]\n    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /}}}]\n    backendRefs",
        )
        .replace("WEIGHT", "1");
    assert_eq!(
        parse_err(&rewrite_two_matches).field,
        "spec.rules[0].filters"
    );
}

#[test]
fn defaults_are_applied_as_the_api_server_would() {
    let text = r#"
apiVersion: gateway.networking.k8s.io/v1beta1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{name: gw}]
  rules:
  - filters: [{type: RequestRedirect, requestRedirect: {hostname: example.org}}]
  - backendRefs: [{name: a, port: 80}]
"#;
    let Object::HttpRoute(r) = parse_ok(text) else {
        panic!()
    };
    assert_eq!(r.meta.namespace, "default");
    assert_eq!(r.parent_refs[0].group, "gateway.networking.k8s.io");
    assert_eq!(r.parent_refs[0].kind, "Gateway");
    assert_eq!(r.parent_refs[0].namespace, "default");
    use splitter_plan::plan::l7::{Filter, PathMatch};
    assert_eq!(r.rules[0].matches[0].path, PathMatch::Prefix("/".into()));
    let Filter::RequestRedirect(redirect) = &r.rules[0].filters[0] else {
        panic!()
    };
    assert_eq!(redirect.status_code, 302);
    assert_eq!(r.rules[1].backends[0].weight, 1);
    assert_eq!(r.rules[1].backends[0].kind, "Service");
    let gw = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: x}
spec:
  gatewayClassName: splitter
  listeners: [{name: l, protocol: HTTP, port: 80}]
"#;
    let Object::Gateway(g) = parse_ok(gw) else {
        panic!()
    };
    assert_eq!(
        g.listeners[0].allowed_namespaces,
        splitter_plan::model::AllowedNamespaces::Same
    );
}

fn parse_ok(text: &str) -> Object {
    let v: serde_json::Value = serde_saphyr::from_str(text).unwrap();
    match splitter_plan::model::parse::parse(v) {
        Ok(splitter_plan::model::parse::Parsed::Object(o)) => *o,
        other => panic!("{other:?}"),
    }
}

fn parse_err(text: &str) -> splitter_plan::model::ModelError {
    let v: serde_json::Value = serde_saphyr::from_str(text).unwrap();
    splitter_plan::model::parse::parse(v).expect_err("must be rejected")
}

/// Filesystems with coarse timestamps could hide a rewrite of the same size; move the mtime.
fn bump_mtime(path: &Path) {
    let f = fs::File::options().append(true).open(path).unwrap();
    let t = std::time::SystemTime::now() + std::time::Duration::from_secs(next_offset());
    f.set_modified(t).unwrap();
}

fn next_offset() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(1);
    N.fetch_add(1, Ordering::Relaxed)
}

#[tokio::test]
async fn watched_manifests_flow_into_published_plans() {
    use std::{sync::Arc, time::Duration};

    use splitter_plan::plan::{Plan, PlanConfig};
    use tokio::sync::{mpsc, watch};

    let dir = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../splitter-plan/tests/fixtures");
    fs::copy(fixtures.join("base.yaml"), dir.path().join("base.yaml")).unwrap();
    let route = dir.path().join("route.yaml");
    fs::copy(fixtures.join("weights-default.yaml"), &route).unwrap();

    let (tx, rx) = mpsc::channel(4);
    let (plans_tx, mut plans) = watch::channel::<Option<Arc<Plan>>>(None);
    let source = FileSource::new([dir.path().to_path_buf()]);
    tokio::spawn(splitter::source::watch(
        source,
        Duration::from_millis(20),
        tx,
    ));
    tokio::spawn(splitter::control::run(
        rx,
        PlanConfig::default(),
        plans_tx,
        watch::channel(Default::default()).1,
        Default::default(),
    ));

    let wait = |plans: &mut watch::Receiver<Option<Arc<Plan>>>| {
        let mut plans = plans.clone();
        async move {
            tokio::time::timeout(Duration::from_secs(10), plans.changed())
                .await
                .expect("a plan")
                .unwrap();
            plans.borrow_and_update().clone().unwrap()
        }
    };
    let first = wait(&mut plans).await;
    plans.borrow_and_update();
    assert_eq!(first.listeners[0].mode(), splitter_plan::plan::Mode::L4);
    assert!(first.l7_tables().is_empty());

    // Rewrite the route with path matches: the next plan serves it at L7 on 0.0.0.0 and [::].
    fs::copy(fixtures.join("precedence.yaml"), &route).unwrap();
    bump_mtime(&route);
    let second = wait(&mut plans).await;
    assert_eq!(second.listeners[0].mode(), splitter_plan::plan::Mode::L7);
    let tables = second.l7_tables();
    assert_eq!(tables.len(), 2);
    assert!(tables.keys().all(|a| a.port() == 80));
}

/// The weight of the route in the next batch the watcher sends (batches without it skipped).
async fn next_weight(rx: &mut tokio::sync::mpsc::Receiver<Vec<Update>>) -> u32 {
    loop {
        let batch = tokio::time::timeout(std::time::Duration::from_secs(10), rx.recv())
            .await
            .expect("a batch within 10 s")
            .expect("watcher alive");
        let weight = batch.iter().find_map(|u| match u {
            Update::Reset(Kind::HttpRoute, objects) => objects.iter().find_map(|o| match o {
                Object::HttpRoute(r) => Some(r.rules[0].backends[0].weight),
                _ => None,
            }),
            _ => None,
        });
        if let Some(w) = weight {
            return w;
        }
    }
}

/// With polling an hour apart, only change notification can deliver an edit: an editor's save
/// (a new file renamed over the old one) to a file given by path.
#[tokio::test]
async fn an_edit_is_noticed_by_notification_not_polling() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("route.yaml");
    write(dir.path(), "route.yaml", &ROUTE.replace("WEIGHT", "1"));
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(splitter::source::watch(
        FileSource::new([file.clone()]),
        std::time::Duration::from_secs(3600),
        tx,
    ));
    assert_eq!(next_weight(&mut rx).await, 1);
    for w in [7, 9] {
        let tmp = dir.path().join(".route.yaml.swp");
        fs::write(&tmp, ROUTE.replace("WEIGHT", &w.to_string())).unwrap();
        fs::rename(&tmp, &file).unwrap();
        assert_eq!(next_weight(&mut rx).await, w);
    }
}

/// A ConfigMap volume as the kubelet writes it: the files are symlinks through `..data`, and
/// an update writes a new timestamped directory and swaps the `..data` symlink to it.
#[tokio::test]
async fn a_configmap_volume_update_is_noticed() {
    use std::os::unix::fs::symlink;

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let version = |name: &str, weight: u32| {
        fs::create_dir(root.join(name)).unwrap();
        write(
            &root.join(name),
            "route.yaml",
            &ROUTE.replace("WEIGHT", &weight.to_string()),
        );
    };
    version("..2026_11_30_a", 3);
    symlink("..2026_11_30_a", root.join("..data")).unwrap();
    symlink("..data/route.yaml", root.join("route.yaml")).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(splitter::source::watch(
        FileSource::new([root.to_path_buf()]),
        std::time::Duration::from_secs(3600),
        tx,
    ));
    assert_eq!(next_weight(&mut rx).await, 3);
    version("..2026_11_30_b", 5);
    symlink("..2026_11_30_b", root.join("..data_tmp")).unwrap();
    fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    fs::remove_dir_all(root.join("..2026_11_30_a")).unwrap();
    assert_eq!(next_weight(&mut rx).await, 5);
}

#[test]
fn the_guides_manifests_give_two_equal_backends_with_strip_path() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let paths = [
        root.join("deploy/gatewayclass.yaml"),
        root.join("deploy/examples"),
    ];
    let (index, report) = splitter::source::file::load(&paths);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(report.skipped.len(), 2, "the two Deployments");
    let plan = splitter_plan::plan::build(&index, &Default::default(), None);
    let l = plan.listeners.iter().find(|l| l.key().port == 80).unwrap();
    assert_eq!(l.mode(), splitter_plan::plan::Mode::L7);
    let r = &l.l7().unwrap().routes[0];
    assert_eq!(
        r.matched.path,
        splitter_plan::plan::l7::PathMatch::Prefix("/echo".into())
    );
    assert_eq!(
        r.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
        [1, 1]
    );
    assert!(matches!(
        r.filters[0],
        splitter_plan::plan::l7::Filter::UrlRewrite(_)
    ));
    assert!(plan.problems().is_empty(), "{:?}", plan.problems());
}
