//! The L4 maps as the actuator writes them: a trait, so reconciliation runs against an
//! in-memory fake in tests, and its implementation over a loaded object's maps, the only code
//! that writes them.

use aya::maps::{Array, HashMap, MapData, MapError};
use splitter_common::l4::{
    BACKENDS, Backend, CONNTRACK, CONNTRACK_V4, FlowKey, FlowKey4, FlowValue, HALF_OPEN,
    HALF_OPEN_V4, L4_CONFIG, L4Config, MAX_BACKENDS, MAX_ROUTES, ROUTES, RouteMeta, TABLES, VIPS,
    VipKey, VipValue, table_index,
};

use super::{KernelObject, l4_actuator::L4ApplyError, l4_sweep::CtKey};

/// Reads and writes of the L4 maps, one map operation each. A write that returns an error left
/// the element as it was.
pub trait L4Maps {
    /// Every backend slot, by id.
    fn read_backends(&self) -> Result<Vec<(u32, Backend)>, L4ApplyError>;
    fn read_vips(&self) -> Result<Vec<(VipKey, VipValue)>, L4ApplyError>;
    /// Every route meta, by route id.
    fn read_route_metas(&self) -> Result<Vec<(u32, RouteMeta)>, L4ApplyError>;
    fn write_backend(&mut self, id: u32, backend: Backend) -> Result<(), L4ApplyError>;
    fn write_table_slot(
        &mut self,
        route_id: u32,
        half: u32,
        slot: u32,
        backend_id: u32,
    ) -> Result<(), L4ApplyError>;
    fn write_route_meta(&mut self, route_id: u32, meta: RouteMeta) -> Result<(), L4ApplyError>;
    fn write_vip(&mut self, key: VipKey, value: VipValue) -> Result<(), L4ApplyError>;
    /// The SNAT addresses and port range: one write of the one-entry array.
    fn write_config(&mut self, config: L4Config) -> Result<(), L4ApplyError>;
    /// Removing a VIP that is not there succeeds.
    fn remove_vip(&mut self, key: &VipKey) -> Result<(), L4ApplyError>;
    /// Calls `f` for every conntrack entry, both maps, and every half-open one (a flow in its
    /// handshake names its backend too, whose id must not be freed under it).
    fn for_each_flow(&self, f: &mut dyn FnMut(CtKey, FlowValue)) -> Result<(), L4ApplyError>;
    /// Removing a flow that is not there succeeds: the LRU may have evicted it since the scan.
    fn remove_flow(&mut self, key: &CtKey) -> Result<(), L4ApplyError>;
}

/// The L4 maps of a loaded object (pinned or not).
pub struct KernelL4Maps {
    vips: HashMap<MapData, VipKey, VipValue>,
    routes: Array<MapData, RouteMeta>,
    tables: Array<MapData, u32>,
    backends: Array<MapData, Backend>,
    conntrack: HashMap<MapData, FlowKey, FlowValue>,
    conntrack_v4: HashMap<MapData, FlowKey4, FlowValue>,
    half_open: HashMap<MapData, FlowKey, FlowValue>,
    half_open_v4: HashMap<MapData, FlowKey4, FlowValue>,
    config: Array<MapData, L4Config>,
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> L4ApplyError {
    move |source| L4ApplyError::Map { name, source }
}

/// A removal whose key is already gone did what it was for. aya reports that as `KeyNotFound`
/// or as the syscall's ENOENT, depending on the path.
fn absent_ok(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.kind() == std::io::ErrorKind::NotFound => {
            Ok(())
        }
        r => r,
    }
}

impl KernelL4Maps {
    /// Takes the L4 maps out of the loaded object; its programs keep using them.
    pub fn take(obj: &mut KernelObject) -> Result<Self, L4ApplyError> {
        let mut take = |name: &'static str| {
            obj.ebpf
                .take_map(name)
                .ok_or(L4ApplyError::MissingMap { name })
        };
        Ok(KernelL4Maps {
            vips: HashMap::try_from(take(VIPS)?).map_err(map_err(VIPS))?,
            routes: Array::try_from(take(ROUTES)?).map_err(map_err(ROUTES))?,
            tables: Array::try_from(take(TABLES)?).map_err(map_err(TABLES))?,
            backends: Array::try_from(take(BACKENDS)?).map_err(map_err(BACKENDS))?,
            conntrack: HashMap::try_from(take(CONNTRACK)?).map_err(map_err(CONNTRACK))?,
            conntrack_v4: HashMap::try_from(take(CONNTRACK_V4)?).map_err(map_err(CONNTRACK_V4))?,
            half_open: HashMap::try_from(take(HALF_OPEN)?).map_err(map_err(HALF_OPEN))?,
            half_open_v4: HashMap::try_from(take(HALF_OPEN_V4)?).map_err(map_err(HALF_OPEN_V4))?,
            config: Array::try_from(take(L4_CONFIG)?).map_err(map_err(L4_CONFIG))?,
        })
    }
}

