//! What each data plane listener serves: the L7 route table in precedence order, or the L4
//! weighted table, and the L4/L7 decision with its reason (DESIGN section 4).

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use super::{
    attach::ResolvedRules,
    gateways::{ListenerClass, age_key},
    hostname,
    l7::{
        BackendProtocol, BackendTarget, Filter, L7Route, L7RouteTable, PathMatch, PathModifier,
        PlannedBackend, RouteMatch, UrlRewrite,
    },
    listener::{L4Plan, ListenerPlan, ListenerSource, Mode},
    maglev::{self, TableShare, TableTarget, WeightedTable},
};
use crate::model::{DATAPLANE_ANNOTATION, HttpRoute, Index, Kind, ObjectKey};

/// One L7 route with everything its precedence depends on.
pub(crate) struct Entry<'a> {
    key: SortKey<'a>,
    pub route: Arc<L7Route>,
}

type SortKey<'a> = (
    (u8, Reverse<usize>),
    (u8, Reverse<usize>),
    MatchRank,
    (i64, &'a str, &'a str),
    usize,
    usize,
);

/// The live plan's L7 routes of one listener, by route and rule. A build takes each route it
/// makes from here when that route did not change, as soon as it is made, instead of holding a
/// fresh copy of every route until the finished table could be compared with the live one: the
/// table then shares what the proxy already compiled (it reuses its work for the same `Arc`),
/// and a build at 10k routes no longer frees ten thousand copies among the blocks of the plan
/// it keeps (the allocator's pages stayed pinned by those blocks; README, "bench scale").
pub(crate) struct LiveRoutes<'a>(HashMap<(&'a ObjectKey, usize), Vec<&'a Arc<L7Route>>>);

impl<'a> LiveRoutes<'a> {
    pub(crate) fn of(table: Option<&'a L7RouteTable>) -> Self {
        let mut live: HashMap<_, Vec<_>> = HashMap::new();
        for r in table.into_iter().flat_map(|t| &t.routes) {
            live.entry((&r.route, r.rule_index)).or_default().push(r);
        }
        Self(live)
    }

    /// The live route equal to `fresh`, or `fresh`.
    fn share(&self, fresh: L7Route) -> Arc<L7Route> {
        match self
            .0
            .get(&(&fresh.route, fresh.rule_index))
            .and_then(|live| live.iter().find(|r| ****r == fresh))
        {
            Some(live) => Arc::clone(live),
            None => Arc::new(fresh),
        }
    }
}

/// What orders two matches on the same hostnames: for an HTTPRoute the path (kind, length),
/// the method, then the numbers of header and query matches; for a GRPCRoute the characters
/// of the service, then of the method, then the number of header matches (GRPCRoute spec).
type MatchRank = (
    u8,
    Reverse<usize>,
    Reverse<usize>,
    bool,
    Reverse<usize>,
    Reverse<usize>,
);

fn match_rank(m: &RouteMatch) -> MatchRank {
    match &m.grpc {
        None => {
            let (kind, len) = path_rank(&m.path);
            (
                kind,
                len,
                Reverse(0),
                m.method.is_none(),
                Reverse(m.headers.len()),
                Reverse(m.query.len()),
            )
        }
        Some(g) => (
            0,
            Reverse(g.service.as_ref().map_or(0, String::len)),
            Reverse(g.method.as_ref().map_or(0, String::len)),
            false,
            Reverse(m.headers.len()),
            Reverse(0),
        ),
    }
}

