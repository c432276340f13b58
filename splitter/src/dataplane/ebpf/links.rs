//! Pinned attachments: the XDP and TC programs stay attached when the agent exits, and a new
//! agent swaps its programs in atomically (`bpf_link_update`) instead of detaching and
//! reattaching, so packets never meet an interface without the data path.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::programs::{
    LinkOrder, ProgramError, TcAttachType, XdpMode,
    links::{FdLink, LinkError, PinnedLink},
    tc::{self, NlOptions, TcAttachOptions},
};
use splitter_common::l4::{TC_INGRESS_PROGRAM, TC_PROGRAM};

use super::{EbpfLoadError, KernelObject, tc_ingress_program, tc_program, xdp_program};

/// Which XDP mode to attach in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum XdpAttachMode {
    /// Native (driver) mode where the driver supports it, generic (skb) mode otherwise.
    #[default]
    Auto,
    Driver,
    Generic,
}

/// How the TC programs attach (`--tc-attach`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TcAttachMode {
    /// tcx links (kernel 6.6+), pinned; clsact + netlink filters when tcx is missing.
    #[default]
    Auto,
    /// tcx links only: fail where the kernel has no tcx.
    Tcx,
    /// clsact + netlink filters, as kernels before 6.6 need. They are no bpf_link and cannot be
    /// pinned: the agent replaces them at every start (a short gap without our TC programs) and
    /// records the interface under `links/` so `splitter detach` finds them.
    Netlink,
}

/// How an interface got its programs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// First attach, in this XDP mode.
    New(XdpMode),
    /// A pinned link from an earlier agent now runs this agent's programs.
    Replaced,
}

#[derive(Debug, thiserror::Error)]
pub enum LinkPinError {
    #[error(transparent)]
    Load(#[from] EbpfLoadError),
    #[error("{what} on {iface}: {source}")]
    Program {
        what: &'static str,
        iface: String,
        source: ProgramError,
    },
    #[error("{what} on {iface}: {source}")]
    Link {
        what: &'static str,
        iface: String,
        source: LinkError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("creating {path}: {source}")]
    Dir { path: PathBuf, source: io::Error },
    #[error(
        "{iface} already has an XDP program this agent does not own (`bpftool net show dev \
         {iface}` names it); not replacing it: remove it, or run the agent on another interface"
    )]
    ForeignXdp { iface: String },
    #[error("removing the netlink TC filters an earlier agent left on {iface}: {source}")]
    StaleNetlink { iface: String, source: io::Error },
    #[error("TC {direction} on {iface} through netlink (clsact): {source}")]
    Netlink {
        direction: &'static str,
        iface: String,
        source: ProgramError,
    },
}

/// Whether an XDP attach failed because the interface already has a program: the kernel
/// refuses a second one, so nothing is ever replaced silently. From the 5.10 floor on, XDP
/// attaches through bpf_link_create (5.9), which answers EBUSY (EEXIST: the other mode's
/// program is there); aya's netlink fallback, for kernels without XDP links, is never taken.
pub fn is_occupied(e: &ProgramError) -> bool {
    matches!(
        e,
        ProgramError::SyscallError(s)
            if matches!(s.io_error.raw_os_error(), Some(libc::EBUSY) | Some(libc::EEXIST))
    )
}

/// A pinned link whose device was deleted: the kernel keeps the link, detached, and refuses to
/// update it (`ENOLINK`). Its pin is stale; a fresh attachment replaces it.
fn is_defunct(e: &ProgramError) -> bool {
    matches!(
        e,
        ProgramError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::ENOLINK)
    )
}

/// Removes a stale pin (see [`is_defunct`]).
fn unpin_defunct(path: &Path, iface: &str) -> Result<(), LinkPinError> {
    tracing::info!(%iface, pin = %path.display(), "pinned link outlived its device: attaching afresh");
    std::fs::remove_file(path).map_err(|source| LinkPinError::Dir {
        path: path.to_owned(),
        source,
    })
}

