//! Maps of the L4 data path: VIPs, routes with double-buffered weighted tables, backends,
//! conntrack and counters.
//!
//! A route's table is `M` slots of backend ids (Maglev, built in userspace). `TABLES` holds two
//! halves per route; userspace fills the inactive half, then flips `RouteMeta::active` with one
//! 4-byte write, so a packet sees the old table or the new one, never a mix.

/// Most L4 routes (VIPs may share a route).
pub const MAX_ROUTES: u32 = 32;
/// Largest table a route may have (the Maglev M for large sets). Smaller M use a prefix of it.
pub const MAX_TABLE_SIZE: u32 = 65537;
/// Slots per route in `TABLES`: two halves of `MAX_TABLE_SIZE`.
pub const ROUTE_TABLE_STRIDE: u32 = 2 * MAX_TABLE_SIZE;
pub const TABLES_LEN: u32 = MAX_ROUTES * ROUTE_TABLE_STRIDE;
/// Backend ids are indices into `BACKENDS`.
pub const MAX_BACKENDS: u32 = 4096;
pub const MAX_VIPS: u32 = 1024;
/// Default conntrack size (flows, both directions count one entry each).
pub const DEFAULT_CONNTRACK_ENTRIES: u32 = 262_144;
/// Size of each half-open table (`HALF_OPEN`, `HALF_OPEN_V4`): flows a SYN (or a first UDP
/// datagram, or a recreation) started and the backend has not confirmed yet. Small on purpose:
/// a flood churns this table, never conntrack. A real handshake is confirmed within a round
/// trip, long before 65,536 newer half-open flows could push it out.
pub const HALF_OPEN_ENTRIES: u32 = 65_536;
/// Sources whose new-flow rate is tracked (`SOURCE_RATE`, an LRU: a spoofed flood churns it,
/// and a source pushed out starts again with a full bucket).
pub const SOURCE_RATE_ENTRIES: u32 = 65_536;

/// A table slot holding this id rejects the connection (TCP RST, UDP drop): the share of
/// invalid or endpoint-less backendRefs, which must not be redistributed.
pub const REJECT: u32 = u32::MAX;

pub const VIPS: &str = "VIPS";
pub const ROUTES: &str = "ROUTES";
pub const TABLES: &str = "TABLES";
pub const BACKENDS: &str = "BACKENDS";
/// IPv6 flows, keyed by [`FlowKey`].
pub const CONNTRACK: &str = "CONNTRACK";
/// IPv4 flows, keyed by [`FlowKey4`].
pub const CONNTRACK_V4: &str = "CONNTRACK_V4";
/// IPv6 flows not confirmed yet, keyed and valued like `CONNTRACK` (both directions).
pub const HALF_OPEN: &str = "HALF_OPEN";
/// IPv4 flows not confirmed yet, keyed and valued like `CONNTRACK_V4`.
pub const HALF_OPEN_V4: &str = "HALF_OPEN_V4";
/// Per-source token buckets for new flows, keyed by the 16-byte (v4-mapped) source address.
pub const SOURCE_RATE: &str = "SOURCE_RATE";
/// Per-CPU [`FloodWindow`]: new half-open flows in the current second.
pub const FLOOD_WINDOW: &str = "FLOOD_WINDOW";
pub const ROUTE_STATS: &str = "ROUTE_STATS";
pub const BACKEND_STATS: &str = "BACKEND_STATS";
pub const L4_DROPS: &str = "L4_DROPS";
/// One [`L4Config`], written by the agent.
pub const L4_CONFIG: &str = "L4_CONFIG";
pub const TC_PROGRAM: &str = "splitter_tc_egress";
/// TC ingress: sends what XDP marked (see [`XdpMark`]) out of the node.
pub const TC_INGRESS_PROGRAM: &str = "splitter_tc_ingress";
/// Test-only tcx programs that count the IPv4 TCP packets they see and pass them on, in the
/// order of their slot in [`TEST_HOOK_COUNTS`]: ingress first, ingress last, egress first,
/// egress last. The agent never attaches them.
pub const TEST_COUNT_PROGRAMS: [&str; 4] = [
    "splitter_test_count_in_first",
    "splitter_test_count_in_last",
    "splitter_test_count_eg_first",
    "splitter_test_count_eg_last",
];
/// Per-CPU u64 counters of the [`TEST_COUNT_PROGRAMS`]; not pinned.
pub const TEST_HOOK_COUNTS: &str = "TEST_HOOK_COUNTS";

