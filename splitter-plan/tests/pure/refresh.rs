//! The endpoint refresh against the full build, its reference: random sequences of
//! EndpointSlice changes (and some other changes, which must build) over Gateways with every
//! kind of listener — L7 HTTP with mirrors and backend filters, HTTP served by the kernel, TCP,
//! UDP, TLS passthrough in the proxy and in the kernel — give the same plan either way.

use std::{collections::BTreeSet, sync::Arc};

use proptest::prelude::*;
use splitter_plan::{
    model::{Index, index::Changes, index::Update},
    plan::{self, ListenerPlan, Plan, PlanConfig, l7::L7RouteTable},
};

use crate::support::{fixture, index_of, objects};

const SERVICES: [&str; 5] = ["a", "b", "c", "empty", "solo"];

/// base.yaml, the L4 and TLS fixtures, the mirror/filter routes, and an HTTP listener whose
/// one plain route the kernel serves.
fn start() -> Index {
    let texts = [
        fixture("base.yaml"),
        fixture("l4-routes.yaml"),
        fixture("tls-passthrough.yaml"),
        fixture("mirror-cors-backend-filters.yaml"),
        KERNEL_HTTP.to_string(),
    ];
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    index_of(&refs)
}

const KERNEL_HTTP: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: plain, namespace: infra}
spec:
  gatewayClassName: splitter
  addresses: [{type: IPAddress, value: 192.0.2.20}]
  listeners: [{name: http, protocol: HTTP, port: 8000}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: plain, namespace: infra}
spec:
  parentRefs: [{name: plain}]
  rules:
  - backendRefs: [{name: solo, port: 8080, weight: 2}, {name: a, port: 8080, weight: 1}]
---
apiVersion: v1
kind: Service
metadata: {name: solo, namespace: infra}
spec:
  ports: [{name: http, port: 8080, targetPort: 3000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: solo-0, namespace: infra, labels: {kubernetes.io/service-name: solo}}
addressType: IPv4
ports: [{name: http, port: 3000, protocol: TCP}]
endpoints:
- addresses: [10.7.0.1]
";

#[derive(Clone, Debug)]
enum Event {
    /// Slice `slot` of a Service (slot 0 IPv4, slot 1 IPv6) holds these endpoints:
    /// (address number, ready, node number).
    Slice {
        service: usize,
        slot: usize,
        endpoints: Vec<(u8, bool, u8)>,
    },
    DeleteSlice {
        service: usize,
        slot: usize,
    },
    /// A slice of no Service: nothing in the plan reads it, so it changes nothing.
    Orphan {
        endpoints: Vec<(u8, bool, u8)>,
    },
    /// Not a slice: the plan must be built.
    RouteWeight(u32),
}

fn endpoints() -> impl Strategy<Value = Vec<(u8, bool, u8)>> {
    prop::collection::vec((0u8..6, prop::bool::weighted(0.8), 0u8..3), 0..5)
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        8 => (0..SERVICES.len(), 0usize..2, endpoints()).prop_map(|(service, slot, endpoints)| {
            Event::Slice { service, slot, endpoints }
        }),
        2 => (0..SERVICES.len(), 0usize..2)
            .prop_map(|(service, slot)| Event::DeleteSlice { service, slot }),
        1 => endpoints().prop_map(|endpoints| Event::Orphan { endpoints }),
        1 => (0u32..4).prop_map(Event::RouteWeight),
    ]
}

fn slice_yaml(name: &str, service: Option<&str>, v6: bool, eps: &[(u8, bool, u8)]) -> String {
    let label = service
        .map(|s| format!(", labels: {{kubernetes.io/service-name: {s}}}"))
        .unwrap_or_default();
    let mut y = format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {{name: {name}, namespace: infra{label}}}\n\
         addressType: {}\nports: [{{name: http, port: 3000, protocol: TCP}}]\nendpoints:{}\n",
        if v6 { "IPv6" } else { "IPv4" },
        if eps.is_empty() { " []" } else { "" }
    );
    for (addr, ready, node) in eps {
        let a = if v6 {
            format!("fd00::{}", addr + 1)
        } else {
            format!("10.9.0.{}", addr + 1)
        };
        y.push_str(&format!(
            "- addresses: [\"{a}\"]\n  conditions: {{ready: {ready}}}\n  nodeName: node{node}\n"
        ));
    }
    y
}

fn update(e: &Event) -> Update {
    let one = |y: String| Update::Apply(Box::new(objects(&y).remove(0)));
    match e {
        Event::Slice {
            service,
            slot,
            endpoints,
        } => {
            let svc = SERVICES[*service];
            one(slice_yaml(
                &format!("{svc}-x{slot}"),
                Some(svc),
                *slot == 1,
                endpoints,
            ))
        }
        Event::DeleteSlice { service, slot } => {
            Update::Delete(splitter_plan::model::ObjectKey::new(
                splitter_plan::model::Kind::EndpointSlice,
                "infra",
                format!("{}-x{slot}", SERVICES[*service]),
            ))
        }
        Event::Orphan { endpoints } => one(slice_yaml("orphan", None, false, endpoints)),
        Event::RouteWeight(w) => one(format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n\
             metadata: {{name: plain, namespace: infra}}\n\
             spec:\n  parentRefs: [{{name: plain}}]\n  rules:\n\
             \x20 - backendRefs: [{{name: solo, port: 8080, weight: {w}}}, {{name: a, port: 8080, weight: 1}}]\n"
        )),
    }
}

