//! Reading the L4 state back from the kernel: routes with the share each backend holds in the
//! live table half, conntrack size, counters. What `splitter inspect` prints.

use std::{collections::BTreeMap, net::SocketAddr};

use aya::maps::{Array, HashMap, Map, MapData, MapError, PerCpuArray};
use serde::Serialize;
use splitter_common::l4::{
    BACKEND_STATS, BACKENDS, Backend, CONNTRACK, CONNTRACK_V4, DIR_FORWARD, FLOOD_WINDOW,
    FLOW_SNAT, FloodWindow, FlowKeyOf, FlowStats, FlowValue, HALF_OPEN, HALF_OPEN_V4, L4_CONFIG,
    L4_DROPS, L4Config, L4Event, MAX_TABLE_SIZE, REJECT, ROUTE_STATS, ROUTES, RouteMeta, TABLES,
    VIPS, VipKey, VipValue, table_index,
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendShare {
    pub backend_id: u32,
    /// `None` for the REJECT share.
    pub addr: Option<SocketAddr>,
    pub state: &'static str,
    /// On another node: its flows are source-NATed.
    pub remote: bool,
    pub slots: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteState {
    pub route_id: u32,
    /// `addr:port/proto` of each VIP on this route.
    pub vips: Vec<String>,
    pub table_size: u32,
    pub active_half: u32,
    pub generation: u32,
    pub shares: Vec<BackendShare>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub rejects: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct L4State {
    pub routes: Vec<RouteState>,
    /// Forward conntrack entries (one per tracked flow).
    pub flows: usize,
    /// Of those, flows to remote backends (source-NATed).
    pub snat_flows: usize,
    /// Flows started but not confirmed yet (forward entries of the half-open tables).
    pub half_open_flows: usize,
    /// The flood guards as the kernel has them (`L4_CONFIG`).
    pub flood_threshold: u32,
    pub source_rate: u32,
    pub source_burst: u32,
    /// New half-open flows per CPU in its current one-second window (0 for a window that is
    /// over), and how many CPUs are at or over `flood_threshold`, i.e. under flood now.
    pub new_flows_per_cpu: Vec<u64>,
    pub cpus_under_flood: usize,
    pub events: Vec<(&'static str, u64)>,
}

fn sum(stats: &[FlowStats]) -> FlowStats {
    stats.iter().fold(FlowStats::default(), |a, s| FlowStats {
        packets: a.packets + s.packets,
        bytes: a.bytes + s.bytes,
        new_flows: a.new_flows + s.new_flows,
        rejects: a.rejects + s.rejects,
    })
}

fn state_name(b: &Backend) -> &'static str {
    match b.state {
        splitter_common::l4::BACKEND_ACTIVE => "active",
        splitter_common::l4::BACKEND_DRAINING => "draining",
        _ => "empty",
    }
}

fn vip_text(k: &VipKey) -> String {
    let ip = std::net::IpAddr::from(k.addr).to_canonical();
    let proto = match k.proto {
        splitter_common::counters::IPPROTO_TCP => "tcp",
        splitter_common::counters::IPPROTO_UDP => "udp",
        _ => "?",
    };
    format!("{}/{proto}", SocketAddr::new(ip, k.port))
}

/// Reads the L4 maps through `open` (pinned maps, or a live object's).
pub fn read_l4_state(
    open: &dyn Fn(&'static str) -> anyhow::Result<Map>,
) -> anyhow::Result<L4State> {
    let vips_map = open(VIPS)?;
    let vips = HashMap::<&MapData, VipKey, VipValue>::try_from(&vips_map)?;
    let mut by_route: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for e in vips.iter() {
        let (k, v) = e?;
        by_route.entry(v.route_id).or_default().push(vip_text(&k));
    }
    let routes_map = open(ROUTES)?;
    let routes = Array::<&MapData, RouteMeta>::try_from(&routes_map)?;
    let tables_map = open(TABLES)?;
    let tables = Array::<&MapData, u32>::try_from(&tables_map)?;
    let backends_map = open(BACKENDS)?;
    let backends = Array::<&MapData, Backend>::try_from(&backends_map)?;
    let rstats_map = open(ROUTE_STATS)?;
    let rstats = PerCpuArray::<&MapData, FlowStats>::try_from(&rstats_map)?;

    let mut out = Vec::new();
    for (route_id, mut vip_names) in by_route {
        vip_names.sort();
        let meta = routes.get(&route_id, 0)?;
        let mut counts: BTreeMap<u32, u32> = BTreeMap::new();
        if meta.table_size > 0 && meta.table_size <= MAX_TABLE_SIZE && meta.active <= 1 {
            for slot in 0..meta.table_size {
                let id = tables.get(&table_index(route_id, meta.active, slot), 0)?;
                *counts.entry(id).or_default() += 1;
            }
        }
        let shares = counts
            .into_iter()
            .map(|(id, slots)| {
                if id == REJECT {
                    return Ok(BackendShare {
                        backend_id: id,
                        addr: None,
                        state: "reject",
                        remote: false,
                        slots,
                    });
                }
                let b = backends.get(&id, 0)?;
                let ip = std::net::IpAddr::from(b.addr).to_canonical();
                Ok(BackendShare {
                    backend_id: id,
                    addr: Some(SocketAddr::new(ip, b.port)),
                    state: state_name(&b),
                    remote: b.flags & splitter_common::l4::BACKEND_FLAG_REMOTE != 0,
                    slots,
                })
            })
            .collect::<Result<Vec<_>, MapError>>()?;
        let s = sum(&rstats.get(&route_id, 0)?);
        out.push(RouteState {
            route_id,
            vips: vip_names,
            table_size: meta.table_size,
            active_half: meta.active,
            generation: meta.generation,
            shares,
            packets: s.packets,
            bytes: s.bytes,
            new_flows: s.new_flows,
            rejects: s.rejects,
        });
    }

    let (v6, v6_snat) = forward_entries::<16>(&open(CONNTRACK)?)?;
    let (v4, v4_snat) = forward_entries::<4>(&open(CONNTRACK_V4)?)?;
    let (h6, _) = forward_entries::<16>(&open(HALF_OPEN)?)?;
    let (h4, _) = forward_entries::<4>(&open(HALF_OPEN_V4)?)?;
    let config_map = open(L4_CONFIG)?;
    let config: L4Config = Array::<&MapData, L4Config>::try_from(&config_map)?.get(&0, 0)?;
    let flood_map = open(FLOOD_WINDOW)?;
    let now = monotonic_ns();
    let new_flows_per_cpu: Vec<u64> = PerCpuArray::<&MapData, FloodWindow>::try_from(&flood_map)?
        .get(&0, 0)?
        .iter()
        .map(|w| {
            // The same clock as the kernel's bpf_ktime_get_ns.
            if now.wrapping_sub(w.start_ns) < 1_000_000_000 {
                w.new_flows
            } else {
                0
            }
        })
        .collect();
    let cpus_under_flood = if config.flood_threshold == 0 {
        0
    } else {
        new_flows_per_cpu
            .iter()
            .filter(|n| **n >= u64::from(config.flood_threshold))
            .count()
    };

    let events = read_events(&open(L4_DROPS)?)?;
    let _ = open(BACKEND_STATS)?; // presence check: a partial pin set means a layout mismatch
    Ok(L4State {
        routes: out,
        flows: v4 + v6,
        snat_flows: v4_snat + v6_snat,
        half_open_flows: h4 + h6,
        flood_threshold: config.flood_threshold,
        source_rate: config.source_rate,
        source_burst: config.source_burst,
        new_flows_per_cpu,
        cpus_under_flood,
        events,
    })
}

/// Every [`L4Event`] counter of `L4_DROPS`, summed over CPUs, by name.
pub fn read_events(map: &Map) -> Result<Vec<(&'static str, u64)>, MapError> {
    let ev = PerCpuArray::<&MapData, u64>::try_from(map)?;
    L4Event::ALL
        .iter()
        .map(|e| Ok((e.name(), ev.get(&(*e as u32), 0)?.iter().sum())))
        .collect()
}

/// Tracked flows in one conntrack map, and how many of them are source-NATed: its forward
/// entries (each flow has one per direction).
fn forward_entries<const N: usize>(map: &Map) -> Result<(usize, usize), MapError> {
    let ct = HashMap::<&MapData, FlowKeyOf<N>, FlowValue>::try_from(map)?;
    let (mut all, mut snat) = (0, 0);
    // Entries may vanish (LRU, reaper) while iterating: those errors are skipped.
    for (k, v) in ct.iter().filter_map(Result::ok) {
        if k.dir == DIR_FORWARD {
            all += 1;
            snat += usize::from(v.flags & FLOW_SNAT != 0);
        }
    }
    Ok((all, snat))
}

fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}
