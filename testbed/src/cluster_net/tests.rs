use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use super::*;
use crate::{WhoamiReply, ask_whoami};

const PORT: u16 = 7070;
/// For a connection that must succeed.
const ANSWER: Duration = Duration::from_secs(3);
/// For one that must not: a reply crosses these veths in well under a millisecond.
const SILENCE: Duration = Duration::from_millis(700);

/// Each test its own `net`, so the tests' clusters run in parallel without overlapping.
fn cluster(tag: &str, net: u8, routing: Routing) -> ClusterNet {
    ClusterNet::new(tag, ClusterPlan { net }, routing, 2, 2).expect("cluster topology")
}

fn ask(from: &NetNs, ip: impl Into<IpAddr>) -> io::Result<WhoamiReply> {
    ask_whoami(from, SocketAddr::new(ip.into(), PORT), ANSWER)
}

#[test]
fn the_plan_lays_subnets_out_per_node() {
    let p = ClusterPlan { net: 160 };
    assert_eq!(p.client_v4().to_string(), "10.160.0.1");
    assert_eq!(p.router_v6().to_string(), "fd00:10:160::2");
    assert_eq!(p.node_v4(1).to_string(), "10.160.1.12");
    assert_eq!(p.node_v6(0).to_string(), "fd00:10:160:1::11");
    assert_eq!(p.pod_cidr_v4(1), "10.160.102.0/24");
    assert_eq!(p.pod_cidr_v6(0), "fd00:10:160:101::/64");
    assert_eq!(p.pod_v4(1, 2).to_string(), "10.160.102.12");
    assert_eq!(p.pod_gateway_v6(1).to_string(), "fd00:10:160:102::1");
    assert_eq!(p.vip_v4().to_string(), "10.160.250.1");
    assert_eq!(p.vip_v6().to_string(), "fd00:10:160:250::1");
}

#[test]
fn a_cluster_needs_two_nodes_and_fits_the_plan() {
    assert!(check_size(1, 1).is_err());
    assert!(check_size(2, 0).is_ok());
    assert!(check_size(MAX_NODES + 1, 1).is_err());
    assert!(check_size(2, MAX_PODS_PER_NODE + 1).is_err());
}

#[test]
fn native_pods_on_another_node_answer_nodes_and_pods() {
    if crate::require_root("native_pods_on_another_node_answer_nodes_and_pods") {
        pods_on_another_node_answer_nodes_and_pods(cluster("tkn", 160, Routing::Native));
    }
}

#[test]
fn vxlan_pods_on_another_node_answer_nodes_and_pods() {
    if crate::require_root("vxlan_pods_on_another_node_answer_nodes_and_pods") {
        let net = cluster("tkx", 161, Routing::Vxlan);
        let pod = net.pod(1, 0).address_v4().to_string();
        assert!(
            net.router().ip(&["route", "get", &pod]).is_err(),
            "the router must not know pod CIDRs, or pods could talk through it"
        );
        pods_on_another_node_answer_nodes_and_pods(net);
    }
}

/// From node 1 and from a pod on node 1 to a pod on node 2: the right pod answers and sees the
/// sender's own address (nothing on the way rewrites it). The router forwards nothing meanwhile:
/// nodes reach each other's pods straight over the node network, not by hairpinning through it.
fn pods_on_another_node_answer_nodes_and_pods(net: ClusterNet) {
    let _servers = net.serve_whoami(PORT).expect("whoami");
    for key in ["net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"] {
        net.router()
            .sysctl(key, "0")
            .expect("router stops forwarding");
    }
    let (node, from_pod, target) = (net.node(0), net.pod(0, 1), net.pod(1, 1));
    let senders = [
        (&node.ns, node.address_v4().into(), node.address_v6().into()),
        (
            &from_pod.ns,
            from_pod.address_v4().into(),
            from_pod.address_v6().into(),
        ),
    ];
    for (from, src_v4, src_v6) in senders {
        let dsts: [(IpAddr, IpAddr); 2] = [
            (target.address_v4().into(), src_v4),
            (target.address_v6().into(), src_v6),
        ];
        for (dst, src) in dsts {
            let reply = ask(from, dst).unwrap_or_else(|e| panic!("{dst} from {src}: {e}"));
            assert_eq!(reply.pod, target.name, "{dst} from {src}");
            assert_eq!(reply.peer.ip(), src, "{dst} saw another source");
        }
    }
}

