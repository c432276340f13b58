//! Where objects come from. Every source ends in the same [`Update`]s on the index, so the
//! index and the plan never know whether an object came from a file or from the API server.
//!
//! [`Update`]: splitter_plan::model::index::Update

pub mod file;
pub mod kube;
mod watch;

pub use file::{FileSource, LoadReport, SourceError};
pub use watch::{DEFAULT_POLL_INTERVAL, watch};
