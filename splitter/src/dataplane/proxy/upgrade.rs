//! HTTP/1.1 protocol upgrades (WebSocket and the like): the request's `Upgrade` is passed to the
//! backend, and once it answers 101 the two connections are spliced byte for byte.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use http::{HeaderMap, HeaderValue, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::{direct::DirectConnection, upstream::list_has};

/// The protocol the client asks to switch to: an `Upgrade` header and the `upgrade` token in
/// `Connection` (RFC 9110 section 7.8). HTTP/2 has no such mechanism here.
pub fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    if !list_has(headers, &header::CONNECTION, "upgrade") {
        return None;
    }
    // An h2c upgrade would hand the whole connection to one backend and bypass routing for
    // every later request on it; such clients get plain HTTP/1.1 instead (RFC 9113 deprecates
    // the mechanism), and h2c with prior knowledge is served natively.
    let protocol = headers.get(header::UPGRADE)?;
    (!list_has(headers, &header::UPGRADE, "h2c")).then(|| protocol.clone())
}

/// Puts back the two hop-by-hop headers an upgrade needs after the generic strip removed them.
pub fn restore_upgrade_headers(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Copies bytes both ways between the upgraded client connection and the backend's (first
/// what was read from the backend past its 101 head) until one side closes or neither carries
/// a byte for `idle_timeout`; runs on its own task so the response can be returned first. The
/// client connection's slots (listener limit, per-source limit) live in its socket, and the
/// backend connection's place under the per-endpoint cap in its permit, so a tunnel holds both
/// for as long as it is open.
pub fn splice(client: OnUpgrade, backend: DirectConnection, idle_timeout: Duration) {
    tokio::spawn(async move {
        let client = match client.await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let (backend, early, _permit) = backend.into_parts();
        let mut client = TokioIo::new(client);
        if !early.is_empty() && client.write_all(&early).await.is_err() {
            return;
        }
        let moved = Arc::new(AtomicU64::new(0));
        let mut client = Counted::new(client, moved.clone());
        let mut backend = Counted::new(backend, moved.clone());
        let copy = tokio::io::copy_bidirectional(&mut client, &mut backend);
        tokio::select! {
            copied = copy => if let Err(e) = copied {
                tracing::debug!(error = %e, "upgraded connection ended with an error");
            },
            () = idle(&moved, idle_timeout) => {
                tracing::debug!(?idle_timeout, "upgraded connection idle; closing");
            }
        }
    });
}

/// Copies bytes both ways between two connections (a TLS passthrough client and its backend)
/// until both sides have closed (an EOF on one is passed on as a shutdown of the other's
/// writing half) or neither carries a byte for `idle_timeout`.
pub(super) async fn splice_idle<A, B>(a: A, b: B, idle_timeout: Duration) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let moved = Arc::new(AtomicU64::new(0));
    let mut a = Counted::new(a, moved.clone());
    let mut b = Counted::new(b, moved.clone());
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut a, &mut b) => copied.map(|_| ()),
        () = idle(&moved, idle_timeout) => {
            tracing::debug!(?idle_timeout, "spliced connection idle; closing");
            Ok(())
        }
    }
}

/// Completes once `moved` stayed the same for `timeout` (checked every quarter of it, so
/// between one timeout and a quarter more after the last byte).
async fn idle(moved: &AtomicU64, timeout: Duration) {
    let tick = (timeout / 4).max(Duration::from_millis(10));
    let need = timeout.as_nanos().div_ceil(tick.as_nanos()).max(1);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + tick, tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut seen, mut quiet) = (moved.load(Ordering::Relaxed), 0u128);
    loop {
        ticks.tick().await;
        let now = moved.load(Ordering::Relaxed);
        quiet = if now == seen { quiet + 1 } else { 0 };
        seen = now;
        if quiet >= need {
            return;
        }
    }
}

/// One side of a tunnel, counting the reads and writes that moved bytes.
struct Counted<S> {
    io: S,
    moved: Arc<AtomicU64>,
}

impl<S> Counted<S> {
    fn new(io: S, moved: Arc<AtomicU64>) -> Self {
        Self { io, moved }
    }

    fn count<T>(&self, polled: &Poll<io::Result<T>>) {
        if let Poll::Ready(Ok(_)) = polled {
            self.moved.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        this.count(&polled);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.count(&polled);
        polled
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_needs_both_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(requested_upgrade(&h).is_none());
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert_eq!(requested_upgrade(&h).unwrap(), "websocket");
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(
            requested_upgrade(&h).is_none(),
            "h2c upgrades are not passed on"
        );
        h.remove(header::UPGRADE);
        assert!(requested_upgrade(&h).is_none());
    }
}
