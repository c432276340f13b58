//! What a request names: the resource and object of its path, its selectors, its query.

use serde_json::Value;

use super::{
    Logged,
    store::{Part, Store, resource_id},
};

/// The resource and object a path names.
pub struct Target {
    pub resource: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub part: Part,
}

impl Target {
    pub fn parse(path: &str, store: &Store) -> Option<Self> {
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let (group, version, rest) = match segs.as_slice() {
            ["api", v, rest @ ..] => ("", *v, rest),
            ["apis", g, v, rest @ ..] => (*g, *v, rest),
            _ => return None,
        };
        // `namespaces/{ns}/{plural}...`, unless it is a Namespace itself (`namespaces/{name}`,
        // `namespaces/{name}/status`).
        let (namespace, rest) = match rest {
            ["namespaces", ns, plural, more @ ..] if *plural != "status" => (Some(*ns), {
                let mut v = vec![*plural];
                v.extend(more);
                v
            }),
            _ => (None, rest.to_vec()),
        };
        let (plural, name, part) = match rest.as_slice() {
            [plural] => (*plural, None, Part::Object),
            [plural, name] => (*plural, Some(*name), Part::Object),
            [plural, name, "status"] => (*plural, Some(*name), Part::Status),
            _ => return None,
        };
        let resource = resource_id(group, version, plural);
        let t = store.resource(&resource)?;
        if namespace.is_some() && !t.namespaced {
            return None;
        }
        Some(Self {
            resource,
            namespace: namespace.map(str::to_string),
            name: name.map(str::to_string),
            part,
        })
    }
}

/// `fieldSelector` and `labelSelector`, equality terms only (`a=b`, `a==b`).
#[derive(Clone, Debug, Default)]
pub struct Selector {
    fields: Vec<(String, String)>,
    labels: Vec<(String, String)>,
}

impl Selector {
    pub fn of(req: &Logged) -> Self {
        let terms = |s: Option<&str>| -> Vec<(String, String)> {
            s.unwrap_or_default()
                .split(',')
                .filter(|t| !t.is_empty())
                .filter_map(|t| t.split_once('='))
                .map(|(k, v)| (k.to_string(), v.trim_start_matches('=').to_string()))
                .collect()
        };
        Self {
            fields: terms(req.param("fieldSelector")),
            labels: terms(req.param("labelSelector")),
        }
    }

    pub fn matches(&self, o: &Value) -> bool {
        self.fields.iter().all(|(path, want)| {
            let got = path.split('.').fold(o, |v, k| &v[k]);
            got.as_str() == Some(want.as_str())
        }) && self
            .labels
            .iter()
            .all(|(k, want)| o["metadata"]["labels"][k].as_str() == Some(want.as_str()))
    }
}

pub fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-decoding of a query component (`+` is a space).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::agent_resources;

    #[test]
    fn paths_name_resources_as_the_real_server_does() {
        let mut store = Store::default();
        for r in agent_resources(&["tcproutes"]) {
            store.serve(r);
        }
        let t =
            |p: &str| Target::parse(p, &store).map(|t| (t.resource, t.namespace, t.name, t.part));
        let svc = resource_id("", "v1", "services");
        let ns = resource_id("", "v1", "namespaces");
        assert_eq!(
            t("/api/v1/services"),
            Some((svc.clone(), None, None, Part::Object))
        );
        assert_eq!(
            t("/api/v1/namespaces/infra/services/a/status"),
            Some((svc, Some("infra".into()), Some("a".into()), Part::Status))
        );
        // The Namespace kind itself: a list, an object, its status.
        assert_eq!(
            t("/api/v1/namespaces"),
            Some((ns.clone(), None, None, Part::Object))
        );
        assert_eq!(
            t("/api/v1/namespaces/infra"),
            Some((ns.clone(), None, Some("infra".into()), Part::Object))
        );
        assert_eq!(
            t("/api/v1/namespaces/infra/status"),
            Some((ns, None, Some("infra".into()), Part::Status))
        );
        // Not served, or a cluster-scoped kind under a namespace: 404.
        assert!(t("/apis/gateway.networking.k8s.io/v1/tcproutes").is_none());
        assert!(t("/apis/gateway.networking.k8s.io/v1/namespaces/x/gatewayclasses").is_none());
        assert_eq!(
            parse_query("fieldSelector=type%3Dkubernetes.io%2Ftls&watch=true"),
            [
                (
                    "fieldSelector".to_string(),
                    "type=kubernetes.io/tls".to_string()
                ),
                ("watch".to_string(), "true".to_string())
            ]
        );
    }
}
