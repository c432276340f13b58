//! A cluster under test: a [`ClusterNet`], a whoami server in every pod, one agent process per
//! node (its own manifests, pin dir and admin address), and the tables those agents programmed,
//! read back from their pinned maps.

use std::{
    collections::BTreeMap,
    io::{self, Read},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, Map, MapData};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use socket2::{Domain, Socket, Type};
use splitter::dataplane::ebpf::addr16;
use splitter_common::{
    counters::IPPROTO_TCP,
    hash::flow_hash,
    l4::{
        BACKENDS, Backend, MAX_TABLE_SIZE, REJECT, ROUTES, RouteMeta, TABLES, VIPS, VipKey,
        VipValue, table_index,
    },
};
use splitter_plan::plan::PlanConfig;
use testbed::{BpfFs, ChildGuard, ClusterNet, ClusterPlan, Routing, WhoamiReply, WhoamiServer};

/// Where every pod's whoami server listens (each pod is its own namespace).
pub const POD_PORT: u16 = 7000;
/// The SNAT source ports the agent uses for remote backends unless `--snat-ports` says otherwise.
pub const SNAT_PORTS: std::ops::RangeInclusive<u16> = 61000..=64999;
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// One live or planned table: the endpoint of each slot, `None` for REJECT.
pub type Slots = Vec<Option<SocketAddr>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteKind {
    /// A catch-all HTTPRoute on an HTTP listener: served in the kernel.
    Http,
    Tcp,
}

/// A Service `name` with `weight` in the route, whose endpoints are the pods `(node, pod)`.
pub struct Svc<'a> {
    pub name: &'a str,
    pub weight: u32,
    pub pods: &'a [(usize, usize)],
}

/// Services `a` and `b` with their weights and pods, the two every cluster test routes to.
pub fn a_and_b<'a>(
    (weight_a, pods_a): (u32, &'a [(usize, usize)]),
    (weight_b, pods_b): (u32, &'a [(usize, usize)]),
) -> [Svc<'a>; 2] {
    [
        Svc {
            name: "a",
            weight: weight_a,
            pods: pods_a,
        },
        Svc {
            name: "b",
            weight: weight_b,
            pods: pods_b,
        },
    ]
}

/// The manifests of one Gateway with one catch-all route on `port`.
pub struct RouteSpec<'a> {
    pub kind: RouteKind,
    pub port: u16,
    /// `spec.addresses`: a dedicated VIP; `None` serves the node's addresses.
    pub vip: Option<Ipv4Addr>,
    pub services: &'a [Svc<'a>],
}

impl RouteSpec<'_> {
    /// GatewayClass, Gateway, route, and per Service a Service and an EndpointSlice whose
    /// endpoints name their nodes as ClusterNet does (`node1`, ...).
    pub fn yaml(&self, net: &ClusterNet) -> String {
        let addresses = self
            .vip
            .map(|v| format!("\n  addresses: [{{type: IPAddress, value: {v}}}]"))
            .unwrap_or_default();
        let (protocol, kind, api) = match self.kind {
            RouteKind::Http => ("HTTP", "HTTPRoute", "v1"),
            RouteKind::Tcp => ("TCP", "TCPRoute", "v1alpha2"),
        };
        let port = self.port;
        let refs: String = self
            .services
            .iter()
            .map(|s| {
                format!(
                    "\n    - {{name: {}, port: {POD_PORT}, weight: {}}}",
                    s.name, s.weight
                )
            })
            .collect();
        let mut out = format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: splitter}}
spec: {{controllerName: splitter.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: cluster, namespace: default}}
spec:
  gatewayClassName: splitter{addresses}
  listeners: [{{name: l, protocol: {protocol}, port: {port}}}]
---
apiVersion: gateway.networking.k8s.io/{api}
kind: {kind}
metadata: {{name: all, namespace: default}}
spec:
  parentRefs: [{{name: cluster}}]
  rules:
  - backendRefs:{refs}
