//! Service and EndpointSlice: where a backendRef's traffic ends up.

use std::net::IpAddr;

use k8s_openapi::{
    api::{core::v1::Service as RawService, discovery::v1::EndpointSlice as RawSlice},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{FieldPath, Meta, ModelError, SERVICE_NAME_LABEL, validate};

#[derive(Clone, Debug, PartialEq)]
pub struct Service {
    pub meta: Meta,
    /// `type: ExternalName` Services have no endpoints we may route to (CVE-2021-25740).
    pub external_name: bool,
    pub ports: Vec<ServicePort>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ServicePort {
    /// "" when the Service has a single unnamed port; EndpointSlice ports carry the same name.
    pub name: String,
    pub port: u16,
    pub target_port: TargetPort,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// `appProtocol`, as written (GEP-1911: `kubernetes.io/h2c`, `kubernetes.io/ws`, ...).
    pub app_protocol: Option<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug, PartialEq)]
pub struct EndpointSlice {
    pub meta: Meta,
    /// From the `kubernetes.io/service-name` label; a slice without it belongs to no Service.
    pub service_name: Option<String>,
    pub ports: Vec<SlicePort>,
    pub endpoints: Vec<SliceEndpoint>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SlicePort {
    pub name: String,
    pub port: u16,
    pub protocol: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SliceEndpoint {
    /// The endpoint's first address: the one a data plane sends to (kube-proxy uses only it
    /// too). The others are checked and dropped: held inline, a cluster's tens of thousands of
    /// endpoints are not as many allocations, and the walks over them (the node of each
    /// address the kernel serves, on every endpoint refresh) do not miss the cache on each.
    pub address: Option<IpAddr>,
    /// `conditions.ready`; unknown counts as ready, as the EndpointSlice API says.
    pub ready: bool,
    /// `nodeName`: the node the endpoint runs on. The kernel path DNATs to a local endpoint
    /// and DNATs plus SNATs to a remote one, so that its replies come back through this node.
    pub node_name: Option<String>,
}

pub(crate) fn service(raw: RawService, meta: Meta, id: &str) -> Result<Service, ModelError> {
    let spec = raw.spec.unwrap_or_default();
    let at = FieldPath::root(id, "spec.ports");
    let mut ports = Vec::new();
    for (i, p) in spec.ports.unwrap_or_default().into_iter().enumerate() {
        let pat = at.index(i);
        let port = validate::port(p.port).map_err(|e| pat.field("port").err(e))?;
        let target_port = match p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => {
                TargetPort::Number(validate::port(n).map_err(|e| pat.field("targetPort").err(e))?)
            }
            Some(IntOrString::String(s)) => match s.parse::<i32>() {
                Ok(n) => TargetPort::Number(
                    validate::port(n).map_err(|e| pat.field("targetPort").err(e))?,
                ),
                Err(_) => TargetPort::Name(s),
            },
        };
        ports.push(ServicePort {
            name: p.name.unwrap_or_default(),
            port,
            target_port,
            protocol: p.protocol.unwrap_or_else(|| "TCP".to_string()),
            app_protocol: p.app_protocol.filter(|a| !a.is_empty()),
        });
    }
    Ok(Service {
        meta,
        external_name: spec.type_.as_deref() == Some("ExternalName"),
        ports,
    })
}

pub(crate) fn endpoint_slice(
    raw: RawSlice,
    mut meta: Meta,
    id: &str,
) -> Result<EndpointSlice, ModelError> {
    let root = FieldPath::root(id, "");
    let fqdn = raw.address_type == "FQDN";
    let mut endpoints = Vec::new();
    for (i, e) in raw.endpoints.into_iter().enumerate() {
        let at = root.field("endpoints").index(i);
        let mut address = None;
        // FQDN slices name hosts rather than addresses; a data plane that splits by address
        // cannot use them, so they count as having no endpoints.
        if !fqdn {
            for (j, a) in e.addresses.iter().enumerate() {
                let ip = a.parse::<IpAddr>().map_err(|_| {
                    at.field("addresses")
                        .index(j)
                        .err(format!("{a:?} is not an IP address"))
                })?;
                address = address.or(Some(ip));
            }
        }
        let ready = e.conditions.and_then(|c| c.ready).unwrap_or(true);
        let node_name = e.node_name.filter(|n| !n.is_empty());
        endpoints.push(SliceEndpoint {
            address,
            ready,
            node_name,
        });
    }
    let mut ports = Vec::new();
    for (i, p) in raw.ports.unwrap_or_default().into_iter().enumerate() {
        let Some(n) = p.port else { continue };
        let port =
            validate::port(n).map_err(|e| root.field("ports").index(i).field("port").err(e))?;
        ports.push(SlicePort {
            name: p.name.unwrap_or_default(),
            port,
            protocol: p.protocol.unwrap_or_else(|| "TCP".to_string()),
        });
    }
    // The only label read; the map goes, not to be held for every slice.
    let service_name = std::mem::take(&mut meta.labels).remove(SERVICE_NAME_LABEL);
    Ok(EndpointSlice {
        meta,
        service_name,
        ports,
        endpoints,
    })
}
