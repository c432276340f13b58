//! Per-connection timeouts, kept by one watchdog task per connection instead of a timer per
//! request, and the signals a connection's task takes from outside (cut by its watchdog,
//! drained at shutdown or at its maximum age).
//!
//! hyper's own `header_read_timeout` arms a fresh timer for every request head it waits for
//! (a clock read, an allocation, a timer-wheel insert and removal per request, which showed in
//! the proxy's profile). Here a connection has one watchdog, a task of its own that wakes
//! once per tick (half the shortest timeout) and looks at counters the connection keeps
//! anyway; a timeout fires once the same condition held for the timeout's number of ticks, so
//! between one timeout and one timeout plus a tick after it began:
//!
//! - header read: nothing happened (no request started, no response finished, none open) on an
//!   HTTP/1.1 connection, or on an HTTP/2 one before its first request: slowloris, silence,
//!   idle keep-alive;
//! - body read: an HTTP/1.1 request is open and the server waits on the socket for more of its
//!   body, and none comes (the client stopped sending its body);
//! - response write: the socket does not take what the server writes (the client stopped
//!   reading);
//! - HTTP/2 stream idle: a response body that the server took a frame of and does not ask for
//!   the next (the stream's flow-control window stays shut). The backend side of the stream
//!   (its connection) is dropped; the stream fails when the client opens its window again;
//! - maximum age: the connection is drained (GOAWAY, `Connection: close`), and cut if it is
//!   still open a drain timeout later.
//!
//! The watchdog and the drain reach the connection through flags and a waker in [`Progress`],
//! which [`Supervised`] reads when the connection's task runs: racing the connection against
//! a timer future and a shutdown channel in a `select!` polled both on every wake-up of the
//! task, several times per request.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use futures::task::AtomicWaker;
use http::Version;
use http_body::{Body, Frame, SizeHint};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Semaphore,
};

/// The timeouts a connection's watchdog keeps.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub header_read: Duration,
    pub body_read: Duration,
    pub response_write: Duration,
    pub h2_stream_idle: Duration,
    pub max_age: Duration,
    /// After the maximum age: how long the drain may take before the connection is cut.
    pub age_grace: Duration,
}

impl Timeouts {
    /// Everything at `t` (tests).
    #[cfg(test)]
    pub fn all(t: Duration) -> Self {
        Self {
            header_read: t,
            body_read: t,
            response_write: t,
            h2_stream_idle: t,
            max_age: Duration::from_secs(1 << 30),
            age_grace: t,
        }
    }

    /// The watchdog's period: half the shortest idle timeout (at least 10 ms).
    pub fn tick(&self) -> Duration {
        let shortest = [
            self.header_read,
            self.body_read,
            self.response_write,
            self.h2_stream_idle,
        ]
        .into_iter()
        .min()
        .unwrap_or(self.header_read);
        (shortest / 2).max(Duration::from_millis(10))
    }

    /// Ticks a condition must hold for to have lasted `t`.
    fn ticks(&self, t: Duration) -> u32 {
        let tick = self.tick().as_nanos().max(1);
        u32::try_from(t.as_nanos().div_ceil(tick))
            .unwrap_or(u32::MAX)
            .max(1)
    }
}

/// Why a watchdog cut its connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stall {
    /// No complete request head in time (or an idle keep-alive connection).
    HeaderRead,
    /// An HTTP/1.1 request body stopped arriving.
    BodyRead,
    /// The client stopped taking the response.
    ResponseWrite,
    /// Past the maximum age and the drain that followed it.
    MaxAge,
}

impl std::fmt::Display for Stall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::HeaderRead => "no complete request head within the header timeout",
            Self::BodyRead => "the request body stopped arriving (body read timeout)",
            Self::ResponseWrite => "the client stopped reading the response (write timeout)",
            Self::MaxAge => "past the maximum connection age and its drain",
        })
    }
}

