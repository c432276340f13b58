//! The plan: a pure function from the index to what every actuator should do. No I/O here.

pub mod applied;
mod attach;
mod backends;
mod build;
mod gateway_status;
mod gateways;
pub mod hostname;
pub mod l7;
pub mod l7_cors;
pub mod l7_filters;
pub mod l7_match;
pub mod listener;
pub mod maglev;
pub mod node_ports;
pub mod passthrough;
mod refresh;
pub mod status;
mod table;
pub mod tls;

pub use crate::model::ObjectKey;
pub use build::build;
pub use listener::{
    DataplaneListener, L4Plan, ListenerKey, ListenerPlan, ListenerSource, Mode, Plan, PlanConfig,
    Transport,
};
pub use refresh::refresh_endpoints;
