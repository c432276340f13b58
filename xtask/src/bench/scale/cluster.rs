//! The synthetic cluster, as the JSON objects both sources feed the agent: files mode writes
//! them as YAML manifests, kube mode stores them in the mock API server. One description, so
//! that the two sources measure the same cluster and the same changes.
//!
//! HTTPRoutes over Services whose EndpointSlices hold made-up addresses nobody connects to; the
//! probe's Services, which the measured changes switch between; and a TCPRoute on the Gateway's
//! TCP listener, served in the kernel.

use std::{collections::BTreeSet, net::SocketAddr};

use serde_json::{Value, json};

use super::{ECHO, ECHO_PORT, KERNEL_PORT, KERNEL_TARGET, NODE_NAME, PORT, Size};

/// The namespace of every namespaced object.
const NS: &str = "scale";
/// Objects per generated file: a rewrite of one (churn) re-reads this many.
const PER_FILE: usize = 500;
/// The nodes the made-up endpoints are spread over: a cluster's slices name the node of every
/// endpoint, and the agent looks the kernel's endpoints up among them.
const NODES: usize = 100;

/// The manifest files of the measured changes, each holding the one object a change rewrites.
pub const PROBE_SLICE: &str = "probe-slice.yaml";
pub const EDIT_ROUTE: &str = "edit-route.yaml";
pub const KERNEL_SLICE: &str = "kernel-slice.yaml";

/// The cluster at start, grouped in the manifest files that files mode writes (file name,
/// objects); the kube source stores the same objects.
pub fn files(size: Size) -> Vec<(String, Vec<Value>)> {
    let mut base = vec![
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}),
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
            "metadata": {"name": "splitter"},
            "spec": {"controllerName": "splitter.dev/gateway-controller"}
        }),
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": NS},
            "spec": {"gatewayClassName": "splitter", "listeners": [
                {"name": "http", "protocol": "HTTP", "port": PORT},
                {"name": "tcp", "protocol": "TCP", "port": KERNEL_PORT}
            ]}
        }),
    ];
    for (i, (addr, _)) in ECHO.iter().enumerate() {
        base.push(service(&format!("echo{i}")));
        base.push(slice(
            &format!("echo{i}"),
            "1",
            &[addr.to_string()],
            ECHO_PORT,
        ));
    }
    base.push(service("probe"));
    base.push(http_route(
        "probe",
        "probe.scale.test",
        "/",
        &[("probe", 1)],
    ));
    // The L4 listener's route: always served in the kernel.
    base.push(service("kern"));
    base.push(json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "TCPRoute",
        "metadata": {"name": "kern", "namespace": NS},
        "spec": {"parentRefs": [{"name": "gw", "sectionName": "tcp"}],
                 "rules": [{"backendRefs": [{"name": "kern", "port": 80}]}]}
    }));
    let mut files = vec![("base.yaml".to_string(), base)];

    let per_service = size.endpoints.div_ceil(size.services).max(1);
    for chunk in 0..size.services.div_ceil(PER_FILE) {
        let objects = (chunk * PER_FILE..((chunk + 1) * PER_FILE).min(size.services))
            .flat_map(|s| {
                let name = format!("svc{s}");
                [service(&name), made_up_slice(s, "1", per_service, 0)]
            })
            .collect();
        files.push((format!("services-{chunk:03}.yaml"), objects));
    }
    for chunk in 0..size.routes.div_ceil(PER_FILE) {
        let objects = (chunk * PER_FILE..((chunk + 1) * PER_FILE).min(size.routes))
            .map(|r| {
                let a = format!("svc{}", r % size.services);
                let b = format!("svc{}", (r + 1) % size.services);
                http_route(
                    &format!("r{r}"),
                    &format!("h{}.scale.test", r % 1000),
                    &format!("/r{r}"),
                    &[(&a, 70), (&b, 30)],
                )
            })
            .collect();
        files.push((format!("routes-{chunk:03}.yaml"), objects));
    }
    files.push((PROBE_SLICE.into(), vec![probe_slice(0)]));
    files.push((EDIT_ROUTE.into(), vec![edit_route(0)]));
    files.push((KERNEL_SLICE.into(), vec![kernel_slice(0)]));
    files
}

/// The probe Service's slice, naming echo server `which`.
pub fn probe_slice(which: usize) -> Value {
    slice("probe", "1", &[ECHO[which].0.to_string()], ECHO_PORT)
}

/// The edited route, sending its host to echo Service `which`.
pub fn edit_route(which: usize) -> Value {
    http_route(
        "edit",
        "edit.scale.test",
        "/",
        &[(&format!("echo{which}"), 1)],
    )
}

/// The endpoints of the Service behind the kernel route in state `which`: three fixed ones and
/// a fourth that the measured changes swap (TEST-NET-1 addresses nobody connects to).
pub fn kernel_endpoints(which: usize) -> BTreeSet<SocketAddr> {
    [1, 2, 3, 10 + which]
        .into_iter()
        .map(|h| SocketAddr::from(([192, 0, 2, h as u8], KERNEL_TARGET)))
        .collect()
}

