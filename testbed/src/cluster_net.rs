//! A namespace topology shaped like a Kubernetes cluster, for tests that must prove something
//! about a cluster rather than about one gateway in front of its backends:
//!
//! ```text
//!  client ── router ── bridge "nodes" (the VPC subnet)
//!            │         ├── node1: eth0 (uplink) ── cbr0 ── node1-pod0, node1-pod1, ...
//!            │         └── node2: eth0 (uplink) ── cbr0 ── node2-pod0, ...
//!            └ VIP routed to one node, or ECMP over all of them
//! ```
//!
//! Nodes reach each other straight over the router's bridge. Pods reach pods of other nodes by
//! [`Routing::Native`] routes (on every node and, as cloud routes, on the router) or over a
//! [`Routing::Vxlan`] overlay the router knows nothing of. The router drops pod-sourced packets
//! bound for the client, as a cloud network drops sources it did not assign: a pod answering the
//! client straight from its own node never reaches it.
//!
//! Everything lives in namespaces made here (interface names are per namespace, so they can be
//! stable: `eth0`, `cbr0`, `vxlan0`); nothing in the host namespace changes, and nothing routes
//! outside these namespaces: the router, every node's and pod's last hop, has no default route.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use crate::{NetNs, WhoamiServer, netns::run_checked};

/// How a node reaches the pods of the other nodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Routing {
    /// Each node routes the other nodes' pod CIDRs via their node addresses, and so does the
    /// router (cloud routes).
    Native,
    /// A VXLAN device on each node with static FDB and neighbour entries; pod traffic between
    /// nodes is encapsulated between node addresses, and the router knows no pod CIDR.
    Vxlan,
}

/// The addresses of a [`ClusterNet`], all inside `10.{net}.0.0/16` and `fd00:10:{net}::/48`
/// (the IPv6 groups spell the IPv4 octets' decimal digits, so `10.160.101.10` is
/// `fd00:10:160:101::10`). Each user picks its own `net`, so parallel topologies never overlap.
///
/// | subnet (`/24`, `/64`)       | holder                                              |
/// |-----------------------------|-----------------------------------------------------|
/// | `10.{net}.0.0`              | client `.1`, router `.2`                            |
/// | `10.{net}.1.0`              | router's node bridge `.1`, node `i` (0-based) `.11+i` |
/// | `10.{net}.{101+i}.0`        | node `i`'s pod CIDR: its `cbr0` `.1`, pod `j` `.10+j` |
/// | `10.{net}.250.1` (`/32`)    | the VIP, outside every subnet                       |
#[derive(Clone, Copy, Debug)]
pub struct ClusterPlan {
    /// The second IPv4 octet (and third IPv6 group) of every address.
    pub net: u8,
}

const CLIENT_SUBNET: u8 = 0;
const NODE_SUBNET: u8 = 1;
const FIRST_POD_SUBNET: u8 = 101;
const VIP_SUBNET: u8 = 250;
const FIRST_NODE_HOST: u8 = 11;
const FIRST_POD_HOST: u8 = 10;
/// Pod subnets stop below the VIP's; node hosts stay below 255.
const MAX_NODES: usize = 100;
const MAX_PODS_PER_NODE: usize = 200;

impl ClusterPlan {
    pub fn client_v4(&self) -> Ipv4Addr {
        self.v4(CLIENT_SUBNET, 1)
    }

    pub fn client_v6(&self) -> Ipv6Addr {
        self.v6(CLIENT_SUBNET, 1)
    }

    /// The router's address on the client's link: the client's next hop into the cluster.
    pub fn router_v4(&self) -> Ipv4Addr {
        self.v4(CLIENT_SUBNET, 2)
    }

    pub fn router_v6(&self) -> Ipv6Addr {
        self.v6(CLIENT_SUBNET, 2)
    }

    /// The router's address on the node network: every node's default route.
    pub fn router_nodes_v4(&self) -> Ipv4Addr {
        self.v4(NODE_SUBNET, 1)
    }

