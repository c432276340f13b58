//! What one node made of the plan, and the Gateway statuses that follow from it.
//!
//! The plan says what should be served; whether this node serves it (a listener bound, the
//! kernel maps programmed) is only known after applying it. The agent gathers that into a
//! [`NodeReport`]; [`gateway_statuses`] turns plan + report into the Gateway statuses to write,
//! so `Programmed` says what the node did, not what it was asked. Pure, as the rest of `plan`.

use std::{net::IpAddr, sync::Arc};

use serde::Serialize;

use super::{
    ListenerKey, Plan,
    status::{Condition, GatewayStatus, reason},
};

/// What one node serves of a plan.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NodeReport {
    /// The node's name, as conditions name it.
    pub node: String,
    /// The node's addresses: `status.addresses` of Gateways without `spec.addresses` (when no
    /// `--status-address` is given).
    pub addresses: Vec<IpAddr>,
    /// Data plane listeners of the plan this node does not serve, with why.
    pub unserved: Vec<Unserved>,
}

/// A node's report with the plan it is about: the status writer only uses a report with the
/// plan it writes, so a listener is never written `Programmed=True` before the node applied it.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeView {
    pub plan: Arc<Plan>,
    pub report: NodeReport,
}

/// A data plane listener the node does not serve.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Unserved {
    pub listener: ListenerKey,
    /// E.g. "cannot listen on 10.0.0.1:80: Address in use (os error 98)".
    pub why: String,
}

impl NodeReport {
    /// Why the node does not serve `key`, when it does not.
    pub fn why(&self, key: &ListenerKey) -> Option<&str> {
        self.unserved
            .iter()
            .find(|u| &u.listener == key)
            .map(|u| u.why.as_str())
    }
}

