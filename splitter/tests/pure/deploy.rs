//! deploy/ as shipped: every manifest reads as its Kubernetes type with no unknown field, RBAC
//! grants exactly the API calls of `splitter_plan::access` (no more, no less), the DaemonSet has
//! what the agent needs, and the Dockerfile ships the binary the DaemonSet runs.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment},
    core::v1::{Namespace, Service, ServiceAccount},
    discovery::v1::EndpointSlice,
    rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding},
};
use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
use splitter_plan::access::{self, Permission, Scope};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Every YAML file under deploy/, recursively, with its documents.
fn manifests() -> Vec<(PathBuf, Vec<Value>)> {
    let mut out = Vec::new();
    let mut stack = vec![repo().join("deploy")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                let text = std::fs::read_to_string(&path).unwrap();
                let docs = splitter_plan::model::parse::documents(&text)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                    .into_iter()
                    .filter(|d| !d.is_null())
                    .collect();
                out.push((path, docs));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn objects() -> Vec<(PathBuf, Value)> {
    manifests()
        .into_iter()
        .filter(|(p, _)| p.file_name().is_some_and(|n| n != "kustomization.yaml"))
        .flat_map(|(p, docs)| docs.into_iter().map(move |d| (p.clone(), d)))
        .collect()
}

/// Reads `doc` as `T` and writes it back: a field the type does not know (a typo) is dropped
/// on the way and fails the comparison.
fn round_trip<T: DeserializeOwned + Serialize>(path: &Path, doc: &Value) -> T {
    let typed: T = serde_json::from_value(doc.clone())
        .unwrap_or_else(|e| panic!("{}: {}: {e}", path.display(), doc["kind"]));
    let back = serde_json::to_value(&typed).unwrap();
    assert_eq!(
        &back,
        doc,
        "{}: {} {} has fields its type does not know",
        path.display(),
        doc["kind"],
        doc["metadata"]["name"]
    );
    typed
}

fn of_kind<T: DeserializeOwned + Serialize>(kind: &str) -> Vec<T> {
    objects()
        .into_iter()
        .filter(|(_, d)| d["kind"] == kind)
        .map(|(p, d)| round_trip(&p, &d))
        .collect()
}

#[test]
fn every_manifest_reads_as_its_type() {
    for (path, doc) in objects() {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        match kind.as_str() {
            "Namespace" => drop(round_trip::<Namespace>(&path, &doc)),
            "ServiceAccount" => drop(round_trip::<ServiceAccount>(&path, &doc)),
            "ClusterRole" => drop(round_trip::<ClusterRole>(&path, &doc)),
            "ClusterRoleBinding" => drop(round_trip::<ClusterRoleBinding>(&path, &doc)),
            "Role" => drop(round_trip::<Role>(&path, &doc)),
            "RoleBinding" => drop(round_trip::<RoleBinding>(&path, &doc)),
            "DaemonSet" => drop(round_trip::<DaemonSet>(&path, &doc)),
            "Deployment" => drop(round_trip::<Deployment>(&path, &doc)),
            "Service" => drop(round_trip::<Service>(&path, &doc)),
            "EndpointSlice" => drop(round_trip::<EndpointSlice>(&path, &doc)),
            // Gateway API kinds go through the agent's own parser: CRD defaults and validation.
            "GatewayClass" | "Gateway" | "HTTPRoute" | "TCPRoute" | "UDPRoute"
            | "ReferenceGrant" => {
                let parsed = splitter_plan::model::parse::parse(doc.clone())
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(
                    matches!(parsed, splitter_plan::model::parse::Parsed::Object(_)),
                    "{}: {kind} skipped",
                    path.display()
                );
            }
            other => panic!("{}: no test reads kind {other:?}", path.display()),
        }
    }
}

fn permissions(scope: Scope, rules: &[PolicyRule]) -> BTreeSet<Permission> {
    let mut out = BTreeSet::new();
    for rule in rules {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "{rule:?}"
        );
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    for s in [group, resource, verb] {
                        assert!(!s.contains('*'), "wildcard in {rule:?}");
                    }
                    out.insert(Permission {
                        scope,
                        group: group.clone(),
                        resource: resource.clone(),
                        verb: verb.clone(),
                    });
                }
            }
        }
    }
    out
}

