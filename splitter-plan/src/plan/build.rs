//! `build`: index -> [`Plan`]. Pure: the same index (and previous plan) gives the same plan.
//!
//! The steps, each a function below: our GatewayClass and Gateway listeners; routes attached to
//! them; listeners grouped by address, port and transport; for each group the mode decision and
//! the HTTP or L4 listener plan; then the Gateway and listener statuses
//! ([`super::gateway_status`]).

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use super::{
    attach::{Attacher, ResolvedRules},
    backends::Resolver,
    gateway_status,
    gateways::{self, GatewayListener, ListenerClass},
    hostname,
    l7::{L7RouteTable, PlannedBackend},
    listener::{
        DataplaneListener, ListenerKey, ListenerPlan, ListenerSource, Mode, Plan, PlanConfig,
    },
    maglev::WeightedTable,
    passthrough::{self, SniAttachment},
    status::{Condition, Diagnostic, RouteStatus, Severity, reason},
    table,
    tls::{ListenerCertificate, TlsPlan},
};
use crate::model::{DATAPLANE_ANNOTATION, Index, Kind, ObjectKey, RouteKind};

/// Builds the plan. `previous` is the plan currently applied: it feeds the disruption figures
/// of the L4 tables, and the new plan takes from it each L7 route and route status that did not
/// change (the same `Arc`s), so that what did not change is held once and compiled once.
pub fn build(index: &Index, config: &PlanConfig, previous: Option<&Plan>) -> Plan {
    let mut diagnostics = Vec::new();
    let (ours, gateway_classes) = gateways::class_status(index, config, &mut diagnostics);
    let mut listeners = if ours {
        gateways::gateway_listeners(index, config)
    } else {
        Vec::new()
    };
    let attached = attach_routes(index, config, &mut listeners, &mut diagnostics, previous);

    let previous_tables = table::previous_tables(previous);
    let mut dataplane: HashMap<usize, Condition> = HashMap::new();
    let mut plans = Vec::new();
    for (key, members) in group_listeners(&listeners) {
        let Some(class) = listeners[members[0]].class else {
            continue;
        };
        let group = ListenerGroup {
            listener: DataplaneListener {
                key: key.clone(),
                sources: sources(&listeners, &members),
                reason: String::new(),
            },
            members: &members,
            wanted: annotation_override(&listeners, &members, &mut diagnostics),
            generation: listeners[members[0]].gateway.meta.generation,
            previous: previous_tables.get(&key).copied(),
            previous_l7: previous.and_then(|p| p.listener(&key)).and_then(|l| l.l7()),
        };
        let (plan, condition) = match class {
            ListenerClass::Http | ListenerClass::Https => {
                http_listener_plan(index, config, &listeners, &attached, group)
            }
            ListenerClass::Tls => tls_listener_plan(index, config, &listeners, &attached, group),
            ListenerClass::Tcp | ListenerClass::Udp => l4_listener_plan(
                config,
                &listeners,
                &attached,
                class,
                group,
                &mut diagnostics,
            ),
        };
        for &i in &members {
            dataplane.insert(i, condition.clone());
        }
        plans.push(plan);
    }

    table::place_endpoints(index, &mut plans);

    let mut routes = attached.statuses;
    routes.sort_by(|a, b| a.route.cmp(&b.route));
    // An unchanged status is the live one's `Arc` (`share_status`): no need to compare contents.
    let routes = match previous {
        Some(p)
            if p.routes.len() == routes.len()
                && p.routes.iter().zip(&routes).all(|(a, b)| Arc::ptr_eq(a, b)) =>
        {
            p.routes.clone()
        }
        _ => Arc::new(routes),
    };
    Plan {
        gateway_classes,
        gateways: gateway_status::gateways(&listeners, &mut dataplane),
        listeners: plans,
        routes,
        diagnostics,
    }
}

