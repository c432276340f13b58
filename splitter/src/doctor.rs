//! `splitter doctor`: can this node run the agent? Each check is one pass/fail line.

use std::{fmt, path::Path};

use crate::dataplane::ebpf;

/// Oldest kernel with everything the data path uses: `bpf_redirect_neigh` (5.10, the newest
/// helper the programs call), bpf_link for XDP (5.9), BTF-defined maps. tcx (6.6) is optional:
/// without it TC attaches through clsact + netlink.
pub const MIN_KERNEL: (u32, u32) = (5, 10);

/// The helpers the programs call, with the kernel that added each. The verifier refuses a
/// program that calls a helper the kernel lacks, so a passing `load` proves them all.
pub const HELPERS: &[(&str, (u32, u32))] = &[
    ("bpf_redirect_neigh", (5, 10)),
    ("bpf_fib_lookup", (4, 18)),
    ("bpf_xdp_adjust_tail", (4, 18)),
    ("bpf_xdp_adjust_meta", (4, 15)),
    ("bpf_skb_pull_data", (4, 9)),
    ("bpf_redirect", (4, 4)),
    ("bpf_skb_store_bytes", (4, 1)),
    ("bpf_l3_csum_replace", (4, 1)),
    ("bpf_l4_csum_replace", (4, 1)),
];

/// Where tcx arrived.
pub const TCX_KERNEL: (u32, u32) = (6, 6);

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.ok { "PASS" } else { "FAIL" };
        write!(f, "{verdict} {:<12} {}", self.name, self.detail)
    }
}

fn check(name: &'static str, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name,
        ok,
        detail: detail.into(),
    }
}

/// Parses "6.18.44-fc-v657" into (6, 18).
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Effective capability set from a `/proc/<pid>/status` text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// Whether `mountinfo`-style `/proc/mounts` text has a bpf filesystem at or above `path`.
pub fn bpffs_mounted_at(mounts: &str, path: &Path) -> Option<String> {
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _dev = f.next()?;
            let mount_point = f.next()?;
            let fs_type = f.next()?;
            (fs_type == "bpf").then(|| mount_point.to_owned())
        })
        .filter(|mp| path.starts_with(mp))
        .max_by_key(|mp| mp.len())
}

fn kernel_check() -> Check {
    let uts = nix::sys::utsname::uname();
    let release = match uts {
        Ok(u) => u.release().to_string_lossy().into_owned(),
        Err(e) => return check("kernel", false, format!("uname failed: {e}")),
    };
    match parse_kernel_release(&release) {
        Some(v) if v >= MIN_KERNEL => check(
            "kernel",
            true,
            format!("{release} (>= {}.{} needed)", MIN_KERNEL.0, MIN_KERNEL.1),
        ),
        Some(_) => check(
            "kernel",
            false,
            format!("{release} is older than {}.{}", MIN_KERNEL.0, MIN_KERNEL.1),
        ),
        None => check(
            "kernel",
            false,
            format!("cannot read version from {release:?}"),
        ),
    }
}

fn btf_check() -> Check {
    let path = Path::new("/sys/kernel/btf/vmlinux");
    if path.exists() {
        check("btf", true, format!("{} present", path.display()))
    } else {
        check(
            "btf",
            false,
            format!(
                "{} missing: kernel built without CONFIG_DEBUG_INFO_BTF",
                path.display()
            ),
        )
    }
}

fn bpffs_check(pin_dir: &Path) -> Check {
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    match bpffs_mounted_at(&mounts, pin_dir) {
        Some(mp) => check(
            "bpffs",
            true,
            format!("bpf filesystem at {mp} (pins under {})", pin_dir.display()),
        ),
        None => check(
            "bpffs",
            false,
            format!(
                "no bpf filesystem above {}: mount -t bpf bpf /sys/fs/bpf",
                pin_dir.display()
            ),
        ),
    }
}

fn caps_check() -> Check {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(eff) = parse_cap_eff(&status) else {
        return check(
            "capabilities",
            false,
            "cannot read CapEff from /proc/self/status",
        );
    };
    let has = |bit: u32| eff & (1u64 << bit) != 0;
    let named = [
        ("CAP_BPF", CAP_BPF),
        ("CAP_NET_ADMIN", CAP_NET_ADMIN),
        ("CAP_PERFMON", CAP_PERFMON),
        ("CAP_SYS_ADMIN", CAP_SYS_ADMIN),
    ];
    let held: Vec<&str> = named
        .iter()
        .filter(|(_, b)| has(*b))
        .map(|(n, _)| *n)
        .collect();
    let missing: Vec<&str> = named
        .iter()
        .filter(|(_, b)| !has(*b))
        .map(|(n, _)| *n)
        .collect();
    // CAP_SYS_ADMIN implies the BPF and perfmon powers on kernels that predate CAP_BPF.
    let ok = has(CAP_NET_ADMIN) && (has(CAP_BPF) || has(CAP_SYS_ADMIN));
    let detail = if missing.is_empty() {
        format!("held: {}", held.join(", "))
    } else {
        format!("held: {}; missing: {}", held.join(", "), missing.join(", "))
    };
    check("capabilities", ok, detail)
}

