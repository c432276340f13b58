//! Our Gateways and their listeners: which are ours, what each listener accepts, and where
//! listeners of different Gateways collide on one address and port.

use std::{collections::BTreeMap, sync::Arc};

use super::{
    listener::{ListenerKey, PlanConfig, Transport},
    status::Condition,
    status::{Diagnostic, GatewayClassStatus, Severity, reason},
    tls::{PlannedCertificate, TlsRefusal},
};
use crate::model::{
    AllowedNamespaces, GATEWAY_GROUP, Gateway, Index, Kind, L4Route, Listener, ObjectKey,
    RouteGroupKind, RouteKind, TlsMode,
};

/// The listener protocols we serve, by the route kind they take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ListenerClass {
    Http,
    /// HTTPS with `tls.mode: Terminate`: HTTP behind TLS the proxy terminates.
    Https,
    Tcp,
    Udp,
    /// TLS with `tls.mode: Passthrough`: TLSRoutes by SNI, TLS left to the backends.
    Tls,
}

impl ListenerClass {
    fn of(l: &Listener) -> Option<Self> {
        match l.protocol.as_str() {
            "HTTP" => Some(Self::Http),
            "HTTPS" if l.tls.as_ref().is_some_and(|t| t.mode == TlsMode::Terminate) => {
                Some(Self::Https)
            }
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            // Terminate on a TLS listener (TLSRoute termination) is not served: the listener is
            // refused with `UnsupportedValue` (see `gateway_status`).
            "TLS"
                if l.tls
                    .as_ref()
                    .is_some_and(|t| t.mode == TlsMode::Passthrough) =>
            {
                Some(Self::Tls)
            }
            _ => None,
        }
    }

    /// Listeners of this class share a port when their hostnames differ (HTTP by Host, TLS
    /// passthrough by SNI).
    fn by_hostname(self) -> bool {
        matches!(self, Self::Http | Self::Https | Self::Tls)
    }

    pub fn route_kind(self) -> &'static str {
        self.route_kinds()[0]
    }

    /// Every route kind the listener takes, the native one first: HTTP and HTTPS listeners
    /// take HTTPRoutes and GRPCRoutes (gRPC is HTTP/2).
    pub fn route_kinds(self) -> &'static [&'static str] {
        match self {
            Self::Http | Self::Https => &["HTTPRoute", "GRPCRoute"],
            Self::Tcp => &["TCPRoute"],
            Self::Udp => &["UDPRoute"],
            Self::Tls => &["TLSRoute"],
        }
    }

    fn transport(self) -> Transport {
        match self {
            Self::Http | Self::Https | Self::Tcp | Self::Tls => Transport::Tcp,
            Self::Udp => Transport::Udp,
        }
    }
}

/// An HTTPRoute attached to a listener, with the hostnames it serves there.
#[derive(Clone, Debug)]
pub(crate) struct HttpAttachment {
    pub kind: RouteKind,
    pub route: (String, String),
    /// Empty = any host.
    pub hostnames: Vec<String>,
}

/// A TLSRoute attached to a listener, with the SNI names it serves there.
#[derive(Clone, Debug)]
pub(crate) struct TlsAttachment {
    pub route: (String, String),
    /// Empty = any name the listener accepts.
    pub hostnames: Vec<String>,
}

/// One listener of one of our Gateways, as the plan sees it.
#[derive(Debug)]
pub(crate) struct GatewayListener<'a> {
    pub gateway: &'a Gateway,
    pub gateway_ref: ObjectKey,
    pub listener: &'a Listener,
    /// `None` for a protocol we do not serve.
    pub class: Option<ListenerClass>,
    pub key: ListenerKey,
    pub supported_kinds: Vec<RouteGroupKind>,
    pub invalid_kinds: Vec<String>,
    /// Reason and message when another listener already holds this address and port.
    pub conflict: Option<(&'static str, String)>,
    /// Why the port may not be taken on the node's addresses (a host socket holds it, or it is
    /// in a reserved range), for a listener without Gateway addresses.
    pub unavailable: Option<String>,
    /// Why the certificates of an HTTPS listener do not resolve (reason, message).
    pub tls_refused: Option<TlsRefusal>,
    /// The certificates of an HTTPS listener, resolved.
    pub certificates: Vec<Arc<PlannedCertificate>>,
    pub attached_routes: u32,
    pub http: Vec<HttpAttachment>,
    pub l4: Vec<&'a L4Route>,
    pub tls: Vec<TlsAttachment>,
}

