//! Deciding whether privileged tests run.

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Whether a privileged test should run. Not root: prints why and returns false, so a developer
/// without root still gets a green unprivileged run. Under CI (`CI` set) not being root is an
/// error: the privileged tests must run there, so this panics instead of skipping.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: privileged test cannot run: not root, and CI must run it");
    }
    eprintln!("skipped {test}: needs root (CAP_BPF, CAP_NET_ADMIN)");
    false
}
