//! Prometheus metrics of the L7 proxy. Label values are `Arc<str>` built when a table is
//! installed, so recording a request clones pointers instead of formatting strings.

use std::{
    cell::RefCell,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use foldhash::HashMap;
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub listener: Arc<str>,
    /// `namespace/name/rule-index` of the HTTPRoute rule, empty when no route matched.
    pub route: Arc<str>,
    /// The backendRef's `namespace/name:port`, empty when the request never reached a choice.
    pub backend: Arc<str>,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub listener: Arc<str>,
    pub route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    pub listener: Arc<str>,
}

/// One TLS passthrough connection: where it went and how it ended (`spliced`,
/// `no_client_hello`, `no_route`, `refused`, `connect_failed`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PassthroughLabels {
    pub listener: Arc<str>,
    /// `namespace/name` of the TLSRoute, empty when none took the connection.
    pub route: Arc<str>,
    /// The backendRef's `namespace/name:port`, empty when none was chosen.
    pub backend: Arc<str>,
    pub outcome: &'static str,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms .. about 16 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Handles to the proxy's metric families; cheap to clone (each family is an `Arc`).
#[derive(Clone, Debug)]
pub struct ProxyMetrics {
    pub(crate) requests: Family<RequestLabels, Counter>,
    pub(crate) latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    pub(crate) open_connections: Family<ListenerLabels, Gauge>,
    pub(crate) rejected_connections: Family<ListenerLabels, Counter>,
    pub(crate) table_installs: Family<ListenerLabels, Counter>,
    /// RequestMirror copies: their counters, and the slots that bound them (one budget per
    /// proxy, as the families are).
    pub(crate) mirrors: super::mirror::MirrorBudget,
    pub(crate) passthrough: Family<PassthroughLabels, Counter>,
    /// Tells apart the families of different `ProxyMetrics` in the per-thread handle cache
    /// (clones share it, as they share the families).
    id: usize,
}

static NEXT_ID: AtomicUsize = AtomicUsize::new(0);

/// The address of a label, which names it for as long as the cache entry holds it.
fn addr(label: &Arc<str>) -> usize {
    Arc::as_ptr(label).cast::<u8>() as usize
}

/// A request counter and the label values its key points at (kept alive, so that no other
/// label can take their addresses while the entry exists).
struct CachedCounter {
    counter: Counter,
    _labels: [Arc<str>; 3],
}

struct CachedHistogram {
    histogram: Histogram,
    _labels: [Arc<str>; 2],
}

/// This thread's handles into the families, by metrics id and label addresses. Looking a
/// family up by label values takes its lock, hashes the label strings and clones the label
/// `Arc`s (shared counters that every worker thread would write to); a hit here does none of
/// that. Label values are built once per table install, so the set of keys is small; it is
/// emptied if old tables' labels ever pile up.
#[derive(Default)]
struct HandleCache {
    requests: HashMap<(usize, usize, usize, usize, u16), CachedCounter>,
    latency: HashMap<(usize, usize, usize), CachedHistogram>,
}

const HANDLE_CACHE_MAX: usize = 4096;

/// The cached handle under `key`, made on first use. A full cache is emptied first rather than
/// grown: handles of routes that left the plan would otherwise pile up.
fn cached<K: std::hash::Hash + Eq, V>(
    map: &mut HashMap<K, V>,
    key: K,
    make: impl FnOnce() -> V,
) -> &mut V {
    // The size first: a hit is then hashed once, by `entry`.
    if map.len() >= HANDLE_CACHE_MAX && !map.contains_key(&key) {
        map.clear();
    }
    map.entry(key).or_insert_with(make)
}

thread_local! {
    static HANDLES: RefCell<HandleCache> = RefCell::new(HandleCache::default());
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            open_connections: Family::default(),
            rejected_connections: Family::default(),
            table_installs: Family::default(),
            mirrors: super::mirror::MirrorBudget::default(),
            passthrough: Family::default(),
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }
}