    pub fn router_nodes_v6(&self) -> Ipv6Addr {
        self.v6(NODE_SUBNET, 1)
    }

    pub fn node_v4(&self, node: usize) -> Ipv4Addr {
        self.v4(NODE_SUBNET, host(FIRST_NODE_HOST, node))
    }

    pub fn node_v6(&self, node: usize) -> Ipv6Addr {
        self.v6(NODE_SUBNET, host(FIRST_NODE_HOST, node))
    }

    /// Node `node`'s IPv4 pod CIDR, e.g. `10.160.101.0/24`.
    pub fn pod_cidr_v4(&self, node: usize) -> String {
        format!("{}/24", self.v4(pod_subnet(node), 0))
    }

    /// Node `node`'s IPv6 pod CIDR, e.g. `fd00:10:160:101::/64`.
    pub fn pod_cidr_v6(&self, node: usize) -> String {
        format!("{}/64", self.v6(pod_subnet(node), 0))
    }

    /// The node's address on its pod bridge: its pods' default route.
    pub fn pod_gateway_v4(&self, node: usize) -> Ipv4Addr {
        self.v4(pod_subnet(node), 1)
    }

    pub fn pod_gateway_v6(&self, node: usize) -> Ipv6Addr {
        self.v6(pod_subnet(node), 1)
    }

    pub fn pod_v4(&self, node: usize, pod: usize) -> Ipv4Addr {
        self.v4(pod_subnet(node), host(FIRST_POD_HOST, pod))
    }

    pub fn pod_v6(&self, node: usize, pod: usize) -> Ipv6Addr {
        self.v6(pod_subnet(node), host(FIRST_POD_HOST, pod))
    }

    pub fn vip_v4(&self) -> Ipv4Addr {
        self.v4(VIP_SUBNET, 1)
    }

    pub fn vip_v6(&self) -> Ipv6Addr {
        self.v6(VIP_SUBNET, 1)
    }

    /// Everything of the cluster, IPv4: what the client routes via the router.
    pub fn cluster_v4(&self) -> String {
        format!("10.{}.0.0/16", self.net)
    }

    pub fn cluster_v6(&self) -> String {
        format!("fd00:10:{}::/48", self.net)
    }

    fn client_subnet_v4(&self) -> String {
        format!("{}/24", self.v4(CLIENT_SUBNET, 0))
    }

    fn client_subnet_v6(&self) -> String {
        format!("{}/64", self.v6(CLIENT_SUBNET, 0))
    }

    fn v4(&self, subnet: u8, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, self.net, subnet, host)
    }

    fn v6(&self, subnet: u8, host: u8) -> Ipv6Addr {
        format!("fd00:10:{}:{subnet}::{host}", self.net)
            .parse()
            .expect("decimal digits are hex digits")
    }
}

fn pod_subnet(node: usize) -> u8 {
    host(FIRST_POD_SUBNET, node)
}

fn host(first: u8, index: usize) -> u8 {
    u8::try_from(usize::from(first) + index).expect("index checked by ClusterNet::new")
}

/// A node: its namespace is where an agent runs and attaches its programs to `uplink`.
pub struct Node {
    pub ns: NetNs,
    /// `node1`, `node2`, ...: an EndpointSlice endpoint's `nodeName`.
    pub name: String,
    /// The interface to the node network, inside `ns`.
    pub uplink: String,
    /// The bridge the node's pods hang off, inside `ns`.
    pub pod_bridge: String,
    index: usize,
    plan: ClusterPlan,
}

impl Node {
    pub fn address_v4(&self) -> Ipv4Addr {
        self.plan.node_v4(self.index)
    }

    pub fn address_v6(&self) -> Ipv6Addr {
        self.plan.node_v6(self.index)
    }

    pub fn pod_cidr_v4(&self) -> String {
        self.plan.pod_cidr_v4(self.index)
    }