/// Index of slot `slot` of half `half` of route `route` in `TABLES`.
pub const fn table_index(route: u32, half: u32, slot: u32) -> u32 {
    route * ROUTE_TABLE_STRIDE + half * MAX_TABLE_SIZE + slot
}

/// Key of `VIPS`: the listener address as the client names it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    /// IPv6, or IPv4 mapped into `::ffff:0:0/96`.
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipValue {
    pub route_id: u32,
    /// `VIP_DEDICATED` or 0.
    pub flags: u32,
}

/// `VipValue::flags`: the VIP is not one of the node's own addresses, so every packet to it is
/// ours: a non-SYN conntrack miss (agent restart, LRU eviction) re-selects and recreates the
/// flow. On a node address such a packet may belong to a host socket and passes untouched.
pub const VIP_DEDICATED: u32 = 1;

/// Value of `ROUTES`, indexed by route id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteMeta {
    /// Slots in the table (Maglev M); 0 = route not programmed (its VIPs reject).
    pub table_size: u32,
    /// Which half of the route's `TABLES` stride is live: 0 or 1.
    pub active: u32,
    /// Bumped on every publish, for operators and tests.
    pub generation: u32,
    pub _pad: u32,
}

pub const BACKEND_EMPTY: u8 = 0;
/// Takes new connections (from table slots) and serves established ones.
pub const BACKEND_ACTIVE: u8 = 1;
/// Out of every table: serves established connections only.
pub const BACKEND_DRAINING: u8 = 2;

/// Value of `BACKENDS`, indexed by backend id. Aligned to 8 so the kernel compares and copies
/// the address in two words rather than sixteen bytes.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    /// `BACKEND_EMPTY`, `BACKEND_ACTIVE` or `BACKEND_DRAINING`.
    pub state: u8,
    /// `BACKEND_FLAG_REMOTE` or 0.
    pub flags: u8,
    /// Explicit, so no byte of a value written to the kernel is uninitialised.
    pub _reserved: u32,
}

/// `Backend::flags`: the backend runs on another node. New flows to it are source-NATed to this
/// node's address and a port of the reserved range (see [`L4Config`]), so its replies come back
/// through this node instead of going straight to a client that would drop them.
pub const BACKEND_FLAG_REMOTE: u8 = 1;

/// Value of the one-entry `L4_CONFIG` array: what the kernel needs to source-NAT flows to remote
/// backends. Written by the agent at start; all zero (no SNAT address) until then, and flows to
/// remote backends are rejected meanwhile.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L4Config {
    /// This node's IPv4 SNAT address, v4-mapped (valid with `CONFIG_SNAT_V4`).
    pub snat_v4: [u8; 16],
    /// This node's IPv6 SNAT address (valid with `CONFIG_SNAT_V6`).
    pub snat_v6: [u8; 16],
    /// The reserved source-port range, inclusive, host byte order; `port_min <= port_max`.
    pub port_min: u16,
    pub port_max: u16,
    pub flags: u32,
    /// New half-open flows per second, per CPU, above which the node counts as under flood: a
    /// non-SYN conntrack miss then starts no flow (it is dropped; the sender retransmits once
    /// the flood is over). 0: never under flood.
    pub flood_threshold: u32,
    /// New flows per second one source address may start (token bucket refill); 0: no limit.
    pub source_rate: u32,
    /// The bucket's size: how many new flows a source may start at once.
    pub source_burst: u32,
    pub _pad: u32,
}

