//! The index: every object the plan reads, by kind, namespace and name.
//!
//! It does not know where objects come from. A file source and a kube watcher feed it the
//! same three operations: `apply` (create or replace), `delete`, and `reset` (a relist: the given
//! objects become the whole content of that kind).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

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

/// What updates changed, for choosing how to plan again: a change confined to the
/// EndpointSlices of some Services refreshes their backends in the last plan
/// (`plan::refresh_endpoints`); anything else builds a whole plan. A slice of no Service is
/// read by nothing in the plan, so its changes are none of these.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Something other than the EndpointSlices of a Service changed.
    pub other: bool,
    /// The Services (namespace, name) whose EndpointSlices changed.
    pub endpoints_of: BTreeSet<NsName>,
}

impl Changes {
    pub fn any(&self) -> bool {
        self.other || !self.endpoints_of.is_empty()
    }

    /// Records that `slice` (its old or its new version) changed.
    fn slice(&mut self, namespace: &str, slice: Option<&EndpointSlice>) {
        if let Some(svc) = slice.and_then(|s| s.service_name.as_ref()) {
            self.endpoints_of
                .insert((namespace.to_string(), svc.clone()));
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Index {
    pub gateway_classes: BTreeMap<String, Arc<GatewayClass>>,
    pub gateways: BTreeMap<NsName, Arc<Gateway>>,
    pub http_routes: BTreeMap<NsName, Arc<HttpRoute>>,
    /// GRPCRoutes, in the HTTPRoute shape they are lowered to.
    pub grpc_routes: BTreeMap<NsName, Arc<HttpRoute>>,
    pub tcp_routes: BTreeMap<NsName, Arc<L4Route>>,
    pub udp_routes: BTreeMap<NsName, Arc<L4Route>>,
    pub tls_routes: BTreeMap<NsName, Arc<TlsRoute>>,
    pub services: BTreeMap<NsName, Arc<Service>>,
    /// Private, so that every change goes through [`Self::put_slice`], which keeps
    /// `slices_of_service` in step; read with [`Self::endpoint_slices`] and [`Self::slices_of`].
    endpoint_slices: BTreeMap<NsName, Arc<EndpointSlice>>,
    /// Every slice that names a Service, by `(namespace, Service, slice name)`: the slices of
    /// one Service without a walk of the cluster's (an endpoint refresh reads a few Services'
    /// slices among thousands).
    slices_of_service: BTreeMap<(String, String, String), Arc<EndpointSlice>>,
    pub reference_grants: BTreeMap<NsName, Arc<ReferenceGrant>>,
    pub namespaces: BTreeMap<String, Arc<Namespace>>,
    pub secrets: BTreeMap<NsName, Arc<Secret>>,
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

    /// Every EndpointSlice, by namespace and name.
    pub fn endpoint_slices(&self) -> &BTreeMap<NsName, Arc<EndpointSlice>> {
        &self.endpoint_slices
    }

    /// The EndpointSlices of Service `namespace/service`, by slice name.
    pub fn slices_of<'a>(
        &'a self,
        namespace: &str,
        service: &str,
    ) -> impl Iterator<Item = &'a Arc<EndpointSlice>> + 'a {
        let (ns, svc) = (namespace.to_string(), service.to_string());
        self.slices_of_service
            .range((ns.clone(), svc.clone(), String::new())..)
            .take_while(move |((n, s, _), _)| *n == ns && *s == svc)
            .map(|(_, slice)| slice)
    }

    /// Puts (`Some`) or removes (`None`) the slice `nn`; whether that changed the index.
    fn put_slice(&mut self, nn: NsName, slice: Option<Arc<EndpointSlice>>) -> bool {
        if self.endpoint_slices.get(&nn) == slice.as_ref() {
            return false;
        }
        let old = match &slice {
            Some(new) => self.endpoint_slices.insert(nn.clone(), new.clone()),
            None => self.endpoint_slices.remove(&nn),
        };
        if let Some(svc) = old.as_ref().and_then(|o| o.service_name.as_ref()) {
            self.slices_of_service
                .remove(&(nn.0.clone(), svc.clone(), nn.1.clone()));
        }
        if let Some(s) = slice
            && let Some(svc) = s.service_name.clone()
        {
            self.slices_of_service.insert((nn.0, svc, nn.1), s);
        }
        true
    }

    /// Applies one update; whether the index changed. The index holds only what the plan reads,
    /// so an update that changes nothing here (a status-only update, a resync, the echo of the
    /// agent's own status write) needs no new plan.
    pub fn update(&mut self, update: Update) -> bool {
        match update {
            Update::Apply(o) => self.apply(*o),
            Update::Delete(key) => self.delete(&key),
            Update::Reset(kind, objects) => self.reset(kind, objects),
        }
    }

    /// [`update`](Self::update), recording what changed in `changes`.
    pub fn update_noting(&mut self, update: Update, changes: &mut Changes) -> bool {
        match update {
            Update::Apply(o) => match *o {
                Object::EndpointSlice(slice) => {
                    let nn = (slice.meta.namespace.clone(), slice.meta.name.clone());
                    if self.endpoint_slices.get(&nn) == Some(&slice) {
                        return false;
                    }
                    changes.slice(&nn.0, self.endpoint_slices.get(&nn).map(Arc::as_ref));
                    changes.slice(&nn.0, Some(&*slice));
                    self.put_slice(nn, Some(slice))
                }
                other => {
                    let changed = self.apply(other);
                    changes.other |= changed;
                    changed
                }
            },
            Update::Delete(key) if key.kind == Kind::EndpointSlice => {
                let nn = (key.namespace, key.name);
                changes.slice(&nn.0, self.endpoint_slices.get(&nn).map(Arc::as_ref));
                self.put_slice(nn, None)
            }
            Update::Reset(Kind::EndpointSlice, objects) => {
                let fresh: BTreeMap<NsName, Arc<EndpointSlice>> = objects
                    .into_iter()
                    .filter_map(|o| match o {
                        Object::EndpointSlice(s) => {
                            Some(((s.meta.namespace.clone(), s.meta.name.clone()), s))
                        }
                        _ => None,
                    })
                    .collect();
                let held = &self.endpoint_slices;
                for key in held.keys().chain(fresh.keys()) {
                    let (a, b) = (held.get(key), fresh.get(key));
                    if a != b {
                        changes.slice(&key.0, a.map(Arc::as_ref));
                        changes.slice(&key.0, b.map(Arc::as_ref));
                    }
                }
                let changed = *held != fresh;
                self.set_slices(fresh);
                changed
            }
            other => {
                let changed = self.update(other);
                changes.other |= changed;
                changed
            }
        }
    }

    /// Creates or replaces the object with the same kind, namespace and name; whether it
    /// differed from the one held.
    pub fn apply(&mut self, object: Object) -> bool {
        let key = object.key();
        let nn = (key.namespace, key.name);
        match object {
            Object::GatewayClass(o) => put(&mut self.gateway_classes, nn.1, o),
            Object::Gateway(o) => put(&mut self.gateways, nn, o),
            Object::HttpRoute(o) => put(&mut self.http_routes, nn, o),
            Object::GrpcRoute(o) => put(&mut self.grpc_routes, nn, o),
            Object::TcpRoute(o) => put(&mut self.tcp_routes, nn, o),
            Object::UdpRoute(o) => put(&mut self.udp_routes, nn, o),
            Object::TlsRoute(o) => put(&mut self.tls_routes, nn, o),
            Object::Service(o) => put(&mut self.services, nn, o),
            Object::EndpointSlice(o) => self.put_slice(nn, Some(o)),
            Object::ReferenceGrant(o) => put(&mut self.reference_grants, nn, o),
            Object::Namespace(o) => put(&mut self.namespaces, nn.1, o),
            Object::Secret(o) => put(&mut self.secrets, nn, o),
        }
    }

    /// The HTTPRoutes or the GRPCRoutes.
    pub fn routes_of(&self, kind: super::RouteKind) -> &BTreeMap<NsName, Arc<HttpRoute>> {
        match kind {
            super::RouteKind::Http => &self.http_routes,
            super::RouteKind::Grpc => &self.grpc_routes,
        }
    }

    /// Removes an object; returns whether it was there.
    pub fn delete(&mut self, key: &ObjectKey) -> bool {
        let nn = (key.namespace.clone(), key.name.clone());
        match key.kind {
            Kind::GatewayClass => self.gateway_classes.remove(&key.name).is_some(),
            Kind::Gateway => self.gateways.remove(&nn).is_some(),
            Kind::HttpRoute => self.http_routes.remove(&nn).is_some(),
            Kind::GrpcRoute => self.grpc_routes.remove(&nn).is_some(),
            Kind::TcpRoute => self.tcp_routes.remove(&nn).is_some(),
            Kind::UdpRoute => self.udp_routes.remove(&nn).is_some(),
            Kind::TlsRoute => self.tls_routes.remove(&nn).is_some(),
            Kind::Service => self.services.remove(&nn).is_some(),
            Kind::EndpointSlice => self.put_slice(nn, None),
            Kind::ReferenceGrant => self.reference_grants.remove(&nn).is_some(),
            Kind::Namespace => self.namespaces.remove(&key.name).is_some(),
            Kind::Secret => self.secrets.remove(&nn).is_some(),
        }
    }

    /// Replaces every object of `kind` with `objects`, as a relist does; whether that changed
    /// anything.
    pub fn reset(&mut self, kind: Kind, objects: Vec<Object>) -> bool {
        let mut fresh = Index::from_objects(objects.into_iter().filter(|o| o.kind() == kind));
        let f = &mut fresh;
        match kind {
            Kind::GatewayClass => swap(&mut self.gateway_classes, &mut f.gateway_classes),
            Kind::Gateway => swap(&mut self.gateways, &mut f.gateways),
            Kind::HttpRoute => swap(&mut self.http_routes, &mut f.http_routes),
            Kind::GrpcRoute => swap(&mut self.grpc_routes, &mut f.grpc_routes),
            Kind::TcpRoute => swap(&mut self.tcp_routes, &mut f.tcp_routes),
            Kind::UdpRoute => swap(&mut self.udp_routes, &mut f.udp_routes),
            Kind::TlsRoute => swap(&mut self.tls_routes, &mut f.tls_routes),
            Kind::Service => swap(&mut self.services, &mut f.services),
            Kind::EndpointSlice => {
                let changed = self.endpoint_slices != f.endpoint_slices;
                self.set_slices(std::mem::take(&mut f.endpoint_slices));
                changed
            }
            Kind::ReferenceGrant => swap(&mut self.reference_grants, &mut f.reference_grants),
            Kind::Namespace => swap(&mut self.namespaces, &mut f.namespaces),
            Kind::Secret => swap(&mut self.secrets, &mut f.secrets),
        }
    }

    /// Makes `slices` every EndpointSlice of the index.
    fn set_slices(&mut self, slices: BTreeMap<NsName, Arc<EndpointSlice>>) {
        self.slices_of_service = slices
            .iter()
            .filter_map(|((ns, name), s)| {
                let svc = s.service_name.clone()?;
                Some(((ns.clone(), svc, name.clone()), s.clone()))
            })
            .collect();
        self.endpoint_slices = slices;
    }

    /// How many objects of each kind the index holds.
    pub fn counts(&self) -> BTreeMap<Kind, usize> {
        BTreeMap::from([
            (Kind::GatewayClass, self.gateway_classes.len()),
            (Kind::Gateway, self.gateways.len()),
            (Kind::HttpRoute, self.http_routes.len()),
            (Kind::GrpcRoute, self.grpc_routes.len()),
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

/// Inserts `value` unless an equal one is there; whether it did.
fn put<K: Ord, V: PartialEq>(map: &mut BTreeMap<K, V>, key: K, value: V) -> bool {
    if map.get(&key) == Some(&value) {
        return false;
    }
    map.insert(key, value);
    true
}

/// Makes `fresh` the content of `held`; whether they differed.
fn swap<K: Ord, V: PartialEq>(held: &mut BTreeMap<K, V>, fresh: &mut BTreeMap<K, V>) -> bool {
    let changed = held != fresh;
    std::mem::swap(held, fresh);
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Meta, Namespace};

    fn ns(name: &str) -> Object {
        Object::Namespace(Arc::new(Namespace {
            meta: Meta {
                name: name.into(),
                ..Meta::default()
            },
        }))
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

    fn slice(name: &str, service: Option<&str>) -> Object {
        Object::EndpointSlice(Arc::new(EndpointSlice {
            meta: Meta {
                name: name.into(),
                namespace: "ns".into(),
                ..Meta::default()
            },
            service_name: service.map(Into::into),
            ports: Vec::new(),
            endpoints: Vec::new(),
        }))
    }

    fn slices_of(index: &Index, service: &str) -> Vec<String> {
        index
            .slices_of("ns", service)
            .map(|s| s.meta.name.clone())
            .collect()
    }

    /// A Service's slices are found without a walk of every slice: the lookup follows every
    /// way a slice comes, goes or changes its Service.
    #[test]
    fn the_slices_of_a_service_follow_every_update() {
        let mut index = Index::new();
        let mut changes = Changes::default();
        index.apply(slice("a-1", Some("a")));
        index.update_noting(
            Update::Apply(Box::new(slice("a-2", Some("a")))),
            &mut changes,
        );
        index.apply(slice("b-1", Some("b")));
        index.apply(slice("orphan", None));
        assert_eq!(slices_of(&index, "a"), ["a-1", "a-2"]);
        assert_eq!(slices_of(&index, "b"), ["b-1"]);
        // Another namespace, and a Service whose name extends another's, stay apart.
        assert!(index.slices_of("other", "a").next().is_none());
        assert!(slices_of(&index, "a-").is_empty());

        // A slice relabelled to another Service moves.
        index.apply(slice("a-2", Some("b")));
        assert_eq!(slices_of(&index, "a"), ["a-1"]);
        assert_eq!(slices_of(&index, "b"), ["a-2", "b-1"]);
        index.update_noting(
            Update::Delete(ObjectKey::new(Kind::EndpointSlice, "ns", "b-1")),
            &mut changes,
        );
        index.delete(&ObjectKey::new(Kind::EndpointSlice, "ns", "a-1"));
        assert!(slices_of(&index, "a").is_empty());
        assert_eq!(slices_of(&index, "b"), ["a-2"]);

        // A relist replaces them all, both ways of applying it.
        index.update(Update::Reset(
            Kind::EndpointSlice,
            vec![slice("c-1", Some("c")), slice("a-9", Some("a"))],
        ));
        assert_eq!(slices_of(&index, "a"), ["a-9"]);
        assert!(slices_of(&index, "b").is_empty());
        index.update_noting(
            Update::Reset(Kind::EndpointSlice, vec![slice("b-7", Some("b"))]),
            &mut changes,
        );
        assert!(slices_of(&index, "a").is_empty());
        assert_eq!(slices_of(&index, "b"), ["b-7"]);
        assert_eq!(index.endpoint_slices().len(), 1);
    }

    /// What the control loop skips builds on: an update that leaves the index as it was.
    #[test]
    fn updates_say_whether_they_changed_anything() {
        let mut index = Index::new();
        assert!(index.update(Update::Apply(Box::new(ns("a")))));
        assert!(!index.update(Update::Apply(Box::new(ns("a")))));
        assert!(!index.update(Update::Reset(Kind::Namespace, vec![ns("a")])));
        // Objects of other kinds in a reset are ignored, so they change nothing either.
        assert!(!index.update(Update::Reset(Kind::Service, vec![ns("z")])));
        assert!(index.update(Update::Reset(Kind::Namespace, vec![ns("a"), ns("b")])));
        assert!(!index.update(Update::Delete(ObjectKey::new(Kind::Namespace, "", "x"))));
        assert!(index.update(Update::Delete(ObjectKey::new(Kind::Namespace, "", "b"))));
        let mut labelled = ns("a");
        if let Object::Namespace(n) = &mut labelled {
            Arc::make_mut(n)
                .meta
                .labels
                .insert("team".into(), "x".into());
        }
        assert!(index.update(Update::Apply(Box::new(labelled))));
    }
}
