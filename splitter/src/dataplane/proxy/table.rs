//! The serving form of an [`L7RouteTable`]: filters grouped, endpoint authorities formatted and
//! balancer state attached, all once per install. Matches and filters are the plan's values,
//! which the model already compiled and parsed.

use std::{collections::HashMap, fmt, net::SocketAddr, sync::Arc};

use http::uri::Authority;

use super::{
    balance::{EndpointCursor, SmoothWrr},
    error::RouteError,
    host_index::HostIndex,
    mirror::ServingMirror,
};
use splitter_plan::{
    model::Kind,
    plan::{
        ObjectKey,
        l7::{
            BackendProtocol, BackendTarget, Filter, HeaderModifier, InvalidReason, L7Route,
            L7RouteTable, PathMatch, Timeouts,
        },
        l7_filters::RuleFilters,
        l7_match::{RequestView, hostname_matches},
    },
};

/// Identity of an HTTPRoute rule across table installs.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RuleKey {
    route: ObjectKey,
    rule_index: usize,
}

/// Balancer state of one rule. It is shared by every match of the rule and carried into the
/// next table when the rule's backendRefs (names and weights) are unchanged, so a reload for an
/// unrelated change neither restarts the weighted sequence nor resets endpoint round robin.
#[derive(Debug)]
pub struct RuleState {
    signature: Vec<(String, u32)>,
    wrr: SmoothWrr,
    cursors: Box<[EndpointCursor]>,
}

impl RuleState {
    fn new(signature: Vec<(String, u32)>) -> Self {
        let weights: Vec<u32> = signature.iter().map(|(_, w)| *w).collect();
        Self {
            wrr: SmoothWrr::new(&weights),
            cursors: signature
                .iter()
                .map(|_| EndpointCursor::default())
                .collect(),
            signature,
        }
    }
}

#[derive(Debug)]
pub enum ServingTarget {
    /// Ready endpoints, never empty.
    Endpoints(Box<[ServingEndpoint]>),
    NoEndpoints,
    Invalid(InvalidReason),
}

#[derive(Debug)]
pub struct ServingBackend {
    /// `namespace/name:port`, also the metrics label.
    pub name: Arc<str>,
    pub target: ServingTarget,
    /// HTTP/1.1 (`direct`) or HTTP/2 with prior knowledge (`h2c`).
    pub protocol: BackendProtocol,
    /// `backendRefs[].filters`; `None` for the usual backendRef without any.
    pub filters: Option<Box<BackendFilters>>,
}

/// A backendRef's own header modifiers: the request's run after the rule's, the response's
/// before the rule's (the backendRef is the inner, more specific scope).
#[derive(Debug, Default)]
pub struct BackendFilters {
    pub request_headers: Vec<HeaderModifier>,
    pub response_headers: Vec<HeaderModifier>,
}

impl BackendFilters {
    /// The model admits only the two header modifiers here.
    fn of(filters: &[Filter]) -> Option<Box<Self>> {
        if filters.is_empty() {
            return None;
        }
        let mut out = Self::default();
        for f in filters {
            match f {
                Filter::RequestHeaderModifier(m) => out.request_headers.push(m.clone()),
                Filter::ResponseHeaderModifier(m) => out.response_headers.push(m.clone()),
                _ => {}
            }
        }
        Some(Box::new(out))
    }
}

/// An endpoint as the pool keys it (the address) and as messages name it (the authority,
/// written once at compile time rather than per request).
#[derive(Debug)]
pub struct ServingEndpoint {
    pub addr: SocketAddr,
    pub authority: Authority,
}

