//! The maps of the object. Names, key and value types come from `splitter-common`.

use aya_ebpf::{
    btf_maps::{PerCpuArray, PerCpuHashMap},
    macros::btf_map,
};
use splitter_common::{DestKey, DestStats, ParseOutcome, maps::DEST_STATS_MAX_ENTRIES};

#[btf_map]
pub static DEST_STATS: PerCpuHashMap<DestKey, DestStats, { DEST_STATS_MAX_ENTRIES as usize }> =
    PerCpuHashMap::new();

#[btf_map]
pub static PARSE_STATS: PerCpuArray<u64, { ParseOutcome::COUNT as usize }> = PerCpuArray::new();
