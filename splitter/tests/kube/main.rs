//! The Kubernetes source and status writer against a scripted mock API (tower-test).

mod source;
mod status;
mod support;
