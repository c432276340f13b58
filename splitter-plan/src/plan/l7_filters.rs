//! HTTPRoute filters applied to one request or response. Pure: the proxy calls these on its
//! request path with the values the model already parsed, so nothing here can fail but a
//! rewritten path that the request itself made invalid.

use std::fmt::Write as _;

use http::{
    HeaderMap,
    uri::{InvalidUri, PathAndQuery, Scheme},
};

use super::l7::{Cors, Filter, HeaderModifier, PathModifier, Redirect, UrlRewrite};

/// A rule's filters by what they act on, so the request path does not scan the list.
#[derive(Clone, Debug, Default)]
pub struct RuleFilters {
    pub request_headers: Vec<HeaderModifier>,
    pub response_headers: Vec<HeaderModifier>,
    pub redirect: Option<Redirect>,
    pub rewrite: Option<UrlRewrite>,
    /// Boxed: most rules have none, and the struct sits in every route.
    pub cors: Option<Box<Cors>>,
}

impl RuleFilters {
    /// The model allows at most one redirect or one rewrite per rule, never both.
    pub fn of(filters: &[Filter]) -> Self {
        let mut out = Self::default();
        for f in filters {
            match f {
                Filter::RequestHeaderModifier(m) => out.request_headers.push(m.clone()),
                Filter::ResponseHeaderModifier(m) => out.response_headers.push(m.clone()),
                Filter::RequestRedirect(r) => out.redirect = Some(r.clone()),
                Filter::UrlRewrite(r) => out.rewrite = Some(r.clone()),
                Filter::Cors(c) => out.cors = Some(Box::new(c.clone())),
                // Resolved by the plan into the route's mirrors.
                Filter::RequestMirror(_) => {}
            }
        }
        out
    }
}

impl HeaderModifier {
    /// Order as Envoy and the conformance tests expect: set, then add, then remove.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for (n, v) in &self.set {
            headers.insert(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            headers.append(n.clone(), v.clone());
        }
        for n in &self.remove {
            headers.remove(n);
        }
    }
}

impl Redirect {
    /// The Location for a plain-HTTP request to `host` (port stripped) and `path?query` on a
    /// listener bound to `listener_port`; see [`location_for`](Self::location_for).
    pub fn location(
        &self,
        host: &str,
        path: &str,
        query: Option<&str>,
        prefix: Option<&str>,
        listener_port: u16,
    ) -> String {
        self.location_for(&Scheme::HTTP, host, path, query, prefix, listener_port)
    }

    /// The Location for a request made with `request_scheme` (`https` on a listener that
    /// terminates TLS) to `host` (port stripped) and `path?query` on a listener bound to
    /// `listener_port`. A redirect without a scheme keeps the request's.
    ///
    /// Port rules of the spec: an explicit port wins; otherwise a redirect that names a scheme
    /// goes to that scheme's well-known port, and one that does not keeps the listener's port.
    /// The well-known port of the final scheme is left out of the Location.
    pub fn location_for(
        &self,
        request_scheme: &Scheme,
        host: &str,
        path: &str,
        query: Option<&str>,
        prefix: Option<&str>,
        listener_port: u16,
    ) -> String {
        let scheme = self.scheme.as_ref().unwrap_or(request_scheme);
        let default_port = if *scheme == Scheme::HTTPS { 443 } else { 80 };
        let port = match (self.port, &self.scheme) {
            (Some(p), _) => p,
            (None, Some(_)) => default_port,
            (None, None) => listener_port,
        };
        let host = self.hostname.as_deref().unwrap_or(host);
        let path = match &self.path {
            Some(m) => rewrite_path(m, path, prefix),
            None => path.to_owned(),
        };
        let mut out = format!("{scheme}://{host}");
        if port != default_port {
            // Writing to a String cannot fail.
            let _ = write!(out, ":{port}");
        }
        out.push_str(&path);
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    }
}

impl UrlRewrite {
    /// The upstream path and query, or `None` when the path is kept as it is.
    pub fn path_and_query(
        &self,
        path: &str,
        query: Option<&str>,
        prefix: Option<&str>,
    ) -> Result<Option<PathAndQuery>, InvalidUri> {
        let Some(m) = &self.path else {
            return Ok(None);
        };
        let mut p = rewrite_path(m, path, prefix);
        if let Some(q) = query {
            p.push('?');
            p.push_str(q);
        }
        PathAndQuery::try_from(p).map(Some)
    }
}

