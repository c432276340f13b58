//! What the watchers receive: each object converted to the model while its list or watch event
//! is decoded.
//!
//! kube's watcher decodes a whole list into `Vec<K>` before it hands out the first object. With
//! `K = DynamicObject`, a relist at 10k routes held every route as a JSON tree at once (a B-tree
//! node per JSON object, a string per key and value), and the model objects made from them
//! afterwards landed among the trees' small allocations; once the trees were freed, the
//! allocator kept the pages the model objects still pinned (README, "bench scale"). Here `K` is
//! [`Typed`], whose `Deserialize` converts an item as soon as it is read: a list holds one tree
//! at a time, and the next item's tree reuses the slots the last one freed.

use std::{borrow::Cow, sync::Arc};

use kube::core::{DynamicResourceScope, ObjectMeta};
use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use splitter_plan::{
    access::{self, Resource},
    model::{
        ModelError, Object, ObjectKey,
        parse::{self, Parsed},
    },
    status::ObservedStatus,
};

/// One watched object, already read by the model's parser.
#[derive(Clone, Debug)]
pub struct Watched {
    /// Only `resourceVersion`: all kube's watcher reads of an object (the model has the rest).
    meta: ObjectMeta,
    object: Result<Object, Invalid>,
    /// The status as observed, for the kinds whose status the agent writes.
    status: Option<(ObjectKey, Arc<ObservedStatus>)>,
}

/// An object the parser refused, with its key: a later delete of it must still find it.
#[derive(Clone, Debug)]
struct Invalid {
    key: ObjectKey,
    error: ModelError,
}

impl Watched {
    /// Reads one object of `resource`'s kind as the API server sent it. List items carry no
    /// `apiVersion`/`kind`, so they are set from the resource that was watched. The status
    /// (taken for the writer first) and the managed fields are read by nothing in the plan and
    /// are left out; an object the parser refuses is kept as refused, so that one invalid
    /// object never fails the list it came in.
    pub fn decode(resource: &Resource, value: Value) -> Self {
        let mut map = match value {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        let metadata = map.get_mut("metadata").and_then(Value::as_object_mut);
        let text = |m: &Option<&mut Map<String, Value>>, field: &str| -> Option<String> {
            m.as_ref()?.get(field)?.as_str().map(str::to_string)
        };
        let resource_version = text(&metadata, "resourceVersion");
        let namespace = if resource.kind.is_namespaced() {
            text(&metadata, "namespace").unwrap_or_default()
        } else {
            String::new()
        };
        let key = ObjectKey::new(
            resource.kind,
            namespace,
            text(&metadata, "name").unwrap_or_default(),
        );
        let generation = metadata
            .as_ref()
            .and_then(|m| m.get("generation"))
            .and_then(Value::as_i64);
        if let Some(m) = metadata {
            m.remove("managedFields");
        }
        let status = map.remove("status");
        let status = access::STATUS_WRITTEN.contains(&resource.kind).then(|| {
            let observed = ObservedStatus::new(
                generation,
                resource_version.clone(),
                status.as_ref().unwrap_or(&Value::Null),
            );
            (key.clone(), Arc::new(observed))
        });
        map.insert("apiVersion".into(), resource.api_version().into());
        map.insert("kind".into(), resource.kind.as_str().into());
        let object = match parse::parse(Value::Object(map)) {
            Ok(Parsed::Object(o)) => Ok(*o),
            Ok(Parsed::Skipped { kind, .. }) => Err(ModelError::new(
                key.to_string(),
                "kind",
                format!("{kind} is not a kind the agent reads"),
            )),
            Err(e) => Err(e),
        };
        Self {
            meta: ObjectMeta {
                resource_version,
                ..Default::default()
            },
            object: object.map_err(|error| Invalid { key, error }),
            status,
        }
    }

    pub fn key(&self) -> ObjectKey {
        match &self.object {
            Ok(o) => o.key(),
            Err(invalid) => invalid.key.clone(),
        }
    }

    /// The status the object was seen with, if the agent writes its kind's status.
    pub fn status(&self) -> Option<&(ObjectKey, Arc<ObservedStatus>)> {
        self.status.as_ref()
    }

    pub fn into_object(self) -> Result<Object, ModelError> {
        self.object.map_err(|invalid| invalid.error)
    }
}

/// [`Watched`] as kube's watcher needs it: a type per watched resource (the `R`th of
/// [`access::WATCHED`]), because the watcher decodes objects before it could be told their
/// kind, and list items do not name it.
#[derive(Clone, Debug)]
pub struct Typed<const R: usize>(pub Watched);

impl<'de, const R: usize> Deserialize<'de> for Typed<R> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(d)?;
        Ok(Self(Watched::decode(&access::WATCHED[R], value)))
    }
}

impl<const R: usize> kube::Resource for Typed<R> {
    type DynamicType = ();
    type Scope = DynamicResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        access::WATCHED[R].kind.as_str().into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        access::WATCHED[R].group.into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        access::WATCHED[R].version.into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        access::WATCHED[R].plural.into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.0.meta
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.0.meta
    }
}
