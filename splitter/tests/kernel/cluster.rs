//! The agent on every node of a cluster (DESIGN 5a, 9.5): pods on the agent's node and on
//! others, a router in front that drops pods' answers sent straight to the client, native
//! routing and an overlay. Each test has its own address plan (`ClusterPlan::net` 170-179).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use testbed::{Routing, WhoamiReply};

use crate::support::cluster::{
    Cluster, POD_PORT, RouteKind, RouteSpec, SNAT_PORTS, a_and_b, ask_from, ask_many_from, slot_of,
};

const PORT: u16 = 8080;
const CONNECTIONS: usize = 200;

fn per_pod(replies: &[WhoamiReply]) -> BTreeMap<&str, usize> {
    replies.iter().fold(BTreeMap::new(), |mut m, r| {
        *m.entry(r.pod.as_str()).or_insert(0) += 1;
        m
    })
}

/// What a pod must see as the source of a connection node1 forwarded: the client itself when
/// the pod is node1's (DNAT only), node1's address and a port of the SNAT range otherwise.
fn assert_sources(c: &Cluster, replies: &[WhoamiReply], client: IpAddr) {
    let node1 = IpAddr::from(c.net.node(0).address_v4());
    for r in replies {
        if c.node_of(&r.pod) == 0 {
            assert_eq!(r.peer.ip(), client, "{r}: a local pod sees the client");
        } else {
            assert_eq!(r.peer.ip(), node1, "{r}: a remote pod sees node1 (SNAT)");
            assert!(
                SNAT_PORTS.contains(&r.peer.port()),
                "{r}: the SNAT source port is in {SNAT_PORTS:?}"
            );
        }
    }
}

#[test]
fn local_pods_see_the_client_itself() {
    if !testbed::require_root("local_pods_see_the_client_itself") {
        return;
    }
    let mut c = Cluster::new("kl", 170, Routing::Native, 2, 2);
    let route = RouteSpec {
        kind: RouteKind::Http,
        port: PORT,
        vip: None,
        services: &a_and_b((1, &[(0, 0)]), (1, &[(0, 1)])),
    };
    c.start_agents(&route);
    let replies = c
        .ask_many(c.listener(0, &route), CONNECTIONS)
        .unwrap_or_else(|e| panic!("{e}; node1's log:\n{}", c.agent_log(0)));
    let pods = per_pod(&replies);
    assert_eq!(
        pods.keys().copied().collect::<Vec<_>>(),
        ["node1-pod0", "node1-pod1"],
        "{pods:?}"
    );
    assert_sources(&c, &replies, c.net.plan().client_v4().into());
}

#[test]
fn remote_pods_see_node1_and_a_snat_port() {
    if !testbed::require_root("remote_pods_see_node1_and_a_snat_port") {
        return;
    }
    let mut c = Cluster::new("kr", 171, Routing::Native, 2, 2);
    let route = RouteSpec {
        kind: RouteKind::Tcp,
        port: PORT,
        vip: None,
        services: &a_and_b((1, &[(1, 0)]), (1, &[(1, 1)])),
    };
    c.start_agents(&route);
    let replies = c
        .ask_many(c.listener(0, &route), CONNECTIONS)
        .unwrap_or_else(|e| panic!("{e}; node1's log:\n{}", c.agent_log(0)));
    let pods = per_pod(&replies);
    assert_eq!(
        pods.keys().copied().collect::<Vec<_>>(),
        ["node2-pod0", "node2-pod1"],
        "{pods:?}"
    );
    assert_sources(&c, &replies, c.net.plan().client_v4().into());
}

/// One pod per node, 1:1, 200 connections to node1: both answer, each sees what it must.
fn mixed_split(tag: &str, net: u8, routing: Routing) {
    let mut c = Cluster::new(tag, net, routing, 2, 1);
    let route = RouteSpec {
        kind: RouteKind::Http,
        port: PORT,
        vip: None,
        services: &a_and_b((1, &[(0, 0)]), (1, &[(1, 0)])),
    };
    c.start_agents(&route);
    let replies = c
        .ask_many(c.listener(0, &route), CONNECTIONS)
        .unwrap_or_else(|e| panic!("{e}; node1's log:\n{}", c.agent_log(0)));
    let pods = per_pod(&replies);
    assert_eq!(
        pods.keys().copied().collect::<Vec<_>>(),
        ["node1-pod0", "node2-pod0"],
        "{pods:?}"
    );
    assert_sources(&c, &replies, c.net.plan().client_v4().into());
}