impl ProxyMetrics {
    /// Adds the families to `registry` under the `splitter_l7_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("splitter_l7");
        sub.register(
            "requests",
            "HTTP requests answered, by listener, route rule, backendRef and status",
            self.requests.clone(),
        );
        sub.register(
            "request_duration_seconds",
            "Time from request received to response headers sent, by route rule",
            self.latency.clone(),
        );
        sub.register(
            "open_connections",
            "Client connections being served",
            self.open_connections.clone(),
        );
        sub.register(
            "rejected_connections",
            "Client connections closed at accept because the connection limit was reached",
            self.rejected_connections.clone(),
        );
        sub.register(
            "table_installs",
            "Route tables installed on a listener",
            self.table_installs.clone(),
        );
        sub.register(
            "passthrough_connections",
            "TLS passthrough connections, by listener, TLSRoute, backendRef and outcome",
            self.passthrough.clone(),
        );
        self.mirrors.register(registry);
    }

    /// Counts one answered request and observes its latency (seconds from request received
    /// to response headers ready).
    pub(crate) fn record(
        &self,
        listener: &Arc<str>,
        route: &Arc<str>,
        backend: &Arc<str>,
        status: u16,
        seconds: f64,
    ) {
        HANDLES.with_borrow_mut(|cache| {
            let key = (self.id, addr(listener), addr(route), addr(backend), status);
            cached(&mut cache.requests, key, || CachedCounter {
                counter: self.requests.get_or_create_owned(&RequestLabels {
                    listener: listener.clone(),
                    route: route.clone(),
                    backend: backend.clone(),
                    status,
                }),
                _labels: [listener.clone(), route.clone(), backend.clone()],
            })
            .counter
            .inc();
            let key = (self.id, addr(listener), addr(route));
            cached(&mut cache.latency, key, || CachedHistogram {
                histogram: self.latency.get_or_create_owned(&RouteLabels {
                    listener: listener.clone(),
                    route: route.clone(),
                }),
                _labels: [listener.clone(), route.clone()],
            })
            .histogram
            .observe(seconds);
        });
    }

    /// Count of passthrough connections with these labels (for tests).
    pub fn passthrough_with(&self, labels: &PassthroughLabels) -> u64 {
        self.passthrough.get_or_create(labels).get()
    }

    /// Count of requests with these labels (for tests and the admin page).
    pub fn requests_with(&self, labels: &RequestLabels) -> u64 {
        self.requests.get_or_create(labels).get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(l: &Arc<str>, r: &Arc<str>, b: &Arc<str>, status: u16) -> RequestLabels {
        RequestLabels {
            listener: l.clone(),
            route: r.clone(),
            backend: b.clone(),
            status,
        }
    }

    #[test]
    fn cached_handles_count_into_the_right_family_and_labels() {
        let (a, b) = (ProxyMetrics::default(), ProxyMetrics::default());
        let l: Arc<str> = Arc::from("0.0.0.0:80");
        let r: Arc<str> = Arc::from("ns/r/0");
        let be: Arc<str> = Arc::from("ns/svc:80");
        a.record(&l, &r, &be, 200, 0.001);
        a.record(&l, &r, &be, 200, 0.001);
        a.record(&l, &r, &be, 503, 0.001);
        b.record(&l, &r, &be, 200, 0.001);
        // Equal text at another address (a reinstalled table) is the same label set.
        let r2: Arc<str> = Arc::from("ns/r/0");
        a.record(&l, &r2, &be, 200, 0.001);
        assert_eq!(a.requests_with(&labels(&l, &r, &be, 200)), 3);
        assert_eq!(a.requests_with(&labels(&l, &r, &be, 503)), 1);
        assert_eq!(b.requests_with(&labels(&l, &r, &be, 200)), 1);
        assert_eq!(a.clone().requests_with(&labels(&l, &r, &be, 503)), 1);
    }
}
