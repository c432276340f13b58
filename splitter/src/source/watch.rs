//! Hot reload of `--manifests`: change notification (inotify, through `notify`), with polling
//! as the fallback.
//!
//! Each root is watched as a directory: a root directory recursively, a root file through its
//! parent. Watching directories rather than files is what sees the usual ways manifests
//! change: an editor that writes a new file and renames it over the old one, and a ConfigMap
//! volume, which the kubelet updates by swapping a `..data` symlink (the files' own inodes
//! never change). Any event that is not a read starts a scan a moment later (`SETTLE`), which
//! re-reads only the files whose size or modification time changed; a scan that finds nothing
//! new sends nothing.
//!
//! Notification misses changes on some filesystems (NFS and other network mounts changed from
//! another host) and cannot watch a root that does not exist yet, so a scan also runs every
//! [`SAFETY_SCAN`] while notification works, and every poll interval when it cannot start
//! (inotify watch limit reached, no inotify).

use std::{path::PathBuf, time::Duration};

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::FileSource;
use splitter_plan::model::index::Update;

/// How often manifests are scanned when change notification cannot be used.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// How often manifests are scanned anyway while change notification works.
pub const SAFETY_SCAN: Duration = Duration::from_secs(10);
/// How long after an event the scan starts: an editor's save or the kubelet's symlink swap is
/// several events, which one scan should see whole.
const SETTLE: Duration = Duration::from_millis(20);

/// Scans `source` now and then on every change notification (or every `poll` without one);
/// whenever something changed, logs the errors and sends what changed (the first time: the
/// whole content, as one relist per kind). Returns when the receiver is gone.
pub async fn watch(mut source: FileSource, poll: Duration, tx: mpsc::Sender<Vec<Update>>) {
    let (wake_tx, mut wake) = mpsc::channel::<()>(1);
    let notifier = notifier(source.roots(), wake_tx);
    let every = match &notifier {
        Ok(_) => SAFETY_SCAN.max(poll),
        Err(e) => {
            tracing::warn!(
                error = %e,
                interval = ?poll,
                "manifests: no change notification; polling instead"
            );
            poll
        }
    };
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut first = true;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            Some(()) = wake.recv() => {
                tokio::time::sleep(SETTLE).await;
                // The events of the settle time are covered by this scan.
                let _ = wake.try_recv();
            }
        }
        let report = source.scan();
        if !report.changed && !first {
            continue;
        }
        // The first batch relists every kind; later ones carry what changed.
        let changes = source.take_changes();
        let batch = if first {
            // The first scan's changes are a copy of every object: gone before the relist
            // makes another.
            drop(changes);
            source.updates()
        } else {
            changes
        };
        first = false;
        for e in &report.errors {
            tracing::error!("manifests: {e}");
        }
        tracing::info!(
            files = report.files,
            errors = report.errors.len(),
            "manifests reloaded"
        );
        if batch.is_empty() {
            continue;
        }
        if tx.send(batch).await.is_err() {
            return;
        }
    }
}

/// A watcher that sends on `wake` when anything under `roots` may have changed. Dropping it
/// stops the notifications.
fn notifier(
    roots: &[PathBuf],
    wake: mpsc::Sender<()>,
) -> notify::Result<notify::RecommendedWatcher> {
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Our own reads are events too (opening a file to scan it): never a reason to scan.
        if let Ok(e) = &event
            && matches!(e.kind, EventKind::Access(_))
        {
            return;
        }
        // Full: a scan is already due, which will see this change too.
        let _ = wake.try_send(());
    })?;
    let mut watched = 0;
    for root in roots {
        let (dir, mode) = if root.is_dir() {
            (root.clone(), RecursiveMode::Recursive)
        } else {
            match root.parent() {
                Some(p) if !p.as_os_str().is_empty() => {
                    (p.to_path_buf(), RecursiveMode::NonRecursive)
                }
                _ => (PathBuf::from("."), RecursiveMode::NonRecursive),
            }
        };
        match watcher.watch(&dir, mode) {
            Ok(()) => watched += 1,
            // A root that does not exist yet is found by the safety scan.
            Err(e) => tracing::warn!(path = %dir.display(), error = %e, "manifests: cannot watch"),
        }
    }
    if watched == 0 && !roots.is_empty() {
        return Err(notify::Error::generic("no manifest path could be watched"));
    }
    Ok(watcher)
}
