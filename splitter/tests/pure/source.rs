//! The file source: multi-document files and directories, skipped kinds, precise errors, the
//! last good version of a broken object, and change detection.

use std::{fs, path::Path};

use splitter::source::{FileSource, SourceError};
use splitter_plan::model::{Kind, Object, ObjectKey, index::Update};

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
        let weight_of = |o: &Object| match o {
            Object::HttpRoute(r) => Some(r.rules[0].backends[0].weight),
            _ => None,
        };
        let weight = batch.iter().find_map(|u| match u {
            Update::Reset(Kind::HttpRoute, objects) => objects.iter().find_map(weight_of),
            Update::Apply(o) => weight_of(o),
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

fn namespace_doc(name: &str, version: u32) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}, labels: {{v: \"{version}\"}}}}\n"
    )
}

/// After the first scan, the source sends what changed, object by object: a duplicate in a
/// later file changes nothing until the first file's copy goes; a removal is a delete.
#[test]
fn scans_report_the_objects_that_changed_first_file_winning() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &namespace_doc("x", 1));
    write(dir.path(), "b.yaml", &namespace_doc("x", 2));
    let mut source = FileSource::new([dir.path().to_path_buf()]);
    source.scan();
    let first = source.take_changes();
    assert_eq!(first.len(), 1, "{first:?}");
    let label = |u: &Update| match u {
        Update::Apply(o) => o.meta().labels.get("v").cloned(),
        _ => None,
    };
    assert_eq!(label(&first[0]).as_deref(), Some("1"));

    // The shadowed copy changes: nothing served changes.
    write(dir.path(), "b.yaml", &namespace_doc("x", 3));
    bump_mtime(&dir.path().join("b.yaml"));
    assert!(source.scan().changed);
    assert_eq!(source.take_changes(), []);
    // The first copy goes: the other one is served.
    fs::remove_file(dir.path().join("a.yaml")).unwrap();
    source.scan();
    let changes = source.take_changes();
    assert_eq!(changes.len(), 1);
    assert_eq!(label(&changes[0]).as_deref(), Some("3"));
    // The last copy goes: a delete.
    write(dir.path(), "b.yaml", &ROUTE.replace("WEIGHT", "4"));
    bump_mtime(&dir.path().join("b.yaml"));
    source.scan();
    let changes = source.take_changes();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert!(changes.contains(&Update::Delete(ObjectKey::new(Kind::Namespace, "", "x"))));
    assert!(!source.scan().changed);
    assert_eq!(source.take_changes(), []);
}

/// The duplicates a scan reports, as (file name, document, object, first file name).
fn duplicates(report: &splitter::source::LoadReport) -> Vec<(String, usize, ObjectKey, String)> {
    let name = |p: &Path| p.file_name().unwrap().to_string_lossy().into_owned();
    report
        .errors
        .iter()
        .map(|e| match e {
            SourceError::Duplicate {
                path,
                document,
                key,
                first,
            } => (name(path), *document, key.clone(), name(first)),
            other => panic!("{other}"),
        })
        .collect()
}

