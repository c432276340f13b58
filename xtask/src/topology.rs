//! The namespace topology `xtask demo` and `xtask bench l7` share: a client, the gateway (where
//! the agent or a peer proxy runs, as it would on a node) and two echo backends, each in its own
//! network namespace, linked by veth pairs through the gateway. Also the guide's manifests
//! rewritten for these addresses, the agent's command line, and process guards.
//!
//! Nothing here routes outside the namespaces: the client reaches only the gateway, the
//! backends' default route points at the gateway, and the host's namespace is never touched.

use std::{
    ffi::{OsStr, OsString},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use testbed::{AddressPlan, ChildGuard, GatewayNet, NetNs};

pub const CLIENT: &str = "10.240.0.1";
pub const GATEWAY: &str = "10.240.0.2";
/// The guide's Services and the address of the namespace each one's echo server runs in.
pub const BACKENDS: [(&str, &str); 2] = [("echo", "10.241.1.2"), ("echo2", "10.241.2.2")];
pub const ECHO_PORT: u16 = 1027;

/// Which cargo profile the agent and the echo backend are built with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    Debug,
    Release,
}

pub struct Binaries {
    pub splitter: PathBuf,
    pub echo: PathBuf,
    /// The new-TLS-connection load of `bench l7 --tls`.
    pub tls_load: PathBuf,
}

/// Builds `splitter`, `splitter-echo` and `splitter-tls-load` and returns their paths.
pub fn build_binaries(profile: Profile) -> anyhow::Result<Binaries> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["build", "--quiet", "--package", "splitter", "--bins"]);
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    let st = cmd.status()?;
    if !st.success() {
        bail!("cargo build failed");
    }
    let target = std::env::var("CARGO_TARGET_DIR").unwrap_or_else(|_| "target".into());
    let dir = Path::new(&target).join(match profile {
        Profile::Debug => "debug",
        Profile::Release => "release",
    });
    Ok(Binaries {
        splitter: dir.join("splitter").canonicalize()?,
        echo: dir.join("splitter-echo").canonicalize()?,
        tls_load: dir.join("splitter-tls-load").canonicalize()?,
    })
}

/// A backend: its namespace's address and the name its echo server answers on
/// `GET /hostname`.
pub struct Backend {
    pub addr: &'static str,
    pub pod: String,
}

pub struct Topology {
    // Declared first so they are dropped first: the echo servers stop before their
    // namespaces go.
    _echoes: Vec<ChildGuard>,
    pub backends: Vec<Backend>,
    pub net: GatewayNet,
}

/// The addresses of [`CLIENT`], [`GATEWAY`] and [`BACKENDS`].
const NET: AddressPlan = AddressPlan {
    front: "10.240.0",
    backends: "10.241",
    first: 1,
};

impl Topology {
    /// Creates the namespaces and links and starts one `splitter-echo` per backend on
    /// `0.0.0.0:ECHO_PORT` of its namespace. `tag` starts the namespace names (at most two
    /// letters, so the names stay unique and short).
    pub fn new(tag: &str, echo: &Path) -> anyhow::Result<Self> {
        let net = GatewayNet::new(tag, NET, BACKENDS.len())?;
        let mut topo = Topology {
            _echoes: vec![],
            backends: vec![],
            net,
        };
        for (i, (service, addr)) in BACKENDS.iter().enumerate() {
            debug_assert_eq!(NET.backend(i), *addr);
            let pod = format!("{service}-{}", &testbed::unique_name("p")[1..]);
            let child = topo.net.backends[i]
                .command(echo)
                .args(["--listen", &format!("0.0.0.0:{ECHO_PORT}"), "--name", &pod])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting splitter-echo")?;
            topo._echoes.push(ChildGuard(child));
            topo.backends.push(Backend { addr, pod });
        }
        Ok(topo)
    }

