//! Clients that hold the proxy's resources without using them (issue 16): a request body that
//! stops, a response nobody reads, an HTTP/2 stream with a shut window, an idle tunnel, paced
//! HTTP/2 rapid reset, one source taking every connection slot, the open-file limit; and the
//! per-endpoint cap on backend connections. Each test checks what a client or the backend
//! sees over real sockets.

use std::{
    convert::Infallible,
    net::SocketAddr,
    process::{Child, Command},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::{
    body::{Frame, Incoming},
    service::service_fn,
};
use hyper_util::rt::TokioIo;
use splitter::dataplane::proxy::{ProxyConfig, UpstreamConfig};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpSocket, TcpStream},
};

use crate::support::*;

/// A count that remembers its highest value.
#[derive(Default)]
struct Gauge {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    fn up(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
    }
    fn down(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
    fn now(&self) -> usize {
        self.now.load(Ordering::SeqCst)
    }
    fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
}

/// An HTTP/1.1 backend that counts its open connections and the requests it is working on.
/// It reads each request body whole, works `x-delay-ms` (on a task of its own: like a real
/// backend's, the work goes on when the proxy hangs up), then answers `x-body-bytes` bytes.
struct Backend {
    addr: SocketAddr,
    conns: Arc<Gauge>,
    work: Arc<Gauge>,
}

type Body = BoxBody<Bytes, Infallible>;

async fn backend() -> Backend {
    let l = TcpListener::bind(LOOPBACK).await.unwrap();
    let addr = l.local_addr().unwrap();
    let (conns, work) = (Arc::new(Gauge::default()), Arc::new(Gauge::default()));
    tokio::spawn({
        let (conns, work) = (conns.clone(), work.clone());
        async move {
            while let Ok((s, _)) = l.accept().await {
                conns.up();
                let (conns, work) = (conns.clone(), work.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(req, work.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                    conns.down();
                });
            }
        }
    });
    Backend { addr, conns, work }
}

async fn answer(req: Request<Incoming>, work: Arc<Gauge>) -> Result<Response<Body>, hyper::Error> {
    let number = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let (delay, size) = (number("x-delay-ms"), number("x-body-bytes"));
    req.into_body().collect().await?;
    let job = tokio::spawn(async move {
        work.up();
        tokio::time::sleep(Duration::from_millis(delay)).await;
        work.down();
    });
    let _ = job.await;
    let chunks = futures::stream::unfold(size, |left| async move {
        let n = left.min(16 * 1024);
        (n > 0).then(|| {
            let chunk = Bytes::from(vec![b'x'; usize::try_from(n).unwrap()]);
            (Ok(Frame::data(chunk)), left - n)
        })
    });
    Ok(Response::builder()
        .header("content-length", size)
        .body(BodyExt::boxed(StreamBody::new(chunks)))
        .unwrap())
}

/// Retries `check` every 20 ms until it holds or `limit` passes.
async fn within(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    check()
}

/// Reads until the server closes the connection; returns what it sent, or `None` if it was
/// still open at `limit`.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

const STALL: Duration = Duration::from_millis(1000);

/// Short stall timeouts; the header timeout stays long, so that it cannot be what cuts.
fn stall_config() -> ProxyConfig {
    ProxyConfig {
        header_read_timeout: Duration::from_secs(5),
        body_read_timeout: STALL,
        response_write_timeout: STALL,
        h2_stream_idle_timeout: STALL,
        tunnel_idle_timeout: STALL,
        ..test_config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_stops_arriving_is_cut() {
    let b = backend().await;
    let (_p, listener) = proxy_to(b.addr, stall_config()).await;
    let mut s = TcpStream::connect(listener.local_addr()).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    s.write_all(&[b'a'; 1000]).await.unwrap();
    let started = Instant::now();
    // The rest of the body never comes.
    let got = read_until_closed(&mut s, STALL * 8)
        .await
        .expect("a stalled request body kept its connection open");
    assert!(
        started.elapsed() >= STALL / 2,
        "cut too early to be the timeout"
    );
    assert!(
        got.is_empty() || String::from_utf8_lossy(&got).starts_with("HTTP/1.1 "),
        "{got:?}"
    );
    assert!(
        within(STALL * 4, || b.conns.now() == 0).await,
        "the backend connection stayed open"
    );
}

/// The same over HTTP/2, where the socket keeps moving for the connection's other streams: the
/// stalled stream's body has its own timer, the request is answered 408 and its backend
/// connection released, and the connection's other streams are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_request_body_that_stops_arriving_is_answered_408() {
    let b = backend().await;
    let (_p, listener) = proxy_to(b.addr, stall_config()).await;
    let tcp = TcpStream::connect(listener.local_addr()).await.unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = Request::post("http://gateway.test/upload")
        .header("content-length", "100000")
        .body(())
        .unwrap();
    let (resp, mut stream) = client.send_request(req, false).unwrap();
    stream
        .send_data(Bytes::from(vec![b'a'; 1000]), false)
        .unwrap();
    let started = Instant::now();
    // Another stream of the same connection is served while the upload stalls.
    let mut other = client.ready().await.unwrap();
    let (ok, _) = other
        .send_request(
            Request::get("http://gateway.test/quick").body(()).unwrap(),
            true,
        )
        .unwrap();
    assert_eq!(ok.await.unwrap().status(), 200);
    // Two backend connections: the stalled upload's, and the quick request's, now pooled.
    assert!(
        within(STALL / 2, || b.conns.now() == 2).await,
        "the upload and the quick request each hold a backend connection"
    );
    // The rest of the body never comes.
    let resp = tokio::time::timeout(STALL * 8, resp)
        .await
        .expect("a stalled HTTP/2 request body was never answered")
        .expect("a response");
    assert_eq!(resp.status(), 408);
    assert!(
        started.elapsed() >= STALL / 2,
        "answered too early to be the timeout"
    );
    assert!(
        within(STALL * 4, || b.conns.now() == 1).await,
        "the stalled upload's backend connection stayed open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_a_large_response_is_cut() {
    let b = backend().await;
    let (_p, listener) = proxy_to(b.addr, stall_config()).await;
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(listener.local_addr()).await.unwrap();
    const SIZE: u64 = 1 << 30;
    s.write_all(
        format!("GET /big HTTP/1.1\r\nHost: gateway.test\r\nx-body-bytes: {SIZE}\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    assert!(
        within(STALL * 4, || b.conns.now() == 1).await,
        "the request reached the backend"
    );
    // Nothing is read: the proxy's writes block, and it must give up.
    assert!(
        within(STALL * 8, || b.conns.now() == 0).await,
        "the backend connection of an unread response stayed open"
    );
    let got = read_until_closed(&mut s, STALL * 4)
        .await
        .expect("the client connection was cut");
    assert!(String::from_utf8_lossy(&got[..12]).starts_with("HTTP/1.1 200"));
    assert!((got.len() as u64) < SIZE, "the whole gigabyte arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_with_a_shut_window_lose_their_backend_connections() {
    let b = backend().await;
    let (_p, listener) = proxy_to(b.addr, stall_config()).await;
    let tcp = TcpStream::connect(listener.local_addr()).await.unwrap();
    let (client, mut conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    let (open_tx, open_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        tokio::select! {
            _ = &mut conn => return,
            _ = open_rx => {}
        }
        conn.set_initial_window_size(1 << 20).unwrap();
        let _ = conn.await;
    });
    const STREAMS: usize = 20;
    let mut responses = Vec::new();
    for _ in 0..STREAMS {
        let mut client = client.clone().ready().await.unwrap();
        let req = Request::get("http://gateway.test/big")
            .header("x-body-bytes", "1000000")
            .body(())
            .unwrap();
        let (resp, _) = client.send_request(req, true).unwrap();
        responses.push(resp);
    }
    let mut bodies = Vec::new();
    for resp in responses {
        let resp = resp.await.expect("response head");
        assert_eq!(resp.status(), 200);
        bodies.push(resp.into_body());
    }
    assert!(
        within(STALL * 4, || b.conns.now() == STREAMS).await,
        "each stream holds a backend connection while it is served ({})",
        b.conns.now()
    );
    // No window is ever given: each stream's backend connection must be let go.
    let started = Instant::now();
    assert!(
        within(STALL * 8, || b.conns.now() == 0).await,
        "{} backend connections still held by shut streams",
        b.conns.now()
    );
    assert!(started.elapsed() >= STALL / 2, "let go too early");
    // Opening the windows now, the streams fail instead of delivering their million bytes.
    open_tx.send(()).unwrap();
    for mut body in bodies {
        let mut got = 0;
        let failed = loop {
            match tokio::time::timeout(Duration::from_secs(10), body.data()).await {
                Ok(Some(Ok(chunk))) => {
                    got += chunk.len();
                    let _ = body.flow_control().release_capacity(chunk.len());
                }
                Ok(Some(Err(_))) => break true,
                Ok(None) => break false,
                Err(_) => panic!("the stream neither ended nor failed"),
            }
        };
        assert!(
            failed && got < 1_000_000,
            "a timed-out stream got {got} bytes"
        );
    }
}

/// A backend that switches to any protocol asked for and then echoes bytes; counts its open
/// connections.
async fn upgrade_backend() -> (SocketAddr, Arc<Gauge>) {
    let l = TcpListener::bind(LOOPBACK).await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(Gauge::default());
    tokio::spawn({
        let conns = conns.clone();
        async move {
            while let Ok((mut s, _)) = l.accept().await {
                conns.up();
                let conns = conns.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = s
                        .write_all(
                            b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n\
                              upgrade: test\r\n\r\n",
                        )
                        .await;
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if s.write_all(&buf[..n]).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                    conns.down();
                });
            }
        }
    });
    (addr, conns)
}

async fn open_tunnel(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: gateway.test\r\nConnection: upgrade\r\nUpgrade: test\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "closed before a head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    s.write_all(b"ping").await.unwrap();
    let mut echoed = [0u8; 4];
    s.read_exact(&mut echoed).await.unwrap();
    assert_eq!(&echoed, b"ping");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnels_count_against_the_connection_limit_and_are_closed_when_idle() {
    let (addr, conns) = upgrade_backend().await;
    let config = ProxyConfig {
        max_connections: 1,
        ..stall_config()
    };
    let (_p, listener) = proxy_to(addr, config).await;
    let mut tunnel = open_tunnel(listener.local_addr()).await;
    let opened = Instant::now();

    // The tunnel holds the listener's only slot: another client is closed at accept.
    let mut other = TcpStream::connect(listener.local_addr()).await.unwrap();
    let _ = other
        .write_all(b"GET / HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        .await;
    let got = read_until_closed(&mut other, STALL / 2)
        .await
        .expect("a connection over the limit was served while a tunnel was open");
    assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));

    // Kept open while used...
    for _ in 0..3 {
        tokio::time::sleep(STALL / 2).await;
        tunnel.write_all(b"more").await.unwrap();
        let mut echoed = [0u8; 4];
        tunnel.read_exact(&mut echoed).await.unwrap();
    }
    // ...and closed once idle, with its backend connection.
    let used = Instant::now();
    assert!(
        read_until_closed(&mut tunnel, STALL * 8).await.is_some(),
        "an idle tunnel stayed open"
    );
    assert!(used.elapsed() >= STALL / 2 && opened.elapsed() >= STALL * 2);
    assert!(within(STALL * 2, || conns.now() == 0).await);
    // The slot is free again.
    let mut served = false;
    for _ in 0..50 {
        let mut s = TcpStream::connect(listener.local_addr()).await.unwrap();
        s.write_all(
            b"GET / HTTP/1.1\r\nHost: gateway.test\r\nConnection: upgrade\r\nUpgrade: test\r\n\r\n",
        )
        .await
        .unwrap();
        let mut buf = [0u8; 12];
        if s.read_exact(&mut buf).await.is_ok() && buf.starts_with(b"HTTP/1.1 101") {
            served = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(served, "the closed tunnel's slot was not given back");
}

/// Paced rapid reset on one HTTP/2 connection to `listener`: up to 1,000 requests made by
/// `request`, each reset 1 ms after it was sent (with `end_stream`, HEADERS carry END_STREAM:
/// the CVE-2023-44487 pattern; without, the body stays open). Asserts that the proxy sent
/// GOAWAY before the 1,000th and closed the connection.
async fn paced_resets_are_cut(
    listener: SocketAddr,
    request: impl Fn() -> Request<()>,
    end_stream: bool,
) {
    let tcp = TcpStream::connect(listener).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    const ATTEMPTS: usize = 1000;
    let mut sent = 0;
    for _ in 0..ATTEMPTS {
        let Ok(ready) = client.ready().await else {
            break;
        };
        client = ready;
        let Ok((_resp, mut stream)) = client.send_request(request(), end_stream) else {
            break;
        };
        sent += 1;
        tokio::time::sleep(Duration::from_millis(1)).await;
        stream.send_reset(h2::Reason::CANCEL);
    }
    assert!(
        sent < ATTEMPTS,
        "{sent} streams reset one after another without a GOAWAY (end_stream {end_stream})"
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "the connection was not closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_http2_resets_get_goaway_and_cannot_pile_up_on_the_backend() {
    let b = backend().await;
    const IN_FLIGHT: usize = 8;
    let config = ProxyConfig {
        h2_max_requests_in_flight: IN_FLIGHT,
        h2_max_early_resets: 40,
        ..test_config()
    };
    let (_p, listener) = proxy_to(b.addr, config).await;
    let slow = || {
        Request::get("http://gateway.test/slow")
            .header("x-delay-ms", "3000")
            .body(())
            .unwrap()
    };
    paced_resets_are_cut(listener.local_addr(), slow, true).await;
    // Whatever reached the backend ran out its three seconds; never more at once than the cap.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        b.work.max() <= IN_FLIGHT,
        "the backend had {} of the connection's requests at once",
        b.work.max()
    );
    assert!(b.work.max() > 0, "nothing reached the backend at all");
}

/// A connection from `source` (a loopback address) to `addr`.
async fn connect_from(source: &str, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{source}:0").parse().unwrap()).unwrap();
    socket.connect(addr).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_over_its_connection_cap_is_refused_while_others_are_served() {
    let e = echo("good").await;
    let config = ProxyConfig {
        max_connections_per_source: 3,
        header_read_timeout: Duration::from_secs(30),
        ..test_config()
    };
    let (_p, listener) = proxy_to(e.local_addr(), config).await;
    let addr = listener.local_addr();
    let request = b"GET /hostname HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_from("127.0.0.1", addr).await);
    }
    let mut over = connect_from("127.0.0.1", addr).await;
    let _ = over.write_all(request).await;
    let got = read_until_closed(&mut over, Duration::from_secs(5))
        .await
        .expect("the fourth connection from one source is closed");
    assert!(got.is_empty(), "served over the per-source cap");

    let mut other = connect_from("127.0.0.2", addr).await;
    other.write_all(request).await.unwrap();
    let got = read_until_closed(&mut other, Duration::from_secs(5))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 200") && text.ends_with("good"),
        "{text}"
    );

    // A connection closed gives its source a slot back.
    drop(held.pop());
    let mut again = false;
    for _ in 0..50 {
        let mut s = connect_from("127.0.0.1", addr).await;
        let _ = s.write_all(request).await;
        let got = read_until_closed(&mut s, Duration::from_secs(5))
            .await
            .unwrap();
        if got.starts_with(b"HTTP/1.1 200") {
            again = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again, "the source's freed slot was not given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_endpoint_cap_bounds_backend_connections() {
    let b = backend().await;
    let config = ProxyConfig {
        upstream: UpstreamConfig {
            max_connections_per_endpoint: 2,
            ..UpstreamConfig::default()
        },
        ..test_config()
    };
    let (_p, listener) = proxy_to(b.addr, config).await;
    let addr = listener.local_addr();
    let clients: Vec<_> = (0..6)
        .map(|_| {
            tokio::spawn(async move {
                let mut slow = get("/slow");
                slow.headers_mut()
                    .insert("x-delay-ms", "1000".parse().unwrap());
                send_once(addr, slow).await.status.as_u16()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for c in clients {
        statuses.push(c.await.unwrap());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 503, 503, 503, 503]);
    assert_eq!(b.conns.max(), 2, "backend connections at once");
}

/// Kills the agent when the test ends, however it ends.
struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nofile_limits(pid: u32) -> Option<(String, String)> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line["Max open files".len()..].split_whitespace();
    Some((fields.next()?.to_owned(), fields.next()?.to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_raises_its_open_file_limit_to_the_hard_limit() {
    let manifests = tempfile::tempdir().unwrap();
    let admin = TcpListener::bind(LOOPBACK)
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    // Started at a soft limit of 1,024, the usual default.
    let agent = Agent(
        Command::new("sh")
            .arg("-c")
            .arg(r#"ulimit -Sn 1024 && exec "$0" "$@""#)
            .arg(env!("CARGO_BIN_EXE_splitter"))
            .args(["run", "--manifests"])
            .arg(manifests.path())
            .args(["--admin", &admin.to_string(), "--iface", "splitter-none0"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = agent.0.id();
    let mut up = false;
    for _ in 0..200 {
        if TcpStream::connect(admin).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "the agent's admin endpoint never answered");
    let (soft, hard) = nofile_limits(pid).expect("the agent's limits");
    assert_eq!(soft, hard, "RLIMIT_NOFILE soft limit after start");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_their_maximum_age_are_drained() {
    const AGE: Duration = Duration::from_millis(1500);
    let b = backend().await;
    let config = ProxyConfig {
        max_connection_age: AGE,
        ..test_config()
    };
    let (_p, listener) = proxy_to(b.addr, config).await;

    // HTTP/2: a connection that answers every PING (the h2 client does) and has a request in
    // flight at its maximum age gets GOAWAY, the request is answered, and the connection ends.
    let opened = Instant::now();
    let tcp = TcpStream::connect(listener.local_addr()).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let conn = tokio::spawn(conn);
    let req = Request::get("http://gateway.test/slow")
        .header("x-delay-ms", "2000")
        .body(())
        .unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let resp = resp.await.expect("the request in flight is answered");
    assert_eq!(resp.status(), 200);
    assert!(
        opened.elapsed() > AGE,
        "answered before the age was reached"
    );
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(
        matches!(ended, Ok(Ok(Ok(())))),
        "the HTTP/2 connection did not end cleanly: {ended:?}"
    );
    let req = Request::get("http://gateway.test/").body(()).unwrap();
    assert!(
        client.send_request(req, true).is_err(),
        "a stream opened after the GOAWAY"
    );

    // HTTP/1.1: a busy keep-alive connection is told `Connection: close` once old enough.
    let mut h1 = Connection::open(listener.local_addr()).await;
    let opened = Instant::now();
    let closed = loop {
        assert!(opened.elapsed() < AGE * 4, "never told to close");
        match h1.send(get("/")).await {
            Ok(r) if r.headers.get("connection").is_some_and(|v| v == "close") => break true,
            Ok(r) => assert_eq!(r.status, 200),
            Err(_) => break true,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(closed && opened.elapsed() >= AGE);
    assert!(
        h1.send(get("/")).await.is_err(),
        "still open after the close"
    );
}

/// A backend that answers every request with a chunked body of `chunks` bytes, one every
/// `every`.
async fn trickling_backend(chunks: usize, every: Duration) -> SocketAddr {
    let l = TcpListener::bind(LOOPBACK).await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                for _ in 0..chunks {
                    tokio::time::sleep(every).await;
                    if s.write_all(b"1\r\nx\r\n").await.is_err() {
                        return;
                    }
                }
                let _ = s.write_all(b"0\r\n\r\n").await;
                let _ = s.read(&mut buf).await;
            });
        }
    });
    addr
}

/// The stall timeouts are about clients: a backend that takes its time, with a client reading
/// all along, is waited for however long the response takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_backend_is_not_a_stalled_client() {
    const CHUNKS: usize = 8;
    let backend = trickling_backend(CHUNKS, STALL * 2 / 5).await;
    let (_p, listener) = proxy_to(backend, stall_config()).await;
    let started = Instant::now();
    let h1 = Connection::open(listener.local_addr())
        .await
        .send(get("/slow"))
        .await
        .expect("HTTP/1.1: the slow response was cut");
    assert_eq!(h1.text(), "x".repeat(CHUNKS));

    let tcp = TcpStream::connect(listener.local_addr()).await.unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = Request::get("http://gateway.test/slow").body(()).unwrap();
    let (resp, _) = client.send_request(req, true).unwrap();
    let mut body = resp.await.unwrap().into_body();
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("HTTP/2: the slow response was cut");
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, "x".repeat(CHUNKS).as_bytes());
    assert!(started.elapsed() > STALL * 6, "{:?}", started.elapsed());
}

/// A request body that keeps arriving, however slowly, is read to its end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_steady_upload_is_not_a_stall() {
    let b = backend().await;
    let (_p, listener) = proxy_to(b.addr, stall_config()).await;
    let mut s = TcpStream::connect(listener.local_addr()).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 8\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    for _ in 0..8 {
        tokio::time::sleep(STALL * 2 / 5).await;
        s.write_all(b"a").await.unwrap();
    }
    let got = read_until_closed(&mut s, Duration::from_secs(5))
        .await
        .expect("answered and closed");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

/// The same pacing with request bodies left open: the proxy gives up on each request as soon as
/// its stream's body fails, before hyper drops it, and such a give-up counts as an early reset
/// too (otherwise an open body would be a way around the limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_resets_of_requests_with_open_bodies_get_goaway_too() {
    let b = backend().await;
    let config = ProxyConfig {
        h2_max_requests_in_flight: 8,
        h2_max_early_resets: 40,
        ..test_config()
    };
    let (_p, listener) = proxy_to(b.addr, config).await;
    let upload = || {
        Request::post("http://gateway.test/upload")
            .body(())
            .unwrap()
    };
    paced_resets_are_cut(listener.local_addr(), upload, false).await;
}
