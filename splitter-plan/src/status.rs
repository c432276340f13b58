//! Plan + observed statuses -> the status patches to apply. Pure: no client, no clock (the
//! caller passes `now`), so every rule below is a plain `#[test]`.
//!
//! Rules:
//! - only objects the API server has shown us are patched (a status needs an object);
//! - a condition keeps its `lastTransitionTime` while its `status` stays the same;
//! - a route's `status.parents` is an atomic list (no list-map keys), so a server-side apply
//!   replaces it whole: entries of other controllers are copied from the observed object, and
//!   the patch carries the observed `resourceVersion` so that a stale copy fails with 409
//!   instead of erasing another controller's entry written in between;
//! - our entries for parents the route no longer has are removed;
//! - nothing is patched when the observed status already says what we would write.

use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use serde_json::{Map, Value, json};

use crate::{
    access,
    model::{Kind, ObjectKey},
    plan::{
        Plan,
        applied::{self, NodeReport},
        status::{Condition, RouteParentStatus},
    },
};

/// What the status writer needs to know of an object it may patch: the status as the API
/// server last reported it, and the versions it belongs to.
#[derive(Clone, Debug, PartialEq)]
pub struct ObservedStatus {
    pub generation: Option<i64>,
    pub resource_version: Option<String>,
    /// `status` as JSON text (`null` when the object has none yet). Text rather than a
    /// `Value`: the watchers keep one per route, a `Value` spends a B-tree node on each JSON
    /// object of it, and the status writer reads them only when statuses change.
    status: Box<str>,
}

impl Default for ObservedStatus {
    fn default() -> Self {
        Self::new(None, None, &Value::Null)
    }
}

impl ObservedStatus {
    pub fn new(generation: Option<i64>, resource_version: Option<String>, status: &Value) -> Self {
        Self {
            generation,
            resource_version,
            status: status.to_string().into_boxed_str(),
        }
    }

    /// `status` (`Null` when the object has none yet).
    pub fn status(&self) -> Value {
        serde_json::from_str(&self.status).unwrap_or(Value::Null)
    }

    pub fn set_status(&mut self, status: &Value) {
        self.status = status.to_string().into_boxed_str();
    }
}

/// An observed status read for one pass of [`patches`].
struct Seen<'a> {
    status: Value,
    resource_version: Option<&'a str>,
}

impl<'a> Seen<'a> {
    fn of(o: &'a ObservedStatus) -> Self {
        Self {
            status: o.status(),
            resource_version: o.resource_version.as_deref(),
        }
    }
}

/// The observed status of every object of the kinds the status writer patches. Each behind
/// an `Arc`: the watchers keep the map and hand the writer a copy of it after each change,
/// which then copies pointers, not every route's status.
pub type Observed = BTreeMap<ObjectKey, Arc<ObservedStatus>>;

/// One server-side apply of a `status` subresource.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusPatch {
    pub key: ObjectKey,
    /// The apply body: `apiVersion`, `kind`, `metadata` and `status`.
    pub body: Value,
}

/// What the status needs besides the plan.
#[derive(Clone, Debug)]
pub struct StatusContext<'a> {
    /// Our `controllerName`: route parents carrying it are ours.
    pub controller_name: &'a str,
    /// `status.addresses` of a Gateway without `spec.addresses` (`--status-address`); when
    /// empty, the addresses of the node in `node`.
    pub default_addresses: &'a [IpAddr],
    /// What this node serves of the plan: `Programmed` follows it. `None` writes the plan's
    /// conditions as they are (nothing applied yet, or a caller that applies nothing).
    pub node: Option<&'a NodeReport>,
    /// RFC 3339, for conditions whose status changes.
    pub now: &'a str,
}

/// The patches that bring the observed statuses to what `plan` says.
pub fn patches(plan: &Plan, observed: &Observed, ctx: &StatusContext<'_>) -> Vec<StatusPatch> {
    let mut out = gateway_patches(plan, observed, ctx);
    out.extend(route_patches(plan, observed, ctx));
    out
}

