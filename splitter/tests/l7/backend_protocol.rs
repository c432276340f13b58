//! Backend protocols from the Service port's `appProtocol` (GEP-1911) through the real proxy:
//! `kubernetes.io/h2c` (the backend is spoken to over HTTP/2, its connections pooled and
//! multiplexed) and `kubernetes.io/ws` (a WebSocket upgrade goes through).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::rt::{TokioExecutor, TokioIo};
use splitter::dataplane::proxy::{ProxyConfig, UpstreamConfig};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use crate::{manifests::*, support::*};

/// A backend that answers every request with the HTTP version it was spoken to in, over
/// HTTP/1.1 or HTTP/2 (prior knowledge), whichever the client uses.
async fn version_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(format!(
                            "{:?}",
                            req.version()
                        )))))
                    });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn an_httproute_backend_whose_port_says_h2c_is_spoken_to_over_http2() {
    let (addr, _task) = version_backend().await;
    let yaml = format!(
        r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: h, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /h2c}}}}]
    backendRefs: [{{name: h2, port: 8080}}]
  - matches: [{{path: {{type: PathPrefix, value: /plain}}}}]
    backendRefs: [{{name: plain, port: 8080}}]
{}{}"#,
        service("h2", Some(addr), Some("kubernetes.io/h2c")),
        service("plain", Some(addr), None),
    );
    let (_proxy, listener) = proxy_for(&yaml).await;
    // An HTTP/1.1 client, several requests on one connection.
    let mut conn = Connection::open(listener.local_addr()).await;
    for _ in 0..3 {
        let r = conn.get("/h2c/x").await;
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "HTTP/2.0"));
        let r = conn.get("/plain/x").await;
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "HTTP/1.1"));
    }
}

#[tokio::test]
async fn a_websocket_upgrade_reaches_a_backend_whose_port_says_ws() {
    let echo = echo("ws").await;
    let yaml = format!(
        r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: ws, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /ws}}}}]
    backendRefs: [{{name: ws, port: 8080}}]
{}"#,
        service("ws", Some(echo.local_addr()), Some("kubernetes.io/ws")),
    );
    let (_proxy, listener) = proxy_for(&yaml).await;
    let mut s = TcpStream::connect(listener.local_addr()).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: gateway.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("upgrade: websocket"), "{head}");
    // A masked text frame "hi" goes through the tunnel and comes back.
    let frame = [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
    s.write_all(&frame).await.unwrap();
    let mut back = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .expect("the tunnel answers")
        .unwrap();
    assert_eq!(back, frame);
}

/// An HTTP/2-only backend that counts the connections it accepted and those that closed.
async fn counting_h2_backend() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, closed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (a, c) = (accepted.clone(), closed.clone());
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            a.fetch_add(1, Ordering::SeqCst);
            let c = c.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from("ok"))))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                c.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, accepted, closed)
}

#[tokio::test]
async fn h2c_requests_share_one_connection_per_endpoint_and_an_idle_one_is_closed() {
    let (addr, accepted, closed) = counting_h2_backend().await;
    let yaml = format!(
        r#"
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: h, namespace: default}}
spec:
  parentRefs: [{{name: gw}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /}}}}]
    backendRefs: [{{name: h2, port: 8080}}]
{}"#,
        service("h2", Some(addr), Some("kubernetes.io/h2c")),
    );
    let config = ProxyConfig {
        workers: 1,
        upstream: UpstreamConfig {
            pool_idle_timeout: Duration::from_millis(300),
            ..UpstreamConfig::default()
        },
        ..test_config()
    };
    let (_proxy, listener) = proxy_with(config, &yaml).await;
    // 40 requests at once from 40 client connections, the first ones included: one backend
    // connection carries them all.
    let replies = futures::future::join_all(
        (0..40).map(|_| async { get_once(listener.local_addr(), "/x").await }),
    )
    .await;
    assert!(
        replies
            .iter()
            .all(|r| r.status == StatusCode::OK && r.text() == "ok")
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one multiplexed connection"
    );
    assert_eq!(closed.load(Ordering::SeqCst), 0);
    // Unused for longer than the pool's idle timeout: let go, and closed.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        closed.load(Ordering::SeqCst),
        1,
        "the idle connection is closed"
    );
    assert_eq!(get_once(listener.local_addr(), "/x").await.text(), "ok");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}
