//! HTTPS listeners over loopback, with clients that verify the certificate against the test CA
//! (`splitter-plan/tests/fixtures/tls`): the guide's journey over one TLS connection, SNI
//! choosing among certificates, rotation without dropping open connections, HTTP/2 by ALPN,
//! and, through the plan, a listener whose Secret is missing left unserved while the others
//! are served.

use std::{net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::{
    ClientConfig, RootCertStore,
    crypto::ring,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};
use splitter::dataplane::proxy::{L7Listeners, Proxy, ProxyMetrics};
use splitter_plan::{
    model::{
        Index, Kind,
        parse::{Parsed, parse},
    },
    plan::{
        self, ObjectKey, PlanConfig,
        l7::{Filter, L7Route, L7RouteTable, Redirect},
        status::ConditionStatus,
        tls::{Clock, ListenerCertificate, PlannedCertificate, TlsPlan},
    },
};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::support::*;

fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/../splitter-plan/tests/fixtures/tls/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The fixture certificate `name` (`a`, `a2`, `b`) as the plan resolves it.
fn cert(name: &str) -> Arc<PlannedCertificate> {
    Arc::new(
        PlannedCertificate::from_pem(
            ObjectKey::new(Kind::Secret, "infra", format!("{name}-cert")),
            &fixture(&format!("{name}.crt")),
            &fixture(&format!("{name}.key")),
            None,
        )
        .expect("fixture certificate"),
    )
}

fn leaf_der(name: &str) -> Vec<u8> {
    CertificateDer::from_pem_slice(&fixture(&format!("{name}.crt")))
        .expect("PEM")
        .to_vec()
}

fn tls_table(routes: Vec<L7Route>, certs: &[(Option<&str>, &str)]) -> L7RouteTable {
    L7RouteTable {
        tls: Some(TlsPlan {
            certificates: certs
                .iter()
                .map(|(hostname, name)| ListenerCertificate {
                    hostname: hostname.map(str::to_string),
                    certificate: cert(name),
                })
                .collect(),
        }),
        ..table(routes)
    }
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// One TLS connection that verifies the proxy's certificate for `sni` against the test CA.
struct TlsClient {
    sender: Sender,
    /// The leaf the proxy presented.
    leaf: Vec<u8>,
    alpn: Option<Vec<u8>>,
}

impl TlsClient {
    async fn open(addr: SocketAddr, sni: &str, alpn: &[&[u8]]) -> Self {
        Self::try_open(addr, sni, alpn)
            .await
            .expect("verified TLS connection")
    }

    async fn try_open(addr: SocketAddr, sni: &str, alpn: &[&[u8]]) -> std::io::Result<Self> {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(&fixture("ca.crt")).expect("CA PEM"))
            .expect("CA");
        let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from(sni.to_string()).expect("server name");
        let tls = TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await?;
        let (_, session) = tls.get_ref();
        let leaf = session.peer_certificates().expect("a certificate")[0].to_vec();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let sender = if alpn.as_deref() == Some(b"h2") {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .expect("HTTP/2 handshake");
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = http1::handshake(TokioIo::new(tls))
                .await
                .expect("HTTP/1.1 handshake");
            tokio::spawn(conn);
            Sender::H1(sender)
        };
        Ok(Self { sender, leaf, alpn })
    }

    async fn get_host(&mut self, path: &str, host: &str) -> Reply {
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await.expect("ready");
                s.send_request(request("GET", path, host)).await
            }
            Sender::H2(s) => {
                s.ready().await.expect("ready");
                let req = Request::builder()
                    .uri(format!("https://{host}{path}"))
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                s.send_request(req).await
            }
        }
        .expect("response over the TLS connection");
        let (parts, body) = resp.into_parts();
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.expect("body").to_bytes(),
        }
    }

    async fn get(&mut self, path: &str) -> Reply {
        self.get_host(path, "gateway.test").await
    }
}

