//! `build`: index -> [`Plan`]. Pure: the same index (and previous plan) gives the same plan.

use std::collections::{BTreeMap, HashMap};

use super::{
    attach::{Attacher, ResolvedRules},
    backends::Resolver,
    gateways::{self, GatewayListener, ListenerClass},
    l7::PlannedBackend,
    listener::{ListenerKey, ListenerPlan, ListenerSource, Mode, Plan, PlanConfig},
    status::{Condition, Diagnostic, GatewayStatus, ListenerStatus, Severity, reason},
    table,
};
use crate::model::{DATAPLANE_ANNOTATION, Index, Kind};

/// Builds the plan. `previous` is the plan currently applied; it only feeds the disruption
/// figures of the L4 tables.
pub fn build(index: &Index, config: &PlanConfig, previous: Option<&Plan>) -> Plan {
    let mut diagnostics = Vec::new();
    let (ours, gateway_classes) = gateways::class_status(index, config, &mut diagnostics);
    let mut listeners = if ours {
        gateways::gateway_listeners(index, config)
    } else {
        Vec::new()
    };

    let mut routes = Vec::new();
    let mut http_rules: HashMap<(String, String), ResolvedRules> = HashMap::new();
    let mut l4_backends: HashMap<(Kind, String, String), Vec<PlannedBackend>> = HashMap::new();
    {
        let mut attacher = Attacher {
            index,
            config,
            resolver: Resolver::new(index),
            listeners: &mut listeners,
            diagnostics: &mut diagnostics,
        };
        for (key, r) in &index.http_routes {
            let (status, rules) = attacher.http_route(r);
            routes.extend(status);
            http_rules.insert(key.clone(), rules);
        }
        for (kind, map) in [
            (Kind::TcpRoute, &index.tcp_routes),
            (Kind::UdpRoute, &index.udp_routes),
        ] {
            for ((ns, name), r) in map {
                let (status, backends) = attacher.l4_route(kind, r);
                routes.extend(status);
                l4_backends.insert((kind, ns.clone(), name.clone()), backends);
            }
        }
    }

    let mut groups: BTreeMap<ListenerKey, Vec<usize>> = BTreeMap::new();
    for (i, l) in listeners.iter().enumerate() {
        if l.usable() {
            groups.entry(l.key.clone()).or_default().push(i);
        }
    }
    let previous_tables = table::previous_tables(previous);
    let mut dataplane: HashMap<usize, Condition> = HashMap::new();
    let mut plans = Vec::new();
    for (key, members) in groups {
        let Some(class) = listeners[members[0]].class else {
            continue;
        };
        let sources: Vec<ListenerSource> = members
            .iter()
            .map(|&i| {
                let l = &listeners[i];
                ListenerSource {
                    gateway: l.gateway_ref.clone(),
                    listener: l.listener.name.clone(),
                    protocol: l.listener.protocol.clone(),
                    hostname: l.listener.hostname.clone(),
                }
            })
            .collect();
        let annotations: Vec<_> = members
            .iter()
            .map(|&i| {
                (
                    listeners[i].gateway_ref.clone(),
                    listeners[i]
                        .gateway
                        .meta
                        .annotations
                        .get(DATAPLANE_ANNOTATION),
                )
            })
            .collect();
        let (wanted, bad) = table::override_of(&annotations);
        for (gw, message) in bad {
            diagnostics.push(Diagnostic {
                severity: Severity::Error,
                object: gw.to_string(),
                message,
            });
        }
        let generation = listeners[members[0]].gateway.meta.generation;
        let previous = previous_tables.get(&key).copied();
        let (plan, condition) = match class {
            ListenerClass::Http => {
                let mut entries = Vec::new();
                for &i in &members {
                    let l = &listeners[i];
                    for a in &l.http {
                        if let (Some(route), Some(rules)) =
                            (index.http_routes.get(&a.route), http_rules.get(&a.route))
                        {
                            entries.extend(table::entries(
                                route,
                                rules,
                                l.listener.hostname.as_deref(),
                                &a.hostnames,
                            ));
                        }
                    }
                }
                let l7 = table::into_table(entries);
                let need = table::needs_l7(&sources, &l7);
                let (mode, why, condition) = match (wanted, need) {
                    (Some(Mode::L7), _) => (
                        Mode::L7,
                        format!("forced by the Gateway annotation {DATAPLANE_ANNOTATION}: l7"),
                        Condition::new(
                            reason::DATAPLANE,
                            true,
                            reason::L7,
                            "forced by annotation",
                            generation,
                        ),
                    ),
                    (Some(Mode::L4), Some(why)) => {
                        let msg = format!("{DATAPLANE_ANNOTATION}: l4 refused: {why}");
                        (
                            Mode::L7,
                            msg.clone(),
                            Condition::new(
                                reason::DATAPLANE,
                                false,
                                reason::L4_REFUSED,
                                msg,
                                generation,
                            ),
                        )
                    }
                    (_, Some(why)) => (
                        Mode::L7,
                        why.clone(),
                        Condition::new(reason::DATAPLANE, true, reason::L7, why, generation),
                    ),
                    (w, None) => {
                        let asked = if w == Some(Mode::L4) {
                            " (as the annotation asks)"
                        } else {
                            ""
                        };
                        let why = format!(
                            "one rule matches every request with no filters: connections are split in the kernel{asked}; a keep-alive client stays on one backend"
                        );
                        (
                            Mode::L4,
                            why.clone(),
                            Condition::new(reason::DATAPLANE, true, reason::L4, why, generation),
                        )
                    }
                };
                let plan = if mode == Mode::L7 {
                    ListenerPlan {
                        key: key.clone(),
                        sources,
                        mode,
                        reason: why,
                        l7: Some(l7),
                        l4: None,
                    }
                } else {
                    let first = &l7.routes[0];
                    ListenerPlan {
                        key: key.clone(),
                        sources,
                        mode,
                        reason: why,
                        l4: Some(table::l4_plan(
                            Some(first.route.clone()),
                            first.backends.clone(),
                            config.maglev_m,
                            previous,
                        )),
                        l7: None,
                    }
                };
                (plan, condition)
            }
            ListenerClass::Tcp | ListenerClass::Udp => {
                let kind = if class == ListenerClass::Tcp {
                    Kind::TcpRoute
                } else {
                    Kind::UdpRoute
                };
                let attached: Vec<_> = members
                    .iter()
                    .flat_map(|&i| listeners[i].l4.iter().map(|r| (*r, kind)))
                    .collect();
                if wanted == Some(Mode::L7) {
                    diagnostics.push(Diagnostic {
                        severity: Severity::Warning,
                        object: sources[0].gateway.to_string(),
                        message: format!("{DATAPLANE_ANNOTATION}: l7 does not apply to {} listeners, which are always L4", class.route_kind()),
                    });
                }
                let chosen = table::oldest(&attached);
                let l4 = match chosen {
                    Some((r, k)) => {
                        let key3 = (k, r.meta.namespace.clone(), r.meta.name.clone());
                        let backends = l4_backends.get(&key3).cloned().unwrap_or_default();
                        let rref = crate::model::ObjectKey::new(k, &r.meta.namespace, &r.meta.name)
                            .clone();
                        table::l4_plan(Some(rref), backends, config.maglev_m, previous)
                    }
                    None => table::l4_plan(None, Vec::new(), config.maglev_m, previous),
                };
                let why = table::l4_reason(class, attached.len());
                (
                    ListenerPlan {
                        key: key.clone(),
                        sources,
                        mode: Mode::L4,
                        reason: why.clone(),
                        l7: None,
                        l4: Some(l4),
                    },
                    Condition::new(reason::DATAPLANE, true, reason::L4, why, generation),
                )
            }
        };
        for &i in &members {
            dataplane.insert(i, condition.clone());
        }
        plans.push(plan);
    }

    routes.sort_by(|a, b| a.route.cmp(&b.route));
    Plan {
        gateway_classes,
        gateways: gateway_statuses(&listeners, &mut dataplane),
        listeners: plans,
        routes,
        diagnostics,
    }
}

