//! Which conntrack entries of draining backends to reap, and which draining ids to free,
//! decided from one scan of conntrack without touching it.
//!
//! A flow to a draining backend whose entries carry `FLOW_CLOSING` (a FIN or RST went through)
//! and have done so for the grace is reaped in both directions; a draining backend that no
//! entry names any more is freed, so its id can be reused. Closed SNAT flows are reaped the same
//! way whatever their backend, which frees their port of the reserved range. Other flows to
//! active backends are left to the LRU, and so are flows that never close (idle clients, UDP):
//! those keep their backend's id (and SNAT port) until evicted, which is what keeps them working.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    time::{Duration, Instant},
};

use splitter_common::l4::{DIR_FORWARD, FLOW_CLOSING, FLOW_SNAT, FlowKey, FlowKey4, FlowValue};

use super::l4_delta::Step;

/// A conntrack entry's key, with the map it lives in: IPv4 flows in `CONNTRACK_V4`, IPv6 flows
/// in `CONNTRACK`. Both directions of a flow are in the same map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CtKey {
    V4(FlowKey4),
    V6(FlowKey),
}

impl CtKey {
    fn is_forward(&self) -> bool {
        match self {
            CtKey::V4(k) => k.dir == DIR_FORWARD,
            CtKey::V6(k) => k.dir == DIR_FORWARD,
        }
    }

    pub fn twin(&self, value: &FlowValue) -> CtKey {
        match self {
            CtKey::V4(k) => CtKey::V4(k.twin(value)),
            CtKey::V6(k) => CtKey::V6(k.twin(value)),
        }
    }
}

/// When each closing flow was first seen closing. Conntrack entries carry no clock (a timestamp
/// per packet would cost the established path), so a flow's closing age counts from the sweep
/// that first saw its flag.
#[derive(Debug, Default)]
pub struct ClosingAges {
    first_seen: BTreeMap<CtKey, Instant>,
}

impl ClosingAges {
    /// Records the flows closing `now`, forgets the ones no longer seen (evicted or gone), and
    /// returns those closing for at least `grace`.
    pub fn update(
        &mut self,
        closing: impl IntoIterator<Item = CtKey>,
        now: Instant,
        grace: Duration,
    ) -> Vec<CtKey> {
        let mut next = BTreeMap::new();
        for k in closing {
            let since = self.first_seen.get(&k).copied().unwrap_or(now);
            next.insert(k, since);
        }
        self.first_seen = next;
        self.first_seen
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) >= grace)
            .map(|(k, _)| *k)
            .collect()
    }

    pub fn clear(&mut self) {
        self.first_seen.clear();
    }
}

/// A flow to a draining backend, or a SNAT flow, keyed by its forward entry.
struct DrainingFlow {
    closing: bool,
    reply: CtKey,
    backend_id: u32,
}

/// One pass over conntrack, entry by entry.
pub(super) struct ConntrackScan<'d> {
    draining: &'d BTreeSet<u32>,
    /// Backend ids some entry names, draining or not.
    named: HashSet<u32>,
    flows: BTreeMap<CtKey, DrainingFlow>,
}

impl<'d> ConntrackScan<'d> {
    pub fn new(draining: &'d BTreeSet<u32>) -> Self {
        ConntrackScan {
            draining,
            named: HashSet::new(),
            flows: BTreeMap::new(),
        }
    }

    pub fn see(&mut self, key: CtKey, value: &FlowValue) {
        let draining = self.draining.contains(&value.backend_id);
        if !draining {
            self.named.insert(value.backend_id);
        }
        // A closed SNAT flow is reaped whatever its backend: its entries hold a port of the
        // reserved range, which new flows to that backend cannot use until they are gone.
        if !draining && value.flags & FLOW_SNAT == 0 {
            return;
        }
        let (forward, reply) = if key.is_forward() {
            (key, key.twin(value))
        } else {
            (key.twin(value), key)
        };
        let flow = self.flows.entry(forward).or_insert(DrainingFlow {
            closing: false,
            reply,
            backend_id: value.backend_id,
        });
        flow.closing |= value.flags & FLOW_CLOSING != 0;
    }

    /// The reaps, then the frees: an id is freed only once no entry left names it.
    pub fn finish(
        mut self,
        ages: &mut ClosingAges,
        now: Instant,
        grace: Duration,
    ) -> Vec<Step<'static>> {
        let closing = self
            .flows
            .iter()
            .filter(|(_, f)| f.closing)
            .map(|(k, _)| *k);
        let due: BTreeSet<CtKey> = ages.update(closing, now, grace).into_iter().collect();
        let mut steps = Vec::new();
        for (forward, flow) in &self.flows {
            if due.contains(forward) {
                steps.push(Step::ReapFlow {
                    forward: *forward,
                    reply: flow.reply,
                });
            } else {
                self.named.insert(flow.backend_id);
            }
        }
        for id in self.draining {
            if !self.named.contains(id) {
                steps.push(Step::FreeBackend { id: *id });
            }
        }
        steps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use splitter_common::l4::DIR_REPLY;

