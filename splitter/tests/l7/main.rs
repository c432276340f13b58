//! The L7 proxy over real HTTP on loopback: the guide's journey, splits and error shares,
//! routing and filters, listeners, reloads under load, hostile clients, the admin endpoint, and
//! the agent's L7 half as a process. Unprivileged.

mod admin;
mod agent;
mod backend_protocol;
mod backends;
mod echo;
mod failures;
mod grpc;
mod hostile;
mod hygiene;
mod journey;
mod listeners;
mod manifests;
mod mirror;
mod passthrough;
mod reload;
mod routing;
mod split;
mod stalls;
mod support;
mod tls;