/// The limits on one HTTP/2 connection's streams.
#[derive(Clone, Copy, Debug)]
pub struct StreamLimits {
    /// Requests of the connection in flight to backends at once (reset ones included until
    /// their backend answers); more wait.
    pub max_in_flight: usize,
    /// Streams the client may reset before their response (beyond as many as it was answered)
    /// before the connection is closed with GOAWAY.
    pub max_early_resets: u32,
    /// How long a request whose stream the client reset may still wait for its backend.
    pub detached_for: Duration,
}

/// What a connection's watchdog sees of it, and what the connection's task is told.
#[derive(Debug)]
pub struct Progress {
    /// Requests started plus responses finished: any change is progress.
    events: AtomicU64,
    /// Responses handed to the server and not yet sent whole (or dropped).
    open: AtomicU32,
    /// HTTP/2 has its own keep-alive pings; the header timeout covers only its first request.
    http2: AtomicBool,
    /// Socket reads that returned something, and whether the last one found nothing to read.
    reads: AtomicU64,
    read_blocked: AtomicBool,
    /// Socket writes that took something, and whether the last one could not.
    writes: AtomicU64,
    write_blocked: AtomicBool,
    /// Set by the watchdog: close the connection now.
    cut: AtomicBool,
    /// Set at shutdown or at the maximum age: finish the requests in flight, take no more,
    /// close.
    drain: AtomicBool,
    /// Set when the client reset too many streams: GOAWAY and close at once.
    close: AtomicBool,
    /// HTTP/2 response bodies being sent, for their idle timeout.
    streams: Mutex<Streams>,
    /// HTTP/2 streams reset by the client before their response, and responses given.
    early_resets: AtomicU32,
    answered: AtomicU32,
    /// HTTP/2 requests in flight to backends (the permits are taken and given back by hand,
    /// so that a reset request can keep its own while it finishes detached).
    in_flight: Semaphore,
    /// The connection's task, woken when a flag is set.
    task: AtomicWaker,
}

impl Progress {
    /// A connection's progress with at most `max_in_flight` HTTP/2 requests in flight.
    pub fn new(max_in_flight: usize) -> Self {
        Self {
            events: AtomicU64::new(0),
            open: AtomicU32::new(0),
            http2: AtomicBool::new(false),
            reads: AtomicU64::new(0),
            read_blocked: AtomicBool::new(false),
            writes: AtomicU64::new(0),
            write_blocked: AtomicBool::new(false),
            cut: AtomicBool::new(false),
            drain: AtomicBool::new(false),
            close: AtomicBool::new(false),
            streams: Mutex::new(Streams::default()),
            early_resets: AtomicU32::new(0),
            answered: AtomicU32::new(0),
            in_flight: Semaphore::new(max_in_flight.clamp(1, Semaphore::MAX_PERMITS)),
            task: AtomicWaker::new(),
        }
    }

