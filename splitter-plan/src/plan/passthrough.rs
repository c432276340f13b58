//! TLS passthrough listeners (`protocol: TLS`, `tls.mode: Passthrough`): TLSRoutes by SNI.
//!
//! A listener whose one TLSRoute takes every name the listener accepts is split in the kernel
//! like a TCPRoute (no name to read). Otherwise the proxy reads the client's ClientHello
//! without terminating TLS, picks the route by its server name (SNI) with this table, and
//! splices the connection to a backend of that route chosen per connection by weight.

use serde::Serialize;

use super::{ObjectKey, gateways::age_key, hostname, l7::PlannedBackend};

/// The SNI routes of one passthrough listener, most specific name first: exact names (longest
/// first), then wildcards (longest suffix first), then the route that takes any name. Ties:
/// the oldest route, then `namespace/name`. A connection goes to the first entry whose name
/// matches its SNI; none: it is closed.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct PassthroughTable {
    pub routes: Vec<SniRoute>,
}

/// One effective name of one TLSRoute on the listener.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SniRoute {
    pub route: ObjectKey,
    /// The name (`*.` wildcards match one or more labels) this entry takes; `None`: any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The rule's weighted backendRefs, in spec order.
    pub backends: Vec<PlannedBackend>,
    /// Listener isolation: the hostnames of the more specific TLS listeners on the port. A
    /// name one of them matches belongs to that listener's routes only, so this entry does not
    /// take it even when none of those routes does (the connection is closed).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shadowed_by: Vec<String>,
}

impl PassthroughTable {
    /// The route a ClientHello's server name goes to: the first, most specific, match.
    pub fn route_for(&self, sni: Option<&str>) -> Option<&SniRoute> {
        self.routes.iter().find(|r| r.takes(sni))
    }
}

impl SniRoute {
    /// Whether this entry takes a ClientHello with server name `sni`. A ClientHello without
    /// a server name only matches an entry that takes any name.
    pub fn takes(&self, sni: Option<&str>) -> bool {
        let named = match (&self.hostname, sni) {
            (None, _) => true,
            (Some(pattern), Some(name)) => hostname::matches(pattern, name),
            (Some(_), None) => false,
        };
        named
            && !sni.is_some_and(|name| {
                self.shadowed_by
                    .iter()
                    .any(|listener| hostname::matches(listener, name))
            })
    }
}

/// One attached TLSRoute, as [`table`] takes it.
pub(crate) struct SniAttachment<'a> {
    pub route: ObjectKey,
    pub created: Option<i64>,
    /// The effective names (listener and route hostnames intersected); empty = any name.
    pub hostnames: &'a [String],
    pub backends: &'a [PlannedBackend],
    /// The hostnames of the more specific listeners on the port (listener isolation).
    pub shadowed_by: &'a [String],
}

/// The table of a listener from its attached routes, in precedence order. An effective name
/// two routes share goes to the older one (the other's entry is never reached).
pub(crate) fn table(attachments: &[SniAttachment<'_>]) -> PassthroughTable {
    let mut entries: Vec<(_, SniRoute)> = Vec::new();
    for a in attachments {
        let names: Vec<Option<&String>> = if a.hostnames.is_empty() {
            vec![None]
        } else {
            a.hostnames.iter().map(Some).collect()
        };
        for name in names {
            let (t, ns, n) = age_key(a.created, &a.route.namespace, &a.route.name);
            let key = (
                hostname::specificity(name.map(String::as_str)),
                (t, ns.to_string(), n.to_string()),
            );
            entries.push((
                key,
                SniRoute {
                    route: a.route.clone(),
                    hostname: name.cloned(),
                    backends: a.backends.to_vec(),
                    shadowed_by: a.shadowed_by.to_vec(),
                },
            ));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    PassthroughTable {
        routes: entries.into_iter().map(|(_, r)| r).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;

    fn attach<'a>(name: &str, created: i64, hostnames: &'a [String]) -> SniAttachment<'a> {
        SniAttachment {
            route: ObjectKey::new(Kind::TlsRoute, "ns", name),
            created: Some(created),
            hostnames,
            backends: &[],
            shadowed_by: &[],
        }
    }

    fn names(t: &PassthroughTable, sni: Option<&str>) -> Option<String> {
        t.route_for(sni).map(|r| r.route.name.clone())
    }

    #[test]
    fn exact_beats_wildcard_beats_any_whatever_the_age() {
        let any: Vec<String> = vec![];
        let wild = vec!["*.example.com".to_string()];
        let exact = vec!["abc.example.com".to_string()];
        let t = table(&[
            attach("any", 1, &any),
            attach("wild", 2, &wild),
            attach("exact", 3, &exact),
        ]);
        assert_eq!(names(&t, Some("abc.example.com")).as_deref(), Some("exact"));
        assert_eq!(
            names(&t, Some("x.abc.example.com")).as_deref(),
            Some("wild")
        );
        assert_eq!(names(&t, Some("example.com")).as_deref(), Some("any"));
        assert_eq!(names(&t, None).as_deref(), Some("any"));
    }

    #[test]
    fn no_match_and_no_sni_find_nothing_without_a_catch_all() {
        let wild = vec!["*.example.com".to_string()];
        let t = table(&[attach("wild", 1, &wild)]);
        assert_eq!(names(&t, Some("example.org")), None);
        assert_eq!(names(&t, None), None);
        // Names compare case-insensitively, as DNS names do.
        assert_eq!(names(&t, Some("A.EXAMPLE.com")).as_deref(), Some("wild"));
    }

    #[test]
    fn a_name_of_a_more_specific_listener_is_not_taken_by_another_listeners_route() {
        let wild = vec!["*.example.com".to_string()];
        let shadow = vec!["abc.example.com".to_string()];
        let mut a = attach("wild", 1, &wild);
        a.shadowed_by = &shadow;
        let t = table(&[a]);
        assert_eq!(names(&t, Some("abc.example.com")), None);
        assert_eq!(names(&t, Some("x.example.com")).as_deref(), Some("wild"));
    }

    #[test]
    fn a_shared_name_goes_to_the_older_route() {
        let n = vec!["a.example.com".to_string()];
        let t = table(&[attach("newer", 5, &n), attach("older", 1, &n)]);
        assert_eq!(names(&t, Some("a.example.com")).as_deref(), Some("older"));
    }
}