/// Runs `batches` both ways; returns how many batches the refresh served.
fn check(batches: &[Vec<Event>]) -> Result<usize, TestCaseError> {
    let config = PlanConfig::default();
    let mut index = start();
    let mut current = plan::build(&index, &config, None);
    let mut refreshed = 0;
    for batch in batches {
        let mut changes = Changes::default();
        for e in batch {
            index.update_noting(update(e), &mut changes);
        }
        let full = plan::build(&index, &config, Some(&current));
        if !changes.any() {
            prop_assert!(
                full.same_except_disruption(&current),
                "no change, same plan"
            );
            continue;
        }
        if changes.other {
            current = full;
            continue;
        }
        match plan::refresh_endpoints(&current, &index, &config, &changes.endpoints_of) {
            Some((next, changed)) => {
                refreshed += 1;
                prop_assert!(
                    next.same_except_disruption(&full),
                    "refresh of {:?} differs from the build:\n{}",
                    changes.endpoints_of,
                    first_difference(&next, &full)
                );
                prop_assert_eq!(changed, !full.same_except_disruption(&current));
                current = next;
            }
            None => current = full,
        }
    }
    Ok(refreshed)
}

fn first_difference(a: &Plan, b: &Plan) -> String {
    let json = |p: &Plan| {
        let mut p = p.clone();
        for l in &mut p.listeners {
            if let ListenerPlan::L4 { l4, .. } = l {
                l4.table.disruption = None;
                if let Some(t) = &mut l4.table_v6 {
                    t.disruption = None;
                }
            }
        }
        serde_json::to_string_pretty(&p).expect("json")
    };
    let (a, b) = (json(a), json(b));
    a.lines()
        .zip(b.lines())
        .enumerate()
        .find(|(_, (x, y))| x != y)
        .map(|(i, (x, y))| format!("line {i}: refresh {x}\n         build   {y}"))
        .unwrap_or_else(|| "lengths differ".into())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn a_refresh_gives_what_a_build_gives(
        batches in prop::collection::vec(prop::collection::vec(event(), 1..4), 1..12)
    ) {
        check(&batches)?;
    }
}

/// The property above must exercise the refresh, not only its declines: a run of endpoint
/// changes that keep every Service's endpoints non-empty is served by refreshes only.
#[test]
fn endpoint_changes_that_keep_services_served_are_refreshed() {
    let batches: Vec<Vec<Event>> = (0..6u8)
        .map(|i| {
            vec![Event::Slice {
                service: usize::from(i) % 3,
                slot: usize::from(i % 2),
                endpoints: vec![(i % 6, true, i % 3), ((i + 1) % 6, true, 0)],
            }]
        })
        .collect();
    assert_eq!(check(&batches).expect("same plans"), 6);
}

/// Only the routes that name a refreshed Service get a new `Arc`: the proxy recompiles those
/// alone.
#[test]
fn a_refresh_shares_every_untouched_route() {
    let config = PlanConfig::default();
    let mut index = start();
    let before = plan::build(&index, &config, None);
    let mut changes = Changes::default();
    index.update_noting(
        update(&Event::Slice {
            service: 2,
            slot: 0,
            endpoints: vec![(3, true, 1)],
        }),
        &mut changes,
    );
    assert!(!changes.other);
    assert_eq!(
        changes.endpoints_of,
        BTreeSet::from([("infra".to_string(), "c".to_string())])
    );
    let (after, changed) =
        plan::refresh_endpoints(&before, &index, &config, &changes.endpoints_of).expect("refresh");
    assert!(changed);
    let tables = |p: &Plan| -> Vec<Arc<L7RouteTable>> {
        p.listeners
            .iter()
            .filter_map(|l| match l {
                ListenerPlan::L7 { l7, .. } => Some(l7.clone()),
                ListenerPlan::L4 { .. } => None,
            })
            .collect()
    };
    let (mut shared, mut fresh) = (0, 0);
    for (a, b) in tables(&before).iter().zip(tables(&after)) {
        for (ra, rb) in a.routes.iter().zip(&b.routes) {
            let names_c = ra.backends.iter().any(|b| b.name.starts_with("infra/c:"))
                || ra.mirrors.iter().any(|m| m.name.starts_with("infra/c:"));
            assert_eq!(Arc::ptr_eq(ra, rb), !names_c, "{}", ra.route);
            if names_c {
                fresh += 1;
            } else {
                shared += 1;
            }
        }
    }
    assert!(
        shared > 0 && fresh > 0,
        "shared {shared}, refreshed {fresh}"
    );
}
