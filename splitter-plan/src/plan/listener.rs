//! The plan's top-level shape: data plane listeners (address, port, transport) with their mode
//! and what they serve, plus the statuses.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use serde::Serialize;

use super::{
    ObjectKey,
    l7::{L7RouteTable, PlannedBackend},
    maglev::WeightedTable,
    status::{Diagnostic, GatewayClassStatus, GatewayStatus, RouteStatuses, Severity},
};

/// Our controller name (`GatewayClass.spec.controllerName`).
pub const CONTROLLER_NAME: &str = "splitter.dev/gateway-controller";
/// The GatewayClass the agent serves unless told otherwise (`--gateway-class`).
pub const DEFAULT_GATEWAY_CLASS: &str = "splitter";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanConfig {
    pub gateway_class: String,
    pub controller_name: String,
    /// Maglev table size for small backend sets; large sets use [`super::maglev::LARGE_M`].
    pub maglev_m: u32,
    /// Ports listeners on the node's addresses may not take (the agent's node; none by
    /// default).
    pub node_ports: super::node_ports::NodePorts,
    /// What HTTPS listeners' certificates are checked for expiry against (off by default, so
    /// that the plan is a function of the index alone; the agent uses the system clock).
    pub clock: super::tls::Clock,
}

impl Default for PlanConfig {
    fn default() -> Self {
        Self {
            gateway_class: DEFAULT_GATEWAY_CLASS.to_string(),
            controller_name: CONTROLLER_NAME.to_string(),
            maglev_m: super::maglev::DEFAULT_M,
            node_ports: super::node_ports::NodePorts::default(),
            clock: super::tls::Clock::Off,
        }
    }
}

/// Everything the actuators and the status writer need, computed from the index alone.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Plan {
    pub gateway_classes: Vec<GatewayClassStatus>,
    pub gateways: Vec<GatewayStatus>,
    /// Data plane listeners, sorted by (port, transport, addresses).
    pub listeners: Vec<ListenerPlan>,
    /// Shared: an endpoint refresh changes no status, and at thousands of routes a copy of
    /// the statuses costs more than the refresh itself.
    pub routes: RouteStatuses,
    pub diagnostics: Vec<Diagnostic>,
}

impl Plan {
    /// The listeners the hyper proxy serves, with their route tables.
    pub fn l7_listeners(&self) -> impl Iterator<Item = (&DataplaneListener, &L7RouteTable)> {
        self.listeners.iter().filter_map(|l| match l {
            ListenerPlan::L7 { listener, l7 } => Some((listener, &**l7)),
            ListenerPlan::L4 { .. } => None,
        })
    }

    /// The listeners the kernel serves, with their tables.
    pub fn l4_listeners(&self) -> impl Iterator<Item = (&DataplaneListener, &L4Plan)> {
        self.listeners.iter().filter_map(|l| match l {
            ListenerPlan::L4 { listener, l4 } => Some((listener, l4)),
            ListenerPlan::L7 { .. } => None,
        })
    }

    /// Every L7 listener's route table by bind address: what `agent::run_l7` serves.
    ///
    /// The plan's own tables, shared by each listener's bind addresses (`0.0.0.0` and `[::]`)
    /// and by the proxy: at thousands of routes every copy of a table is tens of megabytes.
    pub fn l7_tables(&self) -> BTreeMap<SocketAddr, Arc<L7RouteTable>> {
        let mut out = BTreeMap::new();
        for l in &self.listeners {
            if let ListenerPlan::L7 { listener, l7 } = l {
                for addr in listener.bind() {
                    out.insert(addr, l7.clone());
                }
            }
        }
        out
    }

