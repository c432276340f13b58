//! HAProxy as the second L7 peer: the same weighted upstream as the HTTPRoute, served the same
//! way as nginx serves it.

use std::{ffi::OsString, path::Path, process::Stdio};

use anyhow::{Context, bail};
use testbed::NetNs;

use crate::topology::{TermGuard, command_under};

/// HAProxy's equivalent of the guide's HTTPRoute: `/echo` stripped, two backends weighted 1:1
/// (round robin), idle server connections shared by every client (`http-reuse always`, the
/// closest to the agent's per-thread pools), `X-Forwarded-For`/`X-Forwarded-Proto` set, no
/// log. `threads` matches the agent's worker threads (`nbthread`). `dir` holds the pid file.
pub fn config(dir: &Path, threads: usize, port: u16, backends: &[String]) -> String {
    let dir = dir.display();
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("    server b{i} {b} weight 1\n"))
        .collect();
    format!(
        "# Written by `cargo xtask bench l7`.
global
    nbthread {threads}
    # As many connections as nginx's worker_connections (more would need a higher FD limit).
    maxconn 4096
    pidfile {dir}/haproxy.pid

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout http-keep-alive 30s
    option http-keep-alive
    option forwardfor
    http-reuse always

frontend gateway
    bind :{port}
    default_backend echo

backend echo
    balance roundrobin
    # Strip-path: /echo/x becomes /x.
    http-request replace-path ^/echo(/.*)$ \\1
    http-request set-header X-Forwarded-Proto http
{servers}"
    )
}

/// Checks `conf` with `haproxy -c`, then starts HAProxy on it in `ns` in the foreground.
pub fn start(ns: &NetNs, conf: &Path, prefix: &[OsString]) -> anyhow::Result<TermGuard> {
    let test = ns
        .command("haproxy")
        .arg("-c")
        .arg("-q")
        .arg("-f")
        .arg(conf)
        .output()
        .context("running haproxy -c")?;
    if !test.status.success() {
        bail!(
            "haproxy -c rejected {}: {}{}",
            conf.display(),
            String::from_utf8_lossy(&test.stdout).trim(),
            String::from_utf8_lossy(&test.stderr).trim()
        );
    }
    let child = command_under(ns, prefix, "haproxy")
        .arg("-db")
        .arg("-f")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting haproxy")?;
    Ok(TermGuard::new(child))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_the_weighted_reused_upstream() {
        let c = config(
            Path::new("/tmp/x"),
            2,
            80,
            &["10.0.0.1:1027".into(), "10.0.0.2:1027".into()],
        );
        assert!(c.contains("nbthread 2\n"));
        assert!(c.contains("http-reuse always\n"));
        assert!(c.contains("bind :80\n"));
        assert!(
            c.contains("server b0 10.0.0.1:1027 weight 1\n    server b1 10.0.0.2:1027 weight 1\n")
        );
        assert!(c.contains("replace-path ^/echo(/.*)$ \\1\n"));
    }
}
