//! Prometheus metrics of the L7 proxy. Label values are `Arc<str>` built when a table is
//! installed, so recording a request clones pointers instead of formatting strings.

use std::sync::Arc;

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
}

impl Default for ProxyMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
            open_connections: Family::default(),
            rejected_connections: Family::default(),
            table_installs: Family::default(),
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
    }

    /// Count of requests with these labels (for tests and the admin page).
    pub fn requests_with(&self, labels: &RequestLabels) -> u64 {
        self.requests.get_or_create(labels).get()
    }
}
