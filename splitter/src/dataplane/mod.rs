//! Actuators: the parts that touch the kernel or the network.

pub mod ebpf;
pub mod proxy;
