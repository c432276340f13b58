//! HTTPRoute RequestMirror: a copy of each selected request goes to one endpoint of the mirror
//! Service, fire and forget. The client's request never waits for a copy: copies are sent from
//! tasks of their own, their answers are read and discarded, and whatever a mirror does (slow,
//! down, resetting) changes nothing the client sees.
//!
//! Bounds, so that a slow mirror cannot pile up memory:
//! - at most [`MAX_MIRRORS_IN_FLIGHT`] copies at once over the whole proxy; a copy that would
//!   need another slot is not sent (`outcome="busy"`);
//! - a request body is copied up to [`MAX_MIRRORED_BODY`] bytes (the chunks are shared with the
//!   primary's, not duplicated) and the copy is sent once the client's body has been read in
//!   full; a longer body is not mirrored at all (`outcome="body_too_large"`), rather than sent
//!   truncated: a cut body would be a different request. A body the primary never finishes
//!   reading (the client goes away, the primary fails first) is not mirrored either
//!   (`outcome="body_incomplete"`); an upgrade (WebSocket) request is not copied;
//! - each copy has [`MIRROR_TIMEOUT`] for its whole exchange.
//!
//! Only requests forwarded to a backend are copied (not redirects, nor the 500/503 shares the
//! proxy answers itself). The copy carries the request as the primary backend gets it after the
//! rule's filters (before the backendRef's own), with its Host unchanged: the spec asks for no
//! `-shadow` suffix and the upstream tests check none.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Method, Request, request::Parts, uri::Authority, uri::PathAndQuery};
use http_body_util::{BodyExt, Full};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{
    balance::EndpointCursor,
    upstream::{HopHeaders, Upstream, upstream_uri},
};
use splitter_plan::plan::l7::{Fraction, PlannedMirror};

/// Copies in flight at once, over every listener.
pub const MAX_MIRRORS_IN_FLIGHT: usize = 256;
/// Largest request body that is mirrored.
pub const MAX_MIRRORED_BODY: usize = 64 * 1024;
/// Longest a copy may take, connect to the end of its answer.
pub const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// One RequestMirror filter of a rule, ready to serve.
#[derive(Debug)]
pub struct ServingMirror {
    /// `namespace/name:port`, the metrics label.
    pub name: Arc<str>,
    endpoints: Box<[(SocketAddr, Authority)]>,
    cursor: EndpointCursor,
    fraction: Fraction,
    /// Requests this mirror has seen, for the exact fraction (from 0 again when the table is
    /// reinstalled: at most one cycle of `denominator` requests is uneven per reload).
    seen: AtomicU64,
}

impl ServingMirror {
    /// `None` when an endpoint address cannot be an authority (never for a socket address).
    pub fn new(m: &PlannedMirror) -> Option<Self> {
        let endpoints = m
            .endpoints
            .iter()
            .map(|a| Some((*a, Authority::try_from(a.to_string()).ok()?)))
            .collect::<Option<_>>()?;
        Some(Self {
            name: Arc::from(m.name.as_str()),
            endpoints,
            cursor: EndpointCursor::default(),
            fraction: m.fraction,
            seen: AtomicU64::new(0),
        })
    }

    /// Whether this request is one of the `numerator` in each `denominator`: the n-th request
    /// is copied when `floor((n + 1) * num / den)` moves past `floor(n * num / den)`, so any run
    /// of `den` requests holds exactly `num` copies, spread evenly (no randomness to test
    /// around).
    fn selected(&self) -> bool {
        let Fraction {
            numerator,
            denominator,
        } = self.fraction;
        if numerator >= denominator {
            return true;
        }
        if numerator == 0 {
            return false;
        }
        let n = self.seen.fetch_add(1, Ordering::Relaxed) % u64::from(denominator);
        let (num, den) = (u64::from(numerator), u64::from(denominator));
        (n + 1) * num / den > n * num / den
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    pub listener: Arc<str>,
    pub route: Arc<str>,
    pub mirror: Arc<str>,
    /// `sent` (the mirror answered; its answer discarded), `failed` (connect, protocol or
    /// timeout), `busy`, `body_too_large`, `body_incomplete`, `no_endpoints`.
    pub outcome: &'static str,
}

/// What every listener's mirrors share: the slots and the counter family.
#[derive(Clone, Debug)]
pub struct MirrorBudget {
    slots: Arc<Semaphore>,
    pub(crate) counts: Family<MirrorLabels, Counter>,
}

impl Default for MirrorBudget {
    fn default() -> Self {
        Self {
            slots: Arc::new(Semaphore::new(MAX_MIRRORS_IN_FLIGHT)),
            counts: Family::default(),
        }
    }
}

impl MirrorBudget {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.sub_registry_with_prefix("splitter_l7").register(
            "mirrored_requests",
            "Request copies of RequestMirror filters, by listener, route rule, mirror and outcome",
            self.counts.clone(),
        );
    }
}

/// One copy waiting for its body (or sent at once when there is none).
struct PendingCopy {
    labels: MirrorLabels,
    endpoint: SocketAddr,
    authority: Authority,
    permit: OwnedSemaphorePermit,
}

/// The request head every copy of one request shares.
struct CopyHead {
    method: Method,
    path_and_query: PathAndQuery,
    headers: http::HeaderMap,
    client: HeaderValue,
    scheme: &'static str,
}

/// What the request needs to know to mirror itself.
pub struct MirrorContext<'a> {
    pub upstream: &'a Upstream,
    pub budget: &'a MirrorBudget,
    pub listener: &'a Arc<str>,
    pub route: &'a Arc<str>,
    pub client: &'a HeaderValue,
    pub scheme: &'static str,
}

