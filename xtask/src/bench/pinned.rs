//! The agent's pinned L4 maps, read from the bench process: which route a VIP names, the
//! route's meta (live half, generation) and the backends its live table half names. The same
//! maps `splitter inspect` reads (`dataplane::ebpf::read_l4_state`), opened here directly because
//! the xtask cannot link the agent crate (building it needs the BPF toolchain the xtask installs).

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use anyhow::Context as _;
use aya::maps::{Array, HashMap, Map, MapData};
use splitter_common::l4::{
    BACKENDS, Backend, MAX_TABLE_SIZE, REJECT, ROUTES, RouteMeta, TABLES, VIPS, VipKey, VipValue,
    table_index,
};

pub struct PinnedL4 {
    vips: HashMap<MapData, VipKey, VipValue>,
    routes: Array<MapData, RouteMeta>,
    tables: Array<MapData, u32>,
    backends: Array<MapData, Backend>,
}

fn open(pin_dir: &Path, name: &str) -> anyhow::Result<Map> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path)
        .with_context(|| format!("opening pinned map {}", path.display()))?;
    Map::from_map_data(data).with_context(|| format!("map type of {}", path.display()))
}

impl PinnedL4 {
    /// Opens the maps pinned under `pin_dir` (fails until the agent has pinned them).
    pub fn open(pin_dir: &Path) -> anyhow::Result<Self> {
        Ok(Self {
            vips: HashMap::try_from(open(pin_dir, VIPS)?)?,
            routes: Array::try_from(open(pin_dir, ROUTES)?)?,
            tables: Array::try_from(open(pin_dir, TABLES)?)?,
            backends: Array::try_from(open(pin_dir, BACKENDS)?)?,
        })
    }

    /// The route id the kernel gives TCP connections to `vip`, if it serves it.
    pub fn route_of(&self, vip: SocketAddr) -> anyhow::Result<Option<u32>> {
        match self.vips.get(&vip_key(vip), 0) {
            Ok(v) => Ok(Some(v.route_id)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// The route's meta: one map lookup, the word the agent writes last when it publishes a
    /// table (the flip of the live half, with a new generation).
    pub fn meta(&self, route: u32) -> anyhow::Result<RouteMeta> {
        Ok(self.routes.get(&route, 0)?)
    }

    /// The backends the live half of the route's table names (every slot read), REJECT slots
    /// left out.
    pub fn live_backends(
        &self,
        route: u32,
        meta: &RouteMeta,
    ) -> anyhow::Result<BTreeSet<SocketAddr>> {
        let mut ids = BTreeSet::new();
        if meta.table_size == 0 || meta.table_size > MAX_TABLE_SIZE || meta.active > 1 {
            return Ok(BTreeSet::new());
        }
        for slot in 0..meta.table_size {
            ids.insert(self.tables.get(&table_index(route, meta.active, slot), 0)?);
        }
        ids.remove(&REJECT);
        ids.into_iter()
            .map(|id| {
                let b = self.backends.get(&id, 0)?;
                Ok(SocketAddr::new(IpAddr::from(b.addr).to_canonical(), b.port))
            })
            .collect()
    }
}

/// The `VIPS` key of a TCP listener address (IPv4 mapped into `::ffff:0:0/96`).
fn vip_key(vip: SocketAddr) -> VipKey {
    let addr = match vip.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    };
    VipKey {
        addr,
        port: vip.port(),
        proto: splitter_common::counters::IPPROTO_TCP,
        _pad: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_vips_are_mapped_with_the_port_in_host_order() {
        let k = vip_key("10.77.0.1:9090".parse().expect("addr"));
        assert_eq!(
            k.addr,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 77, 0, 1]
        );
        assert_eq!(k.port, 9090);
        assert_eq!(k.proto, 6);
    }
}
