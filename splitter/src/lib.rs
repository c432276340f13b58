//! splitter: an eBPF/XDP-accelerated L4/L7 traffic splitter for the Kubernetes Gateway API.
//!
//! Data flows one way: source -> index -> plan -> actuators. This crate holds the agent: the
//! actuators under [`dataplane`], the node checks in [`doctor`]. The pure core (model, index,
//! plan, status patches) is the `splitter-plan` crate.

pub mod admin;
pub mod agent;
pub mod check;
pub mod control;
pub mod dataplane;
pub mod doctor;
pub mod echo;
pub mod echo_tls;
pub mod grpc_echo;
pub mod health;
pub mod heap;
pub mod inspect;
pub mod run;
pub mod signal;
pub mod source;
pub mod status;
