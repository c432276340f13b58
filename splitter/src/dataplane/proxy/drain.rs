//! Graceful shutdown of a listener's connections: each connection registers its [`Progress`]
//! for as long as it lives; draining tells every registered connection, and every one that
//! registers afterwards, to answer what is in flight and close.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
};

use super::idle::Progress;

#[derive(Debug, Default)]
pub struct Drain {
    inner: Mutex<Registered>,
}

#[derive(Debug, Default)]
struct Registered {
    draining: bool,
    next: u64,
    conns: HashMap<u64, Arc<Progress>>,
}

impl Drain {
    fn lock(&self) -> MutexGuard<'_, Registered> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a connection until the returned guard is dropped.
    pub fn register(self: &Arc<Self>, progress: &Arc<Progress>) -> Registration {
        let mut inner = self.lock();
        if inner.draining {
            progress.drain();
        }
        let id = inner.next;
        inner.next += 1;
        inner.conns.insert(id, progress.clone());
        Registration {
            drain: self.clone(),
            id,
        }
    }

    /// Starts draining every connection, present and future.
    pub fn start(&self) {
        let mut inner = self.lock();
        inner.draining = true;
        for progress in inner.conns.values() {
            progress.drain();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().conns.len()
    }
}

/// A connection's place in its listener's [`Drain`].
#[derive(Debug)]
pub struct Registration {
    drain: Arc<Drain>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.drain.lock().conns.remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use std::{
        pin::{Pin, pin},
        task::{Context, Poll},
    };

    use super::*;
    use crate::dataplane::proxy::idle::{Drainable, Supervised};

    /// A connection that ends once it is asked to drain.
    #[derive(Default)]
    struct Conn {
        draining: bool,
    }

    impl Drainable for Conn {
        fn start_draining(mut self: Pin<&mut Self>) {
            self.draining = true;
        }
    }

    impl Future for Conn {
        type Output = &'static str;
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
            if self.draining {
                Poll::Ready("drained")
            } else {
                Poll::Pending
            }
        }
    }

    #[tokio::test]
    async fn draining_reaches_present_and_later_connections() {
        let drain = Arc::new(Drain::default());
        let (a, b) = (Arc::new(Progress::new(1)), Arc::new(Progress::new(1)));
        let reg_a = drain.register(&a);
        let served_a = tokio::spawn({
            let a = a.clone();
            async move { Supervised::new(pin!(Conn::default()), &a).await }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!served_a.is_finished(), "drained before the drain started");
        drain.start();
        // Woken by `start`, not by polling.
        assert_eq!(served_a.await.unwrap(), Some("drained"));
        let reg_b = drain.register(&b);
        assert_eq!(
            Supervised::new(pin!(Conn::default()), &b).await,
            Some("drained")
        );
        assert_eq!(drain.len(), 2);
        drop((reg_a, reg_b));
        assert_eq!(drain.len(), 0);
    }
}
