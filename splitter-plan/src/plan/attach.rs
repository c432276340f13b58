//! Route attachment: each parentRef of each route against our Gateways' listeners, giving the
//! route's `status.parents` and the listeners' attached routes.

use std::collections::BTreeSet;

use super::{
    backends::{Resolver, Unresolved},
    gateways::{GatewayListener, HttpAttachment, TlsAttachment},
    hostname,
    l7::{BackendProtocol, BackendTarget, Filter, InvalidReason, PlannedBackend, PlannedMirror},
    listener::PlanConfig,
    status::{
        Condition, Diagnostic, RouteParentStatus, RouteStatus, Severity, StatusParentRef, reason,
    },
};
use crate::model::{
    GATEWAY_GROUP, HttpRoute, Index, Kind, L4Route, Meta, ObjectKey, ParentRef, RouteKind, TlsRoute,
};

/// An HTTPRoute's rules with their backendRefs and mirrors resolved; `None` for a dropped rule.
pub(crate) type ResolvedRules = Vec<Option<(Vec<PlannedBackend>, Vec<PlannedMirror>)>>;

pub(crate) struct Attacher<'i, 'l> {
    pub index: &'i Index,
    pub config: &'i PlanConfig,
    pub resolver: Resolver<'i>,
    pub listeners: &'l mut [GatewayListener<'i>],
    pub diagnostics: &'l mut Vec<Diagnostic>,
}

