//! Gateway API request matching, evaluated against one request. Pure: no I/O.
//!
//! The proxy evaluates the plan's [`RouteMatch`] as it is: the model already compiled its
//! regular expressions and parsed its header names and method.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, Method};

use super::{
    hostname,
    l7::{PathMatch, RouteMatch, ValueMatch},
};

/// The parts of a request a match looks at.
#[derive(Clone, Copy, Debug)]
pub struct RequestView<'a> {
    pub method: &'a Method,
    /// The path without the query, as sent.
    pub path: &'a str,
    /// The raw query string (after `?`), if any.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

impl RouteMatch {
    /// Whether the request satisfies every part of this match.
    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if let Some(m) = &self.method
            && m != req.method
        {
            return false;
        }
        if !self.path.matches(req.path) {
            return false;
        }
        if !self
            .headers
            .iter()
            .all(|h| header_matches(req.headers, &h.name, &h.value))
        {
            return false;
        }
        self.query
            .iter()
            .all(|q| match query_param(req.query, &q.name) {
                Some(v) => q.value.matches(&v),
                None => false,
            })
    }
}

impl PathMatch {
    pub fn matches(&self, path: &str) -> bool {
        match self {
            // The root prefix `/` trims to nothing and matches every path.
            PathMatch::Prefix(p) => {
                let p = p.trim_end_matches('/');
                p.is_empty() || prefix_matches(p, path)
            }
            PathMatch::Exact(p) => p == path,
            PathMatch::Regex(re) => re.is_match(path),
        }
    }
}

/// Element-wise prefix: `prefix` (no trailing `/`) matches itself and anything below it.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

/// A repeated header is compared as its values joined with `,` (RFC 9110 section 5.3); values
/// that are not visible ASCII never match.
fn header_matches(headers: &HeaderMap, name: &HeaderName, value: &ValueMatch) -> bool {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return false;
    };
    let Ok(first) = first.to_str() else {
        return false;
    };
    let mut joined: Option<String> = None;
    for v in values {
        let Ok(v) = v.to_str() else { return false };
        let s = joined.get_or_insert_with(|| first.to_owned());
        s.push(',');
        s.push_str(v);
    }
    value.matches(joined.as_deref().unwrap_or(first))
}

/// The first value of query parameter `name` (case-sensitive), percent-decoded.
fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<Cow<'a, str>> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k) == name).then(|| percent_decode(v))
    })
}

/// Decodes `%XX` escapes; anything malformed stays as written, invalid UTF-8 becomes U+FFFD.
/// Borrows when there is nothing to decode, which is the common case.
pub fn percent_decode(s: &str) -> Cow<'_, str> {
    percent_encoding::percent_decode_str(s).decode_utf8_lossy()
}

/// Whether a request's Host (or `:authority`) is accepted by a route's hostnames.
///
/// `patterns` are lower-case; empty accepts any host. The port is ignored, the comparison is
/// case-insensitive, and `*.example.com` accepts one or more labels before `example.com` but not
/// `example.com` itself.
pub fn hostname_matches(patterns: &[String], host: Option<&str>) -> bool {
    if patterns.is_empty() {
        return true;
    }
    let Some(host) = host.map(bare_host) else {
        return false;
    };
    patterns.iter().any(|p| hostname::matches(p, host))
}

/// A request's host as route hostnames are written, but for case: no port, no trailing dot.
pub fn bare_host(host: &str) -> &str {
    let h = strip_port(host);
    h.strip_suffix('.').unwrap_or(h)
}