    pub fn pod_cidr_v6(&self) -> String {
        self.plan.pod_cidr_v6(self.index)
    }

    /// A whoami server in the node's namespace that answers with the node's name.
    pub fn serve_whoami(&self, port: u16) -> io::Result<WhoamiServer> {
        WhoamiServer::start(&self.ns, &self.name, port)
    }
}

/// A pod: a namespace with one interface, `eth0`, on its node's pod bridge.
pub struct Pod {
    pub ns: NetNs,
    /// `node1-pod0`, ...: stable, what its whoami server answers with.
    pub name: String,
    /// The index of its node in [`ClusterNet::node`].
    pub node: usize,
    address_v4: Ipv4Addr,
    address_v6: Ipv6Addr,
}

impl Pod {
    pub fn address_v4(&self) -> Ipv4Addr {
        self.address_v4
    }

    pub fn address_v6(&self) -> Ipv6Addr {
        self.address_v6
    }

    pub fn serve_whoami(&self, port: u16) -> io::Result<WhoamiServer> {
        WhoamiServer::start(&self.ns, &self.name, port)
    }

    /// A command that will run inside the pod (e.g. the project's HTTP echo server).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        self.ns.command(program)
    }
}

/// The cluster (see the module). Dropping it deletes every namespace and with them every link;
/// whoami servers and processes started in them are the caller's to stop.
pub struct ClusterNet {
    pods: Vec<Vec<Pod>>,
    nodes: Vec<Node>,
    router: NetNs,
    client: NetNs,
    plan: ClusterPlan,
    routing: Routing,
    /// Whether the router's drop rules are in, so turning them on or off twice is harmless.
    pod_source_drop: AtomicBool,
}

/// Interface names inside the namespaces: unique because every namespace is.
const UPLINK: &str = "eth0";
const POD_IFACE: &str = "eth0";
const POD_BRIDGE: &str = "cbr0";
const VXLAN: &str = "vxlan0";
const NODE_NETWORK: &str = "nodes";
const ROUTER_TO_CLIENT: &str = "client";
const CLIENT_IFACE: &str = "eth0";
const VXLAN_ID: &str = "42";
const VXLAN_PORT: &str = "4789";
/// The outer IPv4 (20), UDP (8), VXLAN (8) and inner Ethernet (14) headers.
const VXLAN_OVERHEAD: u32 = 50;
const LINK_MTU: u32 = 1500;
/// Where the router's pod-source drop rules sit, before the main table's lookup.
const DROP_RULE_PREF: &str = "100";

impl ClusterNet {
    /// Builds `nodes` nodes with `pods_per_node` pods each (namespace names start with `tag`),
    /// routes the VIP to the first node and turns the router's pod-source drop on.
    pub fn new(
        tag: &str,
        plan: ClusterPlan,
        routing: Routing,
        nodes: usize,
        pods_per_node: usize,
    ) -> io::Result<Self> {
        check_size(nodes, pods_per_node)?;
        let router = NetNs::new(&format!("{tag}r"))?;
        configure_forwarder(&router)?;
        set_sysctls(
            &router,
            &[
                ("net/ipv4/fib_multipath_hash_policy", "1"),
                ("net/ipv6/fib_multipath_hash_policy", "1"),
            ],
        )?;
        let client = NetNs::new(&format!("{tag}c"))?;
        let mut net = ClusterNet {
            pods: Vec::with_capacity(nodes),
            nodes: Vec::with_capacity(nodes),
            router,
            client,
            plan,
            routing,
            pod_source_drop: AtomicBool::new(false),
        };
        net.link_client()?;
        net.make_node_network()?;
        for i in 0..nodes {
            let node = net.add_node(tag, i)?;
            net.nodes.push(node);
            let pods = (0..pods_per_node)
                .map(|j| net.add_pod(tag, i, j))
                .collect::<io::Result<_>>()?;
            net.pods.push(pods);
        }
        match routing {
            Routing::Native => net.route_pods_natively()?,
            Routing::Vxlan => net.route_pods_over_vxlan()?,
        }
        net.set_pod_source_drop(true)?;
        net.route_vip_to(0)?;
        Ok(net)
    }