/// The outcome of one parentRef before conditions are written.
enum Attach {
    Accepted(Vec<(usize, Vec<String>)>),
    Refused(&'static str, String),
}

impl<'i> Attacher<'i, '_> {
    /// Attaches an HTTPRoute or GRPCRoute; returns its status and its resolved rules.
    pub fn http_route(&mut self, route: &'i HttpRoute) -> (Option<RouteStatus>, ResolvedRules) {
        let meta = &route.meta;
        let kind = route.kind.kind();
        let grpc = route.kind == RouteKind::Grpc;
        let mut unresolved = Vec::new();
        let rules: ResolvedRules = route
            .rules
            .iter()
            .map(|r| {
                r.unsupported.is_none().then(|| {
                    let backends = r
                        .backends
                        .iter()
                        .map(|b| {
                            let (mut pb, u) =
                                self.resolver.resolve(kind.as_str(), &meta.namespace, b);
                            unresolved.extend(u);
                            // gRPC is HTTP/2, whatever the Service port says.
                            if grpc {
                                pb.protocol = BackendProtocol::H2c;
                            }
                            pb
                        })
                        .collect();
                    // A mirror's ref resolves like a backendRef; one that does not is dropped
                    // (the spec: ResolvedRefs False, not configured), the rule still serves.
                    let mirrors = r
                        .filters
                        .iter()
                        .filter_map(|f| match f {
                            Filter::RequestMirror(m) => Some(m),
                            _ => None,
                        })
                        .filter_map(|m| {
                            let (pb, u) =
                                self.resolver
                                    .resolve("HTTPRoute", &meta.namespace, &m.backend);
                            if let Some(u) = u {
                                unresolved.push(Unresolved {
                                    message: format!("RequestMirror {}", u.message),
                                    ..u
                                });
                                return None;
                            }
                            Some(PlannedMirror {
                                name: pb.name,
                                endpoints: match pb.target {
                                    BackendTarget::Endpoints(eps) => eps,
                                    _ => Vec::new(),
                                },
                                fraction: m.fraction,
                            })
                        })
                        .collect();
                    (backends, mirrors)
                })
            })
            .collect();
        let dropped: Vec<String> = route
            .rules
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                r.unsupported
                    .as_ref()
                    .map(|u| format!("Dropped Rule {i}: {u}"))
            })
            .collect();
        let all_dropped = !route.rules.is_empty() && dropped.len() == route.rules.len();
        let mut parents = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, p) in route.parent_refs.iter().enumerate() {
            let Some(candidates) = self.candidates(kind, meta, i, p) else {
                continue;
            };
            let outcome = match self.allowed(candidates, kind.as_str(), &meta.namespace, p) {
                Err(refused) => refused,
                Ok(allowed) => {
                    let matched: Vec<(usize, Vec<String>)> = allowed
                        .into_iter()
                        .filter_map(|li| {
                            hostname::intersect(
                                self.listeners[li].listener.hostname.as_deref(),
                                &route.hostnames,
                            )
                            .map(|h| (li, h))
                        })
                        .collect();
                    // An HTTPRoute and a GRPCRoute may not share a hostname on a listener:
                    // routes attach oldest first, so the one already there wins (spec).
                    let (free, conflicts): (Vec<_>, Vec<_>) =
                        matched.into_iter().partition(|(li, hosts)| {
                            self.other_kind_on(*li, route.kind, hosts).is_none()
                        });
                    let conflict = conflicts.first().and_then(|(li, hosts)| {
                        self.other_kind_on(*li, route.kind, hosts).map(|other| {
                            format!(
                                "listener {:?} already serves these hostnames to the older {other}; \
                                 an HTTPRoute and a GRPCRoute may not share a hostname on a listener",
                                self.listeners[*li].listener.name
                            )
                        })
                    });
                    let matched = free;
                    if let (true, Some(why)) = (matched.is_empty(), conflict) {
                        Attach::Refused(reason::NOT_ALLOWED_BY_LISTENERS, why)
                    } else if matched.is_empty() {
                        Attach::Refused(
                            reason::NO_MATCHING_LISTENER_HOSTNAME,
                            format!("no listener hostname intersects {:?}", route.hostnames),
                        )
                    } else if all_dropped {
                        Attach::Refused(reason::UNSUPPORTED_VALUE, dropped.join("; "))
                    } else {
                        Attach::Accepted(matched)
                    }
                }
            };
            if let Attach::Accepted(matched) = &outcome {
                for (li, hosts) in matched {
                    // Two parentRefs reaching one listener attach the route once.
                    if seen.insert(*li) {
                        let l = &mut self.listeners[*li];
                        l.attached_routes += 1;
                        l.http.push(HttpAttachment {
                            kind: route.kind,
                            route: (meta.namespace.clone(), meta.name.clone()),
                            hostnames: hosts.clone(),
                        });
                    }
                }
            }
            let mut conditions = self.conditions(meta, outcome, &unresolved);
            if !dropped.is_empty() && !all_dropped {
                conditions.push(Condition::new(
                    reason::PARTIALLY_INVALID,
                    true,
                    reason::UNSUPPORTED_VALUE,
                    dropped.join("; "),
                    meta.generation,
                ));
            }
            parents.push(self.parent_status(p, conditions));
        }
        let status = (!parents.is_empty()).then(|| RouteStatus {
            route: ObjectKey::new(kind, &meta.namespace, &meta.name).clone(),
            parents,
        });
        (status, rules)
    }

    /// The route of the other kind (HTTPRoute against GRPCRoute) already attached to listener
    /// `li` whose hostnames overlap `hosts`.
    fn other_kind_on(&self, li: usize, kind: RouteKind, hosts: &[String]) -> Option<ObjectKey> {
        self.listeners[li]
            .http
            .iter()
            .find(|a| a.kind != kind && hostname::lists_overlap(&a.hostnames, hosts))
            .map(|a| ObjectKey::new(a.kind.kind(), &a.route.0, &a.route.1))
    }

    /// Attaches a TCPRoute or UDPRoute; returns its status and its resolved backends.
    pub fn l4_route(
        &mut self,
        kind: Kind,
        route: &'i L4Route,
    ) -> (Option<RouteStatus>, Vec<PlannedBackend>) {
        self.whole_route(
            kind,
            &route.meta,
            &route.parent_refs,
            &route.backends,
            |_, allowed| Attach::Accepted(allowed.into_iter().map(|li| (li, Vec::new())).collect()),
            |l, _| l.l4.push(route),
        )
    }

    /// Attaches a TLSRoute to the TLS listeners whose hostname intersects its hostnames;
    /// returns its status and its resolved backends.
    pub fn tls_route(&mut self, route: &'i TlsRoute) -> (Option<RouteStatus>, Vec<PlannedBackend>) {
        let meta = &route.meta;
        self.whole_route(
            Kind::TlsRoute,
            meta,
            &route.parent_refs,
            &route.backends,
            |this, allowed| {
                let matched: Vec<(usize, Vec<String>)> = allowed
                    .into_iter()
                    .filter_map(|li| {
                        hostname::intersect(
                            this.listeners[li].listener.hostname.as_deref(),
                            &route.hostnames,
                        )
                        .map(|h| (li, h))
                    })
                    .collect();
                if matched.is_empty() {
                    Attach::Refused(
                        reason::NO_MATCHING_LISTENER_HOSTNAME,
                        format!("no listener hostname intersects {:?}", route.hostnames),
                    )
                } else {
                    Attach::Accepted(matched)
                }
            },
            |l, hosts| {
                l.tls.push(TlsAttachment {
                    route: (meta.namespace.clone(), meta.name.clone()),
                    hostnames: hosts.to_vec(),
                })
            },
        )
    }

    /// Attaches a route whose backends belong to the whole route (one rule, no matches):
    /// resolves them, then for each parentRef the listeners it selects and `matched` keeps
    /// (with the hostnames each serves it under) take it through `attach`, once per listener.
    fn whole_route(
        &mut self,
        kind: Kind,
        meta: &Meta,
        parent_refs: &[ParentRef],
        backends: &[crate::model::BackendRef],
        matched: impl Fn(&Self, Vec<usize>) -> Attach,
        mut attach: impl FnMut(&mut GatewayListener<'i>, &[String]),
    ) -> (Option<RouteStatus>, Vec<PlannedBackend>) {
        let mut unresolved = Vec::new();
        let backends: Vec<PlannedBackend> = backends
            .iter()
            .map(|b| {
                let (pb, u) = self.resolver.resolve(kind.as_str(), &meta.namespace, b);
                unresolved.extend(u);
                pb
            })
            .collect();
        let mut parents = Vec::new();
        let mut seen = BTreeSet::new();
        for (i, p) in parent_refs.iter().enumerate() {
            let Some(candidates) = self.candidates(kind, meta, i, p) else {
                continue;
            };
            let outcome = match self.allowed(candidates, kind.as_str(), &meta.namespace, p) {
                Err(refused) => refused,
                Ok(allowed) => matched(self, allowed),
            };
            if let Attach::Accepted(matched) = &outcome {
                for (li, hosts) in matched {
                    if seen.insert(*li) {
                        let l = &mut self.listeners[*li];
                        l.attached_routes += 1;
                        attach(l, hosts);
                    }
                }
            }
            let conditions = self.conditions(meta, outcome, &unresolved);
            parents.push(self.parent_status(p, conditions));
        }
        let status = (!parents.is_empty()).then(|| RouteStatus {
            route: ObjectKey::new(kind, &meta.namespace, &meta.name),
            parents,
        });
        (status, backends)
    }

    /// Listeners of the referenced Gateway that the parentRef's sectionName and port select.
    /// `None` when the parentRef is not for us (another kind, another class, no such Gateway).
    fn candidates(
        &mut self,
        kind: Kind,
        meta: &Meta,
        i: usize,
        p: &ParentRef,
    ) -> Option<Result<Vec<usize>, Attach>> {
        if p.group != GATEWAY_GROUP || p.kind != "Gateway" {
            return None;
        }
        let key = (p.namespace.clone(), p.name.clone());
        let Some(gw) = self.index.gateways.get(&key) else {
            self.diagnostics.push(Diagnostic {
                severity: Severity::Error,
                object: ObjectKey::new(kind, &meta.namespace, &meta.name).to_string(),
                message: format!(
                    "spec.parentRefs[{i}]: Gateway {}/{} not found",
                    p.namespace, p.name
                ),
            });
            return None;
        };
        if gw.class_name != self.config.gateway_class {
            return None;
        }
        let all: Vec<usize> = self
            .listeners
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                l.gateway.meta.namespace == p.namespace && l.gateway.meta.name == p.name
            })
            .map(|(i, _)| i)
            .collect();
        if all.is_empty() {
            // The Gateway is of our class but the GatewayClass is someone else's.
            return None;
        }
        let selected: Vec<usize> = all
            .into_iter()
            .filter(|&li| {
                let l = self.listeners[li].listener;
                p.section_name.as_ref().is_none_or(|s| *s == l.name)
                    && p.port.is_none_or(|port| port == l.port)
            })
            .collect();
        if selected.is_empty() {
            let what = match (&p.section_name, p.port) {
                (Some(s), Some(port)) => format!("no listener named {s:?} on port {port}"),
                (Some(s), None) => format!("no listener named {s:?}"),
                (None, Some(port)) => format!("no listener on port {port}"),
                (None, None) => "no listeners".to_string(),
            };
            return Some(Err(Attach::Refused(reason::NO_MATCHING_PARENT, what)));
        }
        Some(Ok(selected))
    }

    /// Narrows candidates to listeners that take this route kind from this namespace.
    fn allowed(
        &self,
        candidates: Result<Vec<usize>, Attach>,
        route_kind: &str,
        route_ns: &str,
        p: &ParentRef,
    ) -> Result<Vec<usize>, Attach> {
        let candidates = candidates?;
        let allowed: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&li| {
                let l = &self.listeners[li];
                l.allows_kind(route_kind) && l.allows_namespace(self.index, route_ns)
            })
            .collect();
        if allowed.is_empty() {
            return Err(Attach::Refused(
                reason::NOT_ALLOWED_BY_LISTENERS,
                format!(
                    "no listener of Gateway {}/{} allows {route_kind}s from namespace {route_ns}",
                    p.namespace, p.name
                ),
            ));
        }
        Ok(allowed)
    }

    fn conditions(
        &self,
        meta: &Meta,
        outcome: Attach,
        unresolved: &[Unresolved],
    ) -> Vec<Condition> {
        let g = meta.generation;
        let accepted = match outcome {
            Attach::Accepted(_) => Condition::new(reason::ACCEPTED, true, reason::ACCEPTED, "", g),
            Attach::Refused(r, msg) => Condition::new(reason::ACCEPTED, false, r, msg, g),
        };
        let resolved = match unresolved.first() {
            None => Condition::new(reason::RESOLVED_REFS, true, reason::RESOLVED_REFS, "", g),
            Some(first) => Condition::new(
                reason::RESOLVED_REFS,
                false,
                match first.reason {
                    InvalidReason::BackendNotFound => reason::BACKEND_NOT_FOUND,
                    InvalidReason::InvalidKind => reason::INVALID_KIND,
                    InvalidReason::RefNotPermitted => reason::REF_NOT_PERMITTED,
                    InvalidReason::UnsupportedProtocol => reason::UNSUPPORTED_PROTOCOL,
                },
                unresolved
                    .iter()
                    .map(|u| u.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
                g,
            ),
        };
        vec![accepted, resolved]
    }

    fn parent_status(&self, p: &ParentRef, conditions: Vec<Condition>) -> RouteParentStatus {
        RouteParentStatus {
            parent_ref: StatusParentRef {
                group: p.group.clone(),
                kind: p.kind.clone(),
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                section_name: p.section_name.clone(),
                port: p.port,
            },
            controller_name: self.config.controller_name.clone(),
            conditions,
        }
    }
}
