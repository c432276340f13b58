//! Programs the L4 maps from a desired state, changing only what changed.
//!
//! Ordering is what keeps packets safe: backends are written before any table names them; a
//! table is written into the route's inactive half and published by flipping one u32; a backend
//! that left every table becomes DRAINING (established flows continue, no new ones) and its id
//! is reused only after conntrack no longer names it. `l4_delta` and `l4_sweep` decide the
//! steps and their order; this file performs them through [`L4Maps`] and records each one the
//! kernel accepted, so a failed apply is finished by the next one.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use aya::maps::MapError;
use splitter_common::l4::{
    BACKEND_ACTIVE, BACKEND_DRAINING, BACKEND_FLAG_REMOTE, Backend, L4Config, MAX_BACKENDS,
    MAX_ROUTES, MAX_TABLE_SIZE, MAX_VIPS, RouteMeta, VipKey,
};

use super::{
    KernelObject,
    l4_delta::{self, Applied, BackendRef, Step},
    l4_maps::{KernelL4Maps, L4Maps},
    l4_sweep::{ClosingAges, ConntrackScan},
};

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
    /// Backends of `table` on other nodes: their flows are source-NATed to this node's address,
    /// so their replies come back through it.
    pub remote: BTreeSet<SocketAddr>,
    /// VIP addresses that are not this node's own: a non-SYN packet of an unknown flow to them
    /// is still ours (re-selected), where on a node address it passes to the stack.
    pub dedicated: BTreeSet<IpAddr>,
}

impl L4RouteProgram {
    /// How the kernel must know table entry `addr`.
    pub(super) fn backend(&self, addr: SocketAddr) -> BackendRef {
        BackendRef {
            addr,
            remote: self.remote.contains(&addr),
        }
    }
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
    #[error("more than {MAX_VIPS} VIPs")]
    TooManyVips,
    #[error(
        "route {key}: VIP {vip} and backend {backend} are of different IP families (no NAT46/64)"
    )]
    FamilyMismatch {
        key: String,
        vip: SocketAddr,
        backend: SocketAddr,
    },
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

/// What one `apply` changed, for logs and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub tables_published: Vec<String>,
    pub vips_added: usize,
    pub vips_removed: usize,
    pub backends_added: usize,
    pub backends_draining: usize,
    /// Routes not served, with why (over a limit or invalid); every other route is.
    pub rejected: Vec<(String, String)>,
}

impl ApplyReport {
    fn of(steps: &[Step<'_>]) -> Self {
        let mut report = ApplyReport::default();
        for step in steps {
            match step {
                Step::ActivateBackend { .. } => report.backends_added += 1,
                Step::FlipRoute { key, .. } => report.tables_published.push((*key).to_owned()),
                Step::WriteVip { .. } => report.vips_added += 1,
                Step::RemoveVip { .. } => report.vips_removed += 1,
                Step::DrainBackend { .. } => report.backends_draining += 1,
                _ => {}
            }
        }
        report
    }
}

fn rejected(routes: &[(String, L4ApplyError)]) -> Vec<(String, String)> {
    routes
        .iter()
        .map(|(k, e)| (k.clone(), e.to_string()))
        .collect()
}

pub struct L4Actuator<M = KernelL4Maps> {
    maps: M,
    applied: Applied,
    closing: ClosingAges,
    /// The config last written; `None` until the first write (a pinned map may hold an older
    /// agent's).
    config: Option<L4Config>,
}

impl L4Actuator {
    /// Takes the L4 maps out of the loaded object (the programs keep using them) and adopts
    /// what they hold (see [`L4Actuator::with_maps`]).
    pub fn new(obj: &mut KernelObject) -> Result<Self, L4ApplyError> {
        Self::with_maps(KernelL4Maps::take(obj)?)
    }
}

fn backend(b: BackendRef, state: u8) -> Backend {
    Backend {
        addr: addr16(b.addr.ip()),
        port: b.addr.port(),
        state,
        flags: if b.remote { BACKEND_FLAG_REMOTE } else { 0 },
        ..Backend::default()
    }
}

/// Performs one step. Only map writes: what the step means for the ids is
/// [`Applied::record`]'s.
fn perform(maps: &mut impl L4Maps, step: &Step<'_>) -> Result<(), L4ApplyError> {
    match step {
        Step::ActivateBackend { id, backend: b } => {
            maps.write_backend(*id, backend(*b, BACKEND_ACTIVE))
        }
        Step::BindRoute { .. } => Ok(()),
        Step::WriteTable {
            route_id,
            half,
            slots,
        } => maps.write_table_half(*route_id, *half, slots),
        Step::FlipRoute { route_id, meta, .. } => maps.write_route_meta(*route_id, *meta),
        Step::WriteVip { key, value } => maps.write_vip(*key, *value),
        Step::RemoveVip { key } => maps.remove_vip(key),
        Step::ClearRoute { route_id, .. } => maps.write_route_meta(*route_id, RouteMeta::default()),
        Step::DrainBackend { id, backend: b } => {
            maps.write_backend(*id, backend(*b, BACKEND_DRAINING))
        }
        Step::ReapFlow { forward, reply } => {
            maps.remove_flow(forward)?;
            maps.remove_flow(reply)
        }
        Step::FreeBackend { id } => maps.write_backend(*id, Backend::default()),
    }
}

impl<M: L4Maps> L4Actuator<M> {
    /// Adopts the state a previous agent left in `maps`: backends and VIPs are read back and
    /// route metas say which halves are live, so a restarted agent publishes into the right
    /// halves and keeps backend ids stable. Route keys are not in the kernel: a route is matched
    /// by the VIPs that point at it on its first apply.
    pub fn with_maps(maps: M) -> Result<Self, L4ApplyError> {
        let applied = Applied::adopt(
            maps.read_backends()?,
            maps.read_vips()?,
            maps.read_route_metas()?,
        );
        Ok(L4Actuator {
            maps,
            applied,
            closing: ClosingAges::default(),
            config: None,
        })
    }

