//! The translation and the upstream comparison rules.
//!
//! [`Suite::start`] reads the upstream base manifests and a test's manifests from
//! `../shared/conformance/gateway-api-v1.5.1/conformance` (data, never copied into the
//! repository; `SPLITTER_CONFORMANCE_DIR` points elsewhere), and translates them into what
//! `splitter run --manifests` serves:
//!
//! - a GatewayClass `splitter` for `splitter.dev/gateway-controller` (the manifests' class is the
//!   template `{GATEWAY_CLASS_NAME}`);
//! - each Gateway gets an address of its own, as in a cluster: `spec.addresses` is a loopback
//!   address `127.N.S.G` unique to the test process (N), the suite (S) and the Gateway (G), and
//!   each listener port P becomes P + 10000 (binding port 80 needs privileges; 10000 and up
//!   stays clear of the ephemeral range). A route's parentRef `port` names the new port too.
//!   The Gateways also get the annotation `splitter.dev/dataplane: l7`: the suite exercises the
//!   proxy, the kernel path has its own tests;
//! - the Secrets the upstream suite creates when it starts (`gateway-conformance-web-backend/
//!   certificate`, `gateway-conformance-infra/tls-validity-checks-certificate` and the
//!   `tls-checks`, `tls-passthrough-checks` and `tls-terminate-checks` ones) are made from the
//!   project's test certificate (`splitter-plan/tests/fixtures/tls/a`), since upstream generates
//!   its own self-signed ones at run time;
//! - each Deployment becomes `replicas` echo pods on loopback ports answering like echo-basic
//!   (over HTTPS with the test certificate when its container has `TLS_SERVER_CERT`, as
//!   upstream's `tls-backend`; with `TCP_ECHO_SERVER` too, port 8443 is upstream's TCP server
//!   over TLS, `tcp-backend`), and each Service one EndpointSlice per selected pod (the
//!   Deployments themselves are skipped, as the agent skips them). A test's own IPv4
//!   EndpointSlice without endpoints gets the pods of infra-backend-v1, one slice per pod, as
//!   HTTPRouteServiceTypes fills it (IPv6 ones stay empty: the pods here have no IPv6 address).
//!
//! The plan is then built from those objects exactly as the agent builds it (`plan::build`) and
//! its L7 tables are served by the real proxy (`L7Listeners`). Requests follow the upstream
//! round tripper: keep-alive off (a connection per request), and each expectation must hold for
//! 3 requests in a row (`RequiredConsecutiveSuccesses`); responses are compared with the rules of
//! `conformance/utils/http` (`CompareRoundTrip`).

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::ring,
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use serde_json::{Value, json};
use splitter::dataplane::proxy::{L7Listeners, Proxy, ProxyConfig, ProxyMetrics};
use splitter_plan::{
    model::{
        Index,
        parse::{Parsed, parse},
    },
    plan::{
        self, Plan, PlanConfig,
        status::{Condition, GatewayStatus, ListenerStatus},
    },
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::echo::{Captured, EchoPod};

pub const INFRA: &str = "gateway-conformance-infra";
pub const WEB: &str = "gateway-conformance-web-backend";
pub const APP: &str = "gateway-conformance-app-backend";

/// Where the upstream manifests are, or `None` (the suite then skips, saying so).
pub fn conformance_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("SPLITTER_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/conformance/gateway-api-v1.5.1/conformance")
        });
    dir.join("base/manifests.yaml").is_file().then_some(dir)
}

