//! The state of the kernel (L4) half of `splitter run`, shared between the task that attaches
//! and programs it and the admin endpoint that shows it (`/readyz`, `/debug/l4`, `/metrics`).
//!
//! The kernel half may be off while L7 serves: an interface that does not exist yet, a failed
//! load or attach. It may also serve some routes and leave others out (over a limit). Both are
//! kept here with their reason, so an operator sees why without reading logs.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        gauge::Gauge,
    },
    registry::Registry,
};
use serde::Serialize;

/// What the kernel half is doing, as `/debug/l4` shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KernelState {
    /// Interfaces the programs attach to (`--iface`, or the default route's).
    pub ifaces: Vec<String>,
    /// Whether the programs are attached and the maps programmed by this agent.
    pub serving: bool,
    /// Why it is not serving, or why the last apply failed.
    pub reason: Option<String>,
    /// L4 routes left out of the kernel, by route key, with why (over a limit or invalid).
    pub routes_off: BTreeMap<String, String>,
}

/// Shared handle to the kernel half's state and its metrics.
#[derive(Clone, Debug, Default)]
pub struct KernelHealth {
    state: Arc<Mutex<KernelState>>,
    /// Where the maps are pinned: the kernel's own counters are read from there per scrape.
    pin_dir: Option<PathBuf>,
    up: Gauge,
    attach_failures: Counter,
    apply_failures: Counter,
    routes_off: Gauge,
}

impl KernelHealth {
    pub fn new(ifaces: &[String]) -> Self {
        let health = KernelHealth::default();
        health.lock().ifaces = ifaces.to_vec();
        health
    }

    /// Also exports the kernel's event counters (`splitter_l4_events_total{event}`), read
    /// from the maps pinned under `pin_dir` at each scrape.
    pub fn with_pin_dir(mut self, pin_dir: &Path) -> Self {
        self.pin_dir = Some(pin_dir.to_owned());
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, KernelState> {
        // A panic while holding it leaves plain data behind: still worth showing.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds the families to `registry` under the `splitter_l4_` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("splitter_l4");
        sub.register(
            "up",
            "1 when the kernel programs are attached and programmed, 0 while the L4 half is off",
            self.up.clone(),
        );
        sub.register(
            "attach_failures",
            "Failed attempts to load the kernel object or attach it to the interfaces",
            self.attach_failures.clone(),
        );
        sub.register(
            "apply_failures",
            "Plans the kernel maps refused (the previous state stays; retried)",
            self.apply_failures.clone(),
        );
        sub.register(
            "routes_off",
            "L4 routes left out of the kernel (over a limit or invalid); see /debug/l4",
            self.routes_off.clone(),
        );
        if let Some(pin_dir) = &self.pin_dir {
            sub.register_collector(Box::new(KernelEvents {
                pin_dir: pin_dir.clone(),
            }));
        }
    }

    /// Loading or attaching failed: the L4 half is off until a retry succeeds.
    pub fn attach_failed(&self, reason: String) {
        self.attach_failures.inc();
        self.up.set(0);
        let mut s = self.lock();
        s.serving = false;
        s.reason = Some(reason);
    }

    /// Programs attached, maps ready.
    pub fn attached(&self) {
        self.up.set(1);
        let mut s = self.lock();
        s.serving = true;
        s.reason = None;
    }

    /// The outcome of one apply: routes left out, or the error that stopped it.
    pub fn applied(&self, outcome: Result<BTreeMap<String, String>, String>) {
        let mut s = self.lock();
        match outcome {
            Ok(off) => {
                self.routes_off.set(off.len() as i64);
                s.routes_off = off;
                if s.serving {
                    s.reason = None;
                }
            }
            Err(e) => {
                self.apply_failures.inc();
                s.reason = Some(format!("last apply failed: {e}"));
            }
        }
    }

    pub fn snapshot(&self) -> KernelState {
        self.lock().clone()
    }

    /// `Err(why)` while the kernel half is off: the node does not serve its L4 listeners.
    pub fn ready(&self) -> Result<(), String> {
        let s = self.lock();
        if s.serving {
            Ok(())
        } else {
            Err(format!(
                "L4 half off on {}: {}",
                s.ifaces.join(","),
                s.reason.as_deref().unwrap_or("not attached yet")
            ))
        }
    }
}

/// How stale the control loop's heartbeat may get before `/healthz` fails: several of its
/// idle ticks ([`HEARTBEAT_EVERY`]) plus room for a slow plan build.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(30);

/// How often the control loop beats while idle.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// The control loop's heartbeat: it beats after every plan it builds and on a tick while idle,
/// and `/healthz` fails when the last beat is older than its bound (the loop is stuck or gone).
/// Uses tokio's clock, so a test with paused time controls it.
#[derive(Clone, Debug)]
pub struct Heartbeat {
    last: Arc<Mutex<Option<Instant>>>,
    bound: Duration,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self::with_bound(LIVENESS_BOUND)
    }
}

