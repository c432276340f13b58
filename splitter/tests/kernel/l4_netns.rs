//! The L4 data path end to end: client, gateway and backend network namespaces joined by veths,
//! real TCP connections, the programs attached to the gateway's client-facing veth with pinned
//! maps and links.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    time::Duration,
};

use splitter::dataplane::ebpf::{
    self, Attachment, KernelObject, L4Actuator, L4Proto, L4RouteProgram,
};
use splitter_common::{counters::IPPROTO_TCP, hash::flow_hash};
use testbed::{AddressPlan, BpfFs, GatewayNet};

/// The gateway's own address (`NET.gateway()`), port 80.
const VIP: &str = "10.210.0.2:80";
const BACKEND_PORT: u16 = 8080;

const NET: AddressPlan = AddressPlan {
    front: "10.210.0",
    backends: "10.211",
    first: 0,
};

fn backend_addr(i: usize) -> SocketAddr {
    format!("{}:{BACKEND_PORT}", NET.backend(i))
        .parse()
        .expect("addr")
}

fn topology(n_backends: usize) -> GatewayNet {
    let t = GatewayNet::new("l4", NET, n_backends).expect("topology");
    // XDP sees bytes as sent: the client must put complete checksums on the wire, as a NIC would.
    t.client_sends_full_checksums().expect("ethtool tx off");
    t
}

/// Each backend answers a connection with "b<i> <peer address>\n", then echoes lines.
fn start_backends(t: &GatewayNet) {
    for (i, ns) in t.backends.iter().enumerate() {
        let listener =
            ns.run(|| TcpListener::bind(("0.0.0.0", BACKEND_PORT)).expect("backend listen"));
        ns.spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || {
                    let peer = conn.peer_addr().map(|p| p.to_string()).unwrap_or_default();
                    if writeln!(conn, "b{i} {peer}").is_err() {
                        return;
                    }
                    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                    let mut line = String::new();
                    while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                        if conn.write_all(line.as_bytes()).is_err() {
                            return;
                        }
                        line.clear();
                    }
                });
            }
        });
    }
}

fn load_and_attach(t: &GatewayNet, pin_dir: &Path) -> (KernelObject, L4Actuator, Attachment) {
    let mut obj = ebpf::load_object(Some(&pin_dir.join("maps"))).expect("load with pinned maps");
    let iface = t.gateway_iface().to_owned();
    let links = pin_dir.join("links");
    let att = t.gateway.run(|| {
        ebpf::attach_pinned(
            &mut obj,
            &iface,
            &links,
            ebpf::XdpAttachMode::Auto,
            ebpf::TcAttachMode::Auto,
        )
        .expect("attach pinned")
    });
    let act = L4Actuator::new(&mut obj).expect("actuator");
    (obj, act, att)
}

/// A table of `m` slots where `a_quarters` of every four go to backend 0, the rest to backend 1.
fn quarters_table(m: usize, a_quarters: usize) -> Vec<Option<SocketAddr>> {
    (0..m)
        .map(|s| {
            Some(if s % 4 < a_quarters {
                backend_addr(0)
            } else {
                backend_addr(1)
            })
        })
        .collect()
}

fn program(table: Vec<Option<SocketAddr>>) -> Vec<L4RouteProgram> {
    vec![L4RouteProgram {
        key: "default/gw/tcp".into(),
        vips: vec![(VIP.parse().expect("vip"), L4Proto::Tcp)],
        table,
        remote: Default::default(),
        dedicated: Default::default(),
    }]
}

fn connect(t: &GatewayNet) -> (TcpStream, String) {
    t.client.run(|| {
        let s = TcpStream::connect_timeout(&VIP.parse().expect("vip"), Duration::from_secs(5))
            .expect("connect to VIP");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let mut line = String::new();
        BufReader::new(s.try_clone().expect("clone"))
            .read_line(&mut line)
            .expect("greeting");
        (s, line.trim().to_owned())
    })
}

