//! The Kubernetes source and status writer against a scripted mock API (tower-test) and a
//! stateful one (hyper on loopback).

mod apiserver;
mod source;
mod stateful;
mod status;
mod support;
