//! The task that applies status patches: follows the plan, the observed statuses and the
//! leadership, and while this agent holds the Lease applies what [`status::patches`] decides.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    net::IpAddr,
    sync::Arc,
    time::Duration,
};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    Client, Resource,
    api::{DynamicObject, Patch, PatchParams},
};
use serde_json::Value;
use thiserror::Error;
use tokio::sync::watch;

use super::{
    Observed, StatusContext, StatusPatch,
    agents::{self, AgentPods},
};
use splitter_plan::{
    access,
    model::ObjectKey,
    plan::{Plan, applied::NodeView, status::RouteStatuses},
    status,
};

/// The field manager of every status write (server-side apply).
pub const FIELD_MANAGER: &str = splitter_plan::plan::listener::CONTROLLER_NAME;

#[derive(Debug, Error)]
pub enum StatusError {
    #[error("patching the status of {key}: {source}")]
    Patch { key: ObjectKey, source: kube::Error },
    #[error("patching the status of {key}: no answer within {0:?}", WRITE_TIMEOUT)]
    Timeout { key: ObjectKey },
    #[error("{key}: not a kind whose status the agent writes")]
    Kind { key: ObjectKey },
}

const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the leader lists the agent's pods: nodes join, leave and turn unready without
/// any event the writer watches.
pub const AGENT_PODS_EVERY: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct WriterConfig {
    pub controller_name: String,
    /// `--status-address`: `status.addresses` of Gateways without `spec.addresses`; when
    /// empty, the addresses of the nodes with a Ready agent pod (`agent_pods`), and without
    /// those (files mode, no pod listed yet, a failed list) this node's (from its report).
    pub default_addresses: Vec<IpAddr>,
    /// The agent's own pods, whose nodes serve every Gateway; `None` when not in a cluster.
    pub agent_pods: Option<AgentPods>,
    /// Everything is recomputed and re-applied this often, which repairs a status someone
    /// else overwrote and retries writes that failed.
    pub resync: Duration,
}

/// Runs until the plan channel closes. `reports` is what this node serves of the plan
/// (`Programmed` and `status.addresses` follow it): the writer only knows its own node's. While
/// `reports` is open, a plan is written once this node's report on it has arrived; a closed
/// `reports` with no report (a caller that applies nothing) writes the plan's conditions as
/// they are.
pub async fn run(
    client: Client,
    config: WriterConfig,
    mut plans: watch::Receiver<Option<Arc<Plan>>>,
    mut observed: watch::Receiver<Arc<Observed>>,
    mut leader: watch::Receiver<bool>,
    mut reports: watch::Receiver<Option<NodeView>>,
) {
    let mut reports_open = true;
    // What we last applied (a hash of it without timestamps, not a copy of every status), so
    // that a write is not repeated while the watch has not yet shown it back to us.
    let mut applied: HashMap<ObjectKey, u64> = HashMap::new();
    // Objects whose write was refused with 409 (our copy was stale), with the resourceVersion
    // we had: not written again until the watch shows a newer version. The watch is the
    // re-read: it delivers the newer object anyway, and writing before it has would only be
    // refused again.
    let mut conflicted: HashMap<ObjectKey, Option<String>> = HashMap::new();
    // The route statuses and observed statuses of the last pass whose route patches were all
    // written (or refused with 409, kept in `conflicted`): while both are the same `Arc`s the
    // route patches are the same too, and are not made again. An endpoint refresh keeps the
    // plan's route statuses: without this, every refresh made a patch per route (10,000 JSON
    // documents at 10k routes) on the async runtime the watchers share.
    let mut routes_done: Option<(RouteStatuses, Arc<Observed>)> = None;
    // The Ready agents' node addresses; listed while leader, every AGENT_PODS_EVERY.
    let mut agent_addresses: Vec<IpAddr> = Vec::new();
    let mut pods_tick = tokio::time::interval(AGENT_PODS_EVERY);
    pods_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut list_pods = true;
    // The first tick is one period away: the first pass runs without waiting for it.
    let mut resync =
        tokio::time::interval_at(tokio::time::Instant::now() + config.resync, config.resync);
    resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let is_leader = *leader.borrow_and_update();
        let plan = plans.borrow_and_update().clone();
        let seen = observed.borrow_and_update().clone();
        let view = reports.borrow_and_update().clone();
        let report = match (&plan, &view) {
            (Some(plan), Some(v)) if Arc::ptr_eq(plan, &v.plan) => Ok(Some(v.report.clone())),
            // Not applied here yet: the report follows.
            (Some(_), _) if reports_open => Err(()),
            // The report of an older plan: only the plan's own conditions are known.
            _ => Ok(None),
        };
        if is_leader
            && list_pods
            && config.default_addresses.is_empty()
            && let Some(pods) = &config.agent_pods
        {
            list_pods = false;
            match agents::list(&client, pods).await {
                Ok(addrs) => agent_addresses = addrs,
                // The last list stays: a transient error must not flap the addresses.
                Err(e) => tracing::warn!(
                    "listing the agent's pods ({} in {}): {e}",
                    pods.selector,
                    pods.namespace
                ),
            }
        }
        let defaults = if config.default_addresses.is_empty() {
            &agent_addresses
        } else {
            &config.default_addresses
        };
        if !is_leader {
            applied.clear();
            conflicted.clear();
            routes_done = None;
        } else if let (Some(plan), Ok(report)) = (plan, report) {
            let now = now();
            let ctx = StatusContext {
                controller_name: &config.controller_name,
                default_addresses: defaults,
                node: report.as_ref(),
                now: &now,
            };
            let routes_same = routes_done
                .as_ref()
                .is_some_and(|(r, o)| Arc::ptr_eq(r, &plan.routes) && Arc::ptr_eq(o, &seen));
            let routes = (!routes_same)
                .then(|| status::route_patches(&plan, &seen, &ctx))
                .into_iter()
                .flatten();
            let mut failed = false;
            for p in status::gateway_patches(&plan, &seen, &ctx)
                .into_iter()
                .chain(routes)
            {
                let fingerprint = fingerprint(&p.body);
                if applied.get(&p.key) == Some(&fingerprint) {
                    continue;
                }
                let version = seen.get(&p.key).and_then(|s| s.resource_version.clone());
                if conflicted.get(&p.key) == Some(&version) {
                    continue;
                }
                match apply(&client, &p).await {
                    Ok(()) => {
                        tracing::info!(object = %p.key, "status written");
                        conflicted.remove(&p.key);
                        applied.insert(p.key, fingerprint);
                    }
                    Err(StatusError::Patch {
                        source: kube::Error::Api(s),
                        ..
                    }) if s.code == 409 => {
                        tracing::info!(
                            object = %p.key,
                            "status: our copy is stale (409); written again once the watch shows the new version"
                        );
                        conflicted.insert(p.key, version);
                    }
                    Err(e) => {
                        tracing::warn!("{e}");
                        failed = true;
                    }
                }
            }
            // A failed write is retried on the next pass, as before.
            routes_done = (!failed).then(|| (plan.routes.clone(), seen.clone()));
        }
        tokio::select! {
            r = plans.changed() => if r.is_err() { return },
            r = observed.changed() => if r.is_err() { return },
            r = leader.changed() => if r.is_err() { return },
            // A closed report channel keeps the last report.
            r = reports.changed(), if reports_open => reports_open = r.is_ok(),
            _ = resync.tick() => {
                applied.clear();
                conflicted.clear();
                routes_done = None;
            }
            _ = pods_tick.tick() => list_pods = true,
        }
    }
}

