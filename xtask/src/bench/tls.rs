//! What `cargo xtask bench l7 --tls` adds to the plain bench: a certificate made at run time,
//! the Gateway's HTTPS listener and its Secret, and the new-connection load
//! (`splitter-tls-load`).
//!
//! The certificate is self-signed with an ECDSA P-256 key (what production gateways serve:
//! the cheapest signature of the usual choices), for the gateway's address, `CA:FALSE` so a
//! verifying client accepts it as a server certificate while trusting it directly. The agent
//! gets it through a `kubernetes.io/tls` Secret, nginx through the same two PEM files.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, bail};
use testbed::NetNs;

use super::wrk::{Load, WrkReport};
use crate::topology::{GATEWAY, write_atomically};

/// The HTTPS port both proxies listen on.
pub const PORT: u16 = 443;

/// The PEM files of the bench's certificate and its key.
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Generates the certificate and key into `dir` with openssl.
pub fn generate(dir: &Path) -> anyhow::Result<TlsFiles> {
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec"])
        .args(["-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .arg("-keyout")
        .arg(&files.key)
        .arg("-out")
        .arg(&files.cert)
        .args(["-days", "2", "-subj", "/CN=splitter-bench"])
        .args(["-addext", &format!("subjectAltName=IP:{GATEWAY}")])
        .args(["-addext", "basicConstraints=critical,CA:FALSE"])
        .output()
        .context("running openssl req")?;
    if !out.status.success() {
        bail!(
            "openssl req failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(files)
}

/// Replaces the guide's Gateway in `manifests` by one whose only listener is HTTPS on
/// [`PORT`], terminating TLS with the Secret `bench-tls`, and writes that Secret from `files`.
/// The HTTPRoute's parentRef (the Gateway, no section) attaches it to this listener.
pub fn write_manifests(manifests: &Path, files: &TlsFiles) -> anyhow::Result<()> {
    let indent = |pem: String| -> String { pem.lines().map(|l| format!("    {l}\n")).collect() };
    let cert = indent(std::fs::read_to_string(&files.cert)?);
    let key = indent(std::fs::read_to_string(&files.key)?);
    write_atomically(
        &manifests.join("bench-tls-secret.yaml"),
        &format!(
            "# Written by `cargo xtask bench l7 --tls`: the bench's certificate (ECDSA P-256).
apiVersion: v1
kind: Secret
metadata:
  name: bench-tls
  namespace: default
type: kubernetes.io/tls
stringData:
  tls.crt: |
{cert}  tls.key: |
{key}"
        ),
    )?;
    write_atomically(
        &manifests.join("gateway.yaml"),
        &format!(
            "# Written by `cargo xtask bench l7 --tls`: the guide's Gateway, HTTPS only.
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: kong
  namespace: default
spec:
  gatewayClassName: splitter
  listeners:
  - name: proxy
    protocol: HTTPS
    port: {PORT}
    tls:
      mode: Terminate
      certificateRefs:
      - kind: Secret
        name: bench-tls
"
        ),
    )
}

/// A run of `splitter-tls-load`: its report read as wrk's (a connection for a request), and
/// how many of its handshakes were resumptions.
pub struct Handshakes {
    pub report: WrkReport,
    pub resumed: u64,
}

/// New TLS connections, one request each: `splitter-tls-load` with `load.connections`
/// connections in flight for `load.duration`, in `ns`. Without `resume`, full handshakes
/// only: a resumed one voids the run. With it, the client offers the sessions it was given.
pub fn new_connections(
    ns: &NetNs,
    tool: &Path,
    ca: &Path,
    path: &str,
    load: &Load,
    resume: bool,
) -> anyhow::Result<Handshakes> {
    let mut cmd = ns.command(tool);
    if resume {
        cmd.arg("--resume");
    }
    let out = cmd
        .args(["--connect", &format!("{GATEWAY}:{PORT}")])
        .args(["--server-name", GATEWAY, "--path", path])
        .arg("--ca")
        .arg(ca)
        .args(["--concurrency", &load.connections.to_string()])
        .args(["--seconds", &load.duration.as_secs().to_string()])
        .output()
        .context("running splitter-tls-load")?;
    if !out.status.success() {
        bail!(
            "splitter-tls-load failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let h = parse(&String::from_utf8_lossy(&out.stdout))?;
    if !resume && h.resumed > 0 {
        bail!(
            "{} handshakes were resumptions: the case measures full handshakes only",
            h.resumed
        );
    }
    Ok(h)
}

/// Reads `splitter-tls-load`'s JSON line.
fn parse(text: &str) -> anyhow::Result<Handshakes> {
    let v: serde_json::Value = serde_json::from_str(text.trim())
        .with_context(|| format!("reading splitter-tls-load's report {text:?}"))?;
    let int = |k: &str| v[k].as_u64().with_context(|| format!("no {k} in {text:?}"));
    Ok(Handshakes {
        report: WrkReport {
            requests: int("connections")?,
            requests_per_sec: v["per_sec"]
                .as_f64()
                .with_context(|| format!("no per_sec in {text:?}"))?,
            p99: Duration::from_micros(int("p99_us")?),
            errors: int("errors")?,
        },
        resumed: int("resumed")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_load_report() {
        let h =
            parse(r#"{"connections":1200,"per_sec":120.5,"p99_us":2500,"errors":1,"resumed":7}"#)
                .unwrap();
        assert_eq!(h.report.requests, 1200);
        assert_eq!(h.report.requests_per_sec, 120.5);
        assert_eq!(h.report.p99, Duration::from_micros(2500));
        assert_eq!(h.report.errors, 1);
        assert_eq!(h.resumed, 7);
        assert!(parse(r#"{"connections":1,"per_sec":1,"p99_us":1,"errors":0}"#).is_err());
    }
}
