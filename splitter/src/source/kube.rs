//! `--kube`: the cluster as a source. One watcher per kind of [`access::WATCHED`] feeds the same
//! [`Update`]s the file source produces, so the index and the plan never know the difference.
//!
//! A watcher lists (from the API server's watch cache, see [`watch_config`]), then watches with
//! bookmarks; after a 410 Gone (or any desync) kube's watcher lists again,
//! which arrives here as `Init .. InitApply* .. InitDone` and becomes one `Update::Reset` of that
//! kind. Nothing is sent until every kind has finished its first list: a plan built from
//! Gateways without their routes would program empty listeners and report `attachedRoutes: 0`.
//!
//! Objects are watched as `DynamicObject`s and converted by the same [`parse`] the file source
//! uses, so one invalid object is logged and skipped instead of failing a typed list of its kind.
//!
//! [`access::WATCHED`]: splitter_plan::access::WATCHED

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use futures::{FutureExt, StreamExt};
use kube::{
    Api, Client,
    api::DynamicObject,
    runtime::{WatchStreamExt, watcher},
};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use splitter_plan::{
    access::{self, Resource},
    model::{
        Kind, ModelError, Object, ObjectKey,
        index::Update,
        parse::{self, Parsed},
    },
    status::{Observed, ObservedStatus},
};

/// The watchers' state: buffers of relists in progress, which kinds have been listed once,
/// the updates held back until all have, and the observed statuses. Pure: events in, updates
/// out, so the relist and hold-back rules are tested without an API server.
#[derive(Debug, Default)]
pub struct WatchState {
    relisting: BTreeMap<Kind, (Vec<Object>, Observed)>,
    synced: BTreeSet<Kind>,
    held: Vec<Update>,
    observed: Observed,
    /// `observed` changed since [`WatchState::observed_change`] last gave it out.
    observed_dirty: bool,
}

impl WatchState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether every watched kind has completed its first list.
    pub fn synced(&self) -> bool {
        access::WATCHED
            .iter()
            .all(|r| self.synced.contains(&r.kind))
    }

    /// The observed statuses, once every kind is listed and when they changed since the last
    /// call. The status writer gets a copy of them all, so the copy is made only for a change:
    /// comparing or copying ten thousand statuses on every event (each endpoint change, each
    /// echo of a status write) had cost more than the events' own handling.
    pub fn observed_change(&mut self) -> Option<&Observed> {
        if !(self.observed_dirty && self.synced()) {
            return None;
        }
        self.observed_dirty = false;
        Some(&self.observed)
    }

    /// The API server does not serve `resource` (its list answered 404: the CRD is not
    /// installed, e.g. TCPRoute v1 before Gateway API v1.6). Until it appears, the kind counts
    /// as listed and empty, so that the kinds that exist are served; the watcher keeps trying.
    pub fn unavailable(&mut self, resource: &Resource) -> Vec<Update> {
        if self.synced.contains(&resource.kind) {
            return Vec::new();
        }
        tracing::warn!(
            kind = %resource.kind,
            api_version = %resource.api_version(),
            "kube: not served by the API server (CRD not installed?); treated as empty until it is"
        );
        self.relisting.remove(&resource.kind);
        self.event(resource, watcher::Event::InitDone)
    }

    /// Takes one watcher event of `resource`'s kind; returns the updates to send now (empty
    /// while the first lists are still running).
    pub fn event(
        &mut self,
        resource: &Resource,
        event: watcher::Event<DynamicObject>,
    ) -> Vec<Update> {
        let kind = resource.kind;
        let update = match event {
            watcher::Event::Init => {
                self.relisting.insert(kind, Default::default());
                None
            }
            watcher::Event::InitApply(o) => {
                let buffer = self.relisting.entry(kind).or_default();
                if let Some((key, status)) = observe(resource, &o) {
                    buffer.1.insert(key, status);
                }
                match convert(resource, o) {
                    Ok(object) => buffer.0.push(object),
                    Err(e) => tracing::warn!("kube: skipping an invalid object: {e}"),
                }
                None
            }
            watcher::Event::InitDone => {
                let (objects, observed) = self.relisting.remove(&kind).unwrap_or_default();
                self.observed.retain(|k, _| k.kind != kind);
                self.observed.extend(observed);
                self.observed_dirty = true;
                self.synced.insert(kind);
                tracing::info!(%kind, objects = objects.len(), "kube: listed");
                Some(Update::Reset(kind, objects))
            }
            watcher::Event::Apply(o) => {
                if let Some((key, status)) = observe(resource, &o)
                    && self.observed.get(&key) != Some(&status)
                {
                    self.observed.insert(key, status);
                    self.observed_dirty = true;
                }
                match convert(resource, o) {
                    Ok(object) => Some(Update::Apply(Box::new(object))),
                    // The last good version stays in the index, as with a broken manifest file.
                    Err(e) => {
                        tracing::warn!("kube: ignoring an invalid change: {e}");
                        None
                    }
                }
            }
            watcher::Event::Delete(o) => {
                let key = key_of(resource, &o);
                self.observed_dirty |= self.observed.remove(&key).is_some();
                Some(Update::Delete(key))
            }
        };
        let Some(update) = update else {
            return Vec::new();
        };
        if self.held.is_empty() && self.synced() {
            return vec![update];
        }
        self.held.push(update);
        if self.synced() {
            std::mem::take(&mut self.held)
        } else {
            Vec::new()
        }
    }
}

