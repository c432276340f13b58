//! What the proxy does to every request and response whatever the routes say: refuse a request
//! with two Hosts, remove dot segments from the path before it is matched, keep framing headers
//! out of the route filters' reach, write the forwarding headers by the listener's policy and
//! join HTTP/2 cookie fields for an HTTP/1.1 backend.
//!
//! Everything here works on `http` types, before the request is handed to a backend client, so
//! that every upstream client forwards the same prepared head.

use std::borrow::Cow;

use http::{
    HeaderMap, HeaderName, HeaderValue, Request, Uri, header,
    uri::{self, PathAndQuery},
};
use splitter_plan::plan::l7::HeaderModifier;

/// Whose `X-Forwarded-For` the proxy forwards (`splitter run --xff`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum XffPolicy {
    /// The client's `X-Forwarded-For` is kept and the peer address appended: for a proxy behind
    /// a trusted load balancer that already wrote the header.
    #[default]
    Append,
    /// The client's `X-Forwarded-For` is dropped and the peer address is the whole header: for
    /// a proxy that faces clients directly, who could otherwise claim any address.
    Replace,
}

/// Why a request is answered 400 before it is routed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadRequest {
    /// More than one `Host` field (RFC 9112 section 3.2).
    DuplicateHost,
    /// The path without its dot segments is not a valid request target.
    Path,
}

impl std::fmt::Display for BadRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::DuplicateHost => "more than one Host field",
            Self::Path => "the normalised path is not a valid request target",
        })
    }
}

/// Checks a request before it is matched, and removes its path's dot segments so that the
/// route it matches and the backend it reaches see the same path.
pub fn normalise<B>(req: &mut Request<B>) -> Result<(), BadRequest> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    if hosts.next().is_some() && hosts.next().is_some() {
        return Err(BadRequest::DuplicateHost);
    }
    if let Cow::Owned(path) = remove_dot_segments(req.uri().path()) {
        *req.uri_mut() = with_path(req.uri(), &path).ok_or(BadRequest::Path)?;
    }
    Ok(())
}

fn with_path(uri: &Uri, path: &str) -> Option<Uri> {
    let pq = match uri.query() {
        Some(q) => PathAndQuery::try_from(format!("{path}?{q}")),
        None => PathAndQuery::try_from(path),
    }
    .ok()?;
    let mut parts = uri::Parts::default();
    parts.scheme = uri.scheme().cloned();
    parts.authority = uri.authority().cloned();
    parts.path_and_query = Some(pq);
    Uri::from_parts(parts).ok()
}

/// `path` without its dot segments (RFC 3986 section 5.2.4). A segment is a dot segment when it
/// is `.` or `..` once percent-encoded dots (`%2e`, `%2E`) are decoded; no other escape is
/// decoded (`..%2F` is a plain segment) and every other segment is kept byte for byte. A path
/// that does not start with `/` (`*`, or the empty path of an authority-form target) is left
/// alone. Borrowed when nothing changes, which a cheap scan decides for most paths.
pub fn remove_dot_segments(path: &str) -> Cow<'_, str> {
    let b = path.as_bytes();
    let candidate = b.first() == Some(&b'/')
        && b.windows(2)
            .enumerate()
            .any(|(i, w)| w[0] == b'/' && (w[1] == b'.' || (w[1] == b'%' && is_dot(&b[i + 1..]))));
    if !candidate {
        return Cow::Borrowed(path);
    }
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let mut changed = false;
    for (i, s) in segments.into_iter().enumerate() {
        match dots(s) {
            0 => out.push(s),
            n => {
                changed = true;
                if n == 2 {
                    out.pop();
                }
                // A path ending in a dot segment names a directory: `/a/b/..` is `/a/`.
                if i == last {
                    out.push("");
                }
            }
        }
    }
    if !changed {
        return Cow::Borrowed(path);
    }
    let mut p = String::with_capacity(path.len());
    for s in out {
        p.push('/');
        p.push_str(s);
    }
    if p.is_empty() {
        p.push('/');
    }
    Cow::Owned(p)
}