    fn key(port: u16) -> CtKey {
        CtKey::V6(FlowKey {
            src_port: port,
            ..FlowKey::default()
        })
    }

    #[test]
    fn closing_flows_are_due_only_after_the_grace_and_forgotten_when_gone() {
        let grace = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut ages = ClosingAges::default();
        assert!(ages.update([key(1)], t0, grace).is_empty());
        // Seen again later: the age counts from the first sighting.
        let t1 = t0 + Duration::from_secs(30);
        assert!(ages.update([key(1), key(2)], t1, grace).is_empty());
        let t2 = t0 + Duration::from_secs(60);
        assert_eq!(ages.update([key(1), key(2)], t2, grace), vec![key(1)]);
        // key(1) vanished (evicted) and comes back: a new first sighting.
        let t3 = t0 + Duration::from_secs(90);
        assert_eq!(ages.update([key(2)], t3, grace), vec![key(2)]);
        assert!(ages.update([key(1)], t3, grace).is_empty());
    }

    /// Both entries of an IPv4 flow from `client_port` to backend `backend_id`.
    fn flow(client_port: u16, backend_id: u32, flags: u8) -> [(CtKey, FlowValue); 2] {
        let forward = FlowKey4 {
            src: [192, 0, 2, 1],
            dst: [10, 0, 0, 1],
            src_port: client_port,
            dst_port: 80,
            proto: 6,
            dir: DIR_FORWARD,
            _pad: [0; 2],
        };
        let to_backend = FlowValue {
            addr: std::net::Ipv4Addr::new(10, 1, 0, backend_id as u8)
                .to_ipv6_mapped()
                .octets(),
            port: 8080,
            backend_id,
            flags,
            ..FlowValue::default()
        };
        let reply = forward.twin(&to_backend);
        let to_vip = FlowValue {
            addr: std::net::Ipv4Addr::new(10, 0, 0, 1)
                .to_ipv6_mapped()
                .octets(),
            port: 80,
            ..to_backend
        };
        assert_eq!(reply.dir, DIR_REPLY);
        [(CtKey::V4(forward), to_backend), (CtKey::V4(reply), to_vip)]
    }

    fn scan(
        draining: &BTreeSet<u32>,
        entries: impl IntoIterator<Item = (CtKey, FlowValue)>,
        ages: &mut ClosingAges,
        now: Instant,
    ) -> Vec<Step<'static>> {
        let mut scan = ConntrackScan::new(draining);
        for (k, v) in entries {
            scan.see(k, &v);
        }
        scan.finish(ages, now, Duration::from_secs(10))
    }

    #[test]
    fn a_draining_id_is_freed_only_once_no_entry_names_it() {
        let draining = BTreeSet::from([1, 2, 3]);
        let t0 = Instant::now();
        let mut ages = ClosingAges::default();
        // 1: one closing flow. 2: one open flow. 3: nothing. 4 is active and named.
        let [c1, c1r] = flow(1000, 1, FLOW_CLOSING);
        let [o2, o2r] = flow(2000, 2, 0);
        let [a4, a4r] = flow(4000, 4, FLOW_CLOSING);
        let entries = [c1r, c1, o2, o2r, a4, a4r];
        assert_eq!(
            scan(&draining, entries, &mut ages, t0),
            vec![Step::FreeBackend { id: 3 }],
            "the closing flow is within its grace"
        );
        let later = t0 + Duration::from_secs(10);
        assert_eq!(
            scan(&draining, entries, &mut ages, later),
            vec![
                Step::ReapFlow {
                    forward: c1.0,
                    reply: c1r.0
                },
                Step::FreeBackend { id: 1 },
                Step::FreeBackend { id: 3 },
            ],
            "both directions reaped from either entry, then 1 freed; 2 still named"
        );
    }

    #[test]
    fn a_flow_closing_in_one_direction_only_is_closing() {
        let draining = BTreeSet::from([1]);
        let [fwd, mut rev] = flow(1000, 1, 0);
        rev.1.flags = FLOW_CLOSING;
        let mut ages = ClosingAges::default();
        let t0 = Instant::now();
        let steps = scan(&draining, [fwd, rev], &mut ages, t0);
        assert_eq!(steps, vec![]);
        let steps = scan(
            &draining,
            [fwd, rev],
            &mut ages,
            t0 + Duration::from_secs(10),
        );
        assert_eq!(steps.len(), 2, "{steps:?}");
    }
}
