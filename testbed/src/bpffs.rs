//! A private bpf filesystem for pinning in tests, so tests never touch /sys/fs/bpf.

use std::{io, path::Path};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

pub struct BpfFs {
    dir: tempfile::TempDir,
}

impl BpfFs {
    pub fn new() -> io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("splitter-bpffs-")
            .tempdir()?;
        mount(
            Some("bpf"),
            dir.path(),
            Some("bpf"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(io::Error::from)?;
        Ok(BpfFs { dir })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for BpfFs {
    fn drop(&mut self) {
        // Lazy detach: a map fd still open elsewhere must not make cleanup fail.
        if let Err(e) = umount2(self.dir.path(), MntFlags::MNT_DETACH) {
            eprintln!("testbed: unmounting {}: {e}", self.dir.path().display());
        }
    }
}
