//! The control loop: source updates -> index -> plan, published as immutable snapshots.
//!
//! Sources send batches of [`Update`]s; each batch is applied to the index and a new plan is
//! built (with the previous one, for the L4 disruption figures) and published on a `watch`
//! channel, which the actuators (`agent::run_l7`, the eBPF table writer, the status writer)
//! follow. Deciding stays in `plan`; nothing here writes anywhere but the channel.

use std::{sync::Arc, time::Duration};

use prometheus_client::{
    metrics::{
        counter::Counter,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

use crate::health::{HEARTBEAT_EVERY, Heartbeat};

use splitter_plan::{
    model::{Index, index::Update},
    plan::{self, ListenerPlan, Plan, PlanConfig, node_ports::NodePorts},
};

/// The default for `--coalesce-ms`: at most one plan per this long while changes stream in.
pub const DEFAULT_COALESCE: Duration = Duration::from_millis(100);

/// How the loop runs.
#[derive(Clone, Debug)]
pub struct LoopSettings {
    pub heartbeat: Heartbeat,
    /// See [`run`] (`--coalesce-ms`).
    pub coalesce: Duration,
    pub metrics: PlanMetrics,
}

impl Default for LoopSettings {
    fn default() -> Self {
        Self {
            heartbeat: Heartbeat::default(),
            coalesce: DEFAULT_COALESCE,
            metrics: PlanMetrics::default(),
        }
    }
}

/// What the loop did, on `/metrics` as `splitter_plan_*`.
#[derive(Clone, Debug)]
pub struct PlanMetrics {
    builds: Counter,
    unchanged: Counter,
    build_seconds: Histogram,
}

impl Default for PlanMetrics {
    fn default() -> Self {
        Self {
            builds: Counter::default(),
            unchanged: Counter::default(),
            // 1 ms to 16 s.
            build_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
        }
    }
}

impl PlanMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let sub = registry.sub_registry_with_prefix("splitter_plan");
        sub.register(
            "builds",
            "Plans built (one per coalesced set of changes)",
            self.builds.clone(),
        );
        sub.register(
            "unchanged_batches",
            "Batches of source changes that changed nothing the plan reads, so built nothing",
            self.unchanged.clone(),
        );
        sub.register(
            "build_seconds",
            "Time to build a plan",
            self.build_seconds.clone(),
        );
    }

    /// Plans built so far.
    pub fn builds(&self) -> u64 {
        self.builds.get()
    }

    /// Passes whose changes changed nothing the plan reads.
    pub fn unchanged(&self) -> u64 {
        self.unchanged.get()
    }
}

/// Applies every batch from `updates` and publishes the resulting plan on `plans`, until the
/// update senders are gone; a change of the node's ports (`node_ports`, which listeners on the
/// node's addresses must leave alone) rebuilds the plan too. Plans are only published when they
/// differ from the last one. `heartbeat` beats after every pass and every [`HEARTBEAT_EVERY`]
/// while idle: `/healthz` fails when it stops.
///
/// Builds are coalesced: a change that arrives when no plan was built for `coalesce` is planned
/// at once (a lone endpoint change is not delayed), and changes that arrive within `coalesce`
/// of the last build wait until it has passed and are planned together, so a stream of watch
/// events costs at most one build per `coalesce`. A batch that changes nothing the plan reads
/// (a status-only update, a resync, the echo of our own status write) builds nothing. Builds run
/// on the blocking pool ([`build_off_runtime`]).
pub async fn run(
    mut updates: mpsc::Receiver<Vec<Update>>,
    mut config: PlanConfig,
    plans: watch::Sender<Option<Arc<Plan>>>,
    mut node_ports: watch::Receiver<NodePorts>,
    settings: LoopSettings,
) {
    let LoopSettings {
        heartbeat,
        coalesce,
        metrics,
    } = settings;
    heartbeat.beat();
    let mut idle = tokio::time::interval(HEARTBEAT_EVERY);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut index = Index::new();
    let mut current: Option<Arc<Plan>> = None;
    // A closed port watch (tests, or a failed scanner) keeps the last ports it sent.
    let mut ports_open = true;
    let mut sources_open = true;
    // When the last build started; `None` before the first.
    let mut last_build: Option<Instant> = None;
    config.node_ports = node_ports.borrow_and_update().clone();
    loop {
        heartbeat.beat();
        if !sources_open {
            return;
        }
        // Waits for the first change of the next pass.
        let mut changed = tokio::select! {
            _ = idle.tick() => continue,
            batch = updates.recv() => match batch {
                // The first batch always plans, even when it holds nothing (a source with no
                // objects yet): the actuators and /readyz wait for a first plan.
                Some(batch) => apply(&mut index, batch) || current.is_none(),
                None => return,
            },
            r = node_ports.changed(), if ports_open => {
                if r.is_err() {
                    ports_open = false;
                    continue;
                }
                config.node_ports = node_ports.borrow_and_update().clone();
                // Nothing planned yet: the first batch builds with these ports.
                current.is_some()
            }
        };
        // Changes arriving within `coalesce` of the last build join this pass.
        if let Some(due) = last_build.map(|t| t + coalesce) {
            let wait = tokio::time::sleep_until(due);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    batch = updates.recv(), if sources_open => match batch {
                        Some(batch) => changed |= apply(&mut index, batch),
                        None => sources_open = false,
                    },
                }
            }
        }
        // And whatever is already queued.
        while let Ok(batch) = updates.try_recv() {
            changed |= apply(&mut index, batch);
        }
        if !changed {
            metrics.unchanged.inc();
            continue;
        }
        last_build = Some(Instant::now());
        metrics.builds.inc();
        let Some((back, next, same)) = build_off_runtime(
            index,
            config.clone(),
            current.clone(),
            metrics.build_seconds.clone(),
        )
        .await
        else {
            // A panicking build took the index with it; the agent cannot go on planning.
            tracing::error!("plan build failed; the control loop stops");
            return;
        };
        index = back;
        for d in &next.diagnostics {
            tracing::warn!("plan: {d}");
        }
        if same {
            continue;
        }
        let next = Arc::new(next);
        current = Some(next.clone());
        // No receiver left only means nothing follows the plan any more.
        let _ = plans.send(Some(next));
    }
}