/// `fresh`, or the live plan's status of that route when it is the same. A build after a
/// change to a few routes then holds one copy of the others' statuses, shared with the live
/// plan, and makes none that outlives it: each fresh copy is dropped as soon as it is compared,
/// rather than a plan's worth of them replacing the live ones among the blocks the build keeps
/// (at 10k routes, ten thousand statuses of a dozen small blocks each). When every status is
/// the same, so is the list, which tells the status writer that no route needs a patch.
fn share_status(live: Option<&Plan>, fresh: RouteStatus) -> Arc<RouteStatus> {
    if let Some(live) = live
        && let Ok(i) = live.routes.binary_search_by(|s| s.route.cmp(&fresh.route))
        && *live.routes[i] == fresh
    {
        return live.routes[i].clone();
    }
    Arc::new(fresh)
}

/// Every route attached to the listeners, resolved.
struct AttachedRoutes {
    statuses: Vec<Arc<RouteStatus>>,
    /// HTTPRoute and GRPCRoute rules with resolved backends, by (kind, namespace, name).
    http_rules: HashMap<(RouteKind, String, String), ResolvedRules>,
    /// TCPRoute/UDPRoute backends, by (kind, namespace, name).
    l4_backends: HashMap<(Kind, String, String), Vec<PlannedBackend>>,
    /// TLSRoute backends, by (namespace, name).
    tls_backends: HashMap<(String, String), Vec<PlannedBackend>>,
}

fn attach_routes<'i>(
    index: &'i Index,
    config: &'i PlanConfig,
    listeners: &mut [GatewayListener<'i>],
    diagnostics: &mut Vec<Diagnostic>,
    live: Option<&Plan>,
) -> AttachedRoutes {
    let mut out = AttachedRoutes {
        statuses: Vec::new(),
        http_rules: HashMap::new(),
        l4_backends: HashMap::new(),
        tls_backends: HashMap::new(),
    };
    let mut attacher = Attacher {
        index,
        config,
        resolver: Resolver::new(index),
        listeners,
        diagnostics,
    };
    // Oldest first: an HTTPRoute and a GRPCRoute sharing a hostname on a listener leave it to
    // the older one.
    let mut routes: Vec<_> = index
        .http_routes
        .values()
        .chain(index.grpc_routes.values())
        .collect();
    routes.sort_by(|a, b| {
        gateways::age_key(a.meta.created, &a.meta.namespace, &a.meta.name)
            .cmp(&gateways::age_key(
                b.meta.created,
                &b.meta.namespace,
                &b.meta.name,
            ))
            .then(a.kind.cmp(&b.kind))
    });
    for r in routes {
        let (status, rules) = attacher.http_route(r);
        out.statuses.extend(status.map(|s| share_status(live, s)));
        out.http_rules.insert(
            (r.kind, r.meta.namespace.clone(), r.meta.name.clone()),
            rules,
        );
    }
    for (kind, map) in [
        (Kind::TcpRoute, &index.tcp_routes),
        (Kind::UdpRoute, &index.udp_routes),
    ] {
        for ((ns, name), r) in map {
            let (status, backends) = attacher.l4_route(kind, r);
            out.statuses.extend(status.map(|s| share_status(live, s)));
            out.l4_backends
                .insert((kind, ns.clone(), name.clone()), backends);
        }
    }
    for (key, r) in &index.tls_routes {
        let (status, backends) = attacher.tls_route(r);
        out.statuses.extend(status.map(|s| share_status(live, s)));
        out.tls_backends.insert(key.clone(), backends);
    }
    out
}

