//! `cargo xtask demo`: the reference journey, for real, on this machine.
//!
//! Four network namespaces stand in for a node's pods: a client, the gateway (where the agent
//! runs, as it would on the node) and two echo backends. The manifests are the guide's, from
//! `deploy/`; only the EndpointSlices are written for the demo's backend addresses, as the
//! EndpointSlice controller would on a cluster.
//!
//! 1. L7: 200 requests over one keep-alive connection to `/echo/hostname` give 100/100; with
//!    the weights edited to 200/100 in the file, 133/67.
//! 2. L4: a match-all route on a second listener is served in the kernel; 200 fresh connections
//!    are split per connection, and the backends see the client's own address.
//! 3. A cluster (see `demo_cluster`): two nodes behind a router, an agent on each, echo pods on
//!    both; 200 fresh connections to node 1 reach the pods of both nodes, node 2's through
//!    node 1's SNAT.

use std::{collections::BTreeMap, process::Command, time::Duration};

use anyhow::{Context, bail};
use testbed::{BpfFs, ChildGuard};

use crate::topology::{
    self, BACKENDS, CLIENT, ECHO_PORT, GATEWAY, Profile, Topology, wait_for, write_l7_manifests,
};

const L4_PORT: u16 = 8080;

/// The guide's manifests plus a second Gateway whose route the kernel serves.
fn manifests(dir: &std::path::Path, weights: Option<(u32, u32)>) -> anyhow::Result<()> {
    write_l7_manifests(dir, weights)?;
    let l4 = format!(
        "# A second Gateway whose only route has no matches and no filters: every connection on
# its listener goes to the same weighted set, so the kernel serves it (per connection, 3:1).
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: kong-l4
  namespace: default
spec:
  gatewayClassName: splitter
  listeners:
  - name: tcp-split
    protocol: HTTP
    port: {L4_PORT}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: echo-l4
  namespace: default
spec:
  parentRefs:
  - name: kong-l4
  rules:
  - backendRefs:
    - {{name: echo, port: {ECHO_PORT}, weight: 3}}
    - {{name: echo2, port: {ECHO_PORT}, weight: 1}}
"
    );
    std::fs::write(dir.join("httproute-l4.yaml"), l4)?;
    Ok(())
}

fn uniq_c(lines: impl Iterator<Item = String>) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for l in lines.filter(|l| !l.is_empty()) {
        *counts.entry(l).or_insert(0) += 1;
    }
    counts
}

fn print_counts(counts: &BTreeMap<String, usize>) {
    for (name, n) in counts {
        println!("    {n:>4} {name}");
    }
}

fn hostname_round(topo: &Topology) -> anyhow::Result<BTreeMap<String, usize>> {
    let url = format!("http://{GATEWAY}/echo/hostname?iteration=[1-200]");
    let out = topo.curl(&["-s", "-w", "\\n", &url])?;
    Ok(uniq_c(out.lines().map(str::to_owned)))
}

