//! Hot reload of `--manifests` by polling.
//!
//! Polling size and modification time once a second, rather than inotify (`notify`), because
//! the usual way manifests reach a pod is a ConfigMap volume, which the kubelet updates by
//! swapping a `..data` symlink: inotify watches on the files see nothing, and watching the
//! directory needs symlink-aware event handling. A stat of a handful of files per second costs
//! nothing and works the same on every filesystem (NFS, overlay, hostPath).

use std::time::Duration;

use tokio::sync::mpsc;

use super::FileSource;
use splitter_plan::model::index::Update;

pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Scans `source` now and then every `interval`; whenever something changed, logs the errors
/// and sends the source's content as one batch of relists. Returns when the receiver is gone.
pub async fn watch(mut source: FileSource, interval: Duration, tx: mpsc::Sender<Vec<Update>>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        ticker.tick().await;
        let report = source.scan();
        if !report.changed && !first {
            continue;
        }
        first = false;
        for e in &report.errors {
            tracing::error!("manifests: {e}");
        }
        tracing::info!(
            files = report.files,
            errors = report.errors.len(),
            "manifests reloaded"
        );
        if tx.send(source.updates()).await.is_err() {
            return;
        }
    }
}