fn gateway_statuses(
    listeners: &[GatewayListener<'_>],
    dataplane: &mut HashMap<usize, Condition>,
) -> Vec<GatewayStatus> {
    let mut out: Vec<GatewayStatus> = Vec::new();
    for (i, l) in listeners.iter().enumerate() {
        let g = l.gateway;
        let generation = g.meta.generation;
        if out.last().is_none_or(|s| s.gateway != l.gateway_ref) {
            out.push(GatewayStatus {
                gateway: l.gateway_ref.clone(),
                addresses: g.addresses.iter().map(ToString::to_string).collect(),
                conditions: Vec::new(),
                listeners: Vec::new(),
            });
        }
        let mut conditions = Vec::new();
        conditions.push(match (&l.class, &l.conflict) {
            (None, _) => Condition::new(
                reason::ACCEPTED,
                false,
                reason::UNSUPPORTED_PROTOCOL,
                format!(
                    "protocol {} is not supported (HTTP, TCP and UDP are)",
                    l.listener.protocol
                ),
                generation,
            ),
            (Some(_), Some((r, msg))) => {
                Condition::new(reason::ACCEPTED, false, r, msg.clone(), generation)
            }
            (Some(_), None) => {
                Condition::new(reason::ACCEPTED, true, reason::ACCEPTED, "", generation)
            }
        });
        conditions.push(if l.invalid_kinds.is_empty() {
            Condition::new(
                reason::RESOLVED_REFS,
                true,
                reason::RESOLVED_REFS,
                "",
                generation,
            )
        } else {
            Condition::new(
                reason::RESOLVED_REFS,
                false,
                reason::INVALID_ROUTE_KINDS,
                format!(
                    "route kinds not supported here: {}",
                    l.invalid_kinds.join(", ")
                ),
                generation,
            )
        });
        conditions.push(match &l.conflict {
            Some((r, msg)) => Condition::new(reason::CONFLICTED, true, r, msg.clone(), generation),
            None => Condition::new(
                reason::CONFLICTED,
                false,
                reason::NO_CONFLICTS,
                "",
                generation,
            ),
        });
        conditions.push(programmed(
            l.usable(),
            "listener is not accepted",
            generation,
        ));
        if let Some(c) = dataplane.remove(&i) {
            conditions.push(c);
        }
        if let Some(status) = out.last_mut() {
            status.listeners.push(ListenerStatus {
                name: l.listener.name.clone(),
                supported_kinds: l.supported_kinds.clone(),
                attached_routes: l.attached_routes,
                conditions,
            });
        }
    }
    for s in &mut out {
        let generation = listeners
            .iter()
            .find(|l| l.gateway_ref == s.gateway)
            .map_or(1, |l| l.gateway.meta.generation);
        let unsupported = listeners
            .iter()
            .find(|l| l.gateway_ref == s.gateway)
            .map(|l| l.gateway.unsupported_addresses.clone())
            .unwrap_or_default();
        let valid = s
            .listeners
            .iter()
            .filter(|l| {
                l.conditions
                    .iter()
                    .any(|c| c.type_ == reason::ACCEPTED && c.is_true())
            })
            .count();
        let accepted = if !unsupported.is_empty() {
            Condition::new(
                reason::ACCEPTED,
                false,
                reason::UNSUPPORTED_ADDRESS,
                format!(
                    "only IPAddress addresses are supported, not {}",
                    unsupported.join(", ")
                ),
                generation,
            )
        } else if valid == s.listeners.len() {
            Condition::new(reason::ACCEPTED, true, reason::ACCEPTED, "", generation)
        } else if valid > 0 {
            Condition::new(
                reason::ACCEPTED,
                true,
                reason::LISTENERS_NOT_VALID,
                format!(
                    "{} of {} listeners are not valid",
                    s.listeners.len() - valid,
                    s.listeners.len()
                ),
                generation,
            )
        } else {
            Condition::new(
                reason::ACCEPTED,
                false,
                reason::LISTENERS_NOT_VALID,
                "no listener is valid",
                generation,
            )
        };
        let programmed = programmed(
            accepted.is_true(),
            "the Gateway is not accepted",
            generation,
        );
        s.conditions = vec![accepted, programmed];
    }
    out
}

/// `Programmed`: true when `ok`, else false (`Invalid`) with `why_not`. Gateways and listeners
/// are programmed exactly when they are accepted: the data plane serves whatever is accepted.
fn programmed(ok: bool, why_not: &str, generation: i64) -> Condition {
    if ok {
        Condition::new(reason::PROGRAMMED, true, reason::PROGRAMMED, "", generation)
    } else {
        Condition::new(
            reason::PROGRAMMED,
            false,
            reason::INVALID,
            why_not,
            generation,
        )
    }
}
