//! A scripted Kubernetes API for kube::Client (the controller-rs "ApiServerVerifier" pattern on
//! tower-test): lists answer from fixtures, watches stay open and stream what a test pushes,
//! every other call is recorded and answered by a test-supplied function. Every request is
//! logged, so a test can assert the exact calls made, and that no others were. A resource the
//! server does not serve (404) is the stateful mock's business (`apiserver`): this one had a
//! `fail_lists` that its answers never consulted, so the test built on it passed with or
//! without the agent's 404 handling.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, combinators::UnsyncBoxBody};
use kube::client::Body;
use serde_json::{Value, json};
use tokio::sync::mpsc;

pub type ResBody = UnsyncBoxBody<Bytes, Infallible>;

/// One request as the mock received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub body: Value,
}

type Handler = Box<dyn Fn(&Recorded) -> (u16, Value) + Send>;

#[derive(Default)]
struct Script {
    /// plural -> the lists to answer, in order (the last one repeats).
    lists: HashMap<String, Vec<Vec<Value>>>,
    list_calls: HashMap<String, usize>,
    /// plural -> where a test's watch events go.
    watches: HashMap<String, mpsc::UnboundedSender<Value>>,
    /// plural -> watch streams waiting to be connected.
    pending: HashMap<String, Vec<mpsc::UnboundedReceiver<Value>>>,
}

#[derive(Clone)]
pub struct MockApi {
    pub log: Arc<Mutex<Vec<Recorded>>>,
    script: Arc<Mutex<Script>>,
}

impl MockApi {
    /// A client talking to a fresh mock; `handler` answers everything but lists and watches.
    pub fn start(
        handler: impl Fn(&Recorded) -> (u16, Value) + Send + 'static,
    ) -> (kube::Client, Self) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<ResBody>>();
        let mock = MockApi {
            log: Arc::default(),
            script: Arc::default(),
        };
        let handler: Handler = Box::new(handler);
        let m = mock.clone();
        tokio::spawn(async move {
            // Keeps every open watch stream's sender alive for the mock's lifetime.
            let mut open: Vec<mpsc::UnboundedSender<Value>> = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let bytes = body.collect_bytes().await.unwrap_or_default();
                let rec = Recorded {
                    method: parts.method.to_string(),
                    uri: parts.uri.to_string(),
                    body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
                };
                m.log.lock().unwrap().push(rec.clone());
                let response = m.answer(&rec, &handler, &mut open);
                send.send_response(response);
            }
        });
        (kube::Client::new(service, "default"), mock)
    }

    /// The lists to answer for `plural`, in order; the last repeats.
    pub fn lists(&self, plural: &str, lists: Vec<Vec<Value>>) {
        self.script
            .lock()
            .unwrap()
            .lists
            .insert(plural.into(), lists);
    }

    /// A sender of watch events for the next watch of `plural`.
    pub fn watch(&self, plural: &str) -> mpsc::UnboundedSender<Value> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut s = self.script.lock().unwrap();
        s.pending.entry(plural.into()).or_default().push(rx);
        s.watches.insert(plural.into(), tx.clone());
        tx
    }

    pub fn list_calls(&self, plural: &str) -> usize {
        self.script
            .lock()
            .unwrap()
            .list_calls
            .get(plural)
            .copied()
            .unwrap_or(0)
    }

    /// The path and query of every list and watch of `plural`, in order.
    pub fn watch_uris(&self, plural: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.method == "GET" && watched_plural(&r.uri).as_deref() == Some(plural))
            .map(|r| r.uri.clone())
            .collect()
    }

    /// Requests other than the watchers' lists and watches.
    pub fn calls(&self) -> Vec<Recorded> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| !(r.method == "GET" && watched_plural(&r.uri).is_some()))
            .cloned()
            .collect()
    }

    fn answer(
        &self,
        rec: &Recorded,
        handler: &Handler,
        open: &mut Vec<mpsc::UnboundedSender<Value>>,
    ) -> Response<ResBody> {
        if rec.method == "GET"
            && let Some(plural) = watched_plural(&rec.uri)
        {
            let mut s = self.script.lock().unwrap();
            if rec.uri.contains("watch=true") {
                let rx = s
                    .pending
                    .get_mut(&plural)
                    .and_then(|v| (!v.is_empty()).then(|| v.remove(0)));
                let rx = rx.unwrap_or_else(|| {
                    // Nothing scripted: a quiet watch that stays open.
                    let (tx, rx) = mpsc::unbounded_channel();
                    open.push(tx);
                    rx
                });
                return testbed::apiserver::watch_stream(rx);
            }
            let n = s.list_calls.entry(plural.clone()).or_default();
            *n += 1;
            let i = *n - 1;
            let items = s
                .lists
                .get(&plural)
                .and_then(|l| l.get(i.min(l.len().saturating_sub(1))).cloned())
                .unwrap_or_default();
            return json_response(
                200,
                json!({"kind": "List", "apiVersion": "v1",
                           "metadata": {"resourceVersion": format!("{}", 100 + i)},
                           "items": items}),
            );
        }
        let (code, body) = handler(rec);
        json_response(code, body)
    }
}

/// The plural of a cluster-wide list or watch URI (`/api/v1/services?...`,
/// `/apis/gateway.networking.k8s.io/v1/httproutes?...`).
fn watched_plural(uri: &str) -> Option<String> {
    let path = uri.split('?').next()?;
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["api", "v1", plural] | ["apis", _, _, plural] => Some((*plural).to_string()),
        _ => None,
    }
}

fn json_response(code: u16, body: Value) -> Response<ResBody> {
    let bytes = Bytes::from(serde_json::to_vec(&body).unwrap());
    Response::builder()
        .status(StatusCode::from_u16(code).unwrap())
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes).boxed_unsync())
        .unwrap()
}

/// Kubernetes' answer for an object that does not exist.
pub fn not_found() -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
               "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

/// The multi-document YAML at `path` (relative to the crate) as JSON values.
pub fn yaml(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap();
    splitter_plan::model::parse::documents(&text)
        .unwrap()
        .into_iter()
        .filter(|v| !v.is_null())
        .collect()
}

/// Waits until `f` holds, polling; fails the test after `within`.
pub async fn eventually(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
