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

/// The most recently used idle connection to `endpoint` that is still open, ready and younger
/// than `idle_timeout`; stale ones met on the way are closed.
pub fn checkout(endpoint: SocketAddr, idle_timeout: Duration) -> Option<SendRequest<Incoming>> {
    let now = Instant::now();
    IDLE.with_borrow_mut(|pool| {
        let idle = pool.by_endpoint.get_mut(&endpoint)?;
        // Most recently used first: it is the least likely to have been closed by the backend's
        // own idle timeout, and the older ones age out.
        while let Some(c) = idle.pop() {
            if c.usable(now, idle_timeout) && c.sender.is_ready() {
                return Some(c.sender);
            }
        }
        None
    })
}

/// Returns a connection whose exchange is over; beyond `max_idle` connections to the endpoint
/// it is closed instead.
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
