//! The objects the agent reads (Gateway API kinds, Service, EndpointSlice, Namespace, TLS Secret), converted
//! into an internal form with the CRD defaults applied and CRD validation enforced. No I/O here:
//! sources (files, kube watchers) hand raw objects to [`parse`], and the [`index`] stores the
//! results. An object the API server would reject never reaches the index.

pub mod cors;
pub mod crd;
mod error;
mod filters;
mod gateway;
mod grpc_route;
pub mod http;
pub mod index;
pub mod parse;
mod route;
mod secret;
mod service;
pub mod validate;

use std::{collections::BTreeMap, sync::Arc};

use serde::Serialize;

pub use error::ModelError;
pub(crate) use error::{FieldPath, Refusal};
pub use gateway::{
    AllowedNamespaces, CertificateRef, Gateway, GatewayClass, LabelSelector, Listener, ListenerTls,
    Namespace, ReferenceGrant, RouteGroupKind, SelectorRequirement, TlsMode,
};
pub use index::Index;
pub use route::{BackendRef, HttpRoute, HttpRule, L4Route, ParentRef, RouteKind, TlsRoute};
pub use secret::{Secret, TLS_SECRET_TYPE};
pub use service::{EndpointSlice, Service, ServicePort, SliceEndpoint, SlicePort, TargetPort};

/// The API group of every Gateway API kind.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// The Gateway annotation that overrides the L4/L7 decision (`l4` or `l7`).
pub const DATAPLANE_ANNOTATION: &str = "splitter.dev/dataplane";
/// Kong's annotation, honoured so the guide's manifests run unchanged.
pub const STRIP_PATH_ANNOTATION: &str = "konghq.com/strip-path";
/// Every annotation the plan reads; the index keeps no other.
pub const READ_ANNOTATIONS: [&str; 2] = [DATAPLANE_ANNOTATION, STRIP_PATH_ANNOTATION];
/// The EndpointSlice label naming the Service it belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The kinds the agent indexes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    GatewayClass,
    Gateway,
    HttpRoute,
    GrpcRoute,
    TcpRoute,
    UdpRoute,
    TlsRoute,
    Service,
    EndpointSlice,
    ReferenceGrant,
    Namespace,
    Secret,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::GatewayClass,
        Kind::Gateway,
        Kind::HttpRoute,
        Kind::GrpcRoute,
        Kind::TcpRoute,
        Kind::UdpRoute,
        Kind::TlsRoute,
        Kind::Service,
        Kind::EndpointSlice,
        Kind::ReferenceGrant,
        Kind::Namespace,
        Kind::Secret,
    ];

    /// The Kubernetes `kind` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::GatewayClass => "GatewayClass",
            Kind::Gateway => "Gateway",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::TcpRoute => "TCPRoute",
            Kind::UdpRoute => "UDPRoute",
            Kind::TlsRoute => "TLSRoute",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::ReferenceGrant => "ReferenceGrant",
            Kind::Namespace => "Namespace",
            Kind::Secret => "Secret",
        }
    }

    /// Cluster-scoped kinds have no namespace (it is stored as "").
    pub fn is_namespaced(self) -> bool {
        !matches!(self, Kind::GatewayClass | Kind::Namespace)
    }
}

/// Serialized as Kubernetes spells it (`HTTPRoute`), as statuses and `splitter check` print it.
impl Serialize for Kind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The identity of an object: in the index, in the plan and in status patches.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectKey {
    pub kind: Kind,
    /// "" for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: Kind, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// The metadata the plan needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    pub namespace: String,
    pub name: String,
    /// `metadata.generation`; objects read from files have none, and count as generation 1 as
    /// they would right after creation.
    pub generation: i64,
    /// `metadata.creationTimestamp` in seconds since the epoch; `None` sorts as the newest.
    pub created: Option<i64>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

/// One indexed object, converted and validated. Each is behind an `Arc`: a file source keeps
/// the objects it read (to diff the next read against, and to keep a broken document's last
/// good version) and the index holds the same ones, so each object is in memory once.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    GatewayClass(Arc<GatewayClass>),
    Gateway(Arc<Gateway>),
    HttpRoute(Arc<HttpRoute>),
    /// A GRPCRoute, lowered to an HTTPRoute's shape (`kind` is [`RouteKind::Grpc`]).
    GrpcRoute(Arc<HttpRoute>),
    TcpRoute(Arc<L4Route>),
    UdpRoute(Arc<L4Route>),
    TlsRoute(Arc<TlsRoute>),
    Service(Arc<Service>),
    EndpointSlice(Arc<EndpointSlice>),
    ReferenceGrant(Arc<ReferenceGrant>),
    Namespace(Arc<Namespace>),
    Secret(Arc<Secret>),
}

impl Object {
    pub fn kind(&self) -> Kind {
        match self {
            Object::GatewayClass(_) => Kind::GatewayClass,
            Object::Gateway(_) => Kind::Gateway,
            Object::HttpRoute(_) => Kind::HttpRoute,
            Object::GrpcRoute(_) => Kind::GrpcRoute,
            Object::TcpRoute(_) => Kind::TcpRoute,
            Object::UdpRoute(_) => Kind::UdpRoute,
            Object::TlsRoute(_) => Kind::TlsRoute,
            Object::Service(_) => Kind::Service,
            Object::EndpointSlice(_) => Kind::EndpointSlice,
            Object::ReferenceGrant(_) => Kind::ReferenceGrant,
            Object::Namespace(_) => Kind::Namespace,
            Object::Secret(_) => Kind::Secret,
        }
    }

    pub fn meta(&self) -> &Meta {
        match self {
            Object::GatewayClass(o) => &o.meta,
            Object::Gateway(o) => &o.meta,
            Object::HttpRoute(o) | Object::GrpcRoute(o) => &o.meta,
            Object::TcpRoute(o) | Object::UdpRoute(o) => &o.meta,
            Object::TlsRoute(o) => &o.meta,
            Object::Service(o) => &o.meta,
            Object::EndpointSlice(o) => &o.meta,
            Object::ReferenceGrant(o) => &o.meta,
            Object::Namespace(o) => &o.meta,
            Object::Secret(o) => &o.meta,
        }
    }

    pub fn key(&self) -> ObjectKey {
        let m = self.meta();
        ObjectKey::new(self.kind(), m.namespace.clone(), m.name.clone())
    }

    /// A copy of the object in an allocation of its own, with no spare capacity: what parsing
    /// leaves (`String`s and `Vec`s grown while reading) is about a third more than the object.
    pub fn compacted(&self) -> Object {
        fn c<T: Clone>(o: &Arc<T>) -> Arc<T> {
            Arc::new(T::clone(o))
        }
        match self {
            Object::GatewayClass(o) => Object::GatewayClass(c(o)),
            Object::Gateway(o) => Object::Gateway(c(o)),
            Object::HttpRoute(o) => Object::HttpRoute(c(o)),
            Object::GrpcRoute(o) => Object::GrpcRoute(c(o)),
            Object::TcpRoute(o) => Object::TcpRoute(c(o)),
            Object::UdpRoute(o) => Object::UdpRoute(c(o)),
            Object::TlsRoute(o) => Object::TlsRoute(c(o)),
            Object::Service(o) => Object::Service(c(o)),
            Object::EndpointSlice(o) => Object::EndpointSlice(c(o)),
            Object::ReferenceGrant(o) => Object::ReferenceGrant(c(o)),
            Object::Namespace(o) => Object::Namespace(c(o)),
            Object::Secret(o) => Object::Secret(c(o)),
        }
    }
}
