//! Reading the parser's counters, from a live object or from pinned maps.

use aya::maps::{Map, MapData, MapError, PerCpuArray, PerCpuHashMap};
use splitter_common::{DestKey, DestStats, ParseOutcome};

/// Totals over all CPUs, indexed by [`ParseOutcome`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParseCounts(pub [u64; ParseOutcome::COUNT as usize]);

impl ParseCounts {
    pub fn get(&self, outcome: ParseOutcome) -> u64 {
        self.0[outcome as usize]
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DestCount {
    pub key: DestKey,
    pub stats: DestStats,
}

/// Sums the per-CPU `PARSE_STATS` array.
pub fn read_parse_stats(map: &Map) -> Result<ParseCounts, MapError> {
    let array = PerCpuArray::<&MapData, u64>::try_from(map)?;
    let mut counts = ParseCounts::default();
    for outcome in ParseOutcome::ALL {
        let per_cpu = array.get(&(outcome as u32), 0)?;
        counts.0[outcome as usize] = per_cpu.iter().sum();
    }
    Ok(counts)
}

/// Every entry of `DEST_STATS`, summed over CPUs, sorted by key for stable output.
pub fn read_dest_stats(map: &Map) -> Result<Vec<DestCount>, MapError> {
    let hash = PerCpuHashMap::<&MapData, DestKey, DestStats>::try_from(map)?;
    let mut out = Vec::new();
    for entry in hash.iter() {
        let (key, per_cpu) = entry?;
        let stats = per_cpu
            .iter()
            .fold(DestStats::default(), |acc, s| DestStats {
                packets: acc.packets + s.packets,
                bytes: acc.bytes + s.bytes,
            });
        out.push(DestCount { key, stats });
    }
    out.sort_by(|a, b| {
        (a.key.addr, a.key.port, a.key.proto).cmp(&(b.key.addr, b.key.port, b.key.proto))
    });
    Ok(out)
}
