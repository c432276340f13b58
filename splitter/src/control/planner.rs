//! Where plans are made: one thread of the control loop's own, off the async runtime.
//!
//! At thousands of routes a build takes long enough to stall the runtime the watchers, the
//! admin server and the status writer share, so it cannot run there. It ran on tokio's
//! blocking pool before, a different thread from one build to the next; with jemalloc each
//! thread allocates from an arena of its own (eight on two cores) and each arena keeps the
//! pages freed in it for a while, so successive builds spread over several arenas and their
//! garbage added up. One thread allocates from one arena, where each build reuses what the
//! previous one freed.

use std::{sync::mpsc, time::Duration};

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// The planning thread; it ends when this is dropped (after the job it runs).
pub struct Planner {
    jobs: mpsc::Sender<Job>,
}

impl Planner {
    pub fn start() -> std::io::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("splitter-plan".into())
            .spawn(move || {
                for job in queue {
                    // A job that panics drops its reply: the caller sees `None`.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })?;
        Ok(Self { jobs })
    }

    /// Runs `f` on the planning thread; `None` when it panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.jobs
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .ok()?;
        // Waited for on the blocking pool rather than awaited, so that the runtime counts the
        // job as work in flight, as it did when the job ran there: a paused clock (the
        // control loop's tests) does not jump past a plan being made.
        tokio::task::spawn_blocking(move || rx.blocking_recv().ok())
            .await
            .ok()
            .flatten()
    }
}

/// CPU time of the calling thread since [`ThreadCpu::start`]; zero where the clock cannot be
/// read (the pause after a refresh is then none, as for a first one).
pub struct ThreadCpu(Option<Duration>);

impl ThreadCpu {
    fn now() -> Option<Duration> {
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
            .ok()
            .map(Duration::from)
    }

    pub fn start() -> Self {
        Self(Self::now())
    }

    pub fn elapsed(&self) -> Duration {
        match (self.0, Self::now()) {
            (Some(a), Some(b)) => b.saturating_sub(a),
            _ => Duration::ZERO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_one_thread_and_a_panic_answers_none() {
        let planner = Planner::start().expect("thread");
        let a = planner.run(|| std::thread::current().id()).await;
        let b = planner.run(|| std::thread::current().id()).await;
        assert!(a.is_some());
        assert_eq!(a, b);
        assert_ne!(a, Some(std::thread::current().id()));
        let panicked: Option<()> = planner.run(|| panic!("a build that panics")).await;
        assert_eq!(panicked, None);
        assert_eq!(planner.run(|| 7).await, Some(7));
    }
}
