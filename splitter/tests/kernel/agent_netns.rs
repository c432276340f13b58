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

mod degrade;
