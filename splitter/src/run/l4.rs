//! The kernel half of `splitter run`: attach to the interfaces, then program every plan's L4
//! listeners.

use std::{
    collections::BTreeSet,
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use splitter_common::l4::{
    CONFIG_SNAT_V4, CONFIG_SNAT_V6, DEFAULT_FLOOD_THRESHOLD, DEFAULT_SOURCE_BURST,
    DEFAULT_SOURCE_RATE, L4Config,
};

use tokio::sync::watch;

use crate::{
    dataplane::ebpf::{
        self, Attachment, KernelObject, L4Actuator, L4Proto, L4RouteProgram, TcAttachMode,
        XdpAttachMode,
    },
    health::KernelHealth,
};
use splitter_plan::plan::{DataplaneListener, Plan, Transport, maglev::WeightedTable};

/// Every address of `ifaces` (what an L4 listener without Gateway addresses serves).
pub fn iface_addresses(ifaces: &[String]) -> anyhow::Result<Vec<IpAddr>> {
    addresses(|name| ifaces.iter().any(|i| i == name))
}

/// Every address of every interface of this node (network namespace): a VIP that is none of
/// them is dedicated.
pub fn node_addresses() -> anyhow::Result<Vec<IpAddr>> {
    addresses(|_| true)
}

fn addresses(wanted: impl Fn(&str) -> bool) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        if !wanted(&ifa.interface_name) {
            continue;
        }
        let Some(addr) = ifa.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            out.push(IpAddr::V4(v4.ip()));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            let ip = v6.ip();
            // Link-local addresses need a scope; a VIP on them would be ambiguous.
            if ip.segments()[0] & 0xffc0 != 0xfe80 {
                out.push(IpAddr::V6(ip));
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

pub(crate) fn program_key(l: &DataplaneListener) -> String {
    let transport = match l.key.transport {
        Transport::Tcp => "tcp",
        Transport::Udp => "udp",
    };
    let addrs: Vec<String> = l.key.addresses.iter().map(ToString::to_string).collect();
    format!("{}/{transport}/{}", l.key.port, addrs.join(","))
}

/// The reserved source ports of SNAT flows (`--snat-ports MIN-MAX`). The default lies above the
/// default ephemeral range (32768-60999) and the NodePort range (30000-32767).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnatPorts {
    pub min: u16,
    pub max: u16,
}

impl Default for SnatPorts {
    fn default() -> Self {
        SnatPorts {
            min: 61000,
            max: 64999,
        }
    }
}

impl fmt::Display for SnatPorts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

impl FromStr for SnatPorts {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (min, max) = s
            .split_once('-')
            .ok_or_else(|| format!("{s:?}: expected MIN-MAX, e.g. 61000-64999"))?;
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|e| format!("{s:?}: port {p:?}: {e}"))
        };
        let (min, max) = (port(min)?, port(max)?);
        if min < 1024 {
            return Err(format!(
                "{s:?}: ports below 1024 are privileged and may belong to host services"
            ));
        }
        if min > max {
            return Err(format!("{s:?}: MIN must not exceed MAX"));
        }
        Ok(SnatPorts { min, max })
    }
}

/// What the kernel needs to source-NAT flows to remote backends: the first IPv4 and the first
/// global IPv6 address of the first interface (`first_iface_addrs`, link-local ones already left
/// out), and the port range. A family without an address rejects its remote flows (counted).
pub fn snat_config(first_iface_addrs: &[IpAddr], ports: SnatPorts) -> L4Config {
    let mut config = L4Config {
        port_min: ports.min,
        port_max: ports.max,
        ..L4Config::default()
    };
    FlowLimits::default().write_into(&mut config);
    if let Some(v4) = first_iface_addrs.iter().find(|a| a.is_ipv4()) {
        config.snat_v4 = ebpf::addr16(*v4);
        config.flags |= CONFIG_SNAT_V4;
    }
    if let Some(v6) = first_iface_addrs
        .iter()
        .find(|a| matches!(a, IpAddr::V6(v6) if !v6.is_loopback()))
    {
        config.snat_v6 = ebpf::addr16(*v6);
        config.flags |= CONFIG_SNAT_V6;
    }
    config
}

