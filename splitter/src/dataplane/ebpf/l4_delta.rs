//! What the L4 maps must go through to get from what is applied to what is desired, decided
//! without touching them.
//!
//! [`plan`] turns (applied, desired) into an ordered list of [`Step`]s; the actuator performs
//! them in order and calls [`Applied::record`] after each one the kernel accepted. A failed step
//! is never recorded, so the next plan starts from what the kernel really holds (but for the
//! inactive halves, which it rewrites whole anyway) and repeats it.
//! The order is the safety argument:
//! - backends are ACTIVE before a table names them;
//! - a table fills the route's inactive half, then one meta write makes it live;
//! - VIPs are pointed at a route only once its table is live, and removed before their route
//!   is unprogrammed;
//! - a backend that left every table is marked DRAINING last; its id stays allocated until a
//!   sweep sees no conntrack entry naming it (see `l4_sweep`).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use splitter_common::l4::{
    BACKEND_DRAINING, BACKEND_EMPTY, BACKEND_FLAG_REMOTE, Backend, MAX_BACKENDS, MAX_ROUTES,
    MAX_TABLE_SIZE, MAX_VIPS, REJECT, RouteMeta, VIP_DEDICATED, VipKey, VipValue,
};

use super::l4_actuator::{L4ApplyError, L4RouteProgram, vip_key};
use super::l4_sweep::CtKey;

/// A backend as the kernel knows it: its address, and whether it runs on another node (its
/// flows are source-NATed). A backend that moves between local and remote is a different
/// backend with its own id: flows already on it keep the treatment they started with (a SNAT
/// flow cannot lose its SNAT mid-connection), new ones get the new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackendRef {
    pub addr: SocketAddr,
    pub remote: bool,
}

#[cfg(test)]
impl BackendRef {
    pub fn local(addr: SocketAddr) -> Self {
        BackendRef {
            addr,
            remote: false,
        }
    }
}

/// One change to the L4 maps, or to the ids behind them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Step<'a> {
    /// `backend` takes new connections under `id` (a fresh id, or one it held while draining).
    ActivateBackend {
        id: u32,
        backend: BackendRef,
    },
    /// `key` owns route id `id` from now on. Nothing in the kernel: it knows routes by id only.
    BindRoute {
        key: &'a str,
        id: u32,
    },
    /// Fills half `half` of the route's table, which no packet reads until the flip.
    WriteTable {
        route_id: u32,
        half: u32,
        slots: Vec<u32>,
    },
    /// Makes `meta.active` the live half: one write of the route's meta.
    FlipRoute {
        key: &'a str,
        route_id: u32,
        meta: RouteMeta,
        table: &'a [Option<SocketAddr>],
        /// Which of the table's backends are remote: part of what was published, since a
        /// backend that turns remote is another backend id.
        remote: &'a BTreeSet<SocketAddr>,
    },
    WriteVip {
        key: VipKey,
        value: VipValue,
    },
    RemoveVip {
        key: VipKey,
    },
    /// Unprograms a route no program names any more; its VIPs are gone already.
    ClearRoute {
        key: String,
        route_id: u32,
    },
    /// `backend` left every table: established flows only.
    DrainBackend {
        id: u32,
        backend: BackendRef,
    },
    /// Removes both directions of a closed flow to a draining backend.
    ReapFlow {
        forward: CtKey,
        reply: CtKey,
    },
    /// Empties a draining backend no conntrack entry names, so its id can be reused.
    FreeBackend {
        id: u32,
    },
}

/// A route's table as published: the slots' addresses and which of them are remote.
pub(super) type PublishedTable = (Vec<Option<SocketAddr>>, BTreeSet<SocketAddr>);

/// What the maps hold, as far as this agent wrote or adopted them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(super) struct Applied {
    pub route_ids: BTreeMap<String, u32>,
    /// Every allocated backend id, draining ones included.
    pub backend_ids: BTreeMap<BackendRef, u32>,
    pub draining: BTreeSet<u32>,
    /// Route metas by route id; an absent id holds the default (not programmed).
    pub metas: BTreeMap<u32, RouteMeta>,
    /// The table each route key last published. Empty after adoption: route keys are not in
    /// the kernel, so a restarted agent republishes every table once.
    pub tables: BTreeMap<String, PublishedTable>,
    pub vips: BTreeMap<VipKey, VipValue>,
}