/// The L7 routes one attachment (route on listener with `listener_hostname`) contributes: one
/// per rule, match and effective hostname, so each is ordered on its own. `shadowed_by`: the
/// hostnames of the more specific listeners on the port (listener isolation).
pub(crate) fn entries<'a>(
    route: &'a HttpRoute,
    rules: &ResolvedRules,
    listener_hostname: Option<&str>,
    hostnames: &[String],
    shadowed_by: &[String],
    live: &LiveRoutes<'_>,
) -> Vec<Entry<'a>> {
    let meta = &route.meta;
    let route_ref = route.key();
    let hosts: Vec<Option<&String>> = if hostnames.is_empty() {
        vec![None]
    } else {
        hostnames.iter().map(Some).collect()
    };
    let mut out = Vec::new();
    for (ri, (rule, backends)) in route.rules.iter().zip(rules).enumerate() {
        let Some((backends, mirrors)) = backends else {
            continue;
        };
        for (mi, m) in rule.matches.iter().enumerate() {
            let filters = with_strip_path(route.strip_path, m, &rule.filters);
            for h in &hosts {
                let key = (
                    hostname::specificity(listener_hostname),
                    hostname::specificity(h.map(String::as_str)),
                    match_rank(m),
                    age_key(meta.created, &meta.namespace, &meta.name),
                    ri,
                    mi,
                );
                out.push(Entry {
                    key,
                    route: live.share(L7Route {
                        route: route_ref.clone(),
                        rule_index: ri,
                        hostnames: h.map(|h| vec![h.clone()]).unwrap_or_default(),
                        shadowed_by: shadowed_by.to_vec(),
                        matched: m.clone(),
                        filters: filters.clone(),
                        backends: backends.clone(),
                        timeouts: rule.timeouts,
                        mirrors: mirrors.clone(),
                    }),
                });
            }
        }
    }
    out
}

/// Exact paths first, then regular expressions (as Envoy Gateway orders them), then prefixes;
/// longer first within each.
fn path_rank(p: &PathMatch) -> (u8, Reverse<usize>) {
    match p {
        PathMatch::Exact(s) => (0, Reverse(s.len())),
        PathMatch::Regex(s) => (1, Reverse(s.as_str().len())),
        PathMatch::Prefix(s) => (2, Reverse(if s == "/" { 0 } else { s.len() })),
    }
}

/// `konghq.com/strip-path: "true"`: a PathPrefix match strips its prefix, i.e. a URLRewrite
/// ReplacePrefixMatch "/", unless the rule already rewrites or redirects the path.
fn with_strip_path(strip: bool, m: &RouteMatch, filters: &[Filter]) -> Vec<Filter> {
    let mut out = filters.to_vec();
    if !strip || !matches!(m.path, PathMatch::Prefix(_)) {
        return out;
    }
    let has_path = out.iter().any(|f| match f {
        Filter::UrlRewrite(r) => r.path.is_some(),
        Filter::RequestRedirect(_) => true,
        _ => false,
    });
    if has_path {
        return out;
    }
    let strip = PathModifier::ReplacePrefixMatch("/".to_string());
    if let Some(Filter::UrlRewrite(r)) = out.iter_mut().find(|f| matches!(f, Filter::UrlRewrite(_)))
    {
        r.path = Some(strip);
    } else {
        out.push(Filter::UrlRewrite(UrlRewrite {
            hostname: None,
            path: Some(strip),
        }));
    }
    out
}

pub(crate) fn into_table(mut entries: Vec<Entry<'_>>) -> L7RouteTable {
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    L7RouteTable {
        tls: None,
        passthrough: None,
        routes: entries.into_iter().map(|e| e.route).collect(),
    }
}