/// What the balancer chose for one request.
pub enum Pick<'a> {
    Endpoint {
        backend: &'a ServingBackend,
        endpoint: &'a ServingEndpoint,
    },
    NoEndpoints(&'a ServingBackend),
    Invalid(&'a ServingBackend, InvalidReason),
    /// No backendRefs, or all weights 0.
    NoBackends,
}

/// One (rule, match) of the table, ready to serve.
#[derive(Debug)]
pub struct ServingRoute {
    /// `namespace/name/rule-index`, the metrics label.
    pub label: Arc<str>,
    /// The plan's route: its hostnames, the hosts of more specific listeners on the port
    /// (listener isolation) and its match, read in place rather than copied.
    plan: Arc<L7Route>,
    /// The matched path prefix without a trailing `/` (empty for `/`), for ReplacePrefixMatch.
    pub prefix: Option<String>,
    pub filters: RuleFilters,
    pub timeouts: Timeouts,
    /// A GRPCRoute's: the proxy's own answers are gRPC statuses (`grpc`).
    pub grpc: bool,
    backends: Box<[ServingBackend]>,
    /// The rule's RequestMirror filters; empty for almost every route.
    pub mirrors: Box<[ServingMirror]>,
    state: Arc<RuleState>,
}

impl ServingRoute {
    pub fn accepts(&self, host: Option<&str>, req: &RequestView<'_>) -> bool {
        let r = &*self.plan;
        hostname_matches(&r.hostnames, host)
            && (r.shadowed_by.is_empty() || !hostname_matches(&r.shadowed_by, host))
            && r.matched.matches(req)
    }

    pub fn pick(&self) -> Pick<'_> {
        let Some(i) = self.state.wrr.pick() else {
            return Pick::NoBackends;
        };
        let backend = &self.backends[i];
        match &backend.target {
            ServingTarget::Endpoints(eps) => Pick::Endpoint {
                backend,
                endpoint: &eps[self.state.cursors[i].next(eps.len())],
            },
            ServingTarget::NoEndpoints => Pick::NoEndpoints(backend),
            ServingTarget::Invalid(reason) => Pick::Invalid(backend, *reason),
        }
    }
}

/// A route the table left out, and why.
#[derive(Debug)]
pub struct TableIssue {
    pub route: ObjectKey,
    pub rule_index: usize,
    pub error: RouteError,
}

impl fmt::Display for TableIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} rule {}: {}", self.route, self.rule_index, self.error)
    }
}

/// A plan route and the serving route compiled from it (`None`: it could not be).
type CompiledFrom<'a> = (&'a Arc<L7Route>, Option<&'a Arc<ServingRoute>>);

/// The installed, immutable table of one listener.
#[derive(Debug, Default)]
pub struct ServingTable {
    /// The plan's routes this was compiled from, and what each became, in the plan's order:
    /// the next install reuses the compiled route of a plan route it holds again at the same
    /// place (the same `Arc`, as an endpoint refresh leaves every route it does not touch, or
    /// an equal one, as a full build makes it) without hashing or comparing anything.
    sources: Vec<Arc<L7Route>>,
    served: Vec<Option<Arc<ServingRoute>>>,
    /// The candidates for a request's host, by position in `sources`; kept from the previous
    /// table when no route's hostnames moved or changed (an endpoint refresh).
    hosts: Arc<HostIndex>,
}

/// The routes of a previous table by rule, built only when a route is not found in its place
/// (routes added or removed before it): an equal one is reused, and a changed one takes over
/// its rule's balancer state.
type ByRule<'a> = HashMap<(&'a ObjectKey, usize), Vec<CompiledFrom<'a>>>;

/// Balancer state of the rules compiled in this install, for their other matches.
type FreshRules = HashMap<RuleKey, Arc<RuleState>>;

