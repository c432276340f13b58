//! `cargo xtask bench l7 --instructions`: each proxy under valgrind's callgrind, counting the
//! instructions it executes per request over the same load.
//!
//! Requests per second on a small shared machine move by tens of percent from one round to the
//! next; an instruction count is the same for the same binary and load whatever else the machine
//! does. It is not time (cache misses and branch mispredictions are not in it), so it
//! complements the timed rounds rather than replacing them, but a change that saves work shows
//! in it where the timed rounds cannot tell it from noise.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

/// Where one proxy's counts go.
pub struct Callgrind {
    out: PathBuf,
}

impl Callgrind {
    pub fn new(out: PathBuf) -> Self {
        Self { out }
    }

    /// The command line prefix that runs a program under callgrind.
    pub fn prefix(&self) -> Vec<OsString> {
        let mut file = OsString::from("--callgrind-out-file=");
        file.push(&self.out);
        vec!["valgrind".into(), "--tool=callgrind".into(), file]
    }

    /// Sets the counts of the running process `pid` to zero (after start-up and warm-up).
    pub fn zero(&self, pid: u32) -> anyhow::Result<()> {
        control(pid, "--zero")
    }

    /// Instructions executed since the last [`zero`](Self::zero).
    pub fn instructions_since_zero(&self, pid: u32) -> anyhow::Result<u64> {
        control(pid, "--dump")?;
        // The first dump requested while running is written next to the final file, as `.1`.
        let mut dump = self.out.clone().into_os_string();
        dump.push(".1");
        totals(Path::new(&dump))
    }
}

fn control(pid: u32, what: &str) -> anyhow::Result<()> {
    let out = Command::new("callgrind_control")
        .arg(what)
        .arg(pid.to_string())
        .output()
        .context("running callgrind_control")?;
    if !out.status.success() {
        bail!(
            "callgrind_control {what} {pid}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The `totals:` (or, in older formats, `summary:`) line of a callgrind dump.
fn totals(dump: &Path) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(dump)
        .with_context(|| format!("reading the callgrind dump {}", dump.display()))?;
    parse_totals(&text).with_context(|| format!("no totals in {}", dump.display()))
}

fn parse_totals(text: &str) -> Option<u64> {
    let line = text
        .lines()
        .find(|l| l.starts_with("totals:"))
        .or_else(|| text.lines().find(|l| l.starts_with("summary:")))?;
    line.split_once(':')?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_totals_line() {
        let dump = "# callgrind format\nevents: Ir\nsummary: 331862846\nfn=(1) main\n5 10\ntotals: 331863006\n";
        assert_eq!(parse_totals(dump), Some(331_863_006));
        assert_eq!(parse_totals("summary: 12\n"), Some(12));
        assert_eq!(parse_totals("events: Ir\n"), None);
    }

    #[test]
    fn prefixes_the_program() {
        let c = Callgrind::new(PathBuf::from("/tmp/x/cg.out"));
        assert_eq!(
            c.prefix(),
            [
                "valgrind",
                "--tool=callgrind",
                "--callgrind-out-file=/tmp/x/cg.out"
            ]
        );
    }
}