#[test]
fn native_client_reaches_nodes_but_no_pod_answers_it_directly() {
    if crate::require_root("native_client_reaches_nodes_but_no_pod_answers_it_directly") {
        client_reaches_nodes_but_no_pod_answers_it_directly(&cluster("tkn", 162, Routing::Native));
    }
}

#[test]
fn vxlan_client_reaches_nodes_but_no_pod_answers_it_directly() {
    if crate::require_root("vxlan_client_reaches_nodes_but_no_pod_answers_it_directly") {
        let net = cluster("tkx", 163, Routing::Vxlan);
        // The router knows no pod CIDR under VXLAN, so the client's SYN would die on the way
        // in; a cloud route for node 2's pods, for this test only, lets it reach the pod, so
        // what stops the answer is the drop rule alone.
        let (cidr_v4, cidr_v6) = (net.node(1).pod_cidr_v4(), net.node(1).pod_cidr_v6());
        route(net.router(), &cidr_v4, net.node(1).address_v4().into()).expect("cloud route");
        route(net.router(), &cidr_v6, net.node(1).address_v6().into()).expect("cloud route");
        client_reaches_nodes_but_no_pod_answers_it_directly(&net);
    }
}

fn client_reaches_nodes_but_no_pod_answers_it_directly(net: &ClusterNet) {
    let client: [IpAddr; 2] = [net.plan().client_v4().into(), net.plan().client_v6().into()];
    let _nodes = serve_on_nodes(net);
    for node in net.nodes() {
        let addrs: [IpAddr; 2] = [node.address_v4().into(), node.address_v6().into()];
        for (dst, src) in addrs.into_iter().zip(client) {
            let reply = ask(net.client(), dst).unwrap_or_else(|e| panic!("{dst}: {e}"));
            assert_eq!(
                (reply.pod.as_str(), reply.peer.ip()),
                (node.name.as_str(), src)
            );
        }
    }
    let pod = net.pod(1, 0);
    let _server = pod.serve_whoami(PORT).expect("whoami");
    let addrs: [IpAddr; 2] = [pod.address_v4().into(), pod.address_v6().into()];
    for (dst, src) in addrs.into_iter().zip(client) {
        assert_silent(net.client(), dst);
        net.set_pod_source_drop(false).expect("drop off");
        let reply = ask(net.client(), dst);
        net.set_pod_source_drop(true).expect("drop on");
        let reply = reply.unwrap_or_else(|e| panic!("{dst} without the drop rule: {e}"));
        assert_eq!(
            (reply.pod.as_str(), reply.peer.ip()),
            (pod.name.as_str(), src)
        );
        assert_silent(net.client(), dst);
    }
}

/// The SYN reaches the pod, but its SYN-ACK is dropped without a word: the connection times
/// out (an unreachable route would have failed at once with an ICMP error instead).
fn assert_silent(client: &NetNs, dst: IpAddr) {
    let got = ask_whoami(client, SocketAddr::new(dst, PORT), SILENCE);
    match got {
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
        other => panic!("the client got past the pod-source drop to {dst}: {other:?}"),
    }
}

#[test]
fn native_the_vip_follows_its_route_and_ecmp_spreads_flows() {
    if crate::require_root("native_the_vip_follows_its_route_and_ecmp_spreads_flows") {
        the_vip_follows_its_route_and_ecmp_spreads_flows(&cluster("tkn", 164, Routing::Native));
    }
}

#[test]
fn vxlan_the_vip_follows_its_route_and_ecmp_spreads_flows() {
    if crate::require_root("vxlan_the_vip_follows_its_route_and_ecmp_spreads_flows") {
        the_vip_follows_its_route_and_ecmp_spreads_flows(&cluster("tkx", 165, Routing::Vxlan));
    }
}

