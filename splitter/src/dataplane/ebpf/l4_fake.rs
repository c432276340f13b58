//! An in-memory [`L4Maps`] for tests: it keeps a log of every write it accepted, and fails the
//! writes to one map from a chosen one on, as a full or broken map would. Beside it, what tests
//! read from it: the tables packets would be split by, and a replay of the log that checks every
//! write against the ordering rules.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
};

use aya::{maps::MapError, sys::SyscallError};
use splitter_common::l4::{
    BACKEND_ACTIVE, BACKENDS, Backend, CONNTRACK, CONNTRACK_V4, DIR_FORWARD, FlowKey4, FlowValue,
    L4_CONFIG, L4Config, MAX_BACKENDS, MAX_ROUTES, REJECT, ROUTES, RouteMeta, TABLES, VIPS, VipKey,
    VipValue,
};

use super::{
    l4_actuator::{L4ApplyError, L4Proto, addr16},
    l4_maps::L4Maps,
    l4_sweep::CtKey,
};

/// One accepted write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Backend {
        id: u32,
        state: u8,
    },
    TableSlot {
        route_id: u32,
        half: u32,
        slot: u32,
        backend_id: u32,
    },
    RouteMeta {
        route_id: u32,
        meta: RouteMeta,
    },
    Vip {
        key: VipKey,
        route_id: u32,
    },
    VipRemoved(VipKey),
    FlowRemoved(CtKey),
    Config(L4Config),
}

/// Writes to `map` fail from its `nth` write (counted from when the fault was set, 1-based)
/// until healed.
#[derive(Clone, Debug)]
struct Fault {
    map: &'static str,
    nth: usize,
    seen: usize,
}

#[derive(Clone, Debug, Default)]
pub struct FakeL4Maps {
    pub vips: BTreeMap<VipKey, VipValue>,
    pub routes: BTreeMap<u32, RouteMeta>,
    /// By (route id, half, slot); a slot never written reads as backend 0, like the kernel's.
    pub tables: HashMap<(u32, u32, u32), u32>,
    pub backends: BTreeMap<u32, Backend>,
    pub flows: BTreeMap<CtKey, FlowValue>,
    pub config: L4Config,
    pub log: Vec<Op>,
    fault: Option<Fault>,
}

impl FakeL4Maps {
    pub fn fail_writes(&mut self, map: &'static str, nth: usize) {
        self.fault = Some(Fault { map, nth, seen: 0 });
    }

    pub fn heal(&mut self) {
        self.fault = None;
    }

    pub fn route(&self, route_id: u32) -> RouteMeta {
        self.routes.get(&route_id).copied().unwrap_or_default()
    }

    pub fn backend(&self, id: u32) -> Backend {
        self.backends.get(&id).copied().unwrap_or_default()
    }

    /// The backend ids in the live half of `route_id`'s table.
    pub fn live_table(&self, route_id: u32) -> Vec<u32> {
        let meta = self.route(route_id);
        (0..meta.table_size)
            .map(|slot| self.slot(route_id, meta.active, slot))
            .collect()
    }

    pub fn slot(&self, route_id: u32, half: u32, slot: u32) -> u32 {
        self.tables
            .get(&(route_id, half, slot))
            .copied()
            .unwrap_or(0)
    }

    /// Counts a write to `map`; an error if the fault covers it.
    fn write(&mut self, map: &'static str, op: Op) -> Result<(), L4ApplyError> {
        if let Some(f) = self.fault.as_mut().filter(|f| f.map == map) {
            f.seen += 1;
            if f.seen >= f.nth {
                return Err(L4ApplyError::Map {
                    name: map,
                    source: MapError::SyscallError(SyscallError {
                        call: "bpf_map_update_elem",
                        io_error: std::io::ErrorKind::OutOfMemory.into(),
                    }),
                });
            }
        }
        self.log.push(op);
        Ok(())
    }
}

