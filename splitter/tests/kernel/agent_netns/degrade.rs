//! The agent degrades instead of exiting: with an `--iface` that does not exist yet, L7 serves
//! at once, the kernel half is reported off (readiness, `/debug/l4`, metrics), and it attaches
//! and serves L4 as soon as the interface appears, and again when it is deleted and created
//! again.

use std::process::Command;

use super::{GATEWAY, Rig, SERVICES, guide_route, l4_route, status::listener_programmed, wait_for};

/// `curl -s` of the admin endpoint inside the gateway namespace: (status, body).
pub(super) fn admin(rig: &Rig, path: &str) -> (String, String) {
    let out = rig
        .net
        .gateway
        .command("curl")
        .args(["-s", "-w", "\n%{http_code}"])
        .arg(format!("http://127.0.0.1:9901{path}"))
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.to_owned(), body.to_owned())
}

/// The kernel's count of confirmed handshakes, from `/metrics` (read from the pinned maps,
/// so it survives a re-attach).
fn confirmed(rig: &Rig) -> Option<u64> {
    admin(rig, "/metrics")
        .1
        .lines()
        .find_map(|l| l.strip_prefix("splitter_l4_events_total{event=\"confirmed\"} "))
        .and_then(|n| n.trim().parse().ok())
}

fn inspect(rig: &Rig) -> String {
    Command::new(env!("CARGO_BIN_EXE_splitter"))
        .arg("inspect")
        .arg("--pin-dir")
        .arg(rig.pin_dir())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

#[test]
fn an_interface_that_appears_late_is_attached_and_l7_serves_meanwhile() {
    if !testbed::require_root("an_interface_that_appears_late_is_attached_and_l7_serves_meanwhile")
    {
        return;
    }
    let rig = Rig::new();
    rig.write("services.yaml", SERVICES);
    rig.write("route.yaml", &guide_route(None));
    rig.write("l4.yaml", &l4_route(1, 1));
    let late = testbed::unique_name("late");
    let mut agent = rig.start_agent_on(&[&late], &[]);

    wait_for("the L7 listener to answer", &rig, || {
        rig.curl(&["-s", &format!("http://{GATEWAY}/echo/hostname")])
            .is_some_and(|b| b.starts_with("echo"))
    });
    wait_for("the kernel half to be reported off", &rig, || {
        admin(&rig, "/debug/l4").1.contains("does not exist")
    });
    let (code, body) = admin(&rig, "/readyz");
    assert_eq!(code, "503", "{body}");
    assert!(
        body.contains(&late) && body.contains("does not exist"),
        "{body}"
    );
    let metrics = admin(&rig, "/metrics").1;
    assert!(metrics.contains("splitter_l4_up 0"), "{metrics}");
    // The L4 listener is not programmed on this node, and says why; L7 is.
    let (status, reason, message) = listener_programmed(&rig, "l4", "tcp");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "Pending"),
        "{message}"
    );
    assert!(
        message.contains("L4 half off") && message.contains(&late),
        "{message}"
    );
    assert_eq!(listener_programmed(&rig, "kong", "proxy").0, "True");
    assert!(
        agent.child().try_wait().expect("wait").is_none(),
        "the agent exited: {}",
        rig.agent_log()
    );

    // The interface appears: a second link to the client, with its own subnet.
    let peer = format!("{late}p");
    let create = || {
        rig.net
            .gateway
            .ip(&[
                "link",
                "add",
                &late,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
                "netns",
                rig.net.client.name(),
            ])
            .expect("late veth");
        rig.net
            .gateway
            .ip(&["addr", "add", "10.249.0.2/24", "dev", &late])
            .expect("addr");
        rig.net
            .gateway
            .ip(&["link", "set", &late, "up"])
            .expect("up");
        rig.net
            .client
            .ip(&["addr", "add", "10.249.0.1/24", "dev", &peer])
            .expect("addr");
        rig.net
            .client
            .ip(&["link", "set", &peer, "up"])
            .expect("up");
        rig.net
            .client
            .exec("ethtool", &["-K", &peer, "tx", "off"])
            .expect("ethtool");
    };
    create();

    wait_for(
        "the kernel to serve the late interface's address",
        &rig,
        || inspect(&rig).contains("[10.249.0.2:8080/tcp]"),
    );
    wait_for("an L4 connection through the late interface", &rig, || {
        rig.curl(&["-s", "--max-time", "2", "http://10.249.0.2:8080/hostname"])
            .is_some_and(|b| b.starts_with("echo"))
    });
    let (code, body) = admin(&rig, "/readyz");
    assert_eq!(code, "200", "{body}");
    let metrics = admin(&rig, "/metrics").1;
    assert!(metrics.contains("splitter_l4_up 1"), "{metrics}");
    // The kernel's own counters: the connection's handshake was confirmed.
    let confirmed_first = confirmed(&rig);
    assert!(confirmed_first.is_some_and(|n| n >= 1), "{metrics}");
    let (status, _, message) = listener_programmed(&rig, "l4", "tcp");
    assert_eq!(status, "True", "{message}");
    assert!(
        rig.curl(&["-s", &format!("http://{GATEWAY}/echo/hostname")])
            .is_some_and(|b| b.starts_with("echo")),
        "L7 still serves"
    );

    // The interface is deleted (its programs go with it) and created again, as a CNI may do:
    // the agent notices, reports the kernel half off, and attaches to the new device.
    rig.net
        .gateway
        .ip(&["link", "del", &late])
        .expect("delete the interface");
    wait_for("the lost interface to be reported", &rig, || {
        let (code, body) = admin(&rig, "/readyz");
        code == "503" && body.contains(&late)
    });
    create();
    // The pinned maps kept the listener's VIP, so the kernel serves the moment the programs
    // are attached, a few ms before the agent reports the half back: wait for the report,
    // then for a connection the kernel counts.
    wait_for("the agent to report the kernel half back", &rig, || {
        admin(&rig, "/readyz").0 == "200"
    });
    wait_for(
        "an L4 connection through the re-created interface, confirmed by the kernel",
        &rig,
        || {
            rig.curl(&["-s", "--max-time", "2", "http://10.249.0.2:8080/hostname"])
                .is_some_and(|b| b.starts_with("echo"))
                && confirmed(&rig) > confirmed_first
        },
    );
    assert!(
        rig.agent_log().contains("attaching afresh"),
        "the defunct pinned links were replaced: {}",
        rig.agent_log()
    );
    drop(agent);
    let _ = Command::new(env!("CARGO_BIN_EXE_splitter"))
        .args(["detach", "--iface", &late, "--pin-dir"])
        .arg(rig.pin_dir())
        .status();
}

