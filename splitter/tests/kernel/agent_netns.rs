//! The agent as a real process (`splitter run`) in a gateway network namespace, echo backends
//! as real processes in their own namespaces, a client namespace: the guide's journey exactly,
//! and long-lived kernel-split connections through weight changes and an agent restart.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use testbed::{AddressPlan, BpfFs, ChildGuard, GatewayNet};

const NET: AddressPlan = AddressPlan {
    front: "10.250.0",
    backends: "10.251",
    first: 1,
};
/// `NET.gateway()`: where the agent listens.
const GATEWAY: &str = "10.250.0.2";

struct Rig {
    // Declared first so they stop before their namespaces go.
    _echoes: Vec<ChildGuard>,
    net: GatewayNet,
    manifests: tempfile::TempDir,
    pins: BpfFs,
}

impl Rig {
    fn new() -> Rig {
        let net = GatewayNet::new("a", NET, 2).expect("topology");
        net.client_sends_full_checksums().expect("ethtool");
        let echoes = net
            .backends
            .iter()
            .zip(["echo-pod", "echo2-pod"])
            .map(|(ns, name)| {
                let child = ns
                    .command(env!("CARGO_BIN_EXE_splitter-echo"))
                    .args(["--listen", "0.0.0.0:1027", "--name", name])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start splitter-echo");
                ChildGuard(child)
            })
            .collect();
        Rig {
            _echoes: echoes,
            net,
            manifests: tempfile::tempdir().expect("tempdir"),
            pins: BpfFs::new().expect("bpffs"),
        }
    }

    fn pin_dir(&self) -> PathBuf {
        self.pins.path().join("v1")
    }

    fn start_agent(&self) -> ChildGuard {
        self.start_agent_with(&[])
    }

    /// The agent with `extra` arguments after the rig's own.
    fn start_agent_with(&self, extra: &[&str]) -> ChildGuard {
        self.start_agent_on(&[self.net.gateway_iface()], extra)
    }

    /// The agent attaching to `ifaces` (none: no `--iface`), `extra` arguments last.
    fn start_agent_on(&self, ifaces: &[&str], extra: &[&str]) -> ChildGuard {
        let log = std::fs::File::create(self.manifests.path().join("agent.log")).expect("log");
        let child = self
            .net
            .gateway
            .command(env!("CARGO_BIN_EXE_splitter"))
            .arg("run")
            .arg("--manifests")
            .arg(self.manifests.path().join("m"))
            .args(ifaces.iter().flat_map(|i| ["--iface", i]))
            .args(["--admin", "127.0.0.1:9901", "--pin-dir"])
            .arg(self.pin_dir())
            .args(extra)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start splitter run");
        ChildGuard(child)
    }

    fn agent_log(&self) -> String {
        std::fs::read_to_string(self.manifests.path().join("agent.log")).unwrap_or_default()
    }

    fn write(&self, name: &str, text: &str) {
        let dir = self.manifests.path().join("m");
        std::fs::create_dir_all(&dir).expect("dir");
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, dir.join(name)).expect("rename");
    }

    fn curl(&self, args: &[&str]) -> Option<String> {
        let out = self.net.client.command("curl").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn wait_for(what: &str, rig: &Rig, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "timed out waiting for {what}; agent log:\n{}",
        rig.agent_log()
    );
}

const SERVICES: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: splitter}
spec: {controllerName: splitter.dev/gateway-controller}
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: default}
spec:
  ports: [{name: http, port: 1027, targetPort: 1027}]
---
apiVersion: v1
kind: Service
metadata: {name: echo2, namespace: default}
spec:
  ports: [{name: http, port: 1027, targetPort: 1027}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo-1, namespace: default, labels: {kubernetes.io/service-name: echo}}
addressType: IPv4
ports: [{name: http, port: 1027}]
endpoints: [{addresses: [10.251.1.2], conditions: {ready: true}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: echo2-1, namespace: default, labels: {kubernetes.io/service-name: echo2}}
addressType: IPv4
ports: [{name: http, port: 1027}]
endpoints: [{addresses: [10.251.2.2], conditions: {ready: true}}]
";

fn guide_route(weights: Option<(u32, u32)>) -> String {
    let w = |x: Option<u32>| x.map(|w| format!(", weight: {w}")).unwrap_or_default();
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: kong, namespace: default}}
spec:
  gatewayClassName: splitter
  listeners: [{{name: proxy, protocol: HTTP, port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: echo
  namespace: default
  annotations: {{konghq.com/strip-path: \"true\"}}
spec:
  parentRefs: [{{name: kong}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /echo}}}}]
    backendRefs:
    - {{name: echo, kind: Service, port: 1027{}}}
    - {{name: echo2, kind: Service, port: 1027{}}}
",
        w(weights.map(|w| w.0)),
        w(weights.map(|w| w.1))
    )
}

