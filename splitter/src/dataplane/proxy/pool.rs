//! Idle keep-alive connections to backends, one pool per proxy worker thread.
//!
//! A worker thread serves its client connections, and drives the backend connections they use,
//! by itself (see `workers`). Keeping the idle backend connections per thread as well means a
//! request never waits on another thread: no lock on the pool, no cross-thread wake-up to hand a
//! connection over. The cost is the one nginx pays with its per-worker `keepalive` cache: each
//! thread keeps its own idle connections to a backend.

use std::{cell::RefCell, net::SocketAddr, thread::LocalKey, time::Duration};

use foldhash::HashMap;

use hyper::{body::Incoming, client::conn::http1::SendRequest};
use tokio::time::Instant;

use super::direct::DirectConnection;

/// A connection kind kept in the pools: hyper's client connections (requests with a body or an
/// upgrade) and the direct ones (bodyless requests, `direct`).
pub trait Pooled: Sized + 'static {
    /// This thread's idle connections of the kind.
    fn pool() -> &'static LocalKey<RefCell<IdlePool<Self>>>;
    /// Still open, as far as can be told without waiting.
    fn is_open(&mut self) -> bool;
    /// Ready to send a request now.
    fn is_ready(&self) -> bool;
}

impl Pooled for SendRequest<Incoming> {
    fn pool() -> &'static LocalKey<RefCell<IdlePool<Self>>> {
        &HYPER
    }
    fn is_open(&mut self) -> bool {
        !self.is_closed()
    }
    fn is_ready(&self) -> bool {
        SendRequest::is_ready(self)
    }
}

impl Pooled for DirectConnection {
    fn pool() -> &'static LocalKey<RefCell<IdlePool<Self>>> {
        &DIRECT
    }
    fn is_open(&mut self) -> bool {
        self.idle_usable()
    }
    /// Checked in only once its response has been read whole.
    fn is_ready(&self) -> bool {
        true
    }
}

/// A connection that finished its last exchange and waits for the next one.
struct IdleConnection<C> {
    conn: C,
    since: Instant,
}

impl<C: Pooled> IdleConnection<C> {
    fn usable(&mut self, now: Instant, idle_timeout: Duration) -> bool {
        now.duration_since(self.since) < idle_timeout && self.conn.is_open()
    }
}

pub struct IdlePool<C> {
    by_endpoint: HashMap<SocketAddr, Vec<IdleConnection<C>>>,
}

impl<C> Default for IdlePool<C> {
    fn default() -> Self {
        Self {
            by_endpoint: HashMap::default(),
        }
    }
}

thread_local! {
    static HYPER: RefCell<IdlePool<SendRequest<Incoming>>> = RefCell::default();
    static DIRECT: RefCell<IdlePool<DirectConnection>> = RefCell::default();
}

/// The most recently used connection to `endpoint` that is ready for a request, still open and
/// younger than `idle_timeout`; stale ones met on the way are closed. A connection still
/// streaming its last response body is skipped and kept: it is ready again once that body has
/// been read.
pub fn checkout<C: Pooled>(endpoint: SocketAddr, idle_timeout: Duration) -> Option<C> {
    let now = Instant::now();
    C::pool().with_borrow_mut(|pool| {
        let idle = pool.by_endpoint.get_mut(&endpoint)?;
        // Most recently used first: it is the least likely to have been closed by the backend's
        // own idle timeout, and the older ones age out.
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            if !idle[i].usable(now, idle_timeout) {
                idle.remove(i);
            } else if idle[i].conn.is_ready() {
                return Some(idle.remove(i).conn);
            }
        }
        None
    })
}

/// Returns a connection for reuse. A hyper connection comes back as soon as its response head
/// has arrived, its body possibly still streaming (`checkout` passes it over until it is done):
/// putting it back at once costs nothing per request, where waiting for the body's end took a
/// task of its own. Beyond `max_idle` connections to the endpoint it is closed instead.
pub fn checkin<C: Pooled>(endpoint: SocketAddr, mut conn: C, max_idle: usize) {
    if !conn.is_open() {
        return;
    }
    C::pool().with_borrow_mut(|pool| {
        let idle = pool.by_endpoint.entry(endpoint).or_default();
        if idle.len() < max_idle {
            idle.push(IdleConnection {
                conn,
                since: Instant::now(),
            });
        }
    });
}

/// Closes this thread's idle connections that outlived `idle_timeout` or that the backend
/// closed, and forgets endpoints with none left (an endpoint that left the plan is never
/// checked out again, so only this sweep releases its connections).
pub fn sweep(idle_timeout: Duration) {
    sweep_kind::<SendRequest<Incoming>>(idle_timeout);
    sweep_kind::<DirectConnection>(idle_timeout);
}

fn sweep_kind<C: Pooled>(idle_timeout: Duration) {
    let now = Instant::now();
    C::pool().with_borrow_mut(|pool| {
        pool.by_endpoint.retain(|_, idle| {
            idle.retain_mut(|c| c.usable(now, idle_timeout));
            !idle.is_empty()
        });
    });
}

/// Idle connections of a kind this thread holds to `endpoint` (for tests).
#[cfg(test)]
pub(crate) fn idle_count<C: Pooled>(endpoint: SocketAddr) -> usize {
    C::pool().with_borrow(|pool| pool.by_endpoint.get(&endpoint).map_or(0, Vec::len))
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

    type Hyper = SendRequest<Incoming>;

    async fn connect(addr: SocketAddr) -> Hyper {
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
        assert_eq!(
            idle_count::<Hyper>(addr),
            2,
            "the third is closed, not kept"
        );
        assert!(checkout::<Hyper>(addr, LONG).is_some());
        assert!(checkout::<Hyper>(addr, LONG).is_some());
        assert!(checkout::<Hyper>(addr, LONG).is_none());
    }

    #[tokio::test]
    async fn expired_and_closed_connections_are_not_handed_out() {
        let (addr, mut held) = silent_backend().await;
        checkin(addr, connect(addr).await, 8);
        assert!(
            checkout::<Hyper>(addr, Duration::ZERO).is_none(),
            "idle past the timeout"
        );
        assert_eq!(idle_count::<Hyper>(addr), 0, "and closed on the way");

        checkin(addr, connect(addr).await, 8);
        // The backend closes it while idle.
        drop(held.recv().await.unwrap());
        drop(held.recv().await.unwrap());
        let deadline = Instant::now() + Duration::from_secs(5);
        while HYPER.with_borrow(|p| p.by_endpoint[&addr].iter().any(|c| !c.conn.is_closed())) {
            assert!(Instant::now() < deadline, "the close was never noticed");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(checkout::<Hyper>(addr, LONG).is_none());
    }

    #[tokio::test]
    async fn sweep_forgets_stale_endpoints() {
        let (addr, _held) = silent_backend().await;
        checkin(addr, connect(addr).await, 8);
        sweep(LONG);
        assert_eq!(idle_count::<Hyper>(addr), 1);
        sweep(Duration::ZERO);
        assert!(HYPER.with_borrow(|p| !p.by_endpoint.contains_key(&addr)));
    }
}