    /// The route id in use by `key`, if any.
    pub fn route_id(&self, key: &str) -> Option<u32> {
        self.applied.route_ids.get(key).copied()
    }

    /// The id `addr` has, the one taking new connections if it has two (it moved between
    /// local and remote and the old one drains).
    pub fn backend_id(&self, addr: SocketAddr) -> Option<u32> {
        let ids = [false, true].map(|remote| {
            self.applied
                .backend_ids
                .get(&BackendRef { addr, remote })
                .copied()
        });
        let active = ids
            .iter()
            .flatten()
            .find(|id| !self.applied.draining.contains(id));
        active.or(ids.iter().flatten().next()).copied()
    }

    #[cfg(test)]
    pub(super) fn maps(&self) -> &M {
        &self.maps
    }

    #[cfg(test)]
    pub(super) fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// Performs `steps` in order, recording each one the maps accepted; stops at the first
    /// that failed, which stays unrecorded for the next plan to repeat.
    fn perform_all(&mut self, steps: &[Step<'_>]) -> Result<(), L4ApplyError> {
        for step in steps {
            perform(&mut self.maps, step)?;
            self.applied.record(step);
        }
        Ok(())
    }

    /// Makes the kernel run every route of `desired` that fits: a route over a limit or
    /// invalid is left out (named in the report's `rejected`) and the others are served. On an
    /// error the maps hold a prefix of the steps (never a half-written live table); the next
    /// apply carries on from there.
    pub fn apply(&mut self, desired: &[L4RouteProgram]) -> Result<ApplyReport, L4ApplyError> {
        let planned = l4_delta::plan(&self.applied, desired);
        self.perform_all(&planned.steps)?;
        let mut report = ApplyReport::of(&planned.steps);
        let freed = planned
            .steps
            .iter()
            .any(|s| matches!(s, Step::ClearRoute { .. }));
        let short = planned
            .rejected
            .iter()
            .any(|(_, e)| matches!(e, L4ApplyError::TooManyRoutes));
        if freed && short {
            // Route ids of removed routes are free only once their VIPs are gone, which the
            // steps just did: plan again so the routes that waited for an id get one now.
            let again = l4_delta::plan(&self.applied, desired);
            self.perform_all(&again.steps)?;
            let more = ApplyReport::of(&again.steps);
            report.tables_published.extend(more.tables_published);
            report.vips_added += more.vips_added;
            report.vips_removed += more.vips_removed;
            report.backends_added += more.backends_added;
            report.backends_draining += more.backends_draining;
            report.rejected = rejected(&again.rejected);
        } else {
            report.rejected = rejected(&planned.rejected);
        }
        Ok(report)
    }

    /// Sets the SNAT addresses and port range flows to remote backends use. Written only when
    /// it changed, so calling it before every apply costs nothing.
    pub fn set_config(&mut self, config: L4Config) -> Result<(), L4ApplyError> {
        if self.config != Some(config) {
            self.maps.write_config(config)?;
            self.config = Some(config);
        }
        Ok(())
    }

    /// Reaps what draining backends leave behind, then frees their ids, and reaps closed SNAT
    /// flows (see `l4_sweep`). Conntrack is walked only while some backend drains or is remote.
    pub fn sweep(&mut self, now: Instant, grace: Duration) -> Result<SweepReport, L4ApplyError> {
        let remote = self.applied.backend_ids.keys().any(|b| b.remote);
        if self.applied.draining.is_empty() && !remote {
            self.closing.clear();
            return Ok(SweepReport::default());
        }
        let mut scan = ConntrackScan::new(&self.applied.draining);
        self.maps.for_each_flow(&mut |k, v| scan.see(k, &v))?;
        let steps = scan.finish(&mut self.closing, now, grace);
        self.perform_all(&steps)?;
        let count = |f: fn(&Step<'_>) -> bool| steps.iter().filter(|s| f(s)).count();
        Ok(SweepReport {
            flows_reaped: count(|s| matches!(s, Step::ReapFlow { .. })),
            backends_freed: count(|s| matches!(s, Step::FreeBackend { .. })),
            draining: self.applied.draining.len(),
        })
    }
}

#[cfg(test)]
mod tests;
