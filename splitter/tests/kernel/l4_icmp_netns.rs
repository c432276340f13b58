//! Path MTU discovery through the L4 path, with real TCP. Every link is 1500 bytes, so both
//! ends announce an MSS of 1460 and only PMTU discovery can shrink segments, but two hops take
//! 1280 only (locked route MTUs):
//!
//! - the router's route to the client: its "fragmentation needed" / "packet too big" errors
//!   about the backend's segments go to the VIP, their source as the router saw them; only
//!   their translation at XDP ingress tells the backend (local, or remote behind SNAT) to send
//!   smaller ones;
//! - the node's route to the local pod: the node's errors about the client's DNATed segments
//!   quote client -> pod, which no client socket knows; only their translation at TC egress
//!   (to client -> VIP) tells the client.
//!
//! With the translation switched off the same transfers stall and neither side learns the
//! smaller MTU.
//!
//! ```text
//! client --1500-- router --1500-- node --1500, route mtu 1280-- pod (local backend)
//!          (route to the client:       `-- other node (remote backend, reached through SNAT)
//!           mtu lock 1280)
//! ```

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use splitter::{
    dataplane::ebpf::{self, Attachment, KernelObject, L4Actuator, L4Proto, L4RouteProgram},
    run::{SnatPorts, snat_config},
};
use splitter_common::l4::{CONFIG_ICMP_UNTRANSLATED, L4Config};
use testbed::{BpfFs, NetNs, VethPair};

const MB: usize = 1 << 20;

/// Addresses of one family: (client, router's client side, router's node side, node,
/// node's pod side, pod, node's other-node side, other node, VIP).
struct Plan {
    client: &'static str,
    router_c: &'static str,
    router_n: &'static str,
    node: &'static str,
    node_p: &'static str,
    pod: &'static str,
    node_o: &'static str,
    other: &'static str,
    vip: &'static str,
    /// A second VIP of the local backend, for the upload: path MTUs are learned per
    /// destination address, and what the client learns about one VIP must not shrink the
    /// segments the backend sends through the other (see the test).
    up_vip: &'static str,
    /// Prefix length of every link.
    len: u8,
    /// Host route length.
    host: u8,
}

const V4: Plan = Plan {
    client: "10.250.0.1",
    router_c: "10.250.0.2",
    router_n: "10.250.1.1",
    node: "10.250.1.2",
    node_p: "10.250.2.1",
    pod: "10.250.2.2",
    node_o: "10.250.3.1",
    other: "10.250.3.2",
    vip: "10.250.9.1",
    up_vip: "10.250.9.2",
    len: 24,
    host: 32,
};

const V6: Plan = Plan {
    client: "fd50::1",
    router_c: "fd50::2",
    router_n: "fd51::1",
    node: "fd51::2",
    node_p: "fd52::1",
    pod: "fd52::2",
    node_o: "fd53::1",
    other: "fd53::2",
    vip: "fd59::1",
    up_vip: "fd59::2",
    len: 64,
    host: 128,
};

struct MtuNet {
    client: NetNs,
    /// Kept for its lifetime: the namespaces go with the struct.
    _router: NetNs,
    node: NetNs,
    pod: NetNs,
    other: NetNs,
    /// Node-side ends of the router and other-node links: where the programs attach.
    front: String,
    back: String,
}

fn tx_checksums_off(ns: &NetNs, dev: &str) {
    // XDP sees the bytes as sent: a local sender on a veth must put complete checksums on them.
    ns.exec("ethtool", &["-K", dev, "tx", "off"])
        .expect("ethtool tx off");
}

fn cidr(a: &str, len: u8) -> String {
    format!("{a}/{len}")
}

