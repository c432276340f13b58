//! Real traffic through namespaces for what XDP cannot send by itself: RSTs of a rejected share
//! (bounced by TC ingress) in native and generic XDP mode, and flows to a backend on another
//! node, which only work because they are source-NATed and their replies translated back.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, ErrorKind, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use splitter::{
    dataplane::ebpf::{self, Attachment, KernelObject, L4Actuator, L4Proto, L4RouteProgram},
    run::{SnatPorts, snat_config},
};
use testbed::{AddressPlan, BpfFs, GatewayNet, NetNs, VethPair};

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("socket address")
}

fn attach(
    node: &NetNs,
    ifaces: &[&str],
    fs: &BpfFs,
    mode: ebpf::XdpAttachMode,
    tc_mode: ebpf::TcAttachMode,
) -> (KernelObject, L4Actuator) {
    let mut obj = ebpf::load_object(Some(&fs.path().join("maps"))).expect("load");
    let links = fs.path().join("links");
    for iface in ifaces {
        let att = node.run(|| {
            ebpf::attach_pinned(&mut obj, iface, &links, mode, tc_mode).expect("attach pinned")
        });
        let want = match mode {
            ebpf::XdpAttachMode::Generic => aya::programs::XdpMode::Skb,
            _ => aya::programs::XdpMode::Driver,
        };
        assert_eq!(
            att,
            Attachment::New(want),
            "{iface}: attached in the mode asked for"
        );
    }
    let act = L4Actuator::new(&mut obj).expect("actuator");
    (obj, act)
}

fn tx_checksums_off(ns: &NetNs, dev: &str) {
    // XDP sees the bytes as sent: a local sender on a veth must put complete checksums on them.
    ns.exec("ethtool", &["-K", dev, "tx", "off"])
        .expect("ethtool tx off");
}