"
        );
        for s in self.services {
            out.push_str(&net.service_yaml(s.name, "p", POD_PORT, s.pods));
        }
        out
    }
}

/// `splitter run` in a node's namespace, with its own manifests, pins and log.
struct Agent {
    child: Option<ChildGuard>,
    dir: tempfile::TempDir,
    pins: BpfFs,
}

impl Agent {
    fn manifests(&self) -> PathBuf {
        self.dir.path().join("m")
    }

    fn pin_dir(&self) -> PathBuf {
        self.pins.path().join(splitter_common::pin::PIN_SUBDIR)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }
}

pub struct Cluster {
    // Before `net`: agents stop and servers close before their namespaces go.
    agents: Vec<Option<Agent>>,
    _whoami: Vec<WhoamiServer>,
    pub net: ClusterNet,
}

impl Cluster {
    /// `nodes` nodes of `pods` pods, a whoami server in each pod, no agent yet.
    pub fn new(tag: &str, net: u8, routing: Routing, nodes: usize, pods: usize) -> Cluster {
        let net = ClusterNet::new(tag, ClusterPlan { net }, routing, nodes, pods)
            .expect("cluster topology");
        let whoami = net.serve_whoami(POD_PORT).expect("whoami in every pod");
        Cluster {
            agents: (0..nodes).map(|_| None).collect(),
            _whoami: whoami,
            net,
        }
    }

    /// Writes `yaml` as the manifests of node `node`'s agent (through a rename, so the agent's
    /// poller never reads half a file).
    pub fn write(&mut self, node: usize, yaml: &str) {
        let agent = self.agents[node].get_or_insert_with(|| Agent {
            child: None,
            dir: tempfile::tempdir().expect("tempdir"),
            pins: BpfFs::new().expect("bpffs"),
        });
        let dir = agent.manifests();
        std::fs::create_dir_all(&dir).expect("manifest dir");
        let tmp = dir.join(".route.yaml.tmp");
        std::fs::write(&tmp, yaml).expect("write manifests");
        std::fs::rename(&tmp, dir.join("route.yaml")).expect("rename manifests");
    }

    /// Starts node `node`'s agent on the manifests last written for it.
    pub fn start_agent(&mut self, node: usize) {
        let n = self.net.node(node);
        let agent = self.agents[node].as_mut().expect("manifests written first");
        let log = std::fs::File::create(agent.dir.path().join("agent.log")).expect("log");
        let child =
            n.ns.command(env!("CARGO_BIN_EXE_splitter"))
                .arg("run")
                .arg("--manifests")
                .arg(agent.manifests())
                .args(["--iface", &n.uplink, "--node-name", &n.name, "--admin"])
                // Each node has its own loopback; a port per node keeps the logs telling.
                .arg(format!("127.0.0.1:{}", 9910 + node))
                .arg("--pin-dir")
                .arg(agent.pin_dir())
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("start splitter run");
        agent.child = Some(ChildGuard(child));
    }

    /// Every node's agent on `route`, each waited for until its kernel serves the route's
    /// address on that node (the VIP, or the node's own address).
    pub fn start_agents(&mut self, route: &RouteSpec<'_>) {
        let yaml = route.yaml(&self.net);
        for node in 0..self.agents.len() {
            self.write(node, &yaml);
            self.start_agent(node);
        }
        for node in 0..self.agents.len() {
            self.wait_served(node, self.listener(node, route));
        }
    }

    /// Where node `node` serves `route`: the VIP, or the node's own address.
    pub fn listener(&self, node: usize, route: &RouteSpec<'_>) -> SocketAddr {
        let ip = route
            .vip
            .unwrap_or_else(|| self.net.node(node).address_v4());
        SocketAddr::from((ip, route.port))
    }

    pub fn agent_log(&self, node: usize) -> String {
        self.agents[node]
            .as_ref()
            .map(Agent::log)
            .unwrap_or_default()
    }

