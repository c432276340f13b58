//! The header read timeout, kept per connection instead of per request, and the signals a
//! connection's task takes from outside (cut by its watchdog, drained at shutdown).
//!
//! hyper's own `header_read_timeout` arms a fresh timer for every request head it waits for
//! (a clock read, an allocation, a timer-wheel insert and removal per request, which showed in
//! the proxy's profile). Here a connection has one watchdog, a task of its own that wakes
//! once per timeout period and cuts the connection when nothing happened over a whole period:
//! no request started, no response finished, and none still being sent. A client that never
//! completes a request head (slowloris) is cut after one period from connecting or from its
//! last response, at the latest after two.
//!
//! The watchdog and the drain reach the connection through flags and a waker in [`Progress`],
//! which [`Supervised`] reads when the connection's task runs: racing the connection against
//! a timer future and a shutdown channel in a `select!` polled both on every wake-up of the
//! task, several times per request.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::task::AtomicWaker;
use http::Version;
use http_body::{Body, Frame, SizeHint};

/// What a connection's watchdog sees of it, and what the connection's task is told.
#[derive(Debug, Default)]
pub struct Progress {
    /// Requests started plus responses finished: any change is progress.
    events: AtomicU64,
    /// Responses handed to the server and not yet sent whole (or dropped).
    open: AtomicU32,
    /// HTTP/2 has its own keep-alive pings; the timeout covers only its first request.
    http2: AtomicBool,
    /// Set by the watchdog: close the connection now.
    cut: AtomicBool,
    /// Set at shutdown: finish the requests in flight, take no more, close.
    drain: AtomicBool,
    /// The connection's task, woken when either flag is set.
    task: AtomicWaker,
}

impl Progress {
    /// A request head arrived; the returned guard marks its response open until dropped.
    pub fn request(self: &Arc<Self>, version: Version) -> OpenResponse {
        if version == Version::HTTP_2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.events.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenResponse(self.clone())
    }

    /// Completes when the connection made no progress for a whole `period` with no response
    /// open.
    pub async fn stalled(&self, period: Duration) {
        let mut seen = self.events.load(Ordering::Relaxed);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let now = self.events.load(Ordering::Relaxed);
            if now == seen
                && self.open.load(Ordering::Relaxed) == 0
                && !self.http2.load(Ordering::Relaxed)
            {
                return;
            }
            seen = now;
        }
    }

    /// The connection's watchdog, run as a task of its own for the connection's life: cuts the
    /// connection once it has [`stalled`](Self::stalled).
    pub async fn watch(self: Arc<Self>, period: Duration) {
        self.stalled(period).await;
        self.cut.store(true, Ordering::Release);
        self.task.wake();
    }

    /// Asks the connection to close once its requests in flight are answered.
    pub fn drain(&self) {
        self.drain.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// A connection that can be asked to finish what is in flight and close (hyper's connections).
pub trait Drainable {
    fn start_draining(self: Pin<&mut Self>);
}

/// Serves `conn` until it ends (`Some` of its result) or its watchdog cuts it (`None`); drains
/// it when told to.
pub struct Supervised<'a, C> {
    conn: Pin<&'a mut C>,
    progress: &'a Progress,
    draining: bool,
}

impl<'a, C> Supervised<'a, C> {
    pub fn new(conn: Pin<&'a mut C>, progress: &'a Progress) -> Self {
        Self {
            conn,
            progress,
            draining: false,
        }
    }
}

impl<C: Future + Drainable> Future for Supervised<'_, C> {
    type Output = Option<C::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        // Registered before the flags are read, so that a flag set after the read wakes us.
        this.progress.task.register(cx.waker());
        if this.progress.cut.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        if !this.draining && this.progress.drain.load(Ordering::Acquire) {
            this.draining = true;
            this.conn.as_mut().start_draining();
        }
        this.conn.as_mut().poll(cx).map(Some)
    }
}

/// A response not yet sent whole.
#[derive(Debug)]
pub struct OpenResponse(Arc<Progress>);

impl Drop for OpenResponse {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.events.fetch_add(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its response open until the server drops it (sent whole, or the
/// connection gone).
#[derive(Debug)]
pub struct TrackedBody<B> {
    body: B,
    _open: OpenResponse,
}

impl<B> TrackedBody<B> {
    pub fn new(body: B, open: OpenResponse) -> Self {
        Self { body, _open: open }
    }
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_stalls_after_one_period() {
        let p = Arc::new(Progress::default());
        let start = tokio::time::Instant::now();
        p.stalled(Duration::from_secs(10)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn progress_and_open_responses_keep_it_alive() {
        let p = Arc::new(Progress::default());
        let period = Duration::from_secs(10);
        let start = tokio::time::Instant::now();
        let driver = {
            let p = p.clone();
            async move {
                // A request every 6 s for a minute, then one response open for a minute.
                for _ in 0..10 {
                    tokio::time::sleep(Duration::from_secs(6)).await;
                    drop(p.request(Version::HTTP_11));
                }
                let open = p.request(Version::HTTP_11);
                tokio::time::sleep(Duration::from_secs(60)).await;
                drop(open);
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = p.stalled(period) => {}
            _ = driver => unreachable!(),
        }
        let lived = start.elapsed();
        // Last event at 120 s (the open response ends): stalled one to two periods later.
        assert!(
            lived >= Duration::from_secs(130) && lived <= Duration::from_secs(140),
            "{lived:?}"
        );
    }

    /// A connection that never ends by itself.
    struct Forever;

    impl Drainable for Forever {
        fn start_draining(self: Pin<&mut Self>) {}
    }

    impl Future for Forever {
        type Output = ();
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<()> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_cuts_a_stalled_connection() {
        let progress = Arc::new(Progress::default());
        let watchdog = tokio::spawn(progress.clone().watch(Duration::from_secs(10)));
        let start = tokio::time::Instant::now();
        let served = Supervised::new(std::pin::pin!(Forever), &progress).await;
        assert_eq!(served, None);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        watchdog.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn http2_connections_are_left_to_their_pings() {
        let p = Arc::new(Progress::default());
        drop(p.request(Version::HTTP_2));
        let stalled = tokio::time::timeout(
            Duration::from_secs(3600),
            p.stalled(Duration::from_secs(10)),
        );
        assert!(stalled.await.is_err());
    }
}
