//! The plan: a pure function from the index to what every actuator should do. No I/O here.

mod attach;
mod backends;
mod build;
mod gateways;
pub mod hostname;
pub mod l7;
pub mod l7_match;
pub mod listener;
pub mod maglev;
pub mod status;
mod table;

pub use build::build;
pub use listener::{
    L4Plan, ListenerKey, ListenerPlan, ListenerSource, Mode, Plan, PlanConfig, Transport,
};

use serde::Serialize;

/// A Kubernetes object by kind, namespace and name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}
