//! The serving form of a [`PassthroughTable`]: each SNI route with its balancer state, which
//! carries over to the next table when the route's backendRefs are unchanged, so a reload for
//! an unrelated change does not restart the weighted sequence.

use std::{net::SocketAddr, sync::Arc};

use super::super::balance::{EndpointCursor, SmoothWrr};
use splitter_plan::plan::{
    l7::{BackendTarget, InvalidReason, PlannedBackend},
    passthrough::{PassthroughTable, SniRoute},
};

/// What a connection gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Pick {
    /// Connect here.
    Endpoint(SocketAddr),
    /// The chosen backendRef's share is refused: the Service has no ready endpoints.
    NoEndpoints,
    /// The chosen backendRef's share is refused: the ref did not resolve.
    Invalid(InvalidReason),
    /// Every weight of the rule is 0.
    NoWeight,
}

/// One route of the table, its balancer state shared with the tables it carries over to.
#[derive(Debug)]
pub struct ServingSniRoute {
    /// As planned (compared at the next install).
    plan: SniRoute,
    /// `namespace/name` of the TLSRoute, for metrics and logs.
    pub label: Arc<str>,
    names: Box<[Arc<str>]>,
    state: Arc<BalancerState>,
}

#[derive(Debug)]
struct BalancerState {
    wrr: SmoothWrr,
    cursors: Box<[EndpointCursor]>,
}

impl BalancerState {
    fn new(backends: &[PlannedBackend]) -> Self {
        let weights: Vec<u32> = backends.iter().map(|b| b.weight).collect();
        Self {
            wrr: SmoothWrr::new(&weights),
            cursors: backends.iter().map(|_| EndpointCursor::default()).collect(),
        }
    }
}

impl ServingSniRoute {
    /// The next connection's backend: a backendRef by smooth weighted round robin (exact
    /// proportions over each cycle of the weights' sum), then an endpoint round robin. Also
    /// returns the backendRef's name.
    pub fn pick(&self) -> (Pick, Option<Arc<str>>) {
        let Some(i) = self.state.wrr.pick() else {
            return (Pick::NoWeight, None);
        };
        let b = &self.plan.backends[i];
        let name = Some(self.names[i].clone());
        let pick = match &b.target {
            BackendTarget::Endpoints(eps) => {
                Pick::Endpoint(eps[self.state.cursors[i].next(eps.len())])
            }
            BackendTarget::NoEndpoints => Pick::NoEndpoints,
            BackendTarget::Invalid(r) => Pick::Invalid(*r),
        };
        (pick, name)
    }
}

/// A listener's SNI routes, as served, most specific name first.
#[derive(Debug, Default)]
pub struct ServingSniTable {
    routes: Vec<Arc<ServingSniRoute>>,
}

impl ServingSniTable {
    /// Compiles `plan`, keeping the balancer state of routes whose backendRefs `previous`
    /// already served unchanged. The entries of one TLSRoute (one per name) share one state:
    /// weights are the rule's, whatever name a connection asked for.
    pub fn compile(plan: &PassthroughTable, previous: &ServingSniTable) -> Self {
        let mut states: Vec<(&SniRoute, Arc<BalancerState>)> = Vec::new();
        let routes = plan
            .routes
            .iter()
            .map(|r| {
                let shared = states
                    .iter()
                    .find(|(p, _)| p.route == r.route && same_backends(p, r))
                    .map(|(_, s)| s.clone());
                let state = shared.unwrap_or_else(|| {
                    previous
                        .routes
                        .iter()
                        .find(|p| p.plan.route == r.route && same_backends(&p.plan, r))
                        .map_or_else(
                            || Arc::new(BalancerState::new(&r.backends)),
                            |p| p.state.clone(),
                        )
                });
                states.push((r, state.clone()));
                Arc::new(ServingSniRoute {
                    label: Arc::from(format!("{}/{}", r.route.namespace, r.route.name)),
                    names: r
                        .backends
                        .iter()
                        .map(|b| Arc::from(b.name.as_str()))
                        .collect(),
                    plan: r.clone(),
                    state,
                })
            })
            .collect();
        Self { routes }
    }

    /// The route for a ClientHello's server name: the first (most specific) match; a
    /// ClientHello without a name only matches a route that takes any name.
    pub fn route_for(&self, server_name: Option<&str>) -> Option<&Arc<ServingSniRoute>> {
        self.routes.iter().find(|r| r.plan.takes(server_name))
    }
}

/// Same backendRefs, names and weights in order (endpoints may change without restarting the
/// weighted sequence).
fn same_backends(a: &SniRoute, b: &SniRoute) -> bool {
    a.backends.len() == b.backends.len()
        && a.backends
            .iter()
            .zip(&b.backends)
            .all(|(x, y)| x.name == y.name && x.weight == y.weight)
}
