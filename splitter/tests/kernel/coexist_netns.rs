//! Other programs on our hooks, as a CNI puts them there: counting tcx programs before and after
//! ours on the gateway's client-facing veth see every packet of real L4 traffic in both
//! directions; an XDP program the agent does not own is reported, never replaced.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::Stdio,
    time::{Duration, Instant},
};

use aya::{
    maps::{MapData, PerCpuArray},
    programs::{
        LinkOrder, SchedClassifier, TcAttachType, Xdp, XdpMode,
        tc::{NlOptions, TcAttachOptions},
    },
};
use splitter::dataplane::ebpf::{
    self, KernelObject, L4Actuator, L4Proto, L4RouteProgram, LinkPinError,
};
use splitter_common::l4::{TC_INGRESS_PROGRAM, TC_PROGRAM, TEST_COUNT_PROGRAMS, TEST_HOOK_COUNTS};
use testbed::{AddressPlan, BpfFs, ChildGuard, GatewayNet};

const NET: AddressPlan = AddressPlan {
    front: "10.212.0",
    backends: "10.213",
    first: 0,
};
const BACKEND_PORT: u16 = 8080;

fn topology(tag: &str) -> GatewayNet {
    let t = GatewayNet::new(tag, NET, 1).expect("topology");
    t.client_sends_full_checksums().expect("ethtool tx off");
    t
}

/// The backend greets each connection, then echoes one line and closes.
fn start_backend(t: &GatewayNet) {
    let ns = &t.backends[0];
    let listener = ns.run(|| TcpListener::bind(("0.0.0.0", BACKEND_PORT)).expect("listen"));
    ns.spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                if conn.write_all(b"hello\n").is_err() {
                    return;
                }
                let mut line = String::new();
                let mut reader = BufReader::new(conn.try_clone().expect("clone"));
                if reader.read_line(&mut line).is_ok() {
                    let _ = conn.write_all(line.as_bytes());
                }
            });
        }
    });
}

fn vip() -> SocketAddr {
    format!("{}:80", NET.gateway()).parse().expect("vip")
}

fn backend() -> SocketAddr {
    format!("{}:{BACKEND_PORT}", NET.backend(0))
        .parse()
        .expect("backend")
}

/// Sums the per-CPU counter of each test program.
fn counts(obj: &KernelObject) -> [u64; 4] {
    let map = obj.ebpf.map(TEST_HOOK_COUNTS).expect("TEST_HOOK_COUNTS");
    let a = PerCpuArray::<&MapData, u64>::try_from(map).expect("per-cpu array");
    [0, 1, 2, 3].map(|i| a.get(&i, 0).expect("get").iter().sum())
}

