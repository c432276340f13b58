//! Plan-level tests, one or more per rule of DESIGN section 3 and 4, from YAML fixtures.

use std::{net::SocketAddr, sync::Arc};

use crate::support::*;
use splitter_plan::plan::{
    self, ListenerPlan, Mode, Plan, PlanConfig,
    l7::{BackendTarget, Filter, InvalidReason, PathMatch, PathModifier, UrlRewrite},
    maglev::TableTarget,
    status::ConditionStatus,
};

fn ep(s: &str) -> TableTarget {
    TableTarget::Endpoint(s.parse::<SocketAddr>().unwrap())
}

/// Every quota is within one slot of m * share.
fn assert_quotas(table: &plan::maglev::WeightedTable, expected: &[(TableTarget, f64)]) {
    let m = f64::from(table.m);
    for (t, share) in expected {
        let q = f64::from(table.quota_of(t));
        assert!(
            (q - m * share).abs() < 1.0,
            "{t}: quota {q}, want {} (share {share})",
            m * share
        );
    }
    let total: u32 = table.backends.iter().map(|b| b.quota).sum();
    assert_eq!(total, table.m);
    assert_eq!(table.slots.len(), table.m as usize);
}

#[test]
fn default_weights_are_one_and_split_per_service_not_per_endpoint() {
    let plan = plan_with(&["weights-default.yaml"]);
    let l = listener(&plan, 80);
    assert_eq!(l.mode(), Mode::L4, "{}", l.reason());
    let l4 = l.l4().unwrap();
    assert_eq!(
        l4.backends.iter().map(|b| b.weight).collect::<Vec<_>>(),
        [1, 1]
    );
    // a and b have 2 ready endpoints each: a quarter each.
    assert_quotas(
        &l4.table,
        &[
            (ep("10.1.0.1:3000"), 0.25),
            (ep("10.1.0.2:3000"), 0.25),
            (ep("10.2.0.1:3000"), 0.25),
            (ep("10.2.0.2:3000"), 0.25),
        ],
    );
    assert_eq!(l4.table.quota_of(&ep("10.2.0.3:3000")), 0, "not ready");
}

#[test]
fn weights_70_30_0_with_2_2_1_endpoints() {
    let plan = plan_with(&["weights-70-30-0.yaml"]);
    let l4 = listener(&plan, 80).l4().unwrap();
    assert_quotas(
        &l4.table,
        &[
            (ep("10.1.0.1:3000"), 0.35),
            (ep("10.1.0.2:3000"), 0.35),
            (ep("10.2.0.1:3000"), 0.15),
            (ep("10.2.0.2:3000"), 0.15),
            (ep("10.3.0.1:3000"), 0.0),
            (TableTarget::Reject, 0.0),
        ],
    );
    assert!(
        l4.table
            .backends
            .iter()
            .all(|b| b.target != ep("10.3.0.1:3000")),
        "weight 0 gets no slot"
    );
    // The same route served at L7 keeps weights per Service.
    let weights: Vec<(String, u32)> = l4
        .backends
        .iter()
        .map(|b| (b.name.clone(), b.weight))
        .collect();
    assert_eq!(
        weights,
        [
            ("infra/a:8080".to_string(), 70),
            ("infra/b:8080".to_string(), 30),
            ("infra/c:8080".to_string(), 0)
        ]
    );
}

#[test]
fn all_zero_weights_answer_500_from_the_proxy() {
    let plan = plan_with(&["weights-all-zero.yaml"]);
    let l = listener(&plan, 80);
    assert_eq!(l.mode(), Mode::L7, "{}", l.reason());
    assert!(l.reason().contains("weight 0"), "{}", l.reason());
    let r = route(&plan, "infra", "r");
    assert!(condition(&r.parents[0].conditions, "Accepted").is_true());
}

#[test]
fn invalid_share_for_each_reason_and_no_endpoint_share() {
    let plan = plan_with(&["invalid-backends.yaml"]);
    let l = listener(&plan, 80);
    assert_eq!(l.mode(), Mode::L7);
    let table = l.l7().unwrap();
    let cases = [
        (
            "missing",
            "BackendNotFound",
            Some(InvalidReason::BackendNotFound),
        ),
        (
            "unknown-kind",
            "InvalidKind",
            Some(InvalidReason::InvalidKind),
        ),
        (
            "cross-ns",
            "RefNotPermitted",
            Some(InvalidReason::RefNotPermitted),
        ),
        (
            "bad-port",
            "BackendNotFound",
            Some(InvalidReason::BackendNotFound),
        ),
        ("no-endpoints", "ResolvedRefs", None),
    ];
    for (name, reason, invalid) in cases {
        let status = route(&plan, "infra", name);
        let c = &status.parents[0].conditions;
        assert!(
            condition(c, "Accepted").is_true(),
            "{name}: the route stays Accepted"
        );
        assert_eq!(condition(c, "ResolvedRefs").reason, reason, "{name}");
        assert_eq!(condition(c, "ResolvedRefs").observed_generation, 1);
        let r = table.routes.iter().find(|r| r.route.name == name).unwrap();
        assert_eq!(
            r.backends.len(),
            2,
            "{name}: the invalid share is kept, not redistributed"
        );
        assert!(matches!(r.backends[0].target, BackendTarget::Endpoints(ref e) if e.len() == 2));
        assert_eq!(r.backends[1].weight, 1);
        match invalid {
            Some(reason) => assert_eq!(
                r.backends[1].target,
                BackendTarget::Invalid(reason),
                "{name}"
            ),
            None => assert_eq!(r.backends[1].target, BackendTarget::NoEndpoints, "{name}"),
        }
    }
}

