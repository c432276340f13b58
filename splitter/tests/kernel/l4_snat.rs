//! Flows to backends on other nodes under BPF_PROG_TEST_RUN: DNAT plus SNAT to this node's
//! address and a port of the reserved range, the reply leg back to the client, port collisions
//! and exhaustion, and what a non-SYN packet of an unknown flow gets.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
};

use crate::support::{l4::*, *};
use aya::maps::{HashMap, Map, MapData};
use splitter::{
    dataplane::ebpf::{self, L4Actuator, L4Proto, L4RouteProgram, addr16},
    run::{SnatPorts, snat_config},
};
use splitter_common::{
    hash::flow_hash,
    l4::{
        CONNTRACK, CONNTRACK_V4, DIR_FORWARD, DIR_REPLY, FLOW_RECREATED, FLOW_SNAT, FlowKeyOf,
        FlowValue, HALF_OPEN, HALF_OPEN_V4, L4Event, XDP_MARK_BOUNCE, XDP_MARK_ROUTE,
    },
};
use testbed::BpfFs;

fn rig(ports: SnatPorts) -> SnatRig {
    snat_rig(ports, |_| {})
}

fn narrow<const N: usize>(ip: IpAddr) -> [u8; N] {
    let a = addr16(ip);
    a[16 - N..].try_into().expect("N <= 16")
}

fn key<const N: usize>(src: SocketAddr, dst: SocketAddr, proto: u8, dir: u8) -> FlowKeyOf<N> {
    FlowKeyOf {
        src: narrow(src.ip()),
        dst: narrow(dst.ip()),
        src_port: src.port(),
        dst_port: dst.port(),
        proto,
        dir,
        _pad: [0; 2],
    }
}

fn conntrack<const N: usize>(pins: &Path) -> HashMap<MapData, FlowKeyOf<N>, FlowValue> {
    let name = if N == 4 { CONNTRACK_V4 } else { CONNTRACK };
    flow_map(pins, name)
}

fn half_open<const N: usize>(pins: &Path) -> HashMap<MapData, FlowKeyOf<N>, FlowValue> {
    flow_map(pins, if N == 4 { HALF_OPEN_V4 } else { HALF_OPEN })
}

fn flow_map<const N: usize>(pins: &Path, name: &str) -> HashMap<MapData, FlowKeyOf<N>, FlowValue> {
    let data = MapData::from_pin(pins.join(name)).expect("pinned conntrack");
    HashMap::try_from(Map::from_map_data(data).expect("map type")).expect("conntrack map")
}

/// The entry of the flow `src -> dst` in direction `dir`, from the map of its family.
fn entry(pins: &Path, src: SocketAddr, dst: SocketAddr, proto: u8, dir: u8) -> Option<FlowValue> {
    if src.is_ipv4() {
        conntrack::<4>(pins).get(&key(src, dst, proto, dir), 0).ok()
    } else {
        conntrack::<16>(pins)
            .get(&key(src, dst, proto, dir), 0)
            .ok()
    }
}

/// The half-open entry of the flow `src -> dst` in direction `dir` (started, not confirmed).
fn half_open_entry(
    pins: &Path,
    src: SocketAddr,
    dst: SocketAddr,
    proto: u8,
    dir: u8,
) -> Option<FlowValue> {
    if src.is_ipv4() {
        half_open::<4>(pins).get(&key(src, dst, proto, dir), 0).ok()
    } else {
        half_open::<16>(pins)
            .get(&key(src, dst, proto, dir), 0)
            .ok()
    }
}

/// Neither table knows the flow `src -> dst`.
fn untracked(pins: &Path, src: SocketAddr, dst: SocketAddr, proto: u8) -> bool {
    entry(pins, src, dst, proto, DIR_FORWARD).is_none()
        && half_open_entry(pins, src, dst, proto, DIR_FORWARD).is_none()
}

/// Takes `port` for another flow to `backend`, as a SNAT flow would.
fn occupy(pins: &Path, backend: SocketAddr, snat: IpAddr, port: u16, proto: u8) {
    let dst = SocketAddr::new(snat, port);
    let v = FlowValue {
        flags: FLOW_SNAT,
        ..FlowValue::default()
    };
    if backend.is_ipv4() {
        conntrack::<4>(pins)
            .insert(key(backend, dst, proto, DIR_REPLY), v, 0)
            .expect("seed reply entry");
    } else {
        conntrack::<16>(pins)
            .insert(key(backend, dst, proto, DIR_REPLY), v, 0)
            .expect("seed reply entry");
    }
}