/// The patches of the GatewayClasses and Gateways: [`patches`] but the routes'. They follow
/// the node's report (`Programmed`, addresses), which moves with every plan applied.
pub fn gateway_patches(
    plan: &Plan,
    observed: &Observed,
    ctx: &StatusContext<'_>,
) -> Vec<StatusPatch> {
    let mut out = Vec::new();
    for c in &plan.gateway_classes {
        let key = c.class.clone();
        let Some(seen) = observed.get(&key) else {
            continue;
        };
        let seen = &Seen::of(seen);
        let status =
            json!({ "conditions": conditions(&c.conditions, field(seen, "conditions"), ctx.now) });
        out.extend(patch(key, seen, status, false));
    }
    let gateways = match ctx.node {
        Some(report) => applied::gateway_statuses(plan, report),
        None => plan.gateways.clone(),
    };
    let node_addresses: &[IpAddr] = ctx.node.map_or(&[], |n| &n.addresses);
    for g in &gateways {
        let key = g.gateway.clone();
        let Some(seen) = observed.get(&key) else {
            continue;
        };
        let seen = &Seen::of(seen);
        let seen_listeners = field(seen, "listeners");
        let listeners: Vec<Value> = g
            .listeners
            .iter()
            .map(|l| {
                let before = seen_listeners
                    .as_array()
                    .and_then(|ls| ls.iter().find(|s| s["name"] == l.name.as_str()))
                    .map_or(&Value::Null, |s| &s["conditions"]);
                json!({
                    "name": l.name,
                    "supportedKinds": l.supported_kinds.iter()
                        .map(|k| json!({"group": k.group, "kind": k.kind}))
                        .collect::<Vec<_>>(),
                    "attachedRoutes": l.attached_routes,
                    "conditions": conditions(&l.conditions, before, ctx.now),
                })
            })
            .collect();
        let mut status = Map::new();
        status.insert(
            "conditions".into(),
            conditions(&g.conditions, field(seen, "conditions"), ctx.now),
        );
        let addresses: Vec<String> = if !g.addresses.is_empty() {
            g.addresses.clone()
        } else if !ctx.default_addresses.is_empty() {
            ctx.default_addresses
                .iter()
                .map(ToString::to_string)
                .collect()
        } else {
            node_addresses.iter().map(ToString::to_string).collect()
        };
        if !addresses.is_empty() {
            status.insert(
                "addresses".into(),
                addresses
                    .iter()
                    .map(|a| json!({"type": "IPAddress", "value": a}))
                    .collect(),
            );
        }
        status.insert("listeners".into(), Value::Array(listeners));
        out.extend(patch(key, seen, Value::Object(status), false));
    }
    out
}

/// The patches of the routes: [`patches`] but the Gateways' and classes'. They depend on
/// `plan.routes` and `observed` only (and on `ctx`'s controller name and clock), so that a
/// caller holding both unchanged since its last pass (the plan of an endpoint refresh shares
/// its route statuses) need not make them again: at ten thousand routes that is the costly
/// part.
///
/// Made one at a time as the caller asks for them, not all before the first is written: the
/// first pass at 10k routes patches every route, and ten thousand patch documents held at once
/// (a JSON tree each) left the allocator's pages pinned by the long-lived data allocated among
/// them meanwhile.
pub fn route_patches<'a>(
    plan: &'a Plan,
    observed: &'a Observed,
    ctx: &'a StatusContext<'a>,
) -> impl Iterator<Item = StatusPatch> + 'a {
    let planned: HashSet<&ObjectKey> = plan.routes.iter().map(|r| &r.route).collect();
    let ours = plan.routes.iter().filter_map(move |r| {
        let seen = &Seen::of(observed.get(&r.route)?);
        let parents = route_parents(&r.parents, seen, ctx);
        patch(r.route.clone(), seen, json!({ "parents": parents }), true)
    });
    // Routes that no longer reach any of our Gateways: take our entries out.
    let gone = observed
        .iter()
        .filter(move |(key, _)| {
            matches!(
                key.kind,
                Kind::HttpRoute
                    | Kind::GrpcRoute
                    | Kind::TcpRoute
                    | Kind::UdpRoute
                    | Kind::TlsRoute
            ) && !planned.contains(key)
        })
        .filter_map(move |(key, seen)| {
            let seen = &Seen::of(seen);
            let ours = field(seen, "parents").as_array().is_some_and(|ps| {
                ps.iter()
                    .any(|p| p["controllerName"] == ctx.controller_name)
            });
            if !ours {
                return None;
            }
            let parents = route_parents(&[], seen, ctx);
            patch(key.clone(), seen, json!({ "parents": parents }), true)
        });
    ours.chain(gone)
}

