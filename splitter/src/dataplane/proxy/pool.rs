//! Idle keep-alive connections to backends, one pool per proxy worker thread.
//!
//! A worker thread serves its client connections, and drives the backend connections they use,
//! by itself (see `workers`). Keeping the idle backend connections per thread as well means a
//! request never waits on another thread: no lock on the pool, no cross-thread wake-up to hand a
//! connection over. The cost is the one nginx pays with its per-worker `keepalive` cache: each
//! thread keeps its own idle connections to a backend.

use std::{cell::RefCell, net::SocketAddr, time::Duration};

use foldhash::HashMap;

use tokio::time::Instant;

use super::direct::{DirectConnection, IdleState};

/// How long an endpoint that sent stray bytes (bytes after a complete response, or on an idle
/// connection) gets no pooled connection: each of its requests gets a connection of its own,
/// closed after the response.
pub const DISTRUST_FOR: Duration = Duration::from_secs(30);

/// A connection that finished its last exchange and waits for the next one.
struct IdleConnection {
    conn: DirectConnection,
    since: Instant,
}

#[derive(Default)]
struct IdlePool {
    by_endpoint: HashMap<SocketAddr, Vec<IdleConnection>>,
    /// Endpoints that sent stray bytes, and until when they are not pooled.
    distrusted: HashMap<SocketAddr, Instant>,
}

impl IdlePool {
    /// Whether `conn` can take a request; an endpoint found sending stray bytes is distrusted.
    fn usable(
        &mut self,
        endpoint: SocketAddr,
        c: &mut IdleConnection,
        now: Instant,
        idle_timeout: Duration,
    ) -> bool {
        if now.duration_since(c.since) >= idle_timeout {
            return false;
        }
        match c.conn.idle_state() {
            IdleState::Usable => true,
            IdleState::Closed => false,
            IdleState::Stray => {
                self.distrusted.insert(endpoint, now + DISTRUST_FOR);
                false
            }
        }
    }

    fn is_distrusted(&mut self, endpoint: SocketAddr, now: Instant) -> bool {
        match self.distrusted.get(&endpoint) {
            Some(until) if now < *until => true,
            Some(_) => {
                self.distrusted.remove(&endpoint);
                false
            }
            None => false,
        }
    }
}

thread_local! {
    static POOL: RefCell<IdlePool> = RefCell::default();
}

/// The most recently used connection to `endpoint` that is still open and younger than
/// `idle_timeout`; stale ones met on the way are closed.
pub fn checkout(endpoint: SocketAddr, idle_timeout: Duration) -> Option<DirectConnection> {
    let now = Instant::now();
    POOL.with_borrow_mut(|pool| {
        let mut idle = pool.by_endpoint.remove(&endpoint)?;
        // Most recently used first: it is the least likely to have been closed by the backend's
        // own idle timeout, and the older ones age out.
        let mut found = None;
        while let Some(mut c) = idle.pop() {
            if pool.usable(endpoint, &mut c, now, idle_timeout) {
                found = Some(c.conn);
                break;
            }
        }
        if pool.is_distrusted(endpoint, now) {
            // Stray bytes on one of them: none is trusted.
            return None;
        }
        if !idle.is_empty() {
            pool.by_endpoint.insert(endpoint, idle);
        }
        found
    })
}

/// Returns a connection whose response was read whole, for reuse. Beyond `max_idle`
/// connections to the endpoint, or while the endpoint is distrusted, it is closed instead.
pub fn checkin(endpoint: SocketAddr, conn: DirectConnection, max_idle: usize) {
    let now = Instant::now();
    POOL.with_borrow_mut(|pool| {
        if pool.is_distrusted(endpoint, now) {
            return;
        }
        let idle = pool.by_endpoint.entry(endpoint).or_default();
        if idle.len() < max_idle {
            idle.push(IdleConnection { conn, since: now });
        }
    });
}

/// `endpoint` sent stray bytes: its idle connections are closed and no connection to it is
/// pooled for [`DISTRUST_FOR`].
pub fn distrust(endpoint: SocketAddr) {
    tracing::debug!(%endpoint, "stray bytes from the backend; its connections are not reused for a while");
    POOL.with_borrow_mut(|pool| {
        pool.by_endpoint.remove(&endpoint);
        pool.distrusted
            .insert(endpoint, Instant::now() + DISTRUST_FOR);
    });
}

/// Closes this thread's idle connections that outlived `idle_timeout` or that the backend
/// closed, and forgets endpoints with none left (an endpoint that left the plan is never
/// checked out again, so only this sweep releases its connections).
pub fn sweep(idle_timeout: Duration) {
    let now = Instant::now();
    POOL.with_borrow_mut(|pool| {
        let mut by_endpoint = std::mem::take(&mut pool.by_endpoint);
        by_endpoint.retain(|endpoint, idle| {
            idle.retain_mut(|c| pool.usable(*endpoint, c, now, idle_timeout));
            !idle.is_empty()
        });
        for endpoint in pool.distrusted.keys().copied().collect::<Vec<_>>() {
            if pool.is_distrusted(endpoint, now) {
                by_endpoint.remove(&endpoint);
            }
        }
        pool.by_endpoint = by_endpoint;
    });
}

/// Idle connections this thread holds to `endpoint` (for tests).
#[cfg(test)]
pub(crate) fn idle_count(endpoint: SocketAddr) -> usize {
    POOL.with_borrow(|pool| pool.by_endpoint.get(&endpoint).map_or(0, Vec::len))
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
    use tokio::{
        io::AsyncWriteExt,
        net::{TcpListener, TcpStream},
    };

    use super::*;

    const LONG: Duration = Duration::from_secs(60);

    /// A backend that accepts connections and holds them open without a word.
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

    async fn connect(addr: SocketAddr) -> DirectConnection {
        DirectConnection::new(TcpStream::connect(addr).await.unwrap())
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
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(checkout(addr, LONG).is_none());
    }

    #[tokio::test]
    async fn stray_bytes_on_an_idle_connection_distrust_the_endpoint() {
        let (addr, mut held) = silent_backend().await;
        checkin(addr, connect(addr).await, 8);
        checkin(addr, connect(addr).await, 8);
        let mut first = held.recv().await.unwrap();
        let mut second = held.recv().await.unwrap();
        // The newest is met first and is stray: the other, quiet one is not handed out either.
        second.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await.unwrap();
        let _ = &mut first;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(checkout(addr, LONG).is_none(), "neither is handed out");
        assert_eq!(idle_count(addr), 0);
        checkin(addr, connect(addr).await, 8);
        assert_eq!(idle_count(addr), 0, "nor is a new one kept");
    }

    #[tokio::test]
    async fn sweep_forgets_stale_endpoints() {
        let (addr, _held) = silent_backend().await;
        checkin(addr, connect(addr).await, 8);
        sweep(LONG);
        assert_eq!(idle_count(addr), 1);
        sweep(Duration::ZERO);
        assert!(POOL.with_borrow(|p| !p.by_endpoint.contains_key(&addr)));
    }
}
