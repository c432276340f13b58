//! nginx as the L7 peer: the same weighted upstream as the HTTPRoute, served the same way.

use std::{ffi::OsString, path::Path, process::Stdio};

use anyhow::{Context, bail};
use testbed::NetNs;

use super::tls::TlsFiles;
use crate::topology::{TermGuard, command_under};

/// nginx's best competent TLS listener with the agent's certificate and what the agent offers:
/// TLS 1.2 and 1.3, ALPN `h2` and `http/1.1` (`http2` on the listen line, nginx 1.22's
/// syntax), a session cache shared by the workers and session tickets (nginx's default, kept).
/// Ciphers, curves and `ssl_buffer_size` are nginx's defaults.
fn tls_listen(port: u16, files: &TlsFiles) -> String {
    format!(
        "listen {port} ssl http2 reuseport;
        ssl_certificate {};
        ssl_certificate_key {};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;",
        files.cert.display(),
        files.key.display()
    )
}

/// nginx's equivalent of the guide's HTTPRoute: `/echo` stripped, two backends weighted 1:1,
/// upstream connections kept alive. `workers` matches the agent's tokio worker threads so
/// both proxies get the same parallelism. `dir` holds the pid file, logs and temp paths.
///
/// Beyond the brief's upstream block, three settings make nginx do the same work as the
/// agent, no more and no less: no access log (the agent counts requests in memory and logs
/// none), `X-Forwarded-For`/`X-Forwarded-Proto` set (the agent adds both), and no cap on
/// requests per keep-alive connection (hyper has none; nginx's default closes client and
/// upstream connections every 1000 requests).
///
/// `workers: 0` asks for one process that does everything (`master_process off`), as the
/// instruction count needs: callgrind follows the process it started.
///
/// With `tls`, the server listens with TLS on `port` instead ([`tls_listen`]).
pub fn config(
    dir: &Path,
    workers: usize,
    port: u16,
    backends: &[String],
    tls: Option<&TlsFiles>,
) -> String {
    let (master, workers) = if workers == 0 {
        ("off", 1)
    } else {
        ("on", workers)
    };
    let dir = dir.display();
    let servers: String = backends
        .iter()
        .map(|b| format!("        server {b} weight=1;\n"))
        .collect();
    let listen = match tls {
        None => format!("listen {port} reuseport;"),
        Some(files) => tls_listen(port, files),
    };
    format!(
        "# Written by `cargo xtask bench l7`.
daemon off;
master_process {master};
# Runs in the bench's own network namespace; root keeps the temp paths below writable.
user root;
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    worker_connections 4096;
}}

http {{
    access_log off;
    keepalive_requests 4294967295;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    upstream echo {{
{servers}        keepalive 64;
        keepalive_requests 4294967295;
    }}

    server {{
        {listen}
        location /echo/ {{
            # The trailing slash replaces the matched /echo/ by /: strip-path.
            proxy_pass http://echo/;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }}
    }}
}}
"
    )
}

/// Checks `conf` with `nginx -t`, then starts nginx on it in `ns`, run by `prefix` (a program
/// and its arguments, e.g. valgrind's) when that is not empty.
pub fn start(
    ns: &NetNs,
    dir: &Path,
    conf: &Path,
    prefix: &[OsString],
) -> anyhow::Result<TermGuard> {
    let error_log = dir.join("error.log");
    let test = ns
        .command("nginx")
        .arg("-t")
        .arg("-q")
        .arg("-e")
        .arg(&error_log)
        .arg("-c")
        .arg(conf)
        .output()
        .context("running nginx -t")?;
    if !test.status.success() {
        bail!(
            "nginx -t rejected {}: {}",
            conf.display(),
            String::from_utf8_lossy(&test.stderr).trim()
        );
    }
    let child = command_under(ns, prefix, "nginx")
        // `-e` from the start: nginx opens its default error log before reading the config.
        .arg("-e")
        .arg(&error_log)
        .arg("-c")
        .arg(conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    Ok(TermGuard::new(child))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_the_weighted_keepalive_upstream() {
        let c = config(
            Path::new("/tmp/x"),
            2,
            80,
            &["10.0.0.1:1027".into(), "10.0.0.2:1027".into()],
            None,
        );
        assert!(c.contains("worker_processes 2;"));
        assert!(c.contains("master_process on;"));
        let single = config(Path::new("/tmp/x"), 0, 80, &["10.0.0.1:1027".into()], None);
        assert!(single.contains("master_process off;") && single.contains("worker_processes 1;"));
        assert!(c.contains("server 10.0.0.1:1027 weight=1;\n        server 10.0.0.2:1027 weight=1;\n        keepalive 64;"));
        assert!(c.contains("proxy_http_version 1.1;"));
        assert!(c.contains("proxy_set_header Connection \"\";"));
        assert!(c.contains("listen 80 reuseport;"));
        assert!(c.contains("pid /tmp/x/nginx.pid;"));
        assert!(!c.contains("ssl"));
    }

    #[test]
    fn tls_config_listens_with_the_certificate() {
        let files = TlsFiles {
            cert: "/tmp/x/cert.pem".into(),
            key: "/tmp/x/key.pem".into(),
        };
        let c = config(
            Path::new("/tmp/x"),
            2,
            443,
            &["10.0.0.1:1027".into()],
            Some(&files),
        );
        assert!(c.contains("listen 443 ssl http2 reuseport;"));
        assert!(c.contains("ssl_certificate /tmp/x/cert.pem;"));
        assert!(c.contains("ssl_certificate_key /tmp/x/key.pem;"));
        assert!(c.contains("ssl_session_cache shared:SSL:10m;"));
        assert!(!c.contains("listen 443 reuseport"));
    }
}