pub fn xdp_pin_path(link_dir: &Path, iface: &str) -> PathBuf {
    link_dir.join(format!("xdp-{iface}"))
}

pub fn tc_pin_path(link_dir: &Path, iface: &str) -> PathBuf {
    link_dir.join(format!("tc-egress-{iface}"))
}

pub fn tc_ingress_pin_path(link_dir: &Path, iface: &str) -> PathBuf {
    link_dir.join(format!("tc-ingress-{iface}"))
}

/// The record of netlink TC filters on `iface`: an empty directory (a bpf filesystem holds
/// no regular files), so `splitter detach --all` knows where they are.
pub fn tc_netlink_record_path(link_dir: &Path, iface: &str) -> PathBuf {
    link_dir.join(format!("tc-netlink-{iface}"))
}

fn existing(path: &Path) -> Result<Option<PinnedLink>, LinkError> {
    match PinnedLink::from_pin(path) {
        Ok(l) => Ok(Some(l)),
        Err(LinkError::SyscallError(e)) if e.io_error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Attaches XDP ingress and TC egress on `iface`, pinning both links under `link_dir`, or takes
/// over the links an earlier agent pinned there.
pub fn attach_pinned(
    obj: &mut KernelObject,
    iface: &str,
    link_dir: &Path,
    mode: XdpAttachMode,
    tc_mode: TcAttachMode,
) -> Result<Attachment, LinkPinError> {
    std::fs::create_dir_all(link_dir).map_err(|source| LinkPinError::Dir {
        path: link_dir.to_owned(),
        source,
    })?;
    let xdp_path = xdp_pin_path(link_dir, iface);
    let link_err = |what| {
        move |source| LinkPinError::Link {
            what,
            iface: iface.to_owned(),
            source,
        }
    };
    let prog_err = |what| {
        move |source| LinkPinError::Program {
            what,
            iface: iface.to_owned(),
            source,
        }
    };

    let xdp = xdp_program(&mut obj.ebpf)?;
    let adopted = match existing(&xdp_path).map_err(link_err("reading pinned XDP link"))? {
        Some(old) => {
            let link = FdLink::from(old)
                .try_into()
                .map_err(link_err("adopting XDP link"))?;
            match xdp.attach_to_link(link) {
                Ok(_) => true,
                Err(e) if is_defunct(&e) => {
                    unpin_defunct(&xdp_path, iface)?;
                    false
                }
                Err(e) => return Err(prog_err("replacing XDP program")(e)),
            }
        }
        None => false,
    };
    let attachment = if adopted {
        Attachment::Replaced
    } else {
        {
            let first = match mode {
                XdpAttachMode::Generic => XdpMode::Skb,
                XdpAttachMode::Auto | XdpAttachMode::Driver => XdpMode::Driver,
            };
            let foreign = |e: ProgramError| {
                if is_occupied(&e) {
                    LinkPinError::ForeignXdp {
                        iface: iface.to_owned(),
                    }
                } else {
                    prog_err("attaching XDP")(e)
                }
            };
            let (id, mode) = match (xdp.attach(iface, first), mode) {
                (Ok(id), _) => (id, first),
                // Another program there makes generic mode fail the same way: say so.
                (Err(e), _) if is_occupied(&e) => return Err(foreign(e)),
                (Err(_), XdpAttachMode::Auto) => (
                    xdp.attach(iface, XdpMode::Skb).map_err(foreign)?,
                    XdpMode::Skb,
                ),
                (Err(e), _) => return Err(foreign(e)),
            };
            let link = xdp.take_link(id).map_err(prog_err("taking XDP link"))?;
            let fd: FdLink = link
                .try_into()
                .map_err(link_err("XDP link is not a bpf_link"))?;
            fd.pin(&xdp_path).map_err(|source| LinkPinError::Pin {
                path: xdp_path.clone(),
                source,
            })?;
            Attachment::New(mode)
        }
    };

    let tcx = match tc_mode {
        TcAttachMode::Netlink => false,
        TcAttachMode::Tcx => true,
        // Kernels before 6.6 have no tcx; an adopted pinned link means tcx worked before.
        TcAttachMode::Auto => tc_pin_path(link_dir, iface).exists() || has_tcx(),
    };
    if tcx {
        for (direction, path) in [
            (TcAttachType::Egress, tc_pin_path(link_dir, iface)),
            (TcAttachType::Ingress, tc_ingress_pin_path(link_dir, iface)),
        ] {
            attach_tc_pinned(obj, iface, direction, &path)?;
        }
        // An earlier agent in netlink mode: its filters would run our programs twice.
        remove_netlink_filters(iface, link_dir).map_err(|source| LinkPinError::StaleNetlink {
            iface: iface.to_owned(),
            source,
        })?;
    } else {
        attach_tc_netlink(obj, iface, link_dir)?;
    }
    Ok(attachment)
}

/// Attaches both TC programs through clsact + netlink filters, replacing the filters an
/// earlier agent left (found by program name), and records the interface under `link_dir`.
fn attach_tc_netlink(
    obj: &mut KernelObject,
    iface: &str,
    link_dir: &Path,
) -> Result<(), LinkPinError> {
    let record = tc_netlink_record_path(link_dir, iface);
    match std::fs::create_dir(&record) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(source) => {
            return Err(LinkPinError::Dir {
                path: record,
                source,
            });
        }
    }
    // EEXIST: the qdisc is already there (another program or an earlier run): fine.
    let _ = tc::qdisc_add_clsact(iface);
    for (direction, what, name) in [
        (TcAttachType::Egress, "egress", TC_PROGRAM),
        (TcAttachType::Ingress, "ingress", TC_INGRESS_PROGRAM),
    ] {
        let err = |source| LinkPinError::Netlink {
            direction: what,
            iface: iface.to_owned(),
            source,
        };
        // cls_bpf has no atomic replace that aya exposes: the old filter goes first, so for a
        // moment neither runs (tcx, with its pinned links, has no such gap).
        match tc::qdisc_detach_program(iface, direction, name) {
            Ok(()) => {}
            Err(tc::TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(ProgramError::from(e))),
        }
        let prog = match direction {
            TcAttachType::Ingress => tc_ingress_program(&mut obj.ebpf)?,
            _ => tc_program(&mut obj.ebpf)?,
        };
        let id = prog
            .attach_with_options(
                iface,
                direction,
                TcAttachOptions::Netlink(NlOptions::default()),
            )
            .map_err(err)?;
        let link = prog.take_link(id).map_err(err)?;
        // Dropping the link would delete the filter; it must outlive the agent like a pinned
        // link does. It holds no file descriptor, only the filter's address.
        std::mem::forget(link);
    }
    // An earlier agent in tcx mode: its pinned links would run our programs twice.
    for path in [
        tc_pin_path(link_dir, iface),
        tc_ingress_pin_path(link_dir, iface),
    ] {
        remove_pin(&path).map_err(|source| LinkPinError::Dir { path, source })?;
    }
    Ok(())
}

/// Removes our netlink TC filters from `iface` (by program name) and their record, if the
/// record says there are any.
fn remove_netlink_filters(iface: &str, link_dir: &Path) -> io::Result<()> {
    let record = tc_netlink_record_path(link_dir, iface);
    if !record.exists() {
        return Ok(());
    }
    for (direction, name) in [
        (TcAttachType::Egress, TC_PROGRAM),
        (TcAttachType::Ingress, TC_INGRESS_PROGRAM),
    ] {
        match tc::qdisc_detach_program(iface, direction, name) {
            Ok(()) => {}
            Err(tc::TcError::IoError(e)) if e.kind() == io::ErrorKind::NotFound => {}
            // The interface is gone, and its filters with it.
            Err(tc::TcError::IoError(e)) if e.raw_os_error() == Some(libc::ENODEV) => {}
            Err(e) => return Err(io::Error::other(e)),
        }
    }
    match std::fs::remove_dir(&record) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether this kernel has tcx (6.6+).
pub fn has_tcx() -> bool {
    aya::util::KernelVersion::current().is_ok_and(|v| v >= aya::util::KernelVersion::new(6, 6, 0))
}

fn remove_pin(p: &Path) -> io::Result<()> {
    match std::fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Attaches the TC program for `direction` on `iface` and pins its link at `path`, or takes over
/// the link an earlier agent pinned there.
fn attach_tc_pinned(
    obj: &mut KernelObject,
    iface: &str,
    direction: TcAttachType,
    path: &Path,
) -> Result<(), LinkPinError> {
    let (what, prog) = match direction {
        TcAttachType::Ingress => ("TC ingress", tc_ingress_program(&mut obj.ebpf)?),
        _ => ("TC egress", tc_program(&mut obj.ebpf)?),
    };
    let link_err = |source| LinkPinError::Link {
        what,
        iface: iface.to_owned(),
        source,
    };
    let prog_err = |source| LinkPinError::Program {
        what,
        iface: iface.to_owned(),
        source,
    };
    let adopted = match existing(path).map_err(link_err)? {
        Some(old) => {
            let link = FdLink::from(old).try_into().map_err(link_err)?;
            match prog.attach_to_link(link) {
                Ok(_) => true,
                Err(e) if is_defunct(&e) => {
                    unpin_defunct(path, iface)?;
                    false
                }
                Err(e) => return Err(prog_err(e)),
            }
        }
        None => false,
    };
    if !adopted {
        {
            let id = prog
                .attach_with_options(
                    iface,
                    direction,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(prog_err)?;
            let link = prog.take_link(id).map_err(prog_err)?;
            let fd: FdLink = link.try_into().map_err(link_err)?;
            fd.pin(path).map_err(|source| LinkPinError::Pin {
                path: path.to_owned(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Detaches every program from `iface`: removes the pinned links (the last reference, so the
/// kernel detaches them) and the netlink TC filters the record names.
pub fn detach_pinned(iface: &str, link_dir: &Path) -> io::Result<()> {
    for p in [
        xdp_pin_path(link_dir, iface),
        tc_pin_path(link_dir, iface),
        tc_ingress_pin_path(link_dir, iface),
    ] {
        remove_pin(&p)?;
    }
    remove_netlink_filters(iface, link_dir)
}

/// The interfaces that have pinned links or netlink records under `link_dir`.
pub fn attached_ifaces(link_dir: &Path) -> io::Result<Vec<String>> {
    let entries = match std::fs::read_dir(link_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let iface = ["xdp-", "tc-egress-", "tc-ingress-", "tc-netlink-"]
            .iter()
            .find_map(|p| name.strip_prefix(p));
        if let Some(iface) = iface {
            out.push(iface.to_owned());
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// What [`detach_all`] removed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DetachReport {
    pub ifaces: Vec<String>,
    pub maps: usize,
}

/// Removes everything the agent made under `pin_dir`: the programs on every interface the
/// pins and records name (XDP, TC egress and ingress, tcx or netlink), the maps' pins, the
/// `links` directory and `pin_dir` itself. The kernel frees programs and maps with their last
/// reference. Anything else found in `pin_dir` is left, and makes the final removal fail.
/// Netlink filters are found through their interface: run it in the node's network namespace.
pub fn detach_all(pin_dir: &Path) -> io::Result<DetachReport> {
    let link_dir = pin_dir.join("links");
    let ifaces = attached_ifaces(&link_dir)?;
    for iface in &ifaces {
        detach_pinned(iface, &link_dir)
            .map_err(|e| io::Error::new(e.kind(), format!("detaching {iface}: {e}")))?;
    }
    let mut maps = 0;
    for name in super::PINNED_MAPS {
        let path = pin_dir.join(name);
        if path.exists() {
            remove_pin(&path)?;
            maps += 1;
        }
    }
    for dir in [&link_dir, pin_dir] {
        match std::fs::remove_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                        "removing {}: {e} (left there by something else?)",
                        dir.display()
                    ),
                ));
            }
        }
    }
    Ok(DetachReport { ifaces, maps })
}
