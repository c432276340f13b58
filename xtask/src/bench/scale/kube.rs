//! The kube source: the cluster stored in the mock Kubernetes API server of the kube tests
//! ([`testbed::apiserver`]), served over plain HTTP on a loopback address of the bench's
//! network namespace, and the agent run with `--kube` and a kubeconfig naming it. A change is
//! an object written into the server's store, which reaches the agent as a watch event over
//! its open watch, as an apply by another client would.
//!
//! The agent also campaigns for the status writer's Lease and, as its holder, writes the
//! status of every Gateway and route through the same server: the server's request log says
//! how many requests (and status writes) the agent made.

use std::{net::SocketAddr, path::Path, thread::JoinHandle};

use anyhow::Context;
use serde_json::{Value, json};
use testbed::{
    NetNs,
    apiserver::{ApiServer, Logged, agent_resources},
};
use tokio::sync::oneshot;

use super::{Size, cluster};

/// The mock API server, serving on its own thread until dropped.
pub struct MockApi {
    api: ApiServer,
    pub addr: SocketAddr,
    /// How many objects it was started with.
    pub stored: usize,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MockApi {
    /// Starts a server of every kind the agent watches (and Leases) on a loopback address of
    /// `ns`, holding [`cluster::files`].
    pub fn start(ns: &NetNs, size: Size) -> anyhow::Result<Self> {
        let api = ApiServer::new(agent_resources(&[]));
        let mut stored = 0;
        for o in cluster::files(size).into_iter().flat_map(|(_, o)| o) {
            api.put(o);
            stored += 1;
        }
        // A socket belongs to the namespace it was made in, whichever thread then serves it.
        let listener = ns
            .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
            .context("binding the mock API server in the bench's namespace")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel();
        let server = api.clone();
        let thread = std::thread::spawn(move || {
            runtime.block_on(async move {
                match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => {
                        tokio::select! {
                            () = server.serve(listener, "agent".into()) => {}
                            _ = stopped => {}
                        }
                    }
                    Err(e) => eprintln!("bench scale: the mock API server's listener: {e}"),
                }
            });
            // Dropping the runtime ends the open watches and connections.
        });
        Ok(Self {
            api,
            addr,
            stored,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Writes a kubeconfig naming the server (plain HTTP, no credentials) at `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> anyhow::Result<()> {
        // JSON is YAML: kube reads it as any kubeconfig.
        let config = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "mock", "cluster": {"server": format!("http://{}", self.addr)}}],
            "users": [{"name": "bench", "user": {}}],
            "contexts": [{"name": "mock", "context": {"cluster": "mock", "user": "bench"}}],
            "current-context": "mock"
        });
        std::fs::write(path, serde_json::to_vec_pretty(&config)?)?;
        Ok(())
    }

    /// Creates or replaces `object` in the store; the agent's watch of its kind sees it.
    pub fn put(&self, object: Value) {
        self.api.put(object);
    }

    /// What the agent has asked so far.
    pub fn requests(&self) -> Requests {
        Requests::of(&self.api.log())
    }
}

impl Drop for MockApi {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Counts of the agent's requests to the API server.
#[derive(Clone, Copy, Debug, Default)]
pub struct Requests {
    pub total: usize,
    pub lists: usize,
    pub watches: usize,
    /// PUT or PATCH of a `status` subresource.
    pub status_writes: usize,
    /// Any other write (the Lease's).
    pub other_writes: usize,
}

impl Requests {
    fn of(log: &[Logged]) -> Self {
        let mut n = Self {
            total: log.len(),
            ..Self::default()
        };
        for l in log {
            if l.is_watch() {
                n.watches += 1;
            } else if l.method == "GET" && !l.path.ends_with("/status") {
                n.lists += usize::from(is_collection(&l.path));
            } else if matches!(l.method.as_str(), "PUT" | "PATCH") && l.path.ends_with("/status") {
                n.status_writes += 1;
            } else if l.is_write() {
                n.other_writes += 1;
            }
        }
        n
    }

    /// What was asked since `before`.
    pub fn since(self, before: Self) -> Self {
        Self {
            total: self.total - before.total,
            lists: self.lists - before.lists,
            watches: self.watches - before.watches,
            status_writes: self.status_writes - before.status_writes,
            other_writes: self.other_writes - before.other_writes,
        }
    }
}

impl std::fmt::Display for Requests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests ({} status writes, {} other writes, {} lists, {} watches)",
            self.total, self.status_writes, self.other_writes, self.lists, self.watches
        )
    }
}

/// Whether a GET path names a collection (a list) rather than one object: the segment before
/// the last is a version or a namespace's name under `namespaces`.
fn is_collection(path: &str) -> bool {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    matches!(
        segs.as_slice(),
        ["api", _, _]
            | ["apis", _, _, _]
            | ["api", _, "namespaces", _, _]
            | ["apis", _, _, "namespaces", _, _]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_told_from_gets_of_one_object() {
        assert!(is_collection("/api/v1/services"));
        assert!(is_collection("/apis/discovery.k8s.io/v1/endpointslices"));
        assert!(is_collection(
            "/apis/coordination.k8s.io/v1/namespaces/splitter-system/leases"
        ));
        assert!(!is_collection("/api/v1/namespaces/scale"));
        assert!(!is_collection(
            "/apis/coordination.k8s.io/v1/namespaces/splitter-system/leases/splitter"
        ));
    }
}