fn refused_in(mode: ebpf::XdpAttachMode, tc_mode: ebpf::TcAttachMode, tag: &str) {
    let plan = AddressPlan {
        front: "10.230.0",
        backends: "10.231",
        first: 0,
    };
    let t = GatewayNet::new(tag, plan, 0).expect("topology");
    t.client_sends_full_checksums().expect("ethtool");
    let fs = BpfFs::new().expect("bpffs");
    let (_obj, mut act) = attach(&t.gateway, &[t.gateway_iface()], &fs, mode, tc_mode);
    let vip: SocketAddr = format!("{}:80", plan.gateway()).parse().expect("vip");
    act.apply(&[L4RouteProgram {
        key: "rejected".into(),
        vips: vec![(vip, L4Proto::Tcp)],
        table: vec![None; 7],
        remote: BTreeSet::new(),
        dedicated: BTreeSet::new(),
    }])
    .expect("apply");
    let links = fs.path().join("links");
    let iface = t.gateway_iface();
    let netlink = tc_mode == ebpf::TcAttachMode::Netlink;
    let tc_pins = [
        ebpf::tc_pin_path(&links, iface),
        ebpf::tc_ingress_pin_path(&links, iface),
    ];
    // In netlink mode the TC programs are clsact filters: recorded, never pinned.
    let pins: Vec<_> = if netlink {
        vec![
            ebpf::xdp_pin_path(&links, iface),
            ebpf::tc_netlink_record_path(&links, iface),
        ]
    } else {
        let mut p = vec![ebpf::xdp_pin_path(&links, iface)];
        p.extend(tc_pins.iter().cloned());
        p
    };
    assert!(pins.iter().all(|p| p.exists()), "{pins:?} pinned");
    assert_eq!(
        tc_pins.iter().any(|p| p.exists()),
        !netlink,
        "tcx links pinned only in tcx mode"
    );
    let filters = || {
        ["ingress", "egress"].map(|dir| {
            let out = t
                .gateway
                .exec("tc", &["filter", "show", "dev", iface, dir])
                .expect("tc filter show");
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
    };
    if netlink {
        let [ingress, egress] = filters();
        assert!(ingress.contains("splitter_tc_ingress"), "{ingress}");
        assert!(egress.contains("splitter_tc_egress"), "{egress}");
    }
    let xdp_shown = || {
        let out = t
            .gateway
            .exec("bpftool", &["net", "show", "dev", t.gateway_iface()])
            .expect("bpftool net show");
        // The XDP section only: netlink TC filters show ids too.
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.split("tc:")
            .next()
            .unwrap_or_default()
            .contains(" id ")
    };
    assert!(xdp_shown(), "XDP attached");
    t.client.run(|| {
        for i in 0..20 {
            let started = std::time::Instant::now();
            let err = TcpStream::connect_timeout(&vip, Duration::from_secs(3))
                .expect_err("a rejected share must not connect");
            assert_eq!(
                err.kind(),
                ErrorKind::ConnectionRefused,
                "attempt {i}: {err} after {:?}",
                started.elapsed()
            );
            assert!(
                started.elapsed() < Duration::from_millis(500),
                "attempt {i}: refused at once, not after SYN retries"
            );
        }
    });

    // `splitter detach` removes every attachment, the TC ingress one included. In the node's
    // network namespace: netlink filters are found through the interface.
    let out = t
        .gateway
        .command(env!("CARGO_BIN_EXE_splitter"))
        .args(["detach", "--iface", t.gateway_iface(), "--pin-dir"])
        .arg(fs.path())
        .output()
        .expect("run splitter detach");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!pins.iter().any(|p| p.exists()), "{pins:?} unpinned");
    assert!(!xdp_shown(), "XDP detached with its last reference");
    let [ingress, egress] = filters();
    assert!(
        !ingress.contains("splitter") && !egress.contains("splitter"),
        "netlink filters removed: {ingress} {egress}"
    );
}

#[test]
fn a_rejected_share_refuses_connections_with_native_xdp() {
    if !testbed::require_root("a_rejected_share_refuses_connections_with_native_xdp") {
        return;
    }
    refused_in(ebpf::XdpAttachMode::Driver, ebpf::TcAttachMode::Auto, "rjn");
}

#[test]
fn a_rejected_share_refuses_connections_with_generic_xdp() {
    if !testbed::require_root("a_rejected_share_refuses_connections_with_generic_xdp") {
        return;
    }
    refused_in(
        ebpf::XdpAttachMode::Generic,
        ebpf::TcAttachMode::Auto,
        "rjg",
    );
}

/// Kernels before 6.6 (no tcx) attach TC through clsact + netlink; forced here, where tcx
/// exists, so the suite covers that mode: the RST comes from the TC ingress filter.
#[test]
fn a_rejected_share_refuses_connections_with_netlink_tc() {
    if !testbed::require_root("a_rejected_share_refuses_connections_with_netlink_tc") {
        return;
    }
    refused_in(
        ebpf::XdpAttachMode::Driver,
        ebpf::TcAttachMode::Netlink,
        "rjl",
    );
}

/// Client -- node (the agent's programs on both of its veths, forwarding on) -- other node,
/// which holds the backend. The other node routes only to the node's own address, never to
/// the client's subnet: a reply can only come back if the node source-NATed the flow.
struct RemoteNet {
    client: NetNs,
    node: NetNs,
    other: NetNs,
    front: VethPair,
    back: VethPair,
}

const CLIENT: &str = "10.240.0.1";
const NODE: &str = "10.240.0.2";
const NODE_BACK: &str = "10.241.0.1";
const BACKEND: &str = "10.241.0.2";
const CLIENT6: &str = "fd40::1";
const NODE6: &str = "fd40::2";
const NODE6_BACK: &str = "fd41::1";
const BACKEND6: &str = "fd41::2";

impl RemoteNet {
    fn new() -> Self {
        let client = NetNs::new("snc").expect("ns");
        let node = NetNs::new("snn").expect("ns");
        let other = NetNs::new("sno").expect("ns");
        let front = VethPair::new(
            &client,
            &[&format!("{CLIENT}/24"), &format!("{CLIENT6}/64")],
            &node,
            &[&format!("{NODE}/24"), &format!("{NODE6}/64")],
        )
        .expect("front veth");
        let back = VethPair::new(
            &node,
            &[&format!("{NODE_BACK}/24"), &format!("{NODE6_BACK}/64")],
            &other,
            &[&format!("{BACKEND}/24"), &format!("{BACKEND6}/64")],
        )
        .expect("back veth");
        node.sysctl("net/ipv4/ip_forward", "1").expect("forwarding");
        node.sysctl("net/ipv6/conf/all/forwarding", "1")
            .expect("forwarding");
        other
            .ip(&["route", "add", &format!("{NODE}/32"), "via", NODE_BACK])
            .expect("route to the node");
        other
            .ip(&[
                "-6",
                "route",
                "add",
                &format!("{NODE6}/128"),
                "via",
                NODE6_BACK,
            ])
            .expect("route to the node");
        tx_checksums_off(&client, &front.a);
        tx_checksums_off(&node, &front.b);
        tx_checksums_off(&node, &back.a);
        tx_checksums_off(&other, &back.b);
        RemoteNet {
            client,
            node,
            other,
            front,
            back,
        }
    }
}

/// The backend answers each connection with its peer's address, as it sees it.
fn serve_peer_addresses(ns: &NetNs, bind: SocketAddr) {
    let listener = ns.run(|| TcpListener::bind(bind).expect("backend listen"));
    ns.spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let peer = conn.peer_addr().map(|p| p.to_string()).unwrap_or_default();
            let _ = writeln!(conn, "{peer}");
        }
    });
}