impl Applied {
    /// What a previous agent left in the maps. Adopted backends keep their ids (conntrack names
    /// them), and the route metas say which half is live.
    pub fn adopt(
        backends: impl IntoIterator<Item = (u32, Backend)>,
        vips: impl IntoIterator<Item = (VipKey, VipValue)>,
        metas: impl IntoIterator<Item = (u32, RouteMeta)>,
    ) -> Self {
        let mut applied = Applied::default();
        for (id, b) in backends {
            if b.state == BACKEND_EMPTY {
                continue;
            }
            let ip = IpAddr::from(b.addr).to_canonical();
            let backend = BackendRef {
                addr: SocketAddr::new(ip, b.port),
                remote: b.flags & BACKEND_FLAG_REMOTE != 0,
            };
            applied.backend_ids.insert(backend, id);
            if b.state == BACKEND_DRAINING {
                applied.draining.insert(id);
            }
        }
        applied.vips = vips.into_iter().collect();
        applied.metas = metas
            .into_iter()
            .filter(|(_, m)| *m != RouteMeta::default())
            .collect();
        applied
    }

    /// Takes note that the kernel accepted `step`.
    pub fn record(&mut self, step: &Step<'_>) {
        match step {
            Step::ActivateBackend { id, backend } => {
                self.backend_ids.insert(*backend, *id);
                self.draining.remove(id);
            }
            Step::BindRoute { key, id } => {
                self.route_ids.insert((*key).to_owned(), *id);
            }
            Step::WriteTable { .. } | Step::ReapFlow { .. } => {}
            Step::FlipRoute {
                key,
                route_id,
                meta,
                table,
                remote,
            } => {
                self.metas.insert(*route_id, *meta);
                self.tables
                    .insert((*key).to_owned(), (table.to_vec(), (*remote).clone()));
            }
            Step::WriteVip { key, value } => {
                self.vips.insert(*key, *value);
            }
            Step::RemoveVip { key } => {
                self.vips.remove(key);
            }
            Step::ClearRoute { key, route_id } => {
                self.route_ids.remove(key);
                self.tables.remove(key);
                self.metas.remove(route_id);
            }
            Step::DrainBackend { id, .. } => {
                self.draining.insert(*id);
            }
            Step::FreeBackend { id } => {
                self.draining.remove(id);
                self.backend_ids.retain(|_, v| v != id);
            }
        }
    }
}

/// What one route asks of the maps that no other route can change: a table of a size the
/// kernel holds, backends of its VIPs' family.
fn validate(r: &L4RouteProgram) -> Result<(), L4ApplyError> {
    if r.table.is_empty() || r.table.len() > MAX_TABLE_SIZE as usize {
        return Err(L4ApplyError::TableSize {
            key: r.key.clone(),
            size: r.table.len(),
        });
    }
    for (vip, _) in &r.vips {
        if let Some(b) = r
            .table
            .iter()
            .flatten()
            .find(|b| b.is_ipv4() != vip.is_ipv4())
        {
            return Err(L4ApplyError::FamilyMismatch {
                key: r.key.clone(),
                vip: *vip,
                backend: *b,
            });
        }
    }
    Ok(())
}

/// The lowest id below `max` that `used` does not hold.
fn lowest_free<'u>(used: impl IntoIterator<Item = &'u u32>, max: u32) -> Option<u32> {
    let used: BTreeSet<u32> = used.into_iter().copied().collect();
    (0..max).find(|i| !used.contains(i))
}

/// The steps of one plan, and the routes left out of it.
#[derive(Debug, Default)]
pub(super) struct Planned<'a> {
    pub steps: Vec<Step<'a>>,
    /// Routes over a limit or invalid, with why: they are not served (a route that was is
    /// unprogrammed like a removed one), and every other route is.
    pub rejected: Vec<(String, L4ApplyError)>,
}