    /// A request head arrived; the returned guard marks its response open until dropped.
    pub fn request(self: &Arc<Self>, version: Version) -> OpenResponse {
        if version == Version::HTTP_2 {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.events.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenResponse(self.clone())
    }

    /// Completes when the connection stalled (see the module documentation), starting the
    /// drain at the maximum age on the way.
    pub async fn stalled(&self, limits: &Timeouts) -> Stall {
        let tick = limits.tick();
        let need_header = limits.ticks(limits.header_read);
        let need_body = limits.ticks(limits.body_read);
        let need_write = limits.ticks(limits.response_write);
        let need_stream = limits.ticks(limits.h2_stream_idle);
        let started = tokio::time::Instant::now();
        let mut ticks = tokio::time::interval_at(started + tick, tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (mut seen_events, mut seen_reads, mut seen_writes) = (
            self.events.load(Ordering::Relaxed),
            self.reads.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
        );
        let (mut quiet, mut body_stuck, mut write_stuck) = (0u32, 0u32, 0u32);
        loop {
            ticks.tick().await;
            let age = started.elapsed();
            if age >= limits.max_age.saturating_add(limits.age_grace) {
                return Stall::MaxAge;
            }
            if age >= limits.max_age && !self.drain.load(Ordering::Relaxed) {
                self.drain();
            }
            let http2 = self.http2.load(Ordering::Relaxed);
            let open = self.open.load(Ordering::Relaxed);

            let events = self.events.load(Ordering::Relaxed);
            quiet = if events == seen_events && open == 0 && !http2 {
                quiet + 1
            } else {
                0
            };
            seen_events = events;
            if quiet >= need_header {
                return Stall::HeaderRead;
            }

            let reads = self.reads.load(Ordering::Relaxed);
            body_stuck = if reads == seen_reads
                && open > 0
                && !http2
                && self.read_blocked.load(Ordering::Relaxed)
            {
                body_stuck + 1
            } else {
                0
            };
            seen_reads = reads;
            if body_stuck >= need_body {
                return Stall::BodyRead;
            }

            let writes = self.writes.load(Ordering::Relaxed);
            write_stuck = if writes == seen_writes && self.write_blocked.load(Ordering::Relaxed) {
                write_stuck + 1
            } else {
                0
            };
            seen_writes = writes;
            if write_stuck >= need_write {
                return Stall::ResponseWrite;
            }

            if http2 {
                let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
                streams.tick(need_stream);
            }
        }
    }

    /// The connection's watchdog, run as a task of its own for the connection's life: cuts the
    /// connection once it has [`stalled`](Self::stalled).
    pub async fn watch(self: Arc<Self>, limits: Timeouts) -> Stall {
        let why = self.stalled(&limits).await;
        self.cut.store(true, Ordering::Release);
        self.task.wake();
        why
    }

    /// Asks the connection to close once its requests in flight are answered.
    pub fn drain(&self) {
        self.drain.store(true, Ordering::Release);
        self.task.wake();
    }

    /// Whether the client reset so many streams that the connection is being closed.
    pub fn closed_for_resets(&self) -> bool {
        self.close.load(Ordering::Relaxed)
    }

    /// An HTTP/2 request's stream ended before its response: counted, and past the limit the
    /// connection is closed.
    fn early_reset(&self, limits: &StreamLimits) {
        let resets = self.early_resets.fetch_add(1, Ordering::Relaxed) + 1;
        if resets > limits.max_early_resets
            && resets > self.answered.load(Ordering::Relaxed)
            && !self.close.swap(true, Ordering::AcqRel)
        {
            self.task.wake();
        }
    }

    fn watch_stream(&self, stream: Weak<dyn Watched>) {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        streams.push(stream);
    }
}

/// The HTTP/2 response bodies of a connection, for the watchdog. Bodies that ended are
/// forgotten at each tick, and also whenever the list doubled since it was last pruned, so that
/// a busy connection does not keep a tick's worth of finished streams.
#[derive(Default)]
struct Streams {
    list: Vec<Weak<dyn Watched>>,
    prune_at: usize,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("len", &self.list.len())
            .finish_non_exhaustive()
    }
}

impl Streams {
    fn push(&mut self, stream: Weak<dyn Watched>) {
        if self.list.len() >= self.prune_at {
            self.list.retain(|s| s.strong_count() > 0);
            self.prune_at = (self.list.len() * 2).max(64);
        }
        self.list.push(stream);
    }

    fn tick(&mut self, need: u32) {
        self.list
            .retain(|s| s.upgrade().is_some_and(|s| s.tick(need)));
    }
}

/// A connection that can be asked to finish what is in flight and close (hyper's connections).
pub trait Drainable {
    fn start_draining(self: Pin<&mut Self>);
}

/// Serves `conn` until it ends (`Some` of its result) or is cut (`None`): by its watchdog, or
/// after one last poll that sends the GOAWAY when closed for resets; drains it when told to.
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
        let close = this.progress.close.load(Ordering::Acquire);
        if !this.draining && (close || this.progress.drain.load(Ordering::Acquire)) {
            this.draining = true;
            this.conn.as_mut().start_draining();
        }
        let polled = this.conn.as_mut().poll(cx).map(Some);
        if close {
            // The poll wrote the GOAWAY; the requests in flight are not waited for.
            return Poll::Ready(None);
        }
        polled
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

/// The client socket, counting what is read and written for the watchdog, and holding what the
/// connection occupies (its slots) for as long as the socket lives: after an upgrade that is
/// the tunnel's life, not the HTTP connection's.
#[derive(Debug)]
pub struct Metered<S, G> {
    io: S,
    progress: Arc<Progress>,
    _held: G,
}

impl<S, G> Metered<S, G> {
    pub fn new(io: S, progress: Arc<Progress>, held: G) -> Self {
        Self {
            io,
            progress,
            _held: held,
        }
    }