/// `ip_local_reserved_ports` with `ports` added, or `None` when it is covered already. What is
/// there stays: other software reserves ports too.
pub fn merge_reserved_ports(current: &str, ports: SnatPorts) -> Option<String> {
    let current = current.trim();
    let covered = current.split(',').any(|r| {
        let (lo, hi) = r.split_once('-').unwrap_or((r, r));
        matches!(
            (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()),
            (Ok(lo), Ok(hi)) if lo <= ports.min && ports.max <= hi
        )
    });
    if covered {
        None
    } else if current.is_empty() {
        Some(ports.to_string())
    } else {
        Some(format!("{current},{ports}"))
    }
}

const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// Keeps local sockets of this network namespace from binding SNAT ports, so a host
/// connection never shares a (backend, port) pair with a SNAT flow.
pub fn reserve_ports(ports: SnatPorts) -> std::io::Result<()> {
    let current = std::fs::read_to_string(RESERVED_PORTS)?;
    if let Some(merged) = merge_reserved_ports(&current, ports) {
        std::fs::write(RESERVED_PORTS, merged)?;
    }
    Ok(())
}

/// What the kernel should run for `plan`. A listener without Gateway addresses serves every
/// address of the interfaces (`iface_addrs`). With `node_name`, an endpoint whose plan names
/// another node is remote (DNAT plus SNAT); without it, or when the plan names no node, every
/// endpoint is local. A VIP that is none of `node_addrs` is dedicated.
pub fn l4_programs(
    plan: &Plan,
    iface_addrs: &[IpAddr],
    node_addrs: &[IpAddr],
    node_name: Option<&str>,
) -> Vec<L4RouteProgram> {
    let mut programs = Vec::new();
    for (l, l4) in plan.l4_listeners() {
        let proto = match l.key.transport {
            Transport::Tcp => L4Proto::Tcp,
            Transport::Udp => L4Proto::Udp,
        };
        let addrs = if l.key.addresses.is_empty() {
            iface_addrs
        } else {
            &l.key.addresses[..]
        };
        let key = program_key(l);
        let mut add = |key: String, table: &WeightedTable, addrs: Vec<IpAddr>| {
            let table = table.slot_endpoints();
            // The kernel does no NAT46/64: a VIP serves the backends of its own family.
            let vips: Vec<(SocketAddr, L4Proto)> = addrs
                .iter()
                .filter(|ip| table.iter().flatten().all(|b| b.is_ipv4() == ip.is_ipv4()))
                .map(|ip| (SocketAddr::new(*ip, l.key.port), proto))
                .collect();
            let remote: BTreeSet<SocketAddr> = table
                .iter()
                .flatten()
                .filter(|b| matches!((node_name, l4.node_of(b)), (Some(me), Some(n)) if n != me))
                .copied()
                .collect();
            let dedicated: BTreeSet<IpAddr> = vips
                .iter()
                .map(|(a, _)| a.ip())
                .filter(|ip| !node_addrs.contains(ip))
                .collect();
            if !table.is_empty() {
                programs.push(L4RouteProgram {
                    key,
                    vips,
                    table,
                    remote,
                    dedicated,
                });
            }
        };
        if l4.table_v6.is_some() {
            // Dual-stack endpoints: one program per family, each with its VIPs and its table.
            let (v4, v6): (Vec<IpAddr>, Vec<IpAddr>) = addrs.iter().partition(|a| a.is_ipv4());
            add(format!("{key}/ipv4"), l4.table_for(true), v4);
            add(format!("{key}/ipv6"), l4.table_for(false), v6);
        } else {
            add(key, &l4.table, addrs.to_vec());
        }
    }
    programs
}

/// What bounds the state a flood can create in the kernel (`--flood-threshold`,
/// `--new-flows-per-source`, `--new-flows-burst`); see the kernel's `half_open` module.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowLimits {
    /// New half-open flows per second per CPU above which a non-SYN conntrack miss is dropped
    /// instead of recreated; 0: never.
    pub flood_threshold: u32,
    /// New flows per second one source address may start; 0: no limit.
    pub source_rate: u32,
    /// How many new flows a source may start at once.
    pub source_burst: u32,
}

