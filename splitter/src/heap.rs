//! The allocator's own figures, exported as `splitter_heap_bytes{kind}`.
//!
//! The agent's resident size mixes what it holds with what the allocator keeps (pages of
//! partly used runs, metadata, freed memory not yet handed back). jemalloc, the `splitter`
//! binary's allocator, counts each: these gauges tell a leak or a large index (`allocated`
//! grows) from fragmentation or slow purging (`resident` grows, `allocated` does not). In a
//! process whose global allocator is not jemalloc (the library's tests) they cover only
//! jemalloc's own small use.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, gauge::ConstGauge},
    registry::Registry,
};
use tikv_jemalloc_ctl::{epoch, stats};

/// jemalloc's counters in bytes, as of one refresh of its statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeapStats {
    /// Bytes the program asked for and has not freed.
    pub allocated: u64,
    /// Bytes in the pages of active runs: `allocated` plus the free space inside them.
    pub active: u64,
    /// jemalloc's own bookkeeping.
    pub metadata: u64,
    /// Bytes in pages the allocator holds resident (the heap's share of the process RSS).
    pub resident: u64,
}

/// Reads the counters (refreshing jemalloc's cached statistics first); `None` when jemalloc
/// refuses, which a build without statistics would.
pub fn stats() -> Option<HeapStats> {
    epoch::advance().ok()?;
    let read = |r: tikv_jemalloc_ctl::Result<usize>| r.ok().map(|n| n as u64);
    Some(HeapStats {
        allocated: read(stats::allocated::read())?,
        active: read(stats::active::read())?,
        metadata: read(stats::metadata::read())?,
        resident: read(stats::resident::read())?,
    })
}

/// jemalloc's full statistics as text (`malloc_stats_print`: per arena and per size class,
/// how many regions are in use and how full their slabs are), which is what tells where the
/// gap between `allocated` and `active` lies. Served at `/debug/heap`.
pub fn report() -> String {
    unsafe extern "C" fn append(out: *mut std::ffi::c_void, text: *const std::ffi::c_char) {
        // SAFETY: `out` is the `Vec` passed below, alive for the whole call; jemalloc passes
        // NUL-terminated strings.
        unsafe {
            let out = &mut *(out as *mut Vec<u8>);
            out.extend_from_slice(std::ffi::CStr::from_ptr(text).to_bytes());
        }
    }
    let mut out: Vec<u8> = Vec::new();
    // SAFETY: the callback and its argument are valid for the duration of the call; a null
    // option string asks for the default report.
    unsafe {
        tikv_jemalloc_sys::malloc_stats_print(
            Some(append),
            std::ptr::from_mut(&mut out).cast::<std::ffi::c_void>(),
            std::ptr::null(),
        );
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Adds `splitter_heap_bytes{kind="allocated|active|metadata|resident"}`, read when scraped.
pub fn register(registry: &mut Registry) {
    registry.register_collector(Box::new(HeapCollector));
}

#[derive(Debug)]
struct HeapCollector;

impl Collector for HeapCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let Some(s) = stats() else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "splitter_heap_bytes",
            "The allocator's (jemalloc's) bytes by kind: allocated (in use), active (pages of runs in use), metadata, resident (held in RAM)",
            None,
            MetricType::Gauge,
        )?;
        for (kind, n) in [
            ("allocated", s.allocated),
            ("active", s.active),
            ("metadata", s.metadata),
            ("resident", s.resident),
        ] {
            ConstGauge::new(n as i64).encode(family.encode_family(&[("kind", kind)])?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The counters are live: memory taken from jemalloc shows in `allocated` (the tests'
    /// global allocator is the system's, so it is asked directly).
    #[test]
    fn allocations_show_in_the_counters_and_the_metric() {
        let before = stats().expect("jemalloc statistics");
        let size = 64 << 20;
        let layout = std::alloc::Layout::from_size_align(size, 16).unwrap();
        // SAFETY: a non-zero size; the block is freed below with the same layout.
        let block = unsafe { std::alloc::GlobalAlloc::alloc(&tikv_jemallocator::Jemalloc, layout) };
        assert!(!block.is_null());
        let during = stats().expect("jemalloc statistics");
        // SAFETY: allocated above by the same allocator with this layout.
        unsafe { std::alloc::GlobalAlloc::dealloc(&tikv_jemallocator::Jemalloc, block, layout) };
        // Other test threads of this process may hand their cached blocks back to jemalloc
        // between the two reads (about 100 KiB when one exits): the 64 MiB block shows all the
        // same.
        let slack = 1 << 20;
        assert!(
            during.allocated + slack >= before.allocated + size as u64,
            "{before:?} -> {during:?}"
        );
        assert!(during.active >= during.allocated, "{during:?}");

        let mut registry = Registry::default();
        register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for kind in ["allocated", "active", "metadata", "resident"] {
            assert!(
                text.contains(&format!("splitter_heap_bytes{{kind=\"{kind}\"}}")),
                "{text}"
            );
        }
    }

    #[test]
    fn the_report_is_jemallocs_statistics() {
        let report = report();
        assert!(report.contains("Allocated:"), "{report}");
        assert!(report.contains("bins:"), "{report}");
    }
}
