//! A stateful mock Kubernetes API server on loopback (hyper), for kube::Client as it is used
//! in production: real HTTP, real watch streams, one [`Store`] behind every client. The kube
//! tests drive the agent's parts against it in process; `cargo xtask bench scale --source kube`
//! serves a whole agent from it ([`serve`]).
//!
//! It serves the resources it is told to and answers 404 for every other path, as the real
//! server does for a CRD that is not installed. Lists and watches honour `resourceVersion`
//! (a watch from a compacted version gets a 410 `ERROR` event), `fieldSelector` and
//! `labelSelector` (equality only); watches replay the history after their version, then
//! stream every change live, our own writes included, and get `BOOKMARK`s on [`bookmark`] when
//! they asked for them. Writes: create (POST), replace (PUT), merge patch and server-side apply
//! (PATCH), delete; the object or its `status` subresource.
//!
//! Each [`client`] gets a listener of its own, so the request log says which agent sent what.
//! [`partition`] cuts every client off (open watches end, new requests wait) until [`heal`].
//!
//! [`bookmark`]: ApiServer::bookmark
//! [`client`]: ApiServer::client
//! [`serve`]: ApiServer::serve
//! [`partition`]: ApiServer::partition
//! [`heal`]: ApiServer::heal

mod request;
pub mod store;

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use futures::StreamExt;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody, combinators::UnsyncBoxBody};
use hyper::{body::Frame, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use request::{Selector, Target, parse_query};
use store::{Event, Failure, Part, ResourceType, Store, resource_id, status};

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// One request as the server answered it.
#[derive(Clone, Debug)]
pub struct Logged {
    /// The name of the client it came from.
    pub client: String,
    pub method: String,
    pub path: String,
    /// The query, decoded, in order.
    pub query: Vec<(String, String)>,
    pub body: Value,
    /// The HTTP status of the answer (200 for a watch, whatever its events).
    pub code: u16,
    /// For a watch answered with a 410 `ERROR` event: 410.
    pub watch_error: Option<u16>,
}

impl Logged {
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn is_watch(&self) -> bool {
        self.method == "GET" && matches!(self.param("watch"), Some("true" | "1"))
    }

    /// A list of a collection (not a get of one object).
    pub fn is_list_of(&self, plural: &str) -> bool {
        self.method == "GET" && !self.is_watch() && self.path.ends_with(&format!("/{plural}"))
    }

    pub fn is_watch_of(&self, plural: &str) -> bool {
        self.is_watch() && self.path.ends_with(&format!("/{plural}"))
    }

    pub fn is_write(&self) -> bool {
        !matches!(self.method.as_str(), "GET" | "HEAD")
    }
}

struct Watcher {
    resource: String,
    namespace: Option<String>,
    selector: Selector,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<Value>,
}

/// Runs before the next write that `matches`, as if another client had written first.
type Race = (
    Box<dyn Fn(&Logged) -> bool + Send>,
    Box<dyn FnOnce(&mut Store) -> Option<Event> + Send>,
);

#[derive(Default)]
struct State {
    store: Store,
    watchers: Vec<Watcher>,
    races: Vec<Race>,
}

impl State {
    fn broadcast(&mut self, event: &Event) {
        let object = &event.object;
        self.watchers.retain(|w| {
            if w.resource != event.resource
                || w.namespace
                    .as_deref()
                    .is_some_and(|ns| object["metadata"]["namespace"] != ns)
                || !w.selector.matches(object)
            {
                return true;
            }
            w.tx.send(event.wire()).is_ok()
        });
    }
}

#[derive(Clone)]
pub struct ApiServer {
    state: Arc<Mutex<State>>,
    log: Arc<Mutex<Vec<Logged>>>,
    /// True while partitioned.
    cut: Arc<watch::Sender<bool>>,
}

impl ApiServer {
    /// A server of `resources`.
    pub fn new(resources: impl IntoIterator<Item = ResourceType>) -> Self {
        let mut state = State::default();
        for r in resources {
            state.store.serve(r);
        }
        Self {
            state: Arc::new(Mutex::new(state)),
            log: Arc::default(),
            cut: Arc::new(watch::channel(false).0),
        }
    }

    /// A client of its own named `name` in the log.
    pub async fn client(&self, name: &str) -> kube::Client {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(self.clone().serve(listener, name.to_string()));
        let config = kube::Config::new(format!("http://{addr}").parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    /// Answers every connection to `listener` as the client `name` of the log, until the
    /// listener fails. For a client in another process (the agent), which gets the listener's
    /// address in a kubeconfig.
    pub async fn serve(self, listener: tokio::net::TcpListener, name: String) {
        while let Ok((stream, _)) = listener.accept().await {
            let server = self.clone();
            let name = name.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let server = server.clone();
                    let name = name.clone();
                    async move { Ok::<_, Infallible>(server.handle(&name, req).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    pub fn log(&self) -> Vec<Logged> {
        self.log.lock().unwrap().clone()
    }

    pub fn resource_version(&self) -> u64 {
        self.state.lock().unwrap().store.resource_version()
    }

    pub fn get(&self, id: &str, ns: &str, name: &str) -> Option<Value> {
        self.state.lock().unwrap().store.get(id, ns, name).ok()
    }

    /// Creates or replaces `object` as another client would (kubectl apply), whatever its
    /// version; watchers see it.
    pub fn put(&self, object: Value) {
        let id = id_of(&object);
        let ns = object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let name = object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut s = self.state.lock().unwrap();
        let event = match s.store.get(&id, &ns, &name) {
            Err(_) => Some(s.store.create(&id, &ns, object).unwrap().1),
            Ok(old) => {
                let mut object = object;
                object["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
                s.store
                    .replace(&id, &ns, &name, Part::Object, object)
                    .unwrap()
                    .1
            }
        };
        if let Some(e) = event {
            s.broadcast(&e);
        }
    }

    pub fn delete(&self, id: &str, ns: &str, name: &str) {
        let mut s = self.state.lock().unwrap();
        let (_, e) = s.store.delete(id, ns, name).unwrap();
        s.broadcast(&e);
    }

    /// Forgets the event history: watches from an older version get 410 Gone.
    pub fn compact(&self) {
        self.state.lock().unwrap().store.compact();
    }

    /// Sends every watch that asked for bookmarks one, at the current version; returns how
    /// many were sent.
    pub fn bookmark(&self) -> usize {
        let mut s = self.state.lock().unwrap();
        let rv = s.store.resource_version().to_string();
        let mut sent = 0;
        let State {
            store, watchers, ..
        } = &mut *s;
        for w in watchers.iter().filter(|w| w.bookmarks) {
            let t = store.resource(&w.resource).expect("served");
            let event = json!({"type": "BOOKMARK", "object": {
                "kind": t.kind, "apiVersion": t.api_version(),
                "metadata": {"resourceVersion": rv}}});
            if w.tx.send(event).is_ok() {
                sent += 1;
            }
        }
        sent
    }

    /// Cuts every client off: open watches end, new requests wait for [`heal`](Self::heal).
    pub fn partition(&self) {
        self.cut.send_replace(true);
        self.state.lock().unwrap().watchers.clear();
    }

    pub fn heal(&self) {
        self.cut.send_replace(false);
    }

    /// Before the next write that `matches`, `write` changes the store as another client
    /// would, and watchers see it.
    pub fn race_next_write(
        &self,
        matches: impl Fn(&Logged) -> bool + Send + 'static,
        write: impl FnOnce(&mut Store) -> Option<Event> + Send + 'static,
    ) {
        self.state
            .lock()
            .unwrap()
            .races
            .push((Box::new(matches), Box::new(write)));
    }

    async fn handle(&self, client: &str, req: Request<hyper::body::Incoming>) -> Response<Body> {
        let mut cut = self.cut.subscribe();
        let _ = cut.wait_for(|c| !c).await;
        let (parts, body) = req.into_parts();
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let content_type = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let mut logged = Logged {
            client: client.to_string(),
            method: parts.method.to_string(),
            path: parts.uri.path().to_string(),
            query: parse_query(parts.uri.query().unwrap_or_default()),
            // kube sends apply patches as JSON, which is YAML too.
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            code: 0,
            watch_error: None,
        };
        let response = self.answer(&parts.method, &content_type, &mut logged);
        logged.code = response.status().as_u16();
        self.log.lock().unwrap().push(logged);
        response
    }

    fn answer(&self, method: &Method, content_type: &str, req: &mut Logged) -> Response<Body> {
        let mut s = self.state.lock().unwrap();
        let Some(target) = Target::parse(&req.path, &s.store) else {
            return failure(&status(
                404,
                "NotFound",
                "the server could not find the requested resource".into(),
                json!({}),
            ));
        };
        if req.is_write()
            && let Some(i) = s.races.iter().position(|(m, _)| m(req))
        {
            let (_, write) = s.races.remove(i);
            if let Some(e) = write(&mut s.store) {
                s.broadcast(&e);
            }
        }
        let ns = target.namespace.clone().unwrap_or_default();
        let result: Result<(u16, Value, Option<Event>), Failure> = match (method, &target.name) {
            (&Method::GET, None) if req.is_watch() => return self.watch(&mut s, &target, req),
            (&Method::GET, None) => Ok(list(&s.store, &target, req)),
            (&Method::GET, Some(name)) => s
                .store
                .get(&target.resource, &ns, name)
                .map(|o| (200, o, None)),
            (&Method::POST, None) => s
                .store
                .create(&target.resource, &ns, req.body.clone())
                .map(|(o, e)| (201, o, Some(e))),
            (&Method::PUT, Some(name)) => s
                .store
                .replace(&target.resource, &ns, name, target.part, req.body.clone())
                .map(|(o, e)| (200, o, e)),
            (&Method::PATCH, Some(name)) if content_type.starts_with("application/apply-patch") => {
                if target.part == Part::Status {
                    s.store
                        .apply_status(&target.resource, &ns, name, &req.body)
                        .map(|(o, e)| (200, o, e))
                } else {
                    Err(status(
                        415,
                        "UnsupportedMediaType",
                        "apply of a whole object is not mocked".into(),
                        json!({}),
                    ))
                }
            }
            (&Method::PATCH, Some(name))
                if content_type.starts_with("application/merge-patch")
                    || content_type.starts_with("application/strategic-merge-patch") =>
            {
                s.store
                    .merge_patch(&target.resource, &ns, name, target.part, &req.body)
                    .map(|(o, e)| (200, o, e))
            }
            (&Method::DELETE, Some(name)) => s
                .store
                .delete(&target.resource, &ns, name)
                .map(|(o, e)| (200, o, Some(e))),
            _ => Err(status(
                405,
                "MethodNotAllowed",
                format!("{method} is not supported here"),
                json!({}),
            )),
        };
        match result {
            Ok((code, object, event)) => {
                if let Some(e) = event {
                    s.broadcast(&e);
                }
                json_response(code, &object)
            }
            Err(f) => failure(&f),
        }
    }

    fn watch(&self, s: &mut State, target: &Target, req: &mut Logged) -> Response<Body> {
        let (tx, rx) = mpsc::unbounded_channel();
        let selector = Selector::of(req);
        let keep = |o: &Value| {
            target
                .namespace
                .as_deref()
                .is_none_or(|ns| o["metadata"]["namespace"] == ns)
                && selector.matches(o)
        };
        match req.param("resourceVersion").unwrap_or("0") {
            // No version: the current state as ADDED events, then changes.
            "0" | "" => {
                let (_, items) = s
                    .store
                    .list(&target.resource, target.namespace.as_deref(), keep);
                for o in items {
                    let _ = tx.send(json!({"type": "ADDED", "object": o}));
                }
            }
            rv => match s
                .store
                .events_after(&target.resource, rv.parse().unwrap_or(0))
            {
                Ok(events) => {
                    for e in events.iter().filter(|e| keep(&e.object)) {
                        let _ = tx.send(e.wire());
                    }
                }
                Err(f) => {
                    // The real server answers 200 and ends the stream with the error.
                    req.watch_error = Some(f.code);
                    let _ = tx.send(json!({"type": "ERROR", "object": f.body}));
                    drop(tx);
                    return watch_stream(rx);
                }
            },
        }
        s.watchers.push(Watcher {
            resource: target.resource.clone(),
            namespace: target.namespace.clone(),
            selector,
            bookmarks: req.param("allowWatchBookmarks") == Some("true"),
            tx,
        });
        watch_stream(rx)
    }
}

fn list(store: &Store, target: &Target, req: &Logged) -> (u16, Value, Option<Event>) {
    let selector = Selector::of(req);
    let (rv, items) = store.list(&target.resource, target.namespace.as_deref(), |o| {
        selector.matches(o)
    });
    let t = store.resource(&target.resource).expect("served");
    // List items carry no apiVersion and kind.
    let items: Vec<Value> = items
        .into_iter()
        .map(|mut o| {
            if let Some(m) = o.as_object_mut() {
                m.remove("apiVersion");
                m.remove("kind");
            }
            o
        })
        .collect();
    let body = json!({"kind": format!("{}List", t.kind), "apiVersion": t.api_version(),
                      "metadata": {"resourceVersion": rv.to_string()}, "items": items});
    (200, body, None)
}

/// The id of the resource `object` belongs to: the watched kind of its `kind`, else a Lease.
pub fn id_of(object: &Value) -> String {
    let kind = object["kind"].as_str().unwrap_or_default();
    match splitter_plan::access::WATCHED
        .iter()
        .find(|r| r.kind.as_str() == kind)
    {
        Some(r) => resource_id(r.group, r.version, r.plural),
        None => resource_id("coordination.k8s.io", "v1", "leases"),
    }
}

fn json_response(code: u16, body: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(serde_json::to_vec(body).unwrap())).boxed_unsync())
        .unwrap()
}

fn failure(f: &Failure) -> Response<Body> {
    json_response(f.code, &f.body)
}

/// A watch response: one JSON event a line, for as long as the sender lives (the kube tests'
/// scripted mock answers its watches with it too).
pub fn watch_stream(rx: mpsc::UnboundedReceiver<Value>) -> Response<Body> {
    let events = futures::stream::unfold(rx, |mut rx| async move {
        let v = rx.recv().await?;
        let mut line = serde_json::to_vec(&v).unwrap();
        line.push(b'\n');
        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(line))), rx))
    });
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(StreamBody::new(events.boxed()).boxed_unsync())
        .unwrap()
}

/// The served type of every kind the agent watches, and the Lease.
pub fn agent_resources(except: &[&str]) -> Vec<ResourceType> {
    let mut out: Vec<ResourceType> = splitter_plan::access::WATCHED
        .iter()
        .filter(|r| !except.contains(&r.plural))
        .map(|r| ResourceType {
            group: r.group.into(),
            version: r.version.into(),
            plural: r.plural.into(),
            kind: r.kind.as_str().into(),
            namespaced: r.kind.is_namespaced(),
        })
        .collect();
    out.push(ResourceType {
        group: "coordination.k8s.io".into(),
        version: "v1".into(),
        plural: "leases".into(),
        kind: "Lease".into(),
        namespaced: true,
    });
    out
}