/// The DaemonSet named `name` (the agent's is `splitter`; `splitter-cleanup` uninstalls).
fn daemonset_named(name: &str) -> DaemonSet {
    let mut all: Vec<DaemonSet> = of_kind::<DaemonSet>("DaemonSet")
        .into_iter()
        .filter(|d| d.metadata.name.as_deref() == Some(name))
        .collect();
    assert_eq!(all.len(), 1, "one DaemonSet {name}");
    all.remove(0)
}

fn daemonset() -> DaemonSet {
    daemonset_named("splitter")
}

/// Uninstall runs `splitter detach --all` on every node, where the agent's pins are and in the
/// host's network namespace (netlink TC filters are found through the interfaces).
#[test]
fn the_cleanup_daemonset_detaches_everything_on_every_node() {
    let ds = daemonset_named("splitter-cleanup");
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert!(
        pod.tolerations
            .iter()
            .flatten()
            .any(|t| t.operator.as_deref() == Some("Exists")),
        "runs on every node, tainted ones too"
    );
    let init = pod.init_containers.unwrap();
    assert_eq!(init.len(), 1);
    assert_eq!(init[0].args.clone().unwrap(), ["detach", "--all"]);
    let mount = init[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/sys/fs/bpf")
        .expect("bpffs mounted");
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .expect("its volume");
    assert_eq!(volume.host_path.as_ref().unwrap().path, "/sys/fs/bpf");
    assert_eq!(
        init[0]
            .image
            .as_deref()
            .map(|i| i.split(':').next().unwrap_or_default()),
        daemonset().spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .as_deref()
            .map(|i| i.split(':').next().unwrap_or_default()),
        "the agent's image"
    );
}

#[test]
fn rbac_grants_exactly_the_calls_the_agent_makes() {
    let ds = daemonset();
    let ns = ds.metadata.namespace.clone().unwrap();
    let sa = ds
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|s| s.service_account_name.clone())
        .unwrap();
    let mut granted = BTreeSet::new();
    let cluster_roles = of_kind::<ClusterRole>("ClusterRole");
    let roles = of_kind::<Role>("Role");
    for b in of_kind::<ClusterRoleBinding>("ClusterRoleBinding") {
        assert!(
            b.subjects
                .iter()
                .flatten()
                .all(|s| s.kind == "ServiceAccount"
                    && s.name == sa
                    && s.namespace.as_deref() == Some(&ns)),
            "{b:?}"
        );
        assert_eq!(b.role_ref.kind, "ClusterRole");
        let role = cluster_roles
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(&b.role_ref.name))
            .expect("bound ClusterRole exists");
        granted.extend(permissions(
            Scope::Cluster,
            role.rules.as_deref().unwrap_or(&[]),
        ));
    }
    for b in of_kind::<RoleBinding>("RoleBinding") {
        assert_eq!(b.metadata.namespace.as_deref(), Some(ns.as_str()));
        assert_eq!(
            b.role_ref.kind, "Role",
            "a RoleBinding to a ClusterRole grants more"
        );
        let role = roles
            .iter()
            .find(|r| r.metadata.name.as_deref() == Some(&b.role_ref.name))
            .expect("bound Role exists");
        // The Lease lives in the agent's own namespace: the Role must be there too.
        assert_eq!(role.metadata.namespace.as_deref(), Some(ns.as_str()));
        granted.extend(permissions(
            Scope::OwnNamespace,
            role.rules.as_deref().unwrap_or(&[]),
        ));
    }
    let required: BTreeSet<Permission> = access::required().into_iter().collect();
    let missing: Vec<_> = required.difference(&granted).collect();
    let extra: Vec<_> = granted.difference(&required).collect();
    assert!(missing.is_empty(), "RBAC lacks {missing:#?}");
    assert!(
        extra.is_empty(),
        "RBAC grants more than the agent uses: {extra:#?}"
    );
}