    fn blocked(flag: &AtomicBool, now: bool) {
        // Stored only on a change: most calls find it as it was.
        if flag.load(Ordering::Relaxed) != now {
            flag.store(now, Ordering::Relaxed);
        }
    }

    fn wrote<T>(&self, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match &polled {
            Poll::Pending => Self::blocked(&self.progress.write_blocked, true),
            Poll::Ready(_) => {
                Self::blocked(&self.progress.write_blocked, false);
                self.progress.writes.fetch_add(1, Ordering::Relaxed);
            }
        }
        polled
    }
}

impl<S: AsyncRead + Unpin, G: Unpin> AsyncRead for Metered<S, G> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        match &polled {
            Poll::Pending => Self::blocked(&this.progress.read_blocked, true),
            Poll::Ready(_) => {
                Self::blocked(&this.progress.read_blocked, false);
                this.progress.reads.fetch_add(1, Ordering::Relaxed);
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin, G: Unpin> AsyncWrite for Metered<S, G> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// An HTTP/2 response body the watchdog looks at each tick.
trait Watched: Send + Sync {
    /// One tick: whether the stream is still worth watching. Drops the body once it has not
    /// been asked for its next frame for `need` ticks.
    fn tick(&self, need: u32) -> bool;
}

/// The shared half of a watched body.
struct Watch<B> {
    /// Taken (and dropped, closing the backend side) when the stream times out.
    body: Mutex<Option<B>>,
    frames: AtomicU64,
    /// The last poll of the body found nothing: the backend has the turn, not the client.
    waiting: AtomicBool,
    done: AtomicBool,
    // The watchdog's own: frames at the last tick, and ticks without any.
    seen: AtomicU64,
    stuck: AtomicU32,
}

impl<B: Send> Watched for Watch<B> {
    fn tick(&self, need: u32) -> bool {
        if self.done.load(Ordering::Relaxed) {
            return false;
        }
        let frames = self.frames.load(Ordering::Relaxed);
        if self.waiting.load(Ordering::Relaxed) || frames != self.seen.load(Ordering::Relaxed) {
            self.seen.store(frames, Ordering::Relaxed);
            self.stuck.store(0, Ordering::Relaxed);
            return true;
        }
        if self.stuck.fetch_add(1, Ordering::Relaxed) + 1 < need {
            return true;
        }
        // Dropped outside the lock.
        let body = self.body.lock().unwrap_or_else(|e| e.into_inner()).take();
        if body.is_some() {
            tracing::debug!("HTTP/2 stream idle: the client took no data; backend side dropped");
        }
        drop(body);
        false
    }
}

/// The error a timed-out HTTP/2 stream ends with (the client sees the stream reset).
#[derive(Debug, thiserror::Error)]
#[error("HTTP/2 stream idle: the client took no data within the stream idle timeout")]
pub struct StreamIdle;

enum Tracked<B> {
    /// HTTP/1.1: one response at a time, watched through the socket.
    Plain(B),
    Watched(Arc<Watch<B>>),
}

/// A response body that keeps its response open until the server drops it (sent whole, or the
/// connection gone); on HTTP/2 also watched for its stream's idle timeout.
pub struct TrackedBody<B> {
    body: Tracked<B>,
    _open: OpenResponse,
}

impl<B> std::fmt::Debug for TrackedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrackedBody").finish_non_exhaustive()
    }
}

impl<B: Send + 'static> TrackedBody<B> {
    pub fn new(body: B, open: OpenResponse) -> Self {
        Self {
            body: Tracked::Plain(body),
            _open: open,
        }
    }