/// Usable Gateway listeners that share an address, port and transport serve as one.
fn group_listeners(listeners: &[GatewayListener<'_>]) -> BTreeMap<ListenerKey, Vec<usize>> {
    let mut groups: BTreeMap<ListenerKey, Vec<usize>> = BTreeMap::new();
    for (i, l) in listeners.iter().enumerate() {
        if l.usable() {
            groups.entry(l.key.clone()).or_default().push(i);
        }
    }
    groups
}

fn sources(listeners: &[GatewayListener<'_>], members: &[usize]) -> Vec<ListenerSource> {
    members
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
        .collect()
}

/// The mode the Gateways' `splitter.dev/dataplane` annotations ask for; unreadable values
/// become diagnostics.
fn annotation_override(
    listeners: &[GatewayListener<'_>],
    members: &[usize],
    diagnostics: &mut Vec<Diagnostic>,
) -> Option<Mode> {
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
    wanted
}

/// One data plane listener being planned.
struct ListenerGroup<'a> {
    /// Its key and sources; the reason is filled in by the mode decision.
    listener: DataplaneListener,
    /// Indexes of the Gateway listeners that share it.
    members: &'a [usize],
    /// The mode the annotation asks for, if any.
    wanted: Option<Mode>,
    generation: i64,
    /// This listener's table in the previous plan, for the disruption figure.
    previous: Option<&'a WeightedTable>,
    /// This listener's L7 routes in the previous plan, whose equal routes the new table shares.
    previous_l7: Option<&'a L7RouteTable>,
}

/// The mode of an HTTP listener and why, with its `DataplaneMode` condition.
struct ModeDecision {
    mode: Mode,
    why: String,
    condition: Condition,
}

/// L4 when the routes allow it (`need_l7` is `None`), unless the annotation forces L7; an
/// annotation asking for L4 where the routes need L7 is refused with a condition.
fn decide_mode(wanted: Option<Mode>, need_l7: Option<String>, generation: i64) -> ModeDecision {
    let condition = |ok: bool, r: &str, message: &str| {
        Condition::new(reason::DATAPLANE, ok, r, message, generation)
    };
    match (wanted, need_l7) {
        (Some(Mode::L7), _) => ModeDecision {
            mode: Mode::L7,
            why: format!("forced by the Gateway annotation {DATAPLANE_ANNOTATION}: l7"),
            condition: condition(true, reason::L7, "forced by annotation"),
        },
        (Some(Mode::L4), Some(why)) => {
            let why = format!("{DATAPLANE_ANNOTATION}: l4 refused: {why}");
            ModeDecision {
                mode: Mode::L7,
                condition: condition(false, reason::L4_REFUSED, &why),
                why,
            }
        }
        (_, Some(why)) => ModeDecision {
            mode: Mode::L7,
            condition: condition(true, reason::L7, &why),
            why,
        },
        (wanted, None) => {
            let asked = if wanted == Some(Mode::L4) {
                " (as the annotation asks)"
            } else {
                ""
            };
            let why = format!(
                "one rule matches every request with no filters: connections are split in the kernel{asked}; a keep-alive client stays on one backend"
            );
            ModeDecision {
                mode: Mode::L4,
                condition: condition(true, reason::L4, &why),
                why,
            }
        }
    }
}

/// An HTTP listener: the route table of every HTTPRoute attached to its Gateway listeners,
/// served by the proxy, or by the kernel when one rule takes every request.
fn http_listener_plan(
    index: &Index,
    config: &PlanConfig,
    listeners: &[GatewayListener<'_>],
    attached: &AttachedRoutes,
    group: ListenerGroup<'_>,
) -> (ListenerPlan, Condition) {
    let live = table::LiveRoutes::of(group.previous_l7);
    let mut entries = Vec::new();
    for &i in group.members {
        let l = &listeners[i];
        // Listener isolation (GatewayHTTPListenerIsolation): a request goes to the most
        // specific listener its host matches, so each listener's routes leave alone the hosts
        // of the listeners on the port whose hostnames lie within its own (all of them for a
        // listener without hostname).
        let shadowed_by = shadowed_by(listeners, group.members, i);
        for a in &l.http {
            if let (Some(route), Some(rules)) = (
                index.routes_of(a.kind).get(&a.route),
                attached
                    .http_rules
                    .get(&(a.kind, a.route.0.clone(), a.route.1.clone())),
            ) {
                entries.extend(table::entries(
                    route,
                    rules,
                    l.listener.hostname.as_deref(),
                    &a.hostnames,
                    &shadowed_by,
                    &live,
                ));
            }
        }
    }
    let mut l7 = table::into_table(entries);
    let https = group
        .members
        .iter()
        .any(|&i| listeners[i].class == Some(ListenerClass::Https));
    let need = if https {
        // Members share one class: an HTTP listener on the port would have conflicted.
        l7.tls = Some(TlsPlan {
            certificates: group
                .members
                .iter()
                .flat_map(|&i| {
                    let l = &listeners[i];
                    l.certificates.iter().map(|c| ListenerCertificate {
                        hostname: l.listener.hostname.clone(),
                        certificate: c.clone(),
                    })
                })
                .collect(),
        });
        Some("HTTPS: the proxy terminates TLS".to_string())
    } else {
        table::needs_l7(&group.listener.sources, &l7)
    };
    let decision = decide_mode(group.wanted, need, group.generation);
    let listener = DataplaneListener {
        reason: decision.why,
        ..group.listener
    };
    // `needs_l7` answers `None` only for exactly one route entry, so L4 always finds it.
    let plan = match (decision.mode, l7.routes.as_slice()) {
        (Mode::L4, [only]) => ListenerPlan::L4 {
            l4: table::l4_plan(
                Some(only.route.clone()),
                only.backends.clone(),
                config.maglev_m,
                group.previous,
            ),
            listener,
        },
        _ => ListenerPlan::L7 {
            listener,
            l7: Arc::new(l7),
        },
    };
    (plan, decision.condition)
}

/// The hostnames of the listeners on the port (`members`) that lie within listener `i`'s own
/// (all of them for a listener without hostname): their names are theirs alone.
fn shadowed_by(listeners: &[GatewayListener<'_>], members: &[usize], i: usize) -> Vec<String> {
    let own = listeners[i].listener.hostname.as_deref();
    let mut out: Vec<String> = members
        .iter()
        .filter_map(|&j| listeners[j].listener.hostname.as_deref())
        .filter(|h| own.is_none_or(|o| !o.eq_ignore_ascii_case(h) && hostname::covers(o, h)))
        .map(str::to_ascii_lowercase)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A TCP or UDP listener: always the kernel; the oldest attached route gets the traffic.
fn l4_listener_plan(
    config: &PlanConfig,
    listeners: &[GatewayListener<'_>],
    attached: &AttachedRoutes,
    class: ListenerClass,
    group: ListenerGroup<'_>,
    diagnostics: &mut Vec<Diagnostic>,
) -> (ListenerPlan, Condition) {
    let kind = if class == ListenerClass::Tcp {
        Kind::TcpRoute
    } else {
        Kind::UdpRoute
    };
    let routes: Vec<_> = group
        .members
        .iter()
        .flat_map(|&i| listeners[i].l4.iter().map(|r| (*r, kind)))
        .collect();
    if group.wanted == Some(Mode::L7) {
        diagnostics.push(Diagnostic {
            severity: Severity::Warning,
            object: group.listener.sources[0].gateway.to_string(),
            message: format!(
                "{DATAPLANE_ANNOTATION}: l7 does not apply to {} listeners, which are always L4",
                class.route_kind()
            ),
        });
    }
    let l4 = match table::oldest(&routes) {
        Some((r, k)) => {
            let backends = attached
                .l4_backends
                .get(&(k, r.meta.namespace.clone(), r.meta.name.clone()))
                .cloned()
                .unwrap_or_default();
            let route = ObjectKey::new(k, &r.meta.namespace, &r.meta.name);
            table::l4_plan(Some(route), backends, config.maglev_m, group.previous)
        }
        None => table::l4_plan(None, Vec::new(), config.maglev_m, group.previous),
    };
    let why = table::l4_reason(class, routes.len());
    let condition = Condition::new(reason::DATAPLANE, true, reason::L4, &why, group.generation);
    (
        ListenerPlan::L4 {
            listener: DataplaneListener {
                reason: why,
                ..group.listener
            },
            l4,
        },
        condition,
    )
}

/// A TLS passthrough listener: the kernel when one TLSRoute takes every name the listener
/// accepts (a listener without hostname, a route without hostnames), as a TCPRoute would be;
/// otherwise the proxy, which reads each ClientHello's server name to pick the route. The
/// annotation `l4` puts a listener with exactly one route in the kernel even when names would
/// be checked: the kernel does not read them, so every connection goes to that route.
fn tls_listener_plan(
    index: &Index,
    config: &PlanConfig,
    listeners: &[GatewayListener<'_>],
    attached: &AttachedRoutes,
    group: ListenerGroup<'_>,
) -> (ListenerPlan, Condition) {
    // Listener isolation, as for HTTP: a name of a more specific listener on the port is
    // that listener's alone.
    let shadows: Vec<Vec<String>> = group
        .members
        .iter()
        .map(|&i| shadowed_by(listeners, group.members, i))
        .collect();
    let mut attachments = Vec::new();
    for (&i, shadowed_by) in group.members.iter().zip(&shadows) {
        for a in &listeners[i].tls {
            if let (Some(route), Some(backends)) = (
                index.tls_routes.get(&a.route),
                attached.tls_backends.get(&a.route),
            ) {
                attachments.push(SniAttachment {
                    route: ObjectKey::new(Kind::TlsRoute, &a.route.0, &a.route.1),
                    created: route.meta.created,
                    hostnames: &a.hostnames,
                    backends,
                    shadowed_by,
                });
            }
        }
    }
    let table = passthrough::table(&attachments);
    let mut routes: Vec<&ObjectKey> = table.routes.iter().map(|r| &r.route).collect();
    routes.sort();
    routes.dedup();
    let names = || {
        table
            .routes
            .iter()
            .filter_map(|r| r.hostname.as_deref())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let generation = group.generation;
    let condition = |ok: bool, r: &str, message: &str| {
        Condition::new(reason::DATAPLANE, ok, r, message, generation)
    };
    // (the route the kernel serves, why, condition); `None` route: the proxy serves.
    let (kernel, why, cond) = match (group.wanted, table.routes.as_slice(), routes.len()) {
        (Some(Mode::L7), _, _) => {
            let why = format!(
                "forced by the Gateway annotation {DATAPLANE_ANNOTATION}: l7; the proxy routes each connection by its SNI"
            );
            (
                None,
                why,
                condition(true, reason::L7, "forced by annotation"),
            )
        }
        (_, [only], _) if only.hostname.is_none() && only.shadowed_by.is_empty() => {
            let why = format!(
                "one TLSRoute ({}) takes every server name: connections are split in the kernel without reading the ClientHello",
                only.route
            );
            (Some(only), why.clone(), condition(true, reason::L4, &why))
        }
        (Some(Mode::L4), [first, ..], 1) => {
            let why = format!(
                "{DATAPLANE_ANNOTATION}: l4: one TLSRoute ({}) split in the kernel, which does not read the server name: every connection goes to it, whatever name it asks for (the route's names: {})",
                first.route,
                names()
            );
            (Some(first), why.clone(), condition(true, reason::L4, &why))
        }
        (wanted, _, n) => {
            let why = if n == 0 {
                "TLS passthrough with no TLSRoute attached: the proxy closes every connection"
                    .to_string()
            } else {
                format!(
                    "TLS passthrough by server name ({}): the proxy reads each ClientHello and splices the connection to the route's backend",
                    names()
                )
            };
            match wanted {
                Some(Mode::L4) => {
                    let why = format!("{DATAPLANE_ANNOTATION}: l4 refused: {why}");
                    (
                        None,
                        why.clone(),
                        condition(false, reason::L4_REFUSED, &why),
                    )
                }
                _ => (None, why.clone(), condition(true, reason::L7, &why)),
            }
        }
    };
    let listener = DataplaneListener {
        reason: why,
        ..group.listener
    };
    let plan = match kernel {
        Some(route) => ListenerPlan::L4 {
            l4: table::l4_plan(
                Some(route.route.clone()),
                route.backends.clone(),
                config.maglev_m,
                group.previous,
            ),
            listener,
        },
        None => ListenerPlan::L7 {
            listener,
            l7: Arc::new(L7RouteTable {
                passthrough: Some(table),
                ..Default::default()
            }),
        },
    };
    (plan, cond)
}
