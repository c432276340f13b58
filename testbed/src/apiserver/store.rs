//! What the mock API server keeps, and the rules a real one applies to it: one resourceVersion
//! counter for every resource (etcd's revision), bumped by every write that changes an object;
//! 409 AlreadyExists on a create of an existing name and 409 Conflict on a write carrying a
//! stale resourceVersion; an event history that watches are served from, compacted on demand
//! (a watch from before the compaction is answered 410 Gone). Pure: no I/O, plain tests below.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// A resource the server serves.
#[derive(Clone, Debug)]
pub struct ResourceType {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub kind: String,
    pub namespaced: bool,
}

impl ResourceType {
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `httproutes.gateway.networking.k8s.io`, as the API server names it in messages.
    fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// One watch event as the server sends it.
#[derive(Clone, Debug)]
pub struct Event {
    pub rv: u64,
    pub resource: String,
    pub type_: &'static str,
    pub object: Value,
}

impl Event {
    pub fn wire(&self) -> Value {
        json!({"type": self.type_, "object": self.object})
    }
}

/// An error answer: the HTTP code and the `Status` body the real server sends.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub code: u16,
    pub body: Value,
}

pub fn status(code: u16, reason: &str, message: String, details: Value) -> Failure {
    Failure {
        code,
        body: json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                     "message": message, "reason": reason, "details": details, "code": code}),
    }
}

/// What a write touches: the whole object, or only its `status` subresource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Object,
    Status,
}

type Key = (String, String, String);

#[derive(Default)]
pub struct Store {
    rv: u64,
    /// resource id (`group/version/plural`) -> its type.
    types: BTreeMap<String, ResourceType>,
    objects: BTreeMap<Key, Value>,
    history: Vec<Event>,
    /// Events at or below this version were compacted away.
    floor: u64,
}

/// The id a resource is served under.
pub fn resource_id(group: &str, version: &str, plural: &str) -> String {
    format!("{group}/{version}/{plural}")
}

impl Store {
    pub fn serve(&mut self, t: ResourceType) {
        self.types
            .insert(resource_id(&t.group, &t.version, &t.plural), t);
    }

    pub fn resource(&self, id: &str) -> Option<&ResourceType> {
        self.types.get(id)
    }

    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Forgets the history so far, as etcd compaction and the watch cache's window do.
    pub fn compact(&mut self) {
        self.floor = self.rv;
        self.history.clear();
    }

    pub fn get(&self, id: &str, ns: &str, name: &str) -> Result<Value, Failure> {
        self.objects
            .get(&key(id, ns, name))
            .cloned()
            .ok_or_else(|| self.not_found(id, name))
    }

    /// The objects of `id` (in `ns`, or every namespace) that `keep` accepts, and the version
    /// the list is at.
    pub fn list(
        &self,
        id: &str,
        ns: Option<&str>,
        keep: impl Fn(&Value) -> bool,
    ) -> (u64, Vec<Value>) {
        let items = self
            .objects
            .iter()
            .filter(|((r, n, _), o)| r == id && ns.is_none_or(|ns| ns == n) && keep(o))
            .map(|(_, o)| o.clone())
            .collect();
        (self.rv, items)
    }

    /// The events of `id` after `rv`, or 410 Gone when some of them were compacted away.
    pub fn events_after(&self, id: &str, rv: u64) -> Result<Vec<Event>, Failure> {
        if rv < self.floor {
            return Err(status(
                410,
                "Expired",
                format!("too old resource version: {rv} ({})", self.floor),
                json!({}),
            ));
        }
        Ok(self
            .history
            .iter()
            .filter(|e| e.resource == id && e.rv > rv)
            .cloned()
            .collect())
    }