#[test]
fn fresh_connections_split_three_to_one_and_match_the_prediction() {
    if !testbed::require_root("fresh_connections_split_three_to_one_and_match_the_prediction") {
        return;
    }
    let t = topology(2);
    start_backends(&t);
    let fs = BpfFs::new().expect("bpffs");
    let (_obj, mut act, att) = load_and_attach(&t, fs.path());
    assert!(matches!(att, Attachment::New(_)));
    let table = quarters_table(251, 3);
    act.apply(&program(table.clone())).expect("apply");

    let vip: SocketAddr = VIP.parse().expect("vip");
    let client_ip: std::net::IpAddr = NET.client().parse().expect("ip");
    let mut per_backend = BTreeMap::new();
    for _ in 0..2000 {
        let (s, greeting) = connect(&t);
        let local = s.local_addr().expect("local addr");
        let (name, peer) = greeting.split_once(' ').expect("greeting shape");
        assert_eq!(
            peer.parse::<SocketAddr>().expect("peer").ip(),
            client_ip,
            "backend sees the real client"
        );
        let h = flow_hash(
            &ebpf::addr16(local.ip()),
            &ebpf::addr16(vip.ip()),
            local.port(),
            vip.port(),
            IPPROTO_TCP,
        );
        let want = table[(h % table.len() as u32) as usize].expect("slot");
        let want_name = if want == backend_addr(0) { "b0" } else { "b1" };
        assert_eq!(
            name,
            want_name,
            "port {}: the predicted backend answers",
            local.port()
        );
        *per_backend.entry(name.to_owned()).or_insert(0u32) += 1;
    }
    let b0 = per_backend.get("b0").copied().unwrap_or(0) as f64 / 2000.0;
    assert!(
        (b0 - 0.75).abs() <= 0.03,
        "b0 got {:.1}% ({per_backend:?})",
        b0 * 100.0
    );

    // The operator's view: the live table read back from the pinned maps.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_splitter"))
        .args(["inspect", "--pin-dir"])
        .arg(fs.path().join("maps"))
        .output()
        .expect("run splitter inspect");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "inspect: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("[10.210.0.2:80/tcp] table 251 slots"),
        "{text}"
    );
    assert!(
        text.contains("10.211.0.2:8080") && text.contains("75.30%  (189 slots, active)"),
        "{text}"
    );
    assert!(
        text.contains("10.211.1.2:8080") && text.contains("24.70%  (62 slots, active)"),
        "{text}"
    );
    assert!(text.contains("new flows 2000"), "{text}");
    // Each of them is still tracked (IPv4: in CONNTRACK_V4), counted once, not per direction.
    assert!(text.contains("tracked flows 2000"), "{text}");
}

#[test]
fn long_lived_connections_survive_weight_changes_and_a_restart() {
    if !testbed::require_root("long_lived_connections_survive_weight_changes_and_a_restart") {
        return;
    }
    let t = topology(2);
    start_backends(&t);
    let fs = BpfFs::new().expect("bpffs");
    let (obj, mut act, _) = load_and_attach(&t, fs.path());
    act.apply(&program(quarters_table(251, 2))).expect("apply");

    let mut conns: Vec<(TcpStream, BufReader<TcpStream>, String)> = (0..200)
        .map(|_| {
            let (s, greeting) = connect(&t);
            let r = BufReader::new(s.try_clone().expect("clone"));
            (s, r, greeting.split(' ').next().expect("name").to_owned())
        })
        .collect();
    let names: std::collections::BTreeSet<&str> = conns.iter().map(|c| c.2.as_str()).collect();
    assert_eq!(names.len(), 2, "both backends hold connections");

    let ping_all = |conns: &mut Vec<(TcpStream, BufReader<TcpStream>, String)>, round: usize| {
        for (i, (s, r, _)) in conns.iter_mut().enumerate() {
            let msg = format!("round {round} conn {i}\n");
            s.write_all(msg.as_bytes())
                .unwrap_or_else(|e| panic!("round {round} conn {i}: write: {e}"));
            let mut echo = String::new();
            r.read_line(&mut echo)
                .unwrap_or_else(|e| panic!("round {round} conn {i}: read: {e}"));
            assert_eq!(
                echo, msg,
                "round {round} conn {i}: echoed by its own backend"
            );
        }
    };
    for round in 0..20 {
        // Weights swing between 4:0, 3:1, ..., 0:4: every established connection stays put.
        act.apply(&program(quarters_table(251, round % 5)))
            .expect("weight change");
        ping_all(&mut conns, round);
    }

    // Agent restart: everything in-process is dropped; pinned maps and links keep the path up.
    drop(act);
    drop(obj);
    ping_all(&mut conns, 100);
    let (_obj2, mut act2, att) = load_and_attach(&t, fs.path());
    assert_eq!(
        att,
        Attachment::Replaced,
        "the new programs took over the pinned links"
    );
    act2.apply(&program(quarters_table(251, 1)))
        .expect("apply after restart");
    ping_all(&mut conns, 101);

    // A fresh connection after the restart still works and gets a backend from the new table.
    let (_s, greeting) = connect(&t);
    assert!(greeting.starts_with('b'), "{greeting}");
}