impl Default for FlowLimits {
    fn default() -> Self {
        Self {
            flood_threshold: DEFAULT_FLOOD_THRESHOLD,
            source_rate: DEFAULT_SOURCE_RATE,
            source_burst: DEFAULT_SOURCE_BURST,
        }
    }
}

impl FlowLimits {
    pub fn write_into(self, config: &mut L4Config) {
        config.flood_threshold = self.flood_threshold;
        config.source_rate = self.source_rate;
        config.source_burst = self.source_burst;
    }
}

/// What the kernel half needs to start.
#[derive(Clone, Debug)]
pub struct L4Settings {
    pub ifaces: Vec<String>,
    pub pin_dir: PathBuf,
    pub mode: XdpAttachMode,
    pub tc_mode: TcAttachMode,
    pub node_name: Option<String>,
    pub snat_ports: SnatPorts,
    pub flow_limits: FlowLimits,
}

/// How often a kernel half waiting for its interfaces looks again (a cheap check), and the
/// first wait after a failed load or attach.
pub const ATTACH_RETRY: Duration = Duration::from_secs(3);

/// The longest wait between two loads: each one runs the verifier, which costs CPU on a node
/// where attaching keeps failing.
const LOAD_RETRY_MAX: Duration = Duration::from_secs(30);

/// Starts the kernel half and programs every plan, never giving up: while it cannot start
/// (an interface missing, a load or attach refused) the L4 half is off, with the reason in
/// `health` (so on `/readyz`, `/debug/l4` and `/metrics`), and it tries again: every
/// [`ATTACH_RETRY`] while an interface is missing, with a doubling wait up to
/// `LOAD_RETRY_MAX` after a failed load or attach. L7 listeners are not this task's: they
/// serve all along.
pub async fn supervise(
    settings: L4Settings,
    plans: watch::Receiver<Option<Arc<Plan>>>,
    health: KernelHealth,
) {
    let mut last_reason = None;
    let mut load_wait = ATTACH_RETRY;
    loop {
        let missing = settings
            .ifaces
            .iter()
            .find(|i| nix::net::if_::if_nametoindex(i.as_str()).is_err());
        if let Some(missing) = missing {
            let reason = format!("interface {missing} does not exist in this network namespace");
            if last_reason.as_ref() != Some(&reason) {
                tracing::error!(
                    "L4 half off (L7 listeners keep serving; looking again every {}s): {reason}",
                    ATTACH_RETRY.as_secs()
                );
            }
            health.attach_failed(reason.clone());
            last_reason = Some(reason);
            tokio::time::sleep(ATTACH_RETRY).await;
            continue;
        }
        let s = settings.clone();
        let started = tokio::task::spawn_blocking(move || {
            L4Runner::start(
                &s.ifaces,
                &s.pin_dir,
                s.mode,
                s.tc_mode,
                s.node_name,
                s.snat_ports,
                s.flow_limits,
            )
        })
        .await;
        let reason = match started {
            Ok(Ok(runner)) => {
                tracing::info!(ifaces = ?settings.ifaces, "L4 half serving");
                health.attached();
                load_wait = ATTACH_RETRY;
                match runner.follow(plans.clone(), health.clone()).await {
                    Followed::PlansClosed => return,
                    // The programs went with the device; attach again once it is back.
                    Followed::InterfaceLost(reason) => reason,
                }
            }
            // `{e}`, not `{e:#}`: the load errors quote their cause in their own message.
            Ok(Err(e)) => e.to_string(),
            Err(e) => format!("L4 start task: {e}"),
        };
        // Logged when the reason changes, not on every retry.
        if last_reason.as_ref() != Some(&reason) {
            tracing::error!(
                "L4 half off (L7 listeners keep serving; retrying in {}s, then less often): \
                 {reason}",
                load_wait.as_secs()
            );
        }
        health.attach_failed(reason.clone());
        last_reason = Some(reason);
        tokio::time::sleep(load_wait).await;
        load_wait = (load_wait * 2).min(LOAD_RETRY_MAX);
    }
}

