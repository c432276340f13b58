//! Status the plan computes for GatewayClass, Gateway (and each listener) and each route parent.
//! The status writer (kube) and `splitter check` both print these; nothing here does I/O.

use serde::Serialize;

use super::ObjectKey;
use crate::model::RouteGroupKind;

/// Condition types and reasons (Gateway API `v1`), as the strings the API uses.
pub mod reason {
    pub const ACCEPTED: &str = "Accepted";
    pub const PROGRAMMED: &str = "Programmed";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    pub const CONFLICTED: &str = "Conflicted";
    pub const PARTIALLY_INVALID: &str = "PartiallyInvalid";
    /// Our own condition on listeners: which data plane serves it (implementation-specific
    /// types are domain-prefixed).
    pub const DATAPLANE: &str = "splitter.dev/Dataplane";

    pub const NOT_ALLOWED_BY_LISTENERS: &str = "NotAllowedByListeners";
    pub const NO_MATCHING_LISTENER_HOSTNAME: &str = "NoMatchingListenerHostname";
    pub const NO_MATCHING_PARENT: &str = "NoMatchingParent";
    pub const UNSUPPORTED_VALUE: &str = "UnsupportedValue";
    pub const BACKEND_NOT_FOUND: &str = "BackendNotFound";
    pub const INVALID_KIND: &str = "InvalidKind";
    pub const REF_NOT_PERMITTED: &str = "RefNotPermitted";
    pub const INVALID_CERTIFICATE_REF: &str = "InvalidCertificateRef";
    pub const LISTENERS_NOT_VALID: &str = "ListenersNotValid";
    pub const UNSUPPORTED_ADDRESS: &str = "UnsupportedAddress";
    pub const UNSUPPORTED_PROTOCOL: &str = "UnsupportedProtocol";
    pub const PORT_UNAVAILABLE: &str = "PortUnavailable";
    pub const INVALID_ROUTE_KINDS: &str = "InvalidRouteKinds";
    pub const PROTOCOL_CONFLICT: &str = "ProtocolConflict";
    pub const HOSTNAME_CONFLICT: &str = "HostnameConflict";
    pub const NO_CONFLICTS: &str = "NoConflicts";
    pub const INVALID: &str = "Invalid";
    /// `Programmed=False`: not yet programmed, expected to be (the agent retries).
    pub const PENDING: &str = "Pending";
    pub const L4: &str = "L4";
    pub const L7: &str = "L7";
    pub const L4_REFUSED: &str = "L4Refused";
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl std::fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        })
    }
}

/// A status condition (without `lastTransitionTime`: the writer sets it when the status changes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
    #[serde(rename = "observedGeneration")]
    pub observed_generation: i64,
}

impl Condition {
    pub fn new(
        type_: &str,
        ok: bool,
        reason: &str,
        message: impl Into<String>,
        observed_generation: i64,
    ) -> Self {
        Self {
            type_: type_.to_string(),
            status: if ok {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            },
            reason: reason.to_string(),
            message: message.into(),
            observed_generation,
        }
    }

    pub fn is_true(&self) -> bool {
        self.status == ConditionStatus::True
    }
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}={} ({}, observedGeneration {})",
            self.type_, self.status, self.reason, self.observed_generation
        )?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GatewayClassStatus {
    pub class: ObjectKey,
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GatewayStatus {
    pub gateway: ObjectKey,
    /// `status.addresses` values (type IPAddress); empty when the Gateway binds every address.
    pub addresses: Vec<String>,
    pub conditions: Vec<Condition>,
    pub listeners: Vec<ListenerStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ListenerStatus {
    pub name: String,
    #[serde(rename = "supportedKinds")]
    pub supported_kinds: Vec<RouteGroupKind>,
    /// Accepted routes attached to this listener.
    #[serde(rename = "attachedRoutes")]
    pub attached_routes: u32,
    pub conditions: Vec<Condition>,
}

/// Every route's status, sorted by route. Each behind an `Arc`: a build keeps the live plan's
/// status of each route it did not change, and an endpoint refresh keeps the whole list.
pub type RouteStatuses = std::sync::Arc<Vec<std::sync::Arc<RouteStatus>>>;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteStatus {
    pub route: ObjectKey,
    pub parents: Vec<RouteParentStatus>,
}

/// `status.parents[]` of a route, for a parentRef to one of our Gateways.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteParentStatus {
    /// The parentRef with defaults applied (group and kind explicit, as conformance expects).
    #[serde(rename = "parentRef")]
    pub parent_ref: StatusParentRef,
    #[serde(rename = "controllerName")]
    pub controller_name: String,
    pub conditions: Vec<Condition>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StatusParentRef {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    #[serde(rename = "sectionName", skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

impl std::fmt::Display for StatusParentRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)?;
        if let Some(s) = &self.section_name {
            write!(f, " section {s}")?;
        }
        if let Some(p) = self.port {
            write!(f, " port {p}")?;
        }
        Ok(())
    }
}

/// Something wrong or surprising that has no status field to live in (a parentRef to a Gateway
/// that does not exist, a missing GatewayClass, a bad annotation).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub object: String,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Severity {
    Error,
    Warning,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{s}: {}: {}", self.object, self.message)
    }
}
