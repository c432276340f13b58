//! GRPCRoute through the real proxy on loopback: manifests go through the model and the plan
//! as the agent's do (`manifests`), a real HTTP/2 client (prior knowledge, or TLS with ALPN h2)
//! makes gRPC calls, and real h2c backends (`splitter::grpc_echo`) answer them. Method and
//! header matching, exact weighted shares, the proxy's own gRPC statuses, deadlines, streaming
//! both ways, trailers both ways.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use splitter::{
    dataplane::proxy::{ProxyConfig, RequestLabels, UpstreamConfig},
    grpc_echo::{ECHO_SERVICE, GrpcEchoServer, PodContext, STREAM_SERVICE, wire},
};
use tokio::{net::TcpStream, sync::mpsc};

use crate::{manifests::*, support::*};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ClientBody = UnsyncBoxBody<Bytes, BoxError>;

const HOST: &str = "grpc.example.com";

async fn grpc_echo(pod: &str) -> GrpcEchoServer {
    GrpcEchoServer::bind(
        loopback(),
        PodContext {
            namespace: "default".into(),
            pod: pod.into(),
            ..PodContext::default()
        },
    )
    .await
    .expect("gRPC echo binds")
}

/// One HTTP/2 connection with prior knowledge, as gRPC clients open them.
struct H2 {
    sender: http2::SendRequest<ClientBody>,
}

/// A gRPC call's outcome as the client saw it.
#[derive(Debug)]
struct Call {
    status: StatusCode,
    headers: HeaderMap,
    messages: Vec<Bytes>,
    /// The trailers; for a trailers-only answer, empty (the status is in `headers`).
    trailers: HeaderMap,
}

impl Call {
    /// `grpc-status`, from the trailers or, trailers-only, from the head.
    fn grpc_status(&self) -> Option<u32> {
        self.trailers
            .get("grpc-status")
            .or_else(|| self.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    }

    fn echo(&self) -> splitter::grpc_echo::EchoAssertions {
        assert_eq!(self.grpc_status(), Some(0), "{self:?}");
        assert_eq!(self.messages.len(), 1, "{self:?}");
        wire::parse_echo_response(&self.messages[0]).expect("an EchoResponse")
    }
}

impl H2 {
    async fn open(addr: SocketAddr) -> Self {
        Self::over(TcpStream::connect(addr).await.expect("connect")).await
    }

    async fn over<S>(stream: S) -> Self
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake");
        tokio::spawn(conn);
        Self { sender }
    }

    fn request(path: &str, headers: &[(&str, &str)], body: ClientBody) -> Request<ClientBody> {
        Self::request_to(HOST, path, headers, body)
    }