    pub fn client(&self) -> &NetNs {
        &self.client
    }

    /// The client's interface to the router, inside [`Self::client`].
    pub fn client_iface(&self) -> &str {
        CLIENT_IFACE
    }

    pub fn router(&self) -> &NetNs {
        &self.router
    }

    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Pod `j` of node `i`.
    pub fn pod(&self, i: usize, j: usize) -> &Pod {
        &self.pods[i][j]
    }

    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.iter().flatten()
    }

    pub fn plan(&self) -> ClusterPlan {
        self.plan
    }

    pub fn routing(&self) -> Routing {
        self.routing
    }

    pub fn vip_v4(&self) -> Ipv4Addr {
        self.plan.vip_v4()
    }

    pub fn vip_v6(&self) -> Ipv6Addr {
        self.plan.vip_v6()
    }

    /// Starts a whoami server on `port` in every pod; they stop when the returned servers drop.
    pub fn serve_whoami(&self, port: u16) -> io::Result<Vec<WhoamiServer>> {
        self.pods().map(|pod| pod.serve_whoami(port)).collect()
    }

    /// Makes the router send the VIP (both families) to node `node` only.
    pub fn route_vip_to(&self, node: usize) -> io::Result<()> {
        let node = &self.nodes[node];
        self.route_vip(&[node.address_v4().into()], &[node.address_v6().into()])
    }

    /// Makes the router spread VIP flows over every node, by their L4 ports (the router hashes
    /// with `fib_multipath_hash_policy=1`).
    pub fn route_vip_ecmp(&self) -> io::Result<()> {
        let v4: Vec<IpAddr> = self.nodes.iter().map(|n| n.address_v4().into()).collect();
        let v6: Vec<IpAddr> = self.nodes.iter().map(|n| n.address_v6().into()).collect();
        self.route_vip(&v4, &v6)
    }

    /// Turns the router's drop of pod-sourced packets bound for the client on or off. Off is
    /// for a test that proves the drop is what blocks a path.
    pub fn set_pod_source_drop(&self, on: bool) -> io::Result<()> {
        if self.pod_source_drop.swap(on, Ordering::SeqCst) == on {
            return Ok(());
        }
        let verb = if on { "add" } else { "del" };
        for node in 0..self.nodes.len() {
            let from_to = [
                (
                    "-4",
                    self.plan.pod_cidr_v4(node),
                    self.plan.client_subnet_v4(),
                ),
                (
                    "-6",
                    self.plan.pod_cidr_v6(node),
                    self.plan.client_subnet_v6(),
                ),
            ];
            for (family, from, to) in from_to {
                self.router.ip(&[
                    family,
                    "rule",
                    verb,
                    "pref",
                    DROP_RULE_PREF,
                    "from",
                    &from,
                    "to",
                    &to,
                    "blackhole",
                ])?;
            }
        }
        Ok(())
    }
}

impl ClusterNet {
    /// A Service `name` in `default` with one port (`port_name`, `port`, the pods' port too) and
    /// its IPv4 EndpointSlice as the EndpointSlice controller writes it: an endpoint per pod
    /// `(node, pod)`, ready, with its node's name as `nodeName` (how an agent tells its own
    /// pods from other nodes'). A YAML document list that starts with `---`.
    pub fn service_yaml(
        &self,
        name: &str,
        port_name: &str,
        port: u16,
        pods: &[(usize, usize)],
    ) -> String {
        let endpoints: String = pods
            .iter()
            .map(|&(node, pod)| {
                format!(
                    "\n- {{addresses: [{}], nodeName: {}, conditions: {{ready: true}}}}",
                    self.pod(node, pod).address_v4(),
                    self.node(node).name
                )
            })
            .collect();
        format!(
            "---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  ports: [{{name: {port_name}, port: {port}, targetPort: {port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: {port_name}, port: {port}}}]
endpoints:{endpoints}
"
        )
    }
}

