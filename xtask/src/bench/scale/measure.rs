//! What the bench reads: the agent's answers over HTTP (the gateway and its admin port), its
//! kernel tables through the pinned maps, and its memory in `/proc`. The same for both sources.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, bail};

use super::{ADMIN, PORT};
use crate::bench::{interrupted, pinned::PinnedL4};

/// Latencies of `changes` changes: each made by `change(i)`, which returns the name of the echo
/// server that answers once it is live.
pub fn measure(
    changes: usize,
    host: &str,
    mut change: impl FnMut(usize) -> anyhow::Result<&'static str>,
) -> anyhow::Result<Latencies> {
    let mut client = Client::connect()?;
    let mut took = Vec::with_capacity(changes);
    // Change 0 is the state at start; the measured changes alternate from there.
    for i in 1..=changes {
        interrupted()?;
        let wall = SystemTime::now();
        let want = change(i)?;
        let t0 = Instant::now();
        loop {
            if client.get(host)? == want {
                break;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("change {i} to {host} not served after 30 s");
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        took.push((t0.elapsed(), wall));
        space_out(i);
    }
    Ok(Latencies(took))
}

/// Latencies of `changes` changes to the Service behind the kernel route: each made by
/// `change(i)`, which returns the endpoints the route's table names once it is live. Polls the
/// route's meta (one map lookup) about every millisecond; a changed meta is a publish (a flip of
/// the live half with a new generation), after which the live half is read whole: the change
/// is live when it names exactly the wanted endpoints. The latency is taken at the poll that saw
/// the flip, before that read. Also returns how many publishes did not carry the change (the
/// agent republishing the route for another reason).
pub fn measure_kernel(
    changes: usize,
    kernel: &PinnedL4,
    route: u32,
    mut change: impl FnMut(usize) -> anyhow::Result<BTreeSet<SocketAddr>>,
) -> anyhow::Result<(Latencies, usize)> {
    let mut took = Vec::with_capacity(changes);
    let mut other = 0;
    let mut seen = kernel.meta(route)?;
    for i in 1..=changes {
        interrupted()?;
        let wall = SystemTime::now();
        let want = change(i)?;
        let t0 = Instant::now();
        loop {
            let meta = kernel.meta(route)?;
            let at = t0.elapsed();
            if meta != seen {
                seen = meta;
                if kernel.live_backends(route, &meta)? == want {
                    took.push((at, wall));
                    break;
                }
                other += 1;
            }
            if t0.elapsed() > Duration::from_secs(30) {
                bail!("change {i} to the kernel route not in its table after 30 s");
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        space_out(i);
    }
    Ok((Latencies(took), other))
}

/// A pause after change `i`, 20 to 99 ms, so that changes are not all coalesced with the
/// previous one.
fn space_out(i: usize) {
    std::thread::sleep(Duration::from_millis(20 + (i as u64 * 37) % 80));
}

/// Each change's latency, and when (wall clock) it was written.
pub struct Latencies(Vec<(Duration, SystemTime)>);

impl Latencies {
    /// The `n` slowest changes, each with the UTC time of its write (the agent logs in UTC).
    pub fn slowest(&self, n: usize) -> String {
        let mut v = self.0.clone();
        v.sort_by_key(|(took, _)| std::cmp::Reverse(*took));
        v.iter()
            .take(n)
            .map(|(took, at)| {
                let ms = at
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_millis();
                let s = (ms / 1000) % 86_400;
                format!(
                    "{:.1} ms at {:02}:{:02}:{:02}.{:03}",
                    took.as_secs_f64() * 1e3,
                    s / 3600,
                    s / 60 % 60,
                    s % 60,
                    ms % 1000
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Display for Latencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut v: Vec<Duration> = self.0.iter().map(|(d, _)| *d).collect();
        v.sort();
        let at = |q: f64| {
            let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
            v[i].as_secs_f64() * 1e3
        };
        if v.is_empty() {
            return write!(f, "no changes");
        }
        write!(
            f,
            "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} changes",
            at(0.5),
            at(0.99),
            at(1.0),
            v.len()
        )
    }
}

/// One keep-alive HTTP/1.1 connection to the gateway; reconnects when the proxy closes it.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect() -> anyhow::Result<Self> {
        let s = TcpStream::connect(("127.0.0.1", PORT)).context("connecting to the gateway")?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Self {
            reader: BufReader::new(s),
        })
    }

    /// `GET /hostname` for `host`: the body (the echo server's name) of a 200, else "".
    fn get(&mut self, host: &str) -> anyhow::Result<String> {
        match self.try_get(host) {
            Ok(body) => Ok(body),
            Err(_) => {
                *self = Self::connect()?;
                self.try_get(host)
            }
        }
    }

    fn try_get(&mut self, host: &str) -> anyhow::Result<String> {
        write!(
            self.reader.get_mut(),
            "GET /hostname HTTP/1.1\r\nHost: {host}\r\n\r\n"
        )?;
        let mut status = String::new();
        if self.reader.read_line(&mut status)? == 0 {
            bail!("closed");
        }
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("closed");
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        if !status.contains(" 200 ") {
            return Ok(String::new());
        }
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

/// Polls until `host` is answered by `want`.
pub fn wait_served(host: &str, want: &str, timeout: Duration) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        if let Ok(mut c) = Client::connect()
            && c.get(host).is_ok_and(|b| b == want)
        {
            return Ok(());
        }
        if t0.elapsed() > timeout {
            bail!("{host} not served by {want} within {timeout:?}");
        }
        interrupted()?;
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `(VmRSS, VmHWM)` of a process, in MiB.
pub fn memory(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = |field: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    Ok((kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0))
}

/// The agent's `/metrics` page.
pub fn scrape() -> anyhow::Result<String> {
    scrape_path("/metrics")
}

/// One page of the agent's admin endpoint, head included.
pub fn scrape_path(path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(ADMIN)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    Ok(text)
}

/// The value of the sample `series` (name and labels as printed) on a `/metrics` page.
pub fn sample(metrics: &str, series: &str) -> anyhow::Result<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no {series} on /metrics"))
}

/// `splitter_plan_builds_total` from the agent's `/metrics`.
pub fn plan_builds() -> anyhow::Result<f64> {
    sample(&scrape()?, "splitter_plan_builds_total")
}

/// The allocator's share of the agent's RSS, from `splitter_heap_bytes`: in use, in the pages
/// of runs in use, its metadata, resident (MiB), which tells what the agent holds from what
/// its allocator keeps.
pub fn heap() -> anyhow::Result<String> {
    let text = scrape()?;
    let mib = |kind: &str| -> anyhow::Result<f64> {
        Ok(sample(&text, &format!("splitter_heap_bytes{{kind=\"{kind}\"}}"))? / (1024.0 * 1024.0))
    };
    Ok(format!(
        "heap {:.1} MiB allocated, {:.1} active, {:.1} metadata, {:.1} resident",
        mib("allocated")?,
        mib("active")?,
        mib("metadata")?,
        mib("resident")?
    ))
}