/// Applies a path modifier. `prefix` is the route's matched path prefix without a trailing `/`
/// (empty for the root prefix); without one, ReplacePrefixMatch leaves the path alone.
///
/// ReplacePrefixMatch keeps element boundaries: prefix `/echo` replaced by `/` turns `/echo`
/// into `/` and `/echo/hostname` into `/hostname`; replaced by `/v2` it gives `/v2/hostname`.
pub fn rewrite_path(m: &PathModifier, path: &str, prefix: Option<&str>) -> String {
    match m {
        PathModifier::ReplaceFullPath(full) => full.clone(),
        PathModifier::ReplacePrefixMatch(replacement) => {
            let Some(rest) = prefix.and_then(|p| path.strip_prefix(p)) else {
                return path.to_owned();
            };
            let base = replacement.trim_end_matches('/');
            let mut out = String::with_capacity(base.len() + rest.len() + 1);
            out.push_str(base);
            if !rest.is_empty() && !rest.starts_with('/') {
                out.push('/');
            }
            out.push_str(rest);
            if out.is_empty() {
                out.push('/');
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use http::{HeaderName, HeaderValue, StatusCode};

    use super::*;

    fn prefix_rewrite(replacement: &str, path: &str, prefix: &str) -> String {
        rewrite_path(
            &PathModifier::ReplacePrefixMatch(replacement.into()),
            path,
            Some(prefix),
        )
    }

    #[test]
    fn replace_prefix_match() {
        assert_eq!(prefix_rewrite("/", "/echo/hostname", "/echo"), "/hostname");
        assert_eq!(prefix_rewrite("/", "/echo", "/echo"), "/");
        assert_eq!(prefix_rewrite("/", "/echo/", "/echo"), "/");
        assert_eq!(prefix_rewrite("/v2", "/echo/x/y", "/echo"), "/v2/x/y");
        assert_eq!(prefix_rewrite("/v2/", "/echo/x", "/echo"), "/v2/x");
        assert_eq!(prefix_rewrite("/v2", "/echo", "/echo"), "/v2");
        assert_eq!(prefix_rewrite("/x", "/a", ""), "/x/a");
    }

    #[test]
    fn replace_full_path() {
        let m = PathModifier::ReplaceFullPath("/new".into());
        assert_eq!(rewrite_path(&m, "/old/deep", Some("/old")), "/new");
    }

    #[test]
    fn header_edits_order() {
        let edits = HeaderModifier {
            set: vec![(
                HeaderName::from_static("x-set"),
                HeaderValue::from_static("1"),
            )],
            add: vec![(
                HeaderName::from_static("x-add"),
                HeaderValue::from_static("2"),
            )],
            remove: vec![HeaderName::from_static("x-gone")],
        };
        let mut h = HeaderMap::new();
        h.insert("x-set", HeaderValue::from_static("old"));
        h.insert("x-add", HeaderValue::from_static("first"));
        h.insert("x-gone", HeaderValue::from_static("bye"));
        edits.apply(&mut h);
        assert_eq!(h.get_all("x-set").iter().count(), 1);
        assert_eq!(h["x-set"], "1");
        let adds: Vec<_> = h.get_all("x-add").iter().collect();
        assert_eq!(adds, vec!["first", "2"]);
        assert!(h.get("x-gone").is_none());
    }

    fn redirect(scheme: Option<Scheme>, port: Option<u16>) -> Redirect {
        Redirect {
            scheme,
            hostname: None,
            path: None,
            port,
            status_code: StatusCode::FOUND,
        }
    }

    #[test]
    fn redirect_ports() {
        let r = redirect(None, None);
        assert_eq!(
            r.location("h", "/p", Some("q=1"), None, 8080),
            "http://h:8080/p?q=1"
        );
        assert_eq!(r.location("h", "/p", None, None, 80), "http://h/p");
        let r = redirect(Some(Scheme::HTTPS), None);
        assert_eq!(r.location("h", "/p", None, None, 8080), "https://h/p");
        let r = redirect(Some(Scheme::HTTPS), Some(8443));
        assert_eq!(r.location("h", "/p", None, None, 80), "https://h:8443/p");
    }
}
