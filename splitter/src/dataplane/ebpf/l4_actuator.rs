//! Programs the L4 maps from a desired state, changing only what changed.
//!
//! Ordering is what keeps packets safe: backends are written before any table names them; a
//! table is written into the route's inactive half and published by flipping one u32; a backend
//! that left every table becomes DRAINING (established flows continue, no new ones) and its id
//! is reused only after conntrack no longer names it.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap, MapData, MapError};
use splitter_common::l4::{
    BACKEND_ACTIVE, BACKEND_DRAINING, BACKEND_EMPTY, Backend, DIR_FORWARD, FLOW_CLOSING, FlowKey,
    FlowKey4, FlowValue, MAX_BACKENDS, MAX_ROUTES, MAX_TABLE_SIZE, REJECT, RouteMeta, VipKey,
    VipValue, table_index,
};

use super::KernelObject;

/// Transport protocol of a VIP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum L4Proto {
    Tcp,
    Udp,
}

impl L4Proto {
    pub fn number(self) -> u8 {
        match self {
            L4Proto::Tcp => splitter_common::counters::IPPROTO_TCP,
            L4Proto::Udp => splitter_common::counters::IPPROTO_UDP,
        }
    }
}

/// One L4 route as the kernel should run it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct L4RouteProgram {
    /// Stable identity (e.g. `gateway-ns/gateway/listener`): the same key keeps its route id, so
    /// conntrack and counters stay meaningful across updates.
    pub key: String,
    pub vips: Vec<(SocketAddr, L4Proto)>,
    /// The Maglev table: each slot a backend address, or `None` for a REJECT slot. Its length is M.
    pub table: Vec<Option<SocketAddr>>,
}

#[derive(Debug, thiserror::Error)]
pub enum L4ApplyError {
    #[error("map {name} is missing from the object")]
    MissingMap { name: &'static str },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        source: MapError,
    },
    #[error("route {key}: table of {size} slots (must be 1..={MAX_TABLE_SIZE})")]
    TableSize { key: String, size: usize },
    #[error("more than {MAX_ROUTES} L4 routes")]
    TooManyRoutes,
    #[error("more than {MAX_BACKENDS} backends (including draining ones)")]
    TooManyBackends,
    #[error(
        "route {key}: VIP {vip} and backend {backend} are of different IP families (no NAT46/64)"
    )]
    FamilyMismatch {
        key: String,
        vip: SocketAddr,
        backend: SocketAddr,
    },
}

/// A removal whose key is already gone did what it was for. aya reports that as `KeyNotFound`
/// or as the syscall's ENOENT, depending on the path.
fn absent_ok(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        r => r,
    }
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> L4ApplyError {
    move |source| L4ApplyError::Map { name, source }
}

/// IPv4 addresses are stored v4-mapped, as the kernel parses them.
pub fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

pub fn vip_key(addr: SocketAddr, proto: L4Proto) -> VipKey {
    VipKey {
        addr: addr16(addr.ip()),
        port: addr.port(),
        proto: proto.number(),
        _pad: 0,
    }
}

/// What one [`L4Actuator::sweep`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Closed flows to draining backends removed from conntrack (both directions each).
    pub flows_reaped: usize,
    /// Draining backend ids freed for reuse.
    pub backends_freed: usize,
    /// Backend ids still draining after the sweep.
    pub draining: usize,
}

/// When each closing flow was first seen closing. Conntrack entries carry no clock (a timestamp
/// per packet would cost the established path), so a flow's closing age counts from the sweep
/// that first saw its flag.
#[derive(Debug, Default)]
pub struct ClosingAges {
    first_seen: BTreeMap<CtKey, Instant>,
}

/// A conntrack entry's key, with the map it lives in: IPv4 flows in `CONNTRACK_V4`, IPv6 flows
/// in `CONNTRACK`. Both directions of a flow are in the same map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CtKey {
    V4(FlowKey4),
    V6(FlowKey),
}

impl CtKey {
    fn is_forward(&self) -> bool {
        match self {
            CtKey::V4(k) => k.dir == DIR_FORWARD,
            CtKey::V6(k) => k.dir == DIR_FORWARD,
        }
    }

    fn twin(&self, value: &FlowValue) -> CtKey {
        match self {
            CtKey::V4(k) => CtKey::V4(k.twin(value)),
            CtKey::V6(k) => CtKey::V6(k.twin(value)),
        }
    }
}

impl ClosingAges {
    /// Records the flows closing `now`, forgets the ones no longer seen (evicted or gone), and
    /// returns those closing for at least `grace`.
    pub fn update(
        &mut self,
        closing: impl IntoIterator<Item = CtKey>,
        now: Instant,
        grace: Duration,
    ) -> Vec<CtKey> {
        let mut next = BTreeMap::new();
        for k in closing {
            let since = self.first_seen.get(&k).copied().unwrap_or(now);
            next.insert(k, since);
        }
        self.first_seen = next;
        self.first_seen
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= grace)
            .map(|(k, _)| *k)
            .collect()
    }

    pub fn clear(&mut self) {
        self.first_seen.clear();
    }
}