/// Why [`L4Runner::follow`] returned.
pub enum Followed {
    /// The agent is stopping.
    PlansClosed,
    /// An interface was deleted (or deleted and created again: a new ifindex). Its programs
    /// went with it; the reason says which.
    InterfaceLost(String),
}

/// The loaded object, its attachments and the actuator.
pub struct L4Runner {
    _object: KernelObject,
    actuator: Arc<Mutex<L4Actuator>>,
    ifaces: Vec<String>,
    /// Each interface's index when the programs were attached to it.
    ifindexes: Vec<u32>,
    node_name: Option<String>,
    snat_ports: SnatPorts,
    flow_limits: FlowLimits,
}

impl L4Runner {
    /// Loads the object (adopting pinned maps under `pin_dir`) and attaches it to every
    /// interface (taking over links an earlier agent pinned under `pin_dir/links`).
    pub fn start(
        ifaces: &[String],
        pin_dir: &Path,
        mode: XdpAttachMode,
        tc_mode: TcAttachMode,
        node_name: Option<String>,
        snat_ports: SnatPorts,
        flow_limits: FlowLimits,
    ) -> anyhow::Result<Self> {
        if let Err(e) = reserve_ports(snat_ports) {
            // SNAT still works; a local socket may just take a port a SNAT flow wanted.
            tracing::warn!("reserving SNAT ports {snat_ports} in {RESERVED_PORTS}: {e}");
        }
        let mut object = ebpf::load_object(Some(pin_dir))?;
        let links: PathBuf = pin_dir.join("links");
        for iface in ifaces {
            let attached = ebpf::attach_pinned(&mut object, iface, &links, mode, tc_mode);
            if let Err(e @ ebpf::LinkPinError::ForeignXdp { .. }) = &attached {
                // Never replaced: the operator decides which program the interface runs.
                tracing::error!(%iface, "{e}");
            }
            match attached? {
                Attachment::New(m) => {
                    tracing::info!(%iface, mode = ?m, "XDP and TC attached, links pinned")
                }
                Attachment::Replaced => {
                    tracing::info!(%iface, "took over pinned links: programs replaced in place")
                }
            }
        }
        let actuator = L4Actuator::new(&mut object)?;
        let ifindexes = ifaces
            .iter()
            .map(|i| nix::net::if_::if_nametoindex(i.as_str()).unwrap_or(0))
            .collect();
        Ok(L4Runner {
            _object: object,
            actuator: Arc::new(Mutex::new(actuator)),
            ifaces: ifaces.to_vec(),
            ifindexes,
            node_name,
            snat_ports,
            flow_limits,
        })
    }

    /// Programs the kernel for every plan until the plan channel closes, and sweeps conntrack
    /// every `SWEEP_EVERY` so draining backends' ids come back (see [`L4Actuator::sweep`]).
    /// A plan the maps refused, or one with routes left out, is applied again after each sweep:
    /// a freed id or a transient error lets more of it in. Every [`ATTACH_RETRY`] it checks
    /// that each interface is still the one it attached to, and returns when one is not.
    pub async fn follow(
        self,
        mut plans: watch::Receiver<Option<Arc<Plan>>>,
        health: KernelHealth,
    ) -> Followed {
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut check = tokio::time::interval(ATTACH_RETRY);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A plan already there when we start is applied first, without waiting for a change.
        let mut current = plans.borrow_and_update().clone();
        let mut complete = match &current {
            Some(plan) => self.apply(plan, &health).await,
            None => true,
        };
        loop {
            tokio::select! {
                changed = plans.changed() => {
                    if changed.is_err() {
                        return Followed::PlansClosed;
                    }
                }
                _ = check.tick() => {
                    if let Some(reason) = self.lost_interface() {
                        tracing::error!("L4 half off until the interface is back: {reason}");
                        return Followed::InterfaceLost(reason);
                    }
                    continue;
                }
                _ = sweep.tick() => {
                    self.sweep().await;
                    if let (false, Some(plan)) = (complete, &current) {
                        complete = self.apply(plan, &health).await;
                    }
                    continue;
                }
            }
            current = plans.borrow_and_update().clone();
            if let Some(plan) = &current {
                complete = self.apply(plan, &health).await;
            }
        }
    }