    /// The table the plan of node `node`'s manifests gives the L4 listener on `port`.
    pub fn planned(&self, node: usize, port: u16) -> Slots {
        let agent = self.agents[node].as_ref().expect("manifests written");
        planned_table(&agent.manifests(), port)
    }

    /// The table node `node`'s kernel holds for `vip`, read from the agent's pinned maps.
    pub fn live(&self, node: usize, vip: SocketAddr) -> Option<Slots> {
        let agent = self.agents[node].as_ref()?;
        live_table(&agent.pin_dir(), vip).ok().flatten()
    }

    /// Waits until node `node`'s kernel serves `vip` with the planned shares (slot counts per
    /// endpoint). Slot for slot is for the tests to assert: a table that depended on the
    /// agent's history would have the right shares in other slots, and should fail there with
    /// a clear message rather than here with a timeout.
    pub fn wait_served(&self, node: usize, vip: SocketAddr) {
        let want = shares(&self.planned(node, vip.port()));
        assert!(
            want.keys().any(Option::is_some),
            "the plan gives {vip} no endpoints"
        );
        self.wait_for(node, &format!("node{} to serve {vip}", node + 1), || {
            self.live(node, vip).is_some_and(|t| shares(&t) == want)
        });
    }

    pub fn wait_for(&self, node: usize, what: &str, mut ok: impl FnMut() -> bool) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "timed out waiting for {what}; agent log of node{}:\n{}",
            node + 1,
            self.agent_log(node)
        );
    }

    /// The node of the pod named `name` (`node2-pod0` -> 1).
    pub fn node_of(&self, pod: &str) -> usize {
        self.net
            .pods()
            .find(|p| p.name == pod)
            .unwrap_or_else(|| panic!("no pod {pod}"))
            .node
    }

    /// The pod name at `addr` (an endpoint of a table).
    pub fn pod_at(&self, addr: IpAddr) -> &str {
        &self
            .net
            .pods()
            .find(|p| IpAddr::from(p.address_v4()) == addr)
            .unwrap_or_else(|| panic!("no pod at {addr}"))
            .name
    }

    /// `n` fresh connections from the client to `at`, stopping at the first failure (a
    /// missing feature fails every connection, each after a timeout).
    pub fn ask_many(&self, at: SocketAddr, n: usize) -> Result<Vec<WhoamiReply>, String> {
        ask_many_from(self.net.client(), at, n)
    }

    /// One connection from the client's own address and `port` to `at`.
    pub fn ask_from_port(&self, port: u16, at: SocketAddr) -> io::Result<WhoamiReply> {
        let from = SocketAddr::from((self.net.plan().client_v4(), port));
        ask_from(self.net.client(), from, at)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (i, agent) in self.agents.iter_mut().enumerate() {
            let Some(agent) = agent else { continue };
            let Some(mut child) = agent.child.take() else {
                continue;
            };
            // SIGTERM, as a DaemonSet rollout would; the links stay pinned until detached.
            if let Ok(pid) = i32::try_from(child.id()) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
            }
            let _ = child.child().wait();
            let node = self.net.node(i);
            let _ = node
                .ns
                .command(env!("CARGO_BIN_EXE_splitter"))
                .args(["detach", "--iface", &node.uplink, "--pin-dir"])
                .arg(agent.pin_dir())
                .status();
        }
    }
}

/// `n` fresh connections from `ns` to `at`, stopping at the first failure.
pub fn ask_many_from(
    ns: &testbed::NetNs,
    at: SocketAddr,
    n: usize,
) -> Result<Vec<WhoamiReply>, String> {
    (0..n)
        .map(|i| {
            testbed::ask_whoami(ns, at, TIMEOUT).map_err(|e| format!("connection {i} to {at}: {e}"))
        })
        .collect()
}