/// Every node holds the VIP on `lo` (for this test only: in a real cluster an agent takes the
/// VIP's packets), so whichever node the router picks answers.
fn the_vip_follows_its_route_and_ecmp_spreads_flows(net: &ClusterNet) {
    for node in net.nodes() {
        node.ns
            .ip(&["addr", "add", &format!("{}/32", net.vip_v4()), "dev", "lo"])
            .expect("vip v4 on lo");
        let v6 = format!("{}/128", net.vip_v6());
        node.ns
            .ip(&["addr", "add", &v6, "dev", "lo", "nodad"])
            .expect("vip v6 on lo");
    }
    let _nodes = serve_on_nodes(net);
    let vips: [IpAddr; 2] = [net.vip_v4().into(), net.vip_v6().into()];
    for target in [1, 0] {
        net.route_vip_to(target).expect("route vip");
        for vip in vips {
            let answered = nodes_answering(net, vip, 4);
            assert_eq!(answered, BTreeSet::from([net.node(target).name.clone()]));
        }
    }
    net.route_vip_ecmp().expect("ecmp");
    let all: BTreeSet<String> = net.nodes().iter().map(|n| n.name.clone()).collect();
    for vip in vips {
        // 32 flows all hashed to one of two nodes: a chance of 2^-31.
        assert_eq!(nodes_answering(net, vip, 32), all, "{vip} over ECMP");
    }
}

fn serve_on_nodes(net: &ClusterNet) -> Vec<WhoamiServer> {
    let servers = net.nodes().iter().map(|n| n.serve_whoami(PORT));
    servers.collect::<io::Result<_>>().expect("whoami on nodes")
}

/// Which nodes answered `flows` connections from the client, each from a new source port.
fn nodes_answering(net: &ClusterNet, vip: IpAddr, flows: usize) -> BTreeSet<String> {
    (0..flows)
        .map(|_| {
            let reply = ask(net.client(), vip).unwrap_or_else(|e| panic!("{vip}: {e}"));
            assert_eq!(reply.peer.ip(), client_address(net, vip));
            reply.pod
        })
        .collect()
}

fn client_address(net: &ClusterNet, dst: IpAddr) -> IpAddr {
    match dst {
        IpAddr::V4(_) => net.plan().client_v4().into(),
        IpAddr::V6(_) => net.plan().client_v6().into(),
    }
}

#[test]
fn every_interface_sends_full_checksums_and_pods_fit_the_overlay() {
    if !crate::require_root("every_interface_sends_full_checksums_and_pods_fit_the_overlay") {
        return;
    }
    let net = cluster("tkx", 166, Routing::Vxlan);
    let namespaces = [net.client(), net.router()]
        .into_iter()
        .chain(net.nodes().iter().map(|n| &n.ns))
        .chain(net.pods().map(|p| &p.ns));
    for ns in namespaces {
        for dev in links(ns).into_iter().filter(|d| d != "lo") {
            let features = ns.exec("ethtool", &["-k", &dev]).expect("ethtool -k");
            let features = String::from_utf8_lossy(&features.stdout);
            assert!(
                features.contains("tx-checksumming: off"),
                "{dev} in {} leaves checksums to an offload",
                ns.name()
            );
        }
    }
    let node = net.node(0);
    let overlay = mtu(&node.ns, VXLAN);
    assert_eq!(overlay, LINK_MTU - VXLAN_OVERHEAD);
    assert_eq!(mtu(&net.pod(0, 0).ns, POD_IFACE), overlay);
    assert_eq!(mtu(&node.ns, &node.pod_bridge), overlay);
}

fn links(ns: &NetNs) -> Vec<String> {
    let out = ns.ip(&["-o", "link", "show"]).expect("ip link");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect()
}

fn mtu(ns: &NetNs, dev: &str) -> u32 {
    let out = ns.ip(&["-o", "link", "show", dev]).expect("ip link");
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = line.split_whitespace().skip_while(|w| *w != "mtu");
    words.nth(1).and_then(|m| m.parse().ok()).expect("an mtu")
}