    /// An HTTP/2 response: registered with its connection's watchdog.
    pub fn watched(body: B, open: OpenResponse) -> Self {
        let watch = Arc::new(Watch {
            body: Mutex::new(Some(body)),
            frames: AtomicU64::new(0),
            waiting: AtomicBool::new(false),
            done: AtomicBool::new(false),
            seen: AtomicU64::new(0),
            stuck: AtomicU32::new(0),
        });
        let watched: Arc<dyn Watched> = watch.clone();
        open.0.watch_stream(Arc::downgrade(&watched));
        Self {
            body: Tracked::Watched(watch),
            _open: open,
        }
    }
}

impl<B> Drop for TrackedBody<B> {
    fn drop(&mut self) {
        if let Tracked::Watched(w) = &self.body {
            w.done.store(true, Ordering::Relaxed);
        }
    }
}

impl<B> Body for TrackedBody<B>
where
    B: Body + Unpin,
    B::Error: From<StreamIdle>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        match &mut self.get_mut().body {
            Tracked::Plain(body) => Pin::new(body).poll_frame(cx),
            Tracked::Watched(w) => {
                let mut slot = w.body.lock().unwrap_or_else(|e| e.into_inner());
                let Some(body) = slot.as_mut() else {
                    return Poll::Ready(Some(Err(StreamIdle.into())));
                };
                let polled = Pin::new(body).poll_frame(cx);
                match &polled {
                    Poll::Pending => w.waiting.store(true, Ordering::Relaxed),
                    Poll::Ready(Some(Ok(_))) => {
                        w.waiting.store(false, Ordering::Relaxed);
                        w.frames.fetch_add(1, Ordering::Relaxed);
                    }
                    Poll::Ready(_) => w.done.store(true, Ordering::Relaxed),
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Tracked::Plain(body) => body.is_end_stream(),
            Tracked::Watched(w) => w
                .body
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .is_some_and(Body::is_end_stream),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Tracked::Plain(body) => body.size_hint(),
            Tracked::Watched(w) => w
                .body
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map_or_else(SizeHint::default, Body::size_hint),
        }
    }
}

/// Runs one HTTP/2 request's handling under its connection's in-flight limit. If the stream
/// goes away first (the client reset it), the handling goes on detached, still holding its
/// place, until its backend answers or `detached_for` passes: the backend never has more of
/// the connection's requests at once than the limit, however fast the client resets. The
/// reset is counted (see [`Progress::early_reset`]), and so is a request `answered` says was
/// not (its client went away first, and the handling gave up before the stream was dropped).
pub async fn in_flight<F: Future + Send + 'static>(
    progress: Arc<Progress>,
    limits: StreamLimits,
    fut: Pin<Box<F>>,
    answered: impl FnOnce(&F::Output) -> bool,
) -> F::Output {
    let mut guard = Detach {
        progress,
        limits,
        fut: Some(fut),
        holds: false,
    };
    // The semaphore is never closed; were it, the request would run unlimited rather than
    // fail.
    if let Ok(permit) = guard.progress.in_flight.acquire().await {
        permit.forget();
        guard.holds = true;
    }
    let out = std::future::poll_fn(|cx| {
        guard
            .fut
            .as_mut()
            .expect("polled until done")
            .as_mut()
            .poll(cx)
    })
    .await;
    guard.fut = None;
    if answered(&out) {
        guard.progress.answered.fetch_add(1, Ordering::Relaxed);
    } else {
        // Given up because the client reset the stream first: an early reset all the same.
        guard.progress.early_reset(&guard.limits);
    }
    out
}