impl GatewayListener<'_> {
    /// Whether traffic may flow through this listener.
    pub fn usable(&self) -> bool {
        self.class.is_some()
            && self.conflict.is_none()
            && self.unavailable.is_none()
            && self.tls_refused.is_none()
    }

    pub fn allows_kind(&self, kind: &str) -> bool {
        self.supported_kinds.iter().any(|k| k.kind == kind)
    }

    pub fn allows_namespace(&self, index: &Index, route_ns: &str) -> bool {
        match &self.listener.allowed_namespaces {
            AllowedNamespaces::Same => route_ns == self.gateway.meta.namespace,
            AllowedNamespaces::All => true,
            AllowedNamespaces::Selector(sel) => {
                // The API server labels every namespace with its own name; files may omit it.
                let mut labels = index
                    .namespaces
                    .get(route_ns)
                    .map(|n| n.meta.labels.clone())
                    .unwrap_or_default();
                labels
                    .entry("kubernetes.io/metadata.name".to_string())
                    .or_insert_with(|| route_ns.to_string());
                sel.matches(&labels)
            }
        }
    }
}

/// The GatewayClass status and whether Gateways of the configured class are ours.
pub(crate) fn class_status(
    index: &Index,
    config: &PlanConfig,
    diagnostics: &mut Vec<Diagnostic>,
) -> (bool, Vec<GatewayClassStatus>) {
    match index.gateway_classes.get(&config.gateway_class) {
        Some(c) if c.controller_name == config.controller_name => (
            true,
            vec![GatewayClassStatus {
                class: ObjectKey::new(Kind::GatewayClass, "", &c.meta.name).clone(),
                conditions: vec![Condition::new(
                    reason::ACCEPTED,
                    true,
                    reason::ACCEPTED,
                    format!("handled by {}", config.controller_name),
                    c.meta.generation,
                )],
            }],
        ),
        Some(c) => {
            diagnostics.push(Diagnostic {
                severity: Severity::Error,
                object: format!("GatewayClass {}", c.meta.name),
                message: format!(
                    "controllerName is {:?}, not {:?}: its Gateways are left alone",
                    c.controller_name, config.controller_name
                ),
            });
            (false, Vec::new())
        }
        None => {
            diagnostics.push(Diagnostic {
                severity: Severity::Warning,
                object: format!("GatewayClass {}", config.gateway_class),
                message: format!(
                    "not found; serving Gateways of class {:?} as if it named {}",
                    config.gateway_class, config.controller_name
                ),
            });
            (true, Vec::new())
        }
    }
}

/// Listeners of our Gateways, oldest Gateway first, with conflicts resolved in that order.
pub(crate) fn gateway_listeners<'a>(
    index: &'a Index,
    config: &PlanConfig,
) -> Vec<GatewayListener<'a>> {
    let mut gateways: Vec<&Gateway> = index
        .gateways
        .values()
        .filter(|g| g.class_name == config.gateway_class)
        .map(Arc::as_ref)
        .collect();
    gateways.sort_by(|a, b| {
        age_key(a.meta.created, &a.meta.namespace, &a.meta.name).cmp(&age_key(
            b.meta.created,
            &b.meta.namespace,
            &b.meta.name,
        ))
    });
    let mut out: Vec<GatewayListener<'a>> = Vec::new();
    // key -> (class, hostname, owner) of listeners already placed.
    let mut taken: BTreeMap<ListenerKey, Vec<(ListenerClass, Option<String>, String)>> =
        BTreeMap::new();
    for g in gateways {
        let gateway_ref = ObjectKey::new(Kind::Gateway, &g.meta.namespace, &g.meta.name).clone();
        let mut addresses = g.addresses.clone();
        addresses.sort();
        addresses.dedup();
        for l in &g.listeners {
            let class = ListenerClass::of(l);
            let transport = class.map_or(Transport::Tcp, ListenerClass::transport);
            let key = ListenerKey {
                port: l.port,
                transport,
                addresses: addresses.clone(),
            };
            let (supported_kinds, invalid_kinds) = kinds(l, class);
            let mut conflict = None;
            // Only a listener on the node's addresses competes with the node for its ports;
            // one that is refused takes no place from the listeners after it.
            let unavailable = class
                .filter(|_| addresses.is_empty())
                .and_then(|_| config.node_ports.refusal(transport, l.port));
            if let Some(c) = class.filter(|_| unavailable.is_none()) {
                let owner = format!("{gateway_ref} listener {}", l.name);
                let placed = taken.entry(key.clone()).or_default();
                if let Some((_, _, other)) = placed.iter().find(|(pc, _, _)| *pc != c) {
                    conflict = Some((
                        reason::PROTOCOL_CONFLICT,
                        format!(
                            "port {} is already used by {other} with another protocol",
                            l.port
                        ),
                    ));
                } else if let Some((_, _, other)) = placed
                    .iter()
                    .find(|(pc, h, _)| *pc == c && (!c.by_hostname() || *h == l.hostname))
                {
                    conflict = Some((
                        reason::HOSTNAME_CONFLICT,
                        format!("{other} already serves this port and hostname"),
                    ));
                } else {
                    placed.push((c, l.hostname.clone(), owner));
                }
            }
            let (certificates, tls_refused) = match (class, &l.tls) {
                (Some(ListenerClass::Https), Some(tls)) => {
                    match super::tls::resolve(index, g, tls, config.clock) {
                        Ok(c) => (c, None),
                        Err(refusal) => (Vec::new(), Some(refusal)),
                    }
                }
                _ => (Vec::new(), None),
            };
            out.push(GatewayListener {
                tls_refused,
                certificates,
                gateway: g,
                gateway_ref: gateway_ref.clone(),
                listener: l,
                class,
                key,
                supported_kinds,
                invalid_kinds,
                conflict,
                unavailable,
                attached_routes: 0,
                http: Vec::new(),
                l4: Vec::new(),
                tls: Vec::new(),
            });
        }
    }
    mixed_tls_modes(&mut out);
    out
}