impl MtuNet {
    fn new(p: &Plan) -> Self {
        let client = NetNs::new("mtc").expect("ns");
        let router = NetNs::new("mtr").expect("ns");
        let node = NetNs::new("mtn").expect("ns");
        let pod = NetNs::new("mtp").expect("ns");
        let other = NetNs::new("mto").expect("ns");
        let l = p.len;
        let cr = VethPair::new(
            &client,
            &[&cidr(p.client, l)],
            &router,
            &[&cidr(p.router_c, l)],
        )
        .expect("client link");
        let rn = VethPair::new(&router, &[&cidr(p.router_n, l)], &node, &[&cidr(p.node, l)])
            .expect("router link");
        let np = VethPair::new(&node, &[&cidr(p.node_p, l)], &pod, &[&cidr(p.pod, l)])
            .expect("pod link");
        let no = VethPair::new(&node, &[&cidr(p.node_o, l)], &other, &[&cidr(p.other, l)])
            .expect("other-node link");
        let fam = if p.host == 32 { "-4" } else { "-6" };
        let route = |ns: &NetNs, args: &[&str]| {
            let mut all = vec![fam, "route", "add"];
            all.extend_from_slice(args);
            ns.ip(&all)
                .unwrap_or_else(|e| panic!("ip {all:?} in {}: {e}", ns.name()));
        };
        route(&client, &["default", "via", p.router_c]);
        route(&router, &[&cidr(p.vip, p.host), "via", p.node]);
        route(&router, &[&cidr(p.up_vip, p.host), "via", p.node]);
        // The 1280-byte hop: the router's route to the client. Locked, so forwarding honours
        // it (an unlocked route MTU is ignored for forwarded IPv6) and sends the errors.
        route(
            &router,
            &[&cidr(p.client, p.host), "dev", &cr.b, "mtu", "lock", "1280"],
        );
        route(&node, &["default", "via", p.router_n]);
        // The second 1280-byte hop: the node's route to the local pod.
        route(
            &node,
            &[&cidr(p.pod, p.host), "dev", &np.a, "mtu", "lock", "1280"],
        );
        route(&pod, &["default", "via", p.node_p]);
        // The other node reaches only the node's address: replies need SNAT.
        route(&other, &[&cidr(p.node, p.host), "via", p.node_o]);
        for ns in [&router, &node] {
            ns.sysctl("net/ipv4/ip_forward", "1").expect("forwarding");
            ns.sysctl("net/ipv6/conf/all/forwarding", "1")
                .expect("forwarding");
        }
        // Every error owed is sent: the test is about what happens to them.
        for ns in [&router, &node] {
            ns.sysctl("net/ipv4/icmp_ratelimit", "0")
                .expect("icmp ratelimit");
            ns.sysctl("net/ipv6/icmp/ratelimit", "0")
                .expect("icmpv6 ratelimit");
        }
        for (ns, dev) in [
            (&client, &cr.a),
            (&router, &cr.b),
            (&router, &rn.a),
            (&node, &rn.b),
            (&node, &np.a),
            (&node, &no.a),
            (&pod, &np.b),
            (&other, &no.b),
        ] {
            tx_checksums_off(ns, dev);
        }
        MtuNet {
            client,
            _router: router,
            node,
            pod,
            other,
            front: rn.b,
            back: no.a,
        }
    }
}

fn attach(node: &NetNs, ifaces: &[&str], fs: &BpfFs) -> (KernelObject, L4Actuator) {
    let mut obj = ebpf::load_object(Some(&fs.path().join("maps"))).expect("load");
    let links = fs.path().join("links");
    for iface in ifaces {
        let att = node.run(|| {
            ebpf::attach_pinned(
                &mut obj,
                iface,
                &links,
                ebpf::XdpAttachMode::Driver,
                ebpf::TcAttachMode::Auto,
            )
            .expect("attach pinned")
        });
        assert_eq!(
            att,
            Attachment::New(aya::programs::XdpMode::Driver),
            "{iface}"
        );
    }
    let act = L4Actuator::new(&mut obj).expect("actuator");
    (obj, act)
}

fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

