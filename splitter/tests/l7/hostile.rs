//! Hostile clients (slowloris, silence, oversized heads, garbage, connection floods) are cut
//! off while a well-behaved client on the same listener keeps being served; shutdown drains;
//! a client that half-closes after its request is still answered.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::support::*;
use splitter::{
    dataplane::proxy::{ProxyConfig, ProxyListener},
    echo::EchoServer,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

const HEADER_TIMEOUT: Duration = Duration::from_millis(1500);

async fn setup(
    config: ProxyConfig,
) -> (EchoServer, splitter::dataplane::proxy::Proxy, ProxyListener) {
    let e = echo("good").await;
    let (proxy, listener) = proxy_to(e.local_addr(), config).await;
    (e, proxy, listener)
}

fn hostile_config() -> ProxyConfig {
    ProxyConfig {
        header_read_timeout: HEADER_TIMEOUT,
        max_header_bytes: 16 * 1024,
        ..test_config()
    }
}

/// A client that sends a request every 50 ms on one keep-alive connection until stopped, and
/// returns every failure it saw.
fn well_behaved(addr: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let mut conn = Connection::open(addr).await;
        let (mut served, mut failures) = (0, Vec::new());
        while !stop.load(Ordering::Relaxed) {
            match conn.send(get("/hostname")).await {
                Ok(r) if r.status == 200 && r.text() == "good" => served += 1,
                Ok(r) => failures.push(format!("{} {}", r.status, r.text())),
                Err(e) => failures.push(e.to_string()),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (served, failures)
    })
}

/// Reads until the server closes the connection; returns what it sent, or `None` if it was
/// still open at `limit`.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

async fn with_good_client<F: Future<Output = ()>>(addr: SocketAddr, attack: F) {
    let stop = Arc::new(AtomicBool::new(false));
    let good = well_behaved(addr, stop.clone());
    attack.await;
    // Keep the good client going a little after the attack, on its same connection.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (served, failures) = good.await.expect("good client task");
    assert!(
        failures.is_empty(),
        "the good client saw failures: {failures:?}"
    );
    assert!(served > 3, "the good client kept being served ({served})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_off() {
    let (_e, _p, listener) = setup(hostile_config()).await;
    with_good_client(listener.local_addr(), async {
        let mut s = TcpStream::connect(listener.local_addr()).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: gateway.test\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 1024];
        // Drip one header line every 100 ms, forever; the server must hang up.
        let closed = loop {
            if started.elapsed() > HEADER_TIMEOUT * 8 {
                break false;
            }
            match tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break true,
                Ok(Ok(_)) => continue,
                Err(_) => {
                    if s.write_all(b"X-Slow: 1\r\n").await.is_err() {
                        break true;
                    }
                }
            }
        };
        assert!(closed, "a dripping client was not cut off");
        assert!(
            started.elapsed() >= HEADER_TIMEOUT / 2,
            "cut off too early to be the timeout"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_half_preface_clients_are_cut_off() {
    let (_e, _p, listener) = setup(hostile_config()).await;
    with_good_client(listener.local_addr(), async {
        let mut silent = TcpStream::connect(listener.local_addr()).await.unwrap();
        let mut half_h2 = TcpStream::connect(listener.local_addr()).await.unwrap();
        half_h2.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        for s in [&mut silent, &mut half_h2] {
            assert!(
                read_until_closed(s, HEADER_TIMEOUT * 5).await.is_some(),
                "a client that never completes a request head was not cut off"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_that_goes_quiet_is_cut_off() {
    let (_e, _p, listener) = setup(hostile_config()).await;
    with_good_client(listener.local_addr(), async {
        let mut s = TcpStream::connect(listener.local_addr()).await.unwrap();
        s.write_all(b"GET /hostname HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
            .await
            .unwrap();
        let started = Instant::now();
        // The response comes, then nothing more is asked: the server hangs up between one and
        // two timeouts later (the good client, asking every 50 ms, stays).
        let got = read_until_closed(&mut s, HEADER_TIMEOUT * 5)
            .await
            .expect("a quiet keep-alive connection was not cut off");
        let got = String::from_utf8_lossy(&got);
        assert!(
            got.starts_with("HTTP/1.1 200") && got.ends_with("good"),
            "{got}"
        );
        assert!(
            started.elapsed() >= HEADER_TIMEOUT,
            "cut off before the timeout: {:?}",
            started.elapsed()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_response_outlasts_the_header_timeout() {
    // A backend that sends its body a byte every 600 ms, for more than two header timeouts: a
    // response still being sent is progress, however quiet the client is meanwhile.
    let slow = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = slow.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = slow.accept().await.unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "the proxy closed before sending a request");
            head.extend_from_slice(&buf[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            .await
            .unwrap();
        for _ in 0..6 {
            tokio::time::sleep(Duration::from_millis(600)).await;
            s.write_all(b"1\r\nx\r\n").await.unwrap();
        }
        s.write_all(b"0\r\n\r\n").await.unwrap();
        let _ = s.read(&mut buf).await;
    });
    let (_proxy, listener) = proxy_to(backend_addr, hostile_config()).await;
    let started = Instant::now();
    let reply = Connection::open(listener.local_addr())
        .await
        .send(get("/slow"))
        .await
        .expect("the slow response was cut off");
    assert_eq!(reply.text(), "xxxxxx");
    assert!(started.elapsed() > HEADER_TIMEOUT * 2);
}

/// `shutdown(SHUT_WR)` after the request (what `nc -N` and some scripts do) ends the client's
/// half of the connection, not its interest in the response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_half_closes_after_its_request_is_answered() {
    let (_e, _p, listener) = setup(hostile_config()).await;
    for request in [
        &b"GET /hostname HTTP/1.1\r\nHost: gateway.test\r\n\r\n"[..],
        b"GET /hostname HTTP/1.0\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(listener.local_addr()).await.unwrap();
        s.write_all(request).await.unwrap();
        s.shutdown().await.unwrap();
        let got = read_until_closed(&mut s, Duration::from_secs(5))
            .await
            .expect("the connection is closed after the response");
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1."), "{text:?}");
        assert!(text.contains(" 200 OK\r\n"), "{text:?}");
        assert!(text.ends_with("\r\n\r\ngood"), "{text:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_head_is_refused() {
    let (_e, _p, listener) = setup(hostile_config()).await;
    with_good_client(listener.local_addr(), async {
        let mut s = TcpStream::connect(listener.local_addr()).await.unwrap();
        let mut req = b"GET / HTTP/1.1\r\nHost: gateway.test\r\nX-Big: ".to_vec();
        req.extend(std::iter::repeat_n(b'a', 64 * 1024));
        req.extend_from_slice(b"\r\n\r\n");
        // The server may hang up before reading it all; that is a refusal too.
        let _ = s.write_all(&req).await;
        let got = read_until_closed(&mut s, Duration::from_secs(5))
            .await
            .expect("connection closed after an oversized head");
        let text = String::from_utf8_lossy(&got);
        assert!(
            got.is_empty() || text.starts_with("HTTP/1.1 431"),
            "expected 431 or a hang-up, got {text:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_refused() {
    let (_e, _p, listener) = setup(hostile_config()).await;
    with_good_client(listener.local_addr(), async {
        for junk in [
            &b"\x00\x01\x02\xff\xfe garbage\r\n\r\n"[..],
            b"GET / FTP/9.9\r\n\r\n",
            b"G\xc3\x28T /\r\n\r\n",
        ] {
            let mut s = TcpStream::connect(listener.local_addr()).await.unwrap();
            s.write_all(junk).await.unwrap();
            let got = read_until_closed(&mut s, Duration::from_secs(5))
                .await
                .expect("connection closed after garbage");
            let text = String::from_utf8_lossy(&got);
            assert!(
                got.is_empty() || text.starts_with("HTTP/1.1 400"),
                "expected 400 or a hang-up, got {text:?}"
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_at_accept() {
    let config = ProxyConfig {
        max_connections: 3,
        header_read_timeout: Duration::from_secs(30),
        ..test_config()
    };
    let (_e, _p, listener) = setup(config).await;
    let addr = listener.local_addr();
    let _idle1 = TcpStream::connect(addr).await.unwrap();
    let _idle2 = TcpStream::connect(addr).await.unwrap();
    let mut good = Connection::open(addr).await;
    assert_eq!(good.get("/hostname").await.text(), "good");
    let mut over = TcpStream::connect(addr).await.unwrap();
    let _ = over
        .write_all(b"GET /hostname HTTP/1.1\r\nHost: g\r\n\r\n")
        .await;
    // Closed long before the 30 s header timeout could have done it.
    let got = read_until_closed(&mut over, Duration::from_secs(5))
        .await
        .expect("the fourth connection is closed");
    assert!(
        got.is_empty(),
        "no response over the limit: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(good.get("/hostname").await.text(), "good");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_finishes_in_flight_and_refuses_new() {
    let (_e, _p, listener) = setup(test_config()).await;
    let addr = listener.local_addr();
    let mut busy = Connection::open(addr).await;
    let mut idle = Connection::open(addr).await;
    assert_eq!(idle.get("/hostname").await.status, 200);
    let in_flight = tokio::spawn(async move {
        let mut slow = get("/slow");
        slow.headers_mut()
            .insert("x-echo-delay-ms", "1000".parse().unwrap());
        busy.send(slow).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let shutdown = tokio::spawn(listener.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;

    assert!(
        TcpStream::connect(addr).await.is_err(),
        "new connections are refused while draining"
    );
    let reply = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.echo().path, "/slow");
    tokio::time::timeout(Duration::from_secs(5), shutdown)
        .await
        .expect("drain ends once the last request is answered")
        .unwrap();
    assert!(
        idle.send(get("/hostname")).await.is_err(),
        "idle keep-alive connections are closed"
    );
}
