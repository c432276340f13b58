//! Truthful status: what this node could not apply shows on `/readyz` and as `Programmed=False`
//! in the statuses it would write (`/debug/status`), and both recover when the cause goes.

use super::degrade::admin;
use super::{GATEWAY, Rig, SERVICES, guide_route, wait_for};

/// The statuses `/debug/status` shows, as JSON.
fn statuses(rig: &Rig) -> serde_json::Value {
    let (code, body) = admin(rig, "/debug/status");
    assert_eq!(code, "200", "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// The status of Gateway `default/name`.
fn gateway(all: &serde_json::Value, name: &str) -> serde_json::Value {
    all["objects"]
        .as_array()
        .and_then(|o| {
            o.iter().find(|o| {
                o["kind"] == "Gateway" && o["namespace"] == "default" && o["name"] == name
            })
        })
        .map(|o| o["status"].clone())
        .unwrap_or_else(|| panic!("no Gateway {name} in {all}"))
}

/// (status, reason, message) of the `Programmed` condition in `conditions`.
fn programmed(conditions: &serde_json::Value) -> (String, String, String) {
    let c = conditions
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Programmed"))
        .unwrap_or_else(|| panic!("no Programmed in {conditions}"));
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
    (s("status"), s("reason"), s("message"))
}

/// `Programmed` of listener `listener` of Gateway `default/name`.
pub(super) fn listener_programmed(
    rig: &Rig,
    name: &str,
    listener: &str,
) -> (String, String, String) {
    let g = gateway(&statuses(rig), name);
    let l = g["listeners"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["name"] == listener))
        .unwrap_or_else(|| panic!("no listener {listener} in {g}"))
        .clone();
    programmed(&l["conditions"])
}

/// A Gateway on the node's address whose port a host socket already holds: the agent keeps
/// running, `/readyz` is 503 naming the address and the OS error, the listener and its Gateway
/// are `Programmed=False` naming the node, and the other Gateway is unaffected. Once the socket
/// is gone, the retry binds the port: traffic flows, `/readyz` is 200, `Programmed=True`.
#[test]
fn a_listener_whose_port_is_taken_is_not_programmed_until_the_port_is_free() {
    if !testbed::require_root(
        "a_listener_whose_port_is_taken_is_not_programmed_until_the_port_is_free",
    ) {
        return;
    }
    let rig = Rig::new();
    let held_at = format!("{GATEWAY}:8095");
    let squatter = rig
        .net
        .gateway
        .run(|| std::net::TcpListener::bind(held_at.as_str()).expect("the other socket"));
    rig.write("services.yaml", SERVICES);
    rig.write("route.yaml", &guide_route(None));
    rig.write(
        "held.yaml",
        &format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: held, namespace: default}}
spec:
  gatewayClassName: splitter
  addresses: [{{type: IPAddress, value: {GATEWAY}}}]
  listeners: [{{name: http, protocol: HTTP, port: 8095}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: held
  namespace: default
  annotations: {{konghq.com/strip-path: \"true\"}}
spec:
  parentRefs: [{{name: held}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /echo}}}}]
    backendRefs: [{{name: echo, port: 1027}}]
"
        ),
    );
    let node = testbed::unique_name("node");
    let mut agent = rig.start_agent_with(&["--node-name", &node]);

    wait_for("the free Gateway to answer", &rig, || {
        rig.curl(&["-s", &format!("http://{GATEWAY}/echo/hostname")])
            .is_some_and(|b| b.starts_with("echo"))
    });
    wait_for("/readyz to name the listener it cannot bind", &rig, || {
        let (code, body) = admin(&rig, "/readyz");
        code == "503"
            && body.contains(&format!(
                "cannot listen on {held_at}: Address already in use"
            ))
    });
    let (status, reason, message) = listener_programmed(&rig, "held", "http");
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "Pending"),
        "{message}"
    );
    assert!(
        message.contains(&format!("not programmed on node {node}"))
            && message.contains("Address already in use"),
        "{message}"
    );
    let all = statuses(&rig);
    let (status, _, message) = programmed(&gateway(&all, "held")["conditions"]);
    assert_eq!(status, "False", "{message}");
    assert!(message.contains(&node), "{message}");
    let kong = gateway(&all, "kong");
    assert_eq!(programmed(&kong["conditions"]).0, "True", "{kong}");
    // No spec.addresses: status.addresses are the node's (the agent's interface).
    assert_eq!(
        kong["addresses"],
        serde_json::json!([{"type": "IPAddress", "value": GATEWAY}]),
        "{kong}"
    );
    assert!(
        agent.child().try_wait().expect("wait").is_none(),
        "the agent exited: {}",
        rig.agent_log()
    );

    drop(squatter);
    wait_for("the retry to bind the freed port", &rig, || {
        rig.curl(&[
            "-s",
            "--max-time",
            "2",
            &format!("http://{held_at}/echo/hostname"),
        ])
        .is_some_and(|b| b.starts_with("echo"))
    });
    wait_for("/readyz to be green again", &rig, || {
        admin(&rig, "/readyz").0 == "200"
    });
    let (status, _, message) = listener_programmed(&rig, "held", "http");
    assert_eq!(status, "True", "{message}");
    let all = statuses(&rig);
    assert_eq!(programmed(&gateway(&all, "held")["conditions"]).0, "True");
}
