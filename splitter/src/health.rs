//! The state of the kernel (L4) half of `splitter run`, shared between the task that attaches
//! and programs it and the admin endpoint that shows it (`/readyz`, `/debug/l4`, `/metrics`).
//!
//! The kernel half may be off while L7 serves: an interface that does not exist yet, a failed
//! load or attach. It may also serve some routes and leave others out (over a limit). Both are
//! kept here with their reason, so an operator sees why without reading logs.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    metrics::{counter::Counter, gauge::Gauge},
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