/// `host:port` -> `host`; `[v6]:port` -> `[v6]`.
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;
    use crate::plan::l7::Pattern;
    use crate::plan::l7::{HeaderMatch, QueryMatch};

    fn m(path: PathMatch) -> RouteMatch {
        RouteMatch {
            path,
            headers: vec![],
            query: vec![],
            method: None,
            grpc: None,
        }
    }

    fn check(rm: &RouteMatch, method: &str, target: &str, headers: &[(&str, &str)]) -> bool {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        rm.matches(&RequestView {
            method: &method,
            path,
            query,
            headers: &map,
        })
    }

    fn re(s: &str) -> Pattern {
        Pattern::new(s).unwrap()
    }

    fn get(rm: &RouteMatch, target: &str) -> bool {
        check(rm, "GET", target, &[])
    }

    #[test]
    fn prefix_is_element_wise() {
        let rm = m(PathMatch::Prefix("/v2".into()));
        assert!(get(&rm, "/v2"));
        assert!(get(&rm, "/v2/"));
        assert!(get(&rm, "/v2/x"));
        assert!(get(&rm, "/v2/x?y=1"));
        assert!(!get(&rm, "/v2x"));
        assert!(!get(&rm, "/v"));
        assert!(!get(&rm, "/V2"));
        assert!(!get(&rm, "/"));
    }

    #[test]
    fn prefix_trailing_slash_is_ignored() {
        let rm = m(PathMatch::Prefix("/v2/".into()));
        assert!(get(&rm, "/v2"));
        assert!(get(&rm, "/v2/x"));
        assert!(!get(&rm, "/v2x"));
    }

    #[test]
    fn root_prefix_matches_everything() {
        let rm = m(PathMatch::Prefix("/".into()));
        for p in ["/", "/a", "/a/b/c", "/x?q"] {
            assert!(get(&rm, p), "{p}");
        }
    }

    #[test]
    fn exact_is_whole_path_and_case_sensitive() {
        let rm = m(PathMatch::Exact("/foo".into()));
        assert!(get(&rm, "/foo"));
        assert!(get(&rm, "/foo?a=b"));
        assert!(!get(&rm, "/foo/"));
        assert!(!get(&rm, "/Foo"));
        assert!(!get(&rm, "/foobar"));
    }

    #[test]
    fn regex_path_is_anchored() {
        let rm = m(PathMatch::Regex(re("/api/v[0-9]+")));
        assert!(get(&rm, "/api/v12"));
        assert!(!get(&rm, "/api/v12/x"));
        assert!(!get(&rm, "/x/api/v1"));
    }

    #[test]
    fn invalid_regex_is_an_error_not_a_panic() {
        assert!(Pattern::new("(").is_err());
    }

    #[test]
    fn header_names_are_case_insensitive_values_exact() {
        let mut rm = m(PathMatch::Prefix("/".into()));
        rm.headers.push(HeaderMatch {
            name: HeaderName::from_static("x-env"),
            value: ValueMatch::Exact("canary".into()),
        });
        assert!(check(&rm, "GET", "/", &[("X-Env", "canary")]));
        assert!(check(&rm, "GET", "/", &[("x-env", "canary")]));
        assert!(!check(&rm, "GET", "/", &[("x-env", "Canary")]));
        assert!(!check(&rm, "GET", "/", &[]));
    }

    #[test]
    fn header_regex_and_all_must_match() {
        let mut rm = m(PathMatch::Prefix("/".into()));
        rm.headers.push(HeaderMatch {
            name: HeaderName::from_static("x-a"),
            value: ValueMatch::Regex(re("v[0-9]")),
        });
        rm.headers.push(HeaderMatch {
            name: HeaderName::from_static("x-b"),
            value: ValueMatch::Exact("1".into()),
        });
        assert!(check(&rm, "GET", "/", &[("x-a", "v3"), ("x-b", "1")]));
        assert!(!check(&rm, "GET", "/", &[("x-a", "v3")]));
        assert!(!check(&rm, "GET", "/", &[("x-a", "v33"), ("x-b", "1")]));
    }

    #[test]
    fn repeated_header_is_joined() {
        let mut rm = m(PathMatch::Prefix("/".into()));
        rm.headers.push(HeaderMatch {
            name: HeaderName::from_static("x-a"),
            value: ValueMatch::Exact("1,2".into()),
        });
        assert!(check(&rm, "GET", "/", &[("x-a", "1"), ("x-a", "2")]));
        assert!(!check(&rm, "GET", "/", &[("x-a", "1")]));
    }

    #[test]
    fn query_names_are_case_sensitive_and_decoded() {
        let mut rm = m(PathMatch::Prefix("/".into()));
        rm.query.push(QueryMatch {
            name: "Mode".into(),
            value: ValueMatch::Exact("a b".into()),
        });
        assert!(get(&rm, "/x?Mode=a%20b"));
        assert!(get(&rm, "/x?z=1&Mode=a%20b"));
        assert!(!get(&rm, "/x?mode=a%20b"));
        assert!(!get(&rm, "/x?Mode=ab"));
        assert!(!get(&rm, "/x"));
    }

    #[test]
    fn first_query_value_counts() {
        let mut rm = m(PathMatch::Prefix("/".into()));
        rm.query.push(QueryMatch {
            name: "a".into(),
            value: ValueMatch::Regex(re("[0-9]+")),
        });
        assert!(get(&rm, "/?a=1&a=x"));
        assert!(!get(&rm, "/?a=x&a=1"));
    }

    #[test]
    fn method_must_match() {
        let mut rm = m(PathMatch::Prefix("/".into()));
        rm.method = Some(Method::POST);
        assert!(check(&rm, "POST", "/", &[]));
        assert!(!check(&rm, "GET", "/", &[]));
    }

    #[test]
    fn percent_decode_leaves_malformed_escapes() {
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
        assert_eq!(percent_decode("%"), "%");
    }

    fn hosts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn hostnames_ignore_port_and_case() {
        let h = hosts(&["foo.example.com"]);
        assert!(hostname_matches(&h, Some("foo.example.com")));
        assert!(hostname_matches(&h, Some("FOO.Example.com:8080")));
        assert!(hostname_matches(&h, Some("foo.example.com.")));
        assert!(!hostname_matches(&h, Some("bar.example.com")));
        assert!(!hostname_matches(&h, None));
        assert!(hostname_matches(&[], None));
        assert!(hostname_matches(&[], Some("anything")));
    }

    #[test]
    fn wildcard_needs_at_least_one_label() {
        let h = hosts(&["*.example.com"]);
        assert!(hostname_matches(&h, Some("foo.example.com")));
        assert!(hostname_matches(&h, Some("a.b.example.com:80")));
        assert!(!hostname_matches(&h, Some("example.com")));
        assert!(!hostname_matches(&h, Some(".example.com")));
        assert!(!hostname_matches(&h, Some("fooexample.com")));
    }

    #[test]
    fn strip_port_handles_ipv6() {
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("a:80"), "a");
        assert_eq!(strip_port("a"), "a");
    }
}