/// A rule whose every request would reach one weighted set is still served by the proxy when part
/// of that set is invalid or has no endpoints: the spec wants 500 and 503 for that share, which
/// the kernel cannot answer. `splitter check`'s "why" names the refs.
#[test]
fn invalid_and_empty_shares_of_an_http_route_go_to_the_proxy() {
    let route = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: infra}
spec:
  parentRefs: [{name: gw}]
  rules:
  - backendRefs:
    - {name: a, port: 8080, weight: 2}
    - {name: nonexistent, port: 8080, weight: 1}
    - {name: empty, port: 8080, weight: 1}
"#;
    let plan = plan_of(&[&fixture("base.yaml"), route]);
    let l = listener(&plan, 80);
    assert_eq!(l.mode(), Mode::L7, "{}", l.reason());
    for name in ["infra/nonexistent:8080", "infra/empty:8080"] {
        assert!(l.reason().contains(name), "{}", l.reason());
    }
    assert!(l.reason().contains("(500)") && l.reason().contains("(503)"));
    // The same rule with only valid backends is split in the kernel.
    let valid = route
        .replace("    - {name: nonexistent, port: 8080, weight: 1}\n", "")
        .replace("    - {name: empty, port: 8080, weight: 1}\n", "");
    let plan = plan_of(&[&fixture("base.yaml"), &valid]);
    assert_eq!(listener(&plan, 80).mode(), Mode::L4);
}

/// A Gateway `tcp` with a TCP listener on 9100 and a TCPRoute `r` whose one rule has
/// `backend_refs` (YAML list items, indented four spaces).
fn tcp_route(backend_refs: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: tcp, namespace: infra}}
spec:
  gatewayClassName: splitter
  listeners:
  - {{name: tcp, protocol: TCP, port: 9100}}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {{name: r, namespace: infra}}
spec:
  parentRefs: [{{name: tcp}}]
  rules:
  - backendRefs:
{backend_refs}"
    )
}

/// TCPRoute has no status code to answer with: the invalid and no-endpoint shares stay in the
/// kernel table as REJECT (RST for TCP, drop for UDP).
#[test]
fn invalid_and_empty_shares_of_a_tcp_route_go_to_reject_at_l4() {
    let route = tcp_route(
        "    - {name: a, port: 8080, weight: 2}
    - {name: nonexistent, port: 8080, weight: 1}
    - {name: empty, port: 8080, weight: 1}
",
    );
    let plan = plan_of(&[&fixture("base.yaml"), &route]);
    let l4 = listener(&plan, 9100).l4().unwrap();
    assert_quotas(
        &l4.table,
        &[
            (ep("10.1.0.1:3000"), 0.25),
            (ep("10.1.0.2:3000"), 0.25),
            (TableTarget::Reject, 0.5),
        ],
    );
}

fn grant_plan(grant_edit: impl Fn(&str) -> String) -> ConditionStatus {
    let plan = plan_of(&[
        &fixture("base.yaml"),
        &grant_edit(&fixture("cross-ns-grant.yaml")),
    ]);
    let r = route(&plan, "infra", "r");
    let c = condition(&r.parents[0].conditions, "ResolvedRefs");
    if c.is_true() {
        let l4 = listener(&plan, 80).l4().unwrap();
        assert_eq!(l4.table.quota_of(&ep("10.5.0.1:3000")), l4.table.m);
    } else {
        assert_eq!(c.reason, "RefNotPermitted");
    }
    c.status
}

#[test]
fn reference_grant_present_absent_and_wrong_in_each_field() {
    assert_eq!(grant_plan(|s| s.to_string()), ConditionStatus::True);
    // Absent: drop the grant document.
    assert_eq!(
        grant_plan(|s| s.split("---").next().unwrap().to_string()),
        ConditionStatus::False
    );
    // No `to.name`: every Service in the namespace.
    assert_eq!(
        grant_plan(|s| s.replace(", name: web}", "}")),
        ConditionStatus::True
    );
    let wrong = [
        (
            "namespace",
            "{name: allow-infra, namespace: other}",
            "{name: allow-infra, namespace: infra}",
        ),
        (
            "from.group",
            "group: gateway.networking.k8s.io, kind: HTTPRoute",
            "group: example.com, kind: HTTPRoute",
        ),
        (
            "from.kind",
            "kind: HTTPRoute, namespace: infra",
            "kind: GRPCRoute, namespace: infra",
        ),
        (
            "from.namespace",
            "kind: HTTPRoute, namespace: infra",
            "kind: HTTPRoute, namespace: default",
        ),
        (
            "to.group",
            "{group: \"\", kind: Service",
            "{group: apps, kind: Service",
        ),
        (
            "to.kind",
            "kind: Service, name: web}",
            "kind: Pod, name: web}",
        ),
        (
            "to.name",
            "kind: Service, name: web}",
            "kind: Service, name: web2}",
        ),
    ];
    for (field, from, to) in wrong {
        let status = grant_plan(|s| {
            assert!(s.contains(from), "{field}: fixture changed");
            s.replace(from, to)
        });
        assert_eq!(
            status,
            ConditionStatus::False,
            "grant wrong in {field} must not permit"
        );
    }
}

