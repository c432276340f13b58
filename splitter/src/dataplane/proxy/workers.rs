//! The proxy's worker threads: one single-threaded tokio runtime per thread, nginx style.
//!
//! A client connection is placed on one worker when it is accepted and stays there; the
//! backend connections its requests use are made, driven and pooled on the same thread. On a
//! work-stealing runtime a request instead hopped between the client connection's task, the
//! pooled client and the backend connection's task, often on different threads, and the
//! wake-ups between threads cost more than the proxying itself. What the threads share is
//! read-mostly (the route tables, the metrics) or must be shared to stay exact (the weighted
//! round-robin state of each rule).

use std::{
    io,
    num::NonZeroUsize,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tokio::{runtime::Handle, sync::oneshot};

use super::{h2c, pool};

/// The default worker count: one per CPU the process may run on.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

struct Worker {
    handle: Handle,
    /// Client connections this worker serves, for placing the next one.
    connections: Arc<AtomicUsize>,
    /// Dropping it ends the thread (and drops what still runs on it).
    _stop: oneshot::Sender<()>,
}

/// The running worker threads. They stop when this is dropped; connections still on them are
/// dropped with their runtime.
pub struct ProxyWorkers {
    workers: Box<[Worker]>,
}

impl std::fmt::Debug for ProxyWorkers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyWorkers")
            .field("workers", &self.workers.len())
            .finish()
    }
}

/// A worker chosen for one connection; dropping the slot (when the connection ends) gives the
/// connection back to the worker's count.
pub struct WorkerSlot {
    connections: Arc<AtomicUsize>,
}

impl Drop for WorkerSlot {
    fn drop(&mut self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ProxyWorkers {
    /// Starts `count` (at least one) worker threads. Each sweeps its own idle upstream
    /// connections every `sweep` and closes those idle for `idle_timeout`.
    pub fn start(count: usize, sweep: Duration, idle_timeout: Duration) -> io::Result<Self> {
        let workers = (0..count.max(1))
            .map(|i| Self::start_one(i, sweep, idle_timeout))
            .collect::<io::Result<_>>()?;
        Ok(Self { workers })
    }

    fn start_one(index: usize, sweep: Duration, idle_timeout: Duration) -> io::Result<Worker> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name(format!("splitter-proxy-{index}"))
            .spawn(move || {
                runtime.spawn(pool::sweep_every(sweep, idle_timeout));
                runtime.spawn(h2c::sweep_every(sweep, idle_timeout));
                // Returns when the sender is dropped, i.e. when the workers are.
                let _ = runtime.block_on(stop_rx);
            })?;
        Ok(Worker {
            handle,
            connections: Arc::new(AtomicUsize::new(0)),
            _stop: stop_tx,
        })
    }

    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// The worker serving the fewest connections, with its slot taken. Long-lived keep-alive
    /// connections make the count, not the accept order, what keeps the threads evenly loaded.
    pub fn place(&self) -> (&Handle, WorkerSlot) {
        let worker = self
            .workers
            .iter()
            .min_by_key(|w| w.connections.load(Ordering::Relaxed))
            .expect("at least one worker");
        worker.connections.fetch_add(1, Ordering::Relaxed);
        (
            &worker.handle,
            WorkerSlot {
                connections: worker.connections.clone(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_on_the_least_loaded_worker() {
        let w = ProxyWorkers::start(2, Duration::from_secs(1), Duration::from_secs(1)).unwrap();
        let (a, slot_a) = w.place();
        let (b, slot_b) = w.place();
        assert_ne!(
            a.id(),
            b.id(),
            "the second connection goes to the idle worker"
        );
        drop(slot_a);
        let (c, _slot_c) = w.place();
        assert_eq!(
            a.id(),
            c.id(),
            "a worker freed by a closed connection is used again"
        );
        drop(slot_b);
    }

    #[test]
    fn tasks_run_on_the_worker_thread() {
        let w = ProxyWorkers::start(1, Duration::from_secs(1), Duration::from_secs(1)).unwrap();
        let (h, _slot) = w.place();
        let (tx, rx) = std::sync::mpsc::channel();
        h.spawn(async move {
            tx.send(std::thread::current().name().map(str::to_owned))
                .unwrap();
        });
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(5)).unwrap().as_deref(),
            Some("splitter-proxy-0")
        );
    }
}
