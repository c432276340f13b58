//! Raw Kubernetes objects (as JSON values, whatever the source) -> [`Object`]s.
//!
//! The `apiVersion` and `kind` select the type; the typed deserialisation runs through
//! `serde_path_to_error` so a wrong field is named by its path, and then the converters apply
//! CRD defaults and validation.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{
    GATEWAY_GROUP, Kind, Meta, ModelError, Object, crd, gateway, grpc_route, route, secret, service,
};

/// What a raw document turned out to be.
#[derive(Debug)]
pub enum Parsed {
    Object(Box<Object>),
    /// A kind the agent has no use for (Deployment, ConfigMap, ...).
    Skipped {
        api_version: String,
        kind: String,
    },
}

/// The `kind`, namespace and name a raw document claims, read without validating anything, so
/// that an error can still say which object it is about.
pub fn identity(value: &Value) -> (String, String, String) {
    let s = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or("").to_string();
    let meta = value.get("metadata");
    (
        s(value.get("kind")),
        s(meta.and_then(|m| m.get("namespace"))),
        s(meta.and_then(|m| m.get("name"))),
    )
}

/// The kind this `apiVersion`/`kind` pair is indexed as; `Ok(None)` for kinds we skip, and an
/// error for one of our kinds in a version we do not read.
pub fn kind_of(api_version: &str, kind: &str) -> Result<Option<Kind>, String> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let ours = match (group, kind) {
        (GATEWAY_GROUP, "GatewayClass") => Some((Kind::GatewayClass, &["v1", "v1beta1"][..])),
        (GATEWAY_GROUP, "Gateway") => Some((Kind::Gateway, &["v1", "v1beta1"][..])),
        (GATEWAY_GROUP, "HTTPRoute") => Some((Kind::HttpRoute, &["v1", "v1beta1"][..])),
        (GATEWAY_GROUP, "GRPCRoute") => Some((Kind::GrpcRoute, &["v1"][..])),
        (GATEWAY_GROUP, "TCPRoute") => Some((Kind::TcpRoute, &["v1", "v1alpha2"][..])),
        (GATEWAY_GROUP, "UDPRoute") => Some((Kind::UdpRoute, &["v1", "v1alpha2"][..])),
        // v1 since Gateway API v1.5 (the upstream conformance manifests use it); the alpha
        // versions have the same shape, hostnames optional.
        (GATEWAY_GROUP, "TLSRoute") => Some((Kind::TlsRoute, &["v1", "v1alpha3", "v1alpha2"][..])),
        (GATEWAY_GROUP, "ReferenceGrant") => Some((Kind::ReferenceGrant, &["v1", "v1beta1"][..])),
        ("", "Service") => Some((Kind::Service, &["v1"][..])),
        ("", "Namespace") => Some((Kind::Namespace, &["v1"][..])),
        ("", "Secret") => Some((Kind::Secret, &["v1"][..])),
        ("discovery.k8s.io", "EndpointSlice") => Some((Kind::EndpointSlice, &["v1"][..])),
        _ => None,
    };
    match ours {
        None => Ok(None),
        Some((k, versions)) if versions.contains(&version) => Ok(Some(k)),
        Some((_, versions)) => Err(format!(
            "{kind} {api_version} is not a version we read (use {})",
            versions
                .iter()
                .map(|v| if group.is_empty() {
                    v.to_string()
                } else {
                    format!("{group}/{v}")
                })
                .collect::<Vec<_>>()
                .join(" or ")
        )),
    }
}

