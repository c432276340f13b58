//! The privileged test harness every kernel and end-to-end test uses.
//!
//! Everything it creates has a name unique to this process and call (tests run in parallel and
//! other processes share the machine), and everything is torn down in `Drop`, which also runs
//! while a failing test unwinds.

mod bpffs;
mod child;
mod gateway_net;
mod netns;
mod privilege;

pub use bpffs::BpfFs;
pub use child::ChildGuard;
pub use gateway_net::{AddressPlan, GatewayNet};
pub use netns::{NetNs, VethPair, unique_name};
pub use privilege::{is_root, require_root};