#[test]
fn a_mixed_route_answers_from_both_nodes() {
    if !testbed::require_root("a_mixed_route_answers_from_both_nodes") {
        return;
    }
    mixed_split("km", 172, Routing::Native);
}

#[test]
fn a_mixed_route_answers_from_both_nodes_over_vxlan() {
    if !testbed::require_root("a_mixed_route_answers_from_both_nodes_over_vxlan") {
        return;
    }
    mixed_split("kv", 173, Routing::Vxlan);
}

#[test]
fn every_flow_reaches_the_pod_the_shared_hash_predicts() {
    if !testbed::require_root("every_flow_reaches_the_pod_the_shared_hash_predicts") {
        return;
    }
    let mut c = Cluster::new("kp", 174, Routing::Native, 2, 2);
    let route = RouteSpec {
        kind: RouteKind::Http,
        port: PORT,
        vip: None,
        services: &a_and_b((3, &[(0, 0), (1, 0)]), (1, &[(0, 1), (1, 1)])),
    };
    c.start_agents(&route);
    let table = c.planned(0, PORT);
    let at = c.listener(0, &route);
    assert!(
        c.live(0, at) == Some(table.clone()),
        "node1's kernel holds the planned table slot for slot"
    );
    let client = c.net.plan().client_v4();
    let mut seen = BTreeSet::new();
    for port in 40000..40000 + CONNECTIONS as u16 {
        let from = SocketAddr::from((client, port));
        let want = table[slot_of(from, at, table.len())].expect("no REJECT share");
        let want = c.pod_at(want.ip());
        let got = ask_from(c.net.client(), from, at).unwrap_or_else(|e| {
            panic!(
                "{from} -> {at} (predicted {want}): {e}; node1's log:\n{}",
                c.agent_log(0)
            )
        });
        assert_eq!(got.pod, want, "{from} -> {at}: the predicted pod answers");
        seen.insert(got.pod);
    }
    assert_eq!(seen.len(), 4, "every pod took some flows: {seen:?}");
}

/// The weight edits node1's agent goes through before the final weights; node2's agent starts
/// on the final ones and never sees the others.
const HISTORY: [(u32, u32); 4] = [(1, 1), (3, 1), (1, 4), (7, 2)];
const FINAL: (u32, u32) = (2, 3);

/// The history tests' route on the router's VIP: Services `a` and `b`, each with a pod on
/// both nodes.
fn history_yaml(c: &Cluster, (a, b): (u32, u32)) -> String {
    let services = a_and_b((a, &[(0, 0), (1, 0)]), (b, &[(0, 1), (1, 1)]));
    let route = RouteSpec {
        kind: RouteKind::Tcp,
        port: PORT,
        vip: Some(c.net.vip_v4()),
        services: &services,
    };
    route.yaml(&c.net)
}

/// node1 through every weight of `HISTORY` (each waited for in its kernel), then `FINAL`;
/// node2 straight on `FINAL`. The route is on the router's VIP.
fn nodes_with_different_histories(tag: &str, net: u8) -> (Cluster, SocketAddr) {
    let mut c = Cluster::new(tag, net, Routing::Native, 2, 2);
    let at = SocketAddr::from((c.net.vip_v4(), PORT));
    for (i, weights) in HISTORY.into_iter().chain([FINAL]).enumerate() {
        let yaml = history_yaml(&c, weights);
        c.write(0, &yaml);
        if i == 0 {
            c.start_agent(0);
        }
        c.wait_served(0, at);
    }
    let yaml = history_yaml(&c, FINAL);
    c.write(1, &yaml);
    c.start_agent(1);
    c.wait_served(1, at);
    (c, at)
}