/// Starts the copies of one request. Bodyless: they are sent now and `None` is returned. With
/// a body: the returned tee collects it as the primary reads it and sends the copies at its end.
pub fn start(
    cx: &MirrorContext<'_>,
    mirrors: &[ServingMirror],
    parts: &Parts,
    has_body: bool,
) -> Option<Box<BodyTee>> {
    let mut pending = Vec::new();
    for m in mirrors {
        if !m.selected() {
            continue;
        }
        let labels = |outcome| MirrorLabels {
            listener: cx.listener.clone(),
            route: cx.route.clone(),
            mirror: m.name.clone(),
            outcome,
        };
        if m.endpoints.is_empty() {
            cx.budget
                .counts
                .get_or_create(&labels("no_endpoints"))
                .inc();
            continue;
        }
        let Ok(permit) = cx.budget.slots.clone().try_acquire_owned() else {
            cx.budget.counts.get_or_create(&labels("busy")).inc();
            continue;
        };
        let (endpoint, authority) = m.endpoints[m.cursor.next(m.endpoints.len())].clone();
        pending.push(PendingCopy {
            labels: labels("sent"),
            endpoint,
            authority,
            permit,
        });
    }
    if pending.is_empty() {
        return None;
    }
    let head = Arc::new(CopyHead {
        method: parts.method.clone(),
        path_and_query: parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/")),
        headers: parts.headers.clone(),
        client: cx.client.clone(),
        scheme: cx.scheme,
    });
    let tee = BodyTee {
        upstream: cx.upstream.clone(),
        counts: cx.budget.counts.clone(),
        head,
        pending,
        chunks: Vec::new(),
        len: 0,
        too_large: false,
    };
    if has_body {
        Some(Box::new(tee))
    } else {
        tee.finish();
        None
    }
}

/// Collects a request body for its copies, up to [`MAX_MIRRORED_BODY`].
pub struct BodyTee {
    upstream: Upstream,
    counts: Family<MirrorLabels, Counter>,
    head: Arc<CopyHead>,
    pending: Vec<PendingCopy>,
    chunks: Vec<Bytes>,
    len: usize,
    too_large: bool,
}

impl BodyTee {
    /// A chunk the primary read (a cheap reference-counted clone of it).
    pub fn data(&mut self, chunk: &Bytes) {
        if self.too_large {
            return;
        }
        self.len += chunk.len();
        if self.len > MAX_MIRRORED_BODY {
            self.too_large = true;
            self.chunks = Vec::new();
        } else {
            self.chunks.push(chunk.clone());
        }
    }

    /// The body ended: the copies go.
    pub fn finish(mut self) {
        let pending = std::mem::take(&mut self.pending);
        if self.too_large {
            for p in pending {
                self.count(p.labels, "body_too_large");
            }
            return;
        }
        let body = match self.chunks.len() {
            0 => None,
            1 => Some(self.chunks[0].clone()),
            _ => {
                let mut all = BytesMut::with_capacity(self.len);
                for c in &self.chunks {
                    all.extend_from_slice(c);
                }
                Some(all.freeze())
            }
        };
        for p in pending {
            let upstream = self.upstream.clone();
            let counts = self.counts.clone();
            let head = self.head.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let outcome =
                    match tokio::time::timeout(MIRROR_TIMEOUT, send(&upstream, &head, &p, body))
                        .await
                    {
                        Ok(Ok(())) => "sent",
                        _ => "failed",
                    };
                let mut labels = p.labels;
                labels.outcome = outcome;
                counts.get_or_create(&labels).inc();
                drop(p.permit);
            });
        }
    }

    fn count(&self, mut labels: MirrorLabels, outcome: &'static str) {
        labels.outcome = outcome;
        self.counts.get_or_create(&labels).inc();
    }
}

impl Drop for BodyTee {
    /// A body that never reached its end: its copies are not sent.
    fn drop(&mut self) {
        for p in std::mem::take(&mut self.pending) {
            self.count(p.labels, "body_incomplete");
        }
    }
}

/// One copy's exchange; its answer is read to the end and discarded (so the connection can be
/// pooled again).
async fn send(
    upstream: &Upstream,
    head: &CopyHead,
    p: &PendingCopy,
    body: Option<Bytes>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = head.method.clone();
    parts.uri = upstream_uri(head.path_and_query.clone());
    parts.headers = head.headers.clone();
    let hop = HopHeaders {
        client: &head.client,
        endpoint: &p.authority,
        scheme: head.scheme,
    };
    let resp = upstream
        .send(p.endpoint, &parts, &hop, body.map(Full::new))
        .await?;
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        frame?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror(numerator: u32, denominator: u32) -> ServingMirror {
        ServingMirror::new(&PlannedMirror {
            name: "ns/m:80".into(),
            endpoints: vec![SocketAddr::from(([127, 0, 0, 1], 1))],
            fraction: Fraction {
                numerator,
                denominator,
            },
        })
        .unwrap()
    }

    fn copies(m: &ServingMirror, n: usize) -> usize {
        (0..n).filter(|_| m.selected()).count()
    }

    #[test]
    fn fractions_are_exact_over_each_cycle() {
        assert_eq!(copies(&mirror(20, 100), 100), 20);
        assert_eq!(copies(&mirror(25, 50), 50), 25);
        assert_eq!(copies(&mirror(35, 100), 300), 105);
        assert_eq!(copies(&mirror(1, 1), 7), 7);
        assert_eq!(copies(&mirror(0, 100), 100), 0);
        // Spread, not bunched: a 1-in-2 mirror alternates.
        let m = mirror(1, 2);
        let seq: Vec<bool> = (0..4).map(|_| m.selected()).collect();
        assert_eq!(seq, vec![false, true, false, true]);
    }
}