/// "down N": the backend sends N pattern bytes. "up N": it reads N bytes and answers with how
/// many it got and how many differed from the pattern.
fn serve(ns: &NetNs, bind: SocketAddr) {
    let listener = ns.run(|| TcpListener::bind(bind).expect("listen"));
    ns.spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    return;
                }
                let mut words = line.split_whitespace();
                let (verb, n) = (words.next(), words.next().and_then(|n| n.parse().ok()));
                match (verb, n) {
                    (Some("down"), Some(n)) => {
                        let data: Vec<u8> = (0..n).map(pattern).collect();
                        let _ = conn.write_all(&data);
                    }
                    (Some("up"), Some(n)) => {
                        let mut data = Vec::with_capacity(n);
                        let _ = reader.take(n as u64).read_to_end(&mut data);
                        let bad = data
                            .iter()
                            .enumerate()
                            .filter(|(i, b)| **b != pattern(*i))
                            .count();
                        let _ = writeln!(conn, "{} {bad}", data.len());
                    }
                    _ => {}
                }
            });
        }
    });
}

/// The backend -> client transfer: what arrived before the end or a `stall` without data.
fn down(client: &NetNs, vip: SocketAddr, n: usize, stall: Duration) -> Vec<u8> {
    client.run(|| {
        let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(3)).expect("connect");
        s.set_read_timeout(Some(stall)).expect("timeout");
        s.write_all(format!("down {n}\n").as_bytes())
            .expect("request");
        let mut got = Vec::with_capacity(n);
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match s.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => got.extend_from_slice(&buf[..k]),
            }
        }
        got
    })
}

/// The client -> backend transfer: the backend's count of bytes received and of wrong bytes,
/// or `None` when it stalls for `stall`.
fn up(client: &NetNs, vip: SocketAddr, n: usize, stall: Duration) -> Option<String> {
    client.run(|| {
        let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(3)).expect("connect");
        s.set_read_timeout(Some(stall)).expect("timeout");
        s.set_write_timeout(Some(stall)).expect("timeout");
        s.write_all(format!("up {n}\n").as_bytes())
            .expect("request");
        let data: Vec<u8> = (0..n).map(pattern).collect();
        s.write_all(&data).ok()?;
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).ok()?;
        Some(line.trim().to_owned())
    })
}

/// The path MTU `ns` has cached towards `dst` (`ip route get` shows `mtu N` once a
/// "fragmentation needed" / "packet too big" was accepted), if any.
fn learned_mtu(ns: &NetNs, dst: &str) -> Option<u32> {
    let out = ns.exec("ip", &["route", "get", dst]).expect("ip route get");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut words = text.split_whitespace();
    while let Some(w) = words.next() {
        if w == "mtu" {
            return words.next().and_then(|m| m.parse().ok());
        }
    }
    None
}

