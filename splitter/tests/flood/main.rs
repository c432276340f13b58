//! Floods against the kernel data path, privileged (root; CI runs them). A test binary of its
//! own: a flood keeps both CPUs of a small machine busy for seconds, and test binaries run one
//! after another, so no other test's timeouts share the machine with it.

mod l4_flood_netns;
mod spoof;