/// What one `apply` changed, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub tables_published: Vec<String>,
    pub vips_added: usize,
    pub vips_removed: usize,
    pub backends_added: usize,
    pub backends_draining: usize,
}

pub struct L4Actuator {
    vips: HashMap<MapData, VipKey, VipValue>,
    routes: Array<MapData, RouteMeta>,
    tables: Array<MapData, u32>,
    backends: Array<MapData, Backend>,
    conntrack: HashMap<MapData, FlowKey, FlowValue>,
    conntrack_v4: HashMap<MapData, FlowKey4, FlowValue>,
    closing: ClosingAges,
    route_ids: BTreeMap<String, u32>,
    backend_ids: BTreeMap<SocketAddr, u32>,
    draining: BTreeSet<u32>,
    applied_tables: BTreeMap<String, Vec<Option<SocketAddr>>>,
    applied_vips: BTreeMap<VipKey, u32>,
}

impl L4Actuator {
    /// Takes the L4 maps out of the loaded object (the programs keep using them). Existing state
    /// in pinned maps is adopted: routes, backends and VIPs already there are read back so a
    /// restarted agent publishes into the right halves and keeps backend ids stable.
    pub fn new(obj: &mut KernelObject) -> Result<Self, L4ApplyError> {
        use splitter_common::l4::{BACKENDS, CONNTRACK, CONNTRACK_V4, ROUTES, TABLES, VIPS};
        let mut take = |name: &'static str| {
            obj.ebpf
                .take_map(name)
                .ok_or(L4ApplyError::MissingMap { name })
        };
        let vips = HashMap::try_from(take(VIPS)?).map_err(map_err(VIPS))?;
        let routes = Array::try_from(take(ROUTES)?).map_err(map_err(ROUTES))?;
        let tables = Array::try_from(take(TABLES)?).map_err(map_err(TABLES))?;
        let backends = Array::try_from(take(BACKENDS)?).map_err(map_err(BACKENDS))?;
        let conntrack = HashMap::try_from(take(CONNTRACK)?).map_err(map_err(CONNTRACK))?;
        let conntrack_v4 = HashMap::try_from(take(CONNTRACK_V4)?).map_err(map_err(CONNTRACK_V4))?;
        let mut act = L4Actuator {
            vips,
            routes,
            tables,
            backends,
            conntrack,
            conntrack_v4,
            closing: ClosingAges::default(),
            route_ids: BTreeMap::new(),
            backend_ids: BTreeMap::new(),
            draining: BTreeSet::new(),
            applied_tables: BTreeMap::new(),
            applied_vips: BTreeMap::new(),
        };
        act.adopt()?;
        Ok(act)
    }

    /// Reads back backends and VIPs left by a previous agent. Route keys are not in the kernel,
    /// so adopted routes are matched by the VIPs that point at them.
    fn adopt(&mut self) -> Result<(), L4ApplyError> {
        for id in 0..MAX_BACKENDS {
            let b = self.backends.get(&id, 0).map_err(map_err("BACKENDS"))?;
            if b.state == BACKEND_EMPTY {
                continue;
            }
            let ip = IpAddr::from(b.addr).to_canonical();
            self.backend_ids.insert(SocketAddr::new(ip, b.port), id);
            if b.state == BACKEND_DRAINING {
                self.draining.insert(id);
            }
        }
        for entry in self.vips.iter() {
            let (k, v) = entry.map_err(map_err("VIPS"))?;
            self.applied_vips.insert(k, v.route_id);
        }
        Ok(())
    }

    /// The route id in use by `key`, if any.
    pub fn route_id(&self, key: &str) -> Option<u32> {
        self.route_ids.get(key).copied()
    }

    pub fn backend_id(&self, addr: SocketAddr) -> Option<u32> {
        self.backend_ids.get(&addr).copied()
    }

    fn allocate_route(
        &mut self,
        key: &str,
        vips: &[(SocketAddr, L4Proto)],
    ) -> Result<u32, L4ApplyError> {
        if let Some(id) = self.route_ids.get(key) {
            return Ok(*id);
        }
        // A restarted agent: reuse the id its VIPs already point at, so the live table half and
        // the counters carry on.
        let adopted = vips
            .iter()
            .find_map(|(a, p)| self.applied_vips.get(&vip_key(*a, *p)).copied())
            .filter(|id| !self.route_ids.values().any(|x| x == id));
        let used: HashSet<u32> = self.route_ids.values().copied().collect();
        let id = match adopted {
            Some(id) => id,
            None => (0..MAX_ROUTES)
                .find(|i| !used.contains(i))
                .ok_or(L4ApplyError::TooManyRoutes)?,
        };
        self.route_ids.insert(key.to_owned(), id);
        Ok(id)
    }

    fn allocate_backend(&mut self, addr: SocketAddr) -> Result<(u32, bool), L4ApplyError> {
        if let Some(id) = self.backend_ids.get(&addr) {
            return Ok((*id, false));
        }
        let used: HashSet<u32> = self.backend_ids.values().copied().collect();
        let id = (0..MAX_BACKENDS)
            .find(|i| !used.contains(i))
            .ok_or(L4ApplyError::TooManyBackends)?;
        self.backend_ids.insert(addr, id);
        Ok((id, true))
    }

    fn write_backend(&mut self, id: u32, addr: SocketAddr, state: u8) -> Result<(), L4ApplyError> {
        let b = Backend {
            addr: addr16(addr.ip()),
            port: addr.port(),
            state,
            ..Backend::default()
        };
        self.backends.set(id, b, 0).map_err(map_err("BACKENDS"))
    }

    /// Makes the kernel run exactly `desired`.
    pub fn apply(&mut self, desired: &[L4RouteProgram]) -> Result<ApplyReport, L4ApplyError> {
        let mut report = ApplyReport::default();
        for r in desired {
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
        }

        // 1. Backends first: every address a new table names is ACTIVE before the table is live.
        let wanted: BTreeSet<SocketAddr> = desired
            .iter()
            .flat_map(|r| r.table.iter().flatten().copied())
            .collect();
        for addr in &wanted {
            let (id, fresh) = self.allocate_backend(*addr)?;
            if fresh || self.draining.remove(&id) {
                self.write_backend(id, *addr, BACKEND_ACTIVE)?;
                report.backends_added += 1;
            }
        }

        // 2. Tables: inactive half, then the flip.
        for r in desired {
            let route_id = self.allocate_route(&r.key, &r.vips)?;
            if self.applied_tables.get(&r.key) == Some(&r.table) {
                continue;
            }
            self.publish_table(route_id, &r.table)?;
            self.applied_tables.insert(r.key.clone(), r.table.clone());
            report.tables_published.push(r.key.clone());
        }

        // 3. VIPs: point at their routes; drop the ones no route has any more.
        let mut wanted_vips = BTreeMap::new();
        for r in desired {
            let route_id = self.route_ids[&r.key];
            for (addr, proto) in &r.vips {
                wanted_vips.insert(vip_key(*addr, *proto), route_id);
            }
        }
        for (k, route_id) in &wanted_vips {
            if self.applied_vips.get(k) != Some(route_id) {
                self.vips
                    .insert(
                        k,
                        VipValue {
                            route_id: *route_id,
                            flags: 0,
                        },
                        0,
                    )
                    .map_err(map_err("VIPS"))?;
                report.vips_added += 1;
            }
        }
        let stale: Vec<VipKey> = self
            .applied_vips
            .keys()
            .filter(|k| !wanted_vips.contains_key(k))
            .copied()
            .collect();
        for k in stale {
            absent_ok(self.vips.remove(&k)).map_err(map_err("VIPS"))?;
            report.vips_removed += 1;
        }
        self.applied_vips = wanted_vips;

        // 4. Routes no longer wanted: unprogram (their VIPs are gone already).
        let keys: BTreeSet<&str> = desired.iter().map(|r| r.key.as_str()).collect();
        let gone: Vec<String> = self
            .route_ids
            .keys()
            .filter(|k| !keys.contains(k.as_str()))
            .cloned()
            .collect();
        for key in gone {
            if let Some(id) = self.route_ids.remove(&key) {
                self.routes
                    .set(id, RouteMeta::default(), 0)
                    .map_err(map_err("ROUTES"))?;
            }
            self.applied_tables.remove(&key);
        }

        // 5. Backends in no table: DRAINING (established flows only).
        let leaving: Vec<(SocketAddr, u32)> = self
            .backend_ids
            .iter()
            .filter(|(a, id)| !wanted.contains(a) && !self.draining.contains(id))
            .map(|(a, id)| (*a, *id))
            .collect();
        for (addr, id) in leaving {
            self.write_backend(id, addr, BACKEND_DRAINING)?;
            self.draining.insert(id);
            report.backends_draining += 1;
        }
        Ok(report)
    }

    fn publish_table(
        &mut self,
        route_id: u32,
        table: &[Option<SocketAddr>],
    ) -> Result<(), L4ApplyError> {
        let meta = self.routes.get(&route_id, 0).map_err(map_err("ROUTES"))?;
        // A never-programmed route has table_size 0: write half 0 and make it live.
        let target = if meta.table_size == 0 {
            meta.active
        } else {
            1 - meta.active.min(1)
        };
        for (slot, entry) in table.iter().enumerate() {
            let id = match entry {
                Some(addr) => self.backend_ids[addr],
                None => REJECT,
            };
            self.tables
                .set(table_index(route_id, target, slot as u32), id, 0)
                .map_err(map_err("TABLES"))?;
        }
        let next = RouteMeta {
            table_size: table.len() as u32,
            active: target,
            generation: meta.generation.wrapping_add(1),
            _pad: 0,
        };
        // One map update of a 16-byte array value: the kernel copies it under the element, and the
        // program reads `active` and `table_size` together from it.
        self.routes
            .set(route_id, next, 0)
            .map_err(map_err("ROUTES"))
    }

    /// Removes one conntrack entry; the LRU may have evicted it since the scan.
    fn forget_flow(&mut self, key: &CtKey) -> Result<(), L4ApplyError> {
        match key {
            CtKey::V4(k) => absent_ok(self.conntrack_v4.remove(k)).map_err(map_err("CONNTRACK_V4")),
            CtKey::V6(k) => absent_ok(self.conntrack.remove(k)).map_err(map_err("CONNTRACK")),
        }
    }

    /// Reaps what draining backends leave behind, then frees their ids.
    ///
    /// A flow to a draining backend whose entries carry `FLOW_CLOSING` (a FIN or RST went
    /// through) and have done so for `grace` is removed in both directions; a draining backend
    /// that no entry names any more is freed, so its id can be reused. Flows to active backends
    /// are left to the LRU, and so are draining flows that never close (idle clients, UDP): those
    /// keep their backend's id until evicted, which is what keeps them working.
    pub fn sweep(&mut self, now: Instant, grace: Duration) -> Result<SweepReport, L4ApplyError> {
        let mut report = SweepReport::default();
        if self.draining.is_empty() {
            self.closing.clear();
            return Ok(report);
        }
        let mut referenced = HashSet::new();
        // Per flow (by forward key): closing in either direction, and both keys.
        let mut flows: BTreeMap<CtKey, (bool, CtKey, u32)> = BTreeMap::new();
        let v6 = self
            .conntrack
            .iter()
            .map(|e| e.map(|(k, v)| (CtKey::V6(k), v)));
        let v4 = self
            .conntrack_v4
            .iter()
            .map(|e| e.map(|(k, v)| (CtKey::V4(k), v)));
        for entry in v6.chain(v4) {
            let (k, v) = entry.map_err(map_err("CONNTRACK"))?;
            if !self.draining.contains(&v.backend_id) {
                referenced.insert(v.backend_id);
                continue;
            }
            let (fwd, rev) = if k.is_forward() {
                (k, k.twin(&v))
            } else {
                (k.twin(&v), k)
            };
            let flow = flows.entry(fwd).or_insert((false, rev, v.backend_id));
            flow.0 |= v.flags & FLOW_CLOSING != 0;
        }
        let closing = flows.iter().filter(|(_, f)| f.0).map(|(k, _)| *k);
        let due: BTreeSet<CtKey> = self
            .closing
            .update(closing, now, grace)
            .into_iter()
            .collect();
        for (fwd, (_, rev, backend_id)) in &flows {
            if !due.contains(fwd) {
                referenced.insert(*backend_id);
                continue;
            }
            for k in [fwd, rev] {
                self.forget_flow(k)?;
            }
            report.flows_reaped += 1;
        }
        let free: Vec<u32> = self
            .draining
            .iter()
            .filter(|id| !referenced.contains(id))
            .copied()
            .collect();
        for id in &free {
            self.backends
                .set(*id, Backend::default(), 0)
                .map_err(map_err("BACKENDS"))?;
            self.draining.remove(id);
            self.backend_ids.retain(|_, v| v != id);
        }
        report.backends_freed = free.len();
        report.draining = self.draining.len();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> CtKey {
        CtKey::V6(FlowKey {
            src_port: port,
            ..FlowKey::default()
        })
    }

    #[test]
    fn closing_flows_are_due_only_after_the_grace_and_forgotten_when_gone() {
        let grace = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut ages = ClosingAges::default();
        assert!(ages.update([key(1)], t0, grace).is_empty());
        // Seen again later: the age counts from the first sighting.
        let t1 = t0 + Duration::from_secs(30);
        assert!(ages.update([key(1), key(2)], t1, grace).is_empty());
        let t2 = t0 + Duration::from_secs(60);
        assert_eq!(ages.update([key(1), key(2)], t2, grace), vec![key(1)]);
        // key(1) vanished (evicted) and comes back: a new first sighting.
        let t3 = t0 + Duration::from_secs(90);
        assert_eq!(ages.update([key(2)], t3, grace), vec![key(2)]);
        assert!(ages.update([key(1)], t3, grace).is_empty());
    }
}