#[test]
fn nodes_hold_the_same_table_whatever_their_history() {
    if !testbed::require_root("nodes_hold_the_same_table_whatever_their_history") {
        return;
    }
    let (c, at) = nodes_with_different_histories("kt", 175);
    let node1 = c.live(0, at).expect("node1's table");
    let node2 = c.live(1, at).expect("node2's table");
    assert_eq!(node1.len(), node2.len());
    let differ = node1.iter().zip(&node2).filter(|(a, b)| a != b).count();
    assert_eq!(differ, 0, "slots that differ between node1 and node2");
    // Nor does either depend on its history: both are the table built from nothing but the
    // final manifests.
    assert!(
        node2 == c.planned(1, PORT),
        "node2's kernel holds the planned table slot for slot"
    );
}

#[test]
fn a_flow_the_router_moves_to_another_node_reaches_the_same_pod() {
    if !testbed::require_root("a_flow_the_router_moves_to_another_node_reaches_the_same_pod") {
        return;
    }
    let (c, at) = nodes_with_different_histories("kf", 176);
    let predicted = predictor(&c, at);
    let ports = 41000..41100u16;
    let via_node1: Vec<WhoamiReply> = ports
        .clone()
        .map(|port| {
            let want = predicted(port);
            let got = c.ask_from_port(port, at).unwrap_or_else(|e| {
                panic!(
                    "port {port} via node1 (predicted {want}): {e}; log:\n{}",
                    c.agent_log(0)
                )
            });
            assert_eq!(
                got.pod, want,
                "port {port} via node1: the predicted pod answers"
            );
            got
        })
        .collect();
    let nodes: BTreeSet<usize> = via_node1.iter().map(|r| c.node_of(&r.pod)).collect();
    assert_eq!(
        nodes.len(),
        2,
        "pods of both nodes took flows: {via_node1:?}"
    );

    c.net.route_vip_to(1).expect("route the VIP to node2");
    for (port, before) in ports.zip(&via_node1) {
        let after = c
            .ask_from_port(port, at)
            .unwrap_or_else(|e| panic!("port {port} via node2: {e}; log:\n{}", c.agent_log(1)));
        assert_eq!(
            after.pod, before.pod,
            "port {port}: the flow reaches the same pod through node2"
        );
        // Proof the flow did cross node2: its local pods see the client, the others node2.
        let node2 = IpAddr::from(c.net.node(1).address_v4());
        let client = IpAddr::from(c.net.plan().client_v4());
        let want = if c.node_of(&after.pod) == 1 {
            client
        } else {
            node2
        };
        assert_eq!(after.peer.ip(), want, "port {port}: {after}");
    }
}

/// The pod a flow from the client's port to `at` must reach, by node1's planned table.
fn predictor(c: &Cluster, at: SocketAddr) -> impl Fn(u16) -> String + '_ {
    let table = c.planned(0, at.port());
    let client = c.net.plan().client_v4();
    move |port| {
        let from = SocketAddr::from((client, port));
        let want = table[slot_of(from, at, table.len())].expect("no REJECT share");
        c.pod_at(want.ip()).to_owned()
    }
}

#[test]
fn flows_the_router_spreads_over_both_nodes_reach_their_predicted_pods() {
    if !testbed::require_root("flows_the_router_spreads_over_both_nodes_reach_their_predicted_pods")
    {
        return;
    }
    let mut c = Cluster::new("ke", 178, Routing::Native, 2, 2);
    let yaml = history_yaml(&c, FINAL);
    let at = SocketAddr::from((c.net.vip_v4(), PORT));
    for node in 0..2 {
        c.write(node, &yaml);
        c.start_agent(node);
    }
    for node in 0..2 {
        c.wait_served(node, at);
    }
    c.net.route_vip_ecmp().expect("ECMP over both nodes");
    let client = IpAddr::from(c.net.plan().client_v4());
    let predicted = predictor(&c, at);
    let mut entries = BTreeSet::new();
    for port in 42000..42000 + CONNECTIONS as u16 {
        let want = predicted(port);
        let got = c.ask_from_port(port, at).unwrap_or_else(|e| {
            panic!(
                "port {port} (predicted {want}): {e}; node1's log:\n{}\nnode2's log:\n{}",
                c.agent_log(0),
                c.agent_log(1)
            )
        });
        assert_eq!(got.pod, want, "port {port}: the predicted pod answers");
        // The node the router chose: the pod's own when it saw the client, else the node
        // whose address it saw (SNAT).
        let entry = if got.peer.ip() == client {
            c.node_of(&got.pod)
        } else {
            (0..2)
                .find(|&n| IpAddr::from(c.net.node(n).address_v4()) == got.peer.ip())
                .unwrap_or_else(|| panic!("port {port}: {got} saw neither the client nor a node"))
        };
        entries.insert(entry);
    }
    assert_eq!(entries.len(), 2, "the router sent flows to both nodes");
}

