//! GatewayClass, Gateway (with its listeners and their TLS), ReferenceGrant and Namespace.

use std::{collections::BTreeMap, net::IpAddr};

use gateway_api::{
    gatewayclasses::GatewayClass as RawGatewayClass,
    gateways::{
        Gateway as RawGateway, GatewayListeners,
        GatewayListenersAllowedRoutesNamespacesFrom as From,
        GatewayListenersAllowedRoutesNamespacesSelector as RawSelector, GatewayListenersTlsMode,
    },
    referencegrants::ReferenceGrant as RawReferenceGrant,
};
use k8s_openapi::api::core::v1::Namespace as RawNamespace;
use serde::Serialize;

use super::{FieldPath, Meta, ModelError, validate};

#[derive(Clone, Debug, PartialEq)]
pub struct GatewayClass {
    pub meta: Meta,
    pub controller_name: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Gateway {
    pub meta: Meta,
    pub class_name: String,
    /// `spec.addresses` of type IPAddress.
    pub addresses: Vec<IpAddr>,
    /// `spec.addresses` we cannot bind (type Hostname or another type), as written.
    pub unsupported_addresses: Vec<String>,
    pub listeners: Vec<Listener>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Listener {
    pub name: String,
    /// Lower-case; `None` accepts any host.
    pub hostname: Option<String>,
    pub port: u16,
    /// As written (`HTTP`, `HTTPS`, `TLS`, `TCP`, `UDP` or a domain-prefixed custom value).
    pub protocol: String,
    pub allowed_namespaces: AllowedNamespaces,
    /// `allowedRoutes.kinds`; `None` = the kinds implied by the protocol.
    pub allowed_kinds: Option<Vec<RouteGroupKind>>,
    /// `tls`, for HTTPS and TLS listeners.
    pub tls: Option<ListenerTls>,
}

/// A listener's `tls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenerTls {
    pub mode: TlsMode,
    /// `certificateRefs`, with the defaults applied (group "", kind Secret).
    pub certificate_refs: Vec<CertificateRef>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TlsMode {
    Terminate,
    Passthrough,
}

/// One `certificateRefs` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CertificateRef {
    /// "" for the core group.
    pub group: String,
    pub kind: String,
    pub name: String,
    /// `None`: the Gateway's namespace.
    pub namespace: Option<String>,
}

impl std::fmt::Display for CertificateRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() {
            String::new()
        } else {
            format!("{}/", self.group)
        };
        match &self.namespace {
            Some(ns) => write!(f, "{group}{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{group}{} {}", self.kind, self.name),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteGroupKind {
    pub group: String,
    pub kind: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AllowedNamespaces {
    Same,
    All,
    Selector(LabelSelector),
}

/// A Kubernetes label selector: every `match_labels` entry and every requirement must hold.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LabelSelector {
    pub match_labels: BTreeMap<String, String>,
    pub requirements: Vec<SelectorRequirement>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum SelectorRequirement {
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.requirements.iter().all(|r| match r {
                SelectorRequirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
                SelectorRequirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
                SelectorRequirement::Exists(k) => labels.contains_key(k),
                SelectorRequirement::DoesNotExist(k) => !labels.contains_key(k),
            })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ReferenceGrant {
    pub meta: Meta,
    pub from: Vec<GrantFrom>,
    pub to: Vec<GrantTo>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GrantFrom {
    pub group: String,
    pub kind: String,
    pub namespace: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct GrantTo {
    pub group: String,
    pub kind: String,
    /// `None` grants every object of that kind in the namespace.
    pub name: Option<String>,
}

impl ReferenceGrant {
    /// Whether this grant (which lives in the target's namespace) lets a `from_kind` in
    /// `from_namespace` refer to the object `to_group`/`to_kind`/`to_name`.
    pub fn permits(
        &self,
        from_kind: &str,
        from_namespace: &str,
        to_group: &str,
        to_kind: &str,
        to_name: &str,
    ) -> bool {
        self.from.iter().any(|f| {
            f.group == super::GATEWAY_GROUP && f.kind == from_kind && f.namespace == from_namespace
        }) && self.to.iter().any(|t| {
            t.group == to_group
                && t.kind == to_kind
                && t.name.as_deref().is_none_or(|n| n == to_name)
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Namespace {
    pub meta: Meta,
}

pub(crate) fn gateway_class(
    raw: RawGatewayClass,
    meta: Meta,
    id: &str,
) -> Result<GatewayClass, ModelError> {
    let at = FieldPath::root(id, "spec.controllerName");
    let name = raw.spec.controller_name;
    if name.is_empty() || !name.contains('/') {
        return Err(at.err(format!(
            "{name:?} must be a domain-prefixed path such as example.net/gateway-controller"
        )));
    }
    Ok(GatewayClass {
        meta,
        controller_name: name,
    })
}

pub(crate) fn gateway(raw: RawGateway, meta: Meta, id: &str) -> Result<Gateway, ModelError> {
    let spec = FieldPath::root(id, "spec");
    if raw.spec.gateway_class_name.is_empty() {
        return Err(spec.field("gatewayClassName").err("must not be empty"));
    }
    let mut addresses = Vec::new();
    let mut unsupported_addresses = Vec::new();
    for (i, a) in raw.spec.addresses.iter().flatten().enumerate() {
        let at = spec.field("addresses").index(i);
        let ty = a.r#type.as_deref().unwrap_or("IPAddress");
        let value = a.value.clone().unwrap_or_default();
        if ty == "IPAddress" {
            let ip = value.parse::<IpAddr>().map_err(|_| {
                at.field("value")
                    .err(format!("{value:?} is not an IP address"))
            })?;
            addresses.push(ip);
        } else {
            unsupported_addresses.push(format!("{ty} {value}"));
        }
    }
    let lat = spec.field("listeners");
    if raw.spec.listeners.is_empty() || raw.spec.listeners.len() > 64 {
        return Err(lat.err("a Gateway needs 1 to 64 listeners"));
    }
    let mut listeners: Vec<Listener> = Vec::new();
    for (i, l) in raw.spec.listeners.into_iter().enumerate() {
        let at = lat.index(i);
        let listener = listener(l, &at)?;
        if listeners.iter().any(|o| o.name == listener.name) {
            return Err(at
                .field("name")
                .err(format!("listener name {:?} is used twice", listener.name)));
        }
        if listeners.iter().any(|o| {
            o.port == listener.port
                && o.protocol == listener.protocol
                && o.hostname == listener.hostname
        }) {
            return Err(at.err("port, protocol and hostname must be unique among listeners"));
        }
        listeners.push(listener);
    }
    Ok(Gateway {
        meta,
        class_name: raw.spec.gateway_class_name,
        addresses,
        unsupported_addresses,
        listeners,
    })
}

fn listener(l: GatewayListeners, at: &FieldPath<'_>) -> Result<Listener, ModelError> {
    if l.name.is_empty() {
        return Err(at.field("name").err("must not be empty"));
    }
    let port = validate::port(l.port).map_err(|e| at.field("port").err(e))?;
    if let Some(h) = &l.hostname {
        validate::hostname(h, true).map_err(|e| at.field("hostname").err(e))?;
        if matches!(l.protocol.as_str(), "TCP" | "UDP") {
            return Err(at
                .field("hostname")
                .err("must not be set on a TCP or UDP listener"));
        }
    }
    if l.protocol.is_empty() {
        return Err(at.field("protocol").err("must not be empty"));
    }
    let tls = match l.tls {
        None if matches!(l.protocol.as_str(), "HTTPS" | "TLS") => {
            return Err(at
                .field("tls")
                .err(format!("must be set on a {} listener", l.protocol)));
        }
        Some(_) if matches!(l.protocol.as_str(), "HTTP" | "TCP" | "UDP") => {
            return Err(at
                .field("tls")
                .err(format!("must not be set on a {} listener", l.protocol)));
        }
        None => None,
        Some(t) => {
            let has_options = t.options.as_ref().is_some_and(|o| !o.is_empty());
            let mode = match t.mode {
                None | Some(GatewayListenersTlsMode::Terminate) => TlsMode::Terminate,
                Some(GatewayListenersTlsMode::Passthrough) => TlsMode::Passthrough,
            };
            let certificate_refs: Vec<CertificateRef> = t
                .certificate_refs
                .unwrap_or_default()
                .into_iter()
                .map(|r| CertificateRef {
                    group: r.group.unwrap_or_default(),
                    kind: r.kind.unwrap_or_else(|| "Secret".to_string()),
                    name: r.name,
                    namespace: r.namespace,
                })
                .collect();
            if certificate_refs.len() > 64 {
                return Err(at
                    .field("tls.certificateRefs")
                    .err("at most 64 certificateRefs"));
            }
            if mode == TlsMode::Terminate && certificate_refs.is_empty() && !has_options {
                return Err(at
                    .field("tls.certificateRefs")
                    .err("certificateRefs or options must be set when mode is Terminate"));
            }
            Some(ListenerTls {
                mode,
                certificate_refs,
            })
        }
    };
    let ar = l.allowed_routes.unwrap_or_default();
    let ns = ar.namespaces.unwrap_or_default();
    let allowed_namespaces = match ns.from.unwrap_or(From::Same) {
        From::Same => AllowedNamespaces::Same,
        From::All => AllowedNamespaces::All,
        From::Selector => {
            let sel = ns.selector.ok_or_else(|| {
                at.field("allowedRoutes.namespaces.selector")
                    .err("must be set when from is Selector")
            })?;
            AllowedNamespaces::Selector(selector(
                sel,
                &at.field("allowedRoutes.namespaces.selector"),
            )?)
        }
    };
    let allowed_kinds = ar.kinds.map(|ks| {
        ks.into_iter()
            .map(|k| RouteGroupKind {
                group: k.group.unwrap_or_else(|| super::GATEWAY_GROUP.to_string()),
                kind: k.kind,
            })
            .collect()
    });
    Ok(Listener {
        name: l.name,
        hostname: l.hostname,
        port,
        protocol: l.protocol,
        allowed_namespaces,
        allowed_kinds,
        tls,
    })
}

fn selector(raw: RawSelector, at: &FieldPath<'_>) -> Result<LabelSelector, ModelError> {
    let mut requirements = Vec::new();
    for (i, e) in raw
        .match_expressions
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let values = e.values.unwrap_or_default();
        requirements.push(match e.operator.as_str() {
            "In" => SelectorRequirement::In(e.key, values),
            "NotIn" => SelectorRequirement::NotIn(e.key, values),
            "Exists" => SelectorRequirement::Exists(e.key),
            "DoesNotExist" => SelectorRequirement::DoesNotExist(e.key),
            other => {
                return Err(at
                    .field("matchExpressions")
                    .index(i)
                    .field("operator")
                    .err(format!(
                        "unknown operator {other:?} (In, NotIn, Exists, DoesNotExist)"
                    )));
            }
        });
    }
    Ok(LabelSelector {
        match_labels: raw.match_labels.unwrap_or_default(),
        requirements,
    })
}

pub(crate) fn reference_grant(
    raw: RawReferenceGrant,
    meta: Meta,
    id: &str,
) -> Result<ReferenceGrant, ModelError> {
    let spec = FieldPath::root(id, "spec");
    if raw.spec.from.is_empty() {
        return Err(spec.field("from").err("needs at least one entry"));
    }
    if raw.spec.to.is_empty() {
        return Err(spec.field("to").err("needs at least one entry"));
    }
    Ok(ReferenceGrant {
        meta,
        from: raw
            .spec
            .from
            .into_iter()
            .map(|f| GrantFrom {
                group: f.group,
                kind: f.kind,
                namespace: f.namespace,
            })
            .collect(),
        to: raw
            .spec
            .to
            .into_iter()
            .map(|t| GrantTo {
                group: t.group,
                kind: t.kind,
                name: t.name,
            })
            .collect(),
    })
}

pub(crate) fn namespace(_raw: RawNamespace, meta: Meta) -> Namespace {
    Namespace { meta }
}
