//! Status written back to Kubernetes: GatewayClass `Accepted`, Gateway and listener conditions
//! with addresses and attached routes, route `status.parents`.
//!
//! Deciding and writing are apart, as in linkerd's policy controller: [`splitter_plan::status::patches`]
//! is a pure function of the plan and the observed statuses; [`writer::run`] applies its output,
//! and only while [`lease`] says this agent is the elected writer.

pub mod agents;
pub mod lease;
pub mod writer;

pub use lease::{LeaseConfig, LeaseError};
pub use splitter_plan::status::{Observed, ObservedStatus, StatusContext, StatusPatch, patches};
pub use writer::{FIELD_MANAGER, StatusError, WriterConfig};