    /// Equal but for the disruption figures of the L4 tables, which compare a table against
    /// the one it replaced and so change with every rebuild. Compares in place: a copy of a
    /// plan of thousands of routes costs tens of milliseconds.
    pub fn same_except_disruption(&self, other: &Plan) -> bool {
        // Destructured whole, so that a field added to either struct has to be compared here.
        fn same_table(a: &WeightedTable, b: &WeightedTable) -> bool {
            let WeightedTable {
                m,
                backends,
                slots,
                disruption: _,
            } = a;
            *m == b.m && *backends == b.backends && *slots == b.slots
        }
        fn same_l4(a: &L4Plan, b: &L4Plan) -> bool {
            let L4Plan {
                route,
                backends,
                table,
                table_v6,
                endpoint_nodes,
            } = a;
            *route == b.route
                && *backends == b.backends
                && same_table(table, &b.table)
                && match (table_v6, &b.table_v6) {
                    (Some(x), Some(y)) => same_table(x, y),
                    (None, None) => true,
                    _ => false,
                }
                && *endpoint_nodes == b.endpoint_nodes
        }
        let same_listener = |a: &ListenerPlan, b: &ListenerPlan| match (a, b) {
            (
                ListenerPlan::L4 {
                    listener: la,
                    l4: a,
                },
                ListenerPlan::L4 {
                    listener: lb,
                    l4: b,
                },
            ) => la == lb && same_l4(a, b),
            (
                ListenerPlan::L7 {
                    listener: la,
                    l7: a,
                },
                ListenerPlan::L7 {
                    listener: lb,
                    l7: b,
                },
            ) => la == lb && (Arc::ptr_eq(a, b) || a.same_as(b)),
            _ => false,
        };
        self.gateway_classes == other.gateway_classes
            && self.gateways == other.gateways
            && (Arc::ptr_eq(&self.routes, &other.routes) || self.routes == other.routes)
            && self.diagnostics == other.diagnostics
            && self.listeners.len() == other.listeners.len()
            && self
                .listeners
                .iter()
                .zip(&other.listeners)
                .all(|(a, b)| same_listener(a, b))
    }

    pub fn listener(&self, key: &ListenerKey) -> Option<&ListenerPlan> {
        self.listeners.iter().find(|l| l.key() == key)
    }

    /// Everything a user should fix: error diagnostics, conditions that say "not accepted" or
    /// "refs not resolved", and listeners that are not accepted.
    pub fn problems(&self) -> Vec<String> {
        self.problems_by_object()
            .into_iter()
            .map(|(_, p)| p)
            .collect()
    }

    /// [`problems`](Self::problems), each with the Gateway or route whose status carries it
    /// (`None` for diagnostics), so that a caller can say where the object came from.
    pub fn problems_by_object(&self) -> Vec<(Option<&ObjectKey>, String)> {
        let mut out: Vec<(Option<&ObjectKey>, String)> = self
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(|d| (None, d.to_string()))
            .collect();
        for g in &self.gateways {
            for c in g.conditions.iter().filter(|c| !c.is_true()) {
                out.push((Some(&g.gateway), format!("{}: {c}", g.gateway)));
            }
            for l in &g.listeners {
                for c in &l.conditions {
                    let bad = if c.type_ == super::status::reason::CONFLICTED {
                        c.is_true()
                    } else {
                        !c.is_true()
                    };
                    if bad {
                        out.push((
                            Some(&g.gateway),
                            format!("{} listener {}: {c}", g.gateway, l.name),
                        ));
                    }
                }
            }
        }
        for r in self.routes.iter() {
            for p in &r.parents {
                for c in &p.conditions {
                    let bad = if c.type_ == super::status::reason::PARTIALLY_INVALID {
                        c.is_true()
                    } else {
                        !c.is_true()
                    };
                    if bad {
                        out.push((
                            Some(&r.route),
                            format!("{} parent {}: {c}", r.route, p.parent_ref),
                        ));
                    }
                }
            }
        }
        out
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Transport {
    Tcp,
    Udp,
}

/// What a data plane listener is keyed by: Gateway listeners with the same key share it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ListenerKey {
    pub port: u16,
    pub transport: Transport,
    /// The Gateway's `spec.addresses`, sorted; empty = every address (see [`DataplaneListener::bind`]).
    pub addresses: Vec<IpAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Mode {
    /// Connections split in the kernel by a weighted Maglev table.
    L4,
    /// Requests split by the hyper proxy.
    L7,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::L4 => "L4",
            Mode::L7 => "L7",
        })
    }
}

