//! An echo backend that answers like the upstream conformance echo server (echo-basic): a JSON
//! body with `path` (the request URI, query included), `host`, `method`, `proto`, `headers`
//! (name to values, `Host` excluded), `namespace` and `pod`. `X-Echo-Set-Header: name:value,...`
//! makes it set those response headers and a `delay=1s` (or `500ms`) query parameter delays the
//! answer, as echo-basic does. A WebSocket handshake (`Upgrade: websocket`) is answered 101 with
//! its `Sec-WebSocket-Accept`, and every message is then echoed, as echo-basic's `/ws` does.
//! A Deployment with `GRPC_ECHO_SERVER` set is echo-basic's gRPC server instead
//! (`splitter::grpc_echo`, h2c).

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use serde::{Deserialize, Serialize};
use splitter::grpc_echo::{GrpcEchoServer, PodContext};
use tokio::{net::TcpListener, task::JoinHandle};

/// What the backend saw, as echo-basic reports it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Captured {
    pub path: String,
    pub host: String,
    pub method: String,
    pub proto: String,
    /// Lower-case names (the upstream comparison lower-cases both sides).
    pub headers: BTreeMap<String, Vec<String>>,
    pub namespace: String,
    pub pod: String,
}

/// One echo "pod": a server on a loopback port, stopped on drop. Like echo-basic it logs
/// `Echoing back request made to PATH to client` per request, which the mirror tests read (as
/// upstream reads the pod's log).
pub struct EchoPod {
    pub addr: SocketAddr,
    pub namespace: String,
    pub pod: String,
    pub log: Arc<Mutex<Vec<String>>>,
    task: Option<JoinHandle<()>>,
    _grpc: Option<GrpcEchoServer>,
}

impl Drop for EchoPod {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl EchoPod {
    /// echo-basic with `GRPC_ECHO_SERVER` set: the gRPC echo service over h2c.
    pub async fn start_grpc(namespace: &str, pod: &str) -> Self {
        let server = GrpcEchoServer::bind(
            "127.0.0.1:0".parse().unwrap(),
            PodContext {
                namespace: namespace.into(),
                pod: pod.into(),
                ..PodContext::default()
            },
        )
        .await
        .expect("gRPC echo binds");
        Self {
            addr: server.local_addr(),
            namespace: namespace.into(),
            pod: pod.into(),
            // The gRPC tests read no request log.
            log: Arc::default(),
            task: None,
            _grpc: Some(server),
        }
    }

