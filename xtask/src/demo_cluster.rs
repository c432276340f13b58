//! Step 3 of `cargo xtask demo`: the agent on every node of a two-node cluster.
//!
//! A client, a router in front (it drops what pods send the client straight from their node, as
//! a cloud network drops sources it did not assign) and two nodes with two echo pods each. One
//! agent per node serves a catch-all HTTPRoute on the node's own address; 200 fresh connections
//! go to node 1. Node 1's pods answer the client's own address (DNAT only); node 2's pods are
//! reached through node 1, which SNATs to its address and a reserved port, so their answers
//! come back through it.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    ops::RangeInclusive,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, bail};
use testbed::{BpfFs, ChildGuard, ClusterNet, ClusterPlan, Node, Routing};

use crate::topology::{Binaries, ECHO_PORT, agent_command, wait_for, write_atomically};

/// The cluster's addresses: `10.190.0.0/16` (see [`ClusterPlan`]), apart from steps 1 and 2.
const NET: u8 = 190;
const PORT: u16 = 8080;
const CONNECTIONS: usize = 200;
/// The agent's default `--snat-ports`.
const SNAT_PORTS: RangeInclusive<u16> = 61000..=64999;

fn manifests(net: &ClusterNet) -> String {
    let mut out = format!(
        "# One Gateway on the nodes' own addresses (no spec.addresses); its only route matches
# everything, so every node's kernel serves it.
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: splitter}}
spec: {{controllerName: splitter.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: cluster, namespace: default}}
spec:
  gatewayClassName: splitter
  listeners: [{{name: tcp-split, protocol: HTTP, port: {PORT}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: echo-cluster, namespace: default}}
spec:
  parentRefs: [{{name: cluster}}]
  rules:
  - backendRefs:
    - {{name: echo, port: {ECHO_PORT}, weight: 1}}
    - {{name: echo2, port: {ECHO_PORT}, weight: 1}}
"
    );
    // Each Service has a pod on each node; `nodeName` is how an agent tells its own pods.
    for (service, pod) in [("echo", 0), ("echo2", 1)] {
        let on_every_node: Vec<(usize, usize)> = (0..net.nodes().len()).map(|n| (n, pod)).collect();
        out.push_str(&net.service_yaml(service, "http", ECHO_PORT, &on_every_node));
    }
    out
}

/// A node's agent: stopped, then its links detached, on drop (the demo leaves nothing behind).
struct Agent<'a> {
    child: Option<ChildGuard>,
    node: &'a Node,
    splitter: PathBuf,
    pin_dir: PathBuf,
    _pins: BpfFs,
}

impl Drop for Agent<'_> {
    fn drop(&mut self) {
        drop(self.child.take());
        let _ = self
            .node
            .ns
            .command(&self.splitter)
            .args(["detach", "--iface", &self.node.uplink, "--pin-dir"])
            .arg(&self.pin_dir)
            .status();
    }
}

fn start_agent<'a>(
    bins: &Binaries,
    node: &'a Node,
    manifests: &Path,
    log: &Path,
) -> anyhow::Result<Agent<'a>> {
    let pins = BpfFs::new()?;
    let pin_dir = pins.path().join(splitter_common::pin::PIN_SUBDIR);
    let child = agent_command(&node.ns, &bins.splitter, manifests, log)?
        .args(["--iface", &node.uplink, "--node-name", &node.name])
        .arg("--pin-dir")
        .arg(&pin_dir)
        .spawn()
        .with_context(|| format!("starting the agent of {}", node.name))?;
    Ok(Agent {
        child: Some(ChildGuard(child)),
        node,
        splitter: bins.splitter.clone(),
        pin_dir,
        _pins: pins,
    })
}