/// Why an HTTP listener needs the proxy; `None` when one weighted set serves every request.
pub(crate) fn needs_l7(sources: &[ListenerSource], table: &L7RouteTable) -> Option<String> {
    if let Some(s) = sources.iter().find(|s| s.hostname.is_some()) {
        return Some(format!(
            "listener {} accepts only host {}: the Host header is checked per request",
            s.listener,
            s.hostname.as_deref().unwrap_or_default()
        ));
    }
    let routes = &table.routes;
    match routes.len() {
        0 => return Some("no HTTPRoute attached: the proxy answers 404".to_string()),
        1 => {}
        n => {
            let first: Vec<String> = routes.iter().take(3).map(|r| describe(r)).collect();
            let more = if n > 3 { ", ..." } else { "" };
            return Some(format!(
                "{n} route matches ({}{more}): requests are matched one by one",
                first.join("; ")
            ));
        }
    }
    let r = &routes[0];
    if r.route.kind == Kind::GrpcRoute {
        return Some(
            "a GRPCRoute is attached: gRPC calls are routed one by one over HTTP/2".to_string(),
        );
    }
    if let Some(b) = r
        .backends
        .iter()
        .find(|b| b.protocol == BackendProtocol::H2c)
    {
        return Some(format!(
            "backend {} speaks HTTP/2 (appProtocol kubernetes.io/h2c): the proxy talks h2c to it",
            b.name
        ));
    }
    if !r.hostnames.is_empty() {
        return Some(format!(
            "route hostnames {:?} are checked per request",
            r.hostnames
        ));
    }
    let m = &r.matched;
    if m.path != PathMatch::Prefix("/".into())
        || !m.headers.is_empty()
        || !m.query.is_empty()
        || m.method.is_some()
    {
        return Some(format!(
            "the rule matches {}: requests are matched one by one",
            describe(r)
        ));
    }
    let real_filters: Vec<&str> = r
        .filters
        .iter()
        .filter(|f| !is_noop(f))
        .map(|f| match f {
            Filter::RequestHeaderModifier(_) => "RequestHeaderModifier",
            Filter::ResponseHeaderModifier(_) => "ResponseHeaderModifier",
            Filter::RequestRedirect(_) => "RequestRedirect",
            Filter::UrlRewrite(_) => "URLRewrite",
            Filter::RequestMirror(_) => "RequestMirror",
            Filter::Cors(_) => "CORS",
        })
        .collect();
    if !real_filters.is_empty() {
        return Some(format!(
            "filters {} change requests",
            real_filters.join(", ")
        ));
    }
    if r.timeouts.request.is_some() || r.timeouts.backend_request.is_some() {
        return Some("request timeouts are enforced per request".to_string());
    }
    if let Some(b) = r.backends.iter().find(|b| !b.filters.is_empty()) {
        return Some(format!(
            "backendRef {} has filters, applied per request",
            b.name
        ));
    }
    unanswerable_share(&r.backends)
}

/// The share of a rule that the kernel could only reset, which HTTP must answer instead: an
/// invalid backendRef gets 500 and a Service without ready endpoints 503 (the spec, and the
/// upstream conformance tests, check the status code), and a rule whose weights are all 0 or
/// that has no backendRefs answers 500.
fn unanswerable_share(backends: &[PlannedBackend]) -> Option<String> {
    if backends.iter().all(|b| b.weight == 0) {
        return Some(if backends.is_empty() {
            "the rule has no backendRefs: the proxy answers 500".to_string()
        } else {
            "every backendRef has weight 0: the proxy answers 500".to_string()
        });
    }
    let answered: Vec<String> = backends
        .iter()
        .filter(|b| b.weight > 0)
        .filter_map(|b| match &b.target {
            BackendTarget::Endpoints(_) => None,
            BackendTarget::NoEndpoints => Some(format!("{} has no ready endpoints (503)", b.name)),
            BackendTarget::Invalid(reason) => {
                Some(format!("{} is invalid, {reason:?} (500)", b.name))
            }
        })
        .collect();
    (!answered.is_empty()).then(|| {
        format!(
            "the proxy answers the share the kernel would reset: {}",
            answered.join("; ")
        )
    })
}

/// Stripping the prefix `/` and putting `/` back changes nothing.
fn is_noop(f: &Filter) -> bool {
    matches!(f, Filter::UrlRewrite(UrlRewrite { hostname: None, path: Some(PathModifier::ReplacePrefixMatch(p)) }) if p == "/")
}