#[test]
fn path_header_method_query_precedence_within_a_route() {
    let plan = plan_with(&["precedence.yaml"]);
    let table = listener(&plan, 80).l7().unwrap();
    let order: Vec<usize> = table.routes.iter().map(|r| r.rule_index).collect();
    // Exact (longest first), then longest prefix, then method, most headers, most query.
    assert_eq!(order, [8, 7, 6, 5, 4, 3, 2, 1, 0]);
    assert_eq!(
        table.routes[3].matched.path,
        PathMatch::Prefix("/match".into()),
        "trailing / ignored"
    );
    assert_eq!(
        table.routes[6].matched.headers[0].name, "version",
        "header names lower-case"
    );
}

#[test]
fn ties_across_routes_go_to_the_oldest_then_namespace_name() {
    let plan = plan_with(&["cross-route-ties.yaml"]);
    let table = listener(&plan, 80).l7().unwrap();
    let names: Vec<&str> = table.routes.iter().map(|r| r.route.name.as_str()).collect();
    assert_eq!(names, ["older-a", "older-b", "newer", "zz"]);
}

#[test]
fn hostname_intersection_and_listener_precedence() {
    let plan = plan_with(&["hostnames.yaml"]);
    let l = listener(&plan, 8000);
    assert_eq!(l.mode(), Mode::L7);
    let table = l.l7().unwrap();
    let order: Vec<(&str, Vec<String>)> = table
        .routes
        .iter()
        .map(|r| (r.route.name.as_str(), r.hostnames.clone()))
        .collect();
    assert_eq!(
        order,
        [
            ("on-exact", vec!["foo.bar.com".to_string()]),
            ("on-apex", vec!["bar.com".to_string()]),
            ("intersecting", vec!["foo.example.com".to_string()]),
            ("on-wild", vec!["*.bar.com".to_string()]),
        ]
    );
    // Listener isolation: the wildcard listener's routes leave the hosts of the exact
    // listeners within it to theirs; exact listeners and unrelated ones shadow nothing.
    let shadowed: Vec<(&str, Vec<String>)> = table
        .routes
        .iter()
        .map(|r| (r.route.name.as_str(), r.shadowed_by.clone()))
        .collect();
    assert_eq!(
        shadowed,
        [
            ("on-exact", vec![]),
            ("on-apex", vec![]),
            ("intersecting", vec![]),
            ("on-wild", vec!["foo.bar.com".to_string()]),
        ]
    );
    let disjoint = route(&plan, "infra", "disjoint");
    let accepted = condition(&disjoint.parents[0].conditions, "Accepted");
    assert!(!accepted.is_true());
    assert_eq!(accepted.reason, "NoMatchingListenerHostname");
    let gw = plan
        .gateways
        .iter()
        .find(|g| g.gateway.name == "hosts")
        .unwrap();
    let example = gw.listeners.iter().find(|l| l.name == "example").unwrap();
    assert_eq!(example.attached_routes, 1, "only accepted routes count");
}

#[test]
fn parent_refs_that_do_not_attach() {
    let plan = plan_with(&["attachment.yaml"]);
    for (ns, name, reason) in [
        ("infra", "no-section", "NoMatchingParent"),
        ("other", "foreign", "NotAllowedByListeners"),
    ] {
        let r = route(&plan, ns, name);
        let c = &r.parents[0].conditions;
        assert_eq!(condition(c, "Accepted").reason, reason, "{name}");
        assert!(!condition(c, "Accepted").is_true());
        assert!(
            condition(c, "ResolvedRefs").is_true(),
            "{name}: ResolvedRefs is written too"
        );
    }
    let gw = plan
        .gateways
        .iter()
        .find(|g| g.gateway.name == "gw")
        .unwrap();
    assert_eq!(gw.listeners[0].attached_routes, 0);
    assert!(plan.listeners[0].l7().unwrap().routes.is_empty());
    assert!(!plan.problems().is_empty());
}

#[test]
fn strip_path_annotation_rewrites_every_prefix_match() {
    let plan = plan_with(&["strip-path.yaml"]);
    let table = listener(&plan, 80).l7().unwrap();
    let strip = Filter::UrlRewrite(UrlRewrite {
        hostname: None,
        path: Some(PathModifier::ReplacePrefixMatch("/".into())),
    });
    let echo = table
        .routes
        .iter()
        .find(|r| r.matched.path == PathMatch::Prefix("/echo".into()))
        .unwrap();
    assert_eq!(echo.filters, [strip]);
    let exact = table
        .routes
        .iter()
        .find(|r| r.matched.path == PathMatch::Exact("/exact".into()))
        .unwrap();
    assert!(exact.filters.is_empty(), "Exact matches are not stripped");
    let keep = table
        .routes
        .iter()
        .find(|r| r.matched.path == PathMatch::Prefix("/keep".into()))
        .unwrap();
    assert_eq!(
        keep.filters,
        [Filter::UrlRewrite(UrlRewrite {
            hostname: None,
            path: Some(PathModifier::ReplacePrefixMatch("/other".into()))
        })],
        "an explicit rewrite wins"
    );
}

const GW_L4: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: infra, annotations: {splitter.dev/dataplane: l4}}
spec:
  gatewayClassName: splitter
  listeners: [{name: http, protocol: HTTP, port: 80}]
"#;