/// Whether `b` starts with a percent-encoded dot.
fn is_dot(b: &[u8]) -> bool {
    b.len() >= 3 && b[0] == b'%' && b[1] == b'2' && (b[2] == b'e' || b[2] == b'E')
}

/// 1 for a `.` segment, 2 for `..`, 0 for any other (dots may be percent-encoded).
fn dots(segment: &str) -> usize {
    let mut b = segment.as_bytes();
    let mut n = 0;
    while !b.is_empty() {
        if b[0] == b'.' {
            b = &b[1..];
        } else if is_dot(b) {
            b = &b[3..];
        } else {
            return 0;
        }
        n += 1;
        if n > 2 {
            return 0;
        }
    }
    n
}

/// Headers that frame a message or describe one hop: the proxy's to write, never a filter's.
/// The plan refuses filters that name them (`FRAMING_HEADERS` there); this is the proxy's own
/// guard should one get through.
static FRAMING: [HeaderName; 8] = [
    header::CONTENT_LENGTH,
    header::TRANSFER_ENCODING,
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    HeaderName::from_static("proxy-connection"),
];

/// Applies route header filters to a request or response head; whatever they do to a framing
/// header is undone, so the framing stays the one the proxy computed (the message's own
/// `Content-Length`, the upgrade headers of a protocol switch). Costs nothing without filters.
pub fn apply_header_filters(edits: &[HeaderModifier], headers: &mut HeaderMap) {
    if edits.is_empty() {
        return;
    }
    let saved: Vec<(HeaderName, HeaderValue)> = FRAMING
        .iter()
        .flat_map(|n| headers.get_all(n).iter().map(|v| (n.clone(), v.clone())))
        .collect();
    for e in edits {
        e.apply(headers);
    }
    for n in &FRAMING {
        headers.remove(n);
    }
    for (n, v) in saved {
        headers.append(n, v);
    }
}

static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Prepares a request head for the hop's forwarding headers: the client's `X-Forwarded-Proto`
/// is dropped (the proxy writes the scheme the client used), and so is its `X-Forwarded-For`
/// under [`XffPolicy::Replace`]. The hop's values are added as the head is written.
pub fn forwarded_from_client(headers: &mut HeaderMap, policy: XffPolicy) {
    headers.remove(&XFP);
    if policy == XffPolicy::Replace {
        headers.remove(&XFF);
    }
}