fn kernel_version() -> Option<(u32, u32)> {
    let uts = nix::sys::utsname::uname().ok()?;
    parse_kernel_release(&uts.release().to_string_lossy())
}

/// Which helpers the kernel may lack, by version (the `load` check has the last word).
fn helpers_check(kernel: Option<(u32, u32)>, loaded: bool) -> Check {
    let names: Vec<String> = HELPERS
        .iter()
        .map(|(n, (a, b))| format!("{n} ({a}.{b})"))
        .collect();
    let missing: Vec<&str> = match kernel {
        Some(v) => HELPERS
            .iter()
            .filter(|(_, need)| v < *need)
            .map(|(n, _)| *n)
            .collect(),
        None => Vec::new(),
    };
    if loaded {
        check(
            "helpers",
            true,
            format!(
                "{}: the verifier accepted the programs that call them",
                names.join(", ")
            ),
        )
    } else if !missing.is_empty() {
        check(
            "helpers",
            false,
            format!("this kernel predates {}", missing.join(", ")),
        )
    } else {
        check(
            "helpers",
            false,
            format!(
                "{}: not proven, the programs did not load",
                names.join(", ")
            ),
        )
    }
}

/// Which TC attachment `splitter run --tc-attach MODE` will use here.
fn tc_check(kernel: Option<(u32, u32)>, mode: ebpf::TcAttachMode) -> Check {
    let tcx = kernel.is_some_and(|v| v >= TCX_KERNEL);
    let (a, b) = TCX_KERNEL;
    let tcx_line = "tcx links, pinned and replaced atomically when the agent restarts";
    let netlink_line = "clsact + netlink filters, re-attached at every agent start";
    match (mode, tcx) {
        (ebpf::TcAttachMode::Tcx, false) => check(
            "tc",
            false,
            format!("--tc-attach tcx needs kernel {a}.{b}+; use auto or netlink"),
        ),
        (ebpf::TcAttachMode::Netlink, _) => {
            check("tc", true, format!("{netlink_line} (--tc-attach netlink)"))
        }
        (_, true) => check("tc", true, format!("{tcx_line} (kernel {a}.{b}+)")),
        (_, false) => check(
            "tc",
            true,
            format!("{netlink_line} (no tcx before {a}.{b})"),
        ),
    }
}

/// Runs every check. With `iface`, also attaches the XDP program there (driver mode, falling back
/// to generic) and detaches it again, unless the agent's own pinned link is there already.
pub fn run(iface: Option<&str>, pin_dir: &Path, tc_mode: ebpf::TcAttachMode) -> Vec<Check> {
    let kernel = kernel_version();
    let mut checks = vec![
        kernel_check(),
        btf_check(),
        bpffs_check(pin_dir),
        caps_check(),
    ];
    let loaded = ebpf::load_object(None);
    checks.push(helpers_check(kernel, loaded.is_ok()));
    checks.push(tc_check(kernel, tc_mode));
    match loaded {
        Ok(mut obj) => {
            checks.push(check(
                "load",
                true,
                format!(
                    "{}, {} and {} passed the verifier",
                    splitter_common::maps::XDP_PROGRAM,
                    splitter_common::l4::TC_PROGRAM,
                    splitter_common::l4::TC_INGRESS_PROGRAM
                ),
            ));
            if let Some(iface) = iface {
                checks.push(attach_check(&mut obj, iface, pin_dir));
                checks.push(tc_attach_check(&mut obj, iface, kernel, tc_mode));
            }
        }
        Err(e) => {
            checks.push(check("load", false, format!("{e:#}")));
            if let Some(iface) = iface {
                checks.push(check(
                    "xdp",
                    false,
                    format!("{iface}: not tried, the program did not load"),
                ));
            }
        }
    }
    checks
}