fn l4_route(a: u32, b: u32) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: l4, namespace: default}}
spec:
  gatewayClassName: splitter
  listeners: [{{name: tcp, protocol: HTTP, port: 8080}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: all, namespace: default}}
spec:
  parentRefs: [{{name: l4}}]
  rules:
  - backendRefs:
    - {{name: echo, port: 1027, weight: {a}}}
    - {{name: echo2, port: 1027, weight: {b}}}
"
    )
}

fn hostname_round(rig: &Rig) -> BTreeMap<String, usize> {
    let url = format!("http://{GATEWAY}/echo/hostname?iteration=[1-200]");
    let mut counts = BTreeMap::new();
    if let Some(out) = rig.curl(&["-s", "-w", "\\n", &url]) {
        for l in out.lines().filter(|l| !l.is_empty()) {
            *counts.entry(l.to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

#[test]
fn the_guides_journey_through_the_agent_process() {
    if !testbed::require_root("the_guides_journey_through_the_agent_process") {
        return;
    }
    let rig = Rig::new();
    rig.write("services.yaml", SERVICES);
    rig.write("route.yaml", &guide_route(None));
    let _agent = rig.start_agent();
    wait_for("the proxy to answer", &rig, || {
        rig.curl(&["-s", &format!("http://{GATEWAY}/echo/hostname")])
            .is_some_and(|b| b.starts_with("echo"))
    });
    let even = hostname_round(&rig);
    assert_eq!(
        even,
        BTreeMap::from([("echo-pod".into(), 100), ("echo2-pod".into(), 100)])
    );

    rig.write("route.yaml", &guide_route(Some((200, 100))));
    // Watch the plan on the admin endpoint rather than probing with requests: a probe would
    // advance the weighted round robin and shift where the 200 requests start in its cycle.
    wait_for("the new weights in the plan", &rig, || {
        rig.net
            .gateway
            .command("curl")
            .args(["-s", "http://127.0.0.1:9901/debug/plan"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"weight\": 200"))
    });
    let weighted = hostname_round(&rig);
    assert_eq!(
        weighted,
        BTreeMap::from([("echo-pod".into(), 133), ("echo2-pod".into(), 67)])
    );
}

/// One HTTP/1.1 keep-alive request on an open connection; returns the body.
fn get(
    stream: &mut TcpStream,
    reader: &mut BufReader<TcpStream>,
    path: &str,
) -> std::io::Result<String> {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {GATEWAY}\r\n\r\n")?;
    let mut len = 0usize;
    let mut line = String::new();
    let mut first = true;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        if first {
            if !line.starts_with("HTTP/1.1 200") {
                return Err(std::io::Error::other(format!("status line {line:?}")));
            }
            first = false;
        }
        let l = line.to_ascii_lowercase();
        if let Some(v) = l.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn generation(rig: &Rig) -> Option<u32> {
    let out = Command::new(env!("CARGO_BIN_EXE_splitter"))
        .arg("inspect")
        .arg("--pin-dir")
        .arg(rig.pin_dir())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("[10.250.0.2:8080/tcp]"))?;
    line.split("generation ")
        .nth(1)?
        .split(';')
        .next()?
        .trim()
        .parse()
        .ok()
}

#[test]
fn long_lived_l4_connections_survive_weight_edits_and_an_agent_restart() {
    if !testbed::require_root("long_lived_l4_connections_survive_weight_edits_and_an_agent_restart")
    {
        return;
    }
    let rig = Rig::new();
    rig.write("services.yaml", SERVICES);
    rig.write("l4.yaml", &l4_route(1, 1));
    let mut agent = rig.start_agent();
    wait_for("the kernel to serve :8080", &rig, || {
        generation(&rig).is_some()
    });
    assert!(
        rig.agent_log().contains("XDP and TC attached"),
        "{}",
        rig.agent_log()
    );

    let vip: SocketAddr = format!("{GATEWAY}:8080").parse().expect("vip");
    let mut conns: Vec<(TcpStream, BufReader<TcpStream>, String)> = rig.net.client.run(|| {
        (0..200)
            .map(|i| {
                let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("connect {i}: {e}"));
                s.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let mut r = BufReader::new(s.try_clone().expect("clone"));
                let name = get(&mut s, &mut r, "/hostname")
                    .unwrap_or_else(|e| panic!("first request {i}: {e}"));
                (s, r, name)
            })
            .collect()
    });
    let per: BTreeMap<&str, usize> = conns.iter().fold(BTreeMap::new(), |mut m, c| {
        *m.entry(c.2.as_str()).or_insert(0) += 1;
        m
    });
    assert_eq!(per.len(), 2, "both backends hold connections: {per:?}");

    let check_all = |conns: &mut Vec<(TcpStream, BufReader<TcpStream>, String)>, round: usize| {
        for (i, (s, r, name)) in conns.iter_mut().enumerate() {
            let got = get(s, r, "/hostname")
                .unwrap_or_else(|e| panic!("round {round}, connection {i}: {e}"));
            assert_eq!(
                &got, name,
                "round {round}, connection {i} moved to another backend"
            );
        }
    };
    for round in 0..20 {
        if round == 10 {
            // Agent restart: SIGTERM, then a new process that adopts the pinned maps and links.
            nix_kill(agent.id());
            let _ = agent.child().wait();
            check_all(&mut conns, round);
            agent = rig.start_agent();
            wait_for("the restarted agent to take over", &rig, || {
                rig.agent_log().contains("took over pinned links")
            });
        }
        let before = generation(&rig).expect("generation");
        let (a, b) = if round % 2 == 0 { (3, 1) } else { (1, 3) };
        rig.write("l4.yaml", &l4_route(a, b));
        wait_for("the weight change to be published", &rig, || {
            generation(&rig).is_some_and(|g| g > before)
        });
        check_all(&mut conns, round);
    }
    drop(agent);
    let _ = Command::new(env!("CARGO_BIN_EXE_splitter"))
        .args(["detach", "--iface", rig.net.gateway_iface(), "--pin-dir"])
        .arg(rig.pin_dir())
        .status();
}

fn nix_kill(pid: u32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

/// `--node-name` with EndpointSlices that name nodes: echo2's endpoint is on another node, so the
/// agent marks it remote and the kernel source-NATs its flows (echo's, on this node, are not).
/// The agent runs on every gateway veth, as a node's one NIC would carry both directions.
#[test]
fn the_agent_source_nats_endpoints_on_other_nodes() {
    if !testbed::require_root("the_agent_source_nats_endpoints_on_other_nodes") {
        return;
    }
    let rig = Rig::new();
    for (ns, link) in rig.net.backends.iter().zip(&rig.net.backend_links) {
        // The reply leg is translated in XDP, which sees the bytes as sent.
        ns.exec("ethtool", &["-K", &link.b, "tx", "off"])
            .expect("ethtool tx off");
    }
    let placed = SERVICES
        .replace(
            "endpoints: [{addresses: [10.251.1.2], conditions: {ready: true}}]",
            "endpoints: [{addresses: [10.251.1.2], nodeName: node-a, conditions: {ready: true}}]",
        )
        .replace(
            "endpoints: [{addresses: [10.251.2.2], conditions: {ready: true}}]",
            "endpoints: [{addresses: [10.251.2.2], nodeName: node-b, conditions: {ready: true}}]",
        );
    assert_eq!(placed.matches("nodeName").count(), 2, "fixture changed");
    rig.write("services.yaml", &placed);
    rig.write("l4.yaml", &l4_route(1, 1));
    let backend_ifaces: Vec<&str> = rig.net.backend_links.iter().map(|l| l.a.as_str()).collect();
    let mut extra = vec!["--node-name", "node-a", "--snat-ports", "62000-62999"];
    for iface in &backend_ifaces {
        extra.extend(["--iface", iface]);
    }
    let _agent = rig.start_agent_with(&extra);
    let inspect = || {
        let out = Command::new(env!("CARGO_BIN_EXE_splitter"))
            .arg("inspect")
            .arg("--pin-dir")
            .arg(rig.pin_dir())
            .output()
            .expect("inspect");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Without Gateway addresses the listener serves every address of every --iface.
    wait_for("the kernel to serve :8080", &rig, || {
        inspect().contains("10.250.0.2:8080/tcp")
    });

    let vip: SocketAddr = format!("{GATEWAY}:8080").parse().expect("vip");
    let names: Vec<String> = rig.net.client.run(|| {
        (0..100)
            .map(|i| {
                let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(5))
                    .unwrap_or_else(|e| panic!("connect {i}: {e}"));
                s.set_read_timeout(Some(Duration::from_secs(5)))
                    .expect("timeout");
                let mut r = BufReader::new(s.try_clone().expect("clone"));
                get(&mut s, &mut r, "/hostname").unwrap_or_else(|e| panic!("request {i}: {e}"))
            })
            .collect()
    });
    let remote = names.iter().filter(|n| *n == "echo2-pod").count();
    assert!(
        remote > 20 && remote < 80,
        "both backends answer: {remote} of 100 from echo2"
    );

    let text = inspect();
    assert!(
        text.contains(&format!("({remote} source-NATed to remote backends)")),
        "exactly echo2's flows are source-NATed: {text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("10.251.2.2:1027") && l.contains("active, remote")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("10.251.1.2:1027") && l.contains("active)")),
        "{text}"
    );
    let reserved = rig
        .net
        .gateway
        .run(|| std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_reserved_ports"))
        .expect("reserved ports");
    assert!(
        reserved.split(',').any(|r| r.trim() == "62000-62999"),
        "the SNAT range is reserved in the agent's namespace: {reserved:?}"
    );
}

/// A listener on the node's addresses may not take a port a host socket listens on: the agent
/// reads its node's sockets, refuses the listener (`Accepted=False`, `PortUnavailable`) and
/// leaves the port to the host, while a listener of the same Gateway on a free port is served.
#[test]
fn a_listener_leaves_a_port_a_host_socket_listens_on_to_the_host() {
    if !testbed::require_root("a_listener_leaves_a_port_a_host_socket_listens_on_to_the_host") {
        return;
    }
    let rig = Rig::new();
    // The node's own service on 7022 (as sshd on 22 or the kubelet on 10250).
    let host = rig
        .net
        .gateway
        .run(|| std::net::TcpListener::bind("0.0.0.0:7022").expect("host listener"));
    rig.net.gateway.spawn(move || {
        for mut c in host.incoming().flatten() {
            let _ = c.write_all(b"host\n");
        }
    });
    rig.write("services.yaml", SERVICES);
    rig.write(
        "route.yaml",
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: l4, namespace: default}
spec:
  gatewayClassName: splitter
  listeners:
  - {name: free, protocol: TCP, port: 8080}
  - {name: taken, protocol: TCP, port: 7022}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: all, namespace: default}
spec:
  parentRefs: [{name: l4}]
  rules:
  - backendRefs: [{name: echo, port: 1027}]
",
    );
    let _agent = rig.start_agent();
    wait_for("the free port to be served", &rig, || {
        rig.curl(&["-s", &format!("http://{GATEWAY}:8080/hostname")])
            .is_some_and(|b| b == "echo-pod")
    });
    let plan = rig
        .net
        .gateway
        .command("curl")
        .args(["-s", "http://127.0.0.1:9901/debug/plan"])
        .output()
        .expect("curl");
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.contains("PortUnavailable") && plan.contains("TCP port 7022 is held by a socket"),
        "the listener on 7022 is refused with the reason; plan:\n{plan}"
    );
    let at: SocketAddr = format!("{GATEWAY}:7022").parse().expect("addr");
    for _ in 0..5 {
        let got = rig.net.client.run(|| {
            let s = TcpStream::connect_timeout(&at, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line)?;
            std::io::Result::Ok(line)
        });
        assert_eq!(
            got.as_deref().ok(),
            Some("host\n"),
            "the host's socket keeps its port ({got:?}); agent log:\n{}",
            rig.agent_log()
        );
    }
}

/// A second L4 Gateway on :8081 whose only backend is echo2.
const SECOND_L4: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: l4b, namespace: default}
spec:
  gatewayClassName: splitter
  listeners: [{name: tcp, protocol: HTTP, port: 8081}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: b, namespace: default}