#[test]
fn the_daemonset_has_what_the_agent_needs() {
    let ds = daemonset();
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.containers.len(), 1);
    let c = &pod.containers[0];
    // The image's ENTRYPOINT is the agent; the DaemonSet only passes arguments.
    assert!(c.command.is_none());
    let args = c.args.clone().unwrap();
    assert_eq!(&args[..2], ["run", "--kube"]);
    // The interface comes from the node's default route: no per-node setting.
    assert!(!args.iter().any(|a| a.starts_with("--iface")), "{args:?}");
    // The admin endpoint stays on the agent's loopback default (`/debug/*` shows every
    // backend); the kubelet, in the host network namespace, probes it there.
    assert!(!args.iter().any(|a| a.starts_with("--admin")), "{args:?}");
    let admin = splitter::admin::DEFAULT_ADMIN_ADDR;
    assert!(admin.starts_with("127.0.0.1:"));
    let admin_port: i32 = admin.rsplit(':').next().unwrap().parse().unwrap();
    let port = c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("admin"))
        .unwrap();
    assert_eq!(port.container_port, admin_port);
    for (probe, path) in [
        (&c.readiness_probe, "/readyz"),
        (&c.liveness_probe, "/healthz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("an HTTP probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.host.as_deref(), Some("127.0.0.1"), "{path}");
        assert_eq!(
            serde_json::to_value(&get.port).unwrap(),
            Value::String("admin".into())
        );
    }
    let env = c.env.clone().unwrap();
    let node = env.iter().find(|e| e.name == "NODE_NAME").unwrap();
    let field = node
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .unwrap();
    assert_eq!(field.field_path, "spec.nodeName");
    assert_eq!(
        pod.node_selector
            .as_ref()
            .and_then(|s| s.get("kubernetes.io/os"))
            .map(String::as_str),
        Some("linux")
    );
    let resources = c.resources.as_ref().unwrap();
    // The request covers the measured RSS (66 MiB) plus the maps' kernel memory (112 MiB),
    // which the memory cgroup charges to the container.
    let memory = &resources.requests.as_ref().unwrap()["memory"].0;
    let mib: u64 = memory.strip_suffix("Mi").expect("MiB").parse().unwrap();
    assert!(mib >= 66 + 112, "memory request {memory}");
    for key in ["cpu", "memory"] {
        assert!(
            resources.requests.as_ref().unwrap().contains_key(key),
            "request {key}"
        );
        assert!(
            resources.limits.as_ref().unwrap().contains_key(key),
            "limit {key}"
        );
    }
    let sc = c.security_context.as_ref().unwrap();
    // Bidirectional mount propagation is refused for unprivileged containers.
    assert_eq!(sc.privileged, Some(true));
    let caps: BTreeSet<&str> = sc
        .capabilities
        .as_ref()
        .and_then(|c| c.add.as_ref())
        .unwrap()
        .iter()
        .map(String::as_str)
        .collect();
    for cap in ["BPF", "NET_ADMIN", "PERFMON", "SYS_ADMIN"] {
        assert!(caps.contains(cap), "{cap}");
    }
    let mount = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == "/sys/fs/bpf")
        .expect("bpffs mount");
    assert_eq!(mount.mount_propagation.as_deref(), Some("Bidirectional"));
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .unwrap();
    assert_eq!(volume.host_path.as_ref().unwrap().path, "/sys/fs/bpf");
    // The agent's default pin directory is under the mount.
    assert!(splitter_common::pin::DEFAULT_PIN_DIR.starts_with("/sys/fs/bpf/"));
}

#[test]
fn kustomization_lists_every_manifest_of_the_agent() {
    let (_, docs) = manifests()
        .into_iter()
        .find(|(p, _)| p.ends_with("deploy/kustomization.yaml"))
        .expect("deploy/kustomization.yaml");
    let listed: BTreeSet<String> = docs[0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap().to_string())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(repo().join("deploy"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        // cleanup.yaml is applied only to uninstall (docs/operators.md).
        .filter(|n| n.ends_with(".yaml") && n != "kustomization.yaml" && n != "cleanup.yaml")
        .collect();
    assert_eq!(listed, present);
}

#[test]
fn the_dockerfile_ships_the_binary_the_daemonset_runs() {
    let text = std::fs::read_to_string(repo().join("Dockerfile")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    // Two stages, the second copying the release binary out of the first.
    let froms: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("FROM "))
        .copied()
        .collect();
    assert_eq!(froms.len(), 2, "{froms:?}");
    assert!(froms[0].ends_with(" AS build"));
    let rust = env!("CARGO_PKG_RUST_VERSION");
    assert!(
        froms[0].starts_with(&format!("FROM rust:{rust}-")),
        "{} vs {rust}",
        froms[0]
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("cargo build --release --locked -p splitter --bin splitter")),
        "the build step"
    );
    // The binary target is called `splitter`.
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    assert!(manifest.contains("[[bin]]\nname = \"splitter\""));
    assert!(
        lines.contains(&"COPY --from=build /src/target/release/splitter /usr/local/bin/splitter")
    );
    assert_eq!(
        lines.last(),
        Some(&"ENTRYPOINT [\"/usr/local/bin/splitter\"]")
    );
    // The build context must not ship target/ (gigabytes) or .git.
    let ignore = std::fs::read_to_string(repo().join(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target"));
}
