//! The agent as a process on translated manifests: `splitter run --manifests FILE` reads them
//! from a file, as on a node in files mode, serves HTTPRouteWeight's route with the upstream
//! shares and shows the route's statuses on `/debug/status`; and passes TLS through by SNI for
//! TLSRouteSimpleSameNamespace.
//!
//! The agent runs unprivileged (under root, the test drops to `nobody` with `setpriv`) with an
//! `--iface` that does not exist, so its kernel half waits and never loads: a test on the host
//! must not mount or attach anything (the namespace tests run the agent as root).

use std::{net::SocketAddr, process::Stdio, time::Duration};

use crate::harness::*;

struct Agent(std::process::Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `splitter run` as `nobody` (under root) on `t`'s translation, with no kernel half; returns
/// the process (killed on drop), its admin address and the directory holding its files.
fn start_agent(t: &Translated) -> Option<(Agent, SocketAddr, tempfile::TempDir)> {
    let setpriv = std::process::Command::new("setpriv")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if testbed::is_root() && !setpriv {
        eprintln!("SKIPPED: root without setpriv (util-linux) to run the agent as nobody");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    // Readable by `nobody`.
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let manifests = dir.path().join("conformance.yaml");
    std::fs::write(&manifests, t.yaml()).unwrap();
    let admin = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let bin = env!("CARGO_BIN_EXE_splitter");
    let mut cmd = if testbed::is_root() {
        let mut c = std::process::Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", bin]);
        c
    } else {
        std::process::Command::new(bin)
    };
    let agent = Agent(
        cmd.arg("run")
            .arg("--manifests")
            .arg(&manifests)
            .args(["--iface", "splitter-none0", "--admin", &admin.to_string()])
            .arg("--pin-dir")
            .arg(dir.path().join("pins"))
            .env_remove("NODE_NAME")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start splitter run"),
    );
    Some((agent, admin, dir))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_process_serves_httproute_weight_from_files() {
    let Some(t) = Translated::of(&["httproute-weight.yaml"]).await else {
        return;
    };
    let Some((_agent, admin, _dir)) = start_agent(&t) else {
        return;
    };
    let gw: SocketAddr = t.ports[&(INFRA.to_owned(), "same-namespace".to_owned(), 80)];
    let mut up = false;
    for _ in 0..200 {
        if matches!(round_trip(gw, "GET", "", "/", &[]).await, Ok(r) if r.status == 200) {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the agent serves {gw}");
    expect_weights(
        gw,
        &[
            ("infra-backend-v1", 0.7),
            ("infra-backend-v2", 0.3),
            ("infra-backend-v3", 0.0),
        ],
    )
    .await;

    let (code, body) = get_text(admin, "/debug/status").await.expect("admin");
    assert_eq!(code, 200, "{body}");
    let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let route = status["objects"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["kind"] == "HTTPRoute" && o["name"] == "weighted-backends")
        .unwrap_or_else(|| panic!("no HTTPRoute weighted-backends: {body}"));
    let parent = &route["status"]["parents"][0];
    assert_eq!(parent["parentRef"]["name"], "same-namespace", "{route}");
    for type_ in ["Accepted", "ResolvedRefs"] {
        let ok = parent["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == type_ && c["status"] == "True" && c["reason"] == type_);
        assert!(ok, "{type_}: {route}");
    }
}

/// TLSRouteSimpleSameNamespace through the agent process: its passthrough listener takes
/// `abc.example.com` to `tcp-backend` over TLS the backend terminates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_process_passes_tls_through_by_sni() {
    let Some(t) = Translated::of(&["tlsroute-simple-same-namespace.yaml"]).await else {
        return;
    };
    let Some((_agent, _admin, _dir)) = start_agent(&t) else {
        return;
    };
    let gw: SocketAddr = t.ports[&(INFRA.to_owned(), "gateway-tlsroute".to_owned(), 443)];
    let mut answer = Err(String::new());
    for _ in 0..200 {
        answer = crate::tcp::tcp_over_tls(gw, "abc.example.com").await;
        if answer.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a = answer.expect("the agent passes the connection through");
    assert_eq!((a.is_tls.as_str(), a.namespace.as_str()), ("true", INFRA));
    assert!(a.pod.starts_with("tcp-backend-"), "{}", a.pod);
    assert_eq!(a.server_name, "abc.example.com");
    assert_eq!(a.leaf, crate::tcp::backend_leaf());
    assert!(
        crate::tcp::tcp_over_tls(gw, "nobody.example.org")
            .await
            .is_err(),
        "a name no route takes is refused"
    );
}