/// Where the port search of a new flow starts: the flow hash, as the kernel uses it.
fn first_port(client: SocketAddr, vip: SocketAddr, proto: u8, ports: SnatPorts) -> u16 {
    let h = flow_hash(
        &addr16(client.ip()),
        &addr16(vip.ip()),
        client.port(),
        vip.port(),
        proto,
    );
    let size = u32::from(ports.max - ports.min) + 1;
    ports.min + (h % size) as u16
}

fn snat_ip(family_of: SocketAddr) -> IpAddr {
    ip(if family_of.is_ipv4() {
        SNAT_V4
    } else {
        SNAT_V6
    })
}

#[test]
fn remote_backends_get_dnat_and_snat_and_their_replies_come_back_v4_v6_tcp_udp() {
    if !testbed::require_root(
        "remote_backends_get_dnat_and_snat_and_their_replies_come_back_v4_v6_tcp_udp",
    ) {
        return;
    }
    let ports = "61000-61999".parse::<SnatPorts>().expect("ports");
    let mut r = rig(ports);
    let cases = [
        (
            sa("10.0.0.100:80"),
            L4Proto::Tcp,
            sa("10.9.0.5:8080"),
            sa("192.0.2.10:40000"),
        ),
        (
            sa("10.0.0.100:53"),
            L4Proto::Udp,
            sa("10.9.0.5:5353"),
            sa("192.0.2.10:40001"),
        ),
        (
            sa("[fd00::100]:80"),
            L4Proto::Tcp,
            sa("[fd09::5]:8080"),
            sa("[2001:db8::10]:40002"),
        ),
        (
            sa("[fd00::100]:53"),
            L4Proto::Udp,
            sa("[fd09::5]:5353"),
            sa("[2001:db8::10]:40003"),
        ),
    ];
    let programs: Vec<L4RouteProgram> = cases
        .iter()
        .map(|(vip, proto, backend, _)| one_backend_route(*vip, *proto, *backend, true, true))
        .collect();
    r.act.apply(&programs).expect("apply");
    for (vip, proto, backend, client) in cases {
        let p = proto.number();
        let (first, answer, then) = match proto {
            L4Proto::Tcp => (Seg::Syn, Seg::SynAck, Seg::Ack),
            L4Proto::Udp => (Seg::Udp, Seg::Udp, Seg::Udp),
        };
        let v = xdp(&mut r.obj, &frame(client, vip, first, b"hello"));
        assert_eq!(
            (v.action, v.mark),
            (XDP_PASS, Some(XDP_MARK_ROUTE)),
            "{vip}: passed, marked for TC ingress to route"
        );
        // inspect() recomputes the IP and L4 checksums from scratch.
        let out = inspect(&v.out);
        let want_port = first_port(client, vip, p, ports);
        assert_eq!(out.dst, backend, "{vip}: DNAT to the remote backend");
        assert_eq!(
            out.src,
            SocketAddr::new(snat_ip(vip), want_port),
            "{vip}: SNAT to the node's address, port where the search starts"
        );

        // Started, not confirmed: both legs wait in the half-open table.
        let fwd = half_open_entry(r.fs.path(), client, vip, p, DIR_FORWARD).expect("forward entry");
        assert_eq!(fwd.flags & FLOW_SNAT, FLOW_SNAT);
        assert_eq!((fwd.addr, fwd.port), (addr16(backend.ip()), backend.port()));
        assert_eq!(
            (fwd.nat_addr, fwd.nat_port),
            (addr16(snat_ip(vip)), want_port)
        );
        let snat = SocketAddr::new(snat_ip(vip), want_port);
        let rev = half_open_entry(r.fs.path(), backend, snat, p, DIR_REPLY).expect("reply entry");
        assert_eq!((rev.addr, rev.port), (addr16(vip.ip()), vip.port()));
        assert_eq!(
            (rev.nat_addr, rev.nat_port),
            (addr16(client.ip()), client.port())
        );

        // The backend answers the node; the client gets it from the VIP.
        let v = xdp(&mut r.obj, &frame(backend, snat, answer, b""));
        assert_eq!(
            (v.action, v.mark),
            (XDP_PASS, Some(XDP_MARK_ROUTE)),
            "{vip}: reply"
        );
        let out = inspect(&v.out);
        assert_eq!(
            (out.src, out.dst),
            (vip, client),
            "{vip}: reply leg translated back"
        );

        // The established path takes the same port; the client's ACK of the SYN-ACK (or the
        // backend's UDP answer) confirmed the flow: both legs are in conntrack now.
        let v = xdp(&mut r.obj, &frame(client, vip, then, b"more"));
        let out = inspect(&v.out);
        assert_eq!((out.src, out.dst), (snat, backend), "{vip}: established");
        assert_eq!(
            entry(r.fs.path(), client, vip, p, DIR_FORWARD).map(|f| f.nat_port),
            Some(want_port),
            "{vip}: confirmed"
        );
        assert!(entry(r.fs.path(), backend, snat, p, DIR_REPLY).is_some());
        assert!(half_open_entry(r.fs.path(), client, vip, p, DIR_FORWARD).is_none());
        assert!(half_open_entry(r.fs.path(), backend, snat, p, DIR_REPLY).is_none());

        // A packet to the SNAT address whose port no flow holds is not ours.
        let stray = frame(
            backend,
            SocketAddr::new(snat_ip(vip), want_port ^ 1),
            then,
            b"x",
        );
        let v = xdp(&mut r.obj, &stray);
        assert_eq!((v.action, v.mark, &v.out), (XDP_PASS, None, &stray));
    }
}