impl ServingTable {
    /// Compiles `table`, reusing from `previous` the routes that did not change and the
    /// balancer state of rules whose backendRefs did not change.
    pub fn compile(table: &L7RouteTable, previous: &ServingTable) -> (Self, Vec<TableIssue>) {
        let mut out = Self {
            sources: Vec::with_capacity(table.routes.len()),
            served: Vec::with_capacity(table.routes.len()),
            hosts: Arc::default(),
        };
        let mut same_hosts = table.routes.len() == previous.sources.len();
        let mut issues = Vec::new();
        // Most endpoints appear in several routes: each authority is written once.
        let mut authorities = HashMap::new();
        let mut by_rule: Option<ByRule<'_>> = None;
        let mut fresh = FreshRules::new();
        for (i, route) in table.routes.iter().enumerate() {
            let in_place: Option<CompiledFrom<'_>> = previous
                .sources
                .get(i)
                .map(|from| (from, previous.served[i].as_ref()));
            let served = match in_place {
                Some((from, Some(served))) if Arc::ptr_eq(from, route) => Some(served.clone()),
                _ => {
                    let same_rule = previous.predecessors(route, in_place, &mut by_rule);
                    match same_rule
                        .iter()
                        .find(|(from, _)| Arc::ptr_eq(from, route) || ***from == **route)
                    {
                        Some((_, served)) => served.cloned(),
                        None => compile_route(route, &same_rule, &mut fresh, &mut authorities)
                            .map(Arc::new)
                            .map_err(|error| {
                                issues.push(TableIssue {
                                    route: route.route.clone(),
                                    rule_index: route.rule_index,
                                    error,
                                })
                            })
                            .ok(),
                    }
                }
            };
            same_hosts = same_hosts
                && in_place.is_some_and(|(from, _)| {
                    Arc::ptr_eq(from, route) || from.hostnames == route.hostnames
                });
            out.sources.push(route.clone());
            out.served.push(served);
        }
        out.hosts = if same_hosts {
            previous.hosts.clone()
        } else {
            Arc::new(HostIndex::new(table.routes.iter().map(|r| &**r)))
        };
        (out, issues)
    }

    /// The previous routes `route` may continue (reuse if equal, or take the balancer state
    /// of): the one in its place if it is the same match of the same rule (changed, say, by an
    /// endpoint refresh), else the previous routes of its rule wherever they were (`by_rule`,
    /// built on first need).
    fn predecessors<'p>(
        &'p self,
        route: &L7Route,
        in_place: Option<CompiledFrom<'p>>,
        by_rule: &mut Option<ByRule<'p>>,
    ) -> Vec<CompiledFrom<'p>> {
        match in_place {
            Some((from, s))
                if from.route == route.route
                    && from.rule_index == route.rule_index
                    && from.matched == route.matched
                    && from.hostnames == route.hostnames =>
            {
                vec![(from, s)]
            }
            _ => by_rule
                .get_or_insert_with(|| self.by_rule())
                .get(&(&route.route, route.rule_index))
                .cloned()
                .unwrap_or_default(),
        }
    }

    fn by_rule(&self) -> ByRule<'_> {
        let mut out: ByRule<'_> = HashMap::new();
        for (from, served) in self.sources.iter().zip(&self.served) {
            out.entry((&from.route, from.rule_index))
                .or_default()
                .push((from, served.as_ref()));
        }
        out
    }
}

