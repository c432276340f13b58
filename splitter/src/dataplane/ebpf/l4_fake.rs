//! An in-memory [`L4Maps`] for tests: it keeps a log of every write it accepted, and fails the
//! writes to one map from a chosen one on, as a full or broken map would.

use std::collections::{BTreeMap, HashMap};

use aya::{maps::MapError, sys::SyscallError};
use splitter_common::l4::{
    BACKENDS, Backend, CONNTRACK, CONNTRACK_V4, FlowValue, MAX_BACKENDS, MAX_ROUTES, ROUTES,
    RouteMeta, TABLES, VIPS, VipKey, VipValue,
};

use super::{l4_actuator::L4ApplyError, l4_maps::L4Maps, l4_sweep::CtKey};

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