/// Bytes `i` of a bulk transfer: a pattern a reordering or corruption would break.
fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

const BULK: usize = 8 << 20;

/// The backend reads a request line of N bytes to send, then sends them (full-sized segments
/// both ways: GRO and the redirect of large packets are on the path).
fn serve_bulk(ns: &NetNs, bind: SocketAddr) {
    let listener = ns.run(|| TcpListener::bind(bind).expect("bulk listen"));
    ns.spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut line = String::new();
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                let n: usize = line.trim().parse().unwrap_or(0);
                let data: Vec<u8> = (0..n).map(pattern).collect();
                let _ = conn.write_all(&data);
            });
        }
    });
}

fn remote_backend_end_to_end(
    vip: SocketAddr,
    backend: SocketAddr,
    node_ip: IpAddr,
    mode: ebpf::XdpAttachMode,
    tc_mode: ebpf::TcAttachMode,
) {
    let n = RemoteNet::new();
    let fs = BpfFs::new().expect("bpffs");
    let (_obj, mut act) = attach(&n.node, &[&n.front.b, &n.back.a], &fs, mode, tc_mode);
    let ports = SnatPorts::default();
    act.set_config(snat_config(
        &[NODE.parse().expect("ip"), NODE6.parse().expect("ip")],
        ports,
    ))
    .expect("config");
    serve_peer_addresses(&n.other, backend);
    let bulk_backend = SocketAddr::new(backend.ip(), backend.port() + 1);
    let bulk_vip = SocketAddr::new(vip.ip(), vip.port() + 1);
    serve_bulk(&n.other, bulk_backend);

    // Without SNAT (the backend as if local) the connection cannot work: the other node has no
    // route back to the client.
    let program = |remote: bool| {
        [(vip, backend), (bulk_vip, bulk_backend)].map(|(vip, backend)| L4RouteProgram {
            key: vip.to_string(),
            vips: vec![(vip, L4Proto::Tcp)],
            table: vec![Some(backend); 7],
            remote: if remote {
                BTreeSet::from([backend])
            } else {
                BTreeSet::new()
            },
            dedicated: BTreeSet::new(),
        })
    };
    act.apply(&program(false)).expect("apply local");
    n.client.run(|| {
        // From a source port outside the ephemeral range: the failed flow stays in conntrack,
        // and a later connection that drew its port would follow it.
        let s = socket2::Socket::new(
            socket2::Domain::for_address(vip),
            socket2::Type::STREAM,
            None,
        )
        .expect("socket");
        let unspecified: IpAddr = if vip.is_ipv4() {
            std::net::Ipv4Addr::UNSPECIFIED.into()
        } else {
            std::net::Ipv6Addr::UNSPECIFIED.into()
        };
        s.bind(&SocketAddr::new(unspecified, 20999).into())
            .expect("bind");
        assert!(
            s.connect_timeout(&vip.into(), Duration::from_millis(1500))
                .is_err(),
            "DNAT alone must not reach a backend with no route back"
        );
    });

    act.apply(&program(true)).expect("apply remote");
    let seen: Vec<SocketAddr> = n.client.run(|| {
        (0..200)
            .map(|i| {
                let s = TcpStream::connect_timeout(&vip, Duration::from_secs(3))
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                s.set_read_timeout(Some(Duration::from_secs(3)))
                    .expect("timeout");
                let mut line = String::new();
                BufReader::new(s)
                    .read_line(&mut line)
                    .unwrap_or_else(|e| panic!("connection {i}: read: {e}"));
                line.trim()
                    .parse()
                    .unwrap_or_else(|e| panic!("connection {i}: {line:?}: {e}"))
            })
            .collect()
    });
    assert_eq!(seen.len(), 200, "200 connections, no failure");
    for peer in &seen {
        assert_eq!(peer.ip(), node_ip, "the backend sees the node's address");
        assert!(
            (ports.min..=ports.max).contains(&peer.port()),
            "source port {} in the SNAT range",
            peer.port()
        );
    }
    let distinct: BTreeSet<u16> = seen.iter().map(SocketAddr::port).collect();
    assert!(
        distinct.len() > 150,
        "ports spread by flow hash: {}",
        distinct.len()
    );

    // Megabytes both ways through the translation, byte for byte.
    let received = n.client.run(|| {
        let mut s =
            TcpStream::connect_timeout(&bulk_vip, Duration::from_secs(3)).expect("bulk connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let request = format!("{BULK}\n");
        s.write_all(request.as_bytes()).expect("request");
        let mut got = Vec::with_capacity(BULK);
        std::io::Read::read_to_end(&mut s, &mut got).expect("bulk read");
        got
    });
    assert_eq!(received.len(), BULK, "the whole transfer arrives");
    assert!(
        received.iter().enumerate().all(|(i, b)| *b == pattern(i)),
        "byte for byte"
    );

    // The operator's view.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_splitter"))
        .args(["inspect", "--pin-dir"])
        .arg(fs.path().join("maps"))
        .output()
        .expect("run splitter inspect");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("(201 source-NATed to remote backends)"),
        "{text}"
    );
    assert!(text.contains("(7 slots, active, remote)"), "{text}");
    assert!(text.contains("route_failed         0"), "{text}");
    assert!(text.contains("redirect_failed      0"), "{text}");
}

