//! The privileged test harness every kernel and end-to-end test uses.
//!
//! Everything it creates has a name unique to this process and call (tests run in parallel and
//! other processes share the machine), and everything is torn down in `Drop`, which also runs
//! while a failing test unwinds.

#[cfg(feature = "apiserver")]
pub mod apiserver;
mod bpffs;
mod child;
mod cluster_net;
mod gateway_net;
mod netns;
mod privilege;
mod whoami;

pub use bpffs::BpfFs;
pub use child::ChildGuard;
pub use cluster_net::{ClusterNet, ClusterPlan, Node, Pod, Routing};
pub use gateway_net::{AddressPlan, GatewayNet};
pub use netns::{NetNs, VethPair, unique_name};
pub use privilege::{is_root, require_root};
pub use whoami::{WhoamiReply, WhoamiServer, ask_whoami};
