//! The kernel half of `splitter run`: attach to the interfaces, then program every plan's L4
//! listeners.

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::watch;

use crate::dataplane::ebpf::{
    self, Attachment, KernelObject, L4Actuator, L4Proto, L4RouteProgram, XdpAttachMode,
};
use splitter_plan::plan::{DataplaneListener, Plan, Transport, maglev::TableTarget};

/// Every address of `ifaces` (what an L4 listener without Gateway addresses serves).
pub fn iface_addresses(ifaces: &[String]) -> anyhow::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        if !ifaces.contains(&ifa.interface_name) {
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

fn program_key(l: &DataplaneListener) -> String {
    let transport = match l.key.transport {
        Transport::Tcp => "tcp",
        Transport::Udp => "udp",
    };
    let addrs: Vec<String> = l.key.addresses.iter().map(ToString::to_string).collect();
    format!("{}/{transport}/{}", l.key.port, addrs.join(","))
}

/// What the kernel should run for `plan`. A listener without Gateway addresses serves every
/// address of the interfaces (`iface_addrs`).
pub fn l4_programs(plan: &Plan, iface_addrs: &[IpAddr]) -> Vec<L4RouteProgram> {
    plan.l4_listeners()
        .filter_map(|(l, l4)| {
            let proto = match l.key.transport {
                Transport::Tcp => L4Proto::Tcp,
                Transport::Udp => L4Proto::Udp,
            };
            let addrs = if l.key.addresses.is_empty() {
                iface_addrs
            } else {
                &l.key.addresses[..]
            };
            let table: Vec<Option<SocketAddr>> = l4
                .table
                .slots
                .iter()
                .map(
                    |&i| match l4.table.backends.get(i as usize).map(|b| b.target) {
                        Some(TableTarget::Endpoint(a)) => Some(a),
                        _ => None,
                    },
                )
                .collect();
            // The kernel does no NAT46/64: a VIP serves the backends of its own family.
            let vips: Vec<(SocketAddr, L4Proto)> = addrs
                .iter()
                .filter(|ip| table.iter().flatten().all(|b| b.is_ipv4() == ip.is_ipv4()))
                .map(|ip| (SocketAddr::new(*ip, l.key.port), proto))
                .collect();
            (!table.is_empty()).then(|| L4RouteProgram {
                key: program_key(l),
                vips,
                table,
                remote: Default::default(),
                dedicated: Default::default(),
            })
        })
        .collect()
}

/// The loaded object, its attachments and the actuator.
pub struct L4Runner {
    _object: KernelObject,
    actuator: Arc<Mutex<L4Actuator>>,
    ifaces: Vec<String>,
}

impl L4Runner {
    /// Loads the object (adopting pinned maps under `pin_dir`) and attaches it to every
    /// interface (taking over links an earlier agent pinned under `pin_dir/links`).
    pub fn start(ifaces: &[String], pin_dir: &Path, mode: XdpAttachMode) -> anyhow::Result<Self> {
        let mut object = ebpf::load_object(Some(pin_dir))?;
        let links: PathBuf = pin_dir.join("links");
        for iface in ifaces {
            match ebpf::attach_pinned(&mut object, iface, &links, mode)? {
                Attachment::New(m) => {
                    tracing::info!(%iface, mode = ?m, "XDP and TC attached, links pinned")
                }
                Attachment::Replaced => {
                    tracing::info!(%iface, "took over pinned links: programs replaced in place")
                }
            }
        }
        let actuator = L4Actuator::new(&mut object)?;
        Ok(L4Runner {
            _object: object,
            actuator: Arc::new(Mutex::new(actuator)),
            ifaces: ifaces.to_vec(),
        })
    }

    /// Programs the kernel for every plan until the plan channel closes, and sweeps conntrack
    /// every `SWEEP_EVERY` so draining backends' ids come back (see [`L4Actuator::sweep`]).
    pub async fn follow(self, mut plans: watch::Receiver<Option<Arc<Plan>>>) {
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A plan already there when we start is applied first, without waiting for a change.
        let first = plans.borrow_and_update().clone();
        if let Some(plan) = first {
            self.apply(&plan).await;
        }
        loop {
            tokio::select! {
                changed = plans.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = sweep.tick() => {
                    self.sweep().await;
                    continue;
                }
            }
            let plan = plans.borrow_and_update().clone();
            if let Some(plan) = plan {
                self.apply(&plan).await;
            }
        }
    }

    async fn apply(&self, plan: &Plan) {
        let addrs = match iface_addresses(&self.ifaces) {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("reading interface addresses: {e}");
                Vec::new()
            }
        };
        let programs = l4_programs(plan, &addrs);
        let actuator = self.actuator.clone();
        let applied = tokio::task::spawn_blocking(move || {
            actuator.lock().expect("actuator lock").apply(&programs)
        })
        .await;
        match applied {
            Ok(Ok(report)) => tracing::info!(?report, "L4 programmed"),
            Ok(Err(e)) => tracing::error!("programming L4 maps: {e}"),
            Err(e) => tracing::error!("L4 apply task: {e}"),
        }
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

/// How often conntrack is swept. The sweep walks the whole map only while some backend drains.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// How long a flow to a draining backend stays after its FIN or RST: as long as Linux keeps a
/// closing connection (TIME_WAIT, FIN_WAIT), so the last ACKs and retransmissions still find it.
const CLOSE_GRACE: Duration = Duration::from_secs(120);