fn pmtu_through_the_l4_path(p: &Plan) {
    let n = MtuNet::new(p);
    let fs = BpfFs::new().expect("bpffs");
    let (_obj, mut act) = attach(&n.node, &[&n.front, &n.back], &fs);
    let node: IpAddr = p.node.parse().expect("node address");
    let config = snat_config(&[node], SnatPorts::default());
    let off = L4Config {
        flags: config.flags | CONFIG_ICMP_UNTRANSLATED,
        ..config
    };
    let ip = |a: &str| -> IpAddr { a.parse().expect("address") };
    let local_backend = SocketAddr::new(ip(p.pod), 8080);
    let remote_backend = SocketAddr::new(ip(p.other), 8080);
    serve(&n.pod, local_backend);
    serve(&n.other, remote_backend);
    let local_vip = SocketAddr::new(ip(p.vip), 80);
    let remote_vip = SocketAddr::new(ip(p.vip), 81);
    let up_vip = SocketAddr::new(ip(p.up_vip), 80);
    let program = |vip: SocketAddr, backend: SocketAddr, remote: bool| L4RouteProgram {
        key: vip.to_string(),
        vips: vec![(vip, L4Proto::Tcp)],
        table: vec![Some(backend); 7],
        remote: if remote {
            BTreeSet::from([backend])
        } else {
            BTreeSet::new()
        },
        dedicated: BTreeSet::from([vip.ip()]),
    };
    act.apply(&[
        program(local_vip, local_backend, false),
        program(remote_vip, remote_backend, true),
        program(up_vip, local_backend, false),
    ])
    .expect("apply");
    // (VIP, the backend's namespace, the destination its packets have: the client, or the
    // node for a source-NATed flow.)
    let downloads = [
        (local_vip, &n.pod, p.client, "local"),
        (remote_vip, &n.other, p.node, "remote"),
    ];

    // Without the translation the router's errors about the backend's 1460-byte segments go
    // to the VIP, which no host has: the backend keeps resending segments that cannot pass.
    act.set_config(off).expect("translation off");
    for (vip, backend_ns, dst, what) in &downloads {
        let got = down(&n.client, *vip, MB, Duration::from_secs(3));
        assert!(
            got.len() < MB,
            "{what}: without the translation the download stalls ({} bytes arrived)",
            got.len()
        );
        assert_eq!(
            learned_mtu(backend_ns, dst),
            None,
            "{what}: the backend never learns the smaller MTU"
        );
    }
    // The node's errors about the client's segments quote client -> pod: the client drops
    // them (no socket of its has that tuple).
    assert_eq!(
        up(&n.client, up_vip, MB, Duration::from_secs(3)),
        None,
        "without the translation the upload stalls"
    );
    assert_eq!(
        learned_mtu(&n.client, p.up_vip),
        None,
        "the client never learns the smaller MTU"
    );

    act.set_config(config).expect("translation on");
    // The upload first: a backend that learned 1280 towards the client announces the smaller
    // MSS on later connections, which would spare the client PMTU discovery.
    assert_eq!(
        up(&n.client, up_vip, MB, Duration::from_secs(10)),
        Some(format!("{MB} 0")),
        "client -> local backend, byte for byte"
    );
    assert_eq!(
        learned_mtu(&n.client, p.up_vip),
        Some(1280),
        "the client learned the pod-side MTU, from the node's translated error"
    );
    for (vip, backend_ns, dst, what) in &downloads {
        let got = down(&n.client, *vip, MB, Duration::from_secs(10));
        assert_eq!(got.len(), MB, "{what}: the whole megabyte arrives");
        assert!(
            got.iter().enumerate().all(|(i, b)| *b == pattern(i)),
            "{what}: byte for byte"
        );
        assert_eq!(
            learned_mtu(backend_ns, dst),
            Some(1280),
            "{what}: the backend learned the client-side MTU"
        );
        assert_eq!(
            up(&n.client, *vip, MB, Duration::from_secs(10)),
            Some(format!("{MB} 0")),
            "{what}: client -> backend, byte for byte"
        );
    }

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_splitter"))
        .args(["inspect", "--pin-dir"])
        .arg(fs.path().join("maps"))
        .output()
        .expect("run splitter inspect");
    let text = String::from_utf8_lossy(&out.stdout);
    let count = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|rest| rest.trim().parse().ok())
            .unwrap_or_else(|| panic!("{name} in {text}"))
    };
    // At least one per download and one for the upload.
    assert!(count("icmp_translated") >= 3, "{text}");
    // Shown, whatever its value (no error here is about an untracked flow).
    count("icmp_untracked");
    assert_eq!(count("route_failed"), 0, "{text}");
    assert_eq!(count("redirect_failed"), 0, "{text}");
}

#[test]
fn pmtu_discovery_works_through_the_l4_path_ipv4() {
    if !testbed::require_root("pmtu_discovery_works_through_the_l4_path_ipv4") {
        return;
    }
    pmtu_through_the_l4_path(&V4);
}

#[test]
fn pmtu_discovery_works_through_the_l4_path_ipv6() {
    if !testbed::require_root("pmtu_discovery_works_through_the_l4_path_ipv6") {
        return;
    }
    pmtu_through_the_l4_path(&V6);
}
