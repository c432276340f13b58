//! Process signals that end the agent.

use tokio::signal::unix::{SignalKind, signal};

/// Resolves on the first SIGTERM (Kubernetes stopping the pod) or SIGINT (Ctrl-C).
pub async fn terminated() -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