/// Converts one raw object. Errors name the object, the field path and the reason.
pub fn parse(value: Value) -> Result<Parsed, ModelError> {
    let (kind_str, ns, name) = identity(&value);
    let label = |ns: &str| -> String {
        match (ns.is_empty(), name.is_empty()) {
            (_, true) => format!("{kind_str} (unnamed)"),
            (true, false) => format!("{kind_str} {name}"),
            (false, false) => format!("{kind_str} {ns}/{name}"),
        }
    };
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if api_version.is_empty() {
        return Err(ModelError::new(label(&ns), "apiVersion", "missing"));
    }
    if kind_str.is_empty() {
        return Err(ModelError::new(label(&ns), "kind", "missing"));
    }
    let kind = match kind_of(&api_version, &kind_str) {
        Ok(Some(k)) => k,
        Ok(None) => {
            return Ok(Parsed::Skipped {
                api_version,
                kind: kind_str,
            });
        }
        Err(e) => {
            // Not read as a kind yet; namespaced unless it is one of the two cluster kinds.
            let cluster = matches!(kind_str.as_str(), "GatewayClass" | "Namespace");
            let ns = if ns.is_empty() && !cluster {
                "default"
            } else {
                &ns
            };
            return Err(ModelError::new(label(ns), "apiVersion", e));
        }
    };
    // Objects without a namespace land in "default", as `kubectl apply` would put them.
    let ns = if kind.is_namespaced() && ns.is_empty() {
        "default".to_string()
    } else {
        ns
    };
    let id = label(if kind.is_namespaced() { &ns } else { "" });
    let raw_meta: ObjectMeta = match value.get("metadata") {
        Some(m) => typed(m.clone(), &id, "metadata.")?,
        None => return Err(ModelError::new(id, "metadata", "missing")),
    };
    if name.is_empty() {
        return Err(ModelError::new(id, "metadata.name", "missing"));
    }
    let meta = meta(
        kind,
        raw_meta,
        if kind.is_namespaced() {
            ns
        } else {
            String::new()
        },
    );
    let object = match kind {
        Kind::GatewayClass => Object::GatewayClass(Arc::new(gateway::gateway_class(
            typed(value, &id, "")?,
            meta,
            &id,
        )?)),
        Kind::Gateway => Object::Gateway(Arc::new(gateway::gateway(
            typed(value, &id, "")?,
            meta,
            &id,
        )?)),
        Kind::HttpRoute => Object::HttpRoute(Arc::new(route::http_route(
            typed(value, &id, "")?,
            meta,
            &id,
        )?)),
        Kind::GrpcRoute => Object::GrpcRoute(Arc::new(grpc_route::grpc_route(
            typed(value, &id, "")?,
            meta,
            &id,
        )?)),
        Kind::TcpRoute => {
            let raw: crd::TcpRoute = typed(value, &id, "")?;
            Object::TcpRoute(Arc::new(route::l4_route(
                meta,
                raw.spec.parent_refs,
                raw.spec.rules,
                &id,
            )?))
        }
        Kind::UdpRoute => {
            let raw: crd::UdpRoute = typed(value, &id, "")?;
            Object::UdpRoute(Arc::new(route::l4_route(
                meta,
                raw.spec.parent_refs,
                raw.spec.rules,
                &id,
            )?))
        }
        Kind::TlsRoute => {
            let v1 = api_version.ends_with("/v1");
            let mut value = value;
            // v1 requires hostnames; the alpha versions let them out (any SNI).
            if !v1 && let Some(spec) = value.get_mut("spec").and_then(Value::as_object_mut) {
                spec.entry("hostnames")
                    .or_insert_with(|| Value::Array(Vec::new()));
            }
            Object::TlsRoute(Arc::new(route::tls_route(
                typed(value, &id, "")?,
                meta,
                v1,
                &id,
            )?))
        }
        Kind::ReferenceGrant => Object::ReferenceGrant(Arc::new(gateway::reference_grant(
            typed(value, &id, "")?,
            meta,
            &id,
        )?)),
        Kind::Service => Object::Service(Arc::new(service::service(
            typed(value, &id, "")?,
            meta,
            &id,
        )?)),
        Kind::EndpointSlice => Object::EndpointSlice(Arc::new(service::endpoint_slice(
            typed(value, &id, "")?,
            meta,
            &id,
        )?)),
        Kind::Namespace => {
            Object::Namespace(Arc::new(gateway::namespace(typed(value, &id, "")?, meta)))
        }
        Kind::Secret => Object::Secret(Arc::new(secret::secret(typed(value, &id, "")?, meta))),
    };
    Ok(Parsed::Object(Box::new(object)))
}

fn typed<T: DeserializeOwned>(value: Value, id: &str, prefix: &str) -> Result<T, ModelError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            prefix.trim_end_matches('.').to_string()
        } else {
            format!("{prefix}{path}")
        };
        ModelError::new(id, field, e.into_inner().to_string())
    })
}

fn meta(kind: Kind, m: ObjectMeta, namespace: String) -> Meta {
    // Labels are read on Namespaces (a listener's `allowedRoutes` selector) and for an
    // EndpointSlice's Service, which its conversion takes out; a cluster labels everything
    // (app, chart, team), and held for every object they would be a small map each.
    let labels = match kind {
        Kind::Namespace | Kind::EndpointSlice => m.labels.unwrap_or_default(),
        _ => BTreeMap::new(),
    };
    Meta {
        namespace,
        name: m.name.unwrap_or_default(),
        generation: m.generation.unwrap_or(1),
        created: m.creation_timestamp.map(|t| t.0.as_second()),
        labels,
        // Only the annotations the plan reads: the others (kubectl's last-applied copy of the
        // whole object among them) would double the index's memory and make a change to them
        // look like a change to the plan's input.
        annotations: m
            .annotations
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| super::READ_ANNOTATIONS.contains(&k.as_str()))
            .collect(),
    }
}

