//! Backends that break HTTP/1.1 or push its limits, as the client sees them: stray bytes after
//! a response, a response head at the 64 KiB limit, endless informational responses; request
//! bodies of every framing reach the backend (GET with a chunked body included); the access log.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use crate::support::*;
use bytes::Bytes;
use http_body_util::Full;
use splitter::dataplane::proxy::{AccessLog, ProxyConfig};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// A backend that answers each request head on a connection with `answer(connection index,
/// request index on it)`, written in one write or one byte per write; counts connections.
async fn scripted<F>(answer: F, trickle: bool) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(usize, usize) -> Vec<u8> + Send + Sync + 'static,
{
    let listener = TcpListener::bind(loopback()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let index = count.fetch_add(1, Ordering::SeqCst);
            let answer = answer.clone();
            tokio::spawn(async move {
                let _ = s.set_nodelay(true);
                let (mut seen, mut buf) = (Vec::new(), [0u8; 4096]);
                for request in 0.. {
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    seen.drain(..end);
                    let bytes = answer(index, request);
                    let wrote = if trickle {
                        let mut ok = true;
                        for b in &bytes {
                            ok &= s.write_all(&[*b]).await.is_ok();
                        }
                        ok
                    } else {
                        s.write_all(&bytes).await.is_ok()
                    };
                    if !wrote {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

#[tokio::test]
async fn an_endpoint_that_sent_stray_bytes_gets_no_pooled_connection() {
    // The first connection's first answer is followed by bytes nobody asked for.
    let (addr, accepted) = scripted(
        |conn, req| {
            let mut out = OK.to_vec();
            if conn == 0 && req == 0 {
                out.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
            }
            out
        },
        false,
    )
    .await;
    let (_proxy, listener) = proxy_to(addr, test_config()).await;
    let mut client = Connection::open(listener.local_addr()).await;
    for _ in 0..3 {
        let r = client.get("/").await;
        assert_eq!((r.status.as_u16(), r.text().as_str()), (200, "ok"));
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        3,
        "after the stray bytes, each request got a fresh connection (the second was not pooled)"
    );
}

/// A response head of exactly `len` bytes (status line to the empty line).
fn head_of(len: usize) -> Vec<u8> {
    let start = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-big: ";
    let end = b"\r\n\r\n";
    let mut out = start.to_vec();
    out.resize(len - end.len(), b'a');
    out.extend_from_slice(end);
    out.extend_from_slice(b"ok");
    assert_eq!(out.len(), len + 2);
    out
}

#[tokio::test]
async fn the_response_head_limit_is_64_kib_exactly_however_the_bytes_arrive() {
    for trickle in [false, true] {
        for (len, status) in [(64 * 1024, 200), (64 * 1024 + 1, 502)] {
            let (addr, _) = scripted(move |_, _| head_of(len), trickle).await;
            let (_proxy, listener) = proxy_to(addr, test_config()).await;
            let r = get_once(listener.local_addr(), "/").await;
            assert_eq!(
                r.status.as_u16(),
                status,
                "a {len}-byte head, {}",
                if trickle {
                    "one byte per write"
                } else {
                    "one write"
                }
            );
            if status == 200 {
                assert_eq!(r.headers["x-big"].len(), len - 47);
                assert_eq!(r.text(), "ok");
            }
        }
    }
}

#[tokio::test]
async fn too_many_informational_responses_are_a_bad_gateway() {
    for (interim, status) in [(8, 200), (9, 502)] {
        let (addr, _) = scripted(
            move |_, _| {
                let mut out = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(interim);
                out.extend_from_slice(OK);
                out
            },
            false,
        )
        .await;
        let (_proxy, listener) = proxy_to(addr, test_config()).await;
        let r = get_once(listener.local_addr(), "/").await;
        assert_eq!(r.status.as_u16(), status, "{interim} 100 Continue first");
    }
}

/// Writes `request` on a fresh connection to `addr` and reads one response: status and body
/// (Content-Length framed, as the proxy frames the echo's answers).
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
        let status = head[9..12].parse().unwrap();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .map_or(0, |v| v.trim().parse().unwrap());
        if got.len() >= end + 4 + length {
            return (status, got[end + 4..end + 4 + length].to_vec());
        }
    }
}

#[tokio::test]
async fn request_bodies_reach_the_backend_in_every_framing() {
    let e = echo("b").await;
    let (_proxy, listener) = proxy_to(e.local_addr(), test_config()).await;
    let addr = listener.local_addr();
    // GET with a chunked body: forwarded, body and all (never dropped).
    let (status, body) = raw_exchange(
        addr,
        b"GET /x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n\
          5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let reply: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (reply["method"].as_str(), reply["body_bytes"].as_u64()),
        (Some("GET"), Some(11))
    );
    // POST, chunked and with a length; a large body over several writes.
    let (status, body) = raw_exchange(
        addr,
        b"POST /x HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nx-t: 1\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let reply: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(reply["body_bytes"].as_u64(), Some(3));
    let mut client = Connection::open(addr).await;
    for size in [1, 4096, 1 << 20] {
        let mut req = request("POST", "/x", "a");
        *req.body_mut() = Full::new(Bytes::from(vec![b'x'; size]));
        let r = client.send(req).await.unwrap();
        assert_eq!(r.status, 200);
        let reply = r.echo();
        assert_eq!(reply.body_bytes, size as u64);
        assert_eq!(reply.header("content-length"), [size.to_string().as_str()]);
    }
}

#[tokio::test]
async fn the_access_log_writes_one_line_per_request_when_on_and_none_by_default() {
    assert!(
        ProxyConfig::default().access_log.is_none(),
        "off by default"
    );
    let e = echo("b").await;
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = lines.clone();
    let config = ProxyConfig {
        access_log: Some(AccessLog::to(move |l| {
            sink.lock()
                .unwrap()
                .push(String::from_utf8(l.to_vec()).unwrap());
        })),
        ..test_config()
    };
    let (_proxy, listener) = proxy_to(e.local_addr(), config).await;
    let (_quiet, quiet) = proxy_to(e.local_addr(), test_config()).await;
    let mut client = Connection::open(listener.local_addr()).await;
    assert_eq!(client.get("/hostname").await.text(), "b");
    get_once(quiet.local_addr(), "/hostname").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while lines.lock().unwrap().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no access log line");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let lines = lines.lock().unwrap().clone();
    assert_eq!(
        lines.len(),
        1,
        "one line, none from the proxy without the log: {lines:?}"
    );
    assert!(lines[0].ends_with('\n') && lines[0].matches('\n').count() == 1);
    let v: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(v["route"], "default/r/0");
    assert_eq!(v["backend"], "default/b:80");
    assert_eq!(v["endpoint"], e.local_addr().to_string());
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/hostname");
    assert_eq!(v["status"], 200);
    assert_eq!(v["bytes"], 1);
    assert_eq!(v["body"], "complete");
    assert_eq!(v["listener"], listener.local_addr().to_string());
    let (total, upstream) = (
        v["duration_ms"].as_f64().unwrap(),
        v["upstream_ms"].as_f64().unwrap(),
    );
    assert!(upstream > 0.0 && upstream <= total, "{v}");
}

#[tokio::test]
async fn a_backend_silent_past_the_read_timeout_gets_504_or_a_cut_body() {
    let config = || {
        let mut c = test_config();
        c.upstream.read_timeout = Some(Duration::from_millis(300));
        c
    };
    // No answer at all.
    let (silent, _) = scripted(|_, _| Vec::new(), false).await;
    let (_proxy, listener) = proxy_to(silent, config()).await;
    let started = std::time::Instant::now();
    let r = get_once(listener.local_addr(), "/").await;
    assert_eq!(r.status.as_u16(), 504);
    assert!(started.elapsed() < Duration::from_secs(3));
    // A head, part of the body, then silence: the body is cut.
    let (stalling, _) = scripted(
        |_, _| b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc".to_vec(),
        false,
    )
    .await;
    let (_proxy, listener) = proxy_to(stalling, config()).await;
    let mut client = Connection::open(listener.local_addr()).await;
    let cut = tokio::time::timeout(Duration::from_secs(5), client.send(get("/")))
        .await
        .expect("the body is cut within the read timeout, not left hanging");
    assert!(cut.is_err(), "{cut:?}");
}
