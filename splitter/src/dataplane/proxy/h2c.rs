//! The HTTP/2 client: requests to backends that speak HTTP/2 with prior knowledge (cleartext,
//! "h2c"): GRPCRoute backends and Services whose port says `appProtocol: kubernetes.io/h2c`.
//!
//! HTTP/2 multiplexes, so one connection per endpoint per worker thread carries every request
//! to it at once; hyper's client drives it from a task on the worker's runtime. Bodies stream
//! both ways frame by frame, trailers included (gRPC's status travels in them). The HTTP/1.1
//! path (`direct`) is untouched: this is a branch taken per backend, not a second stack for
//! every request.

use std::{cell::RefCell, net::SocketAddr, time::Duration};

use bytes::Bytes;
use foldhash::HashMap;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, combinators::UnsyncBoxBody};
use hyper::{body::Incoming, client::conn::http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::error::UpstreamError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body an HTTP/2 backend request carries: the client's, streamed, or none.
pub type H2Body = UnsyncBoxBody<Bytes, BoxError>;

/// An empty request body.
pub fn empty() -> H2Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

thread_local! {
    /// This worker thread's connections, one per endpoint. A sender whose connection closed
    /// is replaced on the next request.
    static CONNECTIONS: RefCell<HashMap<SocketAddr, http2::SendRequest<H2Body>>> =
        RefCell::new(HashMap::default());
}

/// Sends `req` (absolute URI: its authority becomes `:authority`) to `endpoint` over this
/// thread's HTTP/2 connection to it, opening one if there is none or it has closed. A request
/// that a connection refused before sending anything (it was closing: GOAWAY) is sent once
/// more on a new connection.
pub async fn send(
    endpoint: SocketAddr,
    connect_timeout: Duration,
    req: Request<H2Body>,
) -> Result<Response<Incoming>, UpstreamError> {
    let mut sender = match pooled(endpoint) {
        Some(s) => s,
        None => connect(endpoint, connect_timeout).await?,
    };
    match sender.try_send_request(req).await {
        Ok(resp) => Ok(resp),
        Err(mut e) => match e.take_message() {
            // Never sent: safe to send again, once, on a fresh connection.
            Some(req) if !sender.is_ready() || e.error().is_canceled() => {
                forget(endpoint);
                let mut sender = connect(endpoint, connect_timeout).await?;
                sender.send_request(req).await.map_err(hyper_error)
            }
            _ => Err(hyper_error(e.into_error())),
        },
    }
}

fn pooled(endpoint: SocketAddr) -> Option<http2::SendRequest<H2Body>> {
    CONNECTIONS.with(|c| {
        let mut map = c.borrow_mut();
        match map.get(&endpoint) {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                map.remove(&endpoint);
                None
            }
            None => None,
        }
    })
}

fn forget(endpoint: SocketAddr) {
    CONNECTIONS.with(|c| c.borrow_mut().remove(&endpoint));
}

async fn connect(
    endpoint: SocketAddr,
    timeout: Duration,
) -> Result<http2::SendRequest<H2Body>, UpstreamError> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(endpoint))
        .await
        .map_err(|_| UpstreamError::ConnectTimeout(timeout))?
        .map_err(UpstreamError::Connect)?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        // Dead peers are found by PING instead of by the next request's failure.
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| UpstreamError::Connect(std::io::Error::other(e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%endpoint, error = %e, "h2c backend connection ended");
        }
    });
    CONNECTIONS.with(|c| c.borrow_mut().insert(endpoint, sender.clone()));
    Ok(sender)
}

fn hyper_error(e: hyper::Error) -> UpstreamError {
    UpstreamError::Http2(e)
}
