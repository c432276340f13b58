//! The L7 part of a listener's plan: what the hyper proxy serves.
//!
//! These types are the contract between `plan` (which builds them from the index, pure) and
//! `dataplane::proxy` (which serves them). They hold resolved, validated values only (the
//! matches and filters are the model's typed values): an invalid field never reaches here, it
//! becomes a status condition or a `BackendTarget::Invalid` share.

use std::{net::SocketAddr, sync::Arc};

use serde::Serialize;

use super::ObjectKey;
pub use crate::model::cors::{Allowed, Cors, OriginPattern};
pub use crate::model::http::{
    Filter, Fraction, HeaderMatch, HeaderModifier, PathMatch, PathModifier, Pattern, QueryMatch,
    Redirect, RouteMatch, Timeouts, UrlRewrite, ValueMatch,
};

/// Routes of one L7 listener, in Gateway API precedence order: the proxy serves a request with
/// the first route whose hostnames and match accept it, and answers 404 when none does.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct L7RouteTable {
    /// Shared, so that a plan that changes a few routes (an endpoint refresh,
    /// [`super::refresh`]) keeps the others' allocations, and the proxy recompiles only the
    /// routes whose `Arc` is new.
    pub routes: Vec<Arc<L7Route>>,
    /// The certificates of an HTTPS listener, which the proxy terminates TLS with; `None`: plain
    /// HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<super::tls::TlsPlan>,
    /// A TLS passthrough listener: no HTTP at all (`routes` and `tls` are empty); the proxy
    /// reads each connection's ClientHello, picks a TLSRoute by its server name and splices
    /// the connection to a backend (`proxy::passthrough`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passthrough: Option<super::passthrough::PassthroughTable>,
}

impl L7RouteTable {
    /// Equality that compares shared routes by address first: after an endpoint refresh most
    /// routes of two tables are the same `Arc`, and a deep comparison of thousands of routes
    /// is what the sharing saves.
    pub fn same_as(&self, other: &L7RouteTable) -> bool {
        self.tls == other.tls
            && self.passthrough == other.passthrough
            && self.routes.len() == other.routes.len()
            && self
                .routes
                .iter()
                .zip(&other.routes)
                .all(|(a, b)| Arc::ptr_eq(a, b) || a == b)
    }
}

/// One (rule, match) pair of an HTTPRoute. A rule with three matches gives three `L7Route`s that
/// share `rule` data; each is ordered on its own by precedence, as the spec requires.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct L7Route {
    /// The HTTPRoute this came from.
    pub route: ObjectKey,
    /// Index of the rule in `spec.rules`.
    pub rule_index: usize,
    /// Effective hostnames: the intersection of the listener's and the route's. Empty = any host.
    /// Entries are lower-case; `*.example.com` matches one or more labels before `example.com`.
    pub hostnames: Vec<String>,
    /// Listener isolation: the hostnames of the more specific listeners on the same port. A
    /// request whose host one of them matches belongs to that listener's routes only, so this
    /// route does not take it even when no route of that listener matches (404).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shadowed_by: Vec<String>,
    pub matched: RouteMatch,
    /// Rule filters, in spec order (the strip-path annotation appears here as a URLRewrite).
    pub filters: Vec<Filter>,
    /// The weighted backendRefs of the rule, in spec order (order matters for the smooth WRR
    /// sequence being deterministic).
    pub backends: Vec<PlannedBackend>,
    pub timeouts: Timeouts,
    /// The rule's RequestMirror filters whose backendRef resolved, in spec order: each selected
    /// request is copied to one endpoint of each, and their answers are discarded.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<PlannedMirror>,
}

/// A RequestMirror filter after resolution. A mirror whose ref did not resolve is left out (the
/// route's `ResolvedRefs` says why); one whose Service has no ready endpoint is kept, and its
/// copies are dropped and counted.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlannedMirror {
    /// `namespace/name:port` of the Service.
    pub name: String,
    /// Ready endpoints; empty when there are none.
    pub endpoints: Vec<SocketAddr>,
    pub fraction: Fraction,
}

/// One backendRef of a rule after resolution.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlannedBackend {
    /// `namespace/name:port` of the Service (or the ref as written when it did not resolve).
    pub name: String,
    /// The backendRef weight (0..=1_000_000). Share = weight / sum of the rule's weights.
    pub weight: u32,
    pub target: BackendTarget,
    /// `backendRefs[].filters`: only RequestHeaderModifier and ResponseHeaderModifier, applied
    /// after the rule's when this backend is picked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
    /// How the proxy speaks to the endpoints: from the Service port's `appProtocol`, and
    /// always HTTP/2 for a GRPCRoute.
    #[serde(skip_serializing_if = "BackendProtocol::is_http1")]
    pub protocol: BackendProtocol,
}

impl PlannedBackend {
    /// `(namespace, name)` of the Service, when the ref resolved to one.
    pub fn service(&self) -> Option<(&str, &str)> {
        if matches!(self.target, BackendTarget::Invalid(_)) {
            return None;
        }
        let (service, _port) = self.name.rsplit_once(':')?;
        service.split_once('/')
    }
}

/// The protocol the proxy speaks to a backend (GEP-1911).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize)]
pub enum BackendProtocol {
    /// HTTP/1.1; WebSocket upgrades (`kubernetes.io/ws`) go over it too.
    #[default]
    Http1,
    /// HTTP/2 over cleartext with prior knowledge (`kubernetes.io/h2c`, GRPCRoute backends).
    H2c,
}

impl BackendProtocol {
    pub fn is_http1(&self) -> bool {
        *self == Self::Http1
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum BackendTarget {
    /// Ready endpoints (address and target port), sorted, never empty. The Service weight is
    /// split evenly across them.
    Endpoints(Vec<SocketAddr>),
    /// The Service exists but has no ready endpoints: its share gets 503.
    NoEndpoints,
    /// The ref did not resolve: its share gets 500.
    Invalid(InvalidReason),
}

/// Why a backendRef is invalid; the names are the route `ResolvedRefs` reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum InvalidReason {
    BackendNotFound,
    InvalidKind,
    RefNotPermitted,
    /// The Service port's `appProtocol` names a protocol the proxy cannot speak to it
    /// (`kubernetes.io/wss`: TLS to backends is not supported).
    UnsupportedProtocol,
}
