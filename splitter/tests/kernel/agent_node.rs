//! The agent process on a node that is not set up for it: no BPF filesystem where the pins go,
//! no `--iface`. Each agent runs in its own network namespace (a dummy interface as the node's
//! NIC) and, where it mounts, in a private mount namespace, so the host's /sys/fs/bpf is never
//! touched.

use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use testbed::{ChildGuard, NetNs};

/// A namespace whose interface `d0` (a veth, its peer `d0p` in the same namespace: this
/// kernel has no dummy driver) holds `10.252.0.1/24` and the default route.
fn node() -> NetNs {
    let ns = NetNs::new("node").expect("netns");
    ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d0p"])
        .expect("veth");
    ns.ip(&["addr", "add", "10.252.0.1/24", "dev", "d0"])
        .expect("addr");
    for dev in ["d0", "d0p"] {
        ns.ip(&["link", "set", dev, "up"]).expect("up");
    }
    ns.ip(&[
        "route",
        "add",
        "default",
        "via",
        "10.252.0.254",
        "dev",
        "d0",
    ])
    .expect("default route");
    ns
}

/// `curl -s` of the admin endpoint inside `ns`: (status, body).
fn admin(ns: &NetNs, path: &str) -> (String, String) {
    let out = ns
        .command("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .arg(format!("http://127.0.0.1:9901{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_owned(), body.to_owned())
}

fn wait_for(what: &str, log: &Path, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!(
        "timed out waiting for {what}; agent log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// `splitter run` in `ns` through `sh -c script`, where the script's `$AGENT` is the binary
/// and `$MANIFESTS` an empty manifest directory; output to `log`.
fn spawn(ns: &NetNs, wrapper: &[&str], script: &str, dir: &Path, log: &Path) -> ChildGuard {
    let manifests = dir.join("m");
    std::fs::create_dir_all(&manifests).expect("manifests");
    let out = std::fs::File::create(log).expect("log");
    let mut cmd = match wrapper.split_first() {
        Some((program, args)) => {
            let mut cmd = ns.command(program);
            cmd.args(args).arg("sh");
            cmd
        }
        None => ns.command("sh"),
    };
    let child = cmd
        .args(["-c", script])
        .env("AGENT", env!("CARGO_BIN_EXE_splitter"))
        .env("MANIFESTS", &manifests)
        .env("DIR", dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().expect("log"))
        .stderr(out)
        .spawn()
        .expect("spawn the agent");
    ChildGuard(child)
}

/// With nothing mounted where the pins go (a tmpfs stands for a node's bare /sys/fs), the agent
/// mounts a BPF filesystem there and serves its kernel half.
#[test]
fn the_agent_mounts_bpffs_where_the_pins_go() {
    if !testbed::require_root("the_agent_mounts_bpffs_where_the_pins_go") {
        return;
    }
    let ns = node();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("agent.log");
    std::fs::create_dir(dir.path().join("sys")).expect("mount point");
    // Private mounts: the tmpfs and the bpffs go away with the agent's mount namespace.
    let _agent = spawn(
        &ns,
        &["unshare", "--mount", "--propagation", "private", "--"],
        r#"mount -t tmpfs splitter-test "$DIR/sys" && mkdir "$DIR/sys/bpf" && touch "$DIR/sys/other" &&
           exec "$AGENT" run --manifests "$MANIFESTS" --iface d0 --admin 127.0.0.1:9901 \
                --pin-dir "$DIR/sys/bpf/splitter/v1""#,
        dir.path(),
        &log,
    );
    wait_for("the kernel half to serve", &log, || {
        admin(&ns, "/debug/l4").1.contains("\"serving\": true")
    });
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(
        text.contains("mounted a BPF filesystem for the pins")
            && text.contains(&format!("{}/sys/bpf", dir.path().display())),
        "{text}"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("sys"))
            .expect("sys")
            .count(),
        0,
        "the host's view of the directory is untouched"
    );
}

/// Where a BPF filesystem cannot be mounted without hiding files, the agent says so precisely,
/// keeps its L7 half up and its kernel half off.
#[test]
fn a_pin_dir_on_no_bpffs_is_reported_precisely() {
    if !testbed::require_root("a_pin_dir_on_no_bpffs_is_reported_precisely") {
        return;
    }
    let ns = node();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("keep"), "not a pin").expect("file");
    let log = dir.path().join("agent.log");
    let mut agent = spawn(
        &ns,
        &[],
        r#"exec "$AGENT" run --manifests "$MANIFESTS" --iface d0 --admin 127.0.0.1:9901 \
                --pin-dir "$DIR/pins/v1""#,
        dir.path(),
        &log,
    );
    wait_for("the reason on /readyz", &log, || {
        admin(&ns, "/readyz").1.contains("not a BPF filesystem")
    });
    let (code, body) = admin(&ns, "/readyz");
    assert_eq!(code, "503");
    let expected = format!(
        "pin directory {}/pins/v1: {} is not a BPF filesystem and not empty",
        dir.path().display(),
        dir.path().display()
    );
    assert!(body.contains(&expected), "{body}");
    assert!(!body.contains("os error"), "{body}");
    assert!(agent.child().try_wait().expect("wait").is_none());
    assert!(dir.path().join("keep").exists());
    drop(agent);
    // Nothing was mounted over the directory.
    let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
    assert!(
        !mounts.contains(&dir.path().display().to_string()),
        "{mounts}"
    );
}

/// Without `--iface`, the agent attaches to the interface of the default route: IPv4's, or
/// IPv6's on a node that has no IPv4 default.
#[test]
fn without_iface_the_default_routes_interface_is_used() {
    if !testbed::require_root("without_iface_the_default_routes_interface_is_used") {
        return;
    }
    for v6_only in [false, true] {
        let ns = NetNs::new("dflt").expect("netns");
        ns.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up0p"])
            .expect("veth");
        ns.ip(&[
            "link", "add", "other", "type", "veth", "peer", "name", "otherp",
        ])
        .expect("veth");
        for dev in ["up0", "up0p", "other", "otherp"] {
            ns.ip(&["link", "set", dev, "up"]).expect("up");
        }
        ns.ip(&["addr", "add", "10.253.0.1/24", "dev", "other"])
            .expect("addr");
        if v6_only {
            ns.ip(&["addr", "add", "fd00:253::1/64", "dev", "up0", "nodad"])
                .expect("addr");
            ns.ip(&[
                "-6",
                "route",
                "add",
                "default",
                "via",
                "fd00:253::fe",
                "dev",
                "up0",
            ])
            .expect("default route");
        } else {
            ns.ip(&["addr", "add", "10.254.0.1/24", "dev", "up0"])
                .expect("addr");
            ns.ip(&[
                "route",
                "add",
                "default",
                "via",
                "10.254.0.254",
                "dev",
                "up0",
            ])
            .expect("default route");
        }
        let pins = testbed::BpfFs::new().expect("bpffs");
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("agent.log");
        let script = format!(
            r#"exec "$AGENT" run --manifests "$MANIFESTS" --admin 127.0.0.1:9901 --pin-dir {}/v1"#,
            pins.path().display()
        );
        let agent = spawn(&ns, &[], &script, dir.path(), &log);
        wait_for("the kernel half to serve", &log, || {
            admin(&ns, "/debug/l4").1.contains("\"serving\": true")
        });
        let state: serde_json::Value =
            serde_json::from_str(&admin(&ns, "/debug/l4").1).expect("JSON");
        assert_eq!(
            state["ifaces"],
            serde_json::json!(["up0"]),
            "v6 only: {v6_only}"
        );
        let text = std::fs::read_to_string(&log).expect("log");
        assert!(
            text.contains("attaching to the interface of the default route")
                && text.contains("up0"),
            "{text}"
        );
        drop(agent);
    }
}

/// `--admin` bound wider than loopback: probes and metrics answer anyone, `/debug/*` (every
/// backend address is in the plan) only loopback peers.
#[test]
fn debug_pages_answer_loopback_peers_only() {
    if !testbed::require_root("debug_pages_answer_loopback_peers_only") {
        return;
    }
    let ns = node();
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("agent.log");
    // An interface that does not exist keeps the kernel half off: the default pin dir (the
    // host's /sys/fs/bpf) is never touched.
    let _agent = spawn(
        &ns,
        &[],
        r#"exec "$AGENT" run --manifests "$MANIFESTS" --iface no-such-if --admin 0.0.0.0:9902"#,
        dir.path(),
        &log,
    );
    let get = |host: &str, path: &str| {
        let out = ns
            .command("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("http://{host}:9902{path}"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    wait_for("the admin endpoint", &log, || {
        get("127.0.0.1", "/healthz") == "200"
    });
    // From the node's own address: the peer is 10.252.0.1, not loopback.
    for (path, code) in [
        ("/healthz", "200"),
        ("/metrics", "200"),
        ("/debug/plan", "403"),
        ("/debug/status", "403"),
        ("/debug/l4", "403"),
        ("/debug/heap", "403"),
    ] {
        assert_eq!(get("10.252.0.1", path), code, "{path} from 10.252.0.1");
    }
    for path in ["/debug/plan", "/debug/status", "/debug/l4", "/debug/heap"] {
        assert_eq!(get("127.0.0.1", path), "200", "{path} from loopback");
    }
}
