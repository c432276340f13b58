//! Upstream GRPCRoute conformance tests (`GRPCExactMethodMatching`, `GRPCRouteHeaderMatching`,
//! `GRPCRouteListenerHostnameMatching`, `GRPCRouteNamedRule`, `GRPCRouteWeight`): gRPC calls of
//! the upstream echo service over HTTP/2 with prior knowledge, a new connection per call as
//! upstream's client dials, compared as `conformance/utils/grpc` compares them: the status
//! code, and for OK the answering pod's namespace and its name's prefix (the backend); every
//! case 3 times in a row.

use std::{collections::BTreeMap, net::SocketAddr};

use bytes::{Bytes, BytesMut};
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use splitter::grpc_echo::{ECHO_SERVICE, EchoAssertions, wire};
use tokio::net::TcpStream;

use crate::harness::*;

const SAME: (&str, &str) = (INFRA, "same-namespace");
/// `grpc.Code` values the cases expect.
const OK: u32 = 0;
const UNIMPLEMENTED: u32 = 12;

macro_rules! suite {
    ($($file:expr),+) => {
        match Suite::start(&[$($file),+]).await {
            Some(s) => s,
            None => return,
        }
    };
}

/// One unary call of `method` of the echo service with an empty `EchoRequest`: the status code
/// and, for OK, the assertions the echo answered.
async fn call(
    gw: SocketAddr,
    authority: &str,
    method: &str,
    metadata: &[(&str, &str)],
) -> Result<(u32, Option<EchoAssertions>), String> {
    let stream = TcpStream::connect(gw)
        .await
        .map_err(|e| format!("connect {gw}: {e}"))?;
    let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
    tokio::spawn(conn);
    let mut req = Request::post(format!("http://{authority}/{ECHO_SERVICE}/{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (k, v) in metadata {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(wire::frame(&[])))
        .map_err(|e| e.to_string())?;
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let (parts, mut body) = resp.into_parts();
    if parts.status != 200 {
        return Err(format!("HTTP status {}", parts.status));
    }
    let mut data = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame.map_err(|e| e.to_string())?.into_data() {
            Ok(d) => data.extend_from_slice(&d),
            Err(f) => trailers = f.into_trailers().ok(),
        }
    }
    let status = trailers
        .as_ref()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| parts.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u32>().ok())
        .ok_or("no grpc-status")?;
    let message: Option<Bytes> = wire::take_message(&mut data);
    let echo = match (status, message) {
        (OK, Some(m)) => Some(wire::parse_echo_response(&m).ok_or("not an EchoResponse")?),
        (OK, None) => return Err("status OK without a message".into()),
        _ => None,
    };
    Ok((status, echo))
}

/// One upstream `grpc.ExpectedResponse`.
struct GrpcCase {
    method: &'static str,
    authority: &'static str,
    metadata: Vec<(&'static str, &'static str)>,
    code: u32,
    backend: Option<&'static str>,
}

fn ok(method: &'static str, backend: &'static str) -> GrpcCase {
    GrpcCase {
        method,
        authority: "",
        metadata: Vec::new(),
        code: OK,
        backend: Some(backend),
    }
}

fn unimplemented(method: &'static str) -> GrpcCase {
    GrpcCase {
        method,
        authority: "",
        metadata: Vec::new(),
        code: UNIMPLEMENTED,
        backend: None,
    }
}

impl GrpcCase {
    fn meta(mut self, k: &'static str, v: &'static str) -> Self {
        self.metadata.push((k, v));
        self
    }

    fn authority(mut self, a: &'static str) -> Self {
        self.authority = a;
        self
    }

    fn compare(&self, got: &(u32, Option<EchoAssertions>)) -> Result<(), String> {
        if got.0 != self.code {
            return Err(format!("code {}, want {}", got.0, self.code));
        }
        if let (Some(backend), Some(echo)) = (self.backend, &got.1) {
            if echo.context.namespace != INFRA {
                return Err(format!("namespace {:?}", echo.context.namespace));
            }
            if !echo.context.pod.starts_with(backend) {
                return Err(format!("pod {:?}, want {backend}-*", echo.context.pod));
            }
            let method = format!("/{ECHO_SERVICE}/{}", self.method);
            if echo.fully_qualified_method != method {
                return Err(format!("method {:?}", echo.fully_qualified_method));
            }
        }
        Ok(())
    }
}