#[test]
fn l4_or_l7_decision_and_its_override() {
    // One rule matching everything: L4.
    let plan = plan_with(&["weights-default.yaml"]);
    assert_eq!(listener(&plan, 80).mode(), Mode::L4);
    // Path matches: L7, with the reason.
    let plan = plan_with(&["precedence.yaml"]);
    let l = listener(&plan, 80);
    assert_eq!(l.mode(), Mode::L7);
    assert!(l.reason().contains("matched one by one"), "{}", l.reason());
    // l7 forced on an L4-able listener.
    let gw_l7 = GW_L4.replace("dataplane: l4", "dataplane: l7");
    let plan = plan_of(&[
        &fixture("base.yaml"),
        &gw_l7,
        &fixture("weights-default.yaml"),
    ]);
    let l = listener(&plan, 80);
    assert_eq!(l.mode(), Mode::L7);
    assert!(l.l7().unwrap().routes.len() == 1);
    // l4 asked where the route needs L7: refused, with a status saying why.
    let plan = plan_of(&[&fixture("base.yaml"), GW_L4, &fixture("precedence.yaml")]);
    let l = listener(&plan, 80);
    assert_eq!(l.mode(), Mode::L7);
    assert!(l.reason().contains("l4 refused"), "{}", l.reason());
    let gw = plan
        .gateways
        .iter()
        .find(|g| g.gateway.name == "gw")
        .unwrap();
    let c = condition(&gw.listeners[0].conditions, "splitter.dev/Dataplane");
    assert_eq!(
        (c.status, c.reason.as_str()),
        (ConditionStatus::False, "L4Refused")
    );
    // l4 asked where it is possible: L4.
    let plan = plan_of(&[
        &fixture("base.yaml"),
        GW_L4,
        &fixture("weights-default.yaml"),
    ]);
    assert_eq!(listener(&plan, 80).mode(), Mode::L4);
    // The guide's route (prefix /echo + strip-path) needs L7.
    let plan = plan_of(&[&fixture("base.yaml"), &fixture("strip-path.yaml")]);
    assert_eq!(listener(&plan, 80).mode(), Mode::L7);
}

#[test]
fn tcp_and_udp_routes_are_always_l4_and_the_oldest_wins() {
    let plan = plan_with(&["l4-routes.yaml"]);
    let l4: Vec<_> = plan
        .listeners
        .iter()
        .filter(|l| l.key().port == 9000)
        .collect();
    assert_eq!(l4.len(), 2);
    assert!(l4.iter().all(|l| l.mode() == Mode::L4));
    let tcp = l4
        .iter()
        .find(|l| l.key().transport == plan::Transport::Tcp)
        .unwrap();
    assert_eq!(
        tcp.key().addresses,
        ["192.0.2.10".parse::<std::net::IpAddr>().unwrap()]
    );
    let t = tcp.l4().unwrap();
    assert_eq!(t.route.as_ref().unwrap().name, "old");
    assert_quotas(
        &t.table,
        &[
            (ep("10.1.0.1:3000"), 0.35),
            (ep("10.1.0.2:3000"), 0.35),
            (ep("10.2.0.1:3000"), 0.15),
            (ep("10.2.0.2:3000"), 0.15),
        ],
    );
    let udp = l4
        .iter()
        .find(|l| l.key().transport == plan::Transport::Udp)
        .unwrap();
    assert_quotas(
        &udp.l4().unwrap().table,
        &[
            (ep("10.1.0.1:3000"), 0.35),
            (ep("10.1.0.2:3000"), 0.35),
            (TableTarget::Reject, 0.3),
        ],
    );
    let gw = plan
        .gateways
        .iter()
        .find(|g| g.gateway.name == "l4")
        .unwrap();
    let tcp_status = gw.listeners.iter().find(|l| l.name == "tcp").unwrap();
    assert_eq!(
        tcp_status.attached_routes, 2,
        "both routes attach; only the oldest serves"
    );
    assert_eq!(tcp_status.supported_kinds[0].kind, "TCPRoute");
    let dns = route(&plan, "infra", "dns");
    assert_eq!(
        condition(&dns.parents[0].conditions, "ResolvedRefs").reason,
        "BackendNotFound"
    );
}

#[test]
fn conditions_carry_the_observed_generation() {
    let plan = plan_with(&["weights-default.yaml"]);
    let r = route(&plan, "infra", "r");
    assert!(
        r.parents[0]
            .conditions
            .iter()
            .all(|c| c.observed_generation == 7)
    );
    assert_eq!(r.parents[0].parent_ref.group, "gateway.networking.k8s.io");
    assert_eq!(r.parents[0].parent_ref.kind, "Gateway");
    let gw = plan
        .gateways
        .iter()
        .find(|g| g.gateway.name == "gw")
        .unwrap();
    assert!(
        gw.conditions
            .iter()
            .all(|c| c.observed_generation == 3 && c.is_true())
    );
    assert!(
        gw.listeners[0]
            .conditions
            .iter()
            .all(|c| c.observed_generation == 3)
    );
    assert!(plan.gateway_classes[0].conditions[0].is_true());
    assert!(plan.problems().is_empty(), "{:?}", plan.problems());
}

#[test]
fn disruption_is_measured_against_the_previous_plan() {
    let before = plan_with(&["weights-default.yaml"]);
    let index = index_of(&[&fixture("base.yaml"), &fixture("weights-70-30-0.yaml")]);
    let after = plan::build(&index, &Default::default(), Some(&before));
    let d = listener(&after, 80)
        .l4()
        .as_ref()
        .unwrap()
        .table
        .disruption
        .unwrap();
    assert!(
        d.minimum > 0 && d.moved >= d.minimum && d.moved <= 2 * d.minimum,
        "{d:?}"
    );
}

