//! Loading the embedded object into the kernel.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        SchedClassifier, TcAttachType, Xdp, XdpMode, tc, tc::SchedClassifierLinkId, xdp::XdpLinkId,
    },
};
use splitter_common::{
    l4::{TC_INGRESS_PROGRAM, TC_PROGRAM},
    maps::XDP_PROGRAM,
};

use super::{
    bpffs::{BpfFsError, prepare_pin_dir},
    layout::{MapLayout, PINNED_MAPS, check_pinned_layouts},
};

/// The kernel object built by `build.rs` (aya-build), aligned so aya can parse it in place.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/splitter-ebpf"));

#[derive(Debug, thiserror::Error)]
pub enum EbpfLoadError {
    /// The pin directory is not (and could not be made) a directory on a BPF filesystem.
    #[error(transparent)]
    PinDir(#[from] BpfFsError),
    #[error(
        "pinned map {path} is {found} but this agent's object declares {expected}: \
         it was pinned by an incompatible agent; remove the pins or use another --pin-dir"
    )]
    PinnedLayout {
        path: PathBuf,
        found: MapLayout,
        expected: MapLayout,
    },
    #[error("reading pinned map {path}: {source}")]
    PinnedInfo {
        path: PathBuf,
        source: aya::maps::MapError,
    },
    #[error("map {name} of the eBPF object: {source}")]
    ObjectMap {
        name: String,
        source: aya::maps::MapError,
    },
    #[error("map {name} is missing from the object")]
    MissingMap { name: &'static str },
    #[error("loading the eBPF object: {0}")]
    Object(#[from] aya::EbpfError),
    #[error("program {name} is missing from the object or has the wrong type")]
    MissingProgram { name: &'static str },
    #[error("loading program {name} into the kernel (verifier): {source}")]
    Program {
        name: &'static str,
        source: aya::programs::ProgramError,
    },
    #[error("attaching TC egress to {iface}: {source}")]
    AttachTc {
        iface: String,
        source: aya::programs::ProgramError,
    },
    #[error("attaching XDP to {iface} in {mode:?} mode: {source}")]
    Attach {
        iface: String,
        mode: XdpMode,
        source: aya::programs::ProgramError,
    },
}

/// A loaded object whose programs passed the verifier.
pub struct KernelObject {
    pub ebpf: Ebpf,
}

/// Creates the maps (adopting pinned ones under `pin_dir` when given, after checking their
/// layout) and loads every program.
pub fn load_object(pin_dir: Option<&Path>) -> Result<KernelObject, EbpfLoadError> {
    let mut loader = EbpfLoader::new();
    // The programs read no kernel structure through CO-RE, so the kernel's BTF is not needed:
    // parsing it (several MB on a distribution kernel) cost the agent about 18 MiB of resident
    // memory (README, `cargo xtask bench scale`).
    loader.btf(None);
    if let Some(dir) = pin_dir {
        if let Some(at) = prepare_pin_dir(dir)? {
            tracing::info!(at = %at.display(), "mounted a BPF filesystem for the pins");
        }
        check_pinned_layouts(dir)?;
        for name in PINNED_MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    let mut ebpf = loader.load(OBJECT)?;
    xdp_program(&mut ebpf)?
        .load()
        .map_err(|source| EbpfLoadError::Program {
            name: XDP_PROGRAM,
            source,
        })?;
    for name in [TC_PROGRAM, TC_INGRESS_PROGRAM] {
        classifier(&mut ebpf, name)?
            .load()
            .map_err(|source| EbpfLoadError::Program { name, source })?;
    }
    Ok(KernelObject { ebpf })
}

fn classifier<'e>(
    ebpf: &'e mut Ebpf,
    name: &'static str,
) -> Result<&'e mut SchedClassifier, EbpfLoadError> {
    ebpf.program_mut(name)
        .and_then(|p| p.try_into().ok())
        .ok_or(EbpfLoadError::MissingProgram { name })
}

/// The TC egress program (replies of local flows back to the VIP).
pub fn tc_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, EbpfLoadError> {
    classifier(ebpf, TC_PROGRAM)
}

/// The TC ingress program (sends out what XDP marked: RSTs and SNAT legs).
pub fn tc_ingress_program(ebpf: &mut Ebpf) -> Result<&mut SchedClassifier, EbpfLoadError> {
    classifier(ebpf, TC_INGRESS_PROGRAM)
}

/// Attaches the reverse-NAT program to `iface` egress (adding the clsact qdisc if needed).
pub fn attach_tc_egress(
    obj: &mut KernelObject,
    iface: &str,
) -> Result<SchedClassifierLinkId, EbpfLoadError> {
    // EEXIST: the qdisc is already there (another program or an earlier run): fine.
    let _ = tc::qdisc_add_clsact(iface);
    tc_program(&mut obj.ebpf)?
        .attach(iface, TcAttachType::Egress)
        .map_err(|source| EbpfLoadError::AttachTc {
            iface: iface.to_owned(),
            source,
        })
}

/// Attaches the program that sends out XDP's marked packets to `iface` ingress (adding the
/// clsact qdisc if needed). Without it, rejected SYNs get no RST and SNAT legs are dropped.
pub fn attach_tc_ingress(
    obj: &mut KernelObject,
    iface: &str,
) -> Result<SchedClassifierLinkId, EbpfLoadError> {
    let _ = tc::qdisc_add_clsact(iface);
    tc_ingress_program(&mut obj.ebpf)?
        .attach(iface, TcAttachType::Ingress)
        .map_err(|source| EbpfLoadError::AttachTc {
            iface: iface.to_owned(),
            source,
        })
}

pub fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, EbpfLoadError> {
    ebpf.program_mut(XDP_PROGRAM)
        .and_then(|p| p.try_into().ok())
        .ok_or(EbpfLoadError::MissingProgram { name: XDP_PROGRAM })
}

/// Attaches the XDP program to `iface`, in driver mode when the driver supports it and in generic
/// (skb) mode otherwise. Returns the link and the mode that worked.
pub fn attach_xdp(
    obj: &mut KernelObject,
    iface: &str,
) -> Result<(XdpLinkId, XdpMode), EbpfLoadError> {
    let prog = xdp_program(&mut obj.ebpf)?;
    match prog.attach(iface, XdpMode::Driver) {
        Ok(link) => Ok((link, XdpMode::Driver)),
        Err(_) => prog
            .attach(iface, XdpMode::Skb)
            .map(|link| (link, XdpMode::Skb))
            .map_err(|source| EbpfLoadError::Attach {
                iface: iface.to_owned(),
                mode: XdpMode::Skb,
                source,
            }),
    }
}