spec:
  parentRefs: [{name: l4b}]
  rules:
  - backendRefs:
    - {name: echo2, port: 1027}
";

/// The (VIP port, route id) pairs and (backend, state) pairs the pinned maps hold.
fn pinned_vips_and_backends(pin_dir: &std::path::Path) -> (Vec<u16>, Vec<(SocketAddr, u8)>) {
    use aya::maps::{Array, HashMap, Map, MapData};
    use splitter_common::l4::{BACKEND_EMPTY, BACKENDS, Backend, VIPS, VipKey, VipValue};
    let open = |name: &str| {
        Map::from_map_data(MapData::from_pin(pin_dir.join(name)).expect("pinned map"))
            .expect("map type")
    };
    let vips = HashMap::<MapData, VipKey, VipValue>::try_from(open(VIPS)).expect("VIPS");
    let mut ports: Vec<u16> = vips.keys().map(|k| k.expect("key").port).collect();
    ports.sort();
    let backends = Array::<MapData, Backend>::try_from(open(BACKENDS)).expect("BACKENDS");
    let held = backends
        .iter()
        .map(|b| b.expect("backend"))
        .filter(|b| b.state != BACKEND_EMPTY)
        .map(|b| {
            let ip = std::net::IpAddr::from(b.addr).to_canonical();
            (SocketAddr::new(ip, b.port), b.state)
        })
        .collect();
    (ports, held)
}