#[test]
fn a_taken_port_is_skipped_and_a_full_range_rejects() {
    if !testbed::require_root("a_taken_port_is_skipped_and_a_full_range_rejects") {
        return;
    }
    let ports = "62000-62003".parse::<SnatPorts>().expect("ports");
    let mut r = rig(ports);
    let (vip, backend) = (sa("10.0.0.100:80"), sa("10.9.0.5:8080"));
    r.act
        .apply(&[one_backend_route(vip, L4Proto::Tcp, backend, true, true)])
        .expect("apply");
    let tcp = L4Proto::Tcp.number();
    let snat = ip(SNAT_V4);
    let next = |p: u16| if p == ports.max { ports.min } else { p + 1 };

    // Other flows to the same backend hold the first two ports this flow would try.
    let client = sa("192.0.2.10:40000");
    let start = first_port(client, vip, tcp, ports);
    occupy(r.fs.path(), backend, snat, start, tcp);
    occupy(r.fs.path(), backend, snat, next(start), tcp);
    let v = xdp(&mut r.obj, &frame(client, vip, Seg::Syn, &[]));
    assert_eq!(v.mark, Some(XDP_MARK_ROUTE));
    let out = inspect(&v.out);
    assert_eq!(
        out.src,
        SocketAddr::new(snat, next(next(start))),
        "the third port probed is the first free one"
    );
    assert_eq!(events(&r.obj, L4Event::SnatPortsExhausted), 0);

    // The fourth and last port goes to another flow; then the range is full.
    occupy(r.fs.path(), backend, snat, next(next(next(start))), tcp);
    let late = sa("192.0.2.11:40000");
    let v = xdp(&mut r.obj, &frame(late, vip, Seg::Syn, &[]));
    assert_eq!(
        (v.action, v.mark),
        (XDP_PASS, Some(XDP_MARK_BOUNCE)),
        "no port left: the client gets a RST, sent back by TC ingress"
    );
    let out = inspect(&v.out);
    assert_eq!((out.src, out.dst), (vip, late));
    assert!(out.rst, "{out:?}");
    assert_eq!(events(&r.obj, L4Event::SnatPortsExhausted), 1);
    assert!(
        untracked(r.fs.path(), late, vip, tcp),
        "a rejected flow is not tracked"
    );
    // A local backend on the same route kind is unaffected by the full range.
    let local = sa("10.0.0.200:80");
    r.act
        .apply(&[
            one_backend_route(vip, L4Proto::Tcp, backend, true, true),
            one_backend_route(local, L4Proto::Tcp, sa("10.1.0.1:8080"), false, true),
        ])
        .expect("apply");
    let v = xdp(&mut r.obj, &frame(late, local, Seg::Syn, &[]));
    assert_eq!(
        (v.action, v.mark),
        (XDP_PASS, None),
        "local: plain DNAT, no mark"
    );
    assert_eq!(inspect(&v.out).src, late, "a local backend sees the client");
}

#[test]
fn more_taken_ports_than_tries_rejects() {
    if !testbed::require_root("more_taken_ports_than_tries_rejects") {
        return;
    }
    let ports = "63000-63099".parse::<SnatPorts>().expect("ports");
    let mut r = rig(ports);
    let (vip, backend) = (sa("[fd00::100]:80"), sa("[fd09::5]:8080"));
    r.act
        .apply(&[one_backend_route(vip, L4Proto::Tcp, backend, true, true)])
        .expect("apply");
    let tcp = L4Proto::Tcp.number();
    let client = sa("[2001:db8::10]:40000");
    let start = first_port(client, vip, tcp, ports);
    let size = ports.max - ports.min + 1;
    for i in 0..splitter_common::l4::SNAT_PORT_TRIES as u16 {
        let p = ports.min + (start - ports.min + i) % size;
        occupy(r.fs.path(), backend, ip(SNAT_V6), p, tcp);
    }
    let v = xdp(&mut r.obj, &frame(client, vip, Seg::Syn, &[]));
    assert_eq!(v.mark, Some(XDP_MARK_BOUNCE), "bounded search: RST");
    assert!(inspect(&v.out).rst);
    assert_eq!(events(&r.obj, L4Event::SnatPortsExhausted), 1);
}

