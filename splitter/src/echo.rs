//! An HTTP echo backend: the `splitter-echo` binary, and an in-process server for tests.
//!
//! `GET /hostname` answers the server's name with no trailing newline, like the pods of the
//! reference guide; `GET /bytes/N` answers N bytes (at most 16 MiB). Any other request gets a JSON description of itself: server name, method,
//! path, query, headers, peer address and the number of body bytes read. A request header
//! `x-echo-delay-ms: N` delays the answer by N milliseconds (at most one minute), which is how
//! tests make a slow backend. A request with `Connection: upgrade` and `Upgrade: P` is answered
//! 101 and the connection then echoes raw bytes, which is how tests check upgrade passthrough.

use std::{convert::Infallible, io, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::{conn::auto, graceful::GracefulShutdown},
};
use serde::Serialize;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

const MAX_DELAY: Duration = Duration::from_secs(60);

/// What `splitter-echo` answers for a request other than `GET /hostname`.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct EchoReply {
    pub name: String,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Header names lower-case, in the order received.
    pub headers: Vec<(String, String)>,
    pub peer: String,
    pub body_bytes: u64,
}

impl EchoReply {
    /// Values of header `name` (lower-case), in order.
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A running echo server.
#[derive(Debug)]
pub struct EchoServer {
    local_addr: SocketAddr,
    stop: watch::Sender<()>,
    task: JoinHandle<()>,
}

impl EchoServer {
    /// Binds `addr` and serves until [`Self::shutdown`] or drop.
    pub async fn bind(addr: SocketAddr, name: &str) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let (stop, stop_rx) = watch::channel(());
        let task = tokio::spawn(serve(listener, Arc::from(name), stop_rx));
        Ok(Self {
            local_addr,
            stop,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and waits for open requests to finish.
    pub async fn shutdown(self) {
        drop(self.stop);
        let _ = self.task.await;
    }
}

async fn serve(listener: TcpListener, name: Arc<str>, mut stop: watch::Receiver<()>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "echo: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let name = name.clone();
        let svc = service_fn(move |req| answer(name.clone(), peer, req));
        let conn = graceful.watch(
            builder
                .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                .into_owned(),
        );
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "echo: connection error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The largest body `GET /bytes/N` returns.
const MAX_BYTES: usize = 16 << 20;

async fn answer(
    name: Arc<str>,
    peer: SocketAddr,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Some(protocol) = upgrade_protocol(&req) {
        let upgraded = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            match upgraded.await {
                Ok(io) => {
                    let (mut rx, mut tx) = tokio::io::split(TokioIo::new(io));
                    if let Err(e) = tokio::io::copy(&mut rx, &mut tx).await {
                        tracing::debug!(%peer, error = %e, "echo: upgraded connection failed");
                    }
                }
                Err(e) => tracing::debug!(%peer, error = %e, "echo: upgrade failed"),
            }
        });
        let mut resp = plain(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
        resp.headers_mut().remove(header::CONTENT_TYPE);
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        resp.headers_mut().insert(header::UPGRADE, protocol);
        return Ok(resp);
    }
    let delay = req
        .headers()
        .get("x-echo-delay-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms).min(MAX_DELAY));
    let (parts, mut body) = req.into_parts();
    // Count the body without keeping it: the echo must cope with large uploads.
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(data) = f.data_ref() {
                    body_bytes += data.len() as u64;
                }
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "echo: request body failed");
                return Ok(plain(
                    StatusCode::BAD_REQUEST,
                    Bytes::from_static(b"bad body"),
                ));
            }
        }
    }
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let sized = parts
        .uri
        .path()
        .strip_prefix("/bytes/")
        .and_then(|n| n.parse::<usize>().ok());
    let mut resp = if parts.method == http::Method::GET && parts.uri.path() == "/hostname" {
        plain(StatusCode::OK, Bytes::from(name.as_bytes().to_vec()))
    } else if let Some(n) = sized.filter(|_| parts.method == http::Method::GET) {
        // `GET /bytes/N`: N bytes (at most MAX_BYTES), for responses of a chosen size.
        plain(StatusCode::OK, Bytes::from(vec![b'x'; n.min(MAX_BYTES)]))
    } else {
        let reply = EchoReply {
            name: name.to_string(),
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts
                .headers
                .iter()
                .map(|(n, v)| {
                    (
                        n.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
            peer: peer.to_string(),
            body_bytes,
        };
        match serde_json::to_vec(&reply) {
            Ok(json) => {
                let mut r = plain(StatusCode::OK, Bytes::from(json));
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                r
            }
            Err(e) => plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                Bytes::from(e.to_string()),
            ),
        }
    };
    if let Ok(v) = HeaderValue::from_str(&name) {
        resp.headers_mut().insert("x-echo-name", v);
    }
    Ok(resp)
}

/// `Connection: upgrade` plus `Upgrade: P` asks to switch to protocol P; the echo accepts any
/// and then echoes raw bytes.
fn upgrade_protocol<B>(req: &Request<B>) -> Option<HeaderValue> {
    let asks = req
        .headers()
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        });
    asks.then(|| req.headers().get(header::UPGRADE).cloned())
        .flatten()
}

fn plain(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
