//! A listener's accept loop and how it is stopped, shared by the HTTP and the passthrough
//! listeners: stop accepting (the socket closes, the address can be bound again) and then
//! drain what is open.

use std::future::Future;

use tokio::{
    sync::{oneshot, watch},
    task::JoinHandle,
};

/// What an accept loop is given: it stops accepting when `.0` changes or its sender is
/// dropped, and says so on `.1` once its listening socket is closed.
pub(crate) type StopSignals = (watch::Receiver<()>, oneshot::Sender<()>);

/// A spawned accept loop. Dropping it stops accepting and drains, as [`Self::shutdown`]
/// without waiting.
#[derive(Debug)]
pub(crate) struct AcceptTask {
    stop: watch::Sender<()>,
    /// Fires once the accept loop has closed the listening socket.
    closed: Option<oneshot::Receiver<()>>,
    task: JoinHandle<()>,
    /// What the listener is, for the log.
    what: &'static str,
}

impl AcceptTask {
    /// Spawns the accept loop `run` makes from its stop signals.
    pub(crate) fn spawn<F>(what: &'static str, run: impl FnOnce(StopSignals) -> F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop, stop_rx) = watch::channel(());
        let (closed_tx, closed) = oneshot::channel();
        Self {
            task: tokio::spawn(run((stop_rx, closed_tx))),
            stop,
            closed: Some(closed),
            what,
        }
    }

    /// Stops accepting and returns once the listening socket is closed: from then on the
    /// address refuses connections and can be bound again. What is open goes on until
    /// [`Self::shutdown`].
    pub(crate) async fn stop_accepting(&mut self) {
        // Sent, not dropped: `changed()` fires either way, and `shutdown` still owns the sender.
        let _ = self.stop.send(());
        if let Some(closed) = self.closed.take() {
            // An error means the task ended already, which closed the socket too.
            let _ = closed.await;
        }
    }

    /// Stops accepting, lets what is open finish within the drain timeout, then cuts it.
    pub(crate) async fn shutdown(self) {
        let Self {
            stop, task, what, ..
        } = self;
        drop(stop);
        if let Err(e) = task.await {
            tracing::warn!(error = %e, "{what} listener task ended abnormally");
        }
    }
}
