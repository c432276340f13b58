//! The L4 path on a cluster-shaped topology (`testbed::ClusterNet`): the router sends the VIP to
//! node 0, whose uplink runs the programs; a Service has a pod on node 0 and one on node 1. The
//! router drops pod-sourced packets bound for the client, as a cloud network does, so the pod on
//! node 1 can only answer through node 0: DNAT plus SNAT there, its replies translated back.
//! Native pod routing and a VXLAN overlay (the SNAT leg leaves through the VXLAN device).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use splitter::{
    dataplane::ebpf::{self, Attachment, L4Actuator, L4Proto, L4RouteProgram},
    run::{SnatPorts, snat_config},
};
use testbed::{BpfFs, ClusterNet, ClusterPlan, Routing, ask_whoami};

const PORT: u16 = 8080;

fn remote_pod_answers_through_node0(routing: Routing, net: u8, v6: bool) {
    let c = ClusterNet::new("sk", ClusterPlan { net }, routing, 2, 1).expect("cluster");
    let _servers = c.serve_whoami(PORT).expect("whoami");
    let node0 = c.node(0);
    let fs = BpfFs::new().expect("bpffs");
    let mut obj = ebpf::load_object(Some(&fs.path().join("maps"))).expect("load");
    let links = fs.path().join("links");
    let att = node0.ns.run(|| {
        ebpf::attach_pinned(
            &mut obj,
            &node0.uplink,
            &links,
            ebpf::XdpAttachMode::Driver,
            ebpf::TcAttachMode::Auto,
        )
        .expect("attach")
    });
    assert!(matches!(att, Attachment::New(_)));
    let mut act = L4Actuator::new(&mut obj).expect("actuator");
    let ports = SnatPorts::default();
    act.set_config(snat_config(
        &[node0.address_v4().into(), node0.address_v6().into()],
        ports,
    ))
    .expect("config");

    let ip = |v4: IpAddr, v6_: IpAddr| if v6 { v6_ } else { v4 };
    let vip = SocketAddr::new(ip(c.vip_v4().into(), c.vip_v6().into()), 80);
    let pod = |n: usize| {
        let p = c.pod(n, 0);
        (
            p.name.clone(),
            SocketAddr::new(ip(p.address_v4().into(), p.address_v6().into()), PORT),
        )
    };
    let ((local_name, local), (remote_name, remote)) = (pod(0), pod(1));
    let client_ip = ip(c.plan().client_v4().into(), c.plan().client_v6().into());
    let node0_ip = ip(node0.address_v4().into(), node0.address_v6().into());
    // The phase without SNAT uses a VIP port of its own: its failed flows stay in conntrack,
    // and a later connection that drew the same client port would follow them.
    let program = |snat: bool| L4RouteProgram {
        key: "svc".into(),
        vips: vec![(
            if snat {
                vip
            } else {
                SocketAddr::new(vip.ip(), 81)
            },
            L4Proto::Tcp,
        )],
        table: (0..251)
            .map(|s| Some(if s % 2 == 0 { local } else { remote }))
            .collect(),
        remote: if snat {
            BTreeSet::from([remote])
        } else {
            BTreeSet::new()
        },
        // The VIP is routed to the node, not one of its addresses.
        dedicated: BTreeSet::from([vip.ip()]),
    };

    // Without SNAT the remote pod answers the client straight from node 1: dropped. Every
    // answer comes from the local pod, and some connections (those sent to node 1) fail.
    // Tried until one has failed (a connection lands on either pod by its client port, so
    // twelve in a row on the local one happen one time in 4,096), at most 48 times.
    act.apply(&[program(false)]).expect("apply");
    let no_snat_vip = SocketAddr::new(vip.ip(), 81);
    let (mut answered, mut failed) = (BTreeMap::<String, u32>::new(), Vec::new());
    for attempt in 1..=48 {
        match ask_whoami(c.client(), no_snat_vip, Duration::from_millis(700)) {
            Ok(r) => *answered.entry(r.pod).or_insert(0) += 1,
            Err(e) => failed.push(e.kind()),
        }
        if attempt >= 12 && !failed.is_empty() {
            break;
        }
    }
    assert!(
        !failed.is_empty() && !answered.contains_key(&remote_name),
        "DNAT alone cannot reach the pod on node 1: answers {answered:?}, failures {failed:?}"
    );

    act.apply(&[program(true)]).expect("apply");
    let mut per_pod = BTreeMap::new();
    for i in 0..200 {
        // 7 s: room for two SYN retransmissions (1 s, then 2 s more). One CI run, with the
        // kernel tests sharing two CPUs, saw one connection of 200 not set up within 3 s
        // (not reproduced in isolation; noted for investigation).
        let r = ask_whoami(c.client(), vip, Duration::from_secs(7)).unwrap_or_else(|e| {
            let state = splitter::inspect::render(&fs.path().join("maps"))
                .unwrap_or_else(|e| format!("inspect: {e:#}"));
            panic!("connection {i}: {e}\n{state}")
        });
        if r.pod == remote_name {
            assert_eq!(r.peer.ip(), node0_ip, "{r}: node 1's pod sees node 0");
            assert!(
                (ports.min..=ports.max).contains(&r.peer.port()),
                "{r}: a SNAT port"
            );
        } else {
            assert_eq!(r.pod, local_name);
            assert_eq!(r.peer.ip(), client_ip, "{r}: the local pod sees the client");
        }
        *per_pod.entry(r.pod).or_insert(0u32) += 1;
    }
    assert_eq!(per_pod.len(), 2, "both pods answer: {per_pod:?}");
}

macro_rules! cluster_test {
    ($name:ident, $routing:expr, $net:literal, $v6:literal) => {
        #[test]
        fn $name() {
            if !testbed::require_root(stringify!($name)) {
                return;
            }
            remote_pod_answers_through_node0($routing, $net, $v6);
        }
    };
}

cluster_test!(
    a_pod_on_another_node_answers_natively_routed_ipv4,
    Routing::Native,
    171,
    false
);
cluster_test!(
    a_pod_on_another_node_answers_natively_routed_ipv6,
    Routing::Native,
    172,
    true
);
cluster_test!(
    a_pod_on_another_node_answers_over_vxlan_ipv4,
    Routing::Vxlan,
    173,
    false
);
cluster_test!(
    a_pod_on_another_node_answers_over_vxlan_ipv6,
    Routing::Vxlan,
    174,
    true
);