    /// The first interface that is gone or is another device now (its programs went with the
    /// device it was), said as the reason the L4 half is off.
    fn lost_interface(&self) -> Option<String> {
        self.ifaces
            .iter()
            .zip(&self.ifindexes)
            .find_map(
                |(iface, was)| match nix::net::if_::if_nametoindex(iface.as_str()) {
                    Ok(now) if now == *was => None,
                    Ok(now) => Some(format!(
                        "interface {iface} was deleted and created again (index {was}, now {now})"
                    )),
                    Err(_) => Some(format!(
                        "interface {iface} does not exist in this network namespace (deleted \
                         after the programs were attached)"
                    )),
                },
            )
    }

    /// Programs `plan`; true when every route of it is in the kernel.
    async fn apply(&self, plan: &Plan, health: &KernelHealth) -> bool {
        let addrs = match iface_addresses(&self.ifaces) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("reading interface addresses: {e}");
                Vec::new()
            }
        };
        let node_addrs = node_addresses().unwrap_or_else(|e| {
            tracing::error!("reading node addresses: {e}");
            addrs.clone()
        });
        // Addresses may come and go: the SNAT config follows the first interface's.
        let first = iface_addresses(&self.ifaces[..1.min(self.ifaces.len())]).unwrap_or_default();
        let mut config = snat_config(&first, self.snat_ports);
        self.flow_limits.write_into(&mut config);
        let programs = l4_programs(plan, &addrs, &node_addrs, self.node_name.as_deref());
        let actuator = self.actuator.clone();
        let started = Instant::now();
        let applied = tokio::task::spawn_blocking(move || {
            let mut actuator = actuator.lock().expect("actuator lock");
            actuator.set_config(config)?;
            actuator.apply(&programs)
        })
        .await;
        let outcome: Result<std::collections::BTreeMap<String, String>, String> = match applied {
            Ok(Ok(report)) => {
                for (route, why) in &report.rejected {
                    tracing::warn!(%route, "L4 route not served: {why}");
                }
                tracing::info!(?report, took = ?started.elapsed(), "L4 programmed");
                Ok(report.rejected.into_iter().collect())
            }
            Ok(Err(e)) => {
                tracing::error!("programming L4 maps (retried after the next sweep): {e}");
                Err(e.to_string())
            }
            Err(e) => {
                tracing::error!("L4 apply task: {e}");
                Err(e.to_string())
            }
        };
        let complete = matches!(&outcome, Ok(off) if off.is_empty());
        health.applied(outcome);
        complete
    }

    async fn sweep(&self) {
        let actuator = self.actuator.clone();
        let swept = tokio::task::spawn_blocking(move || {
            actuator
                .lock()
                .expect("actuator lock")
                .sweep(Instant::now(), CLOSE_GRACE)
        })
        .await;
        match swept {
            Ok(Ok(r)) if r.flows_reaped > 0 || r.backends_freed > 0 => {
                tracing::info!(?r, "conntrack swept")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("sweeping conntrack: {e}"),
            Err(e) => tracing::error!("L4 sweep task: {e}"),
        }
    }
}