#[test]
fn a_pod_reaches_the_listener_of_another_node() {
    if !testbed::require_root("a_pod_reaches_the_listener_of_another_node") {
        return;
    }
    let mut c = Cluster::new("ki", 177, Routing::Native, 2, 2);
    let route = RouteSpec {
        kind: RouteKind::Http,
        port: PORT,
        vip: None,
        services: &a_and_b((1, &[(0, 0)]), (1, &[(1, 0)])),
    };
    c.start_agents(&route);
    // node2-pod1 is no backend: a client in the cluster, on the other node.
    let client = c.net.pod(1, 1);
    let replies = ask_many_from(&client.ns, c.listener(0, &route), CONNECTIONS / 2)
        .unwrap_or_else(|e| panic!("{e}; node1's log:\n{}", c.agent_log(0)));
    let pods = per_pod(&replies);
    assert_eq!(
        pods.keys().copied().collect::<Vec<_>>(),
        ["node1-pod0", "node2-pod0"],
        "{pods:?}"
    );
    assert_sources(&c, &replies, client.address_v4().into());
}

/// A dual-stack Service (an IPv4 and an IPv6 EndpointSlice, as Kubernetes writes them) behind a
/// listener on the node's addresses: the kernel holds one table per family and serves both VIP
/// families, local pods seeing the client and remote ones node1 in each family.
#[test]
fn a_dual_stack_service_serves_both_address_families() {
    if !testbed::require_root("a_dual_stack_service_serves_both_address_families") {
        return;
    }
    let mut c = Cluster::new("kd", 179, Routing::Native, 2, 1);
    let route = RouteSpec {
        kind: RouteKind::Tcp,
        port: PORT,
        vip: None,
        services: &a_and_b((1, &[(0, 0)]), (1, &[(1, 0)])),
    };
    let mut yaml = route.yaml(&c.net);
    for (name, (node, pod)) in [("a", (0, 0)), ("b", (1, 0))] {
        yaml.push_str(&format!(
            "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-v6, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv6
ports: [{{name: p, port: {POD_PORT}}}]
endpoints:
- {{addresses: [\"{}\"], nodeName: {}, conditions: {{ready: true}}}}
",
            c.net.pod(node, pod).address_v6(),
            c.net.node(node).name
        ));
    }
    for node in 0..2 {
        c.write(node, &yaml);
        c.start_agent(node);
    }
    let v4 = c.listener(0, &route);
    c.wait_served(0, v4);
    let v6 = SocketAddr::from((c.net.node(0).address_v6(), PORT));
    c.wait_for(0, &format!("node1 to serve {v6}"), || {
        c.live(0, v6).is_some()
    });
    let plan = c.net.plan();
    for (at, client, node1) in [
        (
            v4,
            IpAddr::from(plan.client_v4()),
            IpAddr::from(c.net.node(0).address_v4()),
        ),
        (
            v6,
            IpAddr::from(plan.client_v6()),
            IpAddr::from(c.net.node(0).address_v6()),
        ),
    ] {
        let replies = c
            .ask_many(at, 60)
            .unwrap_or_else(|e| panic!("{e}; node1's log:\n{}", c.agent_log(0)));
        let pods = per_pod(&replies);
        assert_eq!(
            pods.keys().copied().collect::<Vec<_>>(),
            ["node1-pod0", "node2-pod0"],
            "{at}: {pods:?}"
        );
        for r in &replies {
            let want = if r.pod == "node1-pod0" { client } else { node1 };
            assert_eq!(r.peer.ip(), want, "{at}: {r}");
            assert_eq!(r.peer.is_ipv6(), at.is_ipv6(), "{at}: {r} kept its family");
        }
    }
}
