//! A TLS passthrough listener whose one TLSRoute takes every server name is planned L4 and
//! split in the kernel, exactly like a TCPRoute: the agent as a real process in a gateway
//! namespace, TLS backends (`splitter-echo --tls-cert`, each with its own certificate) in
//! theirs, and a client that verifies the certificate against the test CA through the VIP.
//! `splitter inspect` shows the route and its new flows; the agent never binds the port.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Write},
    net::TcpStream,
    path::PathBuf,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use rustls::{
    ClientConfig, ClientConnection, RootCertStore, StreamOwned,
    crypto::ring,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use testbed::{AddressPlan, BpfFs, ChildGuard, GatewayNet};

const NET: AddressPlan = AddressPlan {
    front: "10.236.0",
    backends: "10.237",
    first: 1,
};
/// `NET.gateway()`, port 8443: the VIP.
const VIP: &str = "10.236.0.2:8443";

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("../splitter-plan/tests/fixtures/tls/{name}"))
}

fn leaf_der(cert: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(&std::fs::read(fixture(&format!("{cert}.crt"))).expect("PEM"))
        .expect("PEM")
        .to_vec()
}

const MANIFESTS: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: splitter}
spec: {controllerName: splitter.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: tls, namespace: default}
spec:
  gatewayClassName: splitter
  listeners:
  - {name: passthrough, protocol: TLS, port: 8443, tls: {mode: Passthrough}}
---
# No hostnames (v1alpha2): the route takes every name, so the kernel needs no ClientHello.
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: all, namespace: default}
spec:
  parentRefs: [{name: tls}]
  rules:
  - backendRefs: [{name: tls-a, port: 443}, {name: tls-a2, port: 443}]
---
apiVersion: v1
kind: Service
metadata: {name: tls-a, namespace: default}
spec:
  ports: [{name: tls, port: 443, targetPort: 8443}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: tls-a-1, namespace: default, labels: {kubernetes.io/service-name: tls-a}}
addressType: IPv4
ports: [{name: tls, port: 8443}]
endpoints: [{addresses: [10.237.1.2]}]
---
apiVersion: v1
kind: Service
metadata: {name: tls-a2, namespace: default}
spec:
  ports: [{name: tls, port: 443, targetPort: 8443}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: tls-a2-1, namespace: default, labels: {kubernetes.io/service-name: tls-a2}}
addressType: IPv4
ports: [{name: tls, port: 8443}]
endpoints: [{addresses: [10.237.2.2]}]
";

/// One verified TLS connection to the VIP asking for `sni`: the pod named inside the
/// encrypted stream and the leaf certificate the client verified.
fn tls_pod(config: &Arc<ClientConfig>, sni: &str) -> std::io::Result<(String, Vec<u8>)> {
    let tcp = TcpStream::connect_timeout(&VIP.parse().expect("VIP"), Duration::from_secs(3))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    let conn = ClientConnection::new(
        config.clone(),
        ServerName::try_from(sni.to_string()).expect("name"),
    )
    .map_err(std::io::Error::other)?;
    let mut tls = StreamOwned::new(conn, tcp);
    let mut line = String::new();
    let mut reader = BufReader::new(&mut tls);
    reader.read_line(&mut line)?;
    if line != splitter::echo_tls::WELCOME {
        return Err(std::io::Error::other(format!("welcome {line:?}")));
    }
    drop(reader);
    tls.write_all(b"TEST\n")?;
    tls.flush()?;
    let mut answer = String::new();
    BufReader::new(&mut tls).read_line(&mut answer)?;
    let reply: splitter::echo_tls::TlsEchoReply =
        serde_json::from_str(&answer).map_err(std::io::Error::other)?;
    let leaf = tls.conn.peer_certificates().expect("a certificate")[0].to_vec();
    Ok((reply.pod, leaf))
}