/// The routes of `desired` that fit, in order, with the route and backend ids they take; the
/// others with why. A route is admitted whole or not at all, so one over a limit never takes
/// ids another needs.
struct Admission<'a> {
    accepted: Vec<&'a L4RouteProgram>,
    rejected: Vec<(String, L4ApplyError)>,
    route_ids: BTreeMap<String, u32>,
    new_routes: BTreeSet<&'a str>,
    backend_ids: BTreeMap<BackendRef, u32>,
}

/// The VIP keys `r` points at.
fn vip_keys(r: &L4RouteProgram) -> impl Iterator<Item = VipKey> + '_ {
    r.vips.iter().map(|(a, p)| vip_key(*a, *p))
}

fn admit<'a>(applied: &Applied, desired: &'a [L4RouteProgram]) -> Admission<'a> {
    let mut a = Admission {
        accepted: Vec::new(),
        rejected: Vec::new(),
        route_ids: applied.route_ids.clone(),
        new_routes: BTreeSet::new(),
        // Draining ids stay in here: conntrack may name them.
        backend_ids: applied.backend_ids.clone(),
    };
    let mut vips: BTreeSet<VipKey> = BTreeSet::new();
    for r in desired {
        if let Err(e) = validate(r) {
            a.rejected.push((r.key.clone(), e));
            continue;
        }
        let new_vips: BTreeSet<VipKey> = vip_keys(r).filter(|k| !vips.contains(k)).collect();
        if vips.len() + new_vips.len() > MAX_VIPS as usize {
            a.rejected.push((r.key.clone(), L4ApplyError::TooManyVips));
            continue;
        }
        let route_id = match a.route_ids.get(&r.key) {
            Some(id) => Some(*id),
            None => {
                // A restarted agent: reuse the id its VIPs already point at, so the live table
                // half and the counters carry on. Gone routes still hold their ids here: they
                // are unprogrammed only after their VIPs are removed.
                let adopted = r
                    .vips
                    .iter()
                    .find_map(|(a, p)| applied.vips.get(&vip_key(*a, *p)).map(|v| v.route_id))
                    .filter(|id| !a.route_ids.values().any(|x| x == id));
                adopted.or_else(|| lowest_free(a.route_ids.values(), MAX_ROUTES))
            }
        };
        let Some(route_id) = route_id else {
            a.rejected
                .push((r.key.clone(), L4ApplyError::TooManyRoutes));
            continue;
        };
        let needed: BTreeSet<BackendRef> = r
            .table
            .iter()
            .flatten()
            .map(|addr| r.backend(*addr))
            .filter(|b| !a.backend_ids.contains_key(b))
            .collect();
        let used: BTreeSet<u32> = a.backend_ids.values().copied().collect();
        let free: Vec<u32> = (0..MAX_BACKENDS)
            .filter(|i| !used.contains(i))
            .take(needed.len())
            .collect();
        if free.len() < needed.len() {
            a.rejected
                .push((r.key.clone(), L4ApplyError::TooManyBackends));
            continue;
        }
        a.backend_ids.extend(needed.into_iter().zip(free));
        vips.extend(new_vips);
        if !a.route_ids.contains_key(&r.key) {
            a.route_ids.insert(r.key.clone(), route_id);
            a.new_routes.insert(&r.key);
        }
        a.accepted.push(r);
    }
    a
}