/// The kernel route's Service's slice in state `which`, its endpoints on the agent's node (in
/// kube mode; files mode runs without `--node-name`, where every endpoint is local anyway).
pub fn kernel_slice(which: usize) -> Value {
    let addrs: Vec<String> = kernel_endpoints(which)
        .iter()
        .map(|a| a.ip().to_string())
        .collect();
    slice_on("kern", "1", &addrs, KERNEL_TARGET, |_| {
        Some(NODE_NAME.to_string())
    })
}

/// The `n`th churned object: a second slice of one made-up Service after another, with two
/// endpoints that move with `n`. Files mode keeps the last 50 (a file each, rewritten in turn,
/// so a write replaces one slice by another); the store keeps them all, so once every Service
/// has one, each write updates one.
pub fn churn_slice(size: Size, n: u64) -> Value {
    let s = (n as usize * 7919) % size.services;
    made_up_slice(s, "2", 2, n + 1)
}

/// A slice of made-up Service `s`: `n` endpoints shifted by `version`, on made-up nodes.
fn made_up_slice(s: usize, suffix: &str, n: usize, version: u64) -> Value {
    slice_on(
        &format!("svc{s}"),
        suffix,
        &made_up(s, n, version),
        8080,
        |i| Some(format!("node-{}", (s + i) % NODES)),
    )
}

/// Made-up endpoints of Service `s` (TEST-NET and 10/8 addresses that nothing connects to),
/// shifted by `version` so that a rewrite changes them.
fn made_up(s: usize, n: usize, version: u64) -> Vec<String> {
    (0..n)
        .map(|e| {
            let x = s * n + e + version as usize;
            format!("10.{}.{}.{}", (x >> 16) & 255, (x >> 8) & 255, x & 255)
        })
        .collect()
}

fn service(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"ports": [{"name": "http", "port": 80, "targetPort": "http"}]}
    })
}

/// A slice whose endpoints are on the nodes `node(i)` names (`None`: no node, as for the echo
/// servers on loopback).
fn slice(service: &str, suffix: &str, addrs: &[String], port: u16) -> Value {
    slice_on(service, suffix, addrs, port, |_| None)
}

fn slice_on(
    service: &str,
    suffix: &str,
    addrs: &[String],
    port: u16,
    node: impl Fn(usize) -> Option<String>,
) -> Value {
    let endpoints: Vec<Value> = addrs
        .iter()
        .enumerate()
        .map(|(i, a)| match node(i) {
            Some(n) => json!({"addresses": [a], "nodeName": n}),
            None => json!({"addresses": [a]}),
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("{service}-{suffix}"), "namespace": NS,
            "labels": {"kubernetes.io/service-name": service}
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints
    })
}

fn http_route(name: &str, host: &str, prefix: &str, backends: &[(&str, u32)]) -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "hostnames": [host],
            "rules": [{
                "matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
                "backendRefs": backends.iter()
                    .map(|(b, w)| json!({"name": b, "port": 80, "weight": w}))
                    .collect::<Vec<_>>()
            }]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kernel_change_swaps_one_of_four_endpoints() {
        let (a, b) = (kernel_endpoints(0), kernel_endpoints(1));
        assert_eq!((a.len(), b.len()), (4, 4));
        assert_eq!(a.intersection(&b).count(), 3);
    }

    #[test]
    fn the_gateway_has_a_tcp_listener_with_a_route() {
        let size = "2/2/4".parse::<Size>().expect("size");
        let all: Vec<Value> = files(size).into_iter().flat_map(|(_, o)| o).collect();
        let gw = all
            .iter()
            .find(|o| o["kind"] == "Gateway")
            .expect("Gateway");
        assert!(
            gw["spec"]["listeners"]
                .as_array()
                .expect("listeners")
                .contains(&json!({"name": "tcp", "protocol": "TCP", "port": KERNEL_PORT}))
        );
        let tcp = all
            .iter()
            .find(|o| o["kind"] == "TCPRoute")
            .expect("TCPRoute");
        assert_eq!(
            tcp["spec"]["parentRefs"],
            json!([{"name": "gw", "sectionName": "tcp"}])
        );
    }

    #[test]
    fn every_endpoint_slice_names_its_service() {
        let size = "2/2/4".parse::<Size>().expect("size");
        let slices = files(size)
            .into_iter()
            .flat_map(|(_, o)| o)
            .chain([churn_slice(size, 7)])
            .filter(|o| o["kind"] == "EndpointSlice");
        for s in slices {
            let name = s["metadata"]["name"].as_str().expect("name");
            let service = s["metadata"]["labels"]["kubernetes.io/service-name"]
                .as_str()
                .expect("label");
            assert!(name.starts_with(&format!("{service}-")), "{s}");
        }
    }
}