fn tcx_names(iface: &str, direction: TcAttachType) -> Vec<String> {
    let (_, progs) = SchedClassifier::query_tcx(iface, direction).expect("query tcx");
    progs
        .iter()
        .map(|p| p.name_as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn programs_before_and_after_ours_on_tcx_see_every_packet() {
    if !testbed::require_root("programs_before_and_after_ours_on_tcx_see_every_packet") {
        return;
    }
    before_and_after_see_every_packet(ebpf::TcAttachMode::Tcx, "cx");
}

/// The same with clsact filters (kernels before 6.6): ours returns "unspecified", so the
/// filter of the next priority runs.
#[test]
fn filters_before_and_after_ours_on_clsact_see_every_packet() {
    if !testbed::require_root("filters_before_and_after_ours_on_clsact_see_every_packet") {
        return;
    }
    before_and_after_see_every_packet(ebpf::TcAttachMode::Netlink, "cn");
}

fn before_and_after_see_every_packet(tc_mode: ebpf::TcAttachMode, tag: &str) {
    let t = topology(tag);
    start_backend(&t);
    let iface = t.gateway_iface().to_owned();
    let fs = BpfFs::new().expect("bpffs");

    // Ours first, as the agent starts before (or without) a CNI that appends later.
    let mut ours = ebpf::load_object(Some(&fs.path().join("maps"))).expect("load");
    t.gateway.run(|| {
        ebpf::attach_pinned(
            &mut ours,
            &iface,
            &fs.path().join("links"),
            ebpf::XdpAttachMode::Driver,
            tc_mode,
        )
        .expect("attach ours")
    });
    let mut act = L4Actuator::new(&mut ours).expect("actuator");
    act.apply(&[L4RouteProgram {
        key: "coexist".into(),
        vips: vec![(vip(), L4Proto::Tcp)],
        table: vec![Some(backend()); 7],
        remote: Default::default(),
        dedicated: Default::default(),
    }])
    .expect("apply");

    // The "CNI": one program before ours and one after, on each direction.
    let mut cni = ebpf::load_object(None).expect("load the counting programs' object");
    for (i, name) in TEST_COUNT_PROGRAMS.iter().enumerate() {
        let direction = if i < 2 {
            TcAttachType::Ingress
        } else {
            TcAttachType::Egress
        };
        let first = i % 2 == 0;
        let options = match tc_mode {
            ebpf::TcAttachMode::Netlink => TcAttachOptions::Netlink(NlOptions {
                // Lower runs first; ours got the kernel's default (49152).
                priority: if first { 1 } else { 65000 },
                ..NlOptions::default()
            }),
            _ => TcAttachOptions::TcxOrder(if first {
                LinkOrder::first()
            } else {
                LinkOrder::last()
            }),
        };
        let prog: &mut SchedClassifier = cni
            .ebpf
            .program_mut(name)
            .expect("test program")
            .try_into()
            .expect("classifier");
        prog.load().expect("load counting program");
        t.gateway.run(|| {
            prog.attach_with_options(&iface, direction, options)
                .expect("attach counting program")
        });
    }
    // Kernel names are cut to 15 bytes.
    let short = |n: &str| n[..n.len().min(15)].to_owned();
    if tc_mode == ebpf::TcAttachMode::Netlink {
        for (dir, expected) in [
            (
                "ingress",
                [
                    TEST_COUNT_PROGRAMS[0],
                    TC_INGRESS_PROGRAM,
                    TEST_COUNT_PROGRAMS[1],
                ],
            ),
            (
                "egress",
                [TEST_COUNT_PROGRAMS[2], TC_PROGRAM, TEST_COUNT_PROGRAMS[3]],
            ),
        ] {
            let out = t
                .gateway
                .exec("tc", &["filter", "show", "dev", &iface, dir])
                .expect("tc filter show");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            // "filter ... pref P bpf chain 0 handle 0x1 NAME direct-action ...", by priority.
            let names: Vec<&str> = text
                .lines()
                .filter_map(|l| {
                    let mut w = l.split_whitespace().skip_while(|w| *w != "handle");
                    w.nth(2)
                })
                .collect();
            assert_eq!(names, expected, "{dir}: ours between the two: {text}");
        }
    } else {
        t.gateway.run(|| {
            assert_eq!(
                tcx_names(&iface, TcAttachType::Ingress),
                [
                    TEST_COUNT_PROGRAMS[0],
                    TC_INGRESS_PROGRAM,
                    TEST_COUNT_PROGRAMS[1]
                ]
                .map(short),
                "ours sits between the two on ingress"
            );
            assert_eq!(
                tcx_names(&iface, TcAttachType::Egress),
                [TEST_COUNT_PROGRAMS[2], TC_PROGRAM, TEST_COUNT_PROGRAMS[3]].map(short),
                "ours sits between the two on egress"
            );
        });
    }

    // Real connections through the L4 route: requests DNATed by XDP come in, replies rewritten
    // by our TC egress program go out.
    const CONNECTIONS: u64 = 50;
    t.client.run(|| {
        for i in 0..CONNECTIONS {
            let s = TcpStream::connect_timeout(&vip(), Duration::from_secs(3))
                .unwrap_or_else(|e| panic!("connection {i}: {e}"));
            s.set_read_timeout(Some(Duration::from_secs(3)))
                .expect("timeout");
            let mut r = BufReader::new(s.try_clone().expect("clone"));
            let mut line = String::new();
            r.read_line(&mut line).expect("greeting");
            assert_eq!(line, "hello\n", "connection {i}: the backend greets");
            (&s).write_all(b"ping\n").expect("write");
            line.clear();
            r.read_line(&mut line).expect("echo");
            assert_eq!(line, "ping\n", "connection {i}");
        }
    });
    // Until the closes are over: two equal reads in a row.
    let start = Instant::now();
    let mut last = counts(&cni);
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = counts(&cni);
        if now == last || start.elapsed() > Duration::from_secs(10) {
            break;
        }
        last = now;
    }
    let [in_first, in_last, eg_first, eg_last] = counts(&cni);
    // Each connection: SYN, ACK, data, ACK, FIN... at least four each way.
    assert!(
        in_first >= 4 * CONNECTIONS && eg_first >= 4 * CONNECTIONS,
        "the first programs saw the traffic: ingress {in_first}, egress {eg_first}"
    );
    assert_eq!(
        in_last, in_first,
        "the program after ours on ingress sees every packet"
    );
    assert_eq!(
        eg_last, eg_first,
        "the program after ours on egress sees every packet (TC_ACT_OK would end the chain)"
    );
}

/// An XDP program someone else attached stays; the agent (library, doctor, process) says so.
#[test]
fn a_foreign_xdp_program_is_reported_never_replaced() {
    if !testbed::require_root("a_foreign_xdp_program_is_reported_never_replaced") {
        return;
    }
    let t = topology("fx");
    let iface = t.gateway_iface().to_owned();
    let mut foreign = ebpf::load_object(None).expect("load the foreign program's object");
    let floor: &mut Xdp = foreign
        .ebpf
        .program_mut("splitter_xdp_floor")
        .expect("floor program")
        .try_into()
        .expect("xdp");
    floor.load().expect("load floor");
    let floor_id = format!("id {}", floor.info().expect("floor info").id());
    let _link = t
        .gateway
        .run(|| floor.attach(&iface, XdpMode::Driver).expect("attach floor"));
    let shown = || {
        let out = t
            .gateway
            .exec("bpftool", &["net", "show", "dev", &iface])
            .expect("bpftool");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        // Only the XDP section: "xdp:" up to "tc:".
        text.split("tc:").next().unwrap_or_default().to_owned()
    };
    assert!(shown().contains(&floor_id), "{}", shown());

    // The library refuses, in every XDP mode.
    let fs = BpfFs::new().expect("bpffs");
    for mode in [
        ebpf::XdpAttachMode::Auto,
        ebpf::XdpAttachMode::Driver,
        ebpf::XdpAttachMode::Generic,
    ] {
        let mut ours = ebpf::load_object(Some(&fs.path().join("maps"))).expect("load");
        let (foreign, err) = t
            .gateway
            .run(|| {
                ebpf::attach_pinned(
                    &mut ours,
                    &iface,
                    &fs.path().join("links"),
                    mode,
                    ebpf::TcAttachMode::Auto,
                )
                .map(|_| ())
                .map_err(|e| (matches!(e, LinkPinError::ForeignXdp { .. }), e.to_string()))
            })
            .expect_err("must not attach over a foreign XDP program");
        assert!(foreign, "{mode:?}: {err}");
        assert!(err.contains("does not own"), "{mode:?}: {err}");
    }
    assert!(
        !ebpf::xdp_pin_path(&fs.path().join("links"), &iface).exists(),
        "nothing pinned"
    );
    assert!(shown().contains(&floor_id), "still there: {}", shown());

    // `splitter doctor --iface` says so.
    let out = t
        .gateway
        .command(env!("CARGO_BIN_EXE_splitter"))
        .args(["doctor", "--iface", &iface, "--pin-dir"])
        .arg(fs.path().join("maps"))
        .output()
        .expect("doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("xdp"))
        .unwrap_or_else(|| panic!("an xdp line: {text}"));
    assert!(
        line.starts_with("FAIL") && line.contains("does not own"),
        "{text}"
    );
    // TC is another matter: both programs attach (and are removed again).
    assert!(
        text.lines()
            .any(|l| l.starts_with("PASS tc-attach") && l.contains("through tcx")),
        "{text}"
    );
    let netlink = t
        .gateway
        .command(env!("CARGO_BIN_EXE_splitter"))
        .args([
            "doctor",
            "--tc-attach",
            "netlink",
            "--iface",
            &iface,
            "--pin-dir",
        ])
        .arg(fs.path().join("maps"))
        .output()
        .expect("doctor");
    let netlink = String::from_utf8_lossy(&netlink.stdout);
    assert!(
        netlink
            .lines()
            .any(|l| l.starts_with("PASS tc-attach") && l.contains("through clsact + netlink")),
        "{netlink}"
    );
    assert!(
        netlink
            .lines()
            .any(|l| l.starts_with("PASS tc ") && l.contains("netlink filters")),
        "{netlink}"
    );
    let filters = t
        .gateway
        .exec("tc", &["filter", "show", "dev", &iface, "egress"])
        .expect("tc filter show");
    assert!(
        !String::from_utf8_lossy(&filters.stdout).contains("splitter"),
        "doctor leaves no filter behind"
    );

    // The agent process logs it and leaves the program in place.
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("m")).expect("manifests dir");
    let log_path = dir.path().join("agent.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let _agent = ChildGuard(
        t.gateway
            .command(env!("CARGO_BIN_EXE_splitter"))
            .arg("run")
            .arg("--manifests")
            .arg(dir.path().join("m"))
            .args(["--iface", &iface, "--admin", "127.0.0.1:9901", "--pin-dir"])
            .arg(fs.path().join("maps"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the agent"),
    );
    let start = Instant::now();
    let logged = loop {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        if text.contains("does not own") || start.elapsed() > Duration::from_secs(20) {
            break text;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        logged.contains(&format!("{iface} already has an XDP program")),
        "{logged}"
    );
    assert!(shown().contains(&floor_id), "still there: {}", shown());
}
