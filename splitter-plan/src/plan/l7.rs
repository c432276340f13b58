//! The L7 part of a listener's plan: what the hyper proxy serves.
//!
//! These types are the contract between `plan` (which builds them from the index, pure) and
//! `dataplane::proxy` (which serves them). They hold resolved, validated values only: an invalid
//! field never reaches here, it becomes a status condition or an `BackendTarget::Invalid` share.

use std::{net::SocketAddr, time::Duration};

use serde::Serialize;

use super::ObjectKey;

/// Routes of one L7 listener, in Gateway API precedence order: the proxy serves a request with
/// the first route whose hostnames and match accept it, and answers 404 when none does.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct L7RouteTable {
    pub routes: Vec<L7Route>,
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
    pub matched: RouteMatch,
    /// Rule filters, in spec order (the strip-path annotation appears here as a URLRewrite).
    pub filters: Vec<Filter>,
    /// The weighted backendRefs of the rule, in spec order (order matters for the smooth WRR
    /// sequence being deterministic).
    pub backends: Vec<PlannedBackend>,
    pub timeouts: Timeouts,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteMatch {
    pub path: PathMatch,
    /// All must match. Names lower-case.
    pub headers: Vec<HeaderMatch>,
    /// All must match. Names are case-sensitive.
    pub query: Vec<QueryMatch>,
    /// Upper-case method name, e.g. "GET".
    pub method: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum PathMatch {
    /// Whole path, case-sensitive.
    Exact(String),
    /// Element-wise prefix; stored without a trailing `/` except for the root prefix `/`.
    Prefix(String),
    /// RE2-style regular expression (implementation-specific support), anchored to the whole path.
    Regex(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeaderMatch {
    pub name: String,
    pub value: ValueMatch,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QueryMatch {
    pub name: String,
    pub value: ValueMatch,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum ValueMatch {
    Exact(String),
    Regex(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Filter {
    RequestHeaderModifier(HeaderModifier),
    ResponseHeaderModifier(HeaderModifier),
    RequestRedirect(Redirect),
    UrlRewrite(UrlRewrite),
}

/// `set` replaces, `add` appends, `remove` deletes; names lower-case.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct HeaderModifier {
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
    pub port: Option<u16>,
    /// 301 or 302 (the CRD default is 302).
    pub status_code: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UrlRewrite {
    pub hostname: Option<String>,
    pub path: Option<PathModifier>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum PathModifier {
    ReplaceFullPath(String),
    /// Replaces the part of the path matched by the route's `PathMatch::Prefix`.
    ReplacePrefixMatch(String),
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    /// Whole request, client to gateway and back (`timeouts.request`).
    pub request: Option<Duration>,
    /// One try to the backend (`timeouts.backendRequest`).
    pub backend_request: Option<Duration>,
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
