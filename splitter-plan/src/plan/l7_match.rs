//! Gateway API request matching, evaluated against one request. Pure: no I/O.
//!
//! [`CompiledMatch`] is the serving form of an [`RouteMatch`]: header names parsed and regular
//! expressions compiled once, when a route table is installed, so a request only compares.

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, Method};
use regex::{Regex, RegexBuilder};

use super::l7::{PathMatch, RouteMatch, ValueMatch};

/// Upper bound on a compiled expression's size: a route's regex comes from a user's manifest and
/// must not be able to eat the proxy's memory.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Why a route match cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum MatchError {
    #[error("invalid regular expression {pattern:?}: {source}")]
    Regex {
        pattern: String,
        #[source]
        source: regex::Error,
    },
    #[error("invalid header name {0:?}")]
    HeaderName(String),
    #[error("invalid method {0:?}")]
    Method(String),
}

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

#[derive(Debug)]
enum PathMatcher {
    Exact(String),
    /// Stored without a trailing `/`; the root prefix is `Any`.
    Prefix(String),
    Any,
    Regex(Regex),
}

#[derive(Debug)]
enum ValueMatcher {
    Exact(String),
    Regex(Regex),
}

impl ValueMatcher {
    fn compile(value: &ValueMatch) -> Result<Self, MatchError> {
        Ok(match value {
            ValueMatch::Exact(v) => Self::Exact(v.clone()),
            ValueMatch::Regex(re) => Self::Regex(compile_anchored(re)?),
        })
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(v) => v == value,
            Self::Regex(re) => re.is_match(value),
        }
    }
}

/// A [`RouteMatch`] ready to be evaluated.
#[derive(Debug)]
pub struct CompiledMatch {
    path: PathMatcher,
    headers: Vec<(HeaderName, ValueMatcher)>,
    query: Vec<(String, ValueMatcher)>,
    method: Option<Method>,
}

impl CompiledMatch {
    pub fn compile(m: &RouteMatch) -> Result<Self, MatchError> {
        let path = match &m.path {
            PathMatch::Exact(p) => PathMatcher::Exact(p.clone()),
            PathMatch::Prefix(p) => {
                let trimmed = p.trim_end_matches('/');
                if trimmed.is_empty() {
                    PathMatcher::Any
                } else {
                    PathMatcher::Prefix(trimmed.to_owned())
                }
            }
            PathMatch::Regex(re) => PathMatcher::Regex(compile_anchored(re)?),
        };
        let mut headers: Vec<(HeaderName, ValueMatcher)> = Vec::with_capacity(m.headers.len());
        for h in &m.headers {
            let name = HeaderName::from_bytes(h.name.as_bytes())
                .map_err(|_| MatchError::HeaderName(h.name.clone()))?;
            // The spec: of several entries with one name, only the first counts.
            if headers.iter().any(|(n, _)| *n == name) {
                continue;
            }
            headers.push((name, ValueMatcher::compile(&h.value)?));
        }
        let mut query: Vec<(String, ValueMatcher)> = Vec::with_capacity(m.query.len());
        for q in &m.query {
            if query.iter().any(|(n, _)| *n == q.name) {
                continue;
            }
            query.push((q.name.clone(), ValueMatcher::compile(&q.value)?));
        }
        let method = m
            .method
            .as_deref()
            .map(|s| Method::from_bytes(s.as_bytes()).map_err(|_| MatchError::Method(s.to_owned())))
            .transpose()?;
        Ok(Self {
            path,
            headers,
            query,
            method,
        })
    }

    pub fn matches(&self, req: &RequestView<'_>) -> bool {
        if let Some(m) = &self.method
            && m != req.method
        {
            return false;
        }
        if !self.path_matches(req.path) {
            return false;
        }
        if !self
            .headers
            .iter()
            .all(|(name, value)| header_matches(req.headers, name, value))
        {
            return false;
        }
        self.query
            .iter()
            .all(|(name, value)| match query_param(req.query, name) {
                Some(v) => value.matches(&v),
                None => false,
            })
    }

    fn path_matches(&self, path: &str) -> bool {
        match &self.path {
            PathMatcher::Any => true,
            PathMatcher::Exact(p) => p == path,
            PathMatcher::Prefix(p) => prefix_matches(p, path),
            PathMatcher::Regex(re) => re.is_match(path),
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

fn compile_anchored(pattern: &str) -> Result<Regex, MatchError> {
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|source| MatchError::Regex {
            pattern: pattern.to_owned(),
            source,
        })
}

/// A repeated header is compared as its values joined with `,` (RFC 9110 section 5.3); values
/// that are not visible ASCII never match.
fn header_matches(headers: &HeaderMap, name: &HeaderName, value: &ValueMatcher) -> bool {
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

/// Decodes `%XX` escapes; anything malformed stays as written. Borrows when there is nothing to
/// decode, which is the common case.
pub fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains('%') {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(h << 4 | l);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
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
    let Some(host) = host.map(strip_port) else {
        return false;
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    patterns.iter().any(|p| match p.strip_prefix('*') {
        // `suffix` keeps its leading dot, so at least one non-empty label must precede it.
        Some(suffix) => {
            host.len() > suffix.len()
                && host.is_char_boundary(host.len() - suffix.len())
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && !host[..host.len() - suffix.len()].ends_with('.')
        }
        None => host.eq_ignore_ascii_case(p),
    })
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
    use crate::plan::l7::{HeaderMatch, QueryMatch};

    fn m(path: PathMatch) -> RouteMatch {
        RouteMatch {
            path,
            headers: vec![],
            query: vec![],
            method: None,
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
        CompiledMatch::compile(rm).unwrap().matches(&RequestView {
            method: &method,
            path,
            query,
            headers: &map,
        })
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
        let rm = m(PathMatch::Regex("/api/v[0-9]+".into()));
        assert!(get(&rm, "/api/v12"));
        assert!(!get(&rm, "/api/v12/x"));
        assert!(!get(&rm, "/x/api/v1"));
    }

    #[test]
    fn invalid_regex_is_an_error_not_a_panic() {
        let err = CompiledMatch::compile(&m(PathMatch::Regex("(".into()))).unwrap_err();
        assert!(matches!(err, MatchError::Regex { .. }), "{err}");
    }

    #[test]
    fn header_names_are_case_insensitive_values_exact() {
        let mut rm = m(PathMatch::Prefix("/".into()));
        rm.headers.push(HeaderMatch {
            name: "x-env".into(),
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
            name: "x-a".into(),
            value: ValueMatch::Regex("v[0-9]".into()),
        });
        rm.headers.push(HeaderMatch {
            name: "x-b".into(),
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
            name: "x-a".into(),
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
            value: ValueMatch::Regex("[0-9]+".into()),
        });
        assert!(get(&rm, "/?a=1&a=x"));
        assert!(!get(&rm, "/?a=x&a=1"));
    }

    #[test]
    fn method_must_match() {
        let mut rm = m(PathMatch::Prefix("/".into()));
        rm.method = Some("POST".into());
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
