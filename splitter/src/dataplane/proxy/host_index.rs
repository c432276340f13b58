//! Which routes a request's host can match, so that a request is checked against the routes
//! of its host and the few with wildcard or no hostnames, not against every route: at
//! thousands of routes, a scan of all of them per request was a tenth of the proxy's time.
//!
//! Positions are the routes' places in the plan's table (precedence order); the index only
//! narrows the candidates, and each candidate still checks the request itself, so the first
//! match is the one a scan of every route finds.

use std::{borrow::Cow, collections::HashMap};

use splitter_plan::plan::{l7::L7Route, l7_match::bare_host};

#[derive(Debug, Default)]
pub struct HostIndex {
    /// By lower-case name: the positions of the routes whose hostnames are exact names and
    /// include it, ascending.
    exact: HashMap<String, Vec<u32>>,
    /// Routes without hostnames (any host) or with a wildcard: candidates for every host.
    general: Vec<u32>,
}

impl HostIndex {
    pub fn new<'a>(routes: impl IntoIterator<Item = &'a L7Route>) -> Self {
        let mut out = Self::default();
        for (i, r) in routes.into_iter().enumerate() {
            let i = i as u32;
            if r.hostnames.is_empty() || r.hostnames.iter().any(|h| h.starts_with('*')) {
                out.general.push(i);
                continue;
            }
            for h in &r.hostnames {
                let at = out.exact.entry(h.to_ascii_lowercase()).or_default();
                if at.last() != Some(&i) {
                    at.push(i);
                }
            }
        }
        out
    }

    /// The positions of the routes `host` may match, ascending.
    pub fn candidates(&self, host: Option<&str>) -> impl Iterator<Item = u32> + '_ {
        let exact = host
            .map(normalize)
            .and_then(|h| self.exact.get(h.as_ref()))
            .map_or(&[][..], Vec::as_slice);
        Merge {
            a: exact,
            b: &self.general,
        }
    }
}

/// A request's host as route hostnames are written: no port, no trailing dot, lower case.
fn normalize(host: &str) -> Cow<'_, str> {
    let h = bare_host(host);
    if h.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(h.to_ascii_lowercase())
    } else {
        Cow::Borrowed(h)
    }
}

/// Two ascending lists as one.
struct Merge<'a> {
    a: &'a [u32],
    b: &'a [u32],
}

impl Iterator for Merge<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        let take_a = match (self.a.first(), self.b.first()) {
            (Some(x), Some(y)) => x <= y,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        let list = if take_a { &mut self.a } else { &mut self.b };
        let (first, rest) = list.split_first()?;
        *list = rest;
        Some(*first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use splitter_plan::plan::l7_match::hostname_matches;

    fn route(hostnames: &[&str]) -> L7Route {
        L7Route {
            route: splitter_plan::plan::ObjectKey {
                kind: splitter_plan::model::Kind::HttpRoute,
                namespace: "ns".into(),
                name: "r".into(),
            },
            rule_index: 0,
            hostnames: hostnames.iter().map(|h| h.to_string()).collect(),
            shadowed_by: vec![],
            matched: splitter_plan::plan::l7::RouteMatch {
                path: splitter_plan::plan::l7::PathMatch::Prefix("/".into()),
                headers: vec![],
                query: vec![],
                method: None,
                grpc: None,
            },
            filters: vec![],
            backends: vec![],
            timeouts: Default::default(),
            mirrors: vec![],
        }
    }

    const NAMES: [&str; 6] = [
        "a.example.com",
        "b.example.com",
        "*.example.com",
        "x.a.example.com",
        "*.a.example.com",
        "other.org",
    ];
    const HOSTS: [&str; 8] = [
        "a.example.com",
        "A.Example.COM:8080",
        "b.example.com.",
        "x.a.example.com",
        "example.com",
        "other.org",
        "[2001:db8::1]:80",
        "nothing.net",
    ];

    proptest! {
        /// For any routes and host, the candidates include every route whose hostnames
        /// match the host, in order: the index never hides a route a scan would find.
        #[test]
        fn candidates_hold_every_matching_route_in_order(
            routes in prop::collection::vec(prop::collection::vec(0..NAMES.len(), 0..3), 0..12),
            host in prop::option::of(0..HOSTS.len()),
        ) {
            let routes: Vec<L7Route> = routes
                .iter()
                .map(|names| route(&names.iter().map(|&n| NAMES[n]).collect::<Vec<_>>()))
                .collect();
            let index = HostIndex::new(&routes);
            let host = host.map(|h| HOSTS[h]);
            let candidates: Vec<u32> = index.candidates(host).collect();
            prop_assert!(candidates.windows(2).all(|w| w[0] < w[1]), "{candidates:?}");
            for (i, r) in routes.iter().enumerate() {
                if hostname_matches(&r.hostnames, host) {
                    prop_assert!(candidates.contains(&(i as u32)), "route {i} {:?} for {host:?}", r.hostnames);
                }
            }
        }
    }

    #[test]
    fn a_host_only_sees_its_own_routes_and_the_general_ones() {
        let routes = [
            route(&["a.example.com"]),
            route(&[]),
            route(&["b.example.com", "a.example.com"]),
            route(&["*.example.com"]),
            route(&["b.example.com"]),
        ];
        let index = HostIndex::new(&routes);
        let of = |h: Option<&str>| index.candidates(h).collect::<Vec<_>>();
        assert_eq!(of(Some("A.example.com:80")), [0, 1, 2, 3]);
        assert_eq!(of(Some("b.example.com")), [1, 2, 3, 4]);
        assert_eq!(of(Some("c.example.com")), [1, 3]);
        assert_eq!(of(None), [1, 3]);
    }
}