impl ClusterNet {
    fn link_client(&self) -> io::Result<()> {
        let plan = &self.plan;
        veth(
            &self.client,
            CLIENT_IFACE,
            &self.router,
            ROUTER_TO_CLIENT,
            LINK_MTU,
        )?;
        add_addresses(
            &self.client,
            CLIENT_IFACE,
            plan.client_v4(),
            plan.client_v6(),
        )?;
        add_addresses(
            &self.router,
            ROUTER_TO_CLIENT,
            plan.router_v4(),
            plan.router_v6(),
        )?;
        up(&self.client, CLIENT_IFACE)?;
        up(&self.router, ROUTER_TO_CLIENT)?;
        route(&self.client, &plan.cluster_v4(), plan.router_v4().into())?;
        route(&self.client, &plan.cluster_v6(), plan.router_v6().into())
    }

    /// The VPC subnet: a bridge in the router, so nodes reach each other without the router.
    fn make_node_network(&self) -> io::Result<()> {
        bridge(&self.router, NODE_NETWORK, LINK_MTU)?;
        add_addresses(
            &self.router,
            NODE_NETWORK,
            self.plan.router_nodes_v4(),
            self.plan.router_nodes_v6(),
        )?;
        up(&self.router, NODE_NETWORK)
    }

    fn add_node(&self, tag: &str, i: usize) -> io::Result<Node> {
        let plan = self.plan;
        let ns = NetNs::new(&format!("{tag}n"))?;
        configure_forwarder(&ns)?;
        let name = format!("node{}", i + 1);
        veth(&ns, UPLINK, &self.router, &name, LINK_MTU)?;
        self.router
            .ip(&["link", "set", &name, "master", NODE_NETWORK])?;
        up(&self.router, &name)?;
        add_addresses(&ns, UPLINK, plan.node_v4(i), plan.node_v6(i))?;
        up(&ns, UPLINK)?;
        route(&ns, "default", plan.router_nodes_v4().into())?;
        route(&ns, "default", plan.router_nodes_v6().into())?;
        bridge(&ns, POD_BRIDGE, self.pod_mtu())?;
        add_addresses(
            &ns,
            POD_BRIDGE,
            plan.pod_gateway_v4(i),
            plan.pod_gateway_v6(i),
        )?;
        up(&ns, POD_BRIDGE)?;
        Ok(Node {
            ns,
            name,
            uplink: UPLINK.to_owned(),
            pod_bridge: POD_BRIDGE.to_owned(),
            index: i,
            plan,
        })
    }

    fn add_pod(&self, tag: &str, i: usize, j: usize) -> io::Result<Pod> {
        let plan = self.plan;
        let node = &self.nodes[i].ns;
        let ns = NetNs::new(&format!("{tag}p"))?;
        set_sysctls(&ns, NO_DAD)?;
        let port = format!("veth{j}");
        veth(&ns, POD_IFACE, node, &port, self.pod_mtu())?;
        node.ip(&["link", "set", &port, "master", POD_BRIDGE])?;
        up(node, &port)?;
        let (v4, v6) = (plan.pod_v4(i, j), plan.pod_v6(i, j));
        add_addresses(&ns, POD_IFACE, v4, v6)?;
        up(&ns, POD_IFACE)?;
        route(&ns, "default", plan.pod_gateway_v4(i).into())?;
        route(&ns, "default", plan.pod_gateway_v6(i).into())?;
        Ok(Pod {
            ns,
            name: format!("node{}-pod{j}", i + 1),
            node: i,
            address_v4: v4,
            address_v6: v6,
        })
    }

