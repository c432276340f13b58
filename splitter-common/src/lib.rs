//! The kernel/user ABI of splitter, written down once.
//!
//! Everything a map holds is `#[repr(C)]` with explicit padding and only integer fields, so the
//! kernel program (built for `bpfel-unknown-none`) and the agent agree byte for byte, and BTF gives
//! `bpftool map dump` named fields. With the `user` feature the types implement `aya::Pod`.
#![no_std]

pub mod counters;
pub mod csum;
pub mod hash;
pub mod l4;
pub mod maps;
pub mod pin;

pub use counters::{DestKey, DestStats, ParseOutcome};
