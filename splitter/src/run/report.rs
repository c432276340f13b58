//! This node's report on the plan: which of its listeners the node serves, from what the L7
//! agent bound and what the kernel half programmed. Pure; the status writer, `/debug/status`
//! and the tests below read it. Which Gateway listener that makes `Programmed=False` is
//! [`splitter_plan::plan::applied`]'s business.

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use splitter_plan::plan::{
    ListenerPlan, Plan,
    applied::{NodeReport, Unserved},
};

use crate::health::KernelState;

/// What `node` serves of `plan`: the outcome of each L7 bind address (`binds`, as the L7 agent
/// recorded its last apply), and the kernel half's state (`None`: this agent runs none).
pub fn node_report(
    plan: &Plan,
    binds: &BTreeMap<SocketAddr, Result<(), String>>,
    kernel: Option<&KernelState>,
    node: &str,
    addresses: Vec<IpAddr>,
) -> NodeReport {
    let mut unserved = Vec::new();
    for l in &plan.listeners {
        let mut why: Vec<String> = Vec::new();
        match l {
            ListenerPlan::L7 { listener, .. } => {
                for addr in listener.bind() {
                    match binds.get(&addr) {
                        Some(Ok(())) => {}
                        Some(Err(e)) => why.push(e.clone()),
                        None => why.push(format!("{addr}: not applied yet")),
                    }
                }
            }
            ListenerPlan::L4 { listener, .. } => match kernel {
                None => why.push(
                    "no interface to attach the kernel programs to (no --iface and no default \
                     route): L4 listeners are not served"
                        .into(),
                ),
                Some(k) if !k.serving => why.push(format!(
                    "L4 half off on {}: {}",
                    k.ifaces.join(","),
                    k.reason.as_deref().unwrap_or("not attached yet")
                )),
                Some(k) => {
                    if let Some(r) = &k.reason {
                        why.push(format!("kernel maps: {r}"));
                    }
                    let key = super::l4::program_key(listener);
                    for (route, off) in &k.routes_off {
                        let ours = route == &key
                            || route
                                .strip_prefix(key.as_str())
                                .is_some_and(|rest| rest.starts_with('/'));
                        if ours {
                            why.push(format!("left out of the kernel: {off}"));
                        }
                    }
                }
            },
        }
        if !why.is_empty() {
            unserved.push(Unserved {
                listener: l.key().clone(),
                why: why.join("; "),
            });
        }
    }
    NodeReport {
        node: node.to_string(),
        addresses,
        unserved,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use splitter_plan::plan::{DataplaneListener, ListenerKey, Transport};

    fn plan() -> Plan {
        let listener = |port: u16, transport, addresses: Vec<IpAddr>| DataplaneListener {
            key: ListenerKey {
                port,
                transport,
                addresses,
            },
            sources: vec![],
            reason: String::new(),
        };
        let index = splitter_plan::model::Index::new();
        let empty = splitter_plan::plan::build(&index, &Default::default(), None);
        let l4 = || splitter_plan::plan::L4Plan {
            route: None,
            backends: vec![],
            table: splitter_plan::plan::maglev::WeightedTable {
                m: 0,
                backends: vec![],
                slots: vec![],
                disruption: None,
            },
            table_v6: None,
            endpoint_nodes: Default::default(),
        };
        Plan {
            listeners: vec![
                ListenerPlan::L7 {
                    listener: listener(80, Transport::Tcp, vec!["10.0.0.1".parse().unwrap()]),
                    l7: Default::default(),
                },
                ListenerPlan::L4 {
                    listener: listener(9000, Transport::Tcp, vec![]),
                    l4: l4(),
                },
                ListenerPlan::L4 {
                    listener: listener(9001, Transport::Udp, vec![]),
                    l4: l4(),
                },
            ],
            ..empty
        }
    }

    fn bound(ok: bool) -> BTreeMap<SocketAddr, Result<(), String>> {
        let r = if ok {
            Ok(())
        } else {
            Err("cannot listen on 10.0.0.1:80: Address in use (os error 98)".into())
        };
        BTreeMap::from([("10.0.0.1:80".parse().unwrap(), r)])
    }

    fn serving() -> KernelState {
        KernelState {
            ifaces: vec!["eth0".into()],
            serving: true,
            reason: None,
            routes_off: BTreeMap::new(),
        }
    }

    fn unserved(r: &NodeReport) -> Vec<(u16, &str)> {
        r.unserved
            .iter()
            .map(|u| (u.listener.port, u.why.as_str()))
            .collect()
    }

    #[test]
    fn a_node_serving_everything_reports_nothing_unserved() {
        let r = node_report(&plan(), &bound(true), Some(&serving()), "n1", vec![]);
        assert_eq!(r.node, "n1");
        assert!(r.unserved.is_empty(), "{r:?}");
    }

    #[test]
    fn a_bind_error_is_reported_on_its_listener() {
        let r = node_report(&plan(), &bound(false), Some(&serving()), "n1", vec![]);
        assert_eq!(
            unserved(&r),
            [(
                80,
                "cannot listen on 10.0.0.1:80: Address in use (os error 98)"
            )]
        );
        let r = node_report(&plan(), &BTreeMap::new(), Some(&serving()), "n1", vec![]);
        assert_eq!(unserved(&r), [(80, "10.0.0.1:80: not applied yet")]);
    }

    #[test]
    fn a_kernel_half_off_or_absent_leaves_every_l4_listener_unserved() {
        let off = KernelState {
            serving: false,
            reason: Some("interface eth9 does not exist".into()),
            ..serving()
        };
        let r = node_report(&plan(), &bound(true), Some(&off), "n1", vec![]);
        assert_eq!(
            unserved(&r),
            [
                (9000, "L4 half off on eth0: interface eth9 does not exist"),
                (9001, "L4 half off on eth0: interface eth9 does not exist")
            ]
        );
        let r = node_report(&plan(), &bound(true), None, "n1", vec![]);
        assert_eq!(r.unserved.len(), 2);
        assert!(r.unserved[0].why.contains("no interface"), "{r:?}");
    }

    #[test]
    fn a_route_left_out_of_the_kernel_is_reported_on_its_listener_only() {
        let k = KernelState {
            routes_off: BTreeMap::from([(
                "9001/udp//ipv6".to_string(),
                "over the route limit (64)".to_string(),
            )]),
            ..serving()
        };
        let r = node_report(&plan(), &bound(true), Some(&k), "n1", vec![]);
        assert_eq!(
            unserved(&r),
            [(9001, "left out of the kernel: over the route limit (64)")]
        );
        let failed = KernelState {
            reason: Some("last apply failed: map full".into()),
            ..serving()
        };
        let r = node_report(&plan(), &bound(true), Some(&failed), "n1", vec![]);
        assert_eq!(
            unserved(&r),
            [
                (9000, "kernel maps: last apply failed: map full"),
                (9001, "kernel maps: last apply failed: map full")
            ]
        );
    }
}
