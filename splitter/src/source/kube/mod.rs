//! `--kube`: the cluster as a source. One watcher per kind of [`access::WATCHED`] feeds the same
//! [`Update`]s the file source produces, so the index and the plan never know the difference.
//!
//! A watcher lists (from the API server's watch cache, see [`watch_config`]), then watches with
//! bookmarks; after a 410 Gone (or any desync) kube's watcher lists again,
//! which arrives here as `Init .. InitApply* .. InitDone` and becomes one `Update::Reset` of that
//! kind. Nothing is sent until every kind has finished its first list: a plan built from
//! Gateways without their routes would program empty listeners and report `attachedRoutes: 0`.
//!
//! Objects are converted by the same parser the file source uses as each is decoded
//! ([`watched`]), so one invalid object is logged and skipped instead of failing a typed list of
//! its kind, and a relist never holds its objects as JSON trees.
//!
//! [`access::WATCHED`]: splitter_plan::access::WATCHED

mod watched;

pub use watched::Watched;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::Arc,
};

use futures::{FutureExt, StreamExt, stream::BoxStream};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use tokio::sync::{mpsc, watch};

use splitter_plan::{
    access::{self, Resource},
    model::{Kind, Object, index::Update},
    status::Observed,
};

use watched::Typed;

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
    pub fn event(&mut self, resource: &Resource, event: watcher::Event<Watched>) -> Vec<Update> {
        let kind = resource.kind;
        let update = match event {
            watcher::Event::Init => {
                self.relisting.insert(kind, Default::default());
                None
            }
            watcher::Event::InitApply(o) => {
                let buffer = self.relisting.entry(kind).or_default();
                if let Some((key, status)) = o.status() {
                    buffer.1.insert(key.clone(), status.clone());
                }
                match o.into_object() {
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
                if let Some((key, status)) = o.status()
                    && self.observed.get(key) != Some(status)
                {
                    self.observed.insert(key.clone(), status.clone());
                    self.observed_dirty = true;
                }
                match o.into_object() {
                    Ok(object) => Some(Update::Apply(Box::new(object))),
                    // The last good version stays in the index, as with a broken manifest file.
                    Err(e) => {
                        tracing::warn!("kube: ignoring an invalid change: {e}");
                        None
                    }
                }
            }
            watcher::Event::Delete(o) => {
                let key = o.key();
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
    let streams = [
        watch::<0>(&client),
        watch::<1>(&client),
        watch::<2>(&client),
        watch::<3>(&client),
        watch::<4>(&client),
        watch::<5>(&client),
        watch::<6>(&client),
        watch::<7>(&client),
        watch::<8>(&client),
        watch::<9>(&client),
        watch::<10>(&client),
        watch::<11>(&client),
    ];
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

/// The events of one watched kind, each object already decoded to the model by [`Typed`].
type Events = BoxStream<
    'static,
    (
        &'static Resource,
        Result<watcher::Event<Watched>, watcher::Error>,
    ),
>;

// `run` starts one watcher per entry, by number.
const _: () = assert!(access::WATCHED.len() == 12);

/// The watcher of the `R`th kind of [`access::WATCHED`].
fn watch<const R: usize>(client: &Client) -> Events {
    let resource = &access::WATCHED[R];
    let api: Api<Typed<R>> = Api::all(client.clone());
    watcher(api, watch_config(resource))
        .default_backoff()
        .map(move |event| (resource, event.map(untyped)))
        .boxed()
}

fn untyped<const R: usize>(event: watcher::Event<Typed<R>>) -> watcher::Event<Watched> {
    match event {
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(Typed(o)) => watcher::Event::InitApply(o),
        watcher::Event::InitDone => watcher::Event::InitDone,
        watcher::Event::Apply(Typed(o)) => watcher::Event::Apply(o),
        watcher::Event::Delete(Typed(o)) => watcher::Event::Delete(o),
    }
}

fn handle(
    state: &mut WatchState,
    (resource, event): (&Resource, Result<watcher::Event<Watched>, watcher::Error>),
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use splitter_plan::model::ObjectKey;

    fn resource(kind: Kind) -> &'static Resource {
        access::watched(kind).unwrap()
    }

    fn service_json(name: &str) -> Value {
        json!({
            "metadata": {"name": name, "namespace": "default", "resourceVersion": "1"},
            "spec": {"ports": [{"port": 80}]}
        })
    }

    fn service(name: &str) -> Watched {
        Watched::decode(resource(Kind::Service), service_json(name))
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
        let http = |rv: &str| {
            Watched::decode(
                route,
                json!({
                    "metadata": {"name": "r", "namespace": "default", "resourceVersion": rv,
                                 "generation": 1},
                    "spec": {"parentRefs": [{"name": "gw"}]},
                    "status": {"parents": []}
                }),
            )
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
        let mut bad = service_json("bad");
        bad["spec"] = json!({"ports": [{"port": "eighty"}]});
        let bad = Watched::decode(svc, bad);
        state.event(svc, watcher::Event::Init);
        state.event(svc, watcher::Event::InitApply(bad.clone()));
        state.event(svc, watcher::Event::InitApply(service("good")));
        let batch = state.event(svc, watcher::Event::InitDone);
        assert!(matches!(&batch[..], [Update::Reset(Kind::Service, v)] if v.len() == 1));
        assert!(state.event(svc, watcher::Event::Apply(bad)).is_empty());
    }

    /// What the plan reads of an object is the same with or without its status and managed
    /// fields (which `decode` leaves out), and a malformed status does not spoil it.
    #[test]
    fn an_objects_status_and_managed_fields_do_not_reach_the_model() {
        let svc = resource(Kind::Service);
        let plain = service("s").into_object().expect("converts");
        let mut busy = service_json("s");
        busy["status"] = json!({"loadBalancer": "not even the right shape"});
        busy["metadata"]["managedFields"] = json!([{"manager": "kubectl", "fieldsV1": {}}]);
        busy["metadata"]["labels"] = json!({"app": "x"});
        let mut expected = service_json("s");
        expected["metadata"]["labels"] = json!({"app": "x"});
        assert_eq!(
            Watched::decode(svc, busy).into_object().expect("converts"),
            Watched::decode(svc, expected)
                .into_object()
                .expect("converts")
        );
        assert!(matches!(plain, Object::Service(_)));
    }

    /// A list is decoded straight into model objects, kind and all, although its items name no
    /// kind; an item the parser refuses is kept as refused (its key still known, for a later
    /// delete) instead of failing the list.
    #[test]
    fn a_list_is_decoded_into_model_objects_and_one_bad_item_does_not_fail_it() {
        let index = access::WATCHED
            .iter()
            .position(|r| r.kind == Kind::HttpRoute)
            .expect("watched");
        assert_eq!(index, 2, "the test's type number");
        let route = |name: &str, port: Value| {
            json!({
                "metadata": {"name": name, "namespace": "apps", "resourceVersion": "7"},
                "spec": {"parentRefs": [{"name": "gw"}],
                         "rules": [{"backendRefs": [{"name": "echo", "port": port}]}]},
                "status": {"parents": []}
            })
        };
        let text = json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRouteList",
            "metadata": {"resourceVersion": "9"},
            "items": [route("good", json!(80)), route("bad", json!("eighty"))]
        })
        .to_string();
        let list: kube::core::ObjectList<Typed<2>> =
            serde_json::from_str(&text).expect("the list decodes");
        assert_eq!(list.metadata.resource_version.as_deref(), Some("9"));
        let [Typed(good), Typed(bad)] = <[_; 2]>::try_from(list.items).expect("two items");
        assert_eq!(
            kube::Resource::meta(&Typed::<2>(good.clone()))
                .resource_version
                .as_deref(),
            Some("7")
        );
        assert!(good.status().is_some(), "an HTTPRoute's status is observed");
        match good.into_object() {
            Ok(Object::HttpRoute(r)) => {
                assert_eq!(r.key(), ObjectKey::new(Kind::HttpRoute, "apps", "good"))
            }
            other => panic!("not an HTTPRoute: {other:?}"),
        }
        assert_eq!(bad.key(), ObjectKey::new(Kind::HttpRoute, "apps", "bad"));
        let error = bad.into_object().expect_err("refused").to_string();
        assert!(error.contains("port"), "{error}");
    }
}
