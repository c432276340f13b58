//! The nodes that serve every Gateway: those whose agent pod (the DaemonSet's, in the agent's
//! namespace) is Ready. Their addresses are `status.addresses` of a Gateway without
//! `spec.addresses` and without `--status-address`: every one of them answers on every
//! listener.

use std::{net::IpAddr, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, api::ListParams};

/// Which pods are the agent's: the DaemonSet's namespace and pod label selector.
#[derive(Clone, Debug)]
pub struct AgentPods {
    pub namespace: String,
    /// e.g. `app.kubernetes.io/name=splitter`.
    pub selector: String,
}

/// The default `--agent-selector`: the label deploy/daemonset.yaml puts on its pods.
pub const DEFAULT_SELECTOR: &str = "app.kubernetes.io/name=splitter";

const LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// The addresses of the nodes running a Ready agent pod, sorted, each once: the pod's
/// `status.hostIPs` (dual-stack nodes have two), else `status.hostIP`. A pod that is not
/// Ready (starting, failing its readiness probe: a listener it cannot bind, its kernel half
/// off) does not serve, so its node is left out.
pub fn ready_node_addresses(pods: &[Pod]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = pods
        .iter()
        .filter_map(|p| p.status.as_ref())
        .filter(|s| {
            s.conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
        .flat_map(|s| {
            let many: Vec<&str> = s.host_ips.iter().flatten().map(|h| h.ip.as_str()).collect();
            if many.is_empty() {
                s.host_ip.as_deref().into_iter().collect()
            } else {
                many
            }
        })
        .filter_map(|ip| ip.parse().ok())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Lists the agent's pods and returns [`ready_node_addresses`].
pub async fn list(client: &Client, pods: &AgentPods) -> anyhow::Result<Vec<IpAddr>> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pods.namespace);
    let params = ListParams::default().labels(&pods.selector);
    let list = tokio::time::timeout(LIST_TIMEOUT, api.list(&params))
        .await
        .map_err(|_| anyhow::anyhow!("listing pods: no answer within {LIST_TIMEOUT:?}"))??;
    Ok(ready_node_addresses(&list.items))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(ready: &str, host_ips: &[&str], host_ip: Option<&str>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "status": {
                "conditions": [{"type": "Ready", "status": ready}],
                "hostIPs": host_ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
                "hostIP": host_ip,
            }
        }))
        .expect("pod")
    }

    #[test]
    fn ready_pods_name_their_nodes_once_each_family_included() {
        let pods = [
            pod("True", &["10.0.0.2", "fd00::2"], Some("10.0.0.2")),
            pod("True", &[], Some("10.0.0.1")),
            // Not ready: its node does not serve.
            pod("False", &["10.0.0.3"], Some("10.0.0.3")),
            // Two pods on one node (a rollout): one address.
            pod("True", &["10.0.0.1"], None),
            // Not scheduled yet, or an unparsable address.
            pod("True", &[], None),
            pod("True", &["not-an-ip"], None),
        ];
        let want: Vec<IpAddr> = ["10.0.0.1", "10.0.0.2", "fd00::2"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(ready_node_addresses(&pods), want);
    }
}