/// Defaults the agent writes (flags `--flood-threshold`, `--new-flows-per-source`,
/// `--new-flows-burst`).
pub const DEFAULT_FLOOD_THRESHOLD: u32 = 20_000;
pub const DEFAULT_SOURCE_RATE: u32 = 10_000;
pub const DEFAULT_SOURCE_BURST: u32 = 20_000;

/// Value of the per-CPU `FLOOD_WINDOW` array (one slot): how many half-open flows this CPU
/// created since `start_ns` (`bpf_ktime_get_ns`); the window restarts every second.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodWindow {
    pub start_ns: u64,
    pub new_flows: u64,
}

/// Value of `SOURCE_RATE`: a token bucket in nano-tokens (one new flow costs
/// [`NANO_TOKENS_PER_FLOW`]), refilled by `source_rate` per second of `bpf_ktime_get_ns`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceBucket {
    pub nano_tokens: u64,
    pub last_ns: u64,
}

pub const NANO_TOKENS_PER_FLOW: u64 = 1_000_000_000;

pub const CONFIG_SNAT_V4: u32 = 1;
pub const CONFIG_SNAT_V6: u32 = 2;
/// `L4Config::flags`: ICMP errors about tracked flows pass untouched instead of being
/// translated. The agent never sets it: it exists so tests can show what the translation buys
/// (and as an escape hatch an operator can flip in the pinned map).
pub const CONFIG_ICMP_UNTRANSLATED: u32 = 4;

/// How many ports a new SNAT flow tries before it is rejected: a bounded loop for the verifier,
/// and enough that a busy range still finds a free port.
pub const SNAT_PORT_TRIES: u32 = 16;

/// What XDP leaves in the metadata area in front of a packet it passes to the stack but wants
/// sent out by the TC ingress program instead: a packet with one of this node's addresses as
/// source would otherwise be dropped as a martian by IP input, and XDP_TX fails on veth.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpMark {
    /// `XDP_MARK_MAGIC | kind`.
    pub word: u32,
}

/// High 24 bits of [`XdpMark::word`]: tells our mark from metadata another program left.
pub const XDP_MARK_MAGIC: u32 = 0x5a1e_7700;
pub const XDP_MARK_KIND_MASK: u32 = 0xff;
/// A RST built in place: send it back out of the interface it came in on.
pub const XDP_MARK_BOUNCE: u32 = 1;
/// A translated SNAT leg: route it (FIB lookup) and send it out with neighbour resolution.
pub const XDP_MARK_ROUTE: u32 = 2;

pub const DIR_FORWARD: u8 = 0;
pub const DIR_REPLY: u8 = 1;

/// Key of a conntrack map, as the packet carries it. Forward: (client, VIP); reply: (backend,
/// client). `N` is the address length: IPv4 flows live in `CONNTRACK_V4` with 16-byte keys,
/// IPv6 flows in `CONNTRACK` with 40-byte keys. The established path's cost is mostly this
/// lookup, and hashing and comparing the short key is what keeps IPv4, the common case, cheap.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKeyOf<const N: usize> {
    pub src: [u8; N],
    pub dst: [u8; N],
    /// Host byte order.
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    /// `DIR_FORWARD` or `DIR_REPLY`.
    pub dir: u8,
    pub _pad: [u8; 2],
}

/// Key of `CONNTRACK` (IPv6).
pub type FlowKey = FlowKeyOf<16>;
/// Key of `CONNTRACK_V4`: the IPv4 addresses only.
pub type FlowKey4 = FlowKeyOf<4>;

impl<const N: usize> Default for FlowKeyOf<N> {
    fn default() -> Self {
        Self {
            src: [0; N],
            dst: [0; N],
            src_port: 0,
            dst_port: 0,
            proto: 0,
            dir: 0,
            _pad: [0; 2],
        }
    }
}

