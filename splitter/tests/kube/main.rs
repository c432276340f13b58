//! The Kubernetes source and status writer against a scripted mock API (tower-test) and a
//! stateful one (hyper on loopback).

mod source;
mod stateful;
mod status;
mod support;

// The stateful mock lives in testbed, so that `cargo xtask bench scale` serves the agent from it
// too.
use testbed::apiserver;