    fn request_to(
        authority: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: ClientBody,
    ) -> Request<ClientBody> {
        let mut b = Request::builder()
            .method("POST")
            .uri(format!("http://{authority}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(body).expect("valid request")
    }

    /// A unary call with an empty request message.
    async fn unary(&mut self, path: &str, headers: &[(&str, &str)]) -> Call {
        self.unary_to(HOST, path, headers).await
    }

    async fn unary_to(&mut self, authority: &str, path: &str, headers: &[(&str, &str)]) -> Call {
        let body = Full::new(wire::frame(&[]))
            .map_err(|never| match never {})
            .boxed_unsync();
        let resp = self
            .sender
            .clone()
            .send_request(Self::request_to(authority, path, headers, body))
            .await
            .expect("call answered");
        let (parts, mut body) = resp.into_parts();
        let mut buf = BytesMut::new();
        let mut trailers = HeaderMap::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.expect("response stream");
            match frame.into_data() {
                Ok(d) => buf.extend_from_slice(&d),
                Err(f) => trailers = f.into_trailers().expect("data or trailers"),
            }
        }
        let mut messages = Vec::new();
        while let Some(m) = wire::take_message(&mut buf) {
            messages.push(m);
        }
        assert!(buf.is_empty(), "a partial message left over");
        Call {
            status: parts.status,
            headers: parts.headers,
            messages,
            trailers,
        }
    }
}

fn echo_path(method: &str) -> String {
    format!("/{ECHO_SERVICE}/{method}")
}

#[tokio::test]
async fn grpc_calls_are_routed_by_method_and_header_to_h2c_backends() {
    let (v1, v2, v3) = (
        grpc_echo("v1").await,
        grpc_echo("v2").await,
        grpc_echo("v3").await,
    );
    let yaml = format!(
        r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: g, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  hostnames: [{HOST}]
  rules:
  - matches: [{{method: {{service: {ECHO_SERVICE}, method: Echo}}}}]
    backendRefs: [{{name: v1, port: 8080}}]
  - matches: [{{method: {{service: {ECHO_SERVICE}, method: EchoTwo}}}}]
    backendRefs: [{{name: v2, port: 8080}}]
  - matches:
    - method: {{service: {ECHO_SERVICE}, method: Echo}}
      headers: [{{name: version, value: three}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {{set: [{{name: x-from-gateway, value: "yes"}}]}}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {{add: [{{name: x-route, value: three}}]}}
    backendRefs: [{{name: v3, port: 8080}}]
{}{}{}"#,
        service("v1", Some(v1.local_addr()), None),
        service("v2", Some(v2.local_addr()), None),
        service("v3", Some(v3.local_addr()), None),
    );
    let (_proxy, listener) = proxy_for(&yaml).await;
    let mut client = H2::open(listener.local_addr()).await;

    let call = client.unary(&echo_path("Echo"), &[]).await;
    assert_eq!(call.status, StatusCode::OK);
    let echo = call.echo();
    assert_eq!(echo.context.pod, "v1");
    assert_eq!(echo.fully_qualified_method, echo_path("Echo"));
    // The backend was called over HTTP/2 with the client's authority and gRPC's te.
    assert_eq!(echo.authority, HOST);
    assert_eq!(echo.header("te"), ["trailers"]);
    assert_eq!(echo.header("content-type"), ["application/grpc"]);
    assert_eq!(echo.header("x-forwarded-proto"), ["http"]);

    assert_eq!(
        client
            .unary(&echo_path("EchoTwo"), &[])
            .await
            .echo()
            .context
            .pod,
        "v2"
    );

    let call = client
        .unary(&echo_path("Echo"), &[("version", "three")])
        .await;
    assert_eq!(
        call.headers.get("x-route").map(|v| v.as_bytes()),
        Some(&b"three"[..])
    );
    let echo = call.echo();
    assert_eq!(echo.context.pod, "v3");
    assert_eq!(echo.header("x-from-gateway"), ["yes"]);

    // No rule for EchoThree, another service, or another host: UNIMPLEMENTED, trailers-only.
    for (path, host) in [
        (echo_path("EchoThree"), HOST),
        ("/other.Service/Echo".to_string(), HOST),
        (echo_path("Echo"), "other.example.com"),
    ] {
        let call = client.unary_to(host, &path, &[]).await;
        assert_eq!(call.status, StatusCode::OK, "{path} on {host}");
        assert_eq!(call.headers["content-type"], "application/grpc");
        assert_eq!(call.grpc_status(), Some(12), "{path}: {call:?}");
        assert!(call.trailers.is_empty() && call.messages.is_empty());
    }
}

#[tokio::test]
async fn grpc_weights_are_exact_shares_per_call_over_one_multiplexed_connection() {
    let (v1, v2, v3) = (
        grpc_echo("v1").await,
        grpc_echo("v2").await,
        grpc_echo("v3").await,
    );
    let yaml = format!(
        r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: w, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - backendRefs:
    - {{name: v1, port: 8080, weight: 70}}
    - {{name: v2, port: 8080, weight: 30}}
    - {{name: v3, port: 8080, weight: 0}}
{}{}{}"#,
        service("v1", Some(v1.local_addr()), None),
        service("v2", Some(v2.local_addr()), None),
        service("v3", Some(v3.local_addr()), None),
    );
    let (_proxy, listener) = proxy_for(&yaml).await;
    let client = H2::open(listener.local_addr()).await;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    // 500 calls, 10 in flight at a time on the one connection.
    for _ in 0..50 {
        let calls = (0..10).map(|_| {
            let mut c = H2 {
                sender: client.sender.clone(),
            };
            async move { c.unary(&echo_path("Echo"), &[]).await }
        });
        for call in futures::future::join_all(calls).await {
            *seen.entry(call.echo().context.pod).or_default() += 1;
        }
    }
    assert_eq!(
        seen,
        BTreeMap::from([("v1".to_string(), 350), ("v2".to_string(), 150)])
    );
}

#[tokio::test]
async fn calls_without_a_healthy_backend_get_unavailable() {
    // A port nothing listens on: bound, then closed.
    let dead = {
        let l = std::net::TcpListener::bind(loopback()).unwrap();
        l.local_addr().unwrap()
    };
    let yaml = format!(
        r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: u, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{method: {{service: a.Dead}}}}]
    backendRefs: [{{name: dead, port: 8080}}]
  - matches: [{{method: {{service: a.Empty}}}}]
    backendRefs: [{{name: empty, port: 8080}}]
  - matches: [{{method: {{service: a.Missing}}}}]
    backendRefs: [{{name: missing, port: 8080}}]
{}{}"#,
        service("dead", Some(dead), None),
        service("empty", None, None),
    );
    let (proxy, listener) = proxy_for(&yaml).await;
    let mut client = H2::open(listener.local_addr()).await;
    for service in ["a.Dead", "a.Empty", "a.Missing"] {
        let call = client.unary(&format!("/{service}/Call"), &[]).await;
        assert_eq!(call.status, StatusCode::OK, "{service}");
        assert_eq!(call.headers["content-type"], "application/grpc");
        assert_eq!(call.grpc_status(), Some(14), "{service}: {call:?}");
        assert!(call.headers.contains_key("grpc-message"));
    }
    // The metrics count each failed call under the HTTP status its failure stands for, not
    // the 200 that carried its grpc-status.
    for (rule, backend, status) in [
        (0, "default/dead:8080", 502),
        (1, "default/empty:8080", 503),
        (2, "default/missing:8080", 500),
    ] {
        let labels = RequestLabels {
            listener: listener.local_addr().to_string().into(),
            route: format!("default/u/{rule}").into(),
            backend: backend.into(),
            status,
        };
        assert_eq!(proxy.metrics().requests_with(&labels), 1, "{labels:?}");
    }
}

#[tokio::test]
async fn a_backend_slower_than_the_read_timeout_gets_deadline_exceeded() {
    let v1 = grpc_echo("v1").await;
    let yaml = format!(
        r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: d, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - backendRefs: [{{name: v1, port: 8080}}]
{}"#,
        service("v1", Some(v1.local_addr()), None),
    );
    let config = ProxyConfig {
        upstream: UpstreamConfig {
            read_timeout: Some(Duration::from_millis(300)),
            ..UpstreamConfig::default()
        },
        ..test_config()
    };
    let (_proxy, listener) = proxy_with(config, &yaml).await;
    let mut client = H2::open(listener.local_addr()).await;
    let call = client
        .unary(&echo_path("Echo"), &[("x-echo-delay-ms", "1500")])
        .await;
    assert_eq!(call.status, StatusCode::OK);
    assert_eq!(call.grpc_status(), Some(4), "{call:?}");
    // In time, the same call is answered.
    let call = client
        .unary(&echo_path("Echo"), &[("x-echo-delay-ms", "10")])
        .await;
    assert_eq!(call.echo().context.pod, "v1");
    // A client's own deadline (`grpc-timeout`) replaces the read timeout: longer, the slow
    // call is answered; shorter, it ends at the client's deadline.
    let call = client
        .unary(
            &echo_path("Echo"),
            &[("x-echo-delay-ms", "800"), ("grpc-timeout", "5S")],
        )
        .await;
    assert_eq!(call.echo().context.pod, "v1");
    let start = tokio::time::Instant::now();
    let call = client
        .unary(
            &echo_path("Echo"),
            &[("x-echo-delay-ms", "1500"), ("grpc-timeout", "100m")],
        )
        .await;
    assert_eq!(call.grpc_status(), Some(4), "{call:?}");
    assert!(
        start.elapsed() < Duration::from_millis(1000),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn server_streaming_messages_arrive_before_the_call_ends() {
    let v1 = grpc_echo("v1").await;
    let yaml = format!(
        r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: s, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - backendRefs: [{{name: v1, port: 8080}}]
{}"#,
        service("v1", Some(v1.local_addr()), None),
    );
    let (_proxy, listener) = proxy_for(&yaml).await;
    let client = H2::open(listener.local_addr()).await;
    let body = Full::new(wire::frame(&[]))
        .map_err(|never| match never {})
        .boxed_unsync();
    let req = H2::request(
        &format!("/{STREAM_SERVICE}/Count"),
        &[("x-count", "3"), ("x-interval-ms", "400")],
        body,
    );
    let resp = client.sender.clone().send_request(req).await.unwrap();
    let mut body = resp.into_body();
    let start = tokio::time::Instant::now();
    let mut arrivals = Vec::new();
    let mut trailers = None;
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        match frame.unwrap().into_data() {
            Ok(d) => {
                buf.extend_from_slice(&d);
                while let Some(m) = wire::take_message(&mut buf) {
                    arrivals.push((start.elapsed(), m));
                }
            }
            Err(f) => trailers = Some((start.elapsed(), f.into_trailers().unwrap())),
        }
    }
    let (ended, trailers) = trailers.expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(arrivals.len(), 3);
    // The first message came while the backend was still streaming (two more at 400 ms
    // intervals): nothing held the response back until its end.
    assert!(
        ended - arrivals[0].0 >= Duration::from_millis(600),
        "first message at {:?}, end at {ended:?}",
        arrivals[0].0
    );
}

#[tokio::test]
async fn bidi_streaming_echoes_each_message_at_once_and_trailers_pass_both_ways() {
    bidi(test_config(), Duration::ZERO).await;
}

/// A gRPC stream may be quiet longer than an HTTP/2 request body may (`body_read_timeout`):
/// a bidirectional call waiting for events is not cut.
#[tokio::test]
async fn a_quiet_bidi_stream_outlives_the_request_body_idle_timeout() {
    let config = ProxyConfig {
        body_read_timeout: Duration::from_millis(300),
        ..test_config()
    };
    bidi(config, Duration::from_millis(900)).await;
}

/// Three messages echoed one by one (with `pause` before each), then request trailers
/// reported back in the response trailers.
async fn bidi(config: ProxyConfig, pause: Duration) {
    let v1 = grpc_echo("v1").await;
    let yaml = format!(
        r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: b, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - backendRefs: [{{name: v1, port: 8080}}]
{}"#,
        service("v1", Some(v1.local_addr()), None),
    );
    let (_proxy, listener) = proxy_with(config, &yaml).await;
    let client = H2::open(listener.local_addr()).await;
    let (tx, mut rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    let body = StreamBody::new(futures::stream::poll_fn(move |cx| rx.poll_recv(cx))).boxed_unsync();
    let req = H2::request(&format!("/{STREAM_SERVICE}/Bidi"), &[], body);
    let resp = client.sender.clone().send_request(req).await.unwrap();
    assert_eq!(resp.headers()["content-type"], "application/grpc");
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    // Each message comes back while the request stream is still open.
    for i in 0..3u8 {
        tokio::time::sleep(pause).await;
        let msg = wire::string_field(1, &format!("ping {i}"));
        tx.send(Ok(Frame::data(wire::frame(&msg)))).await.unwrap();
        let got = loop {
            if let Some(m) = wire::take_message(&mut buf) {
                break m;
            }
            let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .expect("the echo of a message arrives while the call is open")
                .expect("a frame")
                .unwrap();
            buf.extend_from_slice(&frame.into_data().expect("data"));
        };
        assert_eq!(got, msg);
    }
    // The request ends with trailers, which the backend reports in its own.
    let mut t = HeaderMap::new();
    t.insert("x-client-note", HeaderValue::from_static("done"));
    tx.send(Ok(Frame::trailers(t))).await.unwrap();
    drop(tx);
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        if let Ok(t) = frame.unwrap().into_trailers() {
            trailers = Some(t);
        }
    }
    let trailers = trailers.expect("response trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-messages"], "3");
    assert_eq!(trailers["x-request-trailer-x-client-note"], "done");
}

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/../splitter-plan/tests/fixtures/tls/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[tokio::test]
async fn grpc_over_tls_with_alpn_h2_reaches_the_h2c_backend() {
    let v1 = grpc_echo("v1").await;
    let pem = |f: &str| {
        fixture(f)
            .lines()
            .map(|l| format!("    {l}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let text = format!(
        r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: splitter}}
spec: {{controllerName: splitter.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: gw, namespace: default}}
spec:
  gatewayClassName: splitter
  listeners:
  - {{name: https, protocol: HTTPS, port: 443, tls: {{certificateRefs: [{{name: cert}}]}}}}
---
apiVersion: v1
kind: Secret
metadata: {{name: cert, namespace: default}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{}
  tls.key: |
{}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: g, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{method: {{service: {ECHO_SERVICE}}}}}]
    backendRefs: [{{name: v1, port: 8080}}]
{}"#,
        pem("a.crt"),
        pem("a.key"),
        service("v1", Some(v1.local_addr()), None),
    );
    let (_proxy, listener) = serve(test_config(), &text).await;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(fixture("ca.crt").as_bytes()).expect("CA PEM"))
        .expect("CA");
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(listener.local_addr()).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from("a.example.com").unwrap(), tcp)
        .await
        .expect("verified TLS");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let mut client = H2::over(stream).await;
    let echo = client.unary(&echo_path("Echo"), &[]).await.echo();
    assert_eq!(echo.context.pod, "v1");
    // The backend is told the client spoke HTTPS, over its own cleartext HTTP/2.
    assert_eq!(echo.header("x-forwarded-proto"), ["https"]);
    assert_eq!(
        client.unary("/other.Svc/M", &[]).await.grpc_status(),
        Some(12)
    );
}