/// How often conntrack is swept. The sweep walks the whole map only while some backend drains
/// or is remote.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// How long a closed flow (a draining backend's, or any source-NATed one) stays after its FIN
/// or RST: Linux's TIME_WAIT and FIN_WAIT2 (60 s), so the last ACKs and retransmissions still
/// find it. For a source-NATed flow it is also how long its port stays out of the range: a port
/// reused sooner could meet the pod's TIME_WAIT socket of the old flow, which may refuse the
/// new SYN. The range's size over this grace bounds the new connections per second one node
/// sends one remote backend (4,000 ports: about 60/s, plus the sweep's period).
const CLOSE_GRACE: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snat_ports_parse_and_validate() {
        assert_eq!("61000-64999".parse::<SnatPorts>(), Ok(SnatPorts::default()));
        assert_eq!(
            "2000-2000".parse::<SnatPorts>(),
            Ok(SnatPorts {
                min: 2000,
                max: 2000
            })
        );
        for bad in ["61000", "5-10", "64999-61000", "61000-70000", "a-b", ""] {
            let err = bad.parse::<SnatPorts>().expect_err(bad);
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
    }

    #[test]
    fn reserved_ports_are_merged_never_clobbered() {
        let p = SnatPorts::default();
        assert_eq!(
            merge_reserved_ports("\n", p).as_deref(),
            Some("61000-64999")
        );
        assert_eq!(
            merge_reserved_ports("8080,9000-9100\n", p).as_deref(),
            Some("8080,9000-9100,61000-64999")
        );
        assert_eq!(merge_reserved_ports("60000-65000\n", p), None);
        assert_eq!(merge_reserved_ports("8080,61000-64999", p), None);
    }

    /// The plan's `nodeName`s decide which endpoints are remote, relative to this node; VIPs
    /// that are not node addresses are dedicated.
    #[test]
    fn endpoints_on_other_nodes_are_remote_and_foreign_vips_dedicated() {
        let dir = std::env::temp_dir().join(format!("splitter-l4-programs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let fixtures =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../splitter-plan/tests/fixtures");
        let base = std::fs::read_to_string(fixtures.join("base.yaml")).expect("base.yaml");
        let placed = base
            .replace(
                "- addresses: [10.1.0.1]",
                "- addresses: [10.1.0.1]\n  nodeName: node1",
            )
            .replace(
                "- addresses: [10.2.0.1]",
                "- addresses: [10.2.0.1]\n  nodeName: node2",
            );
        assert_ne!(
            base, placed,
            "the fixture's endpoints moved; update the test"
        );
        std::fs::write(dir.join("base.yaml"), placed).expect("write");
        std::fs::copy(fixtures.join("l4-routes.yaml"), dir.join("l4-routes.yaml")).expect("copy");
        let (index, _) = crate::source::file::load(std::slice::from_ref(&dir));
        let _ = std::fs::remove_dir_all(&dir);
        let plan = splitter_plan::plan::build(&index, &Default::default(), None);

        let sa = |s: &str| s.parse::<SocketAddr>().expect("addr");
        let vip: IpAddr = "192.0.2.10".parse().expect("ip");
        let tcp = |programs: Vec<L4RouteProgram>| {
            programs
                .into_iter()
                .find(|p| p.vips.contains(&(SocketAddr::new(vip, 9000), L4Proto::Tcp)))
                .expect("the TCP listener's program")
        };
        let on_node1 = tcp(l4_programs(&plan, &[], &[], Some("node1")));
        assert!(on_node1.table.contains(&Some(sa("10.2.0.1:3000"))));
        assert_eq!(
            on_node1.remote,
            BTreeSet::from([sa("10.2.0.1:3000")]),
            "node2's endpoint is remote; node1's and unplaced ones are local"
        );
        assert_eq!(on_node1.dedicated, BTreeSet::from([vip]));
        let on_node2 = tcp(l4_programs(&plan, &[], &[vip], Some("node2")));
        assert_eq!(on_node2.remote, BTreeSet::from([sa("10.1.0.1:3000")]));
        assert!(
            on_node2.dedicated.is_empty(),
            "the VIP is a node address here"
        );
        let nameless = tcp(l4_programs(&plan, &[], &[], None));
        assert!(
            nameless.remote.is_empty(),
            "without a node name all is local"
        );
    }

    #[test]
    fn snat_addresses_are_the_first_of_each_family() {
        let addrs: Vec<IpAddr> = ["10.0.0.2", "10.0.0.3", "fd00::2"]
            .iter()
            .map(|a| a.parse().expect("ip"))
            .collect();
        let c = snat_config(&addrs, SnatPorts::default());
        assert_eq!(c.flags, CONFIG_SNAT_V4 | CONFIG_SNAT_V6);
        assert_eq!(c.snat_v4, ebpf::addr16(addrs[0]));
        assert_eq!(c.snat_v6, ebpf::addr16(addrs[2]));
        assert_eq!((c.port_min, c.port_max), (61000, 64999));
        assert_eq!(
            snat_config(&addrs[2..], SnatPorts::default()).flags,
            CONFIG_SNAT_V6
        );
    }
}