fn inspect(agent: &Agent<'_>) -> String {
    Command::new(&agent.splitter)
        .arg("inspect")
        .arg("--pin-dir")
        .arg(&agent.pin_dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Whether the kernel of `agent`'s node serves `PORT` on the node's address.
fn served(agent: &Agent<'_>) -> bool {
    inspect(agent).contains(&format!("[{}:{PORT}/tcp]", agent.node.address_v4()))
}

/// The L4 routes of `splitter inspect`: each node's table, flows and counters, without the
/// parse and event counters the earlier step already showed.
fn inspect_routes(agent: &Agent<'_>) -> String {
    inspect(agent)
        .lines()
        .skip_while(|l| !l.starts_with("l4 routes"))
        .take_while(|l| !l.starts_with("l4 events"))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// What the connections showed: per pod, how many it answered and the sources it saw.
#[derive(Default)]
struct Seen {
    connections: usize,
    sources: BTreeMap<IpAddr, (u16, u16)>,
}

pub fn run(bins: &Binaries) -> anyhow::Result<()> {
    let net = ClusterNet::new("dc", ClusterPlan { net: NET }, Routing::Native, 2, 2)?;
    let plan = net.plan();
    let pods: Vec<String> = net
        .pods()
        .map(|p| format!("{} {}", p.name, p.address_v4()))
        .collect();
    println!(
        "\n== cluster: client {}, a router, node1 {} and node2 {}, pods {}",
        plan.client_v4(),
        net.node(0).address_v4(),
        net.node(1).address_v4(),
        pods.join(", ")
    );
    let _echoes: Vec<ChildGuard> = net
        .pods()
        .map(|pod| {
            pod.command(&bins.echo)
                .args([
                    "--listen",
                    &format!("0.0.0.0:{ECHO_PORT}"),
                    "--name",
                    &pod.name,
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map(ChildGuard)
                .context("starting splitter-echo")
        })
        .collect::<anyhow::Result<_>>()?;

    let dir = tempfile::Builder::new()
        .prefix("splitter-demo-cluster-")
        .tempdir()?;
    let manifest_dir = dir.path().join("m");
    std::fs::create_dir_all(&manifest_dir)?;
    write_atomically(&manifest_dir.join("cluster.yaml"), &manifests(&net))?;
    let mut agents = Vec::new();
    for node in net.nodes() {
        let log = dir.path().join(format!("agent-{}.log", node.name));
        println!(
            "demo: agent in {}: splitter run --manifests {} --iface {} --node-name {} (log: {})",
            node.name,
            manifest_dir.display(),
            node.uplink,
            node.name,
            log.display()
        );
        agents.push(start_agent(bins, node, &manifest_dir, &log)?);
    }
    for agent in &agents {
        wait_for(
            &format!("{}'s kernel to serve :{PORT}", agent.node.name),
            Duration::from_secs(30),
            || served(agent),
        )?;
    }

    let node1 = SocketAddr::from((net.node(0).address_v4(), PORT));
    println!(
        "\n== cluster: {CONNECTIONS} fresh connections from the client to node1 (http://{node1}/)"
    );
    let url = format!("http://{node1}/cluster?n=[1-{CONNECTIONS}]");
    // Stop at the first failure: a connection that fails would fail after its timeout, each.
    let out = net
        .client()
        .command("curl")
        .args([
            "-s",
            "--fail-early",
            "--connect-timeout",
            "2",
            "--max-time",
            "3",
        ])
        .args(["-H", "Connection: close", "-w", "\\n", &url])
        .output()
        .context("running curl in the client namespace")?;
    let mut seen: BTreeMap<String, Seen> = BTreeMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if line.is_empty() {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("echo reply: {line}"))?;
        let pod = v["name"].as_str().unwrap_or("?").to_owned();
        let peer: SocketAddr = v["peer"]
            .as_str()
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("peer in {line}"))?;
        let s = seen.entry(pod).or_default();
        s.connections += 1;
        let ports = s
            .sources
            .entry(peer.ip().to_canonical())
            .or_insert((peer.port(), peer.port()));
        *ports = (ports.0.min(peer.port()), ports.1.max(peer.port()));
    }
    let answered: usize = seen.values().map(|s| s.connections).sum();
    let node1_ip = IpAddr::from(net.node(0).address_v4());
    let client_ip = IpAddr::from(plan.client_v4());
    let mut wrong = Vec::new();
    for (pod, s) in &seen {
        let local = pod.starts_with("node1-");
        let sources: Vec<String> = s
            .sources
            .iter()
            .map(|(ip, (lo, hi))| {
                let who = if *ip == client_ip {
                    "the client"
                } else if *ip == node1_ip {
                    "node1"
                } else {
                    "?"
                };
                format!("{ip} ports {lo}-{hi} ({who})")
            })
            .collect();
        println!("    {:>4} {pod}: saw {}", s.connections, sources.join(", "));
        let right = s.sources.iter().all(|(ip, (lo, hi))| {
            if local {
                *ip == client_ip
            } else {
                *ip == node1_ip && SNAT_PORTS.contains(lo) && SNAT_PORTS.contains(hi)
            }
        });
        if !right {
            wrong.push(pod.clone());
        }
    }
    for agent in &agents {
        println!(
            "\n== splitter inspect on {}\n{}",
            agent.node.name,
            inspect_routes(agent).trim_end()
        );
    }
    println!("demo: cleaning up the cluster");
    drop(agents);
    if answered < CONNECTIONS {
        bail!(
            "the cluster answered {answered} of {CONNECTIONS} connections (curl stopped at the \
             first failure: {}); agent logs in {}",
            out.status,
            keep(dir)
        );
    }
    if seen.len() != 4 || !wrong.is_empty() {
        bail!(
            "every pod should answer, node1's seeing the client ({client_ip}) and node2's \
             node1 ({node1_ip}) with ports in {SNAT_PORTS:?}: {} pods answered, wrong sources at \
             {wrong:?}",
            seen.len()
        );
    }
    println!(
        "demo: node1's pods saw the client, node2's saw node1 with a port in {}-{}",
        SNAT_PORTS.start(),
        SNAT_PORTS.end()
    );
    Ok(())
}

/// Keeps the agents' logs past the demo, for the operator to read; where they are.
fn keep(dir: tempfile::TempDir) -> String {
    dir.keep().display().to_string()
}