/// Builds the next plan on the blocking pool: at thousands of routes a build takes long enough
/// to stall the runtime the watchers, the admin server and the status writer share. Returns
/// the index back, the plan, and whether it equals `previous` but for its disruption figures;
/// `None` when the build panicked.
async fn build_off_runtime(
    index: Index,
    config: PlanConfig,
    previous: Option<Arc<Plan>>,
    timer: Histogram,
) -> Option<(Index, Plan, bool)> {
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let next = plan::build(&index, &config, previous.as_deref());
        timer.observe(started.elapsed().as_secs_f64());
        let same = previous
            .as_deref()
            .is_some_and(|c| same_except_disruption(c, &next));
        (index, next, same)
    })
    .await
    .ok()
}

/// Applies a batch; whether anything the plan reads changed.
fn apply(index: &mut Index, batch: Vec<Update>) -> bool {
    let mut changed = false;
    for u in batch {
        changed |= index.update(u);
    }
    changed
}

/// Two plans equal but for the disruption figures, which compare against the previous plan
/// and so change on every rebuild.
fn same_except_disruption(a: &Plan, b: &Plan) -> bool {
    let strip = |p: &Plan| {
        let mut p = p.clone();
        for l in &mut p.listeners {
            if let ListenerPlan::L4 { l4, .. } = l {
                l4.table.disruption = None;
                if let Some(t) = &mut l4.table_v6 {
                    t.disruption = None;
                }
            }
        }
        p
    };
    strip(a) == strip(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::LIVENESS_BOUND;

    /// An idle loop keeps `/healthz` green; a loop that is gone turns it red after the bound.
    #[tokio::test(start_paused = true)]
    async fn the_heartbeat_follows_the_loop_idle_or_gone() {
        let heartbeat = Heartbeat::default();
        let (updates_tx, updates) = mpsc::channel(1);
        let (plans_tx, _plans) = watch::channel(None);
        let (_ports_tx, ports) = watch::channel(NodePorts::default());
        let task = tokio::spawn(run(
            updates,
            PlanConfig::default(),
            plans_tx,
            ports,
            LoopSettings {
                heartbeat: heartbeat.clone(),
                coalesce: DEFAULT_COALESCE,
                metrics: PlanMetrics::default(),
            },
        ));
        // Idle for far longer than the bound: the tick keeps it beating.
        for _ in 0..20 {
            tokio::time::sleep(HEARTBEAT_EVERY).await;
            assert_eq!(heartbeat.check(), Ok(()));
        }
        // The loop ends (its sources are gone): nothing beats any more.
        drop(updates_tx);
        task.await.expect("loop");
        tokio::time::sleep(LIVENESS_BOUND + HEARTBEAT_EVERY).await;
        let err = heartbeat.check().expect_err("stale");
        assert!(err.contains("control loop has not run"), "{err}");
    }

    /// The agent's GatewayClass at `generation`: its status names the generation it observed.
    fn class(generation: i64) -> Update {
        let name = plan::listener::DEFAULT_GATEWAY_CLASS;
        let value = serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": name, "generation": generation},
            "spec": {"controllerName": plan::listener::CONTROLLER_NAME},
        });
        match splitter_plan::model::parse::parse(value).expect("valid") {
            splitter_plan::model::parse::Parsed::Object(o) => Update::Apply(o),
            other => panic!("{other:?}"),
        }
    }

    /// The class of the plan last published, with the generation its status observed.
    fn classes(plans: &watch::Receiver<Option<Arc<Plan>>>) -> Vec<String> {
        plans.borrow().as_ref().map_or_else(Vec::new, |p| {
            p.gateway_classes
                .iter()
                .map(|c| {
                    let generation = c.conditions.first().map_or(0, |c| c.observed_generation);
                    format!("{}@{generation}", c.class.name)
                })
                .collect()
        })
    }

    struct Harness {
        updates: mpsc::Sender<Vec<Update>>,
        plans: watch::Receiver<Option<Arc<Plan>>>,
        metrics: PlanMetrics,
        _ports: watch::Sender<NodePorts>,
    }

    fn start(coalesce: Duration) -> Harness {
        let (updates, rx) = mpsc::channel(64);
        let (plans_tx, plans) = watch::channel(None);
        let (ports_tx, ports) = watch::channel(NodePorts::default());
        let metrics = PlanMetrics::default();
        tokio::spawn(run(
            rx,
            PlanConfig::default(),
            plans_tx,
            ports,
            LoopSettings {
                heartbeat: Heartbeat::default(),
                coalesce,
                metrics: metrics.clone(),
            },
        ));
        Harness {
            updates,
            plans,
            metrics,
            _ports: ports_tx,
        }
    }

    impl Harness {
        async fn send(&self, batch: Vec<Update>) {
            self.updates.send(batch).await.expect("loop alive");
        }

        async fn next_plan(&mut self) -> Vec<String> {
            tokio::time::timeout(Duration::from_secs(3600), self.plans.changed())
                .await
                .expect("a plan within the hour")
                .expect("loop alive");
            classes(&self.plans)
        }
    }

    /// An update equal to what the index holds (a resync, or the echo of our own status write,
    /// which the model does not keep) builds nothing; a real change builds.
    #[tokio::test(start_paused = true)]
    async fn a_change_that_changes_nothing_the_plan_reads_builds_nothing() {
        let mut h = start(Duration::ZERO);
        h.send(vec![class(1)]).await;
        assert_eq!(h.next_plan().await, ["splitter@1"]);
        assert_eq!(h.metrics.builds(), 1);
        for _ in 0..5 {
            h.send(vec![class(1)]).await;
        }
        // A relist of the same content is no change either.
        let Update::Apply(a) = class(1) else {
            unreachable!()
        };
        h.send(vec![Update::Reset(
            splitter_plan::model::Kind::GatewayClass,
            vec![*a],
        )])
        .await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(h.metrics.builds(), 1, "no build for unchanged input");
        assert!(h.metrics.unchanged() >= 1);
        h.send(vec![class(2)]).await;
        assert_eq!(h.next_plan().await, ["splitter@2"]);
        assert_eq!(h.metrics.builds(), 2);
    }

    /// Changes that arrive within the window of the last build are planned together when it
    /// has passed; a change after a quiet spell is planned at once, without waiting.
    #[tokio::test(start_paused = true)]
    async fn changes_within_the_window_are_planned_together_and_a_lone_change_at_once() {
        let window = Duration::from_secs(600);
        let mut h = start(window);
        h.send(vec![class(1)]).await;
        assert_eq!(h.next_plan().await, ["splitter@1"]);
        let first = Instant::now();
        // Ten changes, one a second, all within the window of the first build.
        for g in 2..=11 {
            h.send(vec![class(g)]).await;
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert_eq!(h.metrics.builds(), 1, "nothing built inside the window");
        assert_eq!(h.next_plan().await, ["splitter@11"]);
        assert!(first.elapsed() >= window);
        assert_eq!(h.metrics.builds(), 2, "the ten changes made one plan");
        // Quiet for longer than the window: the next change does not wait for one.
        tokio::time::sleep(window * 2).await;
        let sent = Instant::now();
        h.send(vec![class(12)]).await;
        assert_eq!(h.next_plan().await, ["splitter@12"]);
        assert!(sent.elapsed() < window / 2, "{:?}", sent.elapsed());
    }

    /// A source that starts with no objects (an empty manifest directory) still gets a first
    /// plan: /readyz and the actuators wait for one.
    #[tokio::test(start_paused = true)]
    async fn a_first_batch_that_holds_nothing_still_plans() {
        let mut h = start(Duration::ZERO);
        h.send(vec![Update::Reset(
            splitter_plan::model::Kind::GatewayClass,
            Vec::new(),
        )])
        .await;
        assert_eq!(h.next_plan().await, Vec::<String>::new());
        assert!(h.plans.borrow().is_some());
        assert_eq!(h.metrics.builds(), 1);
    }
}