fn describe(r: &L7Route) -> String {
    let m = &r.matched;
    let mut parts = vec![match &m.path {
        PathMatch::Exact(p) => format!("path = {p}"),
        PathMatch::Prefix(p) => format!("path prefix {p}"),
        PathMatch::Regex(p) => format!("path ~ {p}"),
    }];
    if let Some(method) = &m.method {
        parts.push(format!("method {method}"));
    }
    for h in &m.headers {
        parts.push(format!("header {}", h.name));
    }
    for q in &m.query {
        parts.push(format!("query {}", q.name));
    }
    if !r.hostnames.is_empty() {
        parts.push(format!("host {}", r.hostnames.join(",")));
    }
    parts.join(" ")
}

/// The Gateway annotation's request, if any source Gateway sets it (`l7` wins over `l4`).
pub(crate) fn override_of(
    annotations: &[(ObjectKey, Option<&String>)],
) -> (Option<Mode>, Vec<(ObjectKey, String)>) {
    let mut wanted = None;
    let mut bad = Vec::new();
    for (gw, v) in annotations {
        match v.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
            None => {}
            Some("l7") => wanted = Some(Mode::L7),
            Some("l4") if wanted.is_none() => wanted = Some(Mode::L4),
            Some("l4") => {}
            Some(other) => bad.push((
                gw.clone(),
                format!("{DATAPLANE_ANNOTATION}: {other:?} is neither l4 nor l7; ignored"),
            )),
        }
    }
    (wanted, bad)
}

/// The weighted table for `backends`: endpoints share their Service's weight evenly; the
/// invalid and no-endpoint shares (and everything when all weights are 0) go to REJECT.
///
/// Dual-stack endpoints get one table per address family (the kernel does no NAT46/64): each
/// Service's share is split over its endpoints of that family, and a Service with none of that
/// family holds its share as REJECT in that family's table.
pub(crate) fn l4_plan(
    route: Option<ObjectKey>,
    backends: Vec<PlannedBackend>,
    default_m: u32,
    previous: Option<&WeightedTable>,
) -> L4Plan {
    let endpoints = || {
        backends.iter().flat_map(|b| match &b.target {
            BackendTarget::Endpoints(eps) => eps.as_slice(),
            _ => &[],
        })
    };
    let dual_stack = endpoints().any(SocketAddr::is_ipv4) && endpoints().any(SocketAddr::is_ipv6);
    let (table, table_v6) = if dual_stack {
        (
            family_table(&backends, default_m, previous, |a| a.is_ipv4()),
            Some(Box::new(family_table(&backends, default_m, None, |a| {
                a.is_ipv6()
            }))),
        )
    } else {
        (family_table(&backends, default_m, previous, |_| true), None)
    };
    L4Plan {
        route,
        table,
        table_v6,
        backends,
        endpoint_nodes: BTreeMap::new(),
    }
}

/// The table over the endpoints `keep` selects.
fn family_table(
    backends: &[PlannedBackend],
    default_m: u32,
    previous: Option<&WeightedTable>,
    keep: impl Fn(&SocketAddr) -> bool,
) -> WeightedTable {
    let sum: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    let mut shares = Vec::new();
    if sum == 0 {
        shares.push(TableShare {
            target: TableTarget::Reject,
            num: 1,
            den: 1,
        });
    }
    let reject = |weight: u32| TableShare {
        target: TableTarget::Reject,
        num: u64::from(weight),
        den: sum,
    };
    let mut endpoints = 0usize;
    for b in backends.iter().filter(|b| b.weight > 0 && sum > 0) {
        match &b.target {
            BackendTarget::Endpoints(eps) => {
                let eps: Vec<&SocketAddr> = eps.iter().filter(|a| keep(a)).collect();
                if eps.is_empty() {
                    shares.push(reject(b.weight));
                }
                endpoints += eps.len();
                for ep in &eps {
                    shares.push(TableShare {
                        target: TableTarget::Endpoint(**ep),
                        num: u64::from(b.weight),
                        den: sum * eps.len() as u64,
                    });
                }
            }
            BackendTarget::NoEndpoints | BackendTarget::Invalid(_) => shares.push(reject(b.weight)),
        }
    }
    let m = if endpoints > maglev::LARGE_SET {
        maglev::LARGE_M
    } else {
        default_m
    };
    maglev::build(m, &shares, previous)
}

