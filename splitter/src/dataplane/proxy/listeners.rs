//! The L7 actuator: keeps the set of running listeners equal to the plan's, changing only what
//! changed (DESIGN section 2: actuators diff the new plan against what they applied).

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::Arc,
};

use tokio::task::JoinSet;

use super::{
    error::ProxyError,
    passthrough::PassthroughListener,
    server::{Proxy, ProxyListener},
    table::{ServingTable, TableIssue},
};
use splitter_plan::plan::l7::L7RouteTable;

/// What serves one address: HTTP (and HTTPS), or TLS passthrough by SNI.
enum Served {
    Http(ProxyListener),
    Passthrough(PassthroughListener),
}

impl Served {
    fn local_addr(&self) -> SocketAddr {
        match self {
            Self::Http(l) => l.local_addr(),
            Self::Passthrough(l) => l.local_addr(),
        }
    }

    async fn stop_accepting(&mut self) {
        match self {
            Self::Http(l) => l.stop_accepting().await,
            Self::Passthrough(l) => l.stop_accepting().await,
        }
    }

    async fn shutdown(self) {
        match self {
            Self::Http(l) => l.shutdown().await,
            Self::Passthrough(l) => l.shutdown().await,
        }
    }

    /// Whether this serves what `table` asks for (else it is replaced).
    fn serves_kind_of(&self, table: &L7RouteTable) -> bool {
        matches!(self, Self::Passthrough(_)) == table.passthrough.is_some()
    }
}

struct Running {
    listener: Served,
    applied: Arc<L7RouteTable>,
}

/// What one [`L7Listeners::apply`] did.
#[derive(Debug, Default)]
pub struct ApplyReport {
    /// Newly bound listeners (the requested address).
    pub started: Vec<SocketAddr>,
    /// Listeners whose table changed and was swapped in.
    pub updated: Vec<SocketAddr>,
    /// Listeners no longer in the plan; they drain in the background.
    pub stopped: Vec<SocketAddr>,
    /// Listeners that could not be bound; the next apply tries again.
    pub failed: Vec<ProxyError>,
    /// Listeners of an address family this host does not have (IPv6 disabled); not an error.
    pub unsupported: Vec<SocketAddr>,
    /// Routes left out of an installed table.
    pub issues: Vec<(SocketAddr, TableIssue)>,
}

/// Every L7 listener of the agent, keyed by the bind address the plan asked for.
pub struct L7Listeners {
    proxy: Proxy,
    running: BTreeMap<SocketAddr, Running>,
    draining: JoinSet<()>,
}

impl std::fmt::Debug for L7Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L7Listeners")
            .field("running", &self.running.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl L7Listeners {
    pub fn new(proxy: Proxy) -> Self {
        Self {
            proxy,
            running: BTreeMap::new(),
            draining: JoinSet::new(),
        }
    }

    /// Makes the running listeners match `desired`: binds new addresses, swaps tables that
    /// changed (balancer state of unchanged rules carries over), and drains addresses that are
    /// gone. An address that fails to bind is reported and does not stop the others.
    ///
    /// Addresses given the same table (one `Arc`: the bind addresses of one Gateway listener)
    /// serve one compiled table: one copy of the routes and one balancer between them.
    pub async fn apply(
        &mut self,
        desired: &BTreeMap<SocketAddr, Arc<L7RouteTable>>,
    ) -> ApplyReport {
        let mut report = ApplyReport::default();
        // Reap drains that finished, so the set does not grow without bound.
        while self.draining.try_join_next().is_some() {}

        // Gone, or now served the other way (HTTP <-> passthrough): closed first, so that the
        // address can be bound again below.
        let gone: Vec<SocketAddr> = self
            .running
            .iter()
            .filter(|(a, r)| desired.get(a).is_none_or(|t| !r.listener.serves_kind_of(t)))
            .map(|(a, _)| *a)
            .collect();
        for addr in gone {
            if let Some(mut r) = self.running.remove(&addr) {
                // The socket is closed before this returns (the address refuses connections
                // and can be bound again); in-flight requests finish in the background.
                r.listener.stop_accepting().await;
                self.draining.spawn(r.listener.shutdown());
                if !desired.contains_key(&addr) {
                    report.stopped.push(addr);
                }
            }
        }

        // Compiled HTTP tables of this apply, by the plan table they came from.
        let mut compiled: HashMap<usize, Arc<ServingTable>> = HashMap::new();
        for (addr, table) in desired {
            let key = Arc::as_ptr(table).addr();
            let shared = compiled.get(&key).cloned();
            match self.running.get_mut(addr) {
                Some(r) if Arc::ptr_eq(&r.applied, table) || r.applied.same_as(table) => {
                    // Unchanged: the next address of the same table shares this one's.
                    if let Served::Http(l) = &r.listener {
                        compiled.entry(key).or_insert_with(|| l.serving());
                    }
                    r.applied = table.clone();
                }
                Some(r) => {
                    match (&r.listener, &table.passthrough) {
                        (Served::Http(l), _) => {
                            let issues = l.install_compiled(table, shared);
                            compiled.entry(key).or_insert_with(|| l.serving());
                            report.issues.extend(issues.into_iter().map(|i| (*addr, i)));
                        }
                        (Served::Passthrough(l), Some(sni)) => l.install(sni),
                        // Replaced above.
                        (Served::Passthrough(_), None) => {}
                    }
                    r.applied = table.clone();
                    report.updated.push(*addr);
                }
                None => match self.start(*addr, table, shared).await {
                    Ok((listener, issues)) => {
                        report.issues.extend(issues.into_iter().map(|i| (*addr, i)));
                        if let Served::Http(l) = &listener {
                            compiled.entry(key).or_insert_with(|| l.serving());
                        }
                        self.running.insert(
                            *addr,
                            Running {
                                listener,
                                applied: table.clone(),
                            },
                        );
                        report.started.push(*addr);
                    }
                    Err(e) if e.is_unsupported_family() => report.unsupported.push(*addr),
                    Err(e) => report.failed.push(e),
                },
            }
        }
        report
    }

    async fn start(
        &self,
        addr: SocketAddr,
        table: &L7RouteTable,
        compiled: Option<Arc<ServingTable>>,
    ) -> Result<(Served, Vec<TableIssue>), ProxyError> {
        match &table.passthrough {
            Some(sni) => Ok((
                Served::Passthrough(self.proxy.listen_passthrough(addr, sni).await?),
                Vec::new(),
            )),
            None => {
                let (l, issues) = self.proxy.listen_compiled(addr, table, compiled).await?;
                Ok((Served::Http(l), issues))
            }
        }
    }

    /// The address actually bound for a requested one (they differ when the port was 0).
    pub fn local_addr(&self, requested: &SocketAddr) -> Option<SocketAddr> {
        self.running.get(requested).map(|r| r.listener.local_addr())
    }

    /// Stops accepting on every listener at once and waits for all of them to drain.
    pub async fn shutdown(mut self) {
        for (_, r) in std::mem::take(&mut self.running) {
            self.draining.spawn(r.listener.shutdown());
        }
        while self.draining.join_next().await.is_some() {}
    }
}
