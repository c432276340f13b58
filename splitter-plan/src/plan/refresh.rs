//! `refresh_endpoints`: the last plan with the backends of some Services re-read, for a change
//! confined to their EndpointSlices (most of a cluster's changes: pods come and go, routes
//! rarely change). It touches only the routes and L4 tables that name those Services; every
//! other route keeps its `Arc`, so the proxy recompiles only what changed.
//!
//! `build` stays the reference: a refresh must give what a build from the same index and
//! previous plan gives (but for the disruption figures of the tables it did not touch), which
//! the property test in `tests/pure/refresh.rs` checks over random changes. Where a slice
//! change can change more than endpoint lists (a Service going from no ready endpoint to some,
//! or back, changes whether the kernel can serve its listener and what its conditions say)
//! the refresh declines and the caller builds.

use std::{
    collections::{BTreeSet, HashSet},
    sync::Arc,
};

use super::{
    backends::Resolver,
    l7::{BackendTarget, L7Route, L7RouteTable, PlannedBackend},
    listener::{L4Plan, ListenerPlan, Plan, PlanConfig},
    passthrough::PassthroughTable,
    table,
};
use crate::model::{Index, index::NsName};

/// The refresh needs a full build instead.
struct Declined;

/// `previous` with the backends of `services` re-read from `index`; `None` when the change
/// needs a full build (see the module). The second value says whether anything changed.
pub fn refresh_endpoints(
    previous: &Plan,
    index: &Index,
    config: &PlanConfig,
    services: &BTreeSet<NsName>,
) -> Option<(Plan, bool)> {
    let refresher = Refresher {
        index,
        services: services
            .iter()
            .map(|(ns, name)| format!("{ns}/{name}"))
            .collect(),
    };
    let mut changed = false;
    let mut listeners = Vec::with_capacity(previous.listeners.len());
    for l in &previous.listeners {
        let next = match l {
            ListenerPlan::L7 { listener, l7 } => {
                refresher.l7_table(l7).ok()?.map(|t| ListenerPlan::L7 {
                    listener: listener.clone(),
                    l7: Arc::new(t),
                })
            }
            ListenerPlan::L4 { listener, l4 } => {
                refresher.l4(l4, config).ok()?.map(|l4| ListenerPlan::L4 {
                    listener: listener.clone(),
                    l4,
                })
            }
        };
        changed |= next.is_some();
        listeners.push(next.unwrap_or_else(|| l.clone()));
    }
    if !changed {
        return Some((previous.clone(), false));
    }
    Some((
        Plan {
            listeners,
            gateway_classes: previous.gateway_classes.clone(),
            gateways: previous.gateways.clone(),
            routes: previous.routes.clone(),
            diagnostics: previous.diagnostics.clone(),
        },
        true,
    ))
}

struct Refresher<'a> {
    index: &'a Index,
    /// `namespace/name` of each refreshed Service: every backend of every route is checked
    /// against it, by one hash of the Service part of its name.
    services: HashSet<String>,
}

impl Refresher<'_> {
    /// The table with its changed routes replaced; `None` when no route changed.
    fn l7_table(&self, t: &L7RouteTable) -> Result<Option<L7RouteTable>, Declined> {
        let mut routes: Option<Vec<Arc<L7Route>>> = None;
        for (i, r) in t.routes.iter().enumerate() {
            if let Some(fresh) = self.route(r)? {
                routes.get_or_insert_with(|| t.routes.clone())[i] = Arc::new(fresh);
            }
        }
        let passthrough = match &t.passthrough {
            Some(p) => self.passthrough(p)?,
            None => None,
        };
        if routes.is_none() && passthrough.is_none() {
            return Ok(None);
        }
        Ok(Some(L7RouteTable {
            routes: routes.unwrap_or_else(|| t.routes.clone()),
            tls: t.tls.clone(),
            passthrough: passthrough.or_else(|| t.passthrough.clone()),
        }))
    }

    fn route(&self, r: &L7Route) -> Result<Option<L7Route>, Declined> {
        let backends = self.backends(&r.backends)?;
        let mut mirrors = None;
        for (i, m) in r.mirrors.iter().enumerate() {
            if let Some(eps) = self.endpoints(&m.name)
                && eps != m.endpoints
            {
                mirrors.get_or_insert_with(|| r.mirrors.clone())[i].endpoints = eps;
            }
        }
        if backends.is_none() && mirrors.is_none() {
            return Ok(None);
        }
        Ok(Some(L7Route {
            backends: backends.unwrap_or_else(|| r.backends.clone()),
            mirrors: mirrors.unwrap_or_else(|| r.mirrors.clone()),
            ..r.clone()
        }))
    }

    fn passthrough(&self, p: &PassthroughTable) -> Result<Option<PassthroughTable>, Declined> {
        let mut routes = None;
        for (i, r) in p.routes.iter().enumerate() {
            if let Some(backends) = self.backends(&r.backends)? {
                routes.get_or_insert_with(|| p.routes.clone())[i].backends = backends;
            }
        }
        Ok(routes.map(|routes| PassthroughTable { routes }))
    }

    /// The L4 plan with its backends re-read, its table made again when they changed and its
    /// endpoints placed again when it names a refreshed Service (a slice can move an endpoint
    /// to another node without changing it); `None` when nothing changed.
    fn l4(&self, l4: &L4Plan, config: &PlanConfig) -> Result<Option<L4Plan>, Declined> {
        let mut next = match self.backends(&l4.backends)? {
            Some(backends) => {
                table::l4_plan(l4.route.clone(), backends, config.maglev_m, Some(&l4.table))
            }
            None if l4.backends.iter().any(|b| self.refreshed(b)) => l4.clone(),
            None => return Ok(None),
        };
        table::place(self.index, &mut next);
        Ok((next != *l4).then_some(next))
    }

    fn refreshed(&self, b: &PlannedBackend) -> bool {
        b.service().is_some()
            && b.name
                .rsplit_once(':')
                .is_some_and(|(service, _)| self.services.contains(service))
    }

    /// The backends with their endpoints re-read; `None` when none changed.
    fn backends(
        &self,
        backends: &[PlannedBackend],
    ) -> Result<Option<Vec<PlannedBackend>>, Declined> {
        let mut out: Option<Vec<PlannedBackend>> = None;
        for (i, b) in backends.iter().enumerate() {
            if matches!(b.target, BackendTarget::Invalid(_)) {
                continue;
            };
            let Some(eps) = self.endpoints(&b.name) else {
                continue;
            };
            let target = if eps.is_empty() {
                BackendTarget::NoEndpoints
            } else {
                BackendTarget::Endpoints(eps)
            };
            if target == b.target {
                continue;
            }
            if std::mem::discriminant(&target) != std::mem::discriminant(&b.target) {
                return Err(Declined);
            }
            out.get_or_insert_with(|| backends.to_vec())[i].target = target;
        }
        Ok(out)
    }

    /// The ready endpoints of the resolved backend `name` (`namespace/name:port`) when its
    /// Service is one of those refreshed.
    fn endpoints(&self, name: &str) -> Option<Vec<std::net::SocketAddr>> {
        let (service, port) = name.rsplit_once(':')?;
        if !self.services.contains(service) {
            return None;
        }
        let (ns, svc) = service.split_once('/')?;
        let port: u16 = port.parse().ok()?;
        let s = self
            .index
            .services
            .get(&(ns.to_string(), svc.to_string()))?;
        let sp = s.ports.iter().find(|p| p.port == port)?;
        Some(Resolver::new(self.index).ready_endpoints(s, sp))
    }
}