async fn expect_grpc(test: &str, gw: SocketAddr, cases: &[GrpcCase]) {
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let authority = if c.authority.is_empty() {
            gw.to_string()
        } else {
            c.authority.to_owned()
        };
        for attempt in 0..3 {
            let got = call(gw, &authority, c.method, &c.metadata).await;
            if let Err(e) = got.and_then(|g| c.compare(&g)) {
                failures.push(format!(
                    "{test} case {i} ({} {authority} {:?}) attempt {attempt}: {e}",
                    c.method, c.metadata
                ));
                break;
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// GRPCExactMethodMatching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_exact_method_matching() {
    let s = suite!("grpcroute-exact-method-matching.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "exact-matching")]);
    expect_grpc(
        "GRPCExactMethodMatching",
        s.gateway(SAME.0, SAME.1),
        &[
            ok("Echo", "grpc-infra-backend-v1"),
            ok("EchoTwo", "grpc-infra-backend-v2"),
            unimplemented("EchoThree"),
        ],
    )
    .await;
    s.shutdown().await;
}

/// GRPCRouteHeaderMatching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_route_header_matching() {
    let s = suite!("grpcroute-header-matching.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "grpc-header-matching")]);
    let (v1, v2) = ("grpc-infra-backend-v1", "grpc-infra-backend-v2");
    expect_grpc(
        "GRPCRouteHeaderMatching",
        s.gateway(SAME.0, SAME.1),
        &[
            ok("Echo", v1).meta("Version", "one"),
            ok("Echo", v2).meta("Version", "two"),
            ok("Echo", v1)
                .meta("Version", "two")
                .meta("Color", "orange"),
            ok("Echo", v2).meta("Version", "two").meta("Color", "blue"),
            unimplemented("Echo").meta("Color", "orange"),
            unimplemented("Echo").meta("Some-Other-Header", "one"),
            ok("Echo", v1).meta("Color", "blue"),
            ok("Echo", v1).meta("Color", "green"),
            ok("Echo", v2).meta("Color", "red"),
            ok("Echo", v2).meta("Color", "yellow"),
            unimplemented("Echo").meta("Color", "purple"),
        ],
    )
    .await;
    s.shutdown().await;
}

/// GRPCRouteListenerHostnameMatching.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_route_listener_hostname_matching() {
    let s = suite!("grpcroute-listener-hostname-matching.yaml");
    let gw = (INFRA, "grpcroute-listener-hostname-matching");
    s.routes_must_be_accepted(
        gw,
        &[
            (INFRA, "backend-v1"),
            (INFRA, "backend-v2"),
            (INFRA, "backend-v3"),
        ],
    );
    let v3 = "grpc-infra-backend-v3";
    expect_grpc(
        "GRPCRouteListenerHostnameMatching",
        s.gateway(gw.0, gw.1),
        &[
            ok("Echo", "grpc-infra-backend-v1").authority("bar.com"),
            ok("Echo", "grpc-infra-backend-v2").authority("foo.bar.com"),
            ok("Echo", v3).authority("baz.bar.com"),
            ok("Echo", v3).authority("boo.bar.com"),
            ok("Echo", v3).authority("multiple.prefixes.bar.com"),
            ok("Echo", v3).authority("multiple.prefixes.foo.com"),
            unimplemented("Echo").authority("foo.com"),
            unimplemented("Echo").authority("no.matching.host"),
        ],
    )
    .await;
    s.shutdown().await;
}

/// GRPCRouteNamedRule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_route_named_rule() {
    let s = suite!("grpcroute-named-rule.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "grpc-named-rules")]);
    expect_grpc(
        "GRPCRouteNamedRule",
        s.gateway(SAME.0, SAME.1),
        &[
            ok("Echo", "grpc-infra-backend-v1"),
            ok("EchoTwo", "grpc-infra-backend-v2"),
        ],
    )
    .await;
    s.shutdown().await;
}

/// GRPCRouteWeight: upstream `weight.TestWeightedDistribution` with gRPC calls: 500 calls, 10 at
/// a time; each backend's share within 0.05, weight 0 exactly 0, no other backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_route_weight() {
    let s = suite!("grpcroute-weight.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "weighted-backends")]);
    let gw = s.gateway(SAME.0, SAME.1);
    const TOTAL: usize = 500;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..TOTAL / 10 {
        let batch: Vec<_> = (0..10)
            .map(|_| tokio::spawn(async move { call(gw, &gw.to_string(), "Echo", &[]).await }))
            .collect();
        for b in batch {
            let (code, echo) = b.await.unwrap().expect("call");
            assert_eq!(code, OK, "GRPCRouteWeight: every call is OK");
            let pod = echo.expect("an answer").context.pod;
            let parts: Vec<&str> = pod.split('-').collect();
            *seen.entry(parts[..parts.len() - 2].join("-")).or_default() += 1;
        }
    }
    for (backend, want) in [
        ("grpc-infra-backend-v1", 0.7),
        ("grpc-infra-backend-v2", 0.3),
        ("grpc-infra-backend-v3", 0.0),
    ] {
        let got = *seen.get(backend).unwrap_or(&0) as f64 / TOTAL as f64;
        if want == 0.0 {
            assert_eq!(
                got, 0.0,
                "GRPCRouteWeight: {backend} has weight 0: {seen:?}"
            );
        } else {
            assert!(
                (got - want).abs() <= 0.05,
                "GRPCRouteWeight: {backend} got {got}, want {want} +- 0.05: {seen:?}"
            );
        }
    }
    assert_eq!(
        seen.len(),
        2,
        "GRPCRouteWeight: only weighted backends: {seen:?}"
    );
    s.shutdown().await;
}