#[test]
fn listener_conflicts_unsupported_protocols_selectors_and_dropped_rules() {
    let plan = plan_with(&["listener-edge.yaml"]);
    let edge = plan
        .gateways
        .iter()
        .find(|g| g.gateway.name == "edge")
        .unwrap();
    let status = |name: &str| edge.listeners.iter().find(|l| l.name == name).unwrap();
    let clash = condition(&status("clash").conditions, "Conflicted");
    assert_eq!(
        (clash.status, clash.reason.as_str()),
        (ConditionStatus::True, "ProtocolConflict")
    );
    let custom = condition(&status("custom").conditions, "Accepted");
    assert_eq!(
        (custom.status, custom.reason.as_str()),
        (ConditionStatus::False, "UnsupportedProtocol")
    );
    let accepted = condition(&edge.conditions, "Accepted");
    assert_eq!(
        (accepted.status, accepted.reason.as_str()),
        (ConditionStatus::True, "ListenersNotValid")
    );
    // The older Gateway keeps port 80 over HTTP.
    assert_eq!(listener(&plan, 80).sources()[0].gateway.name, "gw");

    // Selector: namespace `other` (team=other) may attach, `infra` may not.
    let other = route(&plan, "other", "from-other");
    let c = &other.parents[0].conditions;
    assert!(condition(c, "Accepted").is_true());
    let partial = condition(c, "PartiallyInvalid");
    assert!(
        partial.is_true() && partial.message.starts_with("Dropped Rule 1"),
        "{partial:?}"
    );
    let infra = route(&plan, "infra", "from-infra");
    assert_eq!(
        condition(&infra.parents[0].conditions, "Accepted").reason,
        "NotAllowedByListeners"
    );
    // Only the supported rule is served.
    let table = listener(&plan, 8080).l7().unwrap();
    assert!(
        table
            .routes
            .iter()
            .all(|r| r.rule_index == 0 && r.route.name == "from-other")
    );
    assert_eq!(status("shared").attached_routes, 1);
}

#[test]
fn unservable_values_drop_their_rule_with_a_condition_and_the_rest_is_served() {
    let plan = plan_with(&["unservable-values.yaml"]);
    let accepted = |name: &str| {
        let r = route(&plan, "infra", name);
        condition(&r.parents[0].conditions, "Accepted").clone()
    };

    // The only rule dropped: the route is not accepted, and says which field and why.
    let bad = accepted("bad-path-regex");
    assert_eq!(
        (bad.status, bad.reason.as_str()),
        (ConditionStatus::False, "UnsupportedValue")
    );
    assert!(
        bad.message
            .contains("spec.rules[0].matches[0].path.value: invalid regular expression \"/v[0-9\""),
        "{bad:?}"
    );
    let hdr = accepted("bad-header-value");
    assert_eq!(hdr.reason, "UnsupportedValue", "{hdr:?}");
    assert!(
        hdr.message
            .contains("spec.rules[0].filters[0].requestHeaderModifier.set[0].value: header value"),
        "{hdr:?}"
    );

    // One of two rules dropped: accepted, partially invalid, the other rule served.
    let partial = route(&plan, "infra", "bad-header-regex");
    let c = &partial.parents[0].conditions;
    assert!(condition(c, "Accepted").is_true());
    let p = condition(c, "PartiallyInvalid");
    assert!(
        p.is_true()
            && p.message
                .contains("spec.rules[0].matches[0].headers[0].value"),
        "{p:?}"
    );

    let table = listener(&plan, 80).l7().unwrap();
    let served: Vec<(&str, usize)> = table
        .routes
        .iter()
        .map(|r| (r.route.name.as_str(), r.rule_index))
        .collect();
    assert!(served.contains(&("bad-header-regex", 1)), "{served:?}");
    assert!(served.contains(&("good", 0)), "{served:?}");
    assert!(
        !served.iter().any(|(n, i)| *n == "bad-path-regex"
            || *n == "bad-header-value"
            || (*n == "bad-header-regex" && *i == 0)),
        "{served:?}"
    );
    // The valid regular expression arrives compiled.
    let good = table
        .routes
        .iter()
        .find(|r| r.route.name == "good")
        .unwrap();
    match &good.matched.path {
        PathMatch::Regex(p) => assert!(p.is_match("/api/v12") && !p.is_match("/api/v12/x")),
        other => panic!("{other:?}"),
    }
    assert!(!plan.problems().is_empty());
}

/// Framing headers are the proxy's: a header modifier that sets, adds or removes one (here
/// `Content-Length`, `Transfer-Encoding`, `Connection`, in any case) drops its rule with the
/// field path, and the route's other rules are served.
#[test]
fn header_modifiers_on_framing_headers_drop_their_rule() {
    let plan = plan_with(&["unservable-values.yaml"]);
    let r = route(&plan, "infra", "smuggling-filters");
    let c = &r.parents[0].conditions;
    assert!(condition(c, "Accepted").is_true());
    let p = condition(c, "PartiallyInvalid");
    assert_eq!(p.reason, "UnsupportedValue", "{p:?}");
    for field in [
        "spec.rules[0].filters[0].requestHeaderModifier.set[1].name: header \"content-length\"",
        "spec.rules[1].filters[0].responseHeaderModifier.add[0].name: header \"transfer-encoding\"",
        "spec.rules[2].filters[0].requestHeaderModifier.remove[0].name: header \"connection\"",
    ] {
        assert!(p.is_true() && p.message.contains(field), "{field}: {p:?}");
    }
    let table = listener(&plan, 80).l7().unwrap();
    let served: Vec<usize> = table
        .routes
        .iter()
        .filter(|r| r.route.name == "smuggling-filters")
        .map(|r| r.rule_index)
        .collect();
    assert_eq!(
        served,
        vec![3],
        "only the rule without a framing header is served"
    );
    assert!(
        plan.problems()
            .iter()
            .any(|p| p.contains("HTTPRoute infra/smuggling-filters")),
        "{:?}",
        plan.problems()
    );
}

