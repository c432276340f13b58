//! Running wrk and reading its report.

use std::time::Duration;

use anyhow::{Context, bail};
use testbed::NetNs;

/// One wrk run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct WrkReport {
    /// Responses received over the whole run (`N requests in ...`).
    pub requests: u64,
    pub requests_per_sec: f64,
    pub p99: Duration,
    /// Socket errors (connect, read, write, timeout) plus non-2xx/3xx responses.
    pub errors: u64,
}

/// The load: `wrk -t THREADS -c CONNECTIONS -d DURATION --latency URL`.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub threads: u32,
    pub connections: u32,
    pub duration: Duration,
}

impl Load {
    pub fn args(&self, url: &str) -> Vec<String> {
        vec![
            format!("-t{}", self.threads),
            format!("-c{}", self.connections),
            format!("-d{}s", self.duration.as_secs()),
            "--latency".into(),
            // Longer than any latency a healthy run sees: a request that takes this long is
            // counted as an error rather than silently dropped from the histogram.
            "--timeout".into(),
            "5s".into(),
            url.into(),
        ]
    }

    /// Runs wrk in `ns` and parses its report.
    pub fn run(&self, ns: &NetNs, url: &str) -> anyhow::Result<WrkReport> {
        self.run_script(ns, url, None)
    }

    /// [`run`](Self::run) with a Lua script (`-s`), e.g. one that makes every request a POST.
    pub fn run_script(
        &self,
        ns: &NetNs,
        url: &str,
        script: Option<&std::path::Path>,
    ) -> anyhow::Result<WrkReport> {
        let mut cmd = ns.command("wrk");
        if let Some(s) = script {
            cmd.arg("-s").arg(s);
        }
        let out = cmd.args(self.args(url)).output().context("running wrk")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "wrk failed ({}): {}{}",
                out.status,
                text,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        parse(&text).with_context(|| format!("reading wrk's report:\n{text}"))
    }
}

/// Reads the request count, `Requests/sec`, the 99% line of `--latency` and the error lines of a wrk report.
pub fn parse(report: &str) -> anyhow::Result<WrkReport> {
    let mut rps = None;
    let mut requests = None;
    let mut p99 = None;
    let mut errors = 0;
    for line in report.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            rps = Some(v.trim().parse::<f64>().context("Requests/sec")?);
        } else if let Some((n, _)) = line.split_once(" requests in ") {
            requests = Some(n.trim().parse::<u64>().context("requests in")?);
        } else if let Some(v) = line.strip_prefix("99%") {
            p99 = Some(duration(v.trim())?);
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            errors += v
                .trim()
                .parse::<u64>()
                .context("Non-2xx or 3xx responses")?;
        } else if let Some(v) = line.strip_prefix("Socket errors:") {
            // `connect 0, read 0, write 0, timeout 0`
            for part in v.split(',') {
                let n = part.split_whitespace().nth(1).context("Socket errors")?;
                errors += n.parse::<u64>().context("Socket errors")?;
            }
        }
    }
    Ok(WrkReport {
        requests: requests.context("no `requests in` line")?,
        requests_per_sec: rps.context("no Requests/sec line")?,
        p99: p99.context("no 99% latency line (was --latency given?)")?,
        errors,
    })
}

/// wrk's time format: a number and one of `us`, `ms`, `s`, `m`, `h`.
fn duration(text: &str) -> anyhow::Result<Duration> {
    let split = text
        .find(|c: char| c.is_ascii_alphabetic())
        .with_context(|| format!("no unit in {text:?}"))?;
    let (n, unit) = text.split_at(split);
    let n: f64 = n.parse().with_context(|| format!("number in {text:?}"))?;
    let secs = match unit {
        "us" => n / 1e6,
        "ms" => n / 1e3,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => bail!("unknown unit in {text:?}"),
    };
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 10s test @ http://10.240.0.2/echo/hostname
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.23ms  456.00us  12.34ms   78.90%
    Req/Sec    25.00k     1.23k   28.00k    70.00%
  Latency Distribution
     50%    1.10ms
     75%    1.40ms
     90%    1.80ms
     99%  812.00us
  498765 requests in 10.00s, 60.00MB read
  Socket errors: connect 1, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 5
Requests/sec:  49876.50
Transfer/sec:      6.00MB
";

    #[test]
    fn reads_rate_p99_and_errors() {
        let r = parse(REPORT).unwrap();
        assert_eq!(r.requests, 498765);
        assert_eq!(r.requests_per_sec, 49876.5);
        assert_eq!(r.p99, Duration::from_micros(812));
        assert_eq!(r.errors, 11);
    }

    #[test]
    fn a_clean_run_has_no_errors() {
        let clean: String = REPORT
            .lines()
            .filter(|l| !l.contains("errors") && !l.contains("Non-2xx"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert_eq!(parse(&clean).unwrap().errors, 0);
    }

    #[test]
    fn without_latency_distribution_it_fails() {
        let no_dist = REPORT.replace("99%", "98%");
        assert!(parse(&no_dist).is_err());
    }

    #[test]
    fn units() {
        assert_eq!(duration("2.50ms").unwrap(), Duration::from_micros(2500));
        assert_eq!(duration("1.00s").unwrap(), Duration::from_secs(1));
        assert_eq!(duration("1.50m").unwrap(), Duration::from_secs(90));
        assert!(duration("3.0").is_err());
        assert!(duration("3.0ns").is_err());
    }

    #[test]
    fn load_arguments() {
        let load = Load {
            threads: 2,
            connections: 64,
            duration: Duration::from_secs(10),
        };
        assert_eq!(
            load.args("http://x/"),
            [
                "-t2",
                "-c64",
                "-d10s",
                "--latency",
                "--timeout",
                "5s",
                "http://x/"
            ]
        );
    }
}