impl L4Maps for FakeL4Maps {
    fn read_backends(&self) -> Result<Vec<(u32, Backend)>, L4ApplyError> {
        Ok((0..MAX_BACKENDS).map(|id| (id, self.backend(id))).collect())
    }

    fn read_vips(&self) -> Result<Vec<(VipKey, VipValue)>, L4ApplyError> {
        Ok(self.vips.iter().map(|(k, v)| (*k, *v)).collect())
    }

    fn read_route_metas(&self) -> Result<Vec<(u32, RouteMeta)>, L4ApplyError> {
        Ok((0..MAX_ROUTES).map(|id| (id, self.route(id))).collect())
    }

    fn write_backend(&mut self, id: u32, backend: Backend) -> Result<(), L4ApplyError> {
        let state = backend.state;
        self.write(BACKENDS, Op::Backend { id, state })?;
        self.backends.insert(id, backend);
        Ok(())
    }

    fn write_table_slot(
        &mut self,
        route_id: u32,
        half: u32,
        slot: u32,
        backend_id: u32,
    ) -> Result<(), L4ApplyError> {
        let op = Op::TableSlot {
            route_id,
            half,
            slot,
            backend_id,
        };
        self.write(TABLES, op)?;
        self.tables.insert((route_id, half, slot), backend_id);
        Ok(())
    }

    fn write_route_meta(&mut self, route_id: u32, meta: RouteMeta) -> Result<(), L4ApplyError> {
        self.write(ROUTES, Op::RouteMeta { route_id, meta })?;
        self.routes.insert(route_id, meta);
        Ok(())
    }

    fn write_vip(&mut self, key: VipKey, value: VipValue) -> Result<(), L4ApplyError> {
        let route_id = value.route_id;
        self.write(VIPS, Op::Vip { key, route_id })?;
        self.vips.insert(key, value);
        Ok(())
    }

    fn write_config(&mut self, config: L4Config) -> Result<(), L4ApplyError> {
        self.write(L4_CONFIG, Op::Config(config))?;
        self.config = config;
        Ok(())
    }

    fn remove_vip(&mut self, key: &VipKey) -> Result<(), L4ApplyError> {
        self.write(VIPS, Op::VipRemoved(*key))?;
        self.vips.remove(key);
        Ok(())
    }

    fn for_each_flow(&self, f: &mut dyn FnMut(CtKey, FlowValue)) -> Result<(), L4ApplyError> {
        for (k, v) in &self.flows {
            f(*k, *v);
        }
        Ok(())
    }

    fn remove_flow(&mut self, key: &CtKey) -> Result<(), L4ApplyError> {
        let map = match key {
            CtKey::V4(_) => CONNTRACK_V4,
            CtKey::V6(_) => CONNTRACK,
        };
        self.write(map, Op::FlowRemoved(*key))?;
        self.flows.remove(key);
        Ok(())
    }
}

/// A route's live table as addresses (`None`: not programmed). Panics if a live slot names a
/// backend that is not ACTIVE.
pub fn live(m: &FakeL4Maps, route_id: u32) -> Option<Vec<Option<SocketAddr>>> {
    let table = m.live_table(route_id).into_iter().map(|id| {
        if id == REJECT {
            return None;
        }
        let b = m.backend(id);
        assert_eq!(b.state, BACKEND_ACTIVE, "live slot names backend {id}");
        Some(SocketAddr::new(IpAddr::from(b.addr).to_canonical(), b.port))
    });
    (m.route(route_id).table_size > 0).then(|| table.collect())
}

/// Per VIP, the table a new connection to it is split by.
pub type Visible = BTreeMap<VipKey, Option<Vec<Option<SocketAddr>>>>;

pub fn visible(m: &FakeL4Maps) -> Visible {
    m.vips
        .iter()
        .map(|(k, v)| (*k, live(m, v.route_id)))
        .collect()
}