#[test]
fn without_a_snat_address_remote_flows_are_rejected() {
    if !testbed::require_root("without_a_snat_address_remote_flows_are_rejected") {
        return;
    }
    let fs = BpfFs::new().expect("bpffs");
    let mut obj = ebpf::load_object(Some(fs.path())).expect("load");
    let mut act = L4Actuator::new(&mut obj).expect("actuator");
    // An IPv4 address only: IPv6 remote flows have none.
    act.set_config(snat_config(&[ip(SNAT_V4)], SnatPorts::default()))
        .expect("config");
    let (vip, backend) = (sa("[fd00::100]:80"), sa("[fd09::5]:8080"));
    act.apply(&[one_backend_route(vip, L4Proto::Tcp, backend, true, true)])
        .expect("apply");
    let v = xdp(
        &mut obj,
        &frame(sa("[2001:db8::1]:40000"), vip, Seg::Syn, &[]),
    );
    assert_eq!(v.mark, Some(XDP_MARK_BOUNCE));
    assert!(inspect(&v.out).rst);
    assert_eq!(events(&obj, L4Event::SnatNoAddress), 1);
}

#[test]
fn a_non_syn_miss_is_recreated_passed_or_refused_by_vip_kind_and_backend() {
    if !testbed::require_root(
        "a_non_syn_miss_is_recreated_passed_or_refused_by_vip_kind_and_backend",
    ) {
        return;
    }
    let mut r = rig(SnatPorts::default());
    let dedicated_local = sa("10.0.0.100:80");
    let node_address = sa("10.0.0.2:80");
    let dedicated_remote = sa("10.0.0.101:80");
    let (local_backend, remote_backend) = (sa("10.1.0.1:8080"), sa("10.9.0.5:8080"));
    r.act
        .apply(&[
            one_backend_route(dedicated_local, L4Proto::Tcp, local_backend, false, true),
            one_backend_route(node_address, L4Proto::Tcp, local_backend, false, false),
            one_backend_route(dedicated_remote, L4Proto::Tcp, remote_backend, true, true),
        ])
        .expect("apply");
    let client = sa("192.0.2.10:40000");
    let tcp = L4Proto::Tcp.number();

    // A dedicated VIP: every packet is ours; the flow is recreated from the table.
    let v = xdp(
        &mut r.obj,
        &frame(client, dedicated_local, Seg::Ack, b"mid-flow"),
    );
    assert_eq!((v.action, v.mark), (XDP_PASS, None));
    assert_eq!(inspect(&v.out).dst, local_backend, "recreated");
    assert_eq!(events(&r.obj, L4Event::NonSynMiss), 1);
    // Recreated in the half-open table: the backend's first answer that is not a RST confirms
    // it (TC egress sees it).
    let recreated = half_open_entry(r.fs.path(), client, dedicated_local, tcp, DIR_FORWARD);
    assert!(recreated.is_some_and(|f| f.flags & FLOW_RECREATED != 0));
    assert!(entry(r.fs.path(), client, dedicated_local, tcp, DIR_FORWARD).is_none());
    tc(
        &mut r.obj,
        &frame(local_backend, client, Seg::Ack, b"answer"),
    );
    assert!(entry(r.fs.path(), client, dedicated_local, tcp, DIR_FORWARD).is_some());
    assert!(half_open_entry(r.fs.path(), client, dedicated_local, tcp, DIR_FORWARD).is_none());
    assert_eq!(events(&r.obj, L4Event::Confirmed), 1);

    // The node's own address: it may be a host connection; untouched.
    let f = frame(client, node_address, Seg::Ack, b"host traffic");
    let v = xdp(&mut r.obj, &f);
    assert_eq!(
        (v.action, v.mark, &v.out),
        (XDP_PASS, None, &f),
        "passed untouched"
    );
    assert_eq!(events(&r.obj, L4Event::NonSynMissPassed), 1);
    assert!(untracked(r.fs.path(), client, node_address, tcp));

    // A dedicated VIP whose table names a remote backend: a new SNAT port would be a different
    // connection to the backend, so the client is told at once.
    let v = xdp(
        &mut r.obj,
        &frame(client, dedicated_remote, Seg::Ack, b"mid-flow"),
    );
    assert_eq!((v.action, v.mark), (XDP_PASS, Some(XDP_MARK_BOUNCE)));
    let out = inspect(&v.out);
    assert!(
        out.rst && (out.src, out.dst) == (dedicated_remote, client),
        "{out:?}"
    );
    assert_eq!(events(&r.obj, L4Event::SnatFlowLost), 1);
    assert!(untracked(r.fs.path(), client, dedicated_remote, tcp));
}
