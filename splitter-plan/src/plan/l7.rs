//! The L7 part of a listener's plan: what the hyper proxy serves.
//!
//! These types are the contract between `plan` (which builds them from the index, pure) and
//! `dataplane::proxy` (which serves them). They hold resolved, validated values only (the
//! matches and filters are the model's typed values): an invalid field never reaches here, it
//! becomes a status condition or a `BackendTarget::Invalid` share.

use std::net::SocketAddr;

use serde::Serialize;

use super::ObjectKey;
pub use crate::model::http::{
    Filter, HeaderMatch, HeaderModifier, PathMatch, PathModifier, Pattern, QueryMatch, Redirect,
    RouteMatch, Timeouts, UrlRewrite, ValueMatch,
};

/// Routes of one L7 listener, in Gateway API precedence order: the proxy serves a request with
/// the first route whose hostnames and match accept it, and answers 404 when none does.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct L7RouteTable {
    pub routes: Vec<L7Route>,
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
}

/// One backendRef of a rule after resolution.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlannedBackend {
    /// `namespace/name:port` of the Service (or the ref as written when it did not resolve).
    pub name: String,
    /// The backendRef weight (0..=1_000_000). Share = weight / sum of the rule's weights.
    pub weight: u32,
    pub target: BackendTarget,
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
}
