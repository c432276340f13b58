//! The index: every object the plan reads, by kind, namespace and name.
//!
//! It does not know where objects come from. A file source and a kube watcher feed it the
//! same three operations: `apply` (create or replace), `delete`, and `reset` (a relist: the given
//! objects become the whole content of that kind).

use std::collections::BTreeMap;

use super::{
    EndpointSlice, Gateway, GatewayClass, HttpRoute, Kind, L4Route, Namespace, Object, ObjectKey,
    ReferenceGrant, Secret, Service, TlsRoute,
};

/// `(namespace, name)`; the namespace is "" for cluster-scoped kinds.
pub type NsName = (String, String);

/// One change to the index, as a source reports it.
#[derive(Clone, Debug, PartialEq)]
pub enum Update {
    Apply(Box<Object>),
    Delete(ObjectKey),
    /// The complete set of objects of one kind (objects of another kind are ignored).
    Reset(Kind, Vec<Object>),
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Index {
    pub gateway_classes: BTreeMap<String, GatewayClass>,
    pub gateways: BTreeMap<NsName, Gateway>,
    pub http_routes: BTreeMap<NsName, HttpRoute>,
    pub tcp_routes: BTreeMap<NsName, L4Route>,
    pub udp_routes: BTreeMap<NsName, L4Route>,
    pub tls_routes: BTreeMap<NsName, TlsRoute>,
    pub services: BTreeMap<NsName, Service>,
    pub endpoint_slices: BTreeMap<NsName, EndpointSlice>,
    pub reference_grants: BTreeMap<NsName, ReferenceGrant>,
    pub namespaces: BTreeMap<String, Namespace>,
    pub secrets: BTreeMap<NsName, Secret>,
}

impl Index {
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds an index holding exactly `objects` (later duplicates replace earlier ones).
    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> Self {
        let mut index = Self::new();
        for o in objects {
            index.apply(o);
        }
        index
    }

    pub fn update(&mut self, update: Update) {
        match update {
            Update::Apply(o) => self.apply(*o),
            Update::Delete(key) => {
                self.delete(&key);
            }
            Update::Reset(kind, objects) => self.reset(kind, objects),
        }
    }

    /// Creates or replaces the object with the same kind, namespace and name.
    pub fn apply(&mut self, object: Object) {
        let key = object.key();
        let nn = (key.namespace, key.name);
        match object {
            Object::GatewayClass(o) => {
                self.gateway_classes.insert(nn.1, o);
            }
            Object::Gateway(o) => {
                self.gateways.insert(nn, o);
            }
            Object::HttpRoute(o) => {
                self.http_routes.insert(nn, o);
            }
            Object::TcpRoute(o) => {
                self.tcp_routes.insert(nn, o);
            }
            Object::UdpRoute(o) => {
                self.udp_routes.insert(nn, o);
            }
            Object::TlsRoute(o) => {
                self.tls_routes.insert(nn, o);
            }
            Object::Service(o) => {
                self.services.insert(nn, o);
            }
            Object::EndpointSlice(o) => {
                self.endpoint_slices.insert(nn, o);
            }
            Object::ReferenceGrant(o) => {
                self.reference_grants.insert(nn, o);
            }
            Object::Namespace(o) => {
                self.namespaces.insert(nn.1, o);
            }
            Object::Secret(o) => {
                self.secrets.insert(nn, o);
            }
        }
    }

    /// Removes an object; returns whether it was there.
    pub fn delete(&mut self, key: &ObjectKey) -> bool {
        let nn = (key.namespace.clone(), key.name.clone());
        match key.kind {
            Kind::GatewayClass => self.gateway_classes.remove(&key.name).is_some(),
            Kind::Gateway => self.gateways.remove(&nn).is_some(),
            Kind::HttpRoute => self.http_routes.remove(&nn).is_some(),
            Kind::TcpRoute => self.tcp_routes.remove(&nn).is_some(),
            Kind::UdpRoute => self.udp_routes.remove(&nn).is_some(),
            Kind::TlsRoute => self.tls_routes.remove(&nn).is_some(),
            Kind::Service => self.services.remove(&nn).is_some(),
            Kind::EndpointSlice => self.endpoint_slices.remove(&nn).is_some(),
            Kind::ReferenceGrant => self.reference_grants.remove(&nn).is_some(),
            Kind::Namespace => self.namespaces.remove(&key.name).is_some(),
            Kind::Secret => self.secrets.remove(&nn).is_some(),
        }
    }

    /// Replaces every object of `kind` with `objects`, as a relist does.
    pub fn reset(&mut self, kind: Kind, objects: Vec<Object>) {
        match kind {
            Kind::GatewayClass => self.gateway_classes.clear(),
            Kind::Gateway => self.gateways.clear(),
            Kind::HttpRoute => self.http_routes.clear(),
            Kind::TcpRoute => self.tcp_routes.clear(),
            Kind::UdpRoute => self.udp_routes.clear(),
            Kind::TlsRoute => self.tls_routes.clear(),
            Kind::Service => self.services.clear(),
            Kind::EndpointSlice => self.endpoint_slices.clear(),
            Kind::ReferenceGrant => self.reference_grants.clear(),
            Kind::Namespace => self.namespaces.clear(),
            Kind::Secret => self.secrets.clear(),
        }
        for o in objects.into_iter().filter(|o| o.kind() == kind) {
            self.apply(o);
        }
    }

    /// How many objects of each kind the index holds.
    pub fn counts(&self) -> BTreeMap<Kind, usize> {
        BTreeMap::from([
            (Kind::GatewayClass, self.gateway_classes.len()),
            (Kind::Gateway, self.gateways.len()),
            (Kind::HttpRoute, self.http_routes.len()),
            (Kind::TcpRoute, self.tcp_routes.len()),
            (Kind::UdpRoute, self.udp_routes.len()),
            (Kind::TlsRoute, self.tls_routes.len()),
            (Kind::Service, self.services.len()),
            (Kind::EndpointSlice, self.endpoint_slices.len()),
            (Kind::ReferenceGrant, self.reference_grants.len()),
            (Kind::Namespace, self.namespaces.len()),
            (Kind::Secret, self.secrets.len()),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Meta, Namespace};

    fn ns(name: &str) -> Object {
        Object::Namespace(Namespace {
            meta: Meta {
                name: name.into(),
                ..Meta::default()
            },
        })
    }

    #[test]
    fn apply_delete_reset() {
        let mut index = Index::new();
        index.apply(ns("a"));
        index.apply(ns("b"));
        assert_eq!(index.namespaces.len(), 2);
        assert!(index.delete(&ObjectKey::new(Kind::Namespace, "", "a")));
        assert!(!index.delete(&ObjectKey::new(Kind::Namespace, "", "a")));
        index.update(Update::Reset(Kind::Namespace, vec![ns("c"), ns("d")]));
        assert_eq!(
            index.namespaces.keys().cloned().collect::<Vec<_>>(),
            ["c", "d"]
        );
        // A reset of another kind leaves namespaces alone.
        index.reset(Kind::Service, vec![ns("e")]);
        assert_eq!(index.namespaces.len(), 2);
    }
}
