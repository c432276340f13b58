//! The L4 maps as the actuator writes them: a trait, so reconciliation runs against an
//! in-memory fake in tests, and its implementation over a loaded object's maps, the only code
//! that writes them.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use aya::maps::{Array, HashMap, Map, MapData, MapError};
use aya_obj::generated::{bpf_attr, bpf_cmd};
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
    /// A whole table half: `slots[i]` into slot `i`. Slot by slot unless the maps can do
    /// better.
    fn write_table_half(
        &mut self,
        route_id: u32,
        half: u32,
        slots: &[u32],
    ) -> Result<(), L4ApplyError> {
        slot_by_slot(self, route_id, half, slots)
    }
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

fn slot_by_slot(
    maps: &mut (impl L4Maps + ?Sized),
    route_id: u32,
    half: u32,
    slots: &[u32],
) -> Result<(), L4ApplyError> {
    for (slot, backend_id) in slots.iter().enumerate() {
        maps.write_table_slot(route_id, half, slot as u32, *backend_id)?;
    }
    Ok(())
}

/// The L4 maps of a loaded object (pinned or not).
pub struct KernelL4Maps {
    vips: HashMap<MapData, VipKey, VipValue>,
    routes: Array<MapData, RouteMeta>,
    tables: Array<MapData, u32>,
    /// `tables`' descriptor, for batch updates (aya has none).
    tables_fd: OwnedFd,
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

/// `BPF_MAP_UPDATE_BATCH` of `keys[i]` to `values[i]` (an array map of `u32` values).
fn update_batch(fd: BorrowedFd<'_>, keys: &[u32], values: &[u32]) -> std::io::Result<()> {
    debug_assert_eq!(keys.len(), values.len());
    // SAFETY: all-zero is a valid bpf_attr (plain integers and unions of them).
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.batch.keys = keys.as_ptr() as u64;
    attr.batch.values = values.as_ptr() as u64;
    attr.batch.count = keys.len() as u32;
    attr.batch.map_fd = fd.as_raw_fd() as u32;
    let attr_ptr: *mut bpf_attr = &mut attr;
    // SAFETY: the attr points at `keys` and `values`, alive and of `count` elements for the
    // duration of the call; the kernel reads them and writes back only `count`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_MAP_UPDATE_BATCH as libc::c_long,
            attr_ptr,
            size_of::<bpf_attr>() as libc::c_long,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
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
        let tables = take(TABLES)?;
        let tables_fd = match &tables {
            Map::Array(data) => {
                data.fd()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|e| L4ApplyError::Map {
                        name: TABLES,
                        source: MapError::SyscallError(aya::sys::SyscallError {
                            call: "dup",
                            io_error: e,
                        }),
                    })?
            }
            _ => return Err(L4ApplyError::MissingMap { name: TABLES }),
        };
        Ok(KernelL4Maps {
            vips: HashMap::try_from(take(VIPS)?).map_err(map_err(VIPS))?,
            routes: Array::try_from(take(ROUTES)?).map_err(map_err(ROUTES))?,
            tables: Array::try_from(tables).map_err(map_err(TABLES))?,
            tables_fd,
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

    fn write_table_half(
        &mut self,
        route_id: u32,
        half: u32,
        slots: &[u32],
    ) -> Result<(), L4ApplyError> {
        // One system call for the whole half instead of one per slot: a 16381-slot table took
        // ~16k updates, tens of milliseconds of every table change.
        let keys: Vec<u32> = (0..slots.len() as u32)
            .map(|slot| table_index(route_id, half, slot))
            .collect();
        match update_batch(self.tables_fd.as_fd(), &keys, slots) {
            Ok(()) => Ok(()),
            // Kernels before 5.6 have no batch operations: slot by slot (idempotent, so what
            // a partial batch wrote is simply written again).
            Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOTSUP | 524)) => {
                slot_by_slot(self, route_id, half, slots)
            }
            Err(io_error) => Err(L4ApplyError::Map {
                name: TABLES,
                source: MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_update_batch",
                    io_error,
                }),
            }),
        }
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