    pub fn create(
        &mut self,
        id: &str,
        ns: &str,
        mut body: Value,
    ) -> Result<(Value, Event), Failure> {
        let t = self
            .resource(id)
            .cloned()
            .ok_or_else(|| self.not_found(id, ""))?;
        let name = body["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            return Err(status(
                422,
                "Invalid",
                "metadata.name: Required value".into(),
                json!({}),
            ));
        }
        if self.objects.contains_key(&key(id, ns, &name)) {
            return Err(status(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", t.qualified()),
                json!({"name": name, "group": t.group, "kind": t.plural}),
            ));
        }
        self.rv += 1;
        let meta = &mut body["metadata"];
        if t.namespaced {
            meta["namespace"] = json!(ns);
        }
        meta["resourceVersion"] = json!(self.rv.to_string());
        meta["uid"] = json!(format!("uid-{}", self.rv));
        meta["generation"] = json!(1);
        if meta.get("creationTimestamp").is_none_or(Value::is_null) {
            meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        body["apiVersion"] = json!(t.api_version());
        body["kind"] = json!(t.kind);
        Ok(self.commit(id, ns, &name, "ADDED", body))
    }

    /// PUT: the whole object (or its status) replaced; the resourceVersion must be the stored
    /// one, as an update is a compare-and-swap.
    pub fn replace(
        &mut self,
        id: &str,
        ns: &str,
        name: &str,
        part: Part,
        body: Value,
    ) -> Result<(Value, Option<Event>), Failure> {
        let old = self.get(id, ns, name)?;
        match body["metadata"]["resourceVersion"].as_str() {
            None | Some("") => {
                return Err(status(
                    422,
                    "Invalid",
                    "metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
                        .into(),
                    json!({"name": name}),
                ));
            }
            Some(rv) => self.check_version(id, name, &old, rv)?,
        }
        let mut new = old.clone();
        match part {
            Part::Status => set(&mut new, "status", body.get("status")),
            Part::Object => {
                // Writes of the object leave its status alone (the status subresource's) and
                // take only labels and annotations of metadata; the rest is the server's.
                let mut meta = old["metadata"].clone();
                for f in ["labels", "annotations"] {
                    set(&mut meta, f, body["metadata"].get(f));
                }
                new = body;
                new["metadata"] = meta;
                set(&mut new, "status", old.get("status"));
            }
        }
        Ok(self.update(id, ns, name, old, new))
    }

    /// PATCH, `application/merge-patch+json` (RFC 7386).
    pub fn merge_patch(
        &mut self,
        id: &str,
        ns: &str,
        name: &str,
        part: Part,
        patch: &Value,
    ) -> Result<(Value, Option<Event>), Failure> {
        let old = self.get_if_current(id, ns, name, patch)?;
        let mut new = old.clone();
        match part {
            Part::Status => {
                if let Some(p) = patch.get("status") {
                    merge(&mut new["status"], p);
                }
            }
            Part::Object => {
                let mut p = patch.clone();
                if let Some(m) = p.as_object_mut() {
                    m.remove("status");
                }
                merge(&mut new, &p);
            }
        }
        Ok(self.update(id, ns, name, old, new))
    }

    /// PATCH, `application/apply-patch+yaml` (server-side apply) of the status subresource.
    /// Simplified field ownership: each top-level status field the body names is replaced
    /// whole. That is the real outcome for what the agent applies: `status.parents` of a route
    /// is an atomic list, and the Gateway and GatewayClass status fields it names are its own.
    /// A resourceVersion in the body is a precondition, as on the real server.
    pub fn apply_status(
        &mut self,
        id: &str,
        ns: &str,
        name: &str,
        body: &Value,
    ) -> Result<(Value, Option<Event>), Failure> {
        let old = self.get_if_current(id, ns, name, body)?;
        let mut new = old.clone();
        if !new["status"].is_object() {
            new["status"] = json!({});
        }
        for (k, v) in body["status"].as_object().into_iter().flatten() {
            new["status"][k] = v.clone();
        }
        Ok(self.update(id, ns, name, old, new))
    }

    pub fn delete(&mut self, id: &str, ns: &str, name: &str) -> Result<(Value, Event), Failure> {
        let mut old = self.get(id, ns, name)?;
        self.objects.remove(&key(id, ns, name));
        self.rv += 1;
        old["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let event = self.record(id, "DELETED", old.clone());
        Ok((old, event))
    }

    /// The object, when `body` names no resourceVersion or names its current one (a
    /// precondition, as on the real server).
    fn get_if_current(
        &self,
        id: &str,
        ns: &str,
        name: &str,
        body: &Value,
    ) -> Result<Value, Failure> {
        let old = self.get(id, ns, name)?;
        if let Some(rv) = body["metadata"]["resourceVersion"].as_str() {
            self.check_version(id, name, &old, rv)?;
        }
        Ok(old)
    }

    fn check_version(&self, id: &str, name: &str, old: &Value, rv: &str) -> Result<(), Failure> {
        if old["metadata"]["resourceVersion"].as_str() == Some(rv) {
            return Ok(());
        }
        let t = &self.types[id];
        Err(status(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again",
                t.qualified()
            ),
            json!({"name": name, "group": t.group, "kind": t.plural}),
        ))
    }

    /// Stores `new` unless it changes nothing: a no-op write keeps the resourceVersion and
    /// sends no event, as on the real server. A changed spec bumps `generation`.
    fn update(
        &mut self,
        id: &str,
        ns: &str,
        name: &str,
        old: Value,
        mut new: Value,
    ) -> (Value, Option<Event>) {
        new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        if new == old {
            return (old, None);
        }
        if without(&new, &["metadata", "status"]) != without(&old, &["metadata", "status"]) {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(0);
            new["metadata"]["generation"] = json!(g + 1);
        }
        self.rv += 1;
        new["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let (v, e) = self.commit(id, ns, name, "MODIFIED", new);
        (v, Some(e))
    }

    fn commit(
        &mut self,
        id: &str,
        ns: &str,
        name: &str,
        type_: &'static str,
        object: Value,
    ) -> (Value, Event) {
        self.objects.insert(key(id, ns, name), object.clone());
        let event = self.record(id, type_, object.clone());
        (object, event)
    }

    fn record(&mut self, id: &str, type_: &'static str, object: Value) -> Event {
        let event = Event {
            rv: self.rv,
            resource: id.to_string(),
            type_,
            object,
        };
        self.history.push(event.clone());
        event
    }

    fn not_found(&self, id: &str, name: &str) -> Failure {
        let plural = self
            .types
            .get(id)
            .map_or(id.to_string(), ResourceType::qualified);
        status(
            404,
            "NotFound",
            format!("{plural} \"{name}\" not found"),
            json!({"name": name, "kind": plural}),
        )
    }
}

