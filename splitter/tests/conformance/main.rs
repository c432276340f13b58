//! A conformance-style suite: the upstream Gateway API v1.5.1 conformance manifests (read from
//! `../shared/conformance/`, never copied here) translated into files-mode manifests, planned as
//! the agent plans them and served by the real proxy on loopback (one test runs the agent
//! process itself), with echo pods that answer like the upstream echo server. Each test replays
//! an upstream test whose feature the project claims, with the upstream expectations and
//! comparison rules (`harness`). Unprivileged (as root, the agent process runs as `nobody`).

mod agent;
mod attach;
mod backend_protocol;
mod echo;
mod extended;
mod filters;
mod gateway;
mod grpcroute;
mod harness;
mod httproute;
mod tcp;
mod tlsroute;