fn connect_and_get(rig: &Rig, vip: SocketAddr) -> std::io::Result<String> {
    rig.net.client.run(|| {
        let mut s = TcpStream::connect_timeout(&vip, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut r = BufReader::new(s.try_clone()?);
        get(&mut s, &mut r, "/hostname")
    })
}

/// An agent killed with SIGKILL leaves its pins; the next one starts on manifests that name
/// one of the two routes and removes the other from the kernel with its first plan. Then
/// `splitter detach --all` removes everything.
#[test]
fn an_agent_started_on_stale_pins_removes_what_its_plan_does_not_name() {
    if !testbed::require_root("an_agent_started_on_stale_pins_removes_what_its_plan_does_not_name")
    {
        return;
    }
    let rig = Rig::new();
    rig.write("services.yaml", SERVICES);
    // echo only (echo2 at weight 0): the second route is the only one naming echo2.
    rig.write("l4.yaml", &l4_route(1, 0));
    rig.write("l4b.yaml", SECOND_L4);
    let first = rig.start_agent();
    let vip_a: SocketAddr = format!("{GATEWAY}:8080").parse().expect("vip");
    let vip_b: SocketAddr = format!("{GATEWAY}:8081").parse().expect("vip");
    wait_for("both L4 routes served", &rig, || {
        // The agent pins its maps one after the other while it loads: wait for both read.
        ["VIPS", "BACKENDS"]
            .iter()
            .all(|m| rig.pin_dir().join(m).exists())
            && pinned_vips_and_backends(&rig.pin_dir()).0 == [8080, 8081]
            && connect_and_get(&rig, vip_b).is_ok_and(|n| n == "echo2-pod")
    });
    let echo2: SocketAddr = "10.251.2.2:1027".parse().expect("addr");
    assert!(
        pinned_vips_and_backends(&rig.pin_dir())
            .1
            .contains(&(echo2, splitter_common::l4::BACKEND_ACTIVE)),
        "echo2 is an active backend"
    );

    // SIGKILL: no shutdown path runs; the pins and links stay, and the kernel keeps serving.
    let _ = Command::new("kill")
        .args(["-KILL", &first.id().to_string()])
        .status();
    drop(first);
    assert_eq!(pinned_vips_and_backends(&rig.pin_dir()).0, [8080, 8081]);
    assert_eq!(
        connect_and_get(&rig, vip_b).ok().as_deref(),
        Some("echo2-pod"),
        "the kernel serves without an agent"
    );

    std::fs::remove_file(rig.manifests.path().join("m").join("l4b.yaml")).expect("rm l4b");
    let _second = rig.start_agent();
    wait_for("the restarted agent's first L4 plan", &rig, || {
        rig.agent_log().contains("L4 programmed")
    });
    let (ports, backends) = pinned_vips_and_backends(&rig.pin_dir());
    assert_eq!(
        ports,
        [8080],
        "the VIP no plan names is gone from the pinned VIPS map"
    );
    assert!(
        !backends.contains(&(echo2, splitter_common::l4::BACKEND_ACTIVE)),
        "echo2, named by no plan, takes no new flows: {backends:?}"
    );
    assert!(
        connect_and_get(&rig, vip_b).is_err(),
        "{vip_b} is not served any more"
    );
    assert_eq!(
        connect_and_get(&rig, vip_a).ok().as_deref(),
        Some("echo-pod"),
        "the route the plan names still is"
    );

    // Uninstall: everything the agent made goes.
    drop(_second);
    let out = rig
        .net
        .gateway
        .command(env!("CARGO_BIN_EXE_splitter"))
        .args(["detach", "--all", "--pin-dir"])
        .arg(rig.pin_dir())
        .output()
        .expect("detach --all");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!rig.pin_dir().exists(), "the pin directory is gone");
    let shown = rig
        .net
        .gateway
        .exec("bpftool", &["net", "show", "dev", rig.net.gateway_iface()])
        .expect("bpftool");
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        !shown.contains(" id ") && !shown.contains("splitter"),
        "no XDP or TC program left: {shown}"
    );
    assert!(
        connect_and_get(&rig, vip_a).is_err(),
        "nothing serves {vip_a} after uninstall"
    );
}