/// Joins an HTTP/2 request's `cookie` fields into one, separated by "; ", as an HTTP/1.1
/// backend expects them (RFC 9113 section 8.2.3).
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut fields = headers.get_all(header::COOKIE).iter();
    if fields.next().is_none() || fields.next().is_none() {
        return;
    }
    let mut joined = Vec::new();
    for (i, v) in headers.get_all(header::COOKIE).iter().enumerate() {
        if i > 0 {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    // Valid field values joined by "; " stay valid.
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_are_removed() {
        for (path, want) in [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a.b/.c/..d/...", "/a.b/.c/..d/..."),
            ("/app/../internal", "/internal"),
            ("/app/%2e%2e/internal", "/internal"),
            ("/app/.%2E/internal", "/internal"),
            ("/app/%2E./internal", "/internal"),
            ("/a/./b", "/a/b"),
            ("/a/%2e/b", "/a/b"),
            ("/a/b/..", "/a/"),
            ("/a/b/.", "/a/b/"),
            ("/a/..", "/"),
            ("/..", "/"),
            ("/../../x", "/x"),
            ("/.", "/"),
            ("/a//../b", "/a/b"),
            ("/a/b/../../../c", "/c"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a/..%2Fb", "/a/..%2Fb"),
            ("/a/%2e%2e%2fb", "/a/%2e%2e%2fb"),
            ("/a%2eb/c", "/a%2eb/c"),
            ("/a/%2e%2e", "/"),
            ("/a/%2e%2e%2e/b", "/a/%2e%2e%2e/b"),
            ("*", "*"),
            ("", ""),
        ] {
            assert_eq!(remove_dot_segments(path), want, "{path}");
        }
        assert!(matches!(remove_dot_segments("/a.b/c"), Cow::Borrowed(_)));
        assert!(matches!(
            remove_dot_segments("/.well-known"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn normalise_keeps_the_query_and_refuses_two_hosts() {
        let mut req = Request::builder()
            .uri("/a/../b?x=/../y")
            .header("host", "h")
            .body(())
            .unwrap();
        normalise(&mut req).unwrap();
        assert_eq!(req.uri(), "/b?x=/../y");
        let mut req = Request::builder()
            .uri("http://h:8080/a/./b")
            .body(())
            .unwrap();
        normalise(&mut req).unwrap();
        assert_eq!(req.uri(), "http://h:8080/a/b");
        let mut req = Request::builder()
            .uri("/")
            .header("host", "a")
            .header("host", "b")
            .body(())
            .unwrap();
        assert_eq!(normalise(&mut req), Err(BadRequest::DuplicateHost));
    }

    #[test]
    fn filters_cannot_touch_framing_headers() {
        let edits = HeaderModifier {
            set: vec![
                (header::CONTENT_LENGTH, HeaderValue::from_static("0")),
                (
                    HeaderName::from_static("x-kept"),
                    HeaderValue::from_static("1"),
                ),
            ],
            add: vec![(
                header::TRANSFER_ENCODING,
                HeaderValue::from_static("chunked"),
            )],
            remove: vec![header::UPGRADE],
        };
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("42"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        apply_header_filters(std::slice::from_ref(&edits), &mut h);
        assert_eq!(h[header::CONTENT_LENGTH], "42");
        assert_eq!(h[header::UPGRADE], "websocket");
        assert!(h.get(header::TRANSFER_ENCODING).is_none());
        assert_eq!(h["x-kept"], "1");
    }

    /// The proxy guards the headers the plan refuses in filters, no more and no fewer.
    #[test]
    fn the_guard_and_the_plan_agree_on_framing_headers() {
        let guarded: Vec<&str> = FRAMING.iter().map(HeaderName::as_str).collect();
        assert_eq!(
            guarded,
            splitter_plan::model::http::FRAMING_HEADERS.to_vec()
        );
    }

    #[test]
    fn forwarding_headers_by_policy() {
        let mut h = HeaderMap::new();
        h.insert(&XFF, HeaderValue::from_static("1.2.3.4"));
        h.insert(&XFP, HeaderValue::from_static("https"));
        forwarded_from_client(&mut h, XffPolicy::Append);
        assert_eq!(h[&XFF], "1.2.3.4");
        assert!(h.get(&XFP).is_none());
        forwarded_from_client(&mut h, XffPolicy::Replace);
        assert!(h.get(&XFF).is_none());
    }

    #[test]
    fn cookies_are_joined() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        join_cookies(&mut h);
        assert_eq!(h[header::COOKIE], "a=1");
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        h.append(header::COOKIE, HeaderValue::from_static("c=3"));
        join_cookies(&mut h);
        let all: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, vec!["a=1; b=2; c=3"]);
    }

    /// A client listing Host in Connection does not take the Host away (it is no hop-by-hop
    /// header, whatever the client says).
    #[test]
    fn connection_cannot_remove_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("gateway.test"));
        h.insert(header::CONNECTION, HeaderValue::from_static("host, x-hop"));
        h.insert("x-hop", HeaderValue::from_static("1"));
        super::super::upstream::strip_hop_by_hop(&mut h);
        assert_eq!(h[header::HOST], "gateway.test");
        assert!(h.get("x-hop").is_none());
    }
}