/// Duplicates and origins as one file at a time changes: a file that is not re-read keeps its
/// origins, and its copy of an object becomes or stops being a duplicate as another file's
/// copy comes and goes.
#[test]
fn duplicates_and_origins_follow_edits_of_other_files() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
    let put = |path: &Path, names: &[&str]| {
        let docs: Vec<String> = names
            .iter()
            .map(|n| namespace_doc(&format!("ns-{n}"), 1))
            .collect();
        fs::write(path, docs.join("---\n")).unwrap();
        bump_mtime(path);
    };
    // Prefixed: a bare `y` is a boolean in YAML.
    let key = |name: &str| ObjectKey::new(Kind::Namespace, "", format!("ns-{name}"));
    let origin = |source: &FileSource, name: &str| {
        source
            .origin(&key(name))
            .map(|(p, doc)| (p.file_name().unwrap().to_string_lossy().into_owned(), doc))
    };
    let at = |file: &str, doc: usize| Some((file.to_string(), doc));
    let dup = |file: &str, doc: usize, name: &str, first: &str| {
        (file.to_string(), doc, key(name), first.to_string())
    };

    put(&a, &["x", "y"]);
    put(&b, &["z"]);
    let mut source = FileSource::new([dir.path().to_path_buf()]);
    assert_eq!(duplicates(&source.scan()), []);
    assert_eq!(origin(&source, "x"), at("a.yaml", 1));
    assert_eq!(origin(&source, "z"), at("b.yaml", 1));

    // b gains copies of y and x: ignored, reported in document order; a, not re-read, keeps
    // its origins.
    put(&b, &["z", "y", "x"]);
    let both = [
        dup("b.yaml", 2, "y", "a.yaml"),
        dup("b.yaml", 3, "x", "a.yaml"),
    ];
    assert_eq!(duplicates(&source.scan()), both);
    assert_eq!(origin(&source, "x"), at("a.yaml", 1));
    assert_eq!(origin(&source, "y"), at("a.yaml", 2));
    // A scan that reads nothing still reports them.
    let report = source.scan();
    assert!(!report.changed);
    assert_eq!(duplicates(&report), both);

    // a drops x: b's copy is served, no longer a duplicate, though b was not re-read.
    put(&a, &["y"]);
    assert_eq!(
        duplicates(&source.scan()),
        [dup("b.yaml", 2, "y", "a.yaml")]
    );
    assert_eq!(origin(&source, "x"), at("b.yaml", 3));
    assert_eq!(origin(&source, "y"), at("a.yaml", 1));

    // a defines x again, twice: its first copy is served; its second and b's are duplicates.
    put(&a, &["x", "y", "x"]);
    assert_eq!(
        duplicates(&source.scan()),
        [
            dup("a.yaml", 3, "x", "a.yaml"),
            dup("b.yaml", 2, "y", "a.yaml"),
            dup("b.yaml", 3, "x", "a.yaml")
        ]
    );
    assert_eq!(origin(&source, "x"), at("a.yaml", 1));

    // b is fixed: only a's own repeat is left.
    put(&b, &["z"]);
    assert_eq!(
        duplicates(&source.scan()),
        [dup("a.yaml", 3, "x", "a.yaml")]
    );
    assert_eq!(origin(&source, "z"), at("b.yaml", 1));

    // a goes: its objects and its duplicate with it; b's origins stay.
    fs::remove_file(&a).unwrap();
    assert_eq!(duplicates(&source.scan()), []);
    assert_eq!(origin(&source, "x"), None);
    assert_eq!(origin(&source, "z"), at("b.yaml", 1));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

    /// Any sequence of file writes and removals: the changes, applied to an index that started
    /// from the first scan, give the index of the source's content (what a relist would give),
    /// and each scan reports the duplicates and origins a fresh source reading the files would.
    #[test]
    fn changes_applied_in_turn_equal_a_relist(
        steps in proptest::collection::vec((0usize..3, proptest::collection::vec((0usize..4, 0u32..3), 0..4), proptest::bool::weighted(0.2)), 1..12)
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut source = FileSource::new([dir.path().to_path_buf()]);
        let mut index = splitter_plan::model::Index::new();
        for (file, docs, remove) in steps {
            let path = dir.path().join(format!("f{file}.yaml"));
            if remove {
                let _ = fs::remove_file(&path);
            } else {
                let text: Vec<String> = docs.iter().map(|(n, v)| namespace_doc(&format!("ns{n}"), *v)).collect();
                fs::write(&path, text.join("---\n")).unwrap();
                bump_mtime(&path);
            }
            let report = source.scan();
            for u in source.take_changes() {
                index.update(u);
            }
            proptest::prop_assert_eq!(&index, &source.index());
            let mut fresh = FileSource::new([dir.path().to_path_buf()]);
            proptest::prop_assert_eq!(duplicates(&report), duplicates(&fresh.scan()));
            for o in fresh.objects() {
                proptest::prop_assert_eq!(source.origin(&o.key()), fresh.origin(&o.key()));
            }
        }
    }
}
