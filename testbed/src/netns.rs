//! Named network namespaces and veth pairs, made with iproute2.

use std::{
    fs::File,
    io,
    os::{fd::AsFd, unix::process::CommandExt},
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use nix::sched::{CloneFlags, setns};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call, at most 15 bytes (IFNAMSIZ - 1), so it also fits an
/// interface name: `<prefix up to 4><pid base36><counter base36>`.
pub fn unique_name(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let prefix: String = prefix.chars().take(4).collect();
    format!("{prefix}{}x{}", base36(std::process::id()), base36(n))
}

fn base36(mut n: u32) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii digits")
}

pub(crate) fn run_checked(cmd: &mut Command) -> io::Result<Output> {
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

/// A network namespace, deleted (with every interface in it) on drop. `lo` is up.
pub struct NetNs {
    name: String,
    file: File,
}

impl NetNs {
    pub fn new(prefix: &str) -> io::Result<Self> {
        let name = unique_name(prefix);
        run_checked(Command::new("ip").args(["netns", "add", &name]))?;
        // Constructed before anything else can fail, so Drop removes the namespace.
        let file = match File::open(format!("/run/netns/{name}")) {
            Ok(f) => f,
            Err(e) => {
                let _ = Command::new("ip").args(["netns", "del", &name]).output();
                return Err(e);
            }
        };
        let ns = NetNs { name, file };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> args...`, failing with its stderr.
    pub fn ip(&self, args: &[&str]) -> io::Result<Output> {
        run_checked(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// A command that will run inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let fd = self.file.try_clone().expect("dup netns fd");
        // SAFETY: setns is async-signal-safe; the closure allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                setns(fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)
            });
        }
        cmd
    }

    /// Runs a command inside the namespace and fails with its stderr on a non-zero exit.
    pub fn exec(&self, program: &str, args: &[&str]) -> io::Result<Output> {
        run_checked(self.command(program).args(args))
    }

    /// Runs `f` on a fresh thread that has joined this namespace (network namespaces are per
    /// thread), and returns its result. A panic in `f` is resumed on the caller.
    pub fn run<F, R>(&self, f: F) -> R
    where
        F: FnOnce() -> R + Send,
        R: Send,
    {
        std::thread::scope(|s| {
            let handle = s.spawn(|| {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns into test netns");
                f()
            });
            match handle.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }
}

impl NetNs {
    /// Spawns a detached thread inside this namespace (for servers that outlive one call).
    /// The namespace file stays open in the thread, so the namespace lives as long as it runs.
    pub fn spawn<F>(&self, f: F) -> std::thread::JoinHandle<()>
    where
        F: FnOnce() + Send + 'static,
    {
        let file = self.file.try_clone().expect("dup netns fd");
        std::thread::spawn(move || {
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET).expect("setns into test netns");
            f()
        })
    }

    /// Writes a sysctl of this namespace (e.g. `net/ipv4/ip_forward`).
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let path = format!("/proc/sys/{key}");
        let value = value.to_owned();
        self.run(move || std::fs::write(&path, value))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        match Command::new("ip")
            .args(["netns", "del", &self.name])
            .output()
        {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "testbed: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("testbed: ip netns del {}: {e}", self.name),
        }
    }
}

/// A veth pair with one end in each namespace, addressed and up. Removed with its namespaces.
pub struct VethPair {
    pub a: String,
    pub b: String,
}

impl VethPair {
    /// Links `ns_a` and `ns_b`; `addr_a`/`addr_b` are CIDRs such as `10.200.0.1/24` or
    /// `fd00::1/64` (IPv6 addresses are added without DAD so they are usable at once).
    pub fn new(ns_a: &NetNs, addr_a: &[&str], ns_b: &NetNs, addr_b: &[&str]) -> io::Result<Self> {
        let a = unique_name("va");
        let b = unique_name("vb");
        run_checked(Command::new("ip").args([
            "link",
            "add",
            &a,
            "netns",
            ns_a.name(),
            "type",
            "veth",
            "peer",
            "name",
            &b,
            "netns",
            ns_b.name(),
        ]))?;
        for (ns, dev, addrs) in [(ns_a, &a, addr_a), (ns_b, &b, addr_b)] {
            for addr in addrs {
                let mut args = vec!["addr", "add", addr, "dev", dev.as_str()];
                if addr.contains(':') {
                    args.push("nodad");
                }
                ns.ip(&args)?;
            }
            ns.ip(&["link", "set", dev, "up"])?;
        }
        Ok(VethPair { a, b })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_fit_an_interface_name() {
        let a = unique_name("spl");
        let b = unique_name("spl");
        assert_ne!(a, b);
        assert!(a.len() <= 15, "{a}");
        assert!(unique_name("longprefix").starts_with("long"));
    }

    #[test]
    fn base36_digits() {
        assert_eq!(base36(0), "0");
        assert_eq!(base36(35), "z");
        assert_eq!(base36(36), "10");
    }
}