/// Replays `log` (written from empty maps) and checks every write against the ordering rules:
/// a table slot is written only into a half no packet reads and names only ACTIVE backends; a
/// flip makes live a half that names only ACTIVE backends; a VIP points only at a live route; a
/// route is unprogrammed only once no VIP points at it; a backend stops being ACTIVE only once
/// no live half names it.
pub fn assert_safe_order(log: &[Op]) {
    let mut m = FakeL4Maps::default();
    let live_names =
        |m: &FakeL4Maps, id: u32| (0..MAX_ROUTES).any(|r| m.live_table(r).contains(&id));
    let only_active = |m: &FakeL4Maps, ids: &[u32]| {
        ids.iter()
            .all(|id| *id == REJECT || m.backend(*id).state == BACKEND_ACTIVE)
    };
    for (i, op) in log.iter().enumerate() {
        match *op {
            Op::TableSlot {
                route_id,
                half,
                slot,
                backend_id,
            } => {
                let meta = m.route(route_id);
                assert!(
                    meta.table_size == 0 || meta.active != half,
                    "op {i}: {op:?} writes the live half"
                );
                assert!(
                    only_active(&m, &[backend_id]),
                    "op {i}: {op:?} names a backend that is not active"
                );
                m.write_table_slot(route_id, half, slot, backend_id)
                    .expect("replay");
            }
            Op::RouteMeta { route_id, meta } => {
                if meta.table_size == 0 {
                    assert!(
                        m.vips.values().all(|v| v.route_id != route_id),
                        "op {i}: {op:?} unprograms a route a VIP points at"
                    );
                }
                m.write_route_meta(route_id, meta).expect("replay");
                assert!(
                    only_active(&m, &m.live_table(route_id)),
                    "op {i}: {op:?} makes live a half naming inactive backends"
                );
            }
            Op::Vip { key, route_id } => {
                assert!(
                    m.route(route_id).table_size > 0,
                    "op {i}: {op:?} points at an unprogrammed route"
                );
                let value = VipValue { route_id, flags: 0 };
                m.write_vip(key, value).expect("replay");
            }
            Op::VipRemoved(key) => m.remove_vip(&key).expect("replay"),
            Op::Config(config) => m.write_config(config).expect("replay"),
            Op::Backend { id, state } => {
                assert!(
                    state == BACKEND_ACTIVE || !live_names(&m, id),
                    "op {i}: {op:?} while a live table names it"
                );
                let b = Backend {
                    state,
                    ..Backend::default()
                };
                m.write_backend(id, b).expect("replay");
            }
            Op::FlowRemoved(_) => {}
        }
    }
}

/// Adds both conntrack entries of an IPv4 flow from `client` through `vip` to backend
/// `backend_id` at `backend`, as the kernel would; returns their keys, forward first.
pub fn add_flow(
    m: &mut FakeL4Maps,
    (client, vip): (&str, &str),
    (backend, backend_id): (&str, u32),
    flags: u8,
) -> [CtKey; 2] {
    let sa = |s: &str| -> SocketAddr { s.parse().expect("socket address") };
    let (client, vip, backend) = (sa(client), sa(vip), sa(backend));
    let v4 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => ip.octets(),
        IpAddr::V6(_) => panic!("an IPv4 flow"),
    };
    let forward = FlowKey4 {
        src: v4(client),
        dst: v4(vip),
        src_port: client.port(),
        dst_port: vip.port(),
        proto: L4Proto::Tcp.number(),
        dir: DIR_FORWARD,
        _pad: [0; 2],
    };
    let to_backend = FlowValue {
        addr: addr16(backend.ip()),
        port: backend.port(),
        backend_id,
        flags,
        ..FlowValue::default()
    };
    let to_vip = FlowValue {
        addr: addr16(vip.ip()),
        port: vip.port(),
        ..to_backend
    };
    let keys = [CtKey::V4(forward), CtKey::V4(forward.twin(&to_backend))];
    m.flows.insert(keys[0], to_backend);
    m.flows.insert(keys[1], to_vip);
    keys
}