impl L4Maps for KernelL4Maps {
    fn read_backends(&self) -> Result<Vec<(u32, Backend)>, L4ApplyError> {
        (0..MAX_BACKENDS)
            .map(|id| Ok((id, self.backends.get(&id, 0).map_err(map_err(BACKENDS))?)))
            .collect()
    }

    fn read_vips(&self) -> Result<Vec<(VipKey, VipValue)>, L4ApplyError> {
        self.vips.iter().map(|e| e.map_err(map_err(VIPS))).collect()
    }

    fn read_route_metas(&self) -> Result<Vec<(u32, RouteMeta)>, L4ApplyError> {
        (0..MAX_ROUTES)
            .map(|id| Ok((id, self.routes.get(&id, 0).map_err(map_err(ROUTES))?)))
            .collect()
    }

    fn write_backend(&mut self, id: u32, backend: Backend) -> Result<(), L4ApplyError> {
        self.backends.set(id, backend, 0).map_err(map_err(BACKENDS))
    }

    fn write_table_slot(
        &mut self,
        route_id: u32,
        half: u32,
        slot: u32,
        backend_id: u32,
    ) -> Result<(), L4ApplyError> {
        self.tables
            .set(table_index(route_id, half, slot), backend_id, 0)
            .map_err(map_err(TABLES))
    }

    fn write_route_meta(&mut self, route_id: u32, meta: RouteMeta) -> Result<(), L4ApplyError> {
        // One map update of a 16-byte array value: the kernel copies it under the element, and
        // the program reads `active` and `table_size` together from it.
        self.routes.set(route_id, meta, 0).map_err(map_err(ROUTES))
    }

    fn write_vip(&mut self, key: VipKey, value: VipValue) -> Result<(), L4ApplyError> {
        self.vips.insert(key, value, 0).map_err(map_err(VIPS))
    }

    fn write_config(&mut self, config: L4Config) -> Result<(), L4ApplyError> {
        self.config.set(0, config, 0).map_err(map_err(L4_CONFIG))
    }

    fn remove_vip(&mut self, key: &VipKey) -> Result<(), L4ApplyError> {
        absent_ok(self.vips.remove(key)).map_err(map_err(VIPS))
    }

    fn for_each_flow(&self, f: &mut dyn FnMut(CtKey, FlowValue)) -> Result<(), L4ApplyError> {
        for entry in self.conntrack.iter() {
            let (k, v) = entry.map_err(map_err(CONNTRACK))?;
            f(CtKey::V6(k), v);
        }
        for entry in self.conntrack_v4.iter() {
            let (k, v) = entry.map_err(map_err(CONNTRACK_V4))?;
            f(CtKey::V4(k), v);
        }
        // Entries come and go under the walk (LRU, confirmations): those errors are skipped.
        for (k, v) in self.half_open.iter().filter_map(Result::ok) {
            f(CtKey::V6(k), v);
        }
        for (k, v) in self.half_open_v4.iter().filter_map(Result::ok) {
            f(CtKey::V4(k), v);
        }
        Ok(())
    }

    fn remove_flow(&mut self, key: &CtKey) -> Result<(), L4ApplyError> {
        // The flow is in one of the two tables; removing from the other is a no-op.
        match key {
            CtKey::V4(k) => {
                absent_ok(self.half_open_v4.remove(k)).map_err(map_err(HALF_OPEN_V4))?;
                absent_ok(self.conntrack_v4.remove(k)).map_err(map_err(CONNTRACK_V4))
            }
            CtKey::V6(k) => {
                absent_ok(self.half_open.remove(k)).map_err(map_err(HALF_OPEN))?;
                absent_ok(self.conntrack.remove(k)).map_err(map_err(CONNTRACK))
            }
        }
    }
}
