//! An echo backend that answers like the upstream conformance echo server (echo-basic): a JSON
//! body with `path` (the request URI, query included), `host`, `method`, `proto`, `headers`
//! (name to values, `Host` excluded), `namespace` and `pod`. `X-Echo-Set-Header: name:value,...`
//! makes it set those response headers and a `delay=1s` (or `500ms`) query parameter delays the
//! answer, as echo-basic does.

use std::{collections::BTreeMap, convert::Infallible, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use serde::{Deserialize, Serialize};
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

/// One echo "pod": a server on a loopback port, stopped on drop.
pub struct EchoPod {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for EchoPod {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoPod {
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
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (ctx, acceptor) = (ctx.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = service_fn(move |req| answer(ctx.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Self { addr, task }
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
        Self { addr, task }
    }

    pub async fn start(namespace: &str, pod: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("echo binds");
        let addr = listener.local_addr().unwrap();
        let ctx: Arc<(String, String)> = Arc::new((namespace.into(), pod.into()));
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(ctx.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { addr, task }
    }
}

async fn answer(
    ctx: Arc<(String, String)>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let _ = body.collect().await;
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