fn inspect(pins: &std::path::Path) -> String {
    Command::new(env!("CARGO_BIN_EXE_splitter"))
        .arg("inspect")
        .arg("--pin-dir")
        .arg(pins)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// `new flows N` of the VIP's route in `splitter inspect`.
fn new_flows(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.contains(&format!("[{VIP}/tcp]")))?;
    line.split("new flows ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[test]
fn a_catch_all_tlsroute_listener_is_split_in_the_kernel_with_tls_end_to_end() {
    if !testbed::require_root(
        "a_catch_all_tlsroute_listener_is_split_in_the_kernel_with_tls_end_to_end",
    ) {
        return;
    }
    let net = GatewayNet::new("tls", NET, 2).expect("topology");
    net.client_sends_full_checksums().expect("ethtool");
    let _backends: Vec<ChildGuard> = net
        .backends
        .iter()
        .zip([("tls-a-pod", "a"), ("tls-a2-pod", "a2")])
        .map(|(ns, (name, cert))| {
            ChildGuard(
                ns.command(env!("CARGO_BIN_EXE_splitter-echo"))
                    .args(["--listen", "0.0.0.0:8443", "--name", name, "--tls-cert"])
                    .arg(fixture(&format!("{cert}.crt")))
                    .arg("--tls-key")
                    .arg(fixture(&format!("{cert}.key")))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start splitter-echo --tls-cert"),
            )
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("m")).expect("dir");
    std::fs::write(dir.path().join("m/tls.yaml"), MANIFESTS).expect("manifests");
    let pins = BpfFs::new().expect("bpffs");
    let pin_dir = pins.path().join("v1");
    let log = std::fs::File::create(dir.path().join("agent.log")).expect("log");
    let _agent = ChildGuard(
        net.gateway
            .command(env!("CARGO_BIN_EXE_splitter"))
            .arg("run")
            .arg("--manifests")
            .arg(dir.path().join("m"))
            .args([
                "--iface",
                net.gateway_iface(),
                "--admin",
                "127.0.0.1:9901",
                "--pin-dir",
            ])
            .arg(&pin_dir)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start splitter run"),
    );
    let agent_log = || std::fs::read_to_string(dir.path().join("agent.log")).unwrap_or_default();
    let started = Instant::now();
    while new_flows(&inspect(&pin_dir)).is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the kernel never served {VIP}; agent log:\n{}",
            agent_log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The plan says why: L4, one route takes every name.
    let plan = net
        .gateway
        .command("curl")
        .args(["-s", "http://127.0.0.1:9901/debug/plan"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    assert!(plan.contains("takes every server name"), "{plan}");
    let before = new_flows(&inspect(&pin_dir)).unwrap_or(0);

    let mut roots = RootCertStore::empty();
    roots
        .add(
            CertificateDer::from_pem_slice(&std::fs::read(fixture("ca.crt")).expect("CA"))
                .expect("PEM"),
        )
        .expect("CA");
    let config = Arc::new(
        ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let n = 40;
    let pods: BTreeMap<String, usize> = net.client.run(|| {
        let mut pods = BTreeMap::new();
        for i in 0..n {
            let (pod, leaf) =
                tls_pod(&config, "a.example.com").unwrap_or_else(|e| panic!("connection {i}: {e}"));
            // Each pod presents its own certificate: the client verified the one it reached.
            let cert = if pod == "tls-a-pod" { "a" } else { "a2" };
            assert_eq!(leaf, leaf_der(cert), "{pod}");
            *pods.entry(pod).or_default() += 1;
        }
        pods
    });
    assert_eq!(pods.values().sum::<usize>(), n);
    assert_eq!(pods.len(), 2, "both backends take connections: {pods:?}");
    let text = inspect(&pin_dir);
    let after = new_flows(&text).unwrap_or(0);
    assert!(
        after >= before + n as u64,
        "the kernel counted the flows:\n{text}"
    );
    // No socket listens on the port in the gateway: the kernel served every connection.
    let listening = net
        .gateway
        .command("ss")
        .args(["-Hltn", "sport = :8443"])
        .output()
        .expect("ss");
    assert!(listening.status.success());
    assert_eq!(
        String::from_utf8_lossy(&listening.stdout).trim(),
        "",
        "{}",
        agent_log()
    );
}