/// Value of `CONNTRACK`: where to rewrite to. Forward entries name the backend; reply entries
/// name the VIP the client used. SNAT flows (`FLOW_SNAT`) rewrite the other address too:
/// forward entries carry this node's SNAT address and port as the new source in `nat_addr`
/// and `nat_port`, reply entries the client as the new destination.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowValue {
    pub addr: [u8; 16],
    /// Host byte order.
    pub port: u16,
    /// What the rewrite adds to the IPv4 header checksum (`csum::delta` of the old address
    /// words to the new ones; 0 for IPv6). Fixed for the flow's life, so the established path
    /// does no checksum arithmetic beyond one addition. Set for forward entries and for reply
    /// entries of SNAT flows (local flows' replies are rewritten by TC's checksum helpers).
    pub l3_csum_delta: u16,
    pub backend_id: u32,
    pub route_id: u32,
    /// The same for the TCP/UDP checksum (addresses of the pseudo-header and the ports).
    pub l4_csum_delta: u16,
    /// `FLOW_CLOSING`, `FLOW_SNAT`.
    pub flags: u8,
    pub _pad: u8,
    /// SNAT flows: forward, this node's SNAT address (the new source); reply, the client (the
    /// new destination). Zero otherwise.
    pub nat_addr: [u8; 16],
    /// Host byte order.
    pub nat_port: u16,
    pub _pad2: u16,
    /// Half-open reply entries of TCP flows with `FLOW_SYN_ACK_SEEN`: the sequence number of
    /// the backend's SYN-ACK. The client's ACK must acknowledge exactly this + 1 to confirm the
    /// flow, which a spoofed source, never seeing the SYN-ACK, cannot do but by chance.
    pub syn_ack_seq: u32,
}

impl<const N: usize> FlowKeyOf<N> {
    /// The key of the other direction of the flow this entry (`self` -> `value`) belongs to:
    /// a forward entry's reply key (backend -> client) or a reply entry's forward key
    /// (client -> VIP). The kernel inserts both together; userspace removes both together.
    pub fn twin(&self, value: &FlowValue) -> Self {
        // Values hold 16-byte addresses, IPv4 ones v4-mapped: the address is the last N bytes.
        let narrow = |a: &[u8; 16]| {
            let mut out = [0u8; N];
            out.copy_from_slice(&a[16 - N..]);
            out
        };
        let addr = narrow(&value.addr);
        let snat = value.flags & FLOW_SNAT != 0;
        if self.dir == DIR_FORWARD {
            // (client -> VIP) to backend: the reply is (backend -> client), or (backend ->
            // SNAT address) when the flow is source-NATed.
            let (dst, dst_port) = if snat {
                (narrow(&value.nat_addr), value.nat_port)
            } else {
                (self.src, self.src_port)
            };
            Self {
                src: addr,
                dst,
                src_port: value.port,
                dst_port,
                proto: self.proto,
                dir: DIR_REPLY,
                _pad: [0; 2],
            }
        } else {
            // (backend -> client or SNAT address) to VIP: the forward key is (client -> VIP);
            // a SNAT reply entry names the client, which its key does not hold.
            let (src, src_port) = if snat {
                (narrow(&value.nat_addr), value.nat_port)
            } else {
                (self.dst, self.dst_port)
            };
            Self {
                src,
                dst: addr,
                src_port,
                dst_port: value.port,
                proto: self.proto,
                dir: DIR_FORWARD,
                _pad: [0; 2],
            }
        }
    }
}

/// `FlowValue::flags`: the connection began to close (TCP FIN or RST). Userspace reaps such
/// entries after a grace period (see the agent's conntrack reaper); the kernel never deletes.
pub const FLOW_CLOSING: u8 = 1;
/// `FlowValue::flags`: both addresses are rewritten (a flow to a remote backend).
pub const FLOW_SNAT: u8 = 2;
/// `FlowValue::flags`, half-open reply entries: the backend's SYN-ACK went by (`syn_ack_seq`).
pub const FLOW_SYN_ACK_SEEN: u8 = 4;
/// `FlowValue::flags`, half-open entries: recreated from a non-SYN conntrack miss, so there is
/// no handshake to check; the backend's first reply that is not a RST confirms the flow (a
/// backend answers a packet of a connection it does not know with a RST).
pub const FLOW_RECREATED: u8 = 8;