/// Slots per endpoint (`None`: REJECT).
pub fn shares(table: &Slots) -> BTreeMap<Option<SocketAddr>, usize> {
    table.iter().fold(BTreeMap::new(), |mut m, s| {
        *m.entry(*s).or_insert(0) += 1;
        m
    })
}

/// Connects from `from` (address and port: a known tuple) and reads the whoami line.
pub fn ask_from(ns: &testbed::NetNs, from: SocketAddr, at: SocketAddr) -> io::Result<WhoamiReply> {
    ns.run(|| {
        let socket = Socket::new(Domain::for_address(at), Type::STREAM, None)?;
        // The previous connection from this port may still be in TIME_WAIT here.
        socket.set_reuse_address(true)?;
        socket.bind(&from.into())?;
        socket.connect_timeout(&at.into(), TIMEOUT)?;
        let mut stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(TIMEOUT))?;
        let mut line = String::new();
        stream.read_to_string(&mut line)?;
        line.parse()
    })
}

/// The slot a flow from `client` to `vip` takes in a table of `m` slots: the kernel's hash.
pub fn slot_of(client: SocketAddr, vip: SocketAddr, m: usize) -> usize {
    let h = flow_hash(
        &addr16(client.ip()),
        &addr16(vip.ip()),
        client.port(),
        vip.port(),
        IPPROTO_TCP,
    );
    (h % u32::try_from(m).expect("table size")) as usize
}

/// The L4 table the plan gives the listener on `port` for the manifests under `dir`.
pub fn planned_table(dir: &Path, port: u16) -> Slots {
    let (index, report) = splitter::source::file::load(&[dir.to_path_buf()]);
    let plan = splitter_plan::plan::build(&index, &PlanConfig::default(), None);
    let (_, l4) = plan
        .l4_listeners()
        .find(|(l, _)| l.key.port == port)
        .unwrap_or_else(|| {
            panic!(
                "no L4 listener on {port}: {report:?}\n{:?}",
                plan.problems()
            )
        });
    l4.table.slot_endpoints()
}

/// The live half of `vip`'s table in the maps pinned under `pin_dir`, slot by slot as the
/// endpoint addresses (backend ids are each agent's own, so only addresses compare across
/// nodes). `None` while the VIP is not programmed.
pub fn live_table(pin_dir: &Path, vip: SocketAddr) -> anyhow::Result<Option<Slots>> {
    let open = |name: &str| -> anyhow::Result<Map> {
        Ok(Map::from_map_data(MapData::from_pin(pin_dir.join(name))?)?)
    };
    let vips = HashMap::<_, VipKey, VipValue>::try_from(open(VIPS)?)?;
    let key = VipKey {
        addr: addr16(vip.ip()),
        port: vip.port(),
        proto: IPPROTO_TCP,
        ..Default::default()
    };
    let Ok(route) = vips.get(&key, 0) else {
        return Ok(None);
    };
    let routes = Array::<_, RouteMeta>::try_from(open(ROUTES)?)?;
    let meta = routes.get(&route.route_id, 0)?;
    if meta.table_size == 0 || meta.table_size > MAX_TABLE_SIZE || meta.active > 1 {
        return Ok(None);
    }
    let tables = Array::<_, u32>::try_from(open(TABLES)?)?;
    let backends = Array::<_, Backend>::try_from(open(BACKENDS)?)?;
    let mut addrs: BTreeMap<u32, SocketAddr> = BTreeMap::new();
    let mut out = Vec::with_capacity(meta.table_size as usize);
    for slot in 0..meta.table_size {
        let id = tables.get(&table_index(route.route_id, meta.active, slot), 0)?;
        if id == REJECT {
            out.push(None);
            continue;
        }
        let addr = match addrs.get(&id) {
            Some(a) => *a,
            None => {
                let b = backends.get(&id, 0)?;
                let a = SocketAddr::new(IpAddr::from(b.addr).to_canonical(), b.port);
                addrs.insert(id, a);
                a
            }
        };
        out.push(Some(addr));
    }
    Ok(Some(out))
}
