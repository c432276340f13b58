//! The control loop: source updates -> index -> plan, published as immutable snapshots.
//!
//! Sources send batches of [`Update`]s; each batch is applied to the index and a new plan is
//! built (with the previous one, for the L4 disruption figures) and published on a `watch`
//! channel, which the actuators (`agent::run_l7`, the eBPF table writer, the status writer)
//! follow. Deciding stays in `plan`; nothing here writes anywhere but the channel.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use crate::health::{HEARTBEAT_EVERY, Heartbeat};

use splitter_plan::{
    model::{Index, index::Update},
    plan::{self, ListenerPlan, Plan, PlanConfig, node_ports::NodePorts},
};

/// Applies every batch from `updates` and publishes the resulting plan on `plans`, until the
/// update senders are gone; a change of the node's ports (`node_ports`, which listeners on the
/// node's addresses must leave alone) rebuilds the plan too. Plans are only published when they
/// differ from the last one. `heartbeat` beats after every pass and every [`HEARTBEAT_EVERY`]
/// while idle: `/healthz` fails when it stops.
pub async fn run(
    mut updates: mpsc::Receiver<Vec<Update>>,
    mut config: PlanConfig,
    plans: watch::Sender<Option<Arc<Plan>>>,
    mut node_ports: watch::Receiver<NodePorts>,
    heartbeat: Heartbeat,
) {
    heartbeat.beat();
    let mut idle = tokio::time::interval(HEARTBEAT_EVERY);
    idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut index = Index::new();
    let mut current: Option<Arc<Plan>> = None;
    // A closed port watch (tests, or a failed scanner) keeps the last ports it sent.
    let mut ports_open = true;
    config.node_ports = node_ports.borrow_and_update().clone();
    loop {
        heartbeat.beat();
        tokio::select! {
            _ = idle.tick() => continue,
            batch = updates.recv() => {
                let Some(batch) = batch else { return };
                for u in batch {
                    index.update(u);
                }
            }
            changed = node_ports.changed(), if ports_open => {
                if changed.is_err() {
                    ports_open = false;
                    continue;
                }
                config.node_ports = node_ports.borrow_and_update().clone();
                if current.is_none() {
                    // Nothing planned yet: the first batch builds with these ports.
                    continue;
                }
            }
        }
        let next = plan::build(&index, &config, current.as_deref());
        for d in &next.diagnostics {
            tracing::warn!("plan: {d}");
        }
        if current
            .as_deref()
            .is_some_and(|c| same_except_disruption(c, &next))
        {
            continue;
        }
        let next = Arc::new(next);
        current = Some(next.clone());
        // No receiver left only means nothing follows the plan any more.
        let _ = plans.send(Some(next));
    }
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
            heartbeat.clone(),
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
}
