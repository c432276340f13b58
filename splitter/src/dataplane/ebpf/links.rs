//! Pinned attachments: the XDP and TC programs stay attached when the agent exits, and a new
//! agent swaps its programs in atomically (`bpf_link_update`) instead of detaching and
//! reattaching, so packets never meet an interface without the data path.

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::programs::{
    LinkOrder, TcAttachType, XdpMode,
    links::{FdLink, LinkError, PinnedLink},
    tc::{self, TcAttachOptions},
};

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
        source: aya::programs::ProgramError,
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
    let attachment = match existing(&xdp_path).map_err(link_err("reading pinned XDP link"))? {
        Some(old) => {
            let link = FdLink::from(old)
                .try_into()
                .map_err(link_err("adopting XDP link"))?;
            xdp.attach_to_link(link)
                .map_err(prog_err("replacing XDP program"))?;
            Attachment::Replaced
        }
        None => {
            let first = match mode {
                XdpAttachMode::Generic => XdpMode::Skb,
                XdpAttachMode::Auto | XdpAttachMode::Driver => XdpMode::Driver,
            };
            let (id, mode) = match (xdp.attach(iface, first), mode) {
                (Ok(id), _) => (id, first),
                (Err(_), XdpAttachMode::Auto) => (
                    xdp.attach(iface, XdpMode::Skb)
                        .map_err(prog_err("attaching XDP"))?,
                    XdpMode::Skb,
                ),
                (Err(e), _) => return Err(prog_err("attaching XDP")(e)),
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

    for (direction, path) in [
        (TcAttachType::Egress, tc_pin_path(link_dir, iface)),
        (TcAttachType::Ingress, tc_ingress_pin_path(link_dir, iface)),
    ] {
        attach_tc_pinned(obj, iface, direction, &path)?;
    }
    Ok(attachment)
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
    match existing(path).map_err(link_err)? {
        Some(old) => {
            let link = FdLink::from(old).try_into().map_err(link_err)?;
            prog.attach_to_link(link).map_err(prog_err)?;
        }
        None => {
            let id = prog
                .attach_with_options(
                    iface,
                    direction,
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .or_else(|_| {
                    // Kernels before 6.6 have no tcx: fall back to clsact + netlink.
                    let _ = tc::qdisc_add_clsact(iface);
                    prog.attach(iface, direction)
                })
                .map_err(prog_err)?;
            let link = prog.take_link(id).map_err(prog_err)?;
            // A netlink attachment (kernel < 6.6) is no bpf_link and cannot be pinned.
            let fd: FdLink = link.try_into().map_err(link_err)?;
            fd.pin(path).map_err(|source| LinkPinError::Pin {
                path: path.to_owned(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Detaches every program from `iface` by removing their pins.
pub fn detach_pinned(iface: &str, link_dir: &Path) -> io::Result<()> {
    for p in [
        xdp_pin_path(link_dir, iface),
        tc_pin_path(link_dir, iface),
        tc_ingress_pin_path(link_dir, iface),
    ] {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