pub fn run() -> anyhow::Result<()> {
    if !testbed::is_root() {
        bail!("the demo creates network namespaces and loads eBPF programs: run it as root");
    }
    crate::setup::run()?;
    println!("demo: building the agent and the echo backend");
    let bins = topology::build_binaries(Profile::Debug)?;

    println!(
        "demo: namespaces client, gateway, {}",
        BACKENDS.map(|(s, _)| s).join(", ")
    );
    let topo = Topology::new("d", &bins.echo)?;
    // XDP sees bytes as sent: the client puts full checksums on the wire, as a NIC does.
    topo.net.client_sends_full_checksums()?;

    let manifest_dir = tempfile::Builder::new()
        .prefix("splitter-demo-")
        .tempdir()?;
    manifests(manifest_dir.path(), None)?;
    let bpffs = BpfFs::new()?;
    let pin_dir = bpffs.path().join(splitter_common::pin::PIN_SUBDIR);
    let log = manifest_dir.path().join("agent.log");
    println!(
        "demo: agent in the gateway namespace: splitter run --manifests {} --iface {} (log: {})",
        manifest_dir.path().display(),
        topo.net.front.b,
        log.display()
    );
    let agent = ChildGuard(
        topology::agent_command(&topo.net.gateway, &bins.splitter, manifest_dir.path(), &log)?
            .args(["--iface", &topo.net.front.b])
            .arg("--pin-dir")
            .arg(&pin_dir)
            .spawn()
            .context("starting the agent")?,
    );
    topo.wait_until_served("/echo/hostname", Duration::from_secs(30))?;

    println!(
        "\n== L7: curl -s http://{GATEWAY}/echo/hostname?iteration=[1-200] (one keep-alive connection) | sort | uniq -c"
    );
    let even = hostname_round(&topo)?;
    print_counts(&even);

    println!("\n== L7: weights set to 200 and 100 in httproute.yaml; the same 200 requests");
    manifests(manifest_dir.path(), Some((200, 100)))?;
    // The agent polls the files once a second; watch its plan on the admin endpoint until the
    // new weights are live. (Probing with requests would advance the weighted round robin.)
    wait_for("the new weights", Duration::from_secs(15), || {
        topo.net
            .gateway
            .command("curl")
            .args(["-s", "http://127.0.0.1:9901/debug/plan"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("\"weight\": 200"))
    })?;
    let weighted = hostname_round(&topo)?;
    print_counts(&weighted);

    println!(
        "\n== L4: http://{GATEWAY}:{L4_PORT}/ served in the kernel; 200 fresh connections (Connection: close)"
    );
    // The kernel half loads (the verifier runs) while L7 already serves; on a busy machine
    // that can take longer than the L7 rounds above. Its listener is in the pinned maps once
    // the agent programmed it.
    let inspect = || {
        Command::new(&bins.splitter)
            .arg("inspect")
            .arg("--pin-dir")
            .arg(&pin_dir)
            .output()
    };
    wait_for(
        "the L4 listener in the kernel",
        Duration::from_secs(60),
        || {
            inspect().is_ok_and(|o| {
                String::from_utf8_lossy(&o.stdout).contains(&format!("[{GATEWAY}:{L4_PORT}/tcp]"))
            })
        },
    )
    .with_context(|| format!("agent log: {}", log.display()))?;
    let url = format!("http://{GATEWAY}:{L4_PORT}/l4?n=[1-200]");
    let out = topo.curl(&["-s", "-H", "Connection: close", "-w", "\\n", &url])?;
    let mut names = Vec::new();
    let mut peers = Vec::new();
    for line in out.lines().filter(|l| !l.is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("echo reply: {line}"))?;
        names.push(v["name"].as_str().unwrap_or("?").to_owned());
        let peer = v["peer"].as_str().unwrap_or("?");
        peers.push(peer.rsplit_once(':').map_or(peer, |(ip, _)| ip).to_owned());
    }
    print_counts(&uniq_c(names.into_iter()));
    println!(
        "    client addresses the backends saw: {:?} (the client is {CLIENT})",
        uniq_c(peers.into_iter())
    );
    let inspect = inspect()?;
    println!(
        "\n== splitter inspect (the kernel's live table and counters)\n{}",
        String::from_utf8_lossy(&inspect.stdout)
    );

    bpftool_dumps(&pin_dir);

    println!("demo: cleaning up");
    drop(agent);
    let _ = Command::new(&bins.splitter)
        .args(["detach", "--iface", &topo.net.front.b])
        .arg("--pin-dir")
        .arg(&pin_dir)
        .status();
    let guide = check_guide(&even, &weighted);
    let cluster = crate::demo_cluster::run(&bins);
    guide.and(cluster)
}

/// What `bpftool` shows of the maps (docs/operators.md quotes it): the whole `VIPS` hash, and
/// the first entries of `ROUTES` and `BACKENDS`, which are arrays of thousands of slots.
fn bpftool_dumps(pin_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(pin_dir) else {
        return;
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    println!(
        "== pinned maps in {}: {}",
        pin_dir.display(),
        names.join(" ")
    );
    let vips = pin_dir.join("VIPS");
    bpftool(&["map", "dump", "pinned", &vips.to_string_lossy()]);
    for (map, keys) in [("ROUTES", 1u32), ("BACKENDS", 2)] {
        let path = pin_dir.join(map);
        for key in 0..keys {
            let bytes = key.to_le_bytes().map(|b| b.to_string());
            let mut args = vec!["map", "lookup", "pinned"];
            let path = path.to_string_lossy();
            args.push(&path);
            args.push("key");
            args.extend(bytes.iter().map(String::as_str));
            bpftool(&args);
        }
    }
}

fn bpftool(args: &[&str]) {
    match Command::new("bpftool").args(args).output() {
        Ok(o) => println!(
            "\n== bpftool {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => println!("bpftool: {e}"),
    }
}

/// The journey must come out exactly: 100/100, then 133/67.
fn check_guide(
    even: &BTreeMap<String, usize>,
    weighted: &BTreeMap<String, usize>,
) -> anyhow::Result<()> {
    let mut e: Vec<usize> = even.values().copied().collect();
    let mut w: Vec<usize> = weighted.values().copied().collect();
    e.sort_unstable();
    w.sort_unstable();
    if e != [100, 100] || w != [67, 133] {
        bail!("the journey did not come out exactly: {even:?} then {weighted:?}");
    }
    println!("demo: 100/100, then 133/67: as the guide says");
    Ok(())
}
