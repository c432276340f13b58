//! Every Kubernetes API call the agent makes, in one table.
//!
//! The kube source builds its watchers from [`WATCHED`], the status writer its patch targets
//! from [`STATUS_WRITTEN`] and the lease from [`LEASE`]; `deploy/rbac.yaml` is tested against
//! [`required`], so RBAC grants exactly what the code uses and a new call cannot ship without
//! its permission.

use kube::core::ApiResource;

use crate::model::Kind;

/// A resource the agent reads or writes, as RBAC names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resource {
    pub kind: Kind,
    /// `""` for the core group.
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    /// Restricts the list and watch to matching objects (`fieldSelector`).
    pub field_selector: Option<&'static str>,
}

impl Resource {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The dynamic API type kube's `Api<DynamicObject>` needs.
    pub fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.to_string(),
            version: self.version.to_string(),
            api_version: self.api_version(),
            kind: self.kind.as_str().to_string(),
            plural: self.plural.to_string(),
        }
    }
}

const fn gw(kind: Kind, plural: &'static str) -> Resource {
    Resource {
        kind,
        group: crate::model::GATEWAY_GROUP,
        version: "v1",
        plural,
        field_selector: None,
    }
}

/// Listed and watched cluster-wide. Namespaces are watched for listeners whose
/// `allowedRoutes.namespaces` is a label selector. Secrets are watched for the certificates of
/// HTTPS listeners, and only those of type `kubernetes.io/tls` (a field selector the API server
/// applies): RBAC cannot narrow a list/watch grant by type, so the ClusterRole still lets the
/// agent read every Secret, but the agent never asks for any other kind of Secret.
pub const WATCHED: [Resource; 12] = [
    gw(Kind::GatewayClass, "gatewayclasses"),
    gw(Kind::Gateway, "gateways"),
    gw(Kind::HttpRoute, "httproutes"),
    gw(Kind::GrpcRoute, "grpcroutes"),
    gw(Kind::TcpRoute, "tcproutes"),
    gw(Kind::UdpRoute, "udproutes"),
    gw(Kind::TlsRoute, "tlsroutes"),
    gw(Kind::ReferenceGrant, "referencegrants"),
    Resource {
        kind: Kind::Service,
        group: "",
        version: "v1",
        plural: "services",
        field_selector: None,
    },
    Resource {
        kind: Kind::EndpointSlice,
        group: "discovery.k8s.io",
        version: "v1",
        plural: "endpointslices",
        field_selector: None,
    },
    Resource {
        kind: Kind::Namespace,
        group: "",
        version: "v1",
        plural: "namespaces",
        field_selector: None,
    },
    Resource {
        kind: Kind::Secret,
        group: "",
        version: "v1",
        plural: "secrets",
        field_selector: Some(TLS_SECRETS),
    },
];

/// The field selector of the Secret watch.
pub const TLS_SECRETS: &str = "type=kubernetes.io/tls";

/// Kinds whose `status` subresource the leader patches (server-side apply).
pub const STATUS_WRITTEN: [Kind; 7] = [
    Kind::GatewayClass,
    Kind::Gateway,
    Kind::HttpRoute,
    Kind::GrpcRoute,
    Kind::TcpRoute,
    Kind::UdpRoute,
    Kind::TlsRoute,
];

/// The watched resource of a kind.
pub fn watched(kind: Kind) -> Option<&'static Resource> {
    WATCHED.iter().find(|r| r.kind == kind)
}

/// The Lease the status writers elect their leader with, in the agent's own namespace.
pub const LEASE: LeaseAccess = LeaseAccess {
    group: "coordination.k8s.io",
    plural: "leases",
    verbs: &["get", "create", "update"],
};

/// The agent's own pods (the DaemonSet's, by label, in its namespace), listed by the status
/// writer: the nodes whose pods are Ready are the nodes serving every Gateway, and their
/// addresses are `status.addresses` of a Gateway without `spec.addresses`.
pub const AGENT_PODS: LeaseAccess = LeaseAccess {
    group: "",
    plural: "pods",
    verbs: &["list"],
};