/// One Gateway with one more L4 listener than the kernel has route slots: the route left over
/// is named on `/debug/l4` and not served, and every other one is.
#[test]
fn a_route_over_the_route_limit_is_left_out_and_the_others_are_served() {
    if !testbed::require_root("a_route_over_the_route_limit_is_left_out_and_the_others_are_served")
    {
        return;
    }
    let max = splitter_common::l4::MAX_ROUTES as u16;
    let rig = Rig::new();
    rig.write("services.yaml", SERVICES);
    let listeners: Vec<String> = (0..=max)
        .map(|i| format!("{{name: l{i}, protocol: HTTP, port: {}}}", 8100 + i))
        .collect();
    rig.write(
        "many.yaml",
        &format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: many, namespace: default}}
spec:
  gatewayClassName: splitter
  listeners: [{}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: all, namespace: default}}
spec:
  parentRefs: [{{name: many}}]
  rules:
  - backendRefs: [{{name: echo, port: 1027}}]
",
            listeners.join(", ")
        ),
    );
    let _agent = rig.start_agent();
    wait_for("one route reported over the limit", &rig, || {
        admin(&rig, "/debug/l4")
            .1
            .contains("more than 32 L4 routes")
    });
    let state: serde_json::Value = serde_json::from_str(&admin(&rig, "/debug/l4").1).expect("JSON");
    let off = state["routes_off"].as_object().expect("routes_off");
    assert_eq!(off.len(), 1, "{state}");
    let off_port: u16 = off
        .keys()
        .next()
        .and_then(|k| k.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("the key starts with the port");
    assert_eq!(state["serving"], true, "{state}");
    let served: Vec<u16> = (8100..=8100 + max).filter(|p| *p != off_port).collect();
    assert_eq!(served.len(), max as usize);
    let text = inspect(&rig);
    for port in &served {
        assert!(
            text.contains(&format!("[{GATEWAY}:{port}/tcp]")),
            "{port} in the kernel:\n{text}"
        );
    }
    assert!(
        !text.contains(&format!("[{GATEWAY}:{off_port}/tcp]")),
        "{text}"
    );
    // The Gateway's status says which listener this node left out, and why.
    let off_listener = format!("l{}", off_port - 8100);
    let (status, reason, message) = listener_programmed(&rig, "many", &off_listener);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "Pending"),
        "{message}"
    );
    assert!(
        message.contains("left out of the kernel") && message.contains("more than 32 L4 routes"),
        "{message}"
    );
    assert_eq!(
        listener_programmed(&rig, "many", &format!("l{}", served[0] - 8100)).0,
        "True"
    );
    for port in [served[0], served[served.len() - 1]] {
        assert!(
            rig.curl(&[
                "-s",
                "--max-time",
                "5",
                &format!("http://{GATEWAY}:{port}/hostname")
            ])
            .is_some_and(|b| b.starts_with("echo")),
            "port {port}: {}",
            rig.agent_log()
        );
    }
}