/// The addresses of the endpoints `l4`'s tables name.
fn table_ips(l4: &L4Plan) -> impl Iterator<Item = IpAddr> + '_ {
    l4.table
        .backends
        .iter()
        .chain(l4.table_v6.iter().flat_map(|t| &t.backends))
        .filter_map(|b| match b.target {
            TableTarget::Endpoint(a) => Some(a.ip()),
            TableTarget::Reject => None,
        })
}

/// Records in `l4` the node of each endpoint its tables name, from the EndpointSlices of its
/// backends' Services (an endpoint's first address: the only one a table can hold). A pod
/// address is on one node; should two slices disagree (a pod moving while slices are
/// rebalanced), the first backend's Service, then its first slice by name, wins, the same on
/// every node. Only the listener's own Services are read, as kube-proxy reads a Service's own
/// slices: the node of its endpoints changes only with their slices, so an endpoint refresh
/// places only the listeners of the Services it re-read.
pub(crate) fn place(index: &Index, l4: &mut L4Plan) {
    let wanted: BTreeSet<IpAddr> = table_ips(l4).collect();
    let mut nodes = BTreeMap::new();
    if !wanted.is_empty() {
        for (ns, svc) in l4.backends.iter().filter_map(PlannedBackend::service) {
            for e in index.slices_of(ns, svc).flat_map(|s| &s.endpoints) {
                if let (Some(ip), Some(node)) = (e.address, &e.node_name)
                    && wanted.contains(&ip)
                {
                    nodes.entry(ip).or_insert_with(|| node.clone());
                }
            }
        }
    }
    l4.endpoint_nodes = nodes;
}

/// [`place`] for every L4 listener of `listeners`.
pub(crate) fn place_endpoints(index: &Index, listeners: &mut [ListenerPlan]) {
    for l in listeners {
        if let ListenerPlan::L4 { l4, .. } = l {
            place(index, l4);
        }
    }
}

/// The route that gets an L4 listener's traffic: the oldest, then by `namespace/name`.
pub(crate) fn oldest<'a>(
    routes: &[(&'a crate::model::L4Route, Kind)],
) -> Option<(&'a crate::model::L4Route, Kind)> {
    routes
        .iter()
        .min_by(|(a, _), (b, _)| {
            age_key(a.meta.created, &a.meta.namespace, &a.meta.name).cmp(&age_key(
                b.meta.created,
                &b.meta.namespace,
                &b.meta.name,
            ))
        })
        .copied()
}

/// The reason line of an L4 listener for TCPRoute/UDPRoute.
pub(crate) fn l4_reason(class: ListenerClass, attached: usize) -> String {
    let kind = class.route_kind();
    match attached {
        0 => format!("{kind} listener with no route attached: every new flow is rejected"),
        1 => format!("{kind}s are always split per connection in the kernel"),
        n => format!(
            "{kind}s are always split per connection in the kernel; {n} routes attached, the oldest gets the traffic"
        ),
    }
}

/// Looks up the previous L4 table of a listener for the disruption figure.
pub(crate) fn previous_tables(
    previous: Option<&super::Plan>,
) -> HashMap<super::listener::ListenerKey, &WeightedTable> {
    previous
        .map(|p| {
            p.listeners
                .iter()
                .filter_map(|l| l.l4().map(|t| (l.key().clone(), &t.table)))
                .collect()
        })
        .unwrap_or_default()
}