impl Heartbeat {
    pub fn with_bound(bound: Duration) -> Self {
        Heartbeat {
            last: Arc::default(),
            bound,
        }
    }

    pub fn beat(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    /// `Err(why)` when the loop has not beaten within the bound.
    pub fn check(&self) -> Result<(), String> {
        let last = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        liveness(last, Instant::now(), self.bound)
    }
}

/// The liveness decision: alive when the last beat is at most `bound` before `now`.
pub fn liveness(last: Option<Instant>, now: Instant, bound: Duration) -> Result<(), String> {
    match last {
        None => Err("the control loop has not started".into()),
        Some(t) => {
            let age = now.saturating_duration_since(t);
            if age <= bound {
                Ok(())
            } else {
                Err(format!(
                    "the control loop has not run for {}s (bound {}s): it is stuck or gone",
                    age.as_secs(),
                    bound.as_secs()
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn liveness_fails_once_the_last_beat_is_older_than_the_bound() {
        let bound = Duration::from_secs(30);
        let t0 = Instant::now();
        assert!(liveness(None, t0, bound).is_err(), "never beaten");
        assert_eq!(liveness(Some(t0), t0, bound), Ok(()));
        assert_eq!(liveness(Some(t0), t0 + bound, bound), Ok(()));
        let err = liveness(Some(t0), t0 + Duration::from_secs(31), bound).expect_err("stale");
        assert!(err.contains("not run for 31s"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_heartbeat_goes_stale_when_nothing_beats_it() {
        let hb = Heartbeat::default();
        hb.beat();
        tokio::time::advance(LIVENESS_BOUND).await;
        assert_eq!(hb.check(), Ok(()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(hb.check().is_err());
        hb.beat();
        assert_eq!(hb.check(), Ok(()));
    }
}

/// The kernel's `L4_DROPS` counters (what `splitter inspect` lists under "l4 events": rejects,
/// SNAT failures, half-open flows created and confirmed, flood drops, rate-limited sources),
/// read from the pinned map when scraped. Nothing is exported while the map is not pinned
/// (the kernel half never started).
#[derive(Debug)]
struct KernelEvents {
    pin_dir: PathBuf,
}

impl Collector for KernelEvents {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let path = self.pin_dir.join(splitter_common::l4::L4_DROPS);
        let Some(events) = aya::maps::MapData::from_pin(&path)
            .ok()
            .and_then(|d| aya::maps::Map::from_map_data(d).ok())
            .and_then(|m| crate::dataplane::ebpf::read_events(&m).ok())
        else {
            return Ok(());
        };
        let mut family = encoder.encode_descriptor(
            "events",
            "What the kernel path did with VIP packets, by event (see `splitter inspect`)",
            None,
            MetricType::Counter,
        )?;
        for (name, n) in events {
            let labels = [("event", name)];
            ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