fn load(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
        .replace("{GATEWAY_CLASS_NAME}", "splitter");
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("YAML of {}: {e}", path.display()));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn meta(doc: &Value) -> (String, String) {
    (
        doc["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        doc["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// Suites started by this process, for their Gateways' addresses.
static SUITES: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Port `P` of a manifest listener becomes `P + 10000`.
pub const PORT_OFFSET: u16 = 10_000;

/// The translated manifests of the base and `tests`, with the echo pods serving them and the
/// Gateways' listener addresses; `None` when the upstream manifests are not there.
pub struct Translated {
    pub docs: Vec<Value>,
    pub ports: BTreeMap<(String, String, u16), SocketAddr>,
    pub pods: Vec<EchoPod>,
}

impl Translated {
    pub async fn of(tests: &[&str]) -> Option<Self> {
        let Some(dir) = conformance_dir() else {
            eprintln!(
                "SKIPPED: the upstream conformance manifests are not at ../shared/conformance \
                 (set SPLITTER_CONFORMANCE_DIR)"
            );
            return None;
        };
        let mut docs = load(&dir.join("base/manifests.yaml"));
        for t in tests {
            docs.extend(load(&dir.join("tests").join(t)));
        }
        let (docs, ports, pods) = translate(docs).await;
        if let Some(dir) = std::env::var_os("SPLITTER_CONFORMANCE_DUMP") {
            dump(Path::new(&dir), tests, &docs);
        }
        Some(Self { docs, ports, pods })
    }

    /// The documents as one multi-document YAML file (JSON documents are YAML).
    pub fn yaml(&self) -> String {
        self.docs
            .iter()
            .map(|d| serde_json::to_string_pretty(d).expect("JSON"))
            .collect::<Vec<_>>()
            .join("\n---\n")
    }
}

pub struct Suite {
    pub plan: Plan,
    /// (gateway namespace, name, manifest port) -> loopback address serving it.
    ports: BTreeMap<(String, String, u16), SocketAddr>,
    /// Objects the model refused, with why (the agent logs and skips them the same way).
    pub refused: Vec<String>,
    pods: Vec<EchoPod>,
    listeners: Option<L7Listeners>,
    docs: Vec<Value>,
}

impl Suite {
    /// The base manifests plus `tests/<name>` for each of `tests`, translated and served. `None`
    /// when the upstream manifests are not there.
    pub async fn start(tests: &[&str]) -> Option<Self> {
        let Translated { docs, ports, pods } = Translated::of(tests).await?;
        let mut suite = Self {
            plan: plan_of(&docs).0,
            ports,
            refused: Vec::new(),
            pods,
            listeners: Some(L7Listeners::new(Proxy::new(
                ProxyConfig {
                    header_read_timeout: Duration::from_secs(5),
                    drain_timeout: Duration::from_secs(5),
                    ..ProxyConfig::default()
                },
                ProxyMetrics::default(),
            ))),
            docs,
        };
        suite.apply().await;
        Some(suite)
    }

    /// Rebuilds the plan from the current documents and applies it (a manifest edit).
    async fn apply(&mut self) {
        let (plan, refused) = plan_of(&self.docs);
        self.plan = plan;
        self.refused = refused;
        let report = self
            .listeners
            .as_mut()
            .unwrap()
            .apply(&self.plan.l7_tables())
            .await;
        assert!(report.failed.is_empty(), "listeners failed: {report:?}");
    }

    /// Deletes the object `kind` `namespace/name` (`kubectl delete`) and applies the new plan.
    pub async fn delete(&mut self, kind: &str, namespace: &str, name: &str) {
        let before = self.docs.len();
        self.docs
            .retain(|d| !(d["kind"] == kind && meta(d) == (namespace.to_owned(), name.to_owned())));
        assert_eq!(before - 1, self.docs.len(), "{kind} {namespace}/{name}");
        self.apply().await;
    }

    /// Edits the spec of `kind` `namespace/name` with `f` and bumps its `metadata.generation`,
    /// as the API server does on a spec change; then applies the new plan. Returns the new
    /// generation.
    pub async fn edit(
        &mut self,
        kind: &str,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&mut Value),
    ) -> i64 {
        let doc = self
            .docs
            .iter_mut()
            .find(|d| d["kind"] == kind && meta(d) == (namespace.to_owned(), name.to_owned()))
            .unwrap_or_else(|| panic!("no {kind} {namespace}/{name}"));
        f(doc);
        let generation = doc["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
        doc["metadata"]["generation"] = json!(generation);
        self.apply().await;
        generation
    }

    /// The status of Gateway `namespace/name`.
    pub fn gateway_status(&self, namespace: &str, name: &str) -> GatewayStatus {
        self.plan
            .gateways
            .iter()
            .find(|g| g.gateway.namespace == namespace && g.gateway.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no status for Gateway {namespace}/{name}"))
    }

    /// The address serving port 80 (or `port`) of Gateway `namespace/name`.
    pub fn gateway(&self, namespace: &str, name: &str) -> SocketAddr {
        self.gateway_port(namespace, name, 80)
    }

    pub fn gateway_port(&self, namespace: &str, name: &str, port: u16) -> SocketAddr {
        *self
            .ports
            .get(&(namespace.into(), name.into(), port))
            .unwrap_or_else(|| panic!("no listener port {port} on Gateway {namespace}/{name}"))
    }

    /// The conditions of route `namespace/name` for its parent Gateway `gateway` (namespace,
    /// name), as the agent would write them.
    pub fn route_conditions(
        &self,
        namespace: &str,
        name: &str,
        gateway: (&str, &str),
    ) -> Vec<Condition> {
        let route = self
            .plan
            .routes
            .iter()
            .find(|r| r.route.namespace == namespace && r.route.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "no status for route {namespace}/{name}; refused: {:?}",
                    self.refused
                )
            });
        route
            .parents
            .iter()
            .filter(|p| p.parent_ref.namespace == gateway.0 && p.parent_ref.name == gateway.1)
            .flat_map(|p| p.conditions.clone())
            .collect()
    }

    /// Upstream `kubernetes.HTTPRouteMustHaveCondition`: the route carries `type` with
    /// `status` and `reason` for its parent Gateway.
    pub fn route_must_have(
        &self,
        route: (&str, &str),
        gateway: (&str, &str),
        type_: &str,
        status: bool,
        reason: &str,
    ) {
        let conds = self.route_conditions(route.0, route.1, gateway);
        let ok = conds
            .iter()
            .any(|c| c.type_ == type_ && c.is_true() == status && c.reason == reason);
        assert!(
            ok,
            "route {}/{}: expected {type_}={status} ({reason}) for Gateway {}/{}, got {conds:#?}",
            route.0, route.1, gateway.0, gateway.1
        );
    }

    /// Upstream `kubernetes.GatewayAndHTTPRoutesMustBeAccepted`: every route is Accepted and
    /// ResolvedRefs for the Gateway, whose listeners are all programmed.
    pub fn routes_must_be_accepted(&self, gateway: (&str, &str), routes: &[(&str, &str)]) {
        for r in routes {
            self.route_must_have(*r, gateway, "Accepted", true, "Accepted");
            self.route_must_have(*r, gateway, "ResolvedRefs", true, "ResolvedRefs");
        }
        let gw = self
            .plan
            .gateways
            .iter()
            .find(|g| g.gateway.namespace == gateway.0 && g.gateway.name == gateway.1)
            .expect("Gateway status");
        for c in ["Accepted", "Programmed"] {
            assert!(
                gw.conditions.iter().any(|x| x.type_ == c && x.is_true()),
                "Gateway {}/{}: {c} {:#?}",
                gateway.0,
                gateway.1,
                gw.conditions
            );
        }
        for l in &gw.listeners {
            for c in ["Accepted", "Programmed", "ResolvedRefs"] {
                assert!(
                    l.conditions.iter().any(|x| x.type_ == c && x.is_true()),
                    "listener {}: {c} {:#?}",
                    l.name,
                    l.conditions
                );
            }
        }
    }

    /// How many requests for `path` the pods of Deployment `namespace/deployment` logged
    /// (upstream reads `Echoing back request made to PATH to client` from the pods' logs).
    pub fn echo_log_count(&self, namespace: &str, deployment: &str, path: &str) -> usize {
        let line = format!("Echoing back request made to {path} to client");
        let prefix = format!("{deployment}-");
        self.pods
            .iter()
            .filter(|p| p.namespace == namespace && p.pod.starts_with(&prefix))
            .map(|p| {
                p.log
                    .lock()
                    .expect("log lock")
                    .iter()
                    .filter(|l| **l == line)
                    .count()
            })
            .sum()
    }

    /// Upstream `http.ExpectMirroredRequest`: the mirror's pods log the request's path (within
    /// 10 s, as copies are sent fire and forget).
    pub async fn expect_mirrored(&self, test: &str, mirrors: &[&str], path: &str) {
        for m in mirrors {
            let until = std::time::Instant::now() + Duration::from_secs(10);
            while self.echo_log_count(INFRA, m, path) == 0 {
                assert!(
                    std::time::Instant::now() < until,
                    "{test}: no request for {path} in the logs of {INFRA}/{m}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// The status of listener `listener` of Gateway `namespace/name`.
    pub fn listener(&self, namespace: &str, name: &str, listener: &str) -> ListenerStatus {
        self.plan
            .gateways
            .iter()
            .find(|g| g.gateway.namespace == namespace && g.gateway.name == name)
            .expect("Gateway status")
            .listeners
            .iter()
            .find(|l| l.name == listener)
            .cloned()
            .expect("listener status")
    }

    /// The attachedRoutes of each listener of Gateway `namespace/name`.
    pub fn attached_routes(&self, namespace: &str, name: &str) -> BTreeMap<String, u32> {
        self.plan
            .gateways
            .iter()
            .find(|g| g.gateway.namespace == namespace && g.gateway.name == name)
            .expect("Gateway status")
            .listeners
            .iter()
            .map(|l| (l.name.clone(), l.attached_routes))
            .collect()
    }

    pub async fn shutdown(mut self) {
        if let Some(l) = self.listeners.take() {
            l.shutdown().await;
        }
    }
}

/// Writes the translated manifests to `dir/<first test>.yaml` (JSON documents are YAML), for
/// `splitter check --manifests` or `splitter run --manifests` by hand.
fn dump(dir: &Path, tests: &[&str], docs: &[Value]) {
    let name = tests.first().copied().unwrap_or("base.yaml");
    let text: Vec<String> = docs
        .iter()
        .map(|d| serde_json::to_string_pretty(d).expect("JSON"))
        .collect();
    let path = dir.join(name);
    std::fs::write(&path, text.join("\n---\n"))
        .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn plan_of(docs: &[Value]) -> (Plan, Vec<String>) {
    let mut refused = Vec::new();
    let mut objects = Vec::new();
    for d in docs {
        match parse(d.clone()) {
            Ok(Parsed::Object(o)) => objects.push(*o),
            Ok(Parsed::Skipped { .. }) => {}
            Err(e) => refused.push(e.to_string()),
        }
    }
    let plan = plan::build(&Index::from_objects(objects), &PlanConfig::default(), None);
    (plan, refused)
}

/// A Deployment's namespace, pod labels and pods (name, address, and the address of its TLS
/// port 8443 when it has one apart: upstream's `tcp-backend`).
type Deployment = (String, Value, Vec<(String, SocketAddr, Option<SocketAddr>)>);

/// What a Deployment's echo-basic container serves, from its environment: plain HTTP,
/// HTTPS (`TLS_SERVER_CERT`), or the TCP server with a TLS port (`TCP_ECHO_SERVER`).
fn pod_env(d: &Value) -> (bool, bool) {
    let names: Vec<&str> = d["spec"]["template"]["spec"]["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|c| c["env"].as_array().into_iter().flatten())
        .filter_map(|e| e["name"].as_str())
        .collect();
    (
        names.contains(&"TLS_SERVER_CERT"),
        names.contains(&"TCP_ECHO_SERVER"),
    )
}

/// The translation (module docs).
async fn translate(
    docs: Vec<Value>,
) -> (
    Vec<Value>,
    BTreeMap<(String, String, u16), SocketAddr>,
    Vec<EchoPod>,
) {
    let mut out = vec![json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "GatewayClass",
        "metadata": {"name": "splitter"},
        "spec": {"controllerName": "splitter.dev/gateway-controller"},
    })];
    let fixture = |f: &str| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../splitter-plan/tests/fixtures/tls")
            .join(f);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    for (ns, name) in [
        (WEB, "certificate"),
        (INFRA, "tls-validity-checks-certificate"),
        (INFRA, "tls-checks-certificate"),
        (INFRA, "tls-passthrough-checks-certificate"),
        (INFRA, "tls-terminate-checks-certificate"),
    ] {
        out.push(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": ns},
            "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": fixture("a.crt"), "tls.key": fixture("a.key")},
        }));
    }
    let mut ports = BTreeMap::new();
    let process = 10 + (std::process::id() % 200) as u8;
    let suite = SUITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut gateways = 0u8;
    let mut deployments: Vec<Deployment> = Vec::new();
    let mut pods = Vec::new();
    let mut services = Vec::new();
    let mut manual = Vec::new();
    for mut d in docs {
        let kind = d["kind"].as_str().unwrap_or_default().to_owned();
        let (ns, name) = meta(&d);
        match kind.as_str() {
            "Gateway" => {
                gateways += 1;
                let ip = std::net::Ipv4Addr::new(127, process, suite, gateways);
                d["metadata"]["annotations"]["splitter.dev/dataplane"] = json!("l7");
                d["spec"]["addresses"] = json!([{"type": "IPAddress", "value": ip.to_string()}]);
                if let Some(ls) = d["spec"]["listeners"].as_array_mut() {
                    for l in ls {
                        let p = l["port"].as_u64().expect("listener port") as u16;
                        let addr = SocketAddr::from((ip, p + PORT_OFFSET));
                        ports.insert((ns.clone(), name.clone(), p), addr);
                        l["port"] = json!(addr.port());
                    }
                }
                out.push(d);
            }
            "Deployment" => {
                if name == "coredns" {
                    continue;
                }
                let replicas = d["spec"]["replicas"].as_u64().unwrap_or(1);
                // echo-basic serves gRPC (h2c) instead of HTTP when GRPC_ECHO_SERVER is set.
                let grpc = d["spec"]["template"]["spec"]["containers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|c| c["env"].as_array().into_iter().flatten())
                    .any(|e| e["name"] == "GRPC_ECHO_SERVER");
                let (tls, tcp) = pod_env(&d);
                let mut mine = Vec::new();
                for i in 0..replicas {
                    // Like a ReplicaSet's pods: name-<hash>-<suffix> (the weight test strips the
                    // last two parts to find the backend).
                    let pod = format!("{name}-6d4b8f9c7-p{i}x");
                    // The stand-in for every certificate upstream generates (fixture `a`).
                    let config = || {
                        splitter::echo_tls::server_config(
                            fixture("a.crt").as_bytes(),
                            fixture("a.key").as_bytes(),
                        )
                        .expect("fixture certificate")
                    };
                    let (p, tls_port) = match (grpc, tls, tcp) {
                        (true, _, _) => (EchoPod::start_grpc(&ns, &pod).await, None),
                        (false, true, true) => {
                            let t = EchoPod::start_tcp_tls(&ns, &pod, config()).await;
                            let addr = t.addr;
                            pods.push(t);
                            (EchoPod::start(&ns, &pod).await, Some(addr))
                        }
                        (false, true, false) => {
                            (EchoPod::start_https(&ns, &pod, config()).await, None)
                        }
                        _ => (EchoPod::start(&ns, &pod).await, None),
                    };
                    mine.push((pod, p.addr, tls_port));
                    pods.push(p);
                }
                deployments.push((
                    ns,
                    d["spec"]["template"]["metadata"]["labels"].clone(),
                    mine,
                ));
            }
            "Service" => {
                services.push(d.clone());
                out.push(d);
            }
            "EndpointSlice"
                if d["addressType"] == "IPv4"
                    && d["endpoints"].as_array().is_none_or(|e| e.is_empty()) =>
            {
                manual.push(d);
            }
            _ => out.push(d),
        }
    }
    for d in &mut out {
        if d["kind"] != "HTTPRoute" && d["kind"] != "GRPCRoute" && d["kind"] != "TLSRoute" {
            continue;
        }
        let route_ns = meta(d).0;
        for p in d["spec"]["parentRefs"].as_array_mut().into_iter().flatten() {
            let Some(port) = p["port"].as_u64() else {
                continue;
            };
            let ns = p["namespace"].as_str().unwrap_or(&route_ns).to_owned();
            let name = p["name"].as_str().unwrap_or_default().to_owned();
            if let Some(a) = ports.get(&(ns, name, port as u16)) {
                p["port"] = json!(a.port());
            }
        }
    }
    // HTTPRouteServiceTypes: the test fills its slices with infra-backend-v1's pods.
    let v1 = deployments
        .iter()
        .find(|(ns, labels, _)| ns == INFRA && labels["app"] == "infra-backend-v1")
        .map(|(_, _, pods)| pods.clone())
        .unwrap_or_default();
    for d in manual {
        for (pod, addr, _) in &v1 {
            let mut slice = d.clone();
            slice["metadata"]["name"] = json!(format!("{}-{pod}", meta(&d).1));
            for p in slice["ports"].as_array_mut().into_iter().flatten() {
                p["port"] = json!(addr.port());
            }
            slice["endpoints"] = json!([{
                "addresses": [addr.ip().to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
            }]);
            out.push(slice);
        }
    }
    for s in services {
        let (ns, name) = meta(&s);
        let Some(selector) = s["spec"]["selector"].as_object() else {
            continue;
        };
        for (dns, labels, dpods) in &deployments {
            let selected = dns == &ns && selector.iter().all(|(k, v)| labels[k] == *v);
            if !selected {
                continue;
            }
            for (pod, addr, tls) in dpods {
                let slice_ports: Vec<Value> = s["spec"]["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|p| {
                        // tcp-backend's TLS port is a server of its own.
                        let port = match tls {
                            Some(t) if p["targetPort"].as_u64() == Some(8443) => t.port(),
                            _ => addr.port(),
                        };
                        json!({
                            "name": p["name"].as_str().unwrap_or(""),
                            "port": port,
                            "protocol": p["protocol"].as_str().unwrap_or("TCP"),
                        })
                    })
                    .collect();
                out.push(json!({
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "name": format!("{name}-{pod}"),
                        "namespace": ns,
                        "labels": {"kubernetes.io/service-name": name},
                    },
                    "addressType": "IPv4",
                    "ports": slice_ports,
                    "endpoints": [{"addresses": [addr.ip().to_string()], "conditions": {"ready": true}}],
                }));
            }
        }
    }
    (out, ports, pods)
}

/// A captured response: the status, the headers, and what the backend saw (200 only).
#[derive(Debug)]
pub struct Exchange {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub request: Option<Captured>,
}

/// One request on a fresh connection (the upstream round tripper turns keep-alive off).
pub async fn round_trip(
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(String, String)],
) -> Result<Exchange, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    exchange(stream, addr, method, host, path, headers).await
}

/// As [`round_trip`], over TLS with server name `sni` (upstream's `MakeTLSRequest...`). The
/// client does not verify the certificate: upstream's names are not the test certificate's.
pub async fn tls_round_trip(
    addr: SocketAddr,
    sni: &str,
    host: &str,
    path: &str,
) -> Result<Exchange, String> {
    let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let name = ServerName::try_from(sni.to_owned()).map_err(|e| e.to_string())?;
    let tls = TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS handshake with {sni}: {e}"))?;
    exchange(tls, addr, "GET", host, path, &[]).await
}

#[derive(Debug)]
pub struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

async fn exchange<IO>(
    io: IO,
    addr: SocketAddr,
    method: &str,
    host: &str,
    path: &str,
    headers: &[(String, String)],
) -> Result<Exchange, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = Request::builder().method(method).uri(path);
    req = req.header(
        "host",
        if host.is_empty() {
            addr.to_string()
        } else {
            host.into()
        },
    );
    for (n, v) in headers {
        req = req.header(n.as_str(), v.as_str());
    }
    let req = req
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    let request = if parts.status == StatusCode::OK && method != "HEAD" && !body.is_empty() {
        Some(serde_json::from_slice(&body).map_err(|e| {
            format!(
                "not an echo answer ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        })?)
    } else {
        None
    };
    Ok(Exchange {
        status: parts.status,
        headers: parts.headers,
        request,
    })
}

/// An expected redirect (`roundtripper.RedirectRequest`); empty fields take the upstream
/// defaults (`setRedirectRequestDefaults`).
#[derive(Clone, Debug, Default)]
pub struct Redirect {
    pub scheme: &'static str,
    pub host: &'static str,
    pub port: &'static str,
    pub path: &'static str,
}

/// One upstream `http.ExpectedResponse`.
#[derive(Clone, Debug)]
pub struct Case {
    pub host: String,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub status: u16,
    pub backend: String,
    pub namespace: String,
    pub expected_path: Option<String>,
    pub expected_host: Option<String>,
    pub expected_headers: Vec<(String, String)>,
    pub absent_headers: Vec<String>,
    pub response_headers: Vec<(String, String)>,
    pub absent_response_headers: Vec<String>,
    /// Upstream `ValidHeaderValues`: the response header is one of these (whitespace ignored,
    /// as the CORS tests' `IgnoreWhitespace`).
    pub response_one_of: Vec<(String, Vec<String>)>,
    /// Upstream `StatusCodes`: any of these (empty: `status`).
    pub statuses: Vec<u16>,
    pub redirect: Option<Redirect>,
}

impl Case {
    /// `GET path`, expecting 200 from `backend` in the infra namespace unless told otherwise.
    pub fn get(path: &str) -> Self {
        Self {
            host: String::new(),
            method: "GET".into(),
            path: path.into(),
            headers: vec![],
            status: 200,
            backend: String::new(),
            namespace: INFRA.into(),
            expected_path: None,
            expected_host: None,
            expected_headers: vec![],
            absent_headers: vec![],
            response_headers: vec![],
            absent_response_headers: vec![],
            response_one_of: vec![],
            statuses: vec![],
            redirect: None,
        }
    }
    pub fn statuses(mut self, s: &[u16]) -> Self {
        self.statuses = s.to_vec();
        self
    }
    pub fn response_one_of(mut self, n: &str, values: &[&str]) -> Self {
        self.response_one_of
            .push((n.into(), values.iter().map(|v| (*v).to_owned()).collect()));
        self
    }
    pub fn host(mut self, h: &str) -> Self {
        self.host = h.into();
        self
    }
    pub fn method(mut self, m: &str) -> Self {
        self.method = m.into();
        self
    }
    pub fn header(mut self, n: &str, v: &str) -> Self {
        self.headers.push((n.into(), v.into()));
        self
    }
    pub fn backend(mut self, b: &str) -> Self {
        self.backend = b.into();
        self
    }
    pub fn namespace(mut self, ns: &str) -> Self {
        self.namespace = ns.into();
        self
    }
    pub fn status(mut self, s: u16) -> Self {
        self.status = s;
        self
    }
    pub fn expect_path(mut self, p: &str) -> Self {
        self.expected_path = Some(p.into());
        self
    }
    pub fn expect_host(mut self, h: &str) -> Self {
        self.expected_host = Some(h.into());
        self
    }
    pub fn expect_header(mut self, n: &str, v: &str) -> Self {
        self.expected_headers.push((n.into(), v.into()));
        self
    }
    pub fn absent(mut self, n: &str) -> Self {
        self.absent_headers.push(n.into());
        self
    }
    /// Upstream `BackendSetResponseHeaders`: the echo sets this response header.
    pub fn backend_sets(mut self, n: &str, v: &str) -> Self {
        match self
            .headers
            .iter_mut()
            .find(|(k, _)| k == "X-Echo-Set-Header")
        {
            Some((_, all)) => *all = format!("{all},{n}:{v}"),
            None => self
                .headers
                .push(("X-Echo-Set-Header".into(), format!("{n}:{v}"))),
        }
        self
    }
    pub fn response_header(mut self, n: &str, v: &str) -> Self {
        self.response_headers.push((n.into(), v.into()));
        self
    }
    pub fn absent_response(mut self, n: &str) -> Self {
        self.absent_response_headers.push(n.into());
        self
    }
    pub fn redirect(mut self, status: u16, r: Redirect) -> Self {
        self.status = status;
        self.redirect = Some(r);
        self
    }

    fn name(&self, i: usize) -> String {
        let hdr = if self.headers.is_empty() {
            String::new()
        } else {
            format!(" with headers {:?}", self.headers)
        };
        let what = if self.backend.is_empty() {
            format!("should receive a {}", self.status)
        } else {
            format!("should go to {}", self.backend)
        };
        format!(
            "{i} {} request to '{}{}'{hdr} {what}",
            self.method, self.host, self.path
        )
    }

    /// Upstream `CompareRoundTrip` (conformance/utils/http/http.go), with one translation: a
    /// redirect that keeps the listener's port names its moved port (P + 10000), read as P.
    fn compare(&self, gw: SocketAddr, got: &Exchange) -> Result<(), String> {
        let status_ok = if self.statuses.is_empty() {
            got.status.as_u16() == self.status
        } else {
            self.statuses.contains(&got.status.as_u16())
        };
        if !status_ok {
            return Err(format!(
                "expected status code to be {:?}, got {}",
                if self.statuses.is_empty() {
                    vec![self.status]
                } else {
                    self.statuses.clone()
                },
                got.status
            ));
        }
        let squash = |v: &str| v.chars().filter(|c| !c.is_whitespace()).collect::<String>();
        for (n, valid) in &self.response_one_of {
            let got_value = got
                .headers
                .get_all(n.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect::<Vec<_>>()
                .join(",");
            if got_value.is_empty() {
                return Err(format!("expected response header {n} to be set"));
            }
            if !valid.iter().any(|v| squash(v) == squash(&got_value)) {
                return Err(format!(
                    "expected response header {n} to be one of {valid:?}, got {got_value:?}"
                ));
            }
        }
        for (n, v) in &self.response_headers {
            let all: Vec<&str> = got
                .headers
                .get_all(n.as_str())
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if all.is_empty() {
                return Err(format!("expected response header {n} to be set"));
            }
            if all.join(",") != *v {
                return Err(format!(
                    "expected response header {n} to be {v}, got {}",
                    all.join(",")
                ));
            }
        }
        for n in &self.absent_response_headers {
            if got.headers.contains_key(n.as_str()) {
                return Err(format!("expected response header {n} to not be set"));
            }
        }
        let lower = |m: &BTreeMap<String, Vec<String>>| -> BTreeMap<String, String> {
            m.iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.join(",")))
                .collect()
        };
        if got.status == StatusCode::OK {
            let Some(req) = &got.request else {
                return Ok(()); // HEAD
            };
            if let Some(h) = &self.expected_host
                && *h != req.host
            {
                return Err(format!("expected host to be {h}, got {}", req.host));
            } else if self.expected_host.is_none() && !self.host.is_empty() && self.host != req.host
            {
                return Err(format!(
                    "expected host to be {}, got {}",
                    self.host, req.host
                ));
            }
            let path = self.expected_path.as_deref().unwrap_or(&self.path);
            if path != req.path {
                return Err(format!("expected path to be {path}, got {}", req.path));
            }
            if self.method != req.method {
                return Err(format!(
                    "expected method to be {}, got {}",
                    self.method, req.method
                ));
            }
            if self.namespace != req.namespace {
                return Err(format!(
                    "expected namespace to be {}, got {}",
                    self.namespace, req.namespace
                ));
            }
            let seen = lower(&req.headers);
            for (n, v) in &self.expected_headers {
                match seen.get(&n.to_ascii_lowercase()) {
                    None => return Err(format!("expected {n} header to be set, got {seen:?}")),
                    Some(a) if a != v => {
                        return Err(format!("expected {n} header to be set to {v}, got {a}"));
                    }
                    _ => {}
                }
            }
            for n in &self.absent_headers {
                if let Some(v) = seen.get(&n.to_ascii_lowercase()) {
                    return Err(format!("expected {n} header to not be set, got {v}"));
                }
            }
            if !req.pod.starts_with(&self.backend) {
                return Err(format!(
                    "expected pod name to start with {}, got {}",
                    self.backend, req.pod
                ));
            }
        } else if got.status.is_redirection() {
            let Some(exp) = &self.redirect else {
                return Ok(());
            };
            let loc = got
                .headers
                .get("location")
                .and_then(|v| v.to_str().ok())
                .ok_or("redirect without Location")?;
            let uri: http::Uri = loc.parse().map_err(|e| format!("Location {loc}: {e}"))?;
            let scheme = uri.scheme_str().unwrap_or("");
            let host = uri.host().unwrap_or("");
            // The listener's moved port stands for the manifest's.
            let port = uri
                .port_u16()
                .map(|p| if p == gw.port() { p - PORT_OFFSET } else { p })
                .map(|p| p.to_string())
                .unwrap_or_default();
            let exp_host = if exp.host.is_empty() { host } else { exp.host };
            let exp_scheme = if exp.scheme.is_empty() {
                "http"
            } else {
                exp.scheme
            };
            let exp_path = if exp.path.is_empty() {
                self.path.split('?').next().unwrap()
            } else {
                exp.path
            };
            if exp_host != host {
                return Err(format!(
                    "expected redirected hostname to be {exp_host:?}, got {host:?}"
                ));
            }
            if exp.port.is_empty() {
                let fine = match scheme {
                    "http" => port.is_empty() || port == "80",
                    "https" => port.is_empty() || port == "443",
                    _ => true,
                };
                if !fine {
                    return Err(format!(
                        "for {scheme} scheme, expected redirected port to be the default or not set, got {port:?}"
                    ));
                }
            } else if exp.port != port {
                return Err(format!(
                    "expected redirected port to be {:?}, got {port:?}",
                    exp.port
                ));
            }
            if exp_scheme != scheme {
                return Err(format!(
                    "expected redirected scheme to be {exp_scheme:?}, got {scheme:?}"
                ));
            }
            if exp_path != uri.path() {
                return Err(format!(
                    "expected redirected path to be {exp_path:?}, got {:?}",
                    uri.path()
                ));
            }
        }
        Ok(())
    }
}

/// Upstream `MakeRequestAndExpectEventuallyConsistentResponse` for each case: the expectation
/// must hold for 3 requests in a row (the plan is already applied, so the first 3 must). All
/// failing cases are reported together.
pub async fn expect_all(test: &str, gw: SocketAddr, cases: &[Case]) {
    expect_all_over(test, gw, cases, false).await
}

/// [`expect_all`] over TLS, each case's host as the server name
/// (`tls.MakeTLSRequestAndExpectEventuallyConsistentResponse`).
pub async fn expect_all_tls(test: &str, gw: SocketAddr, cases: &[Case]) {
    expect_all_over(test, gw, cases, true).await
}

async fn expect_all_over(test: &str, gw: SocketAddr, cases: &[Case], tls: bool) {
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        for _ in 0..3 {
            let got = if tls {
                tls_round_trip(gw, &c.host, &c.host, &c.path).await
            } else {
                round_trip(gw, &c.method, &c.host, &c.path, &c.headers).await
            };
            let verdict = got.and_then(|g| c.compare(gw, &g));
            if let Err(e) = verdict {
                failures.push(format!("{test}/{}: {e}", c.name(i)));
                break;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Upstream `weight.TestWeightedDistribution` (conformance/utils/weight): 500 requests, 10 at a
/// time, about half with a random `X-Jitter` header; each backend's share within 0.05 of its
/// expected share, a share of 0 exactly 0, and no other backend seen.
pub async fn expect_weights(gw: SocketAddr, expected: &[(&str, f64)]) {
    const TOTAL: usize = 500;
    const CONCURRENT: usize = 10;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..TOTAL / CONCURRENT {
        let mut batch = Vec::new();
        for _ in 0..CONCURRENT {
            // xorshift: a jitter header on about half the requests, as upstream does.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let headers = if seed.is_multiple_of(2) {
                vec![("X-Jitter".to_owned(), (seed % 10_000).to_string())]
            } else {
                vec![]
            };
            batch.push(tokio::spawn(async move {
                round_trip(gw, "GET", "", "/", &headers).await
            }));
        }
        for b in batch {
            let got = b.await.unwrap().expect("request");
            assert_eq!(got.status, 200, "HTTPRouteWeight: every response is 200");
            let pod = got.request.expect("echo answer").pod;
            // Upstream: the backend is the pod name without its last two dash-separated parts.
            let parts: Vec<&str> = pod.split('-').collect();
            let backend = parts[..parts.len() - 2].join("-");
            *seen.entry(backend).or_default() += 1;
        }
    }
    for &(backend, want) in expected {
        let got = *seen.get(backend).unwrap_or(&0) as f64 / TOTAL as f64;
        if want == 0.0 {
            assert_eq!(
                got, 0.0,
                "HTTPRouteWeight: {backend} has weight 0: {seen:?}"
            );
        } else {
            assert!(
                (got - want).abs() <= 0.05,
                "HTTPRouteWeight: {backend} got {got}, want {want} +- 0.05: {seen:?}"
            );
        }
    }
    let weighted = expected.iter().filter(|(_, w)| *w > 0.0).count();
    assert_eq!(
        seen.len(),
        weighted,
        "HTTPRouteWeight: only weighted backends: {seen:?}"
    );
}

/// `GET path` on a fresh connection: the status and the body as text.
pub async fn get_text(addr: SocketAddr, path: &str) -> Result<(StatusCode, String), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
