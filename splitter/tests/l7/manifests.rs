//! L7 tests from manifests: the objects go through the model and the plan as the agent's do,
//! and the proxy serves the table the plan made. A Gateway `default/gw` with an HTTP listener
//! on port 80 ([`GATEWAY`]) and Services with one endpoint each ([`service`]).

use std::net::SocketAddr;

use splitter::dataplane::proxy::{Proxy, ProxyConfig, ProxyListener};
use splitter_plan::{
    model::{
        Index,
        parse::{Parsed, parse},
    },
    plan::{self, PlanConfig},
};

use crate::support::*;

/// The common objects: our GatewayClass and an HTTP Gateway on port 80.
pub const GATEWAY: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: splitter}
spec: {controllerName: splitter.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: default}
spec:
  gatewayClassName: splitter
  listeners: [{name: http, protocol: HTTP, port: 80}]
"#;

/// A Service `name` (port 8080, `appProtocol` if given) whose one endpoint is `addr`.
pub fn service(name: &str, addr: Option<SocketAddr>, app_protocol: Option<&str>) -> String {
    let app = app_protocol
        .map(|a| format!(", appProtocol: {a}"))
        .unwrap_or_default();
    let port = addr.map_or(9, |a| a.port());
    let endpoints = match addr {
        Some(a) => format!("endpoints: [{{addresses: [\"{}\"]}}]", a.ip()),
        None => "endpoints: []".into(),
    };
    format!(
        r#"
---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: default}}
spec:
  ports: [{{name: p, port: 8080, targetPort: {port}{app}}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}-1, namespace: default, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{name: p, port: {port}, protocol: TCP}}]
{endpoints}
"#
    )
}

/// The proxy serving the plan of `yaml` (plus the Gateway): the table of its one listener.
pub async fn proxy_for(yaml: &str) -> (Proxy, ProxyListener) {
    proxy_with(test_config(), yaml).await
}

pub async fn proxy_with(config: ProxyConfig, yaml: &str) -> (Proxy, ProxyListener) {
    serve(config, &format!("{GATEWAY}{yaml}")).await
}

/// The proxy serving the plan of the whole of `text`.
pub async fn serve(config: ProxyConfig, text: &str) -> (Proxy, ProxyListener) {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(text).expect("valid YAML");
    let objects =
        docs.into_iter()
            .filter(|d| !d.is_null())
            .map(|d| match parse(d).expect("valid object") {
                Parsed::Object(o) => *o,
                Parsed::Skipped { kind, .. } => panic!("{kind} skipped"),
            });
    let plan = plan::build(&Index::from_objects(objects), &PlanConfig::default(), None);
    // The listener binds every address (0.0.0.0 and [::]): one table, served here once.
    let table = plan
        .l7_tables()
        .into_values()
        .next()
        .unwrap_or_else(|| panic!("an L7 listener: {:#?}", plan.listeners));
    start_proxy_with(config, &table).await
}