/// The steps that make the maps run the routes of `desired` that fit, in the order they must
/// happen. Limits are checked per route here: a route that does not fit writes nothing, and
/// the others are planned as if it were not there.
pub(super) fn plan<'a>(applied: &Applied, desired: &'a [L4RouteProgram]) -> Planned<'a> {
    let Admission {
        accepted,
        rejected,
        route_ids,
        new_routes,
        backend_ids,
    } = admit(applied, desired);
    let mut steps = Vec::new();

    let wanted: BTreeSet<BackendRef> = accepted
        .iter()
        .flat_map(|r| r.table.iter().flatten().map(|a| r.backend(*a)))
        .collect();
    for addr in &wanted {
        let id = backend_ids[addr];
        if applied.backend_ids.get(addr) == Some(&id) && !applied.draining.contains(&id) {
            continue;
        }
        steps.push(Step::ActivateBackend { id, backend: *addr });
    }

    let mut metas = applied.metas.clone();
    let mut published: BTreeMap<&str, (&[Option<SocketAddr>], &BTreeSet<SocketAddr>)> =
        BTreeMap::new();
    for r in &accepted {
        let route_id = route_ids[&r.key];
        if new_routes.contains(r.key.as_str()) {
            steps.push(Step::BindRoute {
                key: &r.key,
                id: route_id,
            });
        }
        let current = match published.get(r.key.as_str()) {
            Some(t) => Some(*t),
            None => applied
                .tables
                .get(&r.key)
                .map(|(t, remote)| (t.as_slice(), remote)),
        };
        if current == Some((r.table.as_slice(), &r.remote)) {
            continue;
        }
        let meta = metas.get(&route_id).copied().unwrap_or_default();
        // A never-programmed route has table_size 0: its active half is not live, fill that.
        let half = if meta.table_size == 0 {
            meta.active.min(1)
        } else {
            1 - meta.active.min(1)
        };
        let slots = r
            .table
            .iter()
            .map(|entry| entry.map_or(REJECT, |addr| backend_ids[&r.backend(addr)]))
            .collect();
        steps.push(Step::WriteTable {
            route_id,
            half,
            slots,
        });
        let next = RouteMeta {
            table_size: r.table.len() as u32,
            active: half,
            generation: meta.generation.wrapping_add(1),
            _pad: 0,
        };
        metas.insert(route_id, next);
        published.insert(&r.key, (&r.table, &r.remote));
        steps.push(Step::FlipRoute {
            key: &r.key,
            route_id,
            meta: next,
            table: &r.table,
            remote: &r.remote,
        });
    }

    let mut wanted_vips = BTreeMap::new();
    for r in &accepted {
        let route_id = route_ids[&r.key];
        for (addr, proto) in &r.vips {
            let flags = if r.dedicated.contains(&addr.ip()) {
                VIP_DEDICATED
            } else {
                0
            };
            wanted_vips.insert(vip_key(*addr, *proto), VipValue { route_id, flags });
        }
    }
    // Removed first: VIPS is a hash map of MAX_VIPS entries, and a change that swaps VIPs at
    // the limit must not need room for both the old and the new ones.
    for key in applied.vips.keys() {
        if !wanted_vips.contains_key(key) {
            steps.push(Step::RemoveVip { key: *key });
        }
    }
    for (key, value) in &wanted_vips {
        if applied.vips.get(key) != Some(value) {
            steps.push(Step::WriteVip {
                key: *key,
                value: *value,
            });
        }
    }

    let keys: BTreeSet<&str> = accepted.iter().map(|r| r.key.as_str()).collect();
    for (key, route_id) in &applied.route_ids {
        if !keys.contains(key.as_str()) {
            steps.push(Step::ClearRoute {
                key: key.clone(),
                route_id: *route_id,
            });
        }
    }
    // A restarted agent adopted route metas without keys: those no desired route took over
    // belong to routes the plan no longer names (their VIPs were removed above), so they are
    // cleared too, and pinned state matches the first plan.
    let bound: BTreeSet<u32> = route_ids.values().copied().collect();
    for route_id in applied.metas.keys() {
        let keyed = applied.route_ids.values().any(|id| id == route_id);
        if !bound.contains(route_id) && !keyed {
            steps.push(Step::ClearRoute {
                key: format!("(adopted route {route_id})"),
                route_id: *route_id,
            });
        }
    }

    for (backend, id) in &applied.backend_ids {
        if !wanted.contains(backend) && !applied.draining.contains(id) {
            steps.push(Step::DrainBackend {
                id: *id,
                backend: *backend,
            });
        }
    }
    Planned { steps, rejected }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::ebpf::L4Proto;

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn route(key: &str, vip: &str, table: &[Option<&str>]) -> L4RouteProgram {
        L4RouteProgram {
            key: key.into(),
            vips: vec![(sa(vip), L4Proto::Tcp)],
            table: table.iter().map(|s| s.map(sa)).collect(),
            remote: BTreeSet::new(),
            dedicated: BTreeSet::new(),
        }
    }

    fn recorded(mut applied: Applied, steps: &[Step<'_>]) -> Applied {
        for s in steps {
            applied.record(s);
        }
        applied
    }

    #[test]
    fn from_nothing_backends_then_table_then_flip_then_vip() {
        let desired = [route(
            "web",
            "10.0.0.1:80",
            &[Some("10.1.0.1:80"), None, Some("10.1.0.2:80")],
        )];
        let steps = plan(&Applied::default(), &desired).steps;
        let meta = RouteMeta {
            table_size: 3,
            active: 0,
            generation: 1,
            _pad: 0,
        };
        assert_eq!(
            steps,
            vec![
                Step::ActivateBackend {
                    id: 0,
                    backend: BackendRef::local(sa("10.1.0.1:80"))
                },
                Step::ActivateBackend {
                    id: 1,
                    backend: BackendRef::local(sa("10.1.0.2:80"))
                },
                Step::BindRoute { key: "web", id: 0 },
                Step::WriteTable {
                    route_id: 0,
                    half: 0,
                    slots: vec![0, REJECT, 1]
                },
                Step::FlipRoute {
                    key: "web",
                    route_id: 0,
                    meta,
                    table: &desired[0].table,
                    remote: &desired[0].remote
                },
                Step::WriteVip {
                    key: vip_key(sa("10.0.0.1:80"), L4Proto::Tcp),
                    value: VipValue {
                        route_id: 0,
                        flags: 0
                    }
                },
            ]
        );
    }

    #[test]
    fn a_recorded_plan_leaves_nothing_to_do() {
        let first = [
            route("web", "10.0.0.1:80", &[Some("10.1.0.1:80"), None]),
            route("api", "10.0.0.2:80", &[Some("10.1.0.2:80")]),
        ];
        let second = [
            route("api", "10.0.0.3:80", &[Some("10.1.0.3:80")]),
            route("new", "10.0.0.1:80", &[Some("10.1.0.1:80")]),
        ];
        let mut applied = Applied::default();
        for desired in [&first[..], &second[..]] {
            let steps = plan(&applied, desired).steps;
            assert!(!steps.is_empty());
            applied = recorded(applied, &steps);
            assert_eq!(plan(&applied, desired).steps, vec![]);
        }
        assert_eq!(applied.route_ids.len(), 2);
        assert_eq!(applied.draining.len(), 1, "10.1.0.2 left every table");
        assert_eq!(applied.vips.len(), 2);
    }

    #[test]
    fn a_published_route_is_rewritten_in_its_other_half() {
        let desired = [route("web", "10.0.0.1:80", &[Some("10.1.0.1:80")])];
        let mut applied = Applied::default();
        applied.metas.insert(
            0,
            RouteMeta {
                table_size: 7,
                active: 1,
                generation: u32::MAX,
                _pad: 0,
            },
        );
        let steps = plan(&applied, &desired).steps;
        assert!(steps.contains(&Step::WriteTable {
            route_id: 0,
            half: 0,
            slots: vec![0]
        }));
        let flip = steps.iter().find_map(|s| match s {
            Step::FlipRoute { meta, .. } => Some(*meta),
            _ => None,
        });
        assert_eq!(
            flip,
            Some(RouteMeta {
                table_size: 1,
                active: 0,
                generation: 0,
                _pad: 0
            }),
            "the generation wraps"
        );
    }

    /// The keys a plan rejected, and why.
    fn rejected(planned: &Planned<'_>) -> Vec<(String, String)> {
        planned
            .rejected
            .iter()
            .map(|(k, e)| (k.clone(), e.to_string()))
            .collect()
    }

    #[test]
    fn a_route_over_the_route_limit_is_left_out_and_the_others_are_planned() {
        let routes: Vec<L4RouteProgram> = (0..=MAX_ROUTES)
            .map(|i| route(&format!("r{i:02}"), &format!("10.0.0.{i}:80"), &[None]))
            .collect();
        let planned = plan(&Applied::default(), &routes);
        let last = format!("r{MAX_ROUTES}");
        assert_eq!(
            rejected(&planned),
            vec![(last.clone(), L4ApplyError::TooManyRoutes.to_string())]
        );
        let applied = recorded(Applied::default(), &planned.steps);
        assert_eq!(applied.route_ids.len(), MAX_ROUTES as usize);
        assert!(!applied.route_ids.contains_key(&last));
    }

    #[test]
    fn a_route_over_the_vip_limit_is_left_out_and_removed_vips_go_first() {
        let mut wide = route("wide", "10.0.0.1:80", &[Some("10.1.0.1:80")]);
        wide.vips = (0..MAX_VIPS)
            .map(|i| {
                (
                    SocketAddr::new(IpAddr::from([10, 3, (i >> 8) as u8, i as u8]), 80),
                    L4Proto::Tcp,
                )
            })
            .collect();
        let one_more = route("more", "10.0.0.9:80", &[Some("10.1.0.1:80")]);
        let desired = [wide.clone(), one_more.clone()];
        let planned = plan(&Applied::default(), &desired);
        assert_eq!(
            rejected(&planned),
            vec![("more".into(), L4ApplyError::TooManyVips.to_string())]
        );
        let applied = recorded(Applied::default(), &planned.steps);
        assert_eq!(applied.vips.len(), MAX_VIPS as usize);
        // The wide route gives way to the other: its VIPs are removed before the new one is
        // written, so the map never needs MAX_VIPS + 1 entries.
        let desired = [one_more];
        let steps = plan(&applied, &desired).steps;
        let first_write = steps
            .iter()
            .position(|s| matches!(s, Step::WriteVip { .. }));
        let last_remove = steps
            .iter()
            .rposition(|s| matches!(s, Step::RemoveVip { .. }));
        assert!(last_remove < first_write, "{steps:?}");
    }

    #[test]
    fn a_route_over_the_backend_limit_takes_no_id_and_the_others_get_theirs() {
        let mut applied = Applied::default();
        // Every id but one is held by a draining backend: conntrack may still name them.
        for id in 0..MAX_BACKENDS - 1 {
            let addr = SocketAddr::new(IpAddr::from([10, 2, (id >> 8) as u8, id as u8]), 80);
            applied.backend_ids.insert(BackendRef::local(addr), id);
            applied.draining.insert(id);
        }
        let desired = [
            route(
                "big",
                "10.0.0.1:80",
                &[Some("10.1.0.1:80"), Some("10.1.0.2:80")],
            ),
            route("small", "10.0.0.2:80", &[Some("10.1.0.3:80")]),
            route("empty", "10.0.0.3:80", &[]),
        ];
        let planned = plan(&applied, &desired);
        assert_eq!(
            rejected(&planned),
            vec![
                ("big".into(), L4ApplyError::TooManyBackends.to_string()),
                (
                    "empty".into(),
                    L4ApplyError::TableSize {
                        key: "empty".into(),
                        size: 0
                    }
                    .to_string()
                ),
            ]
        );
        let applied = recorded(applied, &planned.steps);
        assert_eq!(
            applied
                .backend_ids
                .get(&BackendRef::local(sa("10.1.0.3:80"))),
            Some(&(MAX_BACKENDS - 1)),
            "the small route got the last free id"
        );
        assert_eq!(applied.route_ids.keys().collect::<Vec<_>>(), ["small"]);
        assert_eq!(applied.vips.len(), 1);
    }

    #[test]
    fn adoption_skips_empty_backends_and_default_metas() {
        let b = |state, last| Backend {
            addr: std::net::Ipv4Addr::new(10, 1, 0, last)
                .to_ipv6_mapped()
                .octets(),
            port: 80,
            state,
            ..Backend::default()
        };
        let live = RouteMeta {
            table_size: 7,
            active: 1,
            generation: 3,
            _pad: 0,
        };
        let applied = Applied::adopt(
            [
                (0, b(splitter_common::l4::BACKEND_ACTIVE, 1)),
                (1, b(BACKEND_EMPTY, 2)),
                (2, b(BACKEND_DRAINING, 3)),
            ],
            [(
                vip_key(sa("10.0.0.1:80"), L4Proto::Tcp),
                VipValue {
                    route_id: 4,
                    flags: 0,
                },
            )],
            [(0, RouteMeta::default()), (4, live)],
        );
        assert_eq!(
            applied.backend_ids,
            BTreeMap::from([
                (BackendRef::local(sa("10.1.0.1:80")), 0),
                (BackendRef::local(sa("10.1.0.3:80")), 2)
            ])
        );
        assert_eq!(applied.draining, BTreeSet::from([2]));
        assert_eq!(applied.metas, BTreeMap::from([(4, live)]));
    }
}