/// One server-side apply of a status subresource, forced: the fields are ours to own.
pub async fn apply(client: &Client, patch: &StatusPatch) -> Result<(), StatusError> {
    let key = &patch.key;
    let resource = access::watched(key.kind)
        .filter(|_| access::STATUS_WRITTEN.contains(&key.kind))
        .ok_or_else(|| StatusError::Kind { key: key.clone() })?;
    let ar = resource.api_resource();
    let namespace = (!key.namespace.is_empty()).then_some(key.namespace.as_str());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let body = Patch::Apply(&patch.body);
    let request = kube::core::Request::new(DynamicObject::url_path(&ar, namespace))
        .patch_subresource("status", &key.name, &params, &body)
        .map_err(|e| StatusError::Patch {
            key: key.clone(),
            source: kube::Error::BuildRequest(e),
        })?;
    // The answer is the whole object, which the watch brings anyway: checked to be JSON,
    // not built into a tree that nothing reads (at start, one per route).
    let call = client.request::<serde::de::IgnoredAny>(request);
    match tokio::time::timeout(WRITE_TIMEOUT, call).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(source)) => Err(StatusError::Patch {
            key: key.clone(),
            source,
        }),
        Err(_) => Err(StatusError::Timeout { key: key.clone() }),
    }
}

/// The current time as Kubernetes writes `metav1.Time` (RFC 3339, seconds).
pub fn now() -> String {
    serde_json::to_value(Time(Timestamp::now()))
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

fn fingerprint(v: &Value) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    hash_without_times(v, &mut h);
    h.finish()
}

fn hash_without_times(v: &Value, h: &mut impl Hasher) {
    // Each variant tagged, so that `[]` and `{}`, or "1" and 1, differ.
    match v {
        Value::Null => 0u8.hash(h),
        Value::Bool(b) => (1u8, b).hash(h),
        Value::Number(n) => (2u8, n.to_string()).hash(h),
        Value::String(s) => (3u8, s).hash(h),
        Value::Array(a) => {
            (4u8, a.len()).hash(h);
            a.iter().for_each(|v| hash_without_times(v, h));
        }
        Value::Object(m) => {
            5u8.hash(h);
            for (k, v) in m.iter().filter(|(k, _)| k.as_str() != "lastTransitionTime") {
                k.hash(h);
                hash_without_times(v, h);
            }
            6u8.hash(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(state: &str, at: &str) -> Value {
        json!({"parents": [{"conditions": [
            {"type": "Accepted", "status": state, "lastTransitionTime": at}
        ]}]})
    }

    #[test]
    fn a_fingerprint_ignores_transition_times_and_nothing_else() {
        let a = status("True", "2026-01-01T00:00:00Z");
        assert_eq!(
            fingerprint(&a),
            fingerprint(&status("True", "2026-06-01T00:00:00Z"))
        );
        assert_ne!(
            fingerprint(&a),
            fingerprint(&status("False", "2026-01-01T00:00:00Z"))
        );
        assert_ne!(fingerprint(&json!([])), fingerprint(&json!({})));
        assert_ne!(fingerprint(&json!("1")), fingerprint(&json!(1)));
        assert_ne!(
            fingerprint(&json!({"a": ["b"]})),
            fingerprint(&json!({"a": "b"}))
        );
    }
}
