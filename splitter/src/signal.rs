//! Process signals that end the agent.

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal};

/// Installs the handlers for SIGTERM (Kubernetes stopping the pod) and SIGINT (Ctrl-C) now, and
/// returns what resolves on the first of them.
///
/// The handlers are installed by this call, not when the future is first polled: a process that
/// announces itself (prints its address, turns ready) before its first poll would otherwise die
/// of a signal that arrives in between instead of shutting down cleanly. Call it from within a
/// Tokio runtime.
pub fn terminated() -> std::io::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// The handler must be in place before the future is polled: a SIGTERM sent between the
    /// call and the first poll is caught, not the default action (which would end the test
    /// process with it).
    #[tokio::test]
    async fn a_signal_before_the_first_poll_is_caught() {
        let terminated = super::terminated().expect("handlers install");
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGTERM).unwrap();
        tokio::time::timeout(Duration::from_secs(10), terminated)
            .await
            .expect("the SIGTERM raised before the first poll resolves it");
    }
}