/// Attaches both TC programs to `iface` the way `run` would (tcx after the programs already
/// there, or clsact + netlink filters) and detaches them again.
fn tc_attach_check(
    obj: &mut ebpf::KernelObject,
    iface: &str,
    kernel: Option<(u32, u32)>,
    mode: ebpf::TcAttachMode,
) -> Check {
    use aya::programs::{
        LinkOrder, TcAttachType,
        tc::{self, NlOptions, TcAttachOptions},
    };
    let tcx = match mode {
        ebpf::TcAttachMode::Netlink => false,
        ebpf::TcAttachMode::Tcx => true,
        ebpf::TcAttachMode::Auto => kernel.is_some_and(|v| v >= TCX_KERNEL),
    };
    let how = if tcx { "tcx" } else { "clsact + netlink" };
    if !tcx {
        // EEXIST: the qdisc is there already.
        let _ = tc::qdisc_add_clsact(iface);
    }
    for (direction, what) in [
        (TcAttachType::Egress, "egress"),
        (TcAttachType::Ingress, "ingress"),
    ] {
        let prog = match direction {
            TcAttachType::Ingress => ebpf::tc_ingress_program(&mut obj.ebpf),
            _ => ebpf::tc_program(&mut obj.ebpf),
        };
        let prog = match prog {
            Ok(p) => p,
            Err(e) => return check("tc-attach", false, format!("{e}")),
        };
        let options = if tcx {
            TcAttachOptions::TcxOrder(LinkOrder::default())
        } else {
            TcAttachOptions::Netlink(NlOptions::default())
        };
        match prog.attach_with_options(iface, direction, options) {
            Ok(link) => {
                if let Err(e) = prog.detach(link) {
                    return check(
                        "tc-attach",
                        false,
                        format!("{iface}: {what} attached ({how}) but detach FAILED: {e}"),
                    );
                }
            }
            Err(e) => {
                return check(
                    "tc-attach",
                    false,
                    format!("{iface}: {what} through {how}: {e}"),
                );
            }
        }
    }
    check(
        "tc-attach",
        true,
        format!("{iface}: egress and ingress attached through {how}, detached again"),
    )
}

fn attach_check(obj: &mut ebpf::KernelObject, iface: &str, pin_dir: &Path) -> Check {
    let ours = ebpf::xdp_pin_path(&pin_dir.join("links"), iface);
    if ours.exists() {
        return check(
            "xdp",
            true,
            format!(
                "{iface}: runs the agent's programs (pinned link {})",
                ours.display()
            ),
        );
    }
    match ebpf::attach_xdp(obj, iface) {
        Ok((link, mode)) => {
            let detached = ebpf::xdp_program(&mut obj.ebpf)
                .ok()
                .map(|p| p.detach(link).is_ok())
                .unwrap_or(false);
            let mode = match mode {
                aya::programs::XdpMode::Driver => "driver (native) mode",
                _ => "generic (skb) mode; the driver has no native XDP",
            };
            let tail = if detached {
                "detached again"
            } else {
                "detach FAILED"
            };
            check(
                "xdp",
                detached,
                format!("{iface}: attached in {mode}, {tail}"),
            )
        }
        Err(ebpf::EbpfLoadError::Attach { source, .. }) if ebpf::is_occupied(&source) => check(
            "xdp",
            false,
            format!(
                "{iface} already has an XDP program this agent does not own (`bpftool net show \
                 dev {iface}` names it); the agent will not replace it"
            ),
        ),
        Err(e) => check("xdp", false, format!("{e}")),
    }
}

#[cfg(test)]
mod tests {
    use splitter_common::pin::DEFAULT_PIN_DIR;

    use super::*;

    #[test]
    fn kernel_release_versions() {
        assert_eq!(parse_kernel_release("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(parse_kernel_release("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(parse_kernel_release("garbage"), None);
    }

    #[test]
    fn the_tc_mode_follows_the_kernel_and_the_flag() {
        use ebpf::TcAttachMode::{Auto, Netlink, Tcx};
        let tc = |k, m| {
            let c = tc_check(Some(k), m);
            (c.ok, c.detail)
        };
        assert!(tc((6, 6), Auto).1.starts_with("tcx links"));
        assert!(tc((6, 1), Auto).1.contains("netlink filters"));
        assert!(tc((5, 10), Auto).0);
        assert!(tc((6, 18), Netlink).1.contains("netlink filters"));
        assert!(!tc((6, 1), Tcx).0, "tcx forced where there is none");
        assert!(tc((6, 6), Tcx).0);
    }

    #[test]
    fn helpers_older_than_the_kernel_are_named() {
        let c = helpers_check(Some((5, 4)), false);
        assert!(!c.ok);
        assert_eq!(c.detail, "this kernel predates bpf_redirect_neigh");
        let c = helpers_check(Some((5, 10)), true);
        assert!(
            c.ok && c.detail.contains("bpf_redirect_neigh (5.10)"),
            "{c}"
        );
        assert!(
            HELPERS.iter().all(|(_, v)| *v <= MIN_KERNEL),
            "the floor covers every helper"
        );
    }

    #[test]
    fn cap_eff_parsing() {
        let status = "Name:\tx\nCapEff:\t000001ffffffffff\n";
        assert_eq!(parse_cap_eff(status), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_eff("Name: x\n"), None);
    }

    #[test]
    fn bpffs_is_found_above_pin_dir() {
        let mounts = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw 0 0\n";
        assert_eq!(
            bpffs_mounted_at(mounts, Path::new(DEFAULT_PIN_DIR)).as_deref(),
            Some("/sys/fs/bpf")
        );
        assert_eq!(bpffs_mounted_at(mounts, Path::new("/tmp/x")), None);
        assert_eq!(
            bpffs_mounted_at("sysfs /sys sysfs rw 0 0\n", Path::new("/sys/fs/bpf")),
            None
        );
    }
}
