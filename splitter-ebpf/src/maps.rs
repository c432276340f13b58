//! The maps of the object. Names, key and value types come from `splitter-common`.

use aya_ebpf::{
    btf_maps::{PerCpuArray, PerCpuHashMap},
    macros::btf_map,
};
use splitter_common::{DestKey, DestStats, ParseOutcome, maps::DEST_STATS_MAX_ENTRIES};

#[btf_map]
pub static DEST_STATS: PerCpuHashMap<DestKey, DestStats, { DEST_STATS_MAX_ENTRIES as usize }> =
    PerCpuHashMap::new();

#[btf_map]
pub static PARSE_STATS: PerCpuArray<u64, { ParseOutcome::COUNT as usize }> = PerCpuArray::new();

use aya_ebpf::btf_maps::{Array, HashMap, LruHashMap};
use splitter_common::l4::{
    Backend, DEFAULT_CONNTRACK_ENTRIES, FloodWindow, FlowKey, FlowKey4, FlowStats, FlowValue,
    HALF_OPEN_ENTRIES, L4Config, L4Event, MAX_BACKENDS, MAX_ROUTES, MAX_VIPS, RouteMeta,
    SOURCE_RATE_ENTRIES, SourceBucket, TABLES_LEN, VipKey, VipValue,
};

#[btf_map]
pub static VIPS: HashMap<VipKey, VipValue, { MAX_VIPS as usize }> = HashMap::new();

#[btf_map]
pub static ROUTES: Array<RouteMeta, { MAX_ROUTES as usize }> = Array::new();

/// Backend id per slot; two halves per route (see `splitter_common::l4`).
#[btf_map]
pub static TABLES: Array<u32, { TABLES_LEN as usize }> = Array::new();

#[btf_map]
pub static BACKENDS: Array<Backend, { MAX_BACKENDS as usize }> = Array::new();

/// IPv6 flows. One shared LRU (not per-CPU): on veth the receiving CPU follows the sender, so
/// a flow's packets may arrive on different CPUs.
#[btf_map]
pub static CONNTRACK: LruHashMap<FlowKey, FlowValue, { DEFAULT_CONNTRACK_ENTRIES as usize }> =
    LruHashMap::new();

/// IPv4 flows, with keys a third the size (see `FlowKeyOf`); shared like `CONNTRACK`.
#[btf_map]
pub static CONNTRACK_V4: LruHashMap<FlowKey4, FlowValue, { DEFAULT_CONNTRACK_ENTRIES as usize }> =
    LruHashMap::new();

/// IPv6 flows a SYN (first datagram, recreation) started and the backend has not confirmed:
/// both directions, like `CONNTRACK`, until `half_open` moves them there. A spoofed flood only
/// ever churns this table.
#[btf_map]
pub static HALF_OPEN: LruHashMap<FlowKey, FlowValue, { HALF_OPEN_ENTRIES as usize }> =
    LruHashMap::new();

/// IPv4 half-open flows, keyed like `CONNTRACK_V4`.
#[btf_map]
pub static HALF_OPEN_V4: LruHashMap<FlowKey4, FlowValue, { HALF_OPEN_ENTRIES as usize }> =
    LruHashMap::new();

/// New-flow token buckets per source address (16 bytes, IPv4 v4-mapped). Shared across CPUs
/// and updated without atomics: two CPUs racing on one source may each spend the same token,
/// which bends the limit by a flow or two and never blocks a source that is under it.
#[btf_map]
pub static SOURCE_RATE: LruHashMap<[u8; 16], SourceBucket, { SOURCE_RATE_ENTRIES as usize }> =
    LruHashMap::new();

/// New half-open flows this CPU created in the current second (Katran's per-CPU flood
/// detection: no cross-CPU contention on the path every new flow takes).
#[btf_map]
pub static FLOOD_WINDOW: PerCpuArray<FloodWindow, 1> = PerCpuArray::new();

#[btf_map]
pub static ROUTE_STATS: PerCpuArray<FlowStats, { MAX_ROUTES as usize }> = PerCpuArray::new();

#[btf_map]
pub static BACKEND_STATS: PerCpuArray<FlowStats, { MAX_BACKENDS as usize }> = PerCpuArray::new();

/// Per-CPU scratch space for the parsed packet: slot 0 for XDP, slot 1 for TC egress, slot 2
/// for TC ingress (TC egress runs with bottom halves disabled, so XDP never interrupts it on the
/// same CPU, but separate slots make that argument unnecessary).
#[btf_map]
pub static SCRATCH: PerCpuArray<crate::parse::PacketMeta, 3> = PerCpuArray::new();

/// The SNAT addresses and port range (one entry, written by the agent).
#[btf_map]
pub static L4_CONFIG: Array<L4Config, 1> = Array::new();

#[btf_map]
pub static L4_DROPS: PerCpuArray<u64, { L4Event::COUNT as usize }> = PerCpuArray::new();

/// Packets seen by the test-only counting programs (`splitter_test_count_*`), one slot each.
/// Never pinned: only the kernel tests read it, through the object they loaded.
#[btf_map]
pub static TEST_HOOK_COUNTS: PerCpuArray<u64, 4> = PerCpuArray::new();