/// The plan's Gateway statuses with `Programmed` as `report`'s node applied them: a listener the
/// node does not serve is `Programmed=False` (`Pending`: the agent retries), naming the node and
/// the error; a Gateway with such a listener is `Programmed=False` (`Pending`) too, naming the
/// listeners. Conditions already false (a listener not accepted) keep their reason.
pub fn gateway_statuses(plan: &Plan, report: &NodeReport) -> Vec<GatewayStatus> {
    let mut out = plan.gateways.clone();
    for g in &mut out {
        let mut failed: Vec<String> = Vec::new();
        for l in &mut g.listeners {
            let why: Vec<&str> = plan
                .listeners
                .iter()
                .filter(|p| {
                    p.sources()
                        .iter()
                        .any(|s| s.gateway == g.gateway && s.listener == l.name)
                })
                .filter_map(|p| report.why(p.key()))
                .collect();
            if why.is_empty() {
                continue;
            }
            let Some(c) = l
                .conditions
                .iter_mut()
                .find(|c| c.type_ == reason::PROGRAMMED && c.is_true())
            else {
                continue;
            };
            let why = why.join("; ");
            *c = Condition::new(
                reason::PROGRAMMED,
                false,
                reason::PENDING,
                format!("not programmed on node {}: {why}", report.node),
                c.observed_generation,
            );
            failed.push(format!("{} ({why})", l.name));
        }
        if failed.is_empty() {
            continue;
        }
        if let Some(c) = g
            .conditions
            .iter_mut()
            .find(|c| c.type_ == reason::PROGRAMMED && c.is_true())
        {
            *c = Condition::new(
                reason::PROGRAMMED,
                false,
                reason::PENDING,
                format!(
                    "{} of {} listeners not programmed on node {}: {}",
                    failed.len(),
                    g.listeners.len(),
                    report.node,
                    failed.join("; ")
                ),
                c.observed_generation,
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        model::{Kind, ObjectKey, RouteGroupKind},
        plan::{
            DataplaneListener, ListenerPlan, ListenerSource, Transport,
            status::{ConditionStatus, ListenerStatus},
        },
    };

    fn listener(name: &str, programmed: bool) -> ListenerStatus {
        ListenerStatus {
            name: name.into(),
            supported_kinds: vec![RouteGroupKind {
                group: "gateway.networking.k8s.io".into(),
                kind: "HTTPRoute".into(),
            }],
            attached_routes: 1,
            conditions: vec![
                Condition::new(reason::ACCEPTED, programmed, reason::ACCEPTED, "", 3),
                if programmed {
                    Condition::new(reason::PROGRAMMED, true, reason::PROGRAMMED, "", 3)
                } else {
                    Condition::new(
                        reason::PROGRAMMED,
                        false,
                        reason::INVALID,
                        "listener is not accepted",
                        3,
                    )
                },
            ],
        }
    }

    fn key(port: u16) -> ListenerKey {
        ListenerKey {
            port,
            transport: Transport::Tcp,
            addresses: vec![],
        }
    }

    fn dataplane(gw: &ObjectKey, name: &str, port: u16) -> ListenerPlan {
        ListenerPlan::L7 {
            listener: DataplaneListener {
                key: key(port),
                sources: vec![ListenerSource {
                    gateway: gw.clone(),
                    listener: name.into(),
                    protocol: "HTTP".into(),
                    hostname: None,
                }],
                reason: String::new(),
            },
            l7: Default::default(),
        }
    }

    /// Gateway `gw` with listeners a (:80), b (:81) and c (not accepted, not in the data plane).
    fn plan() -> (ObjectKey, Plan) {
        let gw = ObjectKey::new(Kind::Gateway, "default", "gw");
        let plan = Plan {
            gateways: vec![GatewayStatus {
                gateway: gw.clone(),
                addresses: vec![],
                conditions: vec![
                    Condition::new(reason::ACCEPTED, true, reason::LISTENERS_NOT_VALID, "", 3),
                    Condition::new(reason::PROGRAMMED, true, reason::PROGRAMMED, "", 3),
                ],
                listeners: vec![
                    listener("a", true),
                    listener("b", true),
                    listener("c", false),
                ],
            }],
            listeners: vec![dataplane(&gw, "a", 80), dataplane(&gw, "b", 81)],
            ..Plan::default()
        };
        (gw, plan)
    }

    fn programmed(conditions: &[Condition]) -> &Condition {
        conditions
            .iter()
            .find(|c| c.type_ == reason::PROGRAMMED)
            .expect("Programmed")
    }

    #[test]
    fn a_node_that_serves_everything_changes_nothing() {
        let (_, plan) = plan();
        let report = NodeReport {
            node: "n1".into(),
            ..NodeReport::default()
        };
        assert_eq!(gateway_statuses(&plan, &report), plan.gateways);
    }

    #[test]
    fn a_listener_the_node_does_not_serve_is_not_programmed_and_neither_is_its_gateway() {
        let (_, plan) = plan();
        let report = NodeReport {
            node: "n1".into(),
            addresses: vec![],
            unserved: vec![Unserved {
                listener: key(81),
                why: "cannot listen on 0.0.0.0:81: Address in use (os error 98)".into(),
            }],
        };
        let got = gateway_statuses(&plan, &report);
        let g = &got[0];
        assert!(
            programmed(&g.listeners[0].conditions).is_true(),
            "a is served"
        );
        let b = programmed(&g.listeners[1].conditions);
        assert_eq!(b.status, ConditionStatus::False);
        assert_eq!(b.reason, reason::PENDING);
        assert_eq!(
            b.message,
            "not programmed on node n1: cannot listen on 0.0.0.0:81: Address in use (os error 98)"
        );
        assert_eq!(b.observed_generation, 3);
        // A listener already not programmed keeps its own reason.
        assert_eq!(
            programmed(&g.listeners[2].conditions),
            programmed(&plan.gateways[0].listeners[2].conditions)
        );
        let gp = programmed(&g.conditions);
        assert_eq!(gp.status, ConditionStatus::False);
        assert_eq!(gp.reason, reason::PENDING);
        assert!(
            gp.message
                .starts_with("1 of 3 listeners not programmed on node n1: b (cannot"),
            "{}",
            gp.message
        );
        // Everything else is the plan's.
        assert_eq!(g.listeners[0], plan.gateways[0].listeners[0]);
        assert_eq!(g.conditions[0], plan.gateways[0].conditions[0]);
    }

    #[test]
    fn the_report_of_another_listener_key_does_not_apply() {
        let (_, plan) = plan();
        let report = NodeReport {
            node: "n1".into(),
            addresses: vec![],
            unserved: vec![Unserved {
                listener: ListenerKey {
                    transport: Transport::Udp,
                    ..key(81)
                },
                why: "kernel half off".into(),
            }],
        };
        assert_eq!(gateway_statuses(&plan, &report), plan.gateways);
    }
}
