//! Upstream backend protocol tests (GEP-1911): `HTTPRouteBackendProtocolH2C` (an HTTP/2 prior
//! knowledge request reaches the backend whose Service port says `kubernetes.io/h2c`) and
//! `HTTPRouteBackendProtocolWebSocket` (a WebSocket to the port that says `kubernetes.io/ws`
//! echoes a text and a binary message).

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{echo::Captured, harness::*};

const SAME: (&str, &str) = (INFRA, "same-namespace");

macro_rules! suite {
    ($($file:expr),+) => {
        match Suite::start(&[$($file),+]).await {
            Some(s) => s,
            None => return,
        }
    };
}

/// HTTPRouteBackendProtocolH2C: "http2 prior knowledge request should reach backend", 3 times
/// in a row on new connections. Beyond upstream, the echo reports the HTTP version it was
/// spoken to in: HTTP/2, as the port's appProtocol asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_backend_protocol_h2c() {
    let s = suite!("httproute-backend-protocol-h2c.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "backend-protocol-h2c")]);
    let gw = s.gateway(SAME.0, SAME.1);
    for _ in 0..3 {
        let stream = TcpStream::connect(gw).await.expect("connect");
        let (mut sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("HTTP/2 handshake");
        tokio::spawn(conn);
        let req = Request::get(format!("http://{gw}/"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.expect("response");
        assert_eq!(resp.status(), 200, "HTTPRouteBackendProtocolH2C");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let seen: Captured = serde_json::from_slice(&body).expect("echo answer");
        assert!(
            seen.pod.starts_with("infra-backend-v1"),
            "HTTPRouteBackendProtocolH2C: pod {}",
            seen.pod
        );
        assert_eq!(seen.namespace, INFRA);
        assert_eq!(
            seen.proto, "HTTP/2.0",
            "the backend was spoken to in HTTP/2"
        );
    }
    s.shutdown().await;
}

/// A client frame: FIN, `opcode`, masked as clients must.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x80 | opcode, 0x80 | payload.len() as u8];
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Reads one unmasked server frame: (opcode, payload).
async fn server_frame(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await.expect("frame head");
    assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
    let len = usize::from(head[1] & 0x7f);
    assert!(len < 126, "short test messages");
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.expect("frame payload");
    (head[0] & 0x0f, payload)
}

/// HTTPRouteBackendProtocolWebSocket: "websocket connection should reach backend": the
/// handshake (the accept key checked, as Go's client checks it), then a text and a binary
/// message echoed; 3 times in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httproute_backend_protocol_websocket() {
    let s = suite!("httproute-backend-protocol-websocket.yaml");
    s.routes_must_be_accepted(SAME, &[(INFRA, "backend-protocol-ws")]);
    let gw = s.gateway(SAME.0, SAME.1);
    let key = "dGhlIHNhbXBsZSBub25jZQ==";
    let expected_accept = {
        let mut input = key.as_bytes().to_vec();
        input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
        let d = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
        base64::engine::general_purpose::STANDARD.encode(d.as_ref())
    };
    for _ in 0..3 {
        let mut s = TcpStream::connect(gw).await.expect("connect");
        let handshake = format!(
            "GET /ws HTTP/1.1\r\nHost: {gw}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\
             Origin: ws://gateway/HTTPRouteBackendProtocolWebSocket\r\n\r\n"
        );
        s.write_all(handshake.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(s.read_u8().await.expect("response head"));
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(
            head.contains(&format!(
                "sec-websocket-accept: {}",
                expected_accept.to_ascii_lowercase()
            )),
            "{head}"
        );
        let text = b"Websocket Support!";
        s.write_all(&client_frame(1, text)).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), server_frame(&mut s))
            .await
            .expect("text reply");
        assert_eq!(got, (1, text.to_vec()));
        let binary = [1u8, 2, 3, 4, 5, 6, 7];
        s.write_all(&client_frame(2, &binary)).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), server_frame(&mut s))
            .await
            .expect("binary reply");
        assert_eq!(got, (2, binary.to_vec()));
    }
    s.shutdown().await;
}
