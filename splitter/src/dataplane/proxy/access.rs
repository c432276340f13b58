//! The access log (`splitter run --access-log`): one JSON line per request, written when its
//! response body has been sent (or failed, or was abandoned by the client). Off by default.

use std::{io::Write, net::SocketAddr, sync::Arc, time::Duration};

use tokio::time::Instant;

type Write_ = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// Where access log lines go: standard output, or a function (tests).
#[derive(Clone)]
pub struct AccessLog(Write_);

impl AccessLog {
    /// Lines to standard output, one write each.
    pub fn stdout() -> Self {
        Self(Arc::new(|line| {
            let _ = std::io::stdout().lock().write_all(line);
        }))
    }

    /// Lines (each ending in a newline) to `write`.
    pub fn to(write: impl Fn(&[u8]) + Send + Sync + 'static) -> Self {
        Self(Arc::new(write))
    }
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AccessLog")
    }
}

/// How the response body ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Not yet, or never: the client went away first.
    #[default]
    Cut,
    Complete,
    /// The backend's body failed midway.
    Failed,
}

/// One request's line, written when dropped.
#[derive(Debug)]
pub(crate) struct AccessEntry {
    pub log: AccessLog,
    pub listener: Arc<str>,
    pub route: Arc<str>,
    pub backend: Arc<str>,
    pub endpoint: Option<SocketAddr>,
    pub method: http::Method,
    pub path: String,
    pub status: u16,
    pub start: Instant,
    /// From sending the request to the backend to its response head.
    pub upstream: Option<Duration>,
    /// Response body bytes sent.
    pub bytes: u64,
    pub outcome: Outcome,
}

impl AccessEntry {
    pub fn body_complete(&mut self) {
        if self.outcome == Outcome::Cut {
            self.outcome = Outcome::Complete;
        }
    }

    pub fn body_failed(&mut self) {
        self.outcome = Outcome::Failed;
    }

    fn line(&self) -> Vec<u8> {
        let ms = |d: Duration| (d.as_secs_f64() * 1e6).round() / 1e3;
        let value = serde_json::json!({
            "listener": &*self.listener,
            "route": &*self.route,
            "backend": &*self.backend,
            "endpoint": self.endpoint.map(|e| e.to_string()),
            "method": self.method.as_str(),
            "path": &self.path,
            "status": self.status,
            "bytes": self.bytes,
            "body": match self.outcome {
                Outcome::Cut => "cut",
                Outcome::Complete => "complete",
                Outcome::Failed => "failed",
            },
            "duration_ms": ms(self.start.elapsed()),
            "upstream_ms": self.upstream.map(ms),
        });
        let mut line = serde_json::to_vec(&value).unwrap_or_default();
        line.push(b'\n');
        line
    }
}

impl Drop for AccessEntry {
    fn drop(&mut self) {
        (self.log.0)(&self.line());
    }
}