/// The documents of a multi-document YAML text, as JSON values.
///
/// The parser's default budget (1024 documents, 250k nodes per stream) is meant for config
/// files; generated manifests of a large cluster pass it. The limits stay, raised so that they
/// still stop a YAML bomb but not 10k routes in one file.
pub fn documents(text: &str) -> Result<Vec<Value>, serde_saphyr::Error> {
    let options = serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_documents: 200_000,
            max_events: 100_000_000,
            max_nodes: 50_000_000,
        },
    };
    serde_saphyr::from_multiple_with_options(text, options)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_yaml(s: &str) -> Result<Parsed, ModelError> {
        parse(serde_saphyr::from_str(s).unwrap())
    }

    #[test]
    fn skipped_kinds() {
        let p =
            parse_yaml("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: echo}\n").unwrap();
        assert!(matches!(p, Parsed::Skipped { kind, .. } if kind == "Deployment"));
    }

    #[test]
    fn wrong_version_of_our_kind() {
        let e = parse_yaml(
            "apiVersion: gateway.networking.k8s.io/v9\nkind: HTTPRoute\nmetadata: {name: r}\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "apiVersion");
        assert_eq!(e.object, "HTTPRoute default/r");
    }

    #[test]
    fn typed_error_names_the_field() {
        let e = parse_yaml(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: ns}\n\
             spec:\n  rules:\n  - matches:\n    - path: {type: Prefixy, value: /}\n",
        )
        .unwrap_err();
        assert_eq!(e.object, "HTTPRoute ns/r");
        assert_eq!(e.field, "spec.rules[0].matches[0].path.type");
    }

    /// An endpoint keeps the address the data plane uses, its first; every one is checked.
    #[test]
    fn an_endpoint_keeps_its_first_address_and_checks_them_all() {
        let slice = |addresses: &str| {
            parse_yaml(&format!(
                "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: s}}\n\
                 addressType: IPv4\nendpoints:\n- addresses: {addresses}\n  nodeName: n1\n"
            ))
        };
        let Ok(Parsed::Object(o)) = slice("[10.0.0.1, 10.0.0.2]") else {
            panic!("parsed")
        };
        let Object::EndpointSlice(s) = *o else {
            panic!("a slice")
        };
        assert_eq!(s.endpoints[0].address, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(s.endpoints[0].node_name.as_deref(), Some("n1"));
        let e = slice("[10.0.0.1, nope]").unwrap_err();
        assert_eq!(e.field, "endpoints[0].addresses[1]");
    }

    /// kubectl's last-applied copy of the whole object (and any annotation the plan does not
    /// read) is not kept: it would double the index and make its edits look like changes.
    #[test]
    fn only_the_annotations_the_plan_reads_are_kept() {
        let p = parse_yaml(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata:\n  name: g\n  annotations:\n    \
             kubectl.kubernetes.io/last-applied-configuration: '{\"big\": true}'\n    \
             splitter.dev/dataplane: l7\n    team: x\n\
             spec: {gatewayClassName: splitter, listeners: [{name: h, port: 80, protocol: HTTP}]}\n",
        )
        .unwrap();
        let Parsed::Object(o) = p else { panic!() };
        let Object::Gateway(g) = *o else { panic!() };
        assert_eq!(
            g.meta.annotations.clone().into_iter().collect::<Vec<_>>(),
            [("splitter.dev/dataplane".to_string(), "l7".to_string())]
        );
    }

    /// Labels are kept where the plan reads them (a Namespace's, for `allowedRoutes`
    /// selectors) and dropped elsewhere, an EndpointSlice's once its Service is read from them:
    /// a relabelled object is no change to the plan's input.
    #[test]
    fn labels_are_kept_only_where_the_plan_reads_them() {
        let object = |yaml: &str| match parse_yaml(yaml).unwrap() {
            Parsed::Object(o) => *o,
            Parsed::Skipped { .. } => panic!("skipped"),
        };
        let labelled = "metadata: {name: x, namespace: ns, labels: {team: a, kubernetes.io/service-name: svc}}";
        let Object::Namespace(n) =
            object("apiVersion: v1\nkind: Namespace\nmetadata: {name: ns, labels: {team: a}}\n")
        else {
            panic!()
        };
        assert_eq!(n.meta.labels.get("team").map(String::as_str), Some("a"));
        let Object::Service(svc) = object(&format!(
            "apiVersion: v1\nkind: Service\n{labelled}\nspec: {{ports: [{{port: 80}}]}}\n"
        )) else {
            panic!()
        };
        assert!(svc.meta.labels.is_empty(), "{:?}", svc.meta.labels);
        let Object::EndpointSlice(slice) = object(&format!(
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n{labelled}\naddressType: IPv4\nendpoints: []\n"
        )) else {
            panic!()
        };
        assert_eq!(slice.service_name.as_deref(), Some("svc"));
        assert!(slice.meta.labels.is_empty(), "{:?}", slice.meta.labels);
    }
}