/// An EndpointSlice's `nodeName` tells the kernel path which endpoints are on which node (DNAT
/// only for this node's, DNAT plus SNAT for the others'); the table itself is the same whatever
/// the nodes, so every node holds the same one.
#[test]
fn l4_plans_know_each_endpoints_node_and_the_table_ignores_it() {
    let base = fixture("base.yaml");
    let placed = base
        .replace(
            "- addresses: [10.1.0.1]",
            "- addresses: [10.1.0.1]\n  nodeName: node1",
        )
        .replace(
            "- addresses: [10.2.0.1]",
            "- addresses: [10.2.0.1]\n  nodeName: node2",
        );
    assert_ne!(
        base, placed,
        "the fixture's endpoints moved; update the test"
    );
    let routes = fixture("l4-routes.yaml");
    let with_nodes = plan_of(&[&placed, &routes]);
    let without = plan_of(&[&base, &routes]);
    let tcp = |plan: &Plan| {
        plan.listeners
            .iter()
            .find(|l| l.key().port == 9000 && l.key().transport == plan::Transport::Tcp)
            .and_then(|l| l.l4().cloned())
            .expect("the TCP listener is L4")
    };
    let (placed_l4, bare_l4) = (tcp(&with_nodes), tcp(&without));
    let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
    assert_eq!(placed_l4.node_of(&sa("10.1.0.1:3000")), Some("node1"));
    assert_eq!(placed_l4.node_of(&sa("10.2.0.1:3000")), Some("node2"));
    assert_eq!(placed_l4.node_of(&sa("10.1.0.2:3000")), None);
    assert_eq!(bare_l4.node_of(&sa("10.1.0.1:3000")), None);
    assert_eq!(placed_l4.table.slots, bare_l4.table.slots);
}

/// A Service with IPv4 and IPv6 slices: one table per family (the kernel does no NAT46/64), each
/// splitting the Service's share over its endpoints of that family; a Service with no endpoint
/// of a family keeps its share as REJECT there rather than handing it to the others.
#[test]
fn dual_stack_endpoints_get_one_table_per_family() {
    let routes = tcp_route(
        "    - {name: a, port: 8080, weight: 3}
    - {name: b, port: 8080, weight: 1}
",
    ) + r#"---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: a-v6, namespace: infra, labels: {kubernetes.io/service-name: a}}
addressType: IPv6
ports: [{name: http, port: 3000, protocol: TCP}]
endpoints:
- addresses: ["fd00::a1"]
"#;
    let plan = plan_of(&[&fixture("base.yaml"), &routes]);
    let l4 = listener(&plan, 9100).l4().unwrap();
    assert_quotas(
        l4.table_for(true),
        &[
            (ep("10.1.0.1:3000"), 0.375),
            (ep("10.1.0.2:3000"), 0.375),
            (ep("10.2.0.1:3000"), 0.125),
            (ep("10.2.0.2:3000"), 0.125),
        ],
    );
    assert_quotas(
        l4.table_for(false),
        &[(ep("[fd00::a1]:3000"), 0.75), (TableTarget::Reject, 0.25)],
    );
    // A single-family set keeps its one table.
    let v4_only = plan_of(&[
        &fixture("base.yaml"),
        routes.split("---\napiVersion: discovery").next().unwrap(),
    ]);
    let l4 = listener(&v4_only, 9100).l4().unwrap();
    assert!(l4.table_v6.is_none());
}

/// A listener on the node's addresses may not take a port a host socket holds or one of the
/// node's reserved ranges: it is refused (`Accepted=False`, `PortUnavailable`, the reason named)
/// and gets no data plane, so the host keeps the port's traffic; the same port on a Gateway
/// address of its own is fine, and the listeners after a refused one keep their place.
#[test]
fn listeners_on_node_addresses_leave_host_and_reserved_ports_alone() {
    use splitter_plan::plan::{
        PlanConfig, Transport,
        node_ports::{NodePorts, ReservedPorts},
    };
    let gateways = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: node, namespace: infra}
spec:
  gatewayClassName: splitter
  listeners:
  - {name: ssh, protocol: TCP, port: 22}
  - {name: nodeport, protocol: TCP, port: 30080}
  - {name: fine, protocol: TCP, port: 9100}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: vip, namespace: infra}
spec:
  gatewayClassName: splitter
  addresses: [{type: IPAddress, value: 192.0.2.77}]
  listeners:
  - {name: ssh, protocol: TCP, port: 22}