/// A Gateway listener that contributes to a data plane listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ListenerSource {
    pub gateway: ObjectKey,
    pub listener: String,
    pub protocol: String,
    pub hostname: Option<String>,
}

/// A data plane listener and what serves it: the kernel (L4) or the proxy (L7), never both.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "mode")]
pub enum ListenerPlan {
    /// Connections split in the kernel by a weighted Maglev table.
    L4 {
        #[serde(flatten)]
        listener: DataplaneListener,
        l4: L4Plan,
    },
    /// Requests split by the hyper proxy.
    L7 {
        #[serde(flatten)]
        listener: DataplaneListener,
        /// Shared with the proxy's listeners (`l7_tables`): one copy for all of them.
        l7: Arc<L7RouteTable>,
    },
}

impl ListenerPlan {
    pub fn listener(&self) -> &DataplaneListener {
        match self {
            Self::L4 { listener, .. } | Self::L7 { listener, .. } => listener,
        }
    }

    pub fn key(&self) -> &ListenerKey {
        &self.listener().key
    }

    pub fn sources(&self) -> &[ListenerSource] {
        &self.listener().sources
    }

    /// Why this mode, in words (`splitter check` prints it).
    pub fn reason(&self) -> &str {
        &self.listener().reason
    }

    pub fn mode(&self) -> Mode {
        match self {
            Self::L4 { .. } => Mode::L4,
            Self::L7 { .. } => Mode::L7,
        }
    }

    pub fn l4(&self) -> Option<&L4Plan> {
        match self {
            Self::L4 { l4, .. } => Some(l4),
            Self::L7 { .. } => None,
        }
    }

    pub fn l7(&self) -> Option<&L7RouteTable> {
        match self {
            Self::L7 { l7, .. } => Some(l7),
            Self::L4 { .. } => None,
        }
    }
}

/// What every data plane listener has, whatever serves it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DataplaneListener {
    pub key: ListenerKey,
    pub sources: Vec<ListenerSource>,
    /// Why this mode, in words (`splitter check` prints it).
    pub reason: String,
}

impl DataplaneListener {
    /// Where an L7 listener binds: each Gateway address, or `0.0.0.0` and `[::]`. An L4
    /// listener with no addresses serves every address of the `--iface` interfaces instead,
    /// which only the actuator knows.
    pub fn bind(&self) -> Vec<SocketAddr> {
        if self.key.addresses.is_empty() {
            vec![
                SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), self.key.port),
                SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), self.key.port),
            ]
        } else {
            self.key
                .addresses
                .iter()
                .map(|a| SocketAddr::new(*a, self.key.port))
                .collect()
        }
    }
}

/// What the kernel does for new flows on an L4 listener.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct L4Plan {
    /// The route that gets the traffic (the oldest one when several attach), if any.
    pub route: Option<ObjectKey>,
    /// Its backendRefs, resolved as for L7 (weight per Service, endpoints, invalid share).
    pub backends: Vec<PlannedBackend>,
    /// The table of every VIP, or of the IPv4 VIPs when the endpoints are dual-stack.
    pub table: WeightedTable,
    /// The IPv6 VIPs' table when the endpoints are dual-stack (one table per address family:
    /// the kernel does no NAT46/64).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub table_v6: Option<Box<WeightedTable>>,
    /// The node of each endpoint in the table whose EndpointSlice names one (`nodeName`). The
    /// table itself never depends on it: every node holds the same table, and only how a node
    /// reaches an endpoint (DNAT, or DNAT plus SNAT) differs.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoint_nodes: BTreeMap<IpAddr, String>,
}

impl L4Plan {
    /// The table for VIPs of one address family. Without dual-stack endpoints that is the one
    /// table, whose endpoints may all be of the other family (such VIPs are not served).
    pub fn table_for(&self, ipv4: bool) -> &WeightedTable {
        match &self.table_v6 {
            Some(v6) if !ipv4 => v6,
            _ => &self.table,
        }
    }

    /// The node `endpoint` runs on, when its EndpointSlice says.
    pub fn node_of(&self, endpoint: &SocketAddr) -> Option<&str> {
        self.endpoint_nodes.get(&endpoint.ip()).map(String::as_str)
    }
}
