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

mod planner;

use crate::health::{HEARTBEAT_EVERY, Heartbeat};
use planner::{Planner, ThreadCpu};

use splitter_plan::{
    model::{
        Index,
        index::{Changes, Update},
    },
    plan::{self, Plan, PlanConfig, node_ports::NodePorts},
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
    refreshes: Counter,
    unchanged: Counter,
    build_seconds: Histogram,
    refresh_seconds: Histogram,
}

impl Default for PlanMetrics {
    fn default() -> Self {
        Self {
            builds: Counter::default(),
            refreshes: Counter::default(),
            unchanged: Counter::default(),
            // 1 ms to 16 s.
            build_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            // 50 µs to 1.6 s.
            refresh_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
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
            "endpoint_refreshes",
            "Plans made by refreshing the backends of the Services whose EndpointSlices changed, instead of a build",
            self.refreshes.clone(),
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
        sub.register(
            "endpoint_refresh_seconds",
            "Time to refresh a plan's backends after an EndpointSlice change",
            self.refresh_seconds.clone(),
        );
    }

    /// Plans built so far.
    pub fn builds(&self) -> u64 {
        self.builds.get()
    }

    /// Plans made by an endpoint refresh so far.
    pub fn refreshes(&self) -> u64 {
        self.refreshes.get()
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
/// Passes are coalesced: a change that arrives after a quiet spell is planned at once (a lone
/// endpoint change is not delayed), and changes that arrive soon after the last pass wait and
/// are planned together ([`due`]): a stream of watch events costs at most one full build per
/// `coalesce`. A batch that changes nothing the plan reads (a status-only update, a resync, the
/// echo of our own status write) plans nothing; one confined to EndpointSlices refreshes the
/// last plan instead of building one. Planning runs on a thread of its own
/// ([`plan_off_runtime`]).
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
    let planner = match Planner::start() {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("starting the planning thread: {e}; the control loop stops");
            return;
        }
    };
    let mut idle = tokio::time::interval(HEARTBEAT_EVERY);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut index = Index::new();
    let mut current: Option<Arc<Plan>> = None;
    // A closed port watch (tests, or a failed scanner) keeps the last ports it sent.
    let mut ports_open = true;
    let mut sources_open = true;
    // When the last build and the last endpoint refresh started, and the CPU time the refresh
    // took.
    let mut last_build: Option<Instant> = None;
    let mut last_refresh: Option<(Instant, Duration)> = None;
    config.node_ports = node_ports.borrow_and_update().clone();
    // Endpoint changes whose refresh was declined inside the build window: they wait for it
    // as any change that needs a build.
    let mut declined: Option<Changes> = None;
    loop {
        heartbeat.beat();
        if !sources_open {
            return;
        }
        let mut changes = declined.take().unwrap_or_default();
        if !changes.any() {
            // Waits for the first change of the next pass.
            tokio::select! {
                _ = idle.tick() => continue,
                batch = updates.recv() => match batch {
                    Some(batch) => apply(&mut index, batch, &mut changes),
                    None => return,
                },
                r = node_ports.changed(), if ports_open => {
                    if r.is_err() {
                        ports_open = false;
                        continue;
                    }
                    config.node_ports = node_ports.borrow_and_update().clone();
                    // Nothing planned yet: the first batch builds with these ports.
                    changes.other |= current.is_some();
                }
            };
        }
        // Changes arriving within the window join this pass ([`due`]); a change other than an
        // endpoint one joining makes it the build's.
        while let Some(at) = due(&changes, coalesce, last_build, last_refresh) {
            tokio::select! {
                    _ = tokio::time::sleep_until(at) => break,
                    batch = updates.recv(), if sources_open => match batch {
                        Some(batch) => apply(&mut index, batch, &mut changes),
                        None => sources_open = false,
                    },
            }
        }
        // And whatever is already queued.
        while let Ok(batch) = updates.try_recv() {
            apply(&mut index, batch, &mut changes);
        }
        if current.is_none() {
            // The first batch always builds, even when it holds nothing (a source with no
            // objects yet): the actuators and /readyz wait for a first plan.
            changes.other = true;
        }
        if !changes.any() {
            metrics.unchanged.inc();
            continue;
        }
        let started = Instant::now();
        // A refresh that must build instead (a Service's endpoints went to none or came back)
        // builds now only if the window of the last build has passed.
        let may_build = changes.other || last_build.is_none_or(|t| Instant::now() >= t + coalesce);
        let planned = plan_off_runtime(
            &planner,
            index,
            config.clone(),
            current.clone(),
            changes,
            may_build,
            &metrics,
        )
        .await;
        let Planned {
            index: back,
            plan: next,
            same,
            refreshed,
            cpu,
        } = match planned {
            Some(Outcome::Planned(p)) => p,
            Some(Outcome::Declined {
                index: back,
                changes,
            }) => {
                index = back;
                declined = Some(changes);
                continue;
            }
            None => {
                // A panicking build took the index with it; the agent cannot go on planning.
                tracing::error!("plan build failed; the control loop stops");
                return;
            }
        };
        if refreshed {
            last_refresh = Some((started, cpu));
        } else {
            last_build = Some(started);
        }
        index = back;
        if same {
            continue;
        }
        for d in &next.diagnostics {
            tracing::warn!("plan: {d}");
        }
        tracing::debug!(
            refreshed,
            took = ?started.elapsed(),
            ?cpu,
            "plan published"
        );
        let next = Arc::new(next);
        current = Some(next.clone());
        // No receiver left only means nothing follows the plan any more.
        let _ = plans.send(Some(next));
    }
}

/// Until when `changes` wait for more (`None`: not at all). Changes that need a build wait
/// until `coalesce` after the last build started: at thousands of routes a build takes
/// hundreds of milliseconds, and a stream of changes makes at most one per `coalesce`.
/// EndpointSlice changes alone, which an endpoint refresh plans in about a millisecond, wait
/// four times the CPU time of the last refresh after it started (planning then takes at most a
/// fifth of a CPU while endpoints churn, and an endpoint change is live within milliseconds,
/// not a window, later). CPU time, not wall time: on a busy node the wall time includes the
/// wait for a core, so the pause would grow with the very load it does not add to (measured
/// at 10,000 routes while other Services churned: refreshes of 1 ms CPU took 3 to 8 ms of
/// wall time, and changes waited up to 32 ms for the next one).
fn due(
    changes: &Changes,
    coalesce: Duration,
    last_build: Option<Instant>,
    last_refresh: Option<(Instant, Duration)>,
) -> Option<Instant> {
    if changes.other {
        last_build.map(|t| t + coalesce)
    } else {
        last_refresh.map(|(t, took)| t + coalesce.min(took * 4))
    }
}

enum Outcome {
    Planned(Planned),
    /// The refresh needs a build, which may not run yet: the index back, and the changes, now
    /// marked as needing a build.
    Declined {
        index: Index,
        changes: Changes,
    },
}

/// What a planning pass gives back.
struct Planned {
    index: Index,
    plan: Plan,
    /// The plan equals the previous one but for its disruption figures.
    same: bool,
    /// It was an endpoint refresh, not a build.
    refreshed: bool,
    /// The CPU time of the pass (its thread's).
    cpu: Duration,
}

/// Plans on the planning thread ([`planner`]). A change confined to
/// EndpointSlices refreshes the backends of their Services in `previous`
/// ([`plan::refresh_endpoints`]) where it can; anything else builds, if `may_build`. `None`
/// when the build panicked.
async fn plan_off_runtime(
    planner: &Planner,
    index: Index,
    config: PlanConfig,
    previous: Option<Arc<Plan>>,
    changes: Changes,
    may_build: bool,
    metrics: &PlanMetrics,
) -> Option<Outcome> {
    let metrics = metrics.clone();
    planner
        .run(move || {
            let started = std::time::Instant::now();
            let cpu = ThreadCpu::start();
            if let Some(prev) = previous.as_deref()
                && !changes.other
                && let Some((plan, changed)) =
                    plan::refresh_endpoints(prev, &index, &config, &changes.endpoints_of)
            {
                metrics.refreshes.inc();
                metrics
                    .refresh_seconds
                    .observe(started.elapsed().as_secs_f64());
                return Outcome::Planned(Planned {
                    index,
                    plan,
                    same: !changed,
                    refreshed: true,
                    cpu: cpu.elapsed(),
                });
            }
            if !may_build {
                return Outcome::Declined {
                    index,
                    changes: Changes {
                        other: true,
                        ..changes
                    },
                };
            }
            metrics.builds.inc();
            let plan = plan::build(&index, &config, previous.as_deref());
            metrics
                .build_seconds
                .observe(started.elapsed().as_secs_f64());
            let same = previous
                .as_deref()
                .is_some_and(|c| c.same_except_disruption(&plan));
            Outcome::Planned(Planned {
                index,
                plan,
                same,
                refreshed: false,
                cpu: cpu.elapsed(),
            })
        })
        .await
}

/// Applies a batch, noting what changed.
fn apply(index: &mut Index, batch: Vec<Update>, changes: &mut Changes) {
    for u in batch {
        index.update_noting(u, changes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::LIVENESS_BOUND;

    /// The pause after a refresh follows the CPU it took, not the time it waited for a core.
    #[test]
    fn a_refresh_paces_by_its_cpu_time_not_its_wall_time() {
        let cpu = ThreadCpu::start();
        let wall = Instant::now();
        std::thread::sleep(Duration::from_millis(60));
        let (cpu, wall) = (cpu.elapsed(), wall.elapsed());
        assert!(wall >= Duration::from_millis(60));
        assert!(
            cpu < Duration::from_millis(20),
            "{cpu:?} of CPU while asleep"
        );
        let busy = ThreadCpu::start();
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(30) {
            std::hint::black_box(0u64);
        }
        assert!(
            busy.elapsed() >= Duration::from_millis(5),
            "{:?}",
            busy.elapsed()
        );
        let t = Instant::now();
        let changes = Changes {
            endpoints_of: [("ns".to_string(), "svc".to_string())].into(),
            ..Changes::default()
        };
        assert_eq!(
            due(&changes, DEFAULT_COALESCE, None, Some((t, cpu))),
            Some(t + cpu * 4)
        );
    }

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

    fn object(value: serde_json::Value) -> Update {
        match splitter_plan::model::parse::parse(value).expect("valid") {
            splitter_plan::model::parse::Parsed::Object(o) => Update::Apply(o),
            other => panic!("{other:?}"),
        }
    }

    fn slice(address: &str) -> Update {
        object(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [address]}],
        }))
    }

    /// A Gateway with two routes (the proxy serves it) to Service ns/web.
    fn served_web() -> Vec<Update> {
        let route = |name: &str, path: &str| {
            object(serde_json::json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "HTTPRoute",
                "metadata": {"name": name, "namespace": "ns"},
                "spec": {"parentRefs": [{"name": "gw"}], "rules": [{
                    "matches": [{"path": {"type": "PathPrefix", "value": path}}],
                    "backendRefs": [{"name": "web", "port": 80}]}]},
            }))
        };
        vec![
            class(1),
            object(serde_json::json!({
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "Gateway",
                "metadata": {"name": "gw", "namespace": "ns"},
                "spec": {"gatewayClassName": plan::listener::DEFAULT_GATEWAY_CLASS,
                         "listeners": [{"name": "http", "protocol": "HTTP", "port": 80}]},
            })),
            object(serde_json::json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "web", "namespace": "ns"},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
            })),
            route("a", "/a"),
            route("b", "/b"),
            slice("10.0.0.1"),
        ]
    }

    fn endpoints(plans: &watch::Receiver<Option<Arc<Plan>>>) -> Vec<String> {
        let plan = plans.borrow().clone().expect("a plan");
        plan.l7_listeners()
            .flat_map(|(_, t)| t.routes.clone())
            .flat_map(|r| r.backends.clone())
            .map(|b| format!("{:?}", b.target))
            .collect()
    }

    /// An EndpointSlice change refreshes the last plan (no build), and is not held for the
    /// window of the build before it.
    #[tokio::test(start_paused = true)]
    async fn an_endpoint_change_is_refreshed_at_once_not_built() {
        let mut h = start(Duration::from_secs(600));
        h.send(served_web()).await;
        h.next_plan().await;
        assert_eq!(h.metrics.builds(), 1);
        let sent = Instant::now();
        h.send(vec![slice("10.0.0.2")]).await;
        h.plans.changed().await.expect("a refreshed plan");
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "{:?}",
            sent.elapsed()
        );
        assert_eq!(
            endpoints(&h.plans),
            ["Endpoints([10.0.0.2:8080])", "Endpoints([10.0.0.2:8080])"]
        );
        assert_eq!((h.metrics.builds(), h.metrics.refreshes()), (1, 1));
        // As operators see it on /metrics.
        let mut registry = Registry::default();
        h.metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for line in [
            "splitter_plan_builds_total 1",
            "splitter_plan_endpoint_refreshes_total 1",
            "splitter_plan_endpoint_refresh_seconds_count 1",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        // No ready endpoint left changes what the proxy answers (503) and how the listener is
        // described: that is a build, and waits for the window of the last one like any.
        let built = Instant::now();
        h.send(vec![object(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "web-1", "namespace": "ns",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "endpoints": [],
        }))])
        .await;
        h.plans.changed().await.expect("a built plan");
        assert!(
            built.elapsed() >= Duration::from_secs(590),
            "{:?}",
            built.elapsed()
        );
        assert_eq!(endpoints(&h.plans), ["NoEndpoints", "NoEndpoints"]);
        assert_eq!((h.metrics.builds(), h.metrics.refreshes()), (2, 1));

        // Endpoints again: built too.
        h.send(vec![slice("10.0.0.3")]).await;
        h.plans.changed().await.expect("a built plan");
        assert_eq!((h.metrics.builds(), h.metrics.refreshes()), (3, 1));

        // Refreshes do not hold back a change that needs a build: its window counts from the
        // last build, long ago.
        tokio::time::sleep(Duration::from_secs(700)).await;
        h.send(vec![slice("10.0.0.4")]).await;
        h.plans.changed().await.expect("a refreshed plan");
        let sent = Instant::now();
        h.send(vec![class(5)]).await;
        assert_eq!(h.next_plan().await, ["splitter@5"]);
        assert!(
            sent.elapsed() < Duration::from_secs(1),
            "{:?}",
            sent.elapsed()
        );
        assert_eq!((h.metrics.builds(), h.metrics.refreshes()), (4, 2));
    }
}
