//! The pin directory must live on a BPF filesystem: pins are files there, and they are what
//! lets a restarted agent take over maps and links. When the pin directory's nearest existing
//! ancestor (for the default, `/sys/fs/bpf`) is no BPF filesystem, the agent mounts one there,
//! as Cilium does; when it cannot, it says what it found and what to do.

use std::{
    io,
    path::{Path, PathBuf},
};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

#[derive(Debug, thiserror::Error)]
pub enum BpfFsError {
    #[error(
        "pin directory {dir}: {parent} {what}; \
         mount the node's BPF filesystem there (mount -t bpf bpf {parent}) or use another --pin-dir"
    )]
    NoParent {
        dir: PathBuf,
        parent: PathBuf,
        what: String,
    },
    #[error(
        "pin directory {dir}: {parent} is not a BPF filesystem and mounting one there failed \
         ({error}); mount it (mount -t bpf bpf {parent}; in a pod, a hostPath volume of the node's \
         /sys/fs/bpf) or use another --pin-dir"
    )]
    Mount {
        dir: PathBuf,
        parent: PathBuf,
        error: nix::Error,
    },
    #[error("pin directory {dir}: creating it on the BPF filesystem: {error}")]
    Create { dir: PathBuf, error: io::Error },
}

fn is_bpffs(path: &Path) -> bool {
    statfs(path).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC)
}

/// Makes `dir` a directory on a BPF filesystem. Kept as it is when it is on one already; else
/// the nearest existing ancestor (for the default, `/sys/fs/bpf`) gets a bpffs mounted on it,
/// when that ancestor is an empty directory (a mount would hide what a non-empty one holds),
/// and `dir` is created there. Returns the mount point when this call mounted one.
pub fn prepare_pin_dir(dir: &Path) -> Result<Option<PathBuf>, BpfFsError> {
    let base = dir
        .ancestors()
        .find(|a| a.exists() || a.as_os_str().is_empty())
        .filter(|a| !a.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned();
    let mut mounted = None;
    if !is_bpffs(&base) {
        let no = |what: String| BpfFsError::NoParent {
            dir: dir.to_owned(),
            parent: base.clone(),
            what,
        };
        match std::fs::read_dir(&base) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(no(
                        "is not a BPF filesystem and not empty (a bpffs mounted there would \
                         hide its files)"
                            .into(),
                    ));
                }
            }
            Err(e) => return Err(no(format!("is not a BPF filesystem nor a directory: {e}"))),
        }
        mount(
            Some("bpf"),
            &base,
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|error| BpfFsError::Mount {
            dir: dir.to_owned(),
            parent: base.clone(),
            error,
        })?;
        mounted = Some(base);
    }
    std::fs::create_dir_all(dir).map_err(|error| BpfFsError::Create {
        dir: dir.to_owned(),
        error,
    })?;
    Ok(mounted)
}
