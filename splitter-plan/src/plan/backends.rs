//! backendRef -> [`PlannedBackend`]: kind check, ReferenceGrant check, Service and port
//! lookup, ready endpoints from the Service's EndpointSlices.

use std::{collections::BTreeSet, net::SocketAddr};

use super::l7::{BackendProtocol, BackendTarget, InvalidReason, PlannedBackend};
use crate::model::{BackendRef, Index, Service, ServicePort, TargetPort};

/// Why a backendRef did not resolve, for the route's `ResolvedRefs` condition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unresolved {
    pub reason: InvalidReason,
    pub message: String,
}

pub(crate) struct Resolver<'a> {
    index: &'a Index,
}

impl<'a> Resolver<'a> {
    pub fn new(index: &'a Index) -> Self {
        Self { index }
    }

    /// Resolves one backendRef of a route of kind `route_kind` in `route_ns`.
    pub fn resolve(
        &self,
        route_kind: &str,
        route_ns: &str,
        b: &BackendRef,
    ) -> (PlannedBackend, Option<Unresolved>) {
        let name = match b.port {
            Some(p) => format!("{}/{}:{p}", b.namespace, b.name),
            None => format!("{}/{}", b.namespace, b.name),
        };
        let invalid = |reason, message: String| {
            (
                PlannedBackend {
                    name: name.clone(),
                    weight: b.weight,
                    target: BackendTarget::Invalid(reason),
                    filters: b.filters.clone(),
                    protocol: BackendProtocol::Http1,
                },
                Some(Unresolved { reason, message }),
            )
        };
        if !b.is_service() {
            let group = if b.group.is_empty() { "core" } else { &b.group };
            return invalid(
                InvalidReason::InvalidKind,
                format!(
                    "backendRef {name}: kind {} in group {group} is not supported (only core Service)",
                    b.kind
                ),
            );
        }
        if b.namespace != route_ns && !self.granted(route_kind, route_ns, b) {
            return invalid(
                InvalidReason::RefNotPermitted,
                format!(
                    "backendRef {name}: no ReferenceGrant in namespace {} allows {route_kind}s from {route_ns} to Service {}",
                    b.namespace, b.name
                ),
            );
        }
        let Some(svc) = self
            .index
            .services
            .get(&(b.namespace.clone(), b.name.clone()))
        else {
            return invalid(
                InvalidReason::BackendNotFound,
                format!("backendRef {name}: Service not found"),
            );
        };
        if svc.external_name {
            return invalid(
                InvalidReason::InvalidKind,
                format!("backendRef {name}: ExternalName Services are not supported"),
            );
        }
        let port = b.port.unwrap_or_default();
        let Some(sp) = svc.ports.iter().find(|p| p.port == port) else {
            return invalid(
                InvalidReason::BackendNotFound,
                format!("backendRef {name}: the Service has no port {port}"),
            );
        };
        let protocol = match backend_protocol(sp.app_protocol.as_deref()) {
            Ok(p) => p,
            Err(why) => {
                return invalid(
                    InvalidReason::UnsupportedProtocol,
                    format!("backendRef {name}: {why}"),
                );
            }
        };
        let eps = self.ready_endpoints(svc, sp);
        let target = if eps.is_empty() {
            BackendTarget::NoEndpoints
        } else {
            BackendTarget::Endpoints(eps)
        };
        (
            PlannedBackend {
                name,
                weight: b.weight,
                target,
                filters: b.filters.clone(),
                protocol,
            },
            None,
        )
    }

    fn granted(&self, route_kind: &str, route_ns: &str, b: &BackendRef) -> bool {
        self.index
            .reference_grants
            .range((b.namespace.clone(), String::new())..)
            .take_while(|((ns, _), _)| *ns == b.namespace)
            .any(|(_, g)| g.permits(route_kind, route_ns, "", "Service", &b.name))
    }

    /// Ready endpoints of one Service port: address and the slice's port of the same name,
    /// deduplicated (a pod can sit in two slices while they are rebalanced) and sorted.
    pub fn ready_endpoints(&self, svc: &Service, sp: &ServicePort) -> Vec<SocketAddr> {
        let mut out = BTreeSet::new();
        for s in self.index.slices_of(&svc.meta.namespace, &svc.meta.name) {
            let port = match s
                .ports
                .iter()
                .find(|p| p.name == sp.name && p.protocol == sp.protocol)
            {
                Some(p) => p.port,
                // A slice without ports serves every port; only a numeric targetPort tells which.
                None if s.ports.is_empty() => match sp.target_port {
                    TargetPort::Number(n) => n,
                    TargetPort::Name(_) => continue,
                },
                None => continue,
            };
            for e in s.endpoints.iter().filter(|e| e.ready) {
                if let Some(ip) = e.address {
                    out.insert(SocketAddr::new(ip, port));
                }
            }
        }
        out.into_iter().collect()
    }
}

/// The protocol a Service port's `appProtocol` asks for (GEP-1911, with the Kubernetes
/// standard application protocols of KEP-3726). `kubernetes.io/h2c` is HTTP/2 with prior
/// knowledge; `kubernetes.io/ws` is WebSocket over HTTP/1.1, which the proxy's Upgrade tunnel
/// serves. `kubernetes.io/wss` needs TLS to the backend, which the proxy does not speak: the
/// ref is invalid (`UnsupportedProtocol`) rather than sent cleartext. Any other value
/// (IANA names such as `http`, vendor-prefixed ones) says nothing the proxy acts on and is
/// ignored: HTTP/1.1, as without one.
pub(crate) fn backend_protocol(app_protocol: Option<&str>) -> Result<BackendProtocol, String> {
    match app_protocol {
        Some("kubernetes.io/h2c") => Ok(BackendProtocol::H2c),
        Some("kubernetes.io/wss") => Err(
            "appProtocol kubernetes.io/wss needs TLS to the backend, which is not supported"
                .to_string(),
        ),
        _ => Ok(BackendProtocol::Http1),
    }
}