/// Per-route and per-backend counters (per CPU; userspace sums).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowStats {
    pub packets: u64,
    pub bytes: u64,
    /// Flows that selected from the table (new conntrack entries).
    pub new_flows: u64,
    /// Flows answered with RST or dropped because their slot is REJECT.
    pub rejects: u64,
}

/// Index into `L4_DROPS`: why the L4 path did not forward a VIP packet (or did something
/// noteworthy).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum L4Event {
    /// TCP connection to a REJECT slot, answered with RST.
    RejectRst = 0,
    /// UDP datagram to a REJECT slot, dropped.
    RejectDrop = 1,
    /// VIP whose route has no table yet (or an empty slot): rejected like REJECT.
    NoTable = 2,
    /// Conntrack named a backend that is gone: TCP gets RST, UDP re-selects.
    BackendGone = 3,
    /// A non-SYN TCP packet with no conntrack entry (agent restart with lost state, LRU eviction):
    /// selected from the current table.
    NonSynMiss = 4,
    /// IPv4 fragment or IPv4 with options to a VIP: passed to the stack untouched.
    PassedUnparsed = 5,
    /// Reject of a SYN that cannot be answered in place (IPv4 options, TCP payload): dropped.
    RejectDropTcp = 6,
    /// A new flow to a remote backend found no free port in the SNAT range: rejected.
    SnatPortsExhausted = 7,
    /// A non-SYN conntrack miss on a dedicated VIP whose table names a remote backend: the
    /// flow cannot be recreated (its SNAT port would differ), so it is answered with RST.
    SnatFlowLost = 8,
    /// A new flow to a remote backend with no SNAT address of its family configured: rejected.
    SnatNoAddress = 9,
    /// A non-SYN conntrack miss on a node address: not ours, passed to the stack untouched.
    NonSynMissPassed = 10,
    /// XDP could not write its mark in front of a packet (no metadata room): dropped.
    MarkFailed = 11,
    /// TC ingress found no route (or no usable one) for a translated SNAT leg: dropped.
    RouteFailed = 12,
    /// TC ingress could not redirect a marked packet: dropped.
    RedirectFailed = 13,
    /// An ICMP error (unreachable, fragmentation needed / packet too big, time exceeded) about
    /// a packet of a tracked flow, translated so it reaches the other party in terms it knows.
    IcmpTranslated = 14,
    /// An ICMP error whose quoted packet belongs to no tracked flow: passed untouched.
    IcmpUntracked = 15,
    /// A new flow entered a half-open table (SYN, first UDP datagram, or a recreation).
    HalfOpenCreated = 16,
    /// A half-open flow was confirmed (TCP: the client acknowledged the backend's SYN-ACK;
    /// UDP and recreated flows: the backend answered) and moved to conntrack.
    Confirmed = 17,
    /// A non-SYN conntrack miss on a dedicated VIP while this CPU is under flood: dropped
    /// instead of recreated.
    NonSynMissFlood = 18,
    /// A new flow from a source over its rate (`source_rate`, `source_burst`): dropped.
    SourceRateLimited = 19,
}