/// A TLS listener with `tls.mode: Terminate` is not served; on the port of a Passthrough
/// listener (of any of our Gateways on that address) it would ask one port to terminate some
/// handshakes and pass others through, which is not supported either: both get
/// `ProtocolConflict` (upstream `TLSRouteListenerMixedTerminationNotSupported`).
fn mixed_tls_modes(listeners: &mut [GatewayListener<'_>]) {
    let terminate = |l: &GatewayListener<'_>| {
        l.listener.protocol == "TLS"
            && l.listener
                .tls
                .as_ref()
                .is_some_and(|t| t.mode == TlsMode::Terminate)
    };
    let keys: Vec<ListenerKey> = listeners
        .iter()
        .filter(|l| terminate(l))
        .map(|l| l.key.clone())
        .collect();
    for key in keys {
        let passthrough = listeners
            .iter()
            .any(|l| l.key == key && l.class == Some(ListenerClass::Tls));
        if !passthrough {
            continue;
        }
        for l in listeners.iter_mut().filter(|l| l.key == key) {
            if terminate(l) || l.class == Some(ListenerClass::Tls) {
                l.conflict = Some((
                    reason::PROTOCOL_CONFLICT,
                    format!(
                        "port {} mixes TLS Terminate and Passthrough listeners, which is not supported",
                        l.listener.port
                    ),
                ));
            }
        }
    }
}

/// The route kinds a listener takes: `allowedRoutes.kinds` restricted to what its protocol
/// carries, and the requested kinds it cannot take.
fn kinds(l: &Listener, class: Option<ListenerClass>) -> (Vec<RouteGroupKind>, Vec<String>) {
    let Some(class) = class else {
        return (Vec::new(), Vec::new());
    };
    let native: Vec<RouteGroupKind> = class
        .route_kinds()
        .iter()
        .map(|k| RouteGroupKind {
            group: GATEWAY_GROUP.to_string(),
            kind: k.to_string(),
        })
        .collect();
    match &l.allowed_kinds {
        None => (native, Vec::new()),
        Some(ks) if ks.is_empty() => (native, Vec::new()),
        Some(ks) => {
            let (ok, bad): (Vec<&RouteGroupKind>, Vec<&RouteGroupKind>) =
                ks.iter().partition(|k| native.contains(k));
            let mut supported: Vec<RouteGroupKind> = ok.into_iter().cloned().collect();
            supported.dedup();
            (
                supported,
                bad.into_iter()
                    .map(|k| format!("{}/{}", k.group, k.kind))
                    .collect(),
            )
        }
    }
}

/// Precedence by age: oldest `creationTimestamp` first (unknown counts as newest), then
/// `namespace/name`.
pub(crate) fn age_key<'k>(
    created: Option<i64>,
    ns: &'k str,
    name: &'k str,
) -> (i64, &'k str, &'k str) {
    (created.unwrap_or(i64::MAX), ns, name)
}