/// Our netlink TC filters on the gateway interface, one line per filter.
fn netlink_filters(rig: &Rig) -> Vec<String> {
    ["ingress", "egress"]
        .iter()
        .flat_map(|dir| {
            let out = rig
                .net
                .gateway
                .exec(
                    "tc",
                    &["filter", "show", "dev", rig.net.gateway_iface(), dir],
                )
                .expect("tc filter show");
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.contains(" splitter_tc_"))
                .map(|l| format!("{dir}: {l}"))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `--tc-attach netlink`, as kernels before 6.6 need: the agent's TC programs are clsact
/// filters (no tcx link is pinned), replies of kernel-split flows still leave as the VIP, and
/// a restarted agent replaces its filters instead of adding a second pair.
#[test]
fn the_agent_attaches_tc_through_netlink_and_replaces_its_filters_at_start() {
    if !testbed::require_root(
        "the_agent_attaches_tc_through_netlink_and_replaces_its_filters_at_start",
    ) {
        return;
    }
    let rig = Rig::new();
    rig.write("services.yaml", SERVICES);
    rig.write("l4.yaml", &l4_route(1, 1));
    let netlink = ["--tc-attach", "netlink"];
    let mut agent = rig.start_agent_with(&netlink);
    wait_for("the kernel to serve :8080", &rig, || {
        generation(&rig).is_some()
    });
    let links = rig.pin_dir().join("links");
    let iface = rig.net.gateway_iface();
    assert!(
        links.join(format!("xdp-{iface}")).exists(),
        "XDP link pinned"
    );
    assert!(
        !links.join(format!("tc-egress-{iface}")).exists(),
        "no tcx link in netlink mode"
    );
    assert!(
        links.join(format!("tc-netlink-{iface}")).exists(),
        "recorded"
    );
    assert_eq!(
        netlink_filters(&rig).len(),
        2,
        "{:?}",
        netlink_filters(&rig)
    );

    // Replies through the TC egress filter: the client talks to the VIP throughout.
    let vip: SocketAddr = format!("{GATEWAY}:8080").parse().expect("vip");
    let (mut s, mut r) = rig.net.client.run(|| {
        let s = TcpStream::connect_timeout(&vip, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let r = BufReader::new(s.try_clone().expect("clone"));
        (s, r)
    });
    let name = get(&mut s, &mut r, "/hostname").expect("first request");

    nix_kill(agent.id());
    let _ = agent.child().wait();
    agent = rig.start_agent_with(&netlink);
    wait_for("the restarted agent to program L4", &rig, || {
        rig.agent_log().contains("L4 programmed")
    });
    let filters = netlink_filters(&rig);
    assert_eq!(filters.len(), 2, "replaced, not added: {filters:?}");
    assert_eq!(
        get(&mut s, &mut r, "/hostname").expect("request after the restart"),
        name,
        "the connection survives on the same backend"
    );
    drop(agent);

    let out = rig
        .net
        .gateway
        .command(env!("CARGO_BIN_EXE_splitter"))
        .args(["detach", "--all", "--pin-dir"])
        .arg(rig.pin_dir())
        .output()
        .expect("detach --all");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        netlink_filters(&rig).is_empty(),
        "{:?}",
        netlink_filters(&rig)
    );
}

mod degrade;
mod status;