/// Compiles one route; its rule's balancer state comes from a match of the rule compiled in
/// this install (`fresh`) or from the previous table's routes of the rule (`same_rule`) when
/// the backendRefs are the same.
fn compile_route(
    r: &Arc<L7Route>,
    same_rule: &[CompiledFrom<'_>],
    fresh: &mut FreshRules,
    authorities: &mut HashMap<SocketAddr, Authority>,
) -> Result<ServingRoute, RouteError> {
    let filters = RuleFilters::of(&r.filters);
    let prefix = match &r.matched.path {
        PathMatch::Prefix(p) => Some(p.trim_end_matches('/').to_owned()),
        PathMatch::Exact(p) => Some(p.clone()),
        PathMatch::Regex(_) => None,
    };
    let backends = r
        .backends
        .iter()
        .map(|b| {
            Ok(ServingBackend {
                name: Arc::from(b.name.as_str()),
                target: match &b.target {
                    BackendTarget::Endpoints(eps) if !eps.is_empty() => ServingTarget::Endpoints(
                        eps.iter()
                            .map(|a| {
                                Ok(ServingEndpoint {
                                    addr: *a,
                                    authority: authority(authorities, *a)?,
                                })
                            })
                            .collect::<Result<_, RouteError>>()?,
                    ),
                    BackendTarget::Endpoints(_) | BackendTarget::NoEndpoints => {
                        ServingTarget::NoEndpoints
                    }
                    BackendTarget::Invalid(reason) => ServingTarget::Invalid(*reason),
                },
                filters: BackendFilters::of(&b.filters),
                protocol: b.protocol,
            })
        })
        .collect::<Result<_, RouteError>>()?;
    // Only a route that will be served claims or creates balancer state.
    let signature: Vec<(String, u32)> = r
        .backends
        .iter()
        .map(|b| (b.name.clone(), b.weight))
        .collect();
    let key = RuleKey {
        route: r.route.clone(),
        rule_index: r.rule_index,
    };
    let state = fresh
        .get(&key)
        .into_iter()
        .chain(
            same_rule
                .iter()
                .filter_map(|(_, served)| served.map(|s| &s.state)),
        )
        .find(|s| s.signature == signature)
        .cloned()
        .unwrap_or_else(|| Arc::new(RuleState::new(signature)));
    fresh.entry(key).or_insert_with(|| state.clone());
    Ok(ServingRoute {
        label: Arc::from(format!(
            "{}/{}/{}",
            r.route.namespace, r.route.name, r.rule_index
        )),
        plan: r.clone(),
        prefix,
        filters,
        timeouts: r.timeouts,
        grpc: r.route.kind == Kind::GrpcRoute,
        backends,
        mirrors: r.mirrors.iter().filter_map(ServingMirror::new).collect(),
        state,
    })
}

impl ServingTable {
    /// How many of this table's routes are the very ones of `other` (reused, not compiled).
    #[cfg(test)]
    fn shared_routes(&self, other: &ServingTable) -> usize {
        self.routes()
            .iter()
            .filter(|r| other.routes().iter().any(|o| Arc::ptr_eq(r, o)))
            .count()
    }

    /// The routes served, in precedence order.
    #[cfg(test)]
    fn routes(&self) -> Vec<Arc<ServingRoute>> {
        self.served.iter().flatten().cloned().collect()
    }

    /// The first route, in precedence order, that accepts the request.
    pub fn find(&self, host: Option<&str>, req: &RequestView<'_>) -> Option<&Arc<ServingRoute>> {
        self.hosts
            .candidates(host)
            .filter_map(|i| self.served.get(i as usize)?.as_ref())
            .find(|r| r.accepts(host, req))
    }
}

/// The authority of `addr`, written once per compile.
fn authority(
    cache: &mut HashMap<SocketAddr, Authority>,
    addr: SocketAddr,
) -> Result<Authority, RouteError> {
    if let Some(a) = cache.get(&addr) {
        return Ok(a.clone());
    }
    let a = Authority::try_from(addr.to_string()).map_err(|_| RouteError::Endpoint(addr))?;
    cache.insert(addr, a.clone());
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;
    use splitter_plan::plan::l7::{PlannedBackend, RouteMatch};

    fn rule(path: &str, weights: &[u32]) -> L7Route {
        L7Route {
            route: ObjectKey {
                kind: Kind::HttpRoute,
                namespace: "ns".into(),
                name: "r".into(),
            },
            rule_index: 0,
            hostnames: vec![],
            shadowed_by: vec![],
            matched: RouteMatch {
                path: PathMatch::Prefix(path.into()),
                headers: vec![],
                query: vec![],
                method: None,
                grpc: None,
            },
            filters: vec![],
            backends: weights
                .iter()
                .enumerate()
                .map(|(i, &weight)| PlannedBackend {
                    name: format!("ns/svc{i}:80"),
                    weight,
                    target: BackendTarget::Endpoints(vec![SocketAddr::from((
                        [127, 0, 0, 1],
                        8000 + i as u16,
                    ))]),
                    filters: vec![],
                    protocol: Default::default(),
                })
                .collect(),
            timeouts: Timeouts::default(),
            mirrors: vec![],
        }
    }

    fn picks(route: &ServingRoute, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| match route.pick() {
                Pick::Endpoint { backend, .. } => backend.name.to_string(),
                _ => "none".into(),
            })
            .collect()
    }

    #[test]
    fn matches_of_one_rule_share_one_sequence() {
        let t = L7RouteTable {
            routes: vec![Arc::new(rule("/a", &[2, 1])), Arc::new(rule("/b", &[2, 1]))],
            tls: None,
            passthrough: None,
        };
        let (s, issues) = ServingTable::compile(&t, &ServingTable::default());
        assert!(issues.is_empty());
        let (a, b) = (&s.routes()[0], &s.routes()[1]);
        let seq = [picks(a, 1), picks(b, 1), picks(a, 1)].concat();
        assert_eq!(seq, vec!["ns/svc0:80", "ns/svc1:80", "ns/svc0:80"]);
    }

    #[test]
    fn state_carries_over_only_when_backends_are_unchanged() {
        let t = L7RouteTable {
            routes: vec![Arc::new(rule("/", &[2, 1]))],
            tls: None,
            passthrough: None,
        };
        let (first, _) = ServingTable::compile(&t, &ServingTable::default());
        assert_eq!(picks(&first.routes()[0], 1), vec!["ns/svc0:80"]);
        // Same rule, same backendRefs: the sequence goes on where it was.
        let (second, _) = ServingTable::compile(&t, &first);
        assert_eq!(
            picks(&second.routes()[0], 2),
            vec!["ns/svc1:80", "ns/svc0:80"]
        );
        // New weights: a fresh sequence.
        let changed = L7RouteTable {
            routes: vec![Arc::new(rule("/", &[1, 2]))],
            tls: None,
            passthrough: None,
        };
        let (third, _) = ServingTable::compile(&changed, &second);
        assert_eq!(
            picks(&third.routes()[0], 3),
            vec!["ns/svc1:80", "ns/svc0:80", "ns/svc1:80"]
        );
    }

    #[test]
    fn unchanged_routes_are_reused_not_compiled() {
        let t = L7RouteTable {
            routes: vec![
                Arc::new(rule("/a", &[2, 1])),
                Arc::new(rule("/b", &[1])),
                Arc::new(rule("/c", &[1, 1])),
            ],
            tls: None,
            passthrough: None,
        };
        let (first, _) = ServingTable::compile(&t, &ServingTable::default());
        assert_eq!(picks(&first.routes()[0], 1), vec!["ns/svc0:80"]);
        // An endpoint refresh: /b has a new endpoint (a new Arc), /a is the same Arc, and /c an
        // equal route in a new Arc (as a full build makes it).
        let mut b = rule("/b", &[1]);
        b.backends[0].target =
            BackendTarget::Endpoints(vec![SocketAddr::from(([127, 0, 0, 2], 9))]);
        let refreshed = L7RouteTable {
            routes: vec![
                t.routes[0].clone(),
                Arc::new(b),
                Arc::new(rule("/c", &[1, 1])),
            ],
            tls: None,
            passthrough: None,
        };
        let (second, issues) = ServingTable::compile(&refreshed, &first);
        assert!(issues.is_empty());
        assert_eq!(second.shared_routes(&first), 2, "/a and /c reused");
        assert!(
            !Arc::ptr_eq(&second.routes()[1], &first.routes()[1]),
            "/b compiled"
        );
        match second.routes()[1].pick() {
            Pick::Endpoint { endpoint, .. } => {
                assert_eq!(endpoint.addr, SocketAddr::from(([127, 0, 0, 2], 9)));
                assert_eq!(endpoint.authority.as_str(), "127.0.0.2:9");
            }
            _ => panic!("an endpoint"),
        }
        // The reused route's sequence goes on where it was.
        assert_eq!(
            picks(&second.routes()[0], 2),
            vec!["ns/svc1:80", "ns/svc0:80"]
        );

        // A route added before the others moves them all: found by rule, still reused, and
        // the sequence still goes on (a, b, a, a, then b; a restart would give a).
        assert_eq!(picks(&second.routes()[0], 1), vec!["ns/svc0:80"]);
        let mut first_route = rule("/0", &[1]);
        first_route.route.name = "first".into();
        let shifted = L7RouteTable {
            routes: [vec![Arc::new(first_route)], refreshed.routes.clone()].concat(),
            tls: None,
            passthrough: None,
        };
        let (third, issues) = ServingTable::compile(&shifted, &second);
        assert!(issues.is_empty());
        assert_eq!(third.shared_routes(&second), 3);
        assert_eq!(picks(&third.routes()[1], 1), vec!["ns/svc1:80"]);
    }
}
