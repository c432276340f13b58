#![no_std]
// The programs live in the `splitter-ebpf` binary; this library target exists so that the agent can
// name this crate as a build-dependency and be rebuilt when it changes.