"#;
    let config = PlanConfig {
        node_ports: NodePorts {
            reserved: vec![ReservedPorts {
                first: 30000,
                last: 32767,
                what: "the NodePort range".into(),
            }],
            host: [((Transport::Tcp, 22), "sshd".to_string())].into(),
        },
        ..PlanConfig::default()
    };
    let index = index_of(&[&fixture("base.yaml"), gateways]);
    let plan = plan::build(&index, &config, None);
    let gw = |name: &str| {
        plan.gateways
            .iter()
            .find(|g| g.gateway.name == name)
            .expect("gateway status")
    };
    let accepted = |gw_name: &str, listener: &str| {
        let l = gw(gw_name)
            .listeners
            .iter()
            .find(|l| l.name == listener)
            .expect("listener status");
        condition(&l.conditions, "Accepted").clone()
    };
    let ssh = accepted("node", "ssh");
    assert!(!ssh.is_true());
    assert_eq!(ssh.reason, "PortUnavailable");
    assert!(ssh.message.contains("sshd"), "{}", ssh.message);
    let nodeport = accepted("node", "nodeport");
    assert_eq!(nodeport.reason, "PortUnavailable");
    assert!(nodeport.message.contains("NodePort range"));
    assert!(accepted("node", "fine").is_true());
    assert!(accepted("vip", "ssh").is_true());
    // `Programmed` says so too, with the same reason in its message.
    let programmed = gw("node")
        .listeners
        .iter()
        .find(|l| l.name == "ssh")
        .map(|l| condition(&l.conditions, "Programmed").clone())
        .expect("ssh");
    assert!(!programmed.is_true());
    assert_eq!(programmed.reason, "Invalid");
    assert!(
        programmed.message.starts_with("listener is not accepted: ")
            && programmed.message.contains("sshd"),
        "{}",
        programmed.message
    );
    let planned: Vec<(u16, bool)> = plan
        .listeners
        .iter()
        .filter(|l| [22, 30080, 9100].contains(&l.key().port))
        .map(|l| (l.key().port, l.key().addresses.is_empty()))
        .collect();
    assert_eq!(planned.len(), 2, "{planned:?}");
    assert!(planned.contains(&(22, false)) && planned.contains(&(9100, true)));
    // Without a node (as `splitter check` plans), nothing is refused.
    let plain = plan::build(&index, &PlanConfig::default(), None);
    assert!(plain.listeners.iter().any(|l| l.key().port == 30080));
}

#[test]
fn mirrors_resolve_like_backend_refs_and_an_unresolved_one_is_left_out_with_resolved_refs_false() {
    let plan = plan_with(&["mirror-cors-backend-filters.yaml"]);
    let table = listener(&plan, 80).l7().unwrap();
    let r = table
        .routes
        .iter()
        .find(|r| r.route.name == "mirrored")
        .unwrap();
    let mirrors: Vec<(&str, usize, u32, u32)> = r
        .mirrors
        .iter()
        .map(|m| {
            (
                m.name.as_str(),
                m.endpoints.len(),
                m.fraction.numerator,
                m.fraction.denominator,
            )
        })
        .collect();
    assert_eq!(
        mirrors,
        vec![("infra/b:8080", 2, 20, 100), ("infra/c:8080", 1, 25, 50)]
    );
    let c = &route(&plan, "infra", "mirrored").parents[0].conditions;
    assert!(condition(c, "Accepted").is_true());
    let refs = condition(c, "ResolvedRefs");
    assert_eq!(
        (refs.status, refs.reason.as_str()),
        (ConditionStatus::False, "RefNotPermitted"),
        "{refs:?}"
    );
    assert!(
        refs.message
            .contains("RequestMirror backendRef other/web:8080: no ReferenceGrant"),
        "{refs:?}"
    );
}

#[test]
fn backend_filters_reach_their_backend_only_and_other_kinds_drop_the_rule() {
    let plan = plan_with(&["mirror-cors-backend-filters.yaml"]);
    let table = listener(&plan, 80).l7().unwrap();
    let served: Vec<_> = table
        .routes
        .iter()
        .filter(|r| r.route.name == "backend-filters")
        .collect();
    assert_eq!(served.len(), 1, "only rule 0 is served");
    let (a, b) = (&served[0].backends[0], &served[0].backends[1]);
    assert!(matches!(
        a.filters.as_slice(),
        [
            Filter::RequestHeaderModifier(_),
            Filter::ResponseHeaderModifier(_)
        ]
    ));
    assert!(b.filters.is_empty());
    let c = &route(&plan, "infra", "backend-filters").parents[0].conditions;
    let p = condition(c, "PartiallyInvalid");
    assert!(
        p.is_true()
            && p.message.contains(
                "spec.rules[1].backendRefs[0].filters[0].type: RequestRedirect is not supported as a backendRef filter"
            ),
        "{p:?}"
    );
}

#[test]
fn a_cors_filter_is_planned_with_its_lists_joined() {
    let plan = plan_with(&["mirror-cors-backend-filters.yaml"]);
    let table = listener(&plan, 80).l7().unwrap();
    let r = table
        .routes
        .iter()
        .find(|r| r.route.name == "cors")
        .unwrap();
    let Some(Filter::Cors(c)) = r.filters.first() else {
        panic!("{:?}", r.filters)
    };
    assert_eq!(c.allow_origins.len(), 2);
    assert_eq!(
        c.allow_methods,
        plan::l7::Allowed::List(Some("GET, OPTIONS".into()))
    );
    assert_eq!(c.expose_headers.as_deref(), Some("x-header-3"));
    assert_eq!(c.max_age, 5, "the CRD default");
    assert!(c.allow_credentials);
    assert!(
        plan.problems().is_empty()
            || !plan
                .problems()
                .iter()
                .any(|p| p.to_string().contains("cors"))
    );
}