#[derive(Clone, Copy, Debug)]
pub struct LeaseAccess {
    pub group: &'static str,
    pub plural: &'static str,
    pub verbs: &'static [&'static str],
}

/// Where a permission applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// A ClusterRole: objects of every namespace.
    Cluster,
    /// A Role in the agent's namespace.
    OwnNamespace,
}

/// One permission: `verbs` on `group`/`resource` (a subresource as `resource/status`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Permission {
    pub scope: Scope,
    pub group: String,
    pub resource: String,
    pub verb: String,
}

/// Every permission the agent's API calls need, one verb at a time.
pub fn required() -> Vec<Permission> {
    let p = |scope, group: &str, resource: String, verb: &str| Permission {
        scope,
        group: group.to_string(),
        resource,
        verb: verb.to_string(),
    };
    let mut out = Vec::new();
    for r in &WATCHED {
        // A watcher lists, then watches from the list's resourceVersion.
        for verb in ["list", "watch"] {
            out.push(p(Scope::Cluster, r.group, r.plural.to_string(), verb));
        }
    }
    for kind in STATUS_WRITTEN {
        if let Some(r) = watched(kind) {
            out.push(p(
                Scope::Cluster,
                r.group,
                format!("{}/status", r.plural),
                "patch",
            ));
        }
    }
    for access in [LEASE, AGENT_PODS] {
        for verb in access.verbs {
            out.push(p(
                Scope::OwnNamespace,
                access.group,
                access.plural.to_string(),
                verb,
            ));
        }
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::Resource as _;

    /// The table must name the same API types as the typed structs the model parses.
    #[test]
    fn table_matches_the_typed_resources() {
        fn check<K: kube::Resource<DynamicType = ()>>(kind: Kind) {
            let r = watched(kind).expect("watched");
            assert_eq!(r.group, K::group(&()), "{kind}");
            assert_eq!(r.version, K::version(&()), "{kind}");
            assert_eq!(r.plural, K::plural(&()), "{kind}");
            assert_eq!(r.kind.as_str(), K::kind(&()), "{kind}");
        }
        check::<gateway_api::gatewayclasses::GatewayClass>(Kind::GatewayClass);
        check::<gateway_api::gateways::Gateway>(Kind::Gateway);
        check::<gateway_api::httproutes::HttpRoute>(Kind::HttpRoute);
        check::<gateway_api::grpcroutes::GrpcRoute>(Kind::GrpcRoute);
        check::<crate::model::crd::TcpRoute>(Kind::TcpRoute);
        check::<crate::model::crd::UdpRoute>(Kind::UdpRoute);
        check::<gateway_api::tlsroutes::TlsRoute>(Kind::TlsRoute);
        check::<gateway_api::referencegrants::ReferenceGrant>(Kind::ReferenceGrant);
        check::<k8s_openapi::api::core::v1::Service>(Kind::Service);
        check::<k8s_openapi::api::discovery::v1::EndpointSlice>(Kind::EndpointSlice);
        check::<k8s_openapi::api::core::v1::Namespace>(Kind::Namespace);
        check::<k8s_openapi::api::core::v1::Secret>(Kind::Secret);
        // Only TLS Secrets are ever listed or watched.
        assert_eq!(
            watched(Kind::Secret).and_then(|r| r.field_selector),
            Some("type=kubernetes.io/tls")
        );
        assert!(
            WATCHED
                .iter()
                .filter(|r| r.kind != Kind::Secret)
                .all(|r| r.field_selector.is_none())
        );
        assert_eq!(
            k8s_openapi::api::coordination::v1::Lease::group(&()),
            LEASE.group
        );
        assert_eq!(
            k8s_openapi::api::coordination::v1::Lease::plural(&()),
            LEASE.plural
        );
        // Every kind the index holds is watched.
        for kind in Kind::ALL {
            assert!(watched(kind).is_some(), "{kind} is not watched");
        }
    }
}