#[test]
fn a_remote_backend_answers_through_snat_ipv4() {
    if !testbed::require_root("a_remote_backend_answers_through_snat_ipv4") {
        return;
    }
    remote_backend_end_to_end(
        sa(&format!("{NODE}:80")),
        sa(&format!("{BACKEND}:8080")),
        NODE.parse().expect("ip"),
        ebpf::XdpAttachMode::Driver,
        ebpf::TcAttachMode::Auto,
    );
}

#[test]
fn a_remote_backend_answers_through_snat_with_generic_xdp() {
    if !testbed::require_root("a_remote_backend_answers_through_snat_with_generic_xdp") {
        return;
    }
    remote_backend_end_to_end(
        sa(&format!("{NODE}:80")),
        sa(&format!("{BACKEND}:8080")),
        NODE.parse().expect("ip"),
        ebpf::XdpAttachMode::Generic,
        ebpf::TcAttachMode::Auto,
    );
}

#[test]
fn a_remote_backend_answers_through_snat_ipv6() {
    if !testbed::require_root("a_remote_backend_answers_through_snat_ipv6") {
        return;
    }
    remote_backend_end_to_end(
        sa(&format!("[{NODE6}]:80")),
        sa(&format!("[{BACKEND6}]:8080")),
        NODE6.parse().expect("ip"),
        ebpf::XdpAttachMode::Driver,
        ebpf::TcAttachMode::Auto,
    );
}

/// Forwarded flows (to a remote backend: XDP translates, the TC ingress filter sends each
/// translated leg out) with the TC programs attached through netlink.
#[test]
fn a_remote_backend_answers_through_snat_with_netlink_tc() {
    if !testbed::require_root("a_remote_backend_answers_through_snat_with_netlink_tc") {
        return;
    }
    remote_backend_end_to_end(
        sa(&format!("{NODE}:80")),
        sa(&format!("{BACKEND}:8080")),
        NODE.parse().expect("ip"),
        ebpf::XdpAttachMode::Driver,
        ebpf::TcAttachMode::Netlink,
    );
}