/// Other controllers' entries as observed, then ours as planned.
fn route_parents(
    planned: &[RouteParentStatus],
    seen: &Seen<'_>,
    ctx: &StatusContext<'_>,
) -> Vec<Value> {
    let before: &[Value] = field(seen, "parents").as_array().map_or(&[], Vec::as_slice);
    let mut out: Vec<Value> = before
        .iter()
        .filter(|p| p["controllerName"] != ctx.controller_name)
        .cloned()
        .collect();
    for p in planned {
        let parent_ref = parent_ref(p);
        let previous = before
            .iter()
            .find(|b| b["controllerName"] == ctx.controller_name && b["parentRef"] == parent_ref)
            .map_or(&Value::Null, |b| &b["conditions"]);
        out.push(json!({
            "parentRef": parent_ref,
            "controllerName": p.controller_name,
            "conditions": conditions(&p.conditions, previous, ctx.now),
        }));
    }
    out
}

fn parent_ref(p: &RouteParentStatus) -> Value {
    let r = &p.parent_ref;
    let mut v = json!({
        "group": r.group,
        "kind": r.kind,
        "namespace": r.namespace,
        "name": r.name,
    });
    if let Some(s) = &r.section_name {
        v["sectionName"] = json!(s);
    }
    if let Some(port) = r.port {
        v["port"] = json!(port);
    }
    v
}

/// Conditions as the API writes them, keeping `lastTransitionTime` of each condition whose
/// status did not change.
fn conditions(planned: &[Condition], before: &Value, now: &str) -> Value {
    let before: &[Value] = before.as_array().map_or(&[], Vec::as_slice);
    planned
        .iter()
        .map(|c| {
            let status = c.status.to_string();
            let since = before
                .iter()
                .find(|b| b["type"] == c.type_.as_str() && b["status"] == status.as_str())
                .and_then(|b| b["lastTransitionTime"].as_str())
                .unwrap_or(now);
            json!({
                "type": c.type_,
                "status": status,
                "reason": c.reason,
                "message": c.message,
                "observedGeneration": c.observed_generation,
                "lastTransitionTime": since,
            })
        })
        .collect()
}

fn field<'s>(seen: &'s Seen<'_>, name: &str) -> &'s Value {
    seen.status.get(name).unwrap_or(&Value::Null)
}

/// Adds the patch unless every field we own already reads as we would write it.
/// The apply of `status` to `key`, unless the observed status already says it.
fn patch(key: ObjectKey, seen: &Seen<'_>, status: Value, guard: bool) -> Option<StatusPatch> {
    let unchanged = status
        .as_object()
        .is_some_and(|m| m.iter().all(|(k, v)| seen.status.get(k) == Some(v)));
    if unchanged {
        return None;
    }
    let resource = access::watched(key.kind)?;
    let mut metadata = json!({ "name": key.name });
    if !key.namespace.is_empty() {
        metadata["namespace"] = json!(key.namespace);
    }
    if guard && let Some(rv) = seen.resource_version {
        metadata["resourceVersion"] = json!(rv);
    }
    Some(StatusPatch {
        body: json!({
            "apiVersion": resource.api_version(),
            "kind": key.kind.as_str(),
            "metadata": metadata,
            "status": status,
        }),
        key,
    })
}