/// Watches every kind of [`access::WATCHED`] until `updates` is closed. Watch errors are logged
/// and retried with kube's default backoff (exponential, capped); they never end the source.
pub async fn run(
    client: Client,
    updates: mpsc::Sender<Vec<Update>>,
    observed: watch::Sender<Arc<Observed>>,
) {
    let streams = access::WATCHED.iter().map(|resource| {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &resource.api_resource());
        watcher(api, watch_config(resource))
            .default_backoff()
            .map(move |event| (resource, event))
            .boxed()
    });
    let mut events = futures::stream::select_all(streams);
    let mut state = WatchState::new();
    while let Some(first) = events.next().await {
        // With it, every event already received: one batch for the control loop and one copy
        // of the statuses for a burst (a relist, the echoes of a status write per route).
        let mut batch = handle(&mut state, first);
        while let Some(Some(next)) = events.next().now_or_never() {
            batch.extend(handle(&mut state, next));
        }
        if let Some(changed) = state.observed_change() {
            let _ = observed.send(Arc::new(changed.clone()));
        }
        if !batch.is_empty() && updates.send(batch).await.is_err() {
            return;
        }
    }
}

fn handle(
    state: &mut WatchState,
    (resource, event): (
        &Resource,
        Result<watcher::Event<DynamicObject>, watcher::Error>,
    ),
) -> Vec<Update> {
    match event {
        Ok(e) => state.event(resource, e),
        Err(watcher::Error::InitialListFailed(kube::Error::Api(s))) if s.code == 404 => {
            state.unavailable(resource)
        }
        Err(e) => {
            tracing::warn!(kind = %resource.kind, "kube: watch failed, retrying: {e}");
            Vec::new()
        }
    }
}

/// How every kind is listed and watched. Every node of the cluster runs these watchers, so a
/// relist (start, 410 Gone) must be served from the API server's watch cache, not by a quorum
/// read from etcd: `resourceVersion=0&resourceVersionMatch=NotOlderThan` (`ListSemantic::Any`).
/// kube drops `resourceVersion=0` from a list that has a `limit` (the watch cache ignores the
/// limit, so kube turns the request into a paginated etcd read instead), hence no page size:
/// the list is one response from the cache, as client-go's reflectors get it. Bookmarks keep a
/// quiet kind's resourceVersion current, so a reconnect after compaction resumes instead of
/// answering 410 and forcing a relist.
pub fn watch_config(resource: &Resource) -> watcher::Config {
    let mut config = watcher::Config::default().any_semantic();
    config.page_size = None;
    config.bookmarks = true;
    match resource.field_selector {
        Some(fields) => config.fields(fields),
        None => config,
    }
}

fn key_of(resource: &Resource, o: &DynamicObject) -> ObjectKey {
    let namespace = if resource.kind.is_namespaced() {
        o.metadata.namespace.clone().unwrap_or_default()
    } else {
        String::new()
    };
    ObjectKey::new(
        resource.kind,
        namespace,
        o.metadata.name.clone().unwrap_or_default(),
    )
}

