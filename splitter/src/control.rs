//! The control loop: source updates -> index -> plan, published as immutable snapshots.
//!
//! Sources send batches of [`Update`]s; each batch is applied to the index and a new plan is
//! built (with the previous one, for the L4 disruption figures) and published on a `watch`
//! channel, which the actuators (`agent::run_l7`, the eBPF table writer, the status writer)
//! follow. Deciding stays in `plan`; nothing here writes anywhere but the channel.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use splitter_plan::{
    model::{Index, index::Update},
    plan::{self, ListenerPlan, Plan, PlanConfig, node_ports::NodePorts},
};

/// Applies every batch from `updates` and publishes the resulting plan on `plans`, until the
/// update senders are gone; a change of the node's ports (`node_ports`, which listeners on the
/// node's addresses must leave alone) rebuilds the plan too. Plans are only published when they
/// differ from the last one.
pub async fn run(
    mut updates: mpsc::Receiver<Vec<Update>>,
    mut config: PlanConfig,
    plans: watch::Sender<Option<Arc<Plan>>>,
    mut node_ports: watch::Receiver<NodePorts>,
) {
    let mut index = Index::new();
    let mut current: Option<Arc<Plan>> = None;
    // A closed port watch (tests, or a failed scanner) keeps the last ports it sent.
    let mut ports_open = true;
    config.node_ports = node_ports.borrow_and_update().clone();
    loop {
        tokio::select! {
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
