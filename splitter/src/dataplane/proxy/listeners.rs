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
    server::{Proxy, ProxyListener},
    table::{ServingTable, TableIssue},
};
use splitter_plan::plan::l7::L7RouteTable;

struct Running {
    listener: ProxyListener,
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

        let gone: Vec<SocketAddr> = self
            .running
            .keys()
            .filter(|a| !desired.contains_key(a))
            .copied()
            .collect();
        for addr in gone {
            if let Some(mut r) = self.running.remove(&addr) {
                // The socket is closed before this returns (the address refuses connections
                // and can be bound again); in-flight requests finish in the background.
                r.listener.stop_accepting().await;
                self.draining.spawn(r.listener.shutdown());
                report.stopped.push(addr);
            }
        }

        // Compiled tables of this apply, by the plan table they came from.
        let mut compiled: HashMap<usize, Arc<ServingTable>> = HashMap::new();
        for (addr, table) in desired {
            let key = Arc::as_ptr(table).addr();
            let shared = compiled.get(&key).cloned();
            match self.running.get_mut(addr) {
                Some(r) if Arc::ptr_eq(&r.applied, table) || *r.applied == **table => {
                    // Unchanged: the next address of the same table shares this one's.
                    compiled.entry(key).or_insert_with(|| r.listener.serving());
                    r.applied = table.clone();
                }
                Some(r) => {
                    let issues = r.listener.install_compiled(table, shared);
                    compiled.entry(key).or_insert_with(|| r.listener.serving());
                    r.applied = table.clone();
                    report.issues.extend(issues.into_iter().map(|i| (*addr, i)));
                    report.updated.push(*addr);
                }
                None => match self.proxy.listen_compiled(*addr, table, shared).await {
                    Ok((listener, issues)) => {
                        report.issues.extend(issues.into_iter().map(|i| (*addr, i)));
                        compiled.entry(key).or_insert_with(|| listener.serving());
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