    /// `curl ARGS` in the client namespace; its stdout.
    pub fn curl(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .net
            .client
            .command("curl")
            .args(args)
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            bail!("curl {args:?} failed: {}", out.status);
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until `http://GATEWAY<path>` answers 200 to the client.
    pub fn wait_until_served(&self, path: &str, timeout: Duration) -> anyhow::Result<()> {
        self.wait_until_answers(&format!("http://{GATEWAY}{path}"), &[], timeout)
    }

    /// Waits until `url` answers 200 to the client's curl, run with `args` added (e.g.
    /// `--cacert` for an https URL).
    pub fn wait_until_answers(
        &self,
        url: &str,
        args: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        wait_for(&format!("{url} to answer 200"), timeout, || {
            let mut all = vec!["-s", "-o", "/dev/null", "-w", "%{http_code}"];
            all.extend_from_slice(args);
            all.push(url);
            self.curl(&all).is_ok_and(|c| c == "200")
        })
    }
}

/// Writes the guide's L7 manifests into `dir`: the GatewayClass, the Gateway `kong` (port 80),
/// the Services with EndpointSlices at the backends' addresses (as the EndpointSlice
/// controller would write them on a cluster), and the HTTPRoute `/echo` with strip-path, with
/// `weights` patched in when given (the guide's `kubectl patch`, done on the file).
pub fn write_l7_manifests(dir: &Path, weights: Option<(u32, u32)>) -> anyhow::Result<()> {
    std::fs::copy("deploy/gatewayclass.yaml", dir.join("gatewayclass.yaml"))?;
    std::fs::copy("deploy/examples/gateway.yaml", dir.join("gateway.yaml"))?;
    let services = std::fs::read_to_string("deploy/examples/echo-services.yaml")?
        .replace("\"127.0.0.2\"", &format!("\"{}\"", BACKENDS[0].1))
        .replace("\"127.0.0.3\"", &format!("\"{}\"", BACKENDS[1].1));
    std::fs::write(dir.join("echo-services.yaml"), services)?;
    let mut route = std::fs::read_to_string("deploy/examples/httproute.yaml")?;
    if let Some((a, b)) = weights {
        route = route
            .replace(
                "    - name: echo\n      kind: Service\n      port: 1027\n",
                &format!(
                    "    - name: echo\n      kind: Service\n      port: 1027\n      weight: {a}\n"
                ),
            )
            .replace(
                "    - name: echo2\n      kind: Service\n      port: 1027",
                &format!(
                    "    - name: echo2\n      kind: Service\n      port: 1027\n      weight: {b}"
                ),
            );
    }
    write_atomically(&dir.join("httproute.yaml"), &route)
}

/// Writes through a rename, so the agent's file poller never reads half a file.
pub fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// `splitter run --manifests DIR --admin 127.0.0.1:9901` in the gateway namespace, output to
/// `log`. Callers add `--iface`/`--pin-dir` or environment before spawning.
pub fn agent_command(
    gateway: &NetNs,
    splitter: &Path,
    manifests: &Path,
    log: &Path,
) -> anyhow::Result<Command> {
    agent_command_under(gateway, &[], splitter, manifests, log)
}

/// `program` in `ns`, run by `prefix` (a program and its arguments, e.g. valgrind's) when that
/// is not empty.
pub fn command_under(ns: &NetNs, prefix: &[OsString], program: impl AsRef<OsStr>) -> Command {
    match prefix.split_first() {
        Some((runner, args)) => {
            let mut cmd = ns.command(runner);
            cmd.args(args).arg(program);
            cmd
        }
        None => ns.command(program),
    }
}

/// [`agent_command`] run by `prefix` (a program and its arguments, e.g. valgrind's) when it is
/// not empty.
pub fn agent_command_under(
    gateway: &NetNs,
    prefix: &[OsString],
    splitter: &Path,
    manifests: &Path,
    log: &Path,
) -> anyhow::Result<Command> {
    let log_file = std::fs::File::create(log)
        .with_context(|| format!("creating the agent log {}", log.display()))?;
    let mut cmd = command_under(gateway, prefix, splitter);
    cmd.arg("run")
        .arg("--manifests")
        .arg(manifests)
        .args(["--admin", "127.0.0.1:9901"])
        .stdout(log_file.try_clone()?)
        .stderr(log_file);
    Ok(cmd)
}

pub fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    bail!("timed out waiting for {what}")
}

/// A server process stopped with SIGTERM on drop (SIGKILL if it has not exited within a few
/// seconds). Needed where SIGKILL would leave work behind: an nginx master killed outright
/// leaves its workers running, still bound to the port.
pub struct TermGuard(Child);

impl TermGuard {
    pub fn new(child: Child) -> Self {
        Self(child)
    }

    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Fails when the process has already exited (it could not start, e.g. the port is taken).
    pub fn check_running(&mut self, what: &str) -> anyhow::Result<()> {
        if let Some(st) = self.0.try_wait()? {
            bail!("{what} exited: {st}");
        }
        Ok(())
    }
}

impl Drop for TermGuard {
    fn drop(&mut self) {
        let Ok(pid) = i32::try_from(self.0.id()) else {
            return;
        };
        if matches!(self.0.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