struct Detach<F: Future + Send + 'static> {
    progress: Arc<Progress>,
    limits: StreamLimits,
    fut: Option<Pin<Box<F>>>,
    holds: bool,
}

/// A place in the in-flight limit, given back when dropped.
struct Place(Arc<Progress>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.in_flight.add_permits(1);
    }
}

impl<F: Future + Send + 'static> Drop for Detach<F> {
    fn drop(&mut self) {
        let place = self.holds.then(|| Place(self.progress.clone()));
        let Some(fut) = self.fut.take() else {
            return;
        };
        self.progress.early_reset(&self.limits);
        let (Some(place), Ok(runtime)) = (place, tokio::runtime::Handle::try_current()) else {
            return;
        };
        let limit = self.limits.detached_for;
        runtime.spawn(async move {
            let _place = place;
            let _ = tokio::time::timeout(limit, fut).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_stalls_after_one_timeout() {
        let p = Arc::new(Progress::new(1));
        let start = tokio::time::Instant::now();
        assert_eq!(p.stalled(&Timeouts::all(T)).await, Stall::HeaderRead);
        assert_eq!(start.elapsed(), T);
    }

    #[tokio::test(start_paused = true)]
    async fn progress_and_open_responses_keep_it_alive() {
        let p = Arc::new(Progress::new(1));
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
        let limits = Timeouts::all(T);
        tokio::select! {
            _ = p.stalled(&limits) => {}
            _ = driver => unreachable!(),
        }
        let lived = start.elapsed();
        // Last event at 120 s (the open response ends): stalled one timeout to a tick later.
        assert!(
            lived >= Duration::from_secs(130) && lived <= Duration::from_secs(135),
            "{lived:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_body_that_stops_arriving_stalls() {
        let p = Arc::new(Progress::new(1));
        let _open = p.request(Version::HTTP_11);
        p.reads.fetch_add(1, Ordering::Relaxed);
        p.read_blocked.store(true, Ordering::Relaxed);
        let start = tokio::time::Instant::now();
        let limits = Timeouts {
            body_read: Duration::from_secs(30),
            ..Timeouts::all(T)
        };
        assert_eq!(p.stalled(&limits).await, Stall::BodyRead);
        assert!(start.elapsed() >= Duration::from_secs(30));
        assert!(start.elapsed() <= Duration::from_secs(35));
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_stalls() {
        let p = Arc::new(Progress::new(1));
        let _open = p.request(Version::HTTP_2);
        p.write_blocked.store(true, Ordering::Relaxed);
        let start = tokio::time::Instant::now();
        assert_eq!(p.stalled(&Timeouts::all(T)).await, Stall::ResponseWrite);
        assert_eq!(start.elapsed(), T);
    }

    #[tokio::test(start_paused = true)]
    async fn old_connections_are_drained_then_cut() {
        let p = Arc::new(Progress::new(1));
        drop(p.request(Version::HTTP_2));
        let limits = Timeouts {
            max_age: Duration::from_secs(3600),
            age_grace: Duration::from_secs(30),
            ..Timeouts::all(T)
        };
        let start = tokio::time::Instant::now();
        let stalled = p.stalled(&limits);
        tokio::pin!(stalled);
        assert!(
            tokio::time::timeout(Duration::from_secs(3590), &mut stalled)
                .await
                .is_err()
        );
        assert!(!p.drain.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_secs(15)).await;
        assert_eq!(stalled.await, Stall::MaxAge);
        assert!(
            p.drain.load(Ordering::Relaxed),
            "drained at the maximum age"
        );
        assert!(start.elapsed() >= Duration::from_secs(3630));
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
        let progress = Arc::new(Progress::new(1));
        let watchdog = tokio::spawn(progress.clone().watch(Timeouts::all(T)));
        let start = tokio::time::Instant::now();
        let served = Supervised::new(std::pin::pin!(Forever), &progress).await;
        assert_eq!(served, None);
        assert_eq!(start.elapsed(), T);
        assert_eq!(watchdog.await.unwrap(), Stall::HeaderRead);
    }

    #[tokio::test(start_paused = true)]
    async fn http2_connections_are_left_to_their_pings() {
        let p = Arc::new(Progress::new(1));
        drop(p.request(Version::HTTP_2));
        let limits = Timeouts::all(T);
        let stalled = tokio::time::timeout(Duration::from_secs(3600), p.stalled(&limits));
        assert!(stalled.await.is_err());
    }

    /// A body with one frame ready, then nothing; notes when it is dropped.
    struct OneFrame(Option<bytes::Bytes>, Arc<AtomicBool>);

    impl Body for OneFrame {
        type Data = bytes::Bytes;
        type Error = Box<dyn std::error::Error + Send + Sync>;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<bytes::Bytes>, Self::Error>>> {
            match self.0.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Poll::Pending,
            }
        }
    }

    impl Drop for OneFrame {
        fn drop(&mut self) {
            self.1.store(true, Ordering::Relaxed);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_http2_body_not_asked_for_more_is_dropped() {
        let p = Arc::new(Progress::new(1));
        let dropped = Arc::new(AtomicBool::new(false));
        let open = p.request(Version::HTTP_2);
        let mut body = TrackedBody::watched(
            OneFrame(Some(bytes::Bytes::from_static(b"x")), dropped.clone()),
            open,
        );
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            Poll::Ready(Some(Ok(_)))
        ));
        // The server does not ask again (no window): the watchdog drops the body.
        let limits = Timeouts {
            h2_stream_idle: Duration::from_secs(60),
            ..Timeouts::all(T)
        };
        let stalled = tokio::time::timeout(Duration::from_secs(59), p.stalled(&limits));
        assert!(stalled.await.is_err());
        assert!(
            !dropped.load(Ordering::Relaxed),
            "dropped before the timeout"
        );
        let stalled = tokio::time::timeout(Duration::from_secs(70), p.stalled(&limits));
        assert!(stalled.await.is_err());
        assert!(
            dropped.load(Ordering::Relaxed),
            "the stalled body was dropped"
        );
        assert!(matches!(
            Pin::new(&mut body).poll_frame(&mut cx),
            Poll::Ready(Some(Err(_)))
        ));
    }

    #[test]
    fn finished_streams_do_not_pile_up_between_ticks() {
        let p = Arc::new(Progress::new(1));
        let mut alive = Vec::new();
        for i in 0..10_000 {
            let body = TrackedBody::watched(
                OneFrame(None, Arc::new(AtomicBool::new(false))),
                p.request(Version::HTTP_2),
            );
            if i % 1000 == 0 {
                alive.push(body);
            }
        }
        let len = p.streams.lock().unwrap().list.len();
        assert!(len <= 128, "{len} entries kept for 10 live streams");
    }

    #[tokio::test(start_paused = true)]
    async fn reset_requests_keep_their_place_until_answered() {
        let p = Arc::new(Progress::new(2));
        let limits = StreamLimits {
            max_in_flight: 2,
            max_early_resets: 3,
            detached_for: Duration::from_secs(60),
        };
        let running = Arc::new(AtomicU32::new(0));
        let request = |p: &Arc<Progress>| {
            let running = running.clone();
            let fut = Box::pin(async move {
                running.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(10)).await;
                running.fetch_sub(1, Ordering::Relaxed);
            });
            tokio::spawn(in_flight(p.clone(), limits, fut, |_| true))
        };
        // Five requests, each reset 1 ms after it started.
        for _ in 0..5 {
            let r = request(&p);
            tokio::time::sleep(Duration::from_millis(1)).await;
            r.abort();
            let _ = r.await;
            assert!(running.load(Ordering::Relaxed) <= 2);
        }
        assert_eq!(running.load(Ordering::Relaxed), 2, "two run detached");
        assert!(
            p.closed_for_resets(),
            "more resets than allowed and than answers"
        );
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(running.load(Ordering::Relaxed), 0);
        assert_eq!(p.in_flight.available_permits(), 2, "places given back");
    }
}
