//! The binary's global allocator (declared by `main.rs`, not part of the library): jemalloc,
//! with a background thread that hands freed memory back to the kernel.
//!
//! The control plane frees in bursts (the previous plan, a re-read manifest, the kernel
//! object's parse at start) on threads that then idle. mimalloc, the allocator before, returns
//! memory only on a later allocation of the thread that owns it, so an idle agent sat on what
//! it had freed: 59 MiB resident with two routes (17 settled with this), 180 MiB at 10,000
//! routes (109 settled). Making mimalloc purge at once cost the proxy 3 to 8% of its requests
//! per second; jemalloc's background thread purges on a clock instead, off the request path,
//! and the proxy measured the same within this machine's noise (`cargo xtask bench l7
//! --baseline` against the mimalloc build; README, "Memory").

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first allocation; `_RJEM_MALLOC_CONF` in the environment
/// overrides them. Freed pages go back to the kernel within about a second of being freed
/// (`dirty_decay_ms`), at once rather than through the lazy `MADV_FREE` stage (which the
/// kernel counts as resident until it needs the memory: `muzzy_decay_ms:0`), done by
/// jemalloc's own thread whether or not the threads that freed them run again.
#[used]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    fn rss_mib() -> f64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS");
        kib / 1024.0
    }

    /// What a plan's life looks like: 128 MiB of small blocks allocated by a thread that then
    /// stays alive and idle (a blocking thread after a build), freed on another (the control
    /// loop dropping the previous plan), and nothing allocating afterwards: the resident size
    /// comes back down by itself. (With mimalloc it stayed up; with jemalloc's defaults it
    /// takes over ten seconds.)
    #[test]
    fn freed_memory_leaves_the_resident_set_of_an_idle_process() {
        let before = rss_mib();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let idle = std::thread::spawn(move || {
            let blocks: Vec<Box<[u8; 1024]>> =
                (0..128 * 1024).map(|i| Box::new([i as u8; 1024])).collect();
            tx.send(blocks).expect("send");
            let _ = done_rx.recv();
        });
        let blocks = rx.recv().expect("blocks");
        let full = rss_mib();
        assert!(full > before + 100.0, "{before:.1} -> {full:.1} MiB");
        drop(blocks);
        let freed_at = Instant::now();
        let mut now = rss_mib();
        while now > before + 32.0 && freed_at.elapsed() < Duration::from_secs(8) {
            std::thread::sleep(Duration::from_millis(100));
            now = rss_mib();
        }
        drop(done_tx);
        idle.join().expect("idle thread");
        assert!(
            now < before + 32.0,
            "RSS {before:.1} MiB, {full:.1} with the blocks, {now:.1} {:.1} s after freeing them",
            freed_at.elapsed().as_secs_f64()
        );
    }
}
