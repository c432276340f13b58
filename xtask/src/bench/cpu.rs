//! CPU time a proxy spent, read from `/proc`: a per-request cost that, unlike requests/s, does
//! not depend on how much of the machine other work (a build, the client, the backends) took.

use std::time::Duration;

/// `/proc/PID/stat` counts time in USER_HZ ticks, 100 per second on every Linux ABI.
const USER_HZ: u64 = 100;

/// CPU time of a process tree, split where it was spent: a proxy's requests cost mostly
/// kernel time (TCP), which no user-space change removes, so the split says what is left to win.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuTime {
    pub user: Duration,
    pub system: Duration,
}

impl CpuTime {
    pub fn total(self) -> Duration {
        self.user + self.system
    }

    /// The time spent since `before`.
    pub fn since(self, before: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user.saturating_sub(before.user),
            system: self.system.saturating_sub(before.system),
        }
    }
}

/// `(ppid, utime, stime in ticks)` of one process, `None` when it is gone.
fn stat(pid: u32) -> Option<(u32, u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses; the fields start after the last ')'.
    let fields: Vec<&str> = text.get(text.rfind(')')? + 2..)?.split(' ').collect();
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime, stime))
}

/// CPU time used so far by `root` and its live children (nginx's worker processes).
pub fn process_tree(root: u32) -> CpuTime {
    let (mut user, mut system) = stat(root).map_or((0, 0), |(_, u, s)| (u, s));
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for pid in entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
            if let Some((ppid, u, s)) = stat(pid)
                && ppid == root
            {
                user += u;
                system += s;
            }
        }
    }
    let time = |ticks: u64| Duration::from_millis(ticks * 1000 / USER_HZ);
    CpuTime {
        user: time(user),
        system: time(system),
    }
}

/// The machine's CPU ticks so far from `/proc/stat`: `(stolen, all)`. Stolen time is what the
/// hypervisor gave other guests while this one wanted to run: a round with much of it measured
/// the host, not the proxy.
pub fn machine_ticks() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return (0, 0);
    };
    // user nice system idle iowait irq softirq steal [guest guest_nice, counted in user]
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|t| t.parse().ok())
        .collect();
    (ticks.get(7).copied().unwrap_or(0), ticks.iter().sum())
}

/// The share of the machine's CPU time stolen between two [`machine_ticks`] readings.
pub fn stolen_share(before: (u64, u64), after: (u64, u64)) -> f64 {
    let all = after.1.saturating_sub(before.1);
    if all == 0 {
        return 0.0;
    }
    after.0.saturating_sub(before.0) as f64 / all as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ticks_count_up_and_steal_is_a_share() {
        let before = machine_ticks();
        let busy = std::time::Instant::now();
        while busy.elapsed() < Duration::from_millis(50) {}
        let after = machine_ticks();
        assert!(after.1 > before.1, "{before:?} -> {after:?}");
        assert!((0.0..=1.0).contains(&stolen_share(before, after)));
        assert_eq!(stolen_share((5, 100), (15, 200)), 0.1);
        assert_eq!(stolen_share((5, 100), (5, 100)), 0.0);
    }

    #[test]
    fn own_process_has_a_parent_and_cpu_time() {
        let busy = std::time::Instant::now();
        while busy.elapsed() < Duration::from_millis(50) {}
        let (ppid, _, _) = stat(std::process::id()).unwrap();
        assert!(ppid > 0);
        let spent = process_tree(std::process::id());
        assert!(spent.user > Duration::ZERO, "{spent:?}");
        assert_eq!(spent.since(spent).total(), Duration::ZERO);
    }
}