impl L4Event {
    pub const COUNT: u32 = 20;
    pub const ALL: [L4Event; Self::COUNT as usize] = [
        L4Event::RejectRst,
        L4Event::RejectDrop,
        L4Event::NoTable,
        L4Event::BackendGone,
        L4Event::NonSynMiss,
        L4Event::PassedUnparsed,
        L4Event::RejectDropTcp,
        L4Event::SnatPortsExhausted,
        L4Event::SnatFlowLost,
        L4Event::SnatNoAddress,
        L4Event::NonSynMissPassed,
        L4Event::MarkFailed,
        L4Event::RouteFailed,
        L4Event::RedirectFailed,
        L4Event::IcmpTranslated,
        L4Event::IcmpUntracked,
        L4Event::HalfOpenCreated,
        L4Event::Confirmed,
        L4Event::NonSynMissFlood,
        L4Event::SourceRateLimited,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            L4Event::RejectRst => "reject_rst",
            L4Event::RejectDrop => "reject_drop",
            L4Event::NoTable => "no_table",
            L4Event::BackendGone => "backend_gone",
            L4Event::NonSynMiss => "non_syn_miss",
            L4Event::PassedUnparsed => "passed_unparsed",
            L4Event::RejectDropTcp => "reject_drop_tcp",
            L4Event::SnatPortsExhausted => "snat_ports_exhausted",
            L4Event::SnatFlowLost => "snat_flow_lost",
            L4Event::SnatNoAddress => "snat_no_address",
            L4Event::NonSynMissPassed => "non_syn_miss_passed",
            L4Event::MarkFailed => "mark_failed",
            L4Event::RouteFailed => "route_failed",
            L4Event::RedirectFailed => "redirect_failed",
            L4Event::IcmpTranslated => "icmp_translated",
            L4Event::IcmpUntracked => "icmp_untracked",
            L4Event::HalfOpenCreated => "half_open_created",
            L4Event::Confirmed => "confirmed",
            L4Event::NonSynMissFlood => "non_syn_miss_flood",
            L4Event::SourceRateLimited => "source_rate_limited",
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integer fields only, explicit padding: every bit pattern is valid.
    unsafe impl aya::Pod for super::VipKey {}
    // SAFETY: as for VipKey.
    unsafe impl aya::Pod for super::VipValue {}
    // SAFETY: as for VipKey.
    unsafe impl aya::Pod for super::RouteMeta {}
    // SAFETY: as for VipKey.
    unsafe impl aya::Pod for super::Backend {}
    // SAFETY: as for VipKey, for every N.
    unsafe impl<const N: usize> aya::Pod for super::FlowKeyOf<N> {}
    // SAFETY: as for VipKey.
    unsafe impl aya::Pod for super::FlowValue {}
    // SAFETY: as for VipKey.
    unsafe impl aya::Pod for super::FlowStats {}
    // SAFETY: as for VipKey.
    unsafe impl aya::Pod for super::L4Config {}
    // SAFETY: as for VipKey.
    unsafe impl aya::Pod for super::FloodWindow {}
    // SAFETY: as for VipKey.
    unsafe impl aya::Pod for super::SourceBucket {}
}

#[cfg(test)]
mod layout {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn sizes_and_offsets_are_pinned() {
        assert_eq!(size_of::<VipKey>(), 20);
        assert_eq!(offset_of!(VipKey, port), 16);
        assert_eq!(offset_of!(VipKey, proto), 18);
        assert_eq!(size_of::<VipValue>(), 8);
        assert_eq!(size_of::<RouteMeta>(), 16);
        assert_eq!(offset_of!(RouteMeta, active), 4);
        assert_eq!(size_of::<Backend>(), 24);
        assert_eq!(offset_of!(Backend, state), 18);
        assert_eq!(size_of::<FlowKey>(), 40);
        assert_eq!(offset_of!(FlowKey, src_port), 32);
        assert_eq!(offset_of!(FlowKey, dst_port), 34);
        assert_eq!(offset_of!(FlowKey, proto), 36);
        assert_eq!(offset_of!(FlowKey, dir), 37);
        assert_eq!(size_of::<FlowKey4>(), 16);
        assert_eq!(offset_of!(FlowKey4, src_port), 8);
        assert_eq!(offset_of!(FlowKey4, proto), 12);
        assert_eq!(offset_of!(FlowKey4, dir), 13);
        assert_eq!(size_of::<FlowValue>(), 56);
        assert_eq!(offset_of!(FlowValue, backend_id), 20);
        assert_eq!(offset_of!(FlowValue, l4_csum_delta), 28);
        assert_eq!(offset_of!(FlowValue, flags), 30);
        assert_eq!(offset_of!(FlowValue, nat_addr), 32);
        assert_eq!(offset_of!(FlowValue, nat_port), 48);
        assert_eq!(offset_of!(FlowValue, syn_ack_seq), 52);
        assert_eq!(size_of::<L4Config>(), 56);
        assert_eq!(offset_of!(L4Config, port_min), 32);
        assert_eq!(offset_of!(L4Config, flags), 36);
        assert_eq!(offset_of!(L4Config, flood_threshold), 40);
        assert_eq!(size_of::<FloodWindow>(), 16);
        assert_eq!(size_of::<SourceBucket>(), 16);
        assert_eq!(size_of::<XdpMark>(), 4);
        assert_eq!(size_of::<FlowStats>(), 32);
    }

