//! The HTTP/2 client: requests to backends that speak HTTP/2 with prior knowledge (cleartext,
//! "h2c"): GRPCRoute backends and Services whose port says `appProtocol: kubernetes.io/h2c`.
//!
//! HTTP/2 multiplexes, so one connection per endpoint per worker thread carries every request
//! to it at once; hyper's client drives it from a task on the worker's runtime. Requests that
//! arrive while that connection is being opened wait for it rather than open their own. Bodies
//! stream both ways frame by frame, trailers included (gRPC's status travels in them). The
//! HTTP/1.1 path (`direct`) is untouched: this is a branch taken per backend, not a second
//! stack for every request.

use std::{cell::RefCell, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use foldhash::HashMap;
use futures::future::{BoxFuture, FutureExt, Shared};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, combinators::UnsyncBoxBody};
use hyper::{body::Incoming, client::conn::http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::{net::TcpStream, time::Instant};

use super::error::UpstreamError;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The body an HTTP/2 backend request carries: the client's, streamed, or none.
pub type H2Body = UnsyncBoxBody<Bytes, BoxError>;

type Sender = http2::SendRequest<H2Body>;

/// A connection being opened, awaited by every request that wants it meanwhile. The error is
/// shared as text (the I/O error itself is not `Clone`).
type Connecting = Shared<BoxFuture<'static, Result<Sender, Arc<UpstreamErrorText>>>>;

#[derive(Debug)]
struct UpstreamErrorText {
    timeout: Option<Duration>,
    message: String,
}

impl UpstreamErrorText {
    fn to_error(&self) -> UpstreamError {
        match self.timeout {
            Some(t) => UpstreamError::ConnectTimeout(t),
            None => UpstreamError::Connect(std::io::Error::other(self.message.clone())),
        }
    }
}

/// An empty request body.
pub fn empty() -> H2Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

enum Slot {
    Open { sender: Sender, used: Instant },
    Connecting(Connecting),
}

thread_local! {
    /// This worker thread's connections, one per endpoint. A sender whose connection closed
    /// is replaced on the next request; one unused for the pool's idle timeout is let go
    /// ([`sweep_every`]), and its connection closes once its last stream ends.
    static CONNECTIONS: RefCell<HashMap<SocketAddr, Slot>> = RefCell::new(HashMap::default());
}

/// Every `every`, lets go of this thread's connections that no request took for
/// `idle_timeout` (endpoints that left the plan, backends no longer called).
pub async fn sweep_every(every: Duration, idle_timeout: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let now = Instant::now();
        CONNECTIONS.with(|c| {
            c.borrow_mut().retain(|_, slot| match slot {
                Slot::Open { sender, used } => {
                    !sender.is_closed() && now.duration_since(*used) < idle_timeout
                }
                Slot::Connecting(_) => true,
            });
        });
    }
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
    let mut sender = sender(endpoint, connect_timeout).await?;
    match sender.try_send_request(req).await {
        Ok(resp) => Ok(resp),
        Err(mut e) => match e.take_message() {
            // Never sent: safe to send again, once, on a fresh connection.
            Some(req) if !sender.is_ready() || e.error().is_canceled() => {
                forget(endpoint, &sender);
                let mut sender = self::sender(endpoint, connect_timeout).await?;
                sender.send_request(req).await.map_err(UpstreamError::Http2)
            }
            _ => Err(UpstreamError::Http2(e.into_error())),
        },
    }
}

/// This thread's open connection to `endpoint`, the one being opened, or a new one.
async fn sender(endpoint: SocketAddr, connect_timeout: Duration) -> Result<Sender, UpstreamError> {
    let connecting = CONNECTIONS.with(|c| {
        let mut map = c.borrow_mut();
        match map.get_mut(&endpoint) {
            Some(Slot::Open { sender, used }) if !sender.is_closed() => {
                *used = Instant::now();
                Ok(sender.clone())
            }
            Some(Slot::Connecting(f)) => Err(f.clone()),
            _ => {
                let f = connect(endpoint, connect_timeout).boxed().shared();
                map.insert(endpoint, Slot::Connecting(f.clone()));
                Err(f)
            }
        }
    });
    let f = match connecting {
        Ok(sender) => return Ok(sender),
        Err(f) => f,
    };
    let result = f.await;
    CONNECTIONS.with(|c| {
        let mut map = c.borrow_mut();
        // The first waiter to wake records the outcome; a failed connect leaves no slot, so
        // the next request tries again.
        if let Some(Slot::Connecting(_)) = map.get(&endpoint) {
            match &result {
                Ok(sender) => {
                    map.insert(
                        endpoint,
                        Slot::Open {
                            sender: sender.clone(),
                            used: Instant::now(),
                        },
                    );
                }
                Err(_) => {
                    map.remove(&endpoint);
                }
            }
        }
    });
    result.map_err(|e| e.to_error())
}

/// Drops the pooled connection to `endpoint` if it is still `stale`.
fn forget(endpoint: SocketAddr, stale: &Sender) {
    CONNECTIONS.with(|c| {
        let mut map = c.borrow_mut();
        if let Some(Slot::Open { sender, .. }) = map.get(&endpoint)
            && (sender.is_closed() || !stale.is_ready())
        {
            map.remove(&endpoint);
        }
    });
}

async fn connect(
    endpoint: SocketAddr,
    timeout: Duration,
) -> Result<Sender, Arc<UpstreamErrorText>> {
    let failed = |timeout: Option<Duration>, message: String| {
        Arc::new(UpstreamErrorText { timeout, message })
    };
    let stream = tokio::time::timeout(timeout, TcpStream::connect(endpoint))
        .await
        .map_err(|_| failed(Some(timeout), String::new()))?
        .map_err(|e| failed(None, e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        // Dead peers are found by PING instead of by the next request's failure.
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(10))
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|e| failed(None, format!("HTTP/2 handshake: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%endpoint, error = %e, "h2c backend connection ended");
        }
    });
    Ok(sender)
}