    /// Pods carry the overlay's MTU, so their packets fit in a VXLAN frame without
    /// fragmentation (which VXLAN does not do for the inner packet).
    fn pod_mtu(&self) -> u32 {
        match self.routing {
            Routing::Native => LINK_MTU,
            Routing::Vxlan => LINK_MTU - VXLAN_OVERHEAD,
        }
    }

    /// Every node, and the router as a cloud route table does, sends a pod CIDR to its node.
    fn route_pods_natively(&self) -> io::Result<()> {
        for (k, owner) in self.nodes.iter().enumerate() {
            let (v4, v6) = (self.plan.pod_cidr_v4(k), self.plan.pod_cidr_v6(k));
            let others = self.nodes.iter().filter(|n| n.index != k).map(|n| &n.ns);
            for ns in others.chain([&self.router]) {
                route(ns, &v4, owner.address_v4().into())?;
                route(ns, &v6, owner.address_v6().into())?;
            }
        }
        Ok(())
    }

    fn route_pods_over_vxlan(&self) -> io::Result<()> {
        for node in &self.nodes {
            self.make_vtep(node)?;
        }
        for node in &self.nodes {
            for peer in self.nodes.iter().filter(|n| n.index != node.index) {
                self.route_via_vtep(node, peer)?;
            }
        }
        Ok(())
    }

    fn make_vtep(&self, node: &Node) -> io::Result<()> {
        let local = node.address_v4().to_string();
        node.ns.ip(&[
            "link",
            "add",
            VXLAN,
            "address",
            &self.vtep_mac(node.index),
            "type",
            "vxlan",
            "id",
            VXLAN_ID,
            "local",
            &local,
            "dev",
            UPLINK,
            "dstport",
            VXLAN_PORT,
            "nolearning",
            // The outer UDP checksum too is complete on the uplink, where XDP reads it.
            "udpcsum",
        ])?;
        full_checksums(&node.ns, VXLAN)?;
        up(&node.ns, VXLAN)
    }

    /// Static entries, as flannel writes them: the peer's pod gateway resolves to the peer's
    /// VTEP MAC, and that MAC to the peer's node address. Node-sourced packets keep the node's
    /// address as their source, as they do under native routing.
    fn route_via_vtep(&self, node: &Node, peer: &Node) -> io::Result<()> {
        let (ns, mac) = (&node.ns, self.vtep_mac(peer.index));
        let dst = peer.address_v4().to_string();
        run_checked(Command::new("bridge").args([
            "-n",
            ns.name(),
            "fdb",
            "append",
            &mac,
            "dev",
            VXLAN,
            "dst",
            &dst,
        ]))?;
        let via_v4 = self.plan.pod_gateway_v4(peer.index).to_string();
        let via_v6 = self.plan.pod_gateway_v6(peer.index).to_string();
        for via in [&via_v4, &via_v6] {
            ns.ip(&[
                "neigh",
                "add",
                via,
                "lladdr",
                &mac,
                "dev",
                VXLAN,
                "nud",
                "permanent",
            ])?;
        }
        let routes = [
            (peer.pod_cidr_v4(), via_v4, node.address_v4().to_string()),
            (peer.pod_cidr_v6(), via_v6, node.address_v6().to_string()),
        ];
        for (cidr, via, src) in routes {
            ns.ip(&[
                "route", "add", &cidr, "via", &via, "dev", VXLAN, "onlink", "src", &src,
            ])?;
        }
        Ok(())
    }

    /// Locally administered, and distinct per cluster and node.
    fn vtep_mac(&self, node: usize) -> String {
        format!("02:10:{:02x}:00:00:{:02x}", self.plan.net, node + 1)
    }

