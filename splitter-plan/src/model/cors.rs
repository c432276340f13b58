//! The HTTPRoute `CORS` filter (Extended, experimental channel): validated as the CRD says and
//! kept in the form the proxy answers with (lists already joined into header values).

use http::HeaderName;
use serde::Serialize;

/// One `allowOrigins` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum OriginPattern {
    /// `*`: every origin.
    Any,
    /// `scheme://host[:port]`; `host` is lower-case and, when it starts with `*.`, matches one or
    /// more labels before the rest (`https://*.bar.com` takes `https://a.b.bar.com`, not
    /// `https://bar.com`), as listener hostnames do.
    Origin {
        scheme: String,
        host: String,
        port: Option<u16>,
    },
}

impl OriginPattern {
    /// Whether the request's `Origin` (as sent, `scheme://host[:port]`) is allowed.
    pub fn matches(&self, origin: &str) -> bool {
        let (scheme, host, port) = match self {
            Self::Any => return true,
            Self::Origin { scheme, host, port } => (scheme, host, port),
        };
        let Some(o) = parse_origin(origin) else {
            return false;
        };
        if !o.scheme.eq_ignore_ascii_case(scheme) || o.port != *port {
            return false;
        }
        match host.strip_prefix('*') {
            // `*.bar.com`: at least one label before `.bar.com`.
            Some(suffix) => {
                o.host.len() > suffix.len()
                    && o.host
                        .get(o.host.len() - suffix.len()..)
                        .is_some_and(|end| end.eq_ignore_ascii_case(suffix))
            }
            None => o.host.eq_ignore_ascii_case(host),
        }
    }
}

/// An origin split into its parts (`None` for `null` or anything that is not one).
pub(crate) struct ParsedOrigin<'a> {
    pub scheme: &'a str,
    pub host: &'a str,
    pub port: Option<u16>,
}

pub(crate) fn parse_origin(s: &str) -> Option<ParsedOrigin<'_>> {
    let (scheme, rest) = s.split_once("://")?;
    let mut chars = scheme.chars();
    if !chars.next()?.is_ascii_alphabetic()
        || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
    {
        return None;
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, Some(p.parse::<u16>().ok().filter(|p| *p != 0)?)),
        None => (rest, None),
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '*'));
    host_ok.then_some(ParsedOrigin { scheme, host, port })
}

/// A list that may be the wildcard `*` (which must then stand alone).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Allowed {
    Any,
    /// The entries joined with `, `, as the response header carries them; `None` when empty.
    List(Option<String>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cors {
    pub allow_origins: Vec<OriginPattern>,
    pub allow_methods: Allowed,
    pub allow_headers: Allowed,
    /// Joined with `, `; `None` when empty.
    pub expose_headers: Option<String>,
    /// Seconds a preflight answer may be cached (CRD default 5).
    pub max_age: u32,
    pub allow_credentials: bool,
}

/// Methods `allowMethods` may name (the CRD's enum), besides `*`.
pub const CORS_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Validates a header-name list (`allowHeaders`, `exposeHeaders`): names, or `*` alone.
pub(crate) fn header_list(items: &[String]) -> Result<Allowed, String> {
    if items.len() > 64 {
        return Err("more than 64 entries".into());
    }
    if items.iter().any(|h| h == "*") {
        if items.len() > 1 {
            return Err("\"*\" must be the only entry".into());
        }
        return Ok(Allowed::Any);
    }
    for (i, h) in items.iter().enumerate() {
        HeaderName::from_bytes(h.as_bytes())
            .map_err(|_| format!("[{i}]: {h:?} is not a header name"))?;
        if items[..i].iter().any(|x| x.eq_ignore_ascii_case(h)) {
            return Err(format!("[{i}]: {h:?} appears twice"));
        }
    }
    Ok(Allowed::List((!items.is_empty()).then(|| items.join(", "))))
}

/// Validates one `allowOrigins` entry: `*`, or `scheme://host[:port]` where host may be `*` or
/// start with `*.`.
pub(crate) fn origin_pattern(s: &str) -> Result<OriginPattern, String> {
    if s == "*" {
        return Ok(OriginPattern::Any);
    }
    let o = parse_origin(s).ok_or_else(|| format!("{s:?} is not \"*\" or scheme://host[:port]"))?;
    let wildcard_ok = match o.host.find('*') {
        None => true,
        Some(0) => o.host == "*" || (o.host.starts_with("*.") && !o.host[1..].contains('*')),
        Some(_) => false,
    };
    if !wildcard_ok {
        return Err(format!(
            "{s:?}: a wildcard may only be the host or its first label (\"*.example.com\")"
        ));
    }
    Ok(OriginPattern::Origin {
        scheme: o.scheme.to_ascii_lowercase(),
        host: o.host.to_ascii_lowercase(),
        port: o.port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_match_as_the_spec_says() {
        let exact = origin_pattern("https://www.foo.com").unwrap();
        assert!(exact.matches("https://www.foo.com"));
        assert!(exact.matches("HTTPS://WWW.FOO.COM"));
        assert!(!exact.matches("http://www.foo.com"));
        assert!(!exact.matches("https://www.foo.com:8443"));
        let wild = origin_pattern("https://*.bar.com").unwrap();
        assert!(wild.matches("https://www.bar.com"));
        assert!(wild.matches("https://xpto.www.bar.com"));
        assert!(!wild.matches("https://bar.com"));
        assert!(!wild.matches("https://foobar.com"));
        assert!(!wild.matches("null"));
        assert!(OriginPattern::Any.matches("https://foobar.com:12345"));
        let port = origin_pattern("http://localhost:8080").unwrap();
        assert!(port.matches("http://localhost:8080"));
        assert!(!port.matches("http://localhost"));
    }

    #[test]
    fn bad_entries_are_refused() {
        assert!(origin_pattern("www.foo.com").is_err());
        assert!(origin_pattern("https://a.*.com").is_err());
        assert!(origin_pattern("https://x:99999").is_err());
        assert!(header_list(&["*".into(), "x".into()]).is_err());
        assert!(header_list(&["bad header".into()]).is_err());
        assert_eq!(
            header_list(&["x-a".into(), "x-b".into()]).unwrap(),
            Allowed::List(Some("x-a, x-b".into()))
        );
    }
}