    /// A forward key's twin is the reply key, and the reply key's twin the forward key again;
    /// `widen` is how a value stores an address of the key's family.
    fn check_twins<const N: usize>(
        client: [u8; N],
        vip: [u8; N],
        backend: [u8; N],
        widen: impl Fn([u8; N]) -> [u8; 16],
    ) {
        let fwd = FlowKeyOf::<N> {
            src: client,
            dst: vip,
            src_port: 40000,
            dst_port: 80,
            proto: 6,
            dir: DIR_FORWARD,
            _pad: [0; 2],
        };
        let to_backend = FlowValue {
            addr: widen(backend),
            port: 8080,
            ..FlowValue::default()
        };
        let rev = fwd.twin(&to_backend);
        assert_eq!((rev.src, rev.dst), (backend, client));
        assert_eq!(
            (rev.src_port, rev.dst_port, rev.dir),
            (8080, 40000, DIR_REPLY)
        );
        let to_vip = FlowValue {
            addr: widen(vip),
            port: 80,
            ..FlowValue::default()
        };
        assert_eq!(rev.twin(&to_vip), fwd);
    }

    #[test]
    fn twins_pair_up_both_directions() {
        check_twins([1u8; 16], [2u8; 16], [3u8; 16], |a| a);
    }

    #[test]
    fn snat_twins_pair_backend_and_snat_address() {
        let fwd = FlowKeyOf::<16> {
            src: [1; 16],
            dst: [2; 16],
            src_port: 40000,
            dst_port: 80,
            proto: 6,
            dir: DIR_FORWARD,
            _pad: [0; 2],
        };
        let to_backend = FlowValue {
            addr: [3; 16],
            port: 8080,
            flags: FLOW_SNAT,
            nat_addr: [4; 16],
            nat_port: 61000,
            ..FlowValue::default()
        };
        let rev = fwd.twin(&to_backend);
        assert_eq!((rev.src, rev.dst), ([3; 16], [4; 16]));
        assert_eq!(
            (rev.src_port, rev.dst_port, rev.dir),
            (8080, 61000, DIR_REPLY)
        );
        let to_vip_and_client = FlowValue {
            addr: [2; 16],
            port: 80,
            flags: FLOW_SNAT | FLOW_CLOSING,
            nat_addr: [1; 16],
            nat_port: 40000,
            ..FlowValue::default()
        };
        assert_eq!(rev.twin(&to_vip_and_client), fwd);
    }

    #[test]
    fn ipv4_twins_take_the_mapped_address() {
        let mapped = |a: [u8; 4]| {
            let mut m = [0u8; 16];
            m[10] = 0xff;
            m[11] = 0xff;
            m[12..].copy_from_slice(&a);
            m
        };
        check_twins([10, 0, 0, 1], [10, 0, 0, 2], [10, 1, 0, 2], mapped);
    }

    #[test]
    fn table_halves_do_not_overlap() {
        assert_eq!(table_index(0, 1, 0), MAX_TABLE_SIZE);
        assert_eq!(table_index(1, 0, 0), ROUTE_TABLE_STRIDE);
        assert_eq!(
            table_index(MAX_ROUTES - 1, 1, MAX_TABLE_SIZE - 1),
            TABLES_LEN - 1
        );
    }

    #[test]
    fn events_are_dense_indices() {
        for (i, e) in L4Event::ALL.iter().enumerate() {
            assert_eq!(*e as u32, i as u32);
        }
    }
}