fn key(id: &str, ns: &str, name: &str) -> Key {
    (id.to_string(), ns.to_string(), name.to_string())
}

/// Sets `field`, or removes it when `v` is absent or null (no `"field": null` left behind,
/// which would read as a change).
fn set(obj: &mut Value, field: &str, v: Option<&Value>) {
    match v {
        Some(v) if !v.is_null() => obj[field] = v.clone(),
        _ => {
            if let Some(m) = obj.as_object_mut() {
                m.remove(field);
            }
        }
    }
}

fn without(v: &Value, fields: &[&str]) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        for f in fields {
            m.remove(*f);
        }
    }
    v
}

/// RFC 7386 JSON merge patch.
pub fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("an object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "coordination.k8s.io/v1/leases";

    fn store() -> Store {
        let mut s = Store::default();
        s.serve(ResourceType {
            group: "coordination.k8s.io".into(),
            version: "v1".into(),
            plural: "leases".into(),
            kind: "Lease".into(),
            namespaced: true,
        });
        s
    }

    fn lease(holder: &str, rv: Option<&str>) -> Value {
        json!({"metadata": {"name": "l", "resourceVersion": rv}, "spec": {"holderIdentity": holder}})
    }

    #[test]
    fn versions_conflicts_and_compaction() {
        let mut s = store();
        let (created, _) = s.create(ID, "ns", lease("a", None)).unwrap();
        assert_eq!(created["metadata"]["resourceVersion"], "1");
        assert_eq!(s.create(ID, "ns", lease("b", None)).unwrap_err().code, 409);
        // A stale version loses; the current one wins and bumps the counter.
        let (_, e) = s
            .replace(ID, "ns", "l", Part::Object, lease("b", Some("1")))
            .unwrap();
        assert_eq!(e.unwrap().rv, 2);
        let stale = s.replace(ID, "ns", "l", Part::Object, lease("c", Some("1")));
        assert_eq!(stale.unwrap_err().body["reason"], "Conflict");
        assert_eq!(
            s.replace(ID, "ns", "l", Part::Object, lease("c", None))
                .unwrap_err()
                .code,
            422
        );
        // A write that changes nothing keeps the version and sends no event.
        let (same, e) = s
            .replace(ID, "ns", "l", Part::Object, lease("b", Some("2")))
            .unwrap();
        assert!(e.is_none());
        assert_eq!(same["metadata"]["resourceVersion"], "2");
        assert_eq!(s.events_after(ID, 1).unwrap().len(), 1);
        s.compact();
        assert_eq!(s.events_after(ID, 1).unwrap_err().code, 410);
        assert!(s.events_after(ID, 2).unwrap().is_empty());
        s.delete(ID, "ns", "l").unwrap();
        assert_eq!(s.get(ID, "ns", "l").unwrap_err().code, 404);
        assert_eq!(s.events_after(ID, 2).unwrap()[0].type_, "DELETED");
    }
}