    /// echo-basic with `TLS_SERVER_CERT` (upstream's `tls-backend`): the same answers over
    /// HTTPS, terminated with `config`.
    pub async fn start_https(
        namespace: &str,
        pod: &str,
        config: Arc<rustls::ServerConfig>,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("echo binds");
        let addr = listener.local_addr().unwrap();
        let ctx: Arc<(String, String)> = Arc::new((namespace.into(), pod.into()));
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let pod_log = log.clone();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (ctx, acceptor, log) = (ctx.clone(), acceptor.clone(), pod_log.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = service_fn(move |req| answer(ctx.clone(), log.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            namespace: namespace.into(),
            pod: pod.into(),
            log,
            task: Some(task),
            _grpc: None,
        }
    }

    /// echo-basic's TCP server with `TLS_SERVER_CERT` (upstream's `tcp-backend` TLS port): the
    /// welcome line, then `PING`, `IS_TLS` and `TEST` answered (`splitter::echo_tls`).
    pub async fn start_tcp_tls(
        namespace: &str,
        pod: &str,
        config: Arc<rustls::ServerConfig>,
    ) -> Self {
        let server = splitter::echo_tls::TlsEchoServer::bind(
            "127.0.0.1:0".parse().expect("address"),
            pod,
            namespace,
            config,
        )
        .await
        .expect("TLS echo binds");
        let addr = server.local_addr();
        // Held by the task: aborting it (drop) stops the server.
        let task = tokio::spawn(async move {
            let _server = server;
            std::future::pending::<()>().await;
        });
        Self {
            addr,
            namespace: namespace.into(),
            pod: pod.into(),
            // Read by no test: the TCP echo answers lines, not requests.
            log: Arc::default(),
            task: Some(task),
            _grpc: None,
        }
    }

    pub async fn start(namespace: &str, pod: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("echo binds");
        let addr = listener.local_addr().unwrap();
        let ctx: Arc<(String, String)> = Arc::new((namespace.into(), pod.into()));
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let pod_log = log.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let ctx = ctx.clone();
                let log = pod_log.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(ctx.clone(), log.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self {
            addr,
            namespace: namespace.into(),
            pod: pod.into(),
            log,
            task: Some(task),
            _grpc: None,
        }
    }
}

async fn answer(
    ctx: Arc<(String, String)>,
    log: Arc<Mutex<Vec<String>>>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(resp) = websocket(&mut req) {
        return Ok(resp);
    }
    let (parts, body) = req.into_parts();
    let _ = body.collect().await;
    log.lock().expect("log lock").push(format!(
        "Echoing back request made to {} to client",
        parts.uri
    ));
    if let Some(d) = parts.uri.query().and_then(delay) {
        tokio::time::sleep(d).await;
    }
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (n, v) in &parts.headers {
        if n == http::header::HOST {
            continue;
        }
        headers
            .entry(n.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let captured = Captured {
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into()),
        host,
        method: parts.method.to_string(),
        proto: format!("{:?}", parts.version),
        headers,
        namespace: ctx.0.clone(),
        pod: ctx.1.clone(),
    };
    let mut resp = Response::new(Full::new(Bytes::from(
        serde_json::to_vec(&captured).expect("JSON"),
    )));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    for v in parts.headers.get_all("x-echo-set-header") {
        for pair in v.to_str().unwrap_or_default().split(',') {
            if let Some((n, v)) = pair.split_once(':')
                && let (Ok(n), Ok(v)) = (
                    HeaderName::from_bytes(n.trim().as_bytes()),
                    HeaderValue::from_str(v.trim()),
                )
            {
                resp.headers_mut().append(n, v);
            }
        }
    }
    Ok(resp)
}

/// echo-basic's `delay` query parameter, a Go duration (`1s`, `500ms`).
fn delay(query: &str) -> Option<std::time::Duration> {
    let v = query.split('&').find_map(|kv| kv.strip_prefix("delay="))?;
    if let Some(ms) = v.strip_suffix("ms") {
        return ms.parse().ok().map(std::time::Duration::from_millis);
    }
    v.strip_suffix('s')?
        .parse()
        .ok()
        .map(std::time::Duration::from_secs_f64)
}

/// The WebSocket handshake (RFC 6455 section 4.2.2): 101 with `Sec-WebSocket-Accept`, then
/// [`echo_messages`] on the upgraded connection. `None` for any other request.
fn websocket(req: &mut Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    use base64::Engine as _;
    let h = req.headers();
    let asks = h
        .get(http::header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = h.get("sec-websocket-key")?.as_bytes().to_vec();
    if !asks {
        return None;
    }
    let mut input = key;
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    let accept = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        if let Ok(conn) = upgrade.await {
            let _ = echo_messages(TokioIo::new(conn)).await;
        }
    });
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let hs = resp.headers_mut();
    hs.insert(http::header::UPGRADE, HeaderValue::from_static("websocket"));
    hs.insert(
        http::header::CONNECTION,
        HeaderValue::from_static("Upgrade"),
    );
    hs.insert(
        "sec-websocket-accept",
        HeaderValue::from_str(&accept).expect("base64 is a header value"),
    );
    Some(resp)
}

/// Echoes every frame the client sends (unmasked, as a server sends them), answers a ping
/// with a pong and a close with a close.
async fn echo_messages<S>(mut s: S) -> std::io::Result<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let mut head = [0u8; 2];
        s.read_exact(&mut head).await?;
        let opcode = head[0] & 0x0f;
        let masked = head[1] & 0x80 != 0;
        let len = match head[1] & 0x7f {
            126 => u64::from(s.read_u16().await?),
            127 => s.read_u64().await?,
            n => u64::from(n),
        };
        if len > 1 << 20 {
            return Ok(());
        }
        let mut mask = [0u8; 4];
        if masked {
            s.read_exact(&mut mask).await?;
        }
        let mut payload = vec![0u8; len as usize];
        s.read_exact(&mut payload).await?;
        if masked {
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= mask[i % 4];
            }
        }
        let reply_opcode = if opcode == 9 { 10 } else { opcode };
        let mut out = vec![head[0] & 0xf0 | reply_opcode];
        match payload.len() {
            n if n < 126 => out.push(n as u8),
            n if n <= 0xffff => {
                out.push(126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&payload);
        s.write_all(&out).await?;
        if opcode == 8 {
            return Ok(());
        }
    }
}