/// What the API server would refuse is refused with the object, the field and why.
#[test]
fn invalid_mirror_and_cors_fields_are_refused_precisely() {
    let route_with = |filter: &str| {
        let yaml = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: infra}}\nspec:\n  rules:\n  - filters: [{filter}]\n    backendRefs: [{{name: a, port: 8080}}]\n"
        );
        let doc: serde_json::Value = serde_saphyr::from_str(&yaml).unwrap();
        splitter_plan::model::parse::parse(doc)
            .err()
            .unwrap_or_else(|| panic!("accepted: {filter}"))
    };
    let cases = [
        (
            "{type: RequestMirror, requestMirror: {backendRef: {name: b, port: 8080}, percent: 10, fraction: {numerator: 1}}}",
            "spec.rules[0].filters[0].requestMirror",
            "only one of percent or fraction",
        ),
        (
            "{type: RequestMirror, requestMirror: {backendRef: {name: b, port: 8080}, fraction: {numerator: 3, denominator: 2}}}",
            "spec.rules[0].filters[0].requestMirror.fraction",
            "numerator 3 must be less than or equal to denominator 2",
        ),
        (
            "{type: RequestMirror, requestMirror: {backendRef: {name: b, port: 8080}, percent: 101}}",
            "spec.rules[0].filters[0].requestMirror.percent",
            "101 is not within 0..=100",
        ),
        (
            "{type: RequestMirror, requestMirror: {backendRef: {name: b}}}",
            "spec.rules[0].filters[0].requestMirror.backendRef.port",
            "must have port",
        ),
        (
            "{type: CORS, cors: {allowMethods: ['*', GET]}}",
            "spec.rules[0].filters[0].cors.allowMethods",
            "must be the only entry",
        ),
        (
            "{type: CORS, cors: {allowOrigins: ['www.foo.com']}}",
            "spec.rules[0].filters[0].cors.allowOrigins[0]",
            "scheme://host",
        ),
        (
            "{type: CORS, cors: {maxAge: 0}}",
            "spec.rules[0].filters[0].cors.maxAge",
            "less than 1",
        ),
    ];
    for (filter, field, why) in cases {
        let e = route_with(filter);
        assert_eq!(e.object, "HTTPRoute infra/r", "{filter}");
        assert_eq!(e.field, field, "{filter}: {e}");
        assert!(e.reason.contains(why), "{filter}: {e}");
    }
}

#[test]
fn a_mirror_of_another_kind_is_left_out_with_invalid_kind() {
    let plan = plan_with(&["mirror-cors-backend-filters.yaml"]);
    let c = &route(&plan, "infra", "mirrored-kind").parents[0].conditions;
    assert!(condition(c, "Accepted").is_true());
    let refs = condition(c, "ResolvedRefs");
    assert_eq!(
        (refs.status, refs.reason.as_str()),
        (ConditionStatus::False, "InvalidKind"),
        "{refs:?}"
    );
    let table = listener(&plan, 80).l7().unwrap();
    let r = table
        .routes
        .iter()
        .find(|r| r.route.name == "mirrored-kind")
        .unwrap();
    assert!(r.mirrors.is_empty());
    assert!(matches!(r.backends[0].target, BackendTarget::Endpoints(_)));
}

/// A catch-all rule with only a mirror, or only a backendRef filter, still needs the proxy: the
/// kernel path cannot copy requests or edit headers.
#[test]
fn mirrors_and_backend_filters_keep_a_catch_all_listener_on_l7() {
    for (what, rule) in [
        (
            "RequestMirror",
            "filters: [{type: RequestMirror, requestMirror: {backendRef: {name: b, port: 8080}}}]\n    backendRefs: [{name: a, port: 8080}]",
        ),
        (
            "has filters",
            "backendRefs: [{name: a, port: 8080, filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-team, value: blue}]}}]}]",
        ),
    ] {
        let route = format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: all, namespace: infra}}\nspec:\n  parentRefs: [{{name: gw}}]\n  rules:\n  - {rule}\n"
        );
        let plan = plan_of(&[&fixture("base.yaml"), &route]);
        let l = listener(&plan, 80);
        assert_eq!(l.mode(), Mode::L7, "{what}");
        assert!(l.reason().contains(what), "{what}: {}", l.reason());
    }
}

/// A build takes every L7 route that did not change from the live plan (the same `Arc`, which
/// the proxy does not compile again), wherever the change moved it in the table: here a new
/// route's exact path sorts first and shifts every other one place down. The same for route
/// statuses (the status writer skips a list it has seen).
#[test]
fn a_build_shares_every_unchanged_route_and_status_wherever_it_moved() {
    let config = PlanConfig::default();
    let base = fixture("base.yaml");
    let routes = fixture("precedence.yaml");
    let before = plan::build(&index_of(&[&base, &routes]), &config, None);
    let first = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: first, namespace: infra}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: Exact, value: /a/path/longer/than/any/other}}]
    backendRefs: [{name: a, port: 8080}]
"#;
    let after = plan::build(&index_of(&[&base, &routes, first]), &config, Some(&before));
    let table = |p: &Plan| match listener(p, 80) {
        ListenerPlan::L7 { l7, .. } => l7.clone(),
        ListenerPlan::L4 { .. } => panic!("port 80 is served by the proxy"),
    };
    let (old, new) = (table(&before), table(&after));
    assert_eq!(new.routes.len(), old.routes.len() + 1);
    assert_eq!(
        new.routes[0].route.name, "first",
        "the new route sorts first"
    );
    for (shifted, live) in new.routes[1..].iter().zip(&old.routes) {
        assert!(
            Arc::ptr_eq(shifted, live),
            "{} rule {} is a fresh copy",
            live.route,
            live.rule_index
        );
    }
    // So is the status of every route but the new one; with no route changed, the whole list.
    assert_eq!(after.routes.len(), before.routes.len() + 1);
    for live in before.routes.iter() {
        let kept = after.routes.iter().find(|s| s.route == live.route);
        assert!(
            kept.is_some_and(|k| Arc::ptr_eq(k, live)),
            "{} has a fresh status",
            live.route
        );
    }
    let again = plan::build(&index_of(&[&base, &routes, first]), &config, Some(&after));
    assert!(Arc::ptr_eq(&again.routes, &after.routes));
}