const H1: &[&[u8]] = &[b"http/1.1"];

fn guide_routes(echo: SocketAddr, echo2: SocketAddr, w1: u32, w2: u32) -> Vec<L7Route> {
    let mut r = prefix_route(
        "echo",
        "/echo",
        vec![backend("echo", w1, &[echo]), backend("echo2", w2, &[echo2])],
    );
    r.filters.push(strip_path());
    vec![r]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guide_journey_over_one_verified_tls_connection() {
    let (echo, echo2) = (echo("echo").await, echo("echo2").await);
    let routes = |w1, w2| guide_routes(echo.local_addr(), echo2.local_addr(), w1, w2);
    let (_proxy, listener) = start_proxy(&tls_table(routes(1, 1), &[(None, "a")])).await;

    let mut conn = TlsClient::open(listener.local_addr(), "a.example.com", H1).await;
    assert_eq!(conn.leaf, leaf_der("a"));
    let mut replies = Vec::new();
    for i in 1..=200 {
        replies.push(conn.get(&format!("/echo/hostname?iteration={i}")).await);
    }
    let counts = tally(&replies);
    assert_eq!(counts.get("echo"), Some(&100), "{counts:?}");
    assert_eq!(counts.get("echo2"), Some(&100), "{counts:?}");

    assert!(
        listener
            .install(&tls_table(routes(200, 100), &[(None, "a")]))
            .is_empty()
    );
    let mut conn = TlsClient::open(listener.local_addr(), "a.example.com", H1).await;
    let mut replies = Vec::new();
    for i in 1..=200 {
        replies.push(conn.get(&format!("/echo/hostname?iteration={i}")).await);
    }
    let counts = tally(&replies);
    assert_eq!(counts.get("echo"), Some(&133), "{counts:?}");
    assert_eq!(counts.get("echo2"), Some(&67), "{counts:?}");

    // A plain-HTTP request to the HTTPS listener gets no HTTP answer.
    let plain = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        Connection::open(listener.local_addr())
            .await
            .send(get("/echo/hostname")),
    )
    .await
    .expect("the proxy closes the connection");
    assert!(plain.is_err(), "{plain:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_the_client_verifies() {
    let backend_srv = echo("echo").await;
    let routes = everything_to(&backend_srv);
    let t = tls_table(
        routes,
        &[(Some("a.example.com"), "a"), (Some("b.example.com"), "b")],
    );
    let (_proxy, listener) = start_proxy(&t).await;
    let addr = listener.local_addr();
    for (sni, leaf) in [
        ("a.example.com", "a"),
        ("b.example.com", "b"),
        // No listener hostname takes it: the first certificate, whose wildcard covers it.
        ("x.wild.example.com", "a"),
    ] {
        let mut conn = TlsClient::open(addr, sni, H1).await;
        assert_eq!(conn.leaf, leaf_der(leaf), "{sni}");
        assert_eq!(
            conn.get_host("/hostname", sni).await.text(),
            "echo",
            "{sni}"
        );
    }
    // A name neither certificate holds: the client refuses the first certificate.
    assert!(
        TlsClient::try_open(addr, "c.example.com", H1)
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_serves_new_handshakes_and_open_connections_keep_working() {
    let backend_srv = echo("echo").await;
    let routes = || everything_to(&backend_srv);
    let (_proxy, listener) = start_proxy(&tls_table(routes(), &[(None, "a")])).await;
    let addr = listener.local_addr();
    let mut old = TlsClient::open(addr, "a.example.com", H1).await;
    assert_eq!(old.get("/hostname").await.text(), "echo");

    assert!(
        listener
            .install(&tls_table(routes(), &[(None, "a2")]))
            .is_empty()
    );
    let mut new = TlsClient::open(addr, "a.example.com", H1).await;
    assert_eq!(
        new.leaf,
        leaf_der("a2"),
        "a new handshake gets the new certificate"
    );
    assert_eq!(new.get("/hostname").await.text(), "echo");
    // The connection opened before keeps its session and keeps being served.
    assert_eq!(old.leaf, leaf_der("a"));
    for _ in 0..10 {
        assert_eq!(old.get("/hostname").await.text(), "echo");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_and_http11_are_offered_by_alpn() {
    let backend_srv = echo("echo").await;
    let routes = everything_to(&backend_srv);
    let (_proxy, listener) = start_proxy(&tls_table(routes, &[(None, "a")])).await;
    let addr = listener.local_addr();
    let mut h2 = TlsClient::open(addr, "a.example.com", &[b"h2", b"http/1.1"]).await;
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));
    for _ in 0..20 {
        let r = h2.get_host("/hostname", "a.example.com").await;
        assert_eq!(r.text(), "echo");
    }
    let mut h1 = TlsClient::open(addr, "a.example.com", H1).await;
    assert_eq!(h1.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(h1.get("/hostname").await.text(), "echo");
}

/// Objects as a cluster would hold them: Gateway `infra/gw` on 127.0.0.1 with two HTTPS
/// listeners (one whose Secret exists, one whose Secret does not) and an HTTP one, all taking
/// route `infra/web` to Service `echo` (the echo server).
fn manifests(ports: [u16; 3], echo: SocketAddr, cert: &str) -> String {
    let pem = |f: &str| {
        String::from_utf8(fixture(f))
            .unwrap()
            .lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: splitter}}
spec: {{controllerName: splitter.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: infra, annotations: {{splitter.dev/dataplane: l7}}}}
spec:
  gatewayClassName: splitter
  addresses: [{{type: IPAddress, value: {ADDR}}}]
  listeners:
  - {{name: https, protocol: HTTPS, port: {}, tls: {{certificateRefs: [{{name: site-cert}}]}}}}
  - {{name: broken, protocol: HTTPS, port: {}, tls: {{certificateRefs: [{{name: missing}}]}}}}
  - {{name: http, protocol: HTTP, port: {}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web, namespace: infra}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - backendRefs: [{{name: echo, port: 80}}]
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: infra}}
spec:
  ports: [{{port: 80, targetPort: {echo_port}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: echo-1, namespace: infra, labels: {{kubernetes.io/service-name: echo}}}}
addressType: IPv4
ports: [{{port: {echo_port}, protocol: TCP}}]
endpoints:
- addresses: [127.0.0.1]
---
apiVersion: v1
kind: Secret
metadata: {{name: site-cert, namespace: infra}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{}
  tls.key: |
{}
"#,
        ports[0],
        ports[1],
        ports[2],
        pem(&format!("{cert}.crt")),
        pem(&format!("{cert}.key")),
        echo_port = echo.port(),
    )
}

fn plan_of(yaml: &str) -> plan::Plan {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(yaml).expect("YAML");
    let objects = docs
        .into_iter()
        .filter_map(|d| match parse(d).expect("valid object") {
            Parsed::Object(o) => Some(*o),
            Parsed::Skipped { .. } => None,
        });
    let config = PlanConfig {
        clock: Clock::System,
        ..PlanConfig::default()
    };
    plan::build(&Index::from_objects(objects), &config, None)
}

/// One route, `/`, to `backend`: the tests whose subject is the TLS side, not routing.
fn everything_to(backend_srv: &splitter::echo::EchoServer) -> Vec<L7Route> {
    vec![prefix_route(
        "r",
        "/",
        vec![backend("b", 1, &[backend_srv.local_addr()])],
    )]
}

/// The Gateway's own loopback address: no other test binds it, so a port that was never
/// served, or was stopped, refuses connections however other tests reuse ports on 127.0.0.1.
const ADDR: &str = "127.0.88.1";

/// A port that is free on [`ADDR`].
async fn free_port_on_addr() -> u16 {
    let l = tokio::net::TcpListener::bind((ADDR, 0)).await.unwrap();
    l.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_plan_a_missing_secret_leaves_only_its_listener_unserved_a_changed_one_rotates_a_deleted_one_stops_it()
 {
    let backend_srv = echo("echo").await;
    let ports = [
        free_port_on_addr().await,
        free_port_on_addr().await,
        free_port_on_addr().await,
    ];
    let at = |port: u16| SocketAddr::from(([127, 0, 88, 1], port));
    let plan = plan_of(&manifests(ports, backend_srv.local_addr(), "a"));

    let broken = plan.gateways[0]
        .listeners
        .iter()
        .find(|l| l.name == "broken")
        .expect("listener status");
    let refs = broken
        .conditions
        .iter()
        .find(|c| c.type_ == "ResolvedRefs")
        .expect("ResolvedRefs");
    assert_eq!(refs.status, ConditionStatus::False);
    assert_eq!(refs.reason, "InvalidCertificateRef");
    assert!(
        refs.message.contains("Secret infra/missing not found"),
        "{refs:?}"
    );

    let mut listeners = L7Listeners::new(Proxy::new(test_config(), ProxyMetrics::default()));
    let report = listeners.apply(&plan.l7_tables()).await;
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(report.started.len(), 2, "{report:?}");

    let mut https = TlsClient::open(at(ports[0]), "a.example.com", H1).await;
    assert_eq!(https.leaf, leaf_der("a"));
    assert_eq!(https.get("/hostname").await.text(), "echo");
    assert_eq!(get_once(at(ports[2]), "/hostname").await.text(), "echo");
    assert!(
        TcpStream::connect(at(ports[1])).await.is_err(),
        "the listener whose Secret is missing is not served"
    );

    // The Secret changes (a renewed certificate): new handshakes get it, the open connection
    // stays up.
    let plan = plan_of(&manifests(ports, backend_srv.local_addr(), "a2"));
    let report = listeners.apply(&plan.l7_tables()).await;
    assert_eq!(report.updated, [at(ports[0])], "{report:?}");
    let mut renewed = TlsClient::open(at(ports[0]), "a.example.com", H1).await;
    assert_eq!(renewed.leaf, leaf_der("a2"));
    assert_eq!(renewed.get("/hostname").await.text(), "echo");
    assert_eq!(https.get("/hostname").await.text(), "echo");

    // The Secret is deleted: the listener stops taking connections; the HTTP one serves on.
    let yaml = manifests(ports, backend_srv.local_addr(), "a2");
    let without_secret = &yaml[..yaml.find("---\napiVersion: v1\nkind: Secret").unwrap()];
    let plan = plan_of(without_secret);
    let report = listeners.apply(&plan.l7_tables()).await;
    assert_eq!(report.stopped, [at(ports[0])], "{report:?}");
    assert!(TcpStream::connect(at(ports[0])).await.is_err());
    assert_eq!(get_once(at(ports[2]), "/hostname").await.text(), "echo");
    listeners.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_without_scheme_keeps_https() {
    let mut r = prefix_route("port", "/port", vec![]);
    r.filters.push(Filter::RequestRedirect(Redirect {
        scheme: None,
        hostname: None,
        path: None,
        port: None,
        status_code: http::StatusCode::FOUND,
    }));
    let (_proxy, listener) = start_proxy(&tls_table(vec![r], &[(None, "a")])).await;
    let port = listener.local_addr().port();
    let mut conn = TlsClient::open(listener.local_addr(), "a.example.com", H1).await;
    let reply = conn.get_host("/port/x", "a.example.com").await;
    assert_eq!(reply.status, http::StatusCode::FOUND);
    assert_eq!(
        reply.headers["location"],
        format!("https://a.example.com:{port}/port/x").as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_handshake_is_cut_at_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend_srv = echo("echo").await;
    let routes = everything_to(&backend_srv);
    let config = splitter::dataplane::proxy::ProxyConfig {
        header_read_timeout: std::time::Duration::from_millis(300),
        ..test_config()
    };
    let (_proxy, listener) = start_proxy_with(config, &tls_table(routes, &[(None, "a")])).await;
    // Silent, and a ClientHello record header that promises bytes never sent.
    for first in [&b""[..], &[0x16, 0x03, 0x01, 0x02, 0x00][..]] {
        let mut tcp = TcpStream::connect(listener.local_addr()).await.unwrap();
        tcp.write_all(first).await.unwrap();
        let started = std::time::Instant::now();
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut buf))
            .await
            .expect("the proxy closes the connection");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        assert!(started.elapsed() >= std::time::Duration::from_millis(250));
    }
    // Served as before.
    let mut conn = TlsClient::open(listener.local_addr(), "a.example.com", H1).await;
    assert_eq!(conn.get("/hostname").await.text(), "echo");
}

/// A request over TLS reaches the backend with `X-Forwarded-Proto: https` (and one over plain
/// HTTP with `http`), over HTTP/1.1 and HTTP/2 alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_is_told_the_client_spoke_https() {
    let backend_srv = echo("echo").await;
    let routes = everything_to(&backend_srv);
    let (_proxy, listener) = start_proxy(&tls_table(routes, &[(None, "a")])).await;
    let addr = listener.local_addr();
    for alpn in [H1, &[b"h2".as_slice(), b"http/1.1".as_slice()][..]] {
        let mut c = TlsClient::open(addr, "a.example.com", alpn).await;
        let text = c.get_host("/headers", "a.example.com").await.text();
        assert!(text.contains(r#"["x-forwarded-proto","https"]"#), "{text}");
    }
}

/// One connection of `config` to `addr` for `a.example.com`: a `GET` with `Connection: close`,
/// the response read to its end (so TLS 1.3 tickets sent after the handshake are taken), and
/// whether the handshake was a resumption.
async fn one_request(addr: SocketAddr, config: &Arc<ClientConfig>) -> rustls::HandshakeKind {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("a.example.com").expect("server name");
    let mut tls = TlsConnector::from(config.clone())
        .connect(name, tcp)
        .await
        .expect("verified TLS connection");
    tls.write_all(b"GET /hostname HTTP/1.1\r\nHost: a.example.com\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut response = Vec::new();
    // A close without close_notify after a whole response is not this test's concern.
    let _ = tls.read_to_end(&mut response).await;
    assert!(response.starts_with(b"HTTP/1.1 200 "), "{response:?}");
    tls.get_ref().1.handshake_kind().expect("handshake done")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_returning_client_resumes_by_ticket_after_many_other_handshakes() {
    let backend_srv = echo("echo").await;
    let t = tls_table(everything_to(&backend_srv), &[(Some("a.example.com"), "a")]);
    let (_proxy, listener) = start_proxy(&t).await;
    let addr = listener.local_addr();
    let client = |versions: &[&'static rustls::SupportedProtocolVersion]| {
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(&fixture("ca.crt")).expect("CA PEM"))
            .expect("CA");
        Arc::new(
            ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
                .with_protocol_versions(versions)
                .expect("protocol versions")
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    };
    for version in [&rustls::version::TLS13, &rustls::version::TLS12] {
        let returning = client(&[version]);
        assert_eq!(
            one_request(addr, &returning).await,
            rustls::HandshakeKind::Full
        );
        // More handshakes by other clients than rustls' default 256-entry session cache
        // outlives (TLS 1.2 stores one session there, TLS 1.3 two tickets): the returning
        // client resumes only with stateless tickets.
        for _ in 0..300 {
            one_request(addr, &client(&[version])).await;
        }
        assert_eq!(
            one_request(addr, &returning).await,
            rustls::HandshakeKind::Resumed,
            "{version:?}"
        );
    }
}