fn observe(resource: &Resource, o: &DynamicObject) -> Option<(ObjectKey, Arc<ObservedStatus>)> {
    if !access::STATUS_WRITTEN.contains(&resource.kind) {
        return None;
    }
    Some((
        key_of(resource, o),
        Arc::new(ObservedStatus::new(
            o.metadata.generation,
            o.metadata.resource_version.clone(),
            o.data.get("status").unwrap_or(&Value::Null),
        )),
    ))
}

/// A watched object through the model's parser. List items carry no `apiVersion`/`kind`, so
/// they are set from the resource that was watched. The object's fields are moved into the
/// parser's input, not copied; its status (the statuses the writer needs are taken by
/// [`observe`] first) and managed fields are read by nothing in the plan and are left out.
fn convert(resource: &Resource, o: DynamicObject) -> Result<Object, ModelError> {
    let label = key_of(resource, &o).to_string();
    let DynamicObject {
        mut metadata, data, ..
    } = o;
    metadata.managed_fields = None;
    let mut map = match data {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    map.remove("status");
    let metadata = serde_json::to_value(metadata)
        .map_err(|e| ModelError::new(&label, "metadata", format!("not serialisable: {e}")))?;
    map.insert("metadata".into(), metadata);
    map.insert("apiVersion".into(), resource.api_version().into());
    map.insert("kind".into(), resource.kind.as_str().into());
    match parse::parse(Value::Object(map))? {
        Parsed::Object(o) => Ok(*o),
        Parsed::Skipped { kind, .. } => Err(ModelError::new(
            label,
            "kind",
            format!("{kind} is not a kind the agent reads"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ObjectMeta;
    use serde_json::json;

    fn resource(kind: Kind) -> &'static Resource {
        access::watched(kind).unwrap()
    }

    fn service(name: &str) -> DynamicObject {
        DynamicObject {
            types: None,
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                ..Default::default()
            },
            data: json!({"spec": {"ports": [{"port": 80}]}}),
        }
    }

    fn list_all_empty_but(state: &mut WatchState, except: Kind) -> Vec<Update> {
        let mut out = Vec::new();
        for r in access::WATCHED.iter().filter(|r| r.kind != except) {
            out.extend(state.event(r, watcher::Event::Init));
            out.extend(state.event(r, watcher::Event::InitDone));
        }
        out
    }

    #[test]
    fn lists_are_served_from_the_watch_cache_and_watches_ask_for_bookmarks() {
        for r in &access::WATCHED {
            let config = watch_config(r);
            assert_eq!(
                config.list_semantic,
                watcher::ListSemantic::Any,
                "{}",
                r.kind
            );
            // With a page size kube would leave resourceVersion=0 out of the request.
            assert_eq!(config.page_size, None, "{}", r.kind);
            assert!(config.bookmarks, "{}", r.kind);
            assert_eq!(config.field_selector.as_deref(), r.field_selector);
        }
    }

    #[test]
    fn updates_are_held_until_every_kind_is_listed() {
        let mut state = WatchState::new();
        let svc = resource(Kind::Service);
        assert!(state.event(svc, watcher::Event::Init).is_empty());
        assert!(
            state
                .event(svc, watcher::Event::InitApply(service("a")))
                .is_empty()
        );
        assert!(state.event(svc, watcher::Event::InitDone).is_empty());
        assert!(
            state
                .event(svc, watcher::Event::Apply(service("b")))
                .is_empty()
        );
        let batch = list_all_empty_but(&mut state, Kind::Service);
        assert!(state.synced());
        // Service reset, its apply, then the other eight resets, in arrival order.
        assert_eq!(batch.len(), access::WATCHED.len() + 1);
        assert!(matches!(&batch[0], Update::Reset(Kind::Service, v) if v.len() == 1));
        assert!(matches!(&batch[1], Update::Apply(o) if o.key().name == "b"));
        // Once synced, every event goes out on its own.
        let next = state.event(svc, watcher::Event::Delete(service("b")));
        assert_eq!(
            next,
            vec![Update::Delete(ObjectKey::new(
                Kind::Service,
                "default",
                "b"
            ))]
        );
    }

    #[test]
    fn a_kind_the_server_does_not_serve_counts_as_empty() {
        let mut state = WatchState::new();
        list_all_empty_but(&mut state, Kind::TcpRoute);
        assert!(!state.synced());
        let tcp = resource(Kind::TcpRoute);
        let batch = state.unavailable(tcp);
        assert!(state.synced());
        assert_eq!(batch.len(), access::WATCHED.len());
        assert!(batch.contains(&Update::Reset(Kind::TcpRoute, Vec::new())));
        // Once listed, a later 404 (the CRD removed) changes nothing by itself.
        assert!(state.unavailable(tcp).is_empty());
    }

    #[test]
    fn statuses_go_to_the_writer_when_they_change_not_on_every_event() {
        let mut state = WatchState::new();
        let route = resource(Kind::HttpRoute);
        let http = |rv: &str| DynamicObject {
            types: None,
            metadata: ObjectMeta {
                name: Some("r".into()),
                namespace: Some("default".into()),
                resource_version: Some(rv.into()),
                generation: Some(1),
                ..Default::default()
            },
            data: json!({
                "spec": {"parentRefs": [{"name": "gw"}]},
                "status": {"parents": []}
            }),
        };
        list_all_empty_but(&mut state, Kind::HttpRoute);
        state.event(route, watcher::Event::Init);
        state.event(route, watcher::Event::InitApply(http("1")));
        assert!(
            state.observed_change().is_none(),
            "nothing before every kind is listed"
        );
        state.event(route, watcher::Event::InitDone);
        assert_eq!(state.observed_change().map(|o| o.len()), Some(1));
        assert!(state.observed_change().is_none(), "given out once");
        // An endpoint or Service change, or the same route again, observes nothing new.
        state.event(resource(Kind::Service), watcher::Event::Apply(service("s")));
        state.event(route, watcher::Event::Apply(http("1")));
        assert!(state.observed_change().is_none());
        // The echo of a status write carries a new resourceVersion: the writer must see it.
        state.event(route, watcher::Event::Apply(http("2")));
        let seen = state.observed_change().expect("changed");
        let key = ObjectKey::new(Kind::HttpRoute, "default", "r");
        assert_eq!(seen[&key].resource_version.as_deref(), Some("2"));
        state.event(route, watcher::Event::Delete(http("2")));
        assert_eq!(state.observed_change().map(|o| o.len()), Some(0));
    }

    #[test]
    fn an_invalid_object_is_skipped_not_fatal() {
        let mut state = WatchState::new();
        let svc = resource(Kind::Service);
        list_all_empty_but(&mut state, Kind::Service);
        state.event(svc, watcher::Event::Init);
        assert_eq!(
            state.event(svc, watcher::Event::InitDone).len(),
            access::WATCHED.len()
        );
        let mut bad = service("bad");
        bad.data = json!({"spec": {"ports": [{"port": "eighty"}]}});
        state.event(svc, watcher::Event::Init);
        state.event(svc, watcher::Event::InitApply(bad.clone()));
        state.event(svc, watcher::Event::InitApply(service("good")));
        let batch = state.event(svc, watcher::Event::InitDone);
        assert!(matches!(&batch[..], [Update::Reset(Kind::Service, v)] if v.len() == 1));
        assert!(state.event(svc, watcher::Event::Apply(bad)).is_empty());
    }

    /// What the plan reads of an object is the same with or without its status and managed
    /// fields (which `convert` leaves out), and a malformed status does not spoil it.
    #[test]
    fn an_objects_status_and_managed_fields_do_not_reach_the_model() {
        let svc = resource(Kind::Service);
        let plain = convert(svc, service("s")).expect("converts");
        let mut busy = service("s");
        busy.data["status"] = json!({"loadBalancer": "not even the right shape"});
        busy.metadata.managed_fields = Some(vec![Default::default()]);
        busy.metadata.labels = plain_labels();
        let mut expected = service("s");
        expected.metadata.labels = plain_labels();
        assert_eq!(
            convert(svc, busy).expect("converts"),
            convert(svc, expected).expect("converts")
        );
        assert!(matches!(plain, Object::Service(_)));
    }

    fn plain_labels() -> Option<BTreeMap<String, String>> {
        Some([("app".to_string(), "x".to_string())].into())
    }
}