    fn route_vip(&self, v4: &[IpAddr], v6: &[IpAddr]) -> io::Result<()> {
        let vip_v4 = format!("{}/32", self.vip_v4());
        let vip_v6 = format!("{}/128", self.vip_v6());
        for (vip, vias) in [(vip_v4, v4), (vip_v6, v6)] {
            let vias: Vec<String> = vias.iter().map(ToString::to_string).collect();
            let mut args = vec!["route", "replace", vip.as_str()];
            if let [via] = vias.as_slice() {
                args.extend(["via", via.as_str()]);
            } else {
                for via in &vias {
                    args.extend(["nexthop", "via", via.as_str()]);
                }
            }
            self.router.ip(&args)?;
        }
        Ok(())
    }
}

fn check_size(nodes: usize, pods_per_node: usize) -> io::Result<()> {
    if (2..=MAX_NODES).contains(&nodes) && pods_per_node <= MAX_PODS_PER_NODE {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "ClusterNet: {nodes} nodes of {pods_per_node} pods; the plan holds 2..={MAX_NODES} \
             nodes of at most {MAX_PODS_PER_NODE} pods"
        ),
    ))
}

/// Addresses are added `nodad` and new interfaces skip DAD, so IPv6 works at once.
const NO_DAD: &[(&str, &str)] = &[
    ("net/ipv6/conf/all/accept_dad", "0"),
    ("net/ipv6/conf/default/accept_dad", "0"),
];

/// Set before any interface exists, so every interface inherits it.
fn configure_forwarder(ns: &NetNs) -> io::Result<()> {
    set_sysctls(ns, NO_DAD)?;
    set_sysctls(
        ns,
        &[
            ("net/ipv4/ip_forward", "1"),
            ("net/ipv6/conf/all/forwarding", "1"),
            ("net/ipv6/conf/default/forwarding", "1"),
        ],
    )
}

fn set_sysctls(ns: &NetNs, values: &[(&str, &str)]) -> io::Result<()> {
    values.iter().try_for_each(|(k, v)| ns.sysctl(k, v))
}

/// A veth pair named `a` in `ns_a` and `b` in `ns_b`, both with full checksums (see
/// [`full_checksums`]), down and unaddressed.
fn veth(ns_a: &NetNs, a: &str, ns_b: &NetNs, b: &str, mtu: u32) -> io::Result<()> {
    let mtu = mtu.to_string();
    ns_a.ip(&[
        "link",
        "add",
        a,
        "mtu",
        &mtu,
        "type",
        "veth",
        "peer",
        "name",
        b,
        "mtu",
        &mtu,
        "netns",
        ns_b.name(),
    ])?;
    full_checksums(ns_a, a)?;
    full_checksums(ns_b, b)
}

fn bridge(ns: &NetNs, name: &str, mtu: u32) -> io::Result<()> {
    ns.ip(&[
        "link",
        "add",
        name,
        "mtu",
        &mtu.to_string(),
        "type",
        "bridge",
    ])?;
    full_checksums(ns, name)
}

/// Makes `dev` put complete checksums in what it sends. With tx checksum offload on, a veth,
/// bridge or VXLAN sender leaves the TCP/UDP checksum to an offload that never happens
/// (CHECKSUM_PARTIAL, only the pseudo-header sum in the field): the kernel on the other side
/// trusts the flag, but an XDP program on a node's uplink sees the bytes as on a wire, so it
/// would read, incrementally update and redirect a checksum that was never computed.
fn full_checksums(ns: &NetNs, dev: &str) -> io::Result<()> {
    ns.exec("ethtool", &["-K", dev, "tx", "off"]).map(drop)
}

/// Every subnet of the plan is a /24 and a /64.
fn add_addresses(ns: &NetNs, dev: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> io::Result<()> {
    ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev])?;
    ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"])
        .map(drop)
}

fn up(ns: &NetNs, dev: &str) -> io::Result<()> {
    ns.ip(&["link", "set", dev, "up"]).map(drop)
}

fn route(ns: &NetNs, to: &str, via: IpAddr) -> io::Result<()> {
    let family = if via.is_ipv4() { "-4" } else { "-6" };
    ns.ip(&[family, "route", "add", to, "via", &via.to_string()])
        .map(drop)
}

#[cfg(test)]
mod tests;
