//! Idle keep-alive connections to backends, one pool per proxy worker thread.
//!
//! A worker thread serves its client connections, and drives the backend connections they use,
//! by itself (see `workers`). Keeping the idle backend connections per thread as well means a
//! request never waits on another thread: no lock on the pool, no cross-thread wake-up to hand a
//! connection over. The cost is the one nginx pays with its per-worker `keepalive` cache: each
//! thread keeps its own idle connections to a backend.

use std::{cell::RefCell, collections::HashMap, net::SocketAddr, time::Duration};

use hyper::{body::Incoming, client::conn::http1::SendRequest};
use tokio::time::Instant;

/// A connection that finished its last exchange and waits for the next one.
struct IdleConnection {
    sender: SendRequest<Incoming>,
    since: Instant,
}

impl IdleConnection {
    fn usable(&self, now: Instant, idle_timeout: Duration) -> bool {
        !self.sender.is_closed() && now.duration_since(self.since) < idle_timeout
    }
}

#[derive(Default)]
struct IdlePool {
    by_endpoint: HashMap<SocketAddr, Vec<IdleConnection>>,
}

thread_local! {
    static IDLE: RefCell<IdlePool> = RefCell::new(IdlePool::default());
}

/// The most recently used connection to `endpoint` that is ready for a request, still open and
/// younger than `idle_timeout`; stale ones met on the way are closed. A connection still
/// streaming its last response body is skipped and kept: it is ready again once that body has
/// been read.
pub fn checkout(endpoint: SocketAddr, idle_timeout: Duration) -> Option<SendRequest<Incoming>> {
    let now = Instant::now();
    IDLE.with_borrow_mut(|pool| {
        let idle = pool.by_endpoint.get_mut(&endpoint)?;
        // Most recently used first: it is the least likely to have been closed by the backend's
        // own idle timeout, and the older ones age out.
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            let c = &idle[i];
            if !c.usable(now, idle_timeout) {
                idle.remove(i);
            } else if c.sender.is_ready() {
                return Some(idle.remove(i).sender);
            }
        }
        None
    })
}

/// Returns a connection whose response head has arrived; its body may still be streaming, in
/// which case `checkout` passes it over until it is done. Putting it back at once costs nothing
/// per request, where waiting for the body's end took a task of its own. Beyond `max_idle`
/// connections to the endpoint it is closed instead.
pub fn checkin(endpoint: SocketAddr, sender: SendRequest<Incoming>, max_idle: usize) {
    if sender.is_closed() {
        return;
    }
    IDLE.with_borrow_mut(|pool| {
        let idle = pool.by_endpoint.entry(endpoint).or_default();
        if idle.len() < max_idle {
            idle.push(IdleConnection {
                sender,
                since: Instant::now(),
            });
        }
    });
}

/// Closes this thread's idle connections that outlived `idle_timeout` or that the backend
/// closed, and forgets endpoints with none left (an endpoint that left the plan is never
/// checked out again, so only this sweep releases its connections).
pub fn sweep(idle_timeout: Duration) {
    let now = Instant::now();
    IDLE.with_borrow_mut(|pool| {
        pool.by_endpoint.retain(|_, idle| {
            idle.retain(|c| c.usable(now, idle_timeout));
            !idle.is_empty()
        });
    });
}

/// Idle connections this thread holds to `endpoint` (for tests).
#[cfg(test)]
fn idle_count(endpoint: SocketAddr) -> usize {
    IDLE.with_borrow(|pool| pool.by_endpoint.get(&endpoint).map_or(0, Vec::len))
}

/// Sweeps this thread's pool every `every` for as long as the thread's runtime runs.
pub async fn sweep_every(every: Duration, idle_timeout: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        sweep(idle_timeout);
    }
}

#[cfg(test)]
mod tests {
    use hyper::client::conn::http1;
    use hyper_util::rt::TokioIo;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    const LONG: Duration = Duration::from_secs(60);

    /// A backend that accepts connections and holds them open without a word, and a way to
    /// make HTTP/1.1 connections to it.
    async fn silent_backend() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<TcpStream>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((s, _)) = l.accept().await {
                let _ = tx.send(s);
            }
        });
        (addr, rx)
    }

    async fn connect(addr: SocketAddr) -> SendRequest<Incoming> {
        let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
        let (sender, conn) = http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        sender
    }

    #[tokio::test]
    async fn keeps_at_most_max_idle_and_hands_them_out_once() {
        let (addr, _held) = silent_backend().await;
        checkin(addr, connect(addr).await, 2);
        checkin(addr, connect(addr).await, 2);
        checkin(addr, connect(addr).await, 2);
        assert_eq!(idle_count(addr), 2, "the third is closed, not kept");
        assert!(checkout(addr, LONG).is_some());
        assert!(checkout(addr, LONG).is_some());
        assert!(checkout(addr, LONG).is_none());
    }

    #[tokio::test]
    async fn expired_and_closed_connections_are_not_handed_out() {
        let (addr, mut held) = silent_backend().await;
        checkin(addr, connect(addr).await, 8);
        assert!(
            checkout(addr, Duration::ZERO).is_none(),
            "idle past the timeout"
        );
        assert_eq!(idle_count(addr), 0, "and closed on the way");

        checkin(addr, connect(addr).await, 8);
        // The backend closes it while idle.
        drop(held.recv().await.unwrap());
        drop(held.recv().await.unwrap());
        let deadline = Instant::now() + Duration::from_secs(5);
        while IDLE.with_borrow(|p| p.by_endpoint[&addr].iter().any(|c| !c.sender.is_closed())) {
            assert!(Instant::now() < deadline, "the close was never noticed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(checkout(addr, LONG).is_none());
    }

    #[tokio::test]
    async fn sweep_forgets_stale_endpoints() {
        let (addr, _held) = silent_backend().await;
        checkin(addr, connect(addr).await, 8);
        sweep(LONG);
        assert_eq!(idle_count(addr), 1);
        sweep(Duration::ZERO);
        assert!(IDLE.with_borrow(|p| !p.by_endpoint.contains_key(&addr)));
    }
}
