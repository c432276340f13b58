//! The client side: a pooled keep-alive HTTP/1.1 client and the header hygiene of a proxy hop.

use std::{fmt::Write as _, net::IpAddr, time::Duration};

use http::{
    HeaderMap, HeaderName, HeaderValue, Request, Response, header,
    uri::{Authority, PathAndQuery, Scheme, Uri},
};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};

/// Settings of the upstream client.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    pub pool_max_idle_per_host: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(60),
            pool_max_idle_per_host: 256,
        }
    }
}

/// One pooled client shared by every listener; bodies are streamed in both directions.
#[derive(Clone, Debug)]
pub struct Upstream {
    client: Client<HttpConnector, Incoming>,
}

impl Upstream {
    pub fn new(config: &UpstreamConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(config.connect_timeout));
        connector.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(config.pool_idle_timeout)
            .pool_max_idle_per_host(config.pool_max_idle_per_host)
            .build(connector);
        Self { client }
    }

    pub async fn send(
        &self,
        req: Request<Incoming>,
    ) -> Result<Response<Incoming>, hyper_util::client::legacy::Error> {
        self.client.request(req).await
    }
}

/// Headers that describe one hop, never forwarded (RFC 9110 section 7.6.1).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including every header named in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Names listed in Connection are rare; collect them only when Connection is present.
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in listed {
            headers.remove(n);
        }
    }
    for n in &HOP_BY_HOP {
        headers.remove(n);
    }
}

/// Appends the client address to `X-Forwarded-For` and the scheme to `X-Forwarded-Proto`.
pub fn add_forwarded(headers: &mut HeaderMap, client: IpAddr) {
    static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
    static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");
    // Several XFF lines are folded into one: a chain of hops is read as one list.
    let mut value = String::new();
    for prev in headers.get_all(&XFF).iter().filter_map(|v| v.to_str().ok()) {
        value.push_str(prev);
        value.push_str(", ");
    }
    // Writing to a String cannot fail.
    let _ = write!(value, "{}", client.to_canonical());
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(XFF.clone(), v);
    }
    headers.append(XFP.clone(), HeaderValue::from_static("http"));
}

/// The upstream URI: the endpoint as authority, the (possibly rewritten) path and query.
pub fn upstream_uri(authority: &Authority, path_and_query: PathAndQuery) -> Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(path_and_query);
    // Scheme, authority and path are all present and individually valid, which is all
    // `from_parts` checks; the fallback is unreachable but keeps this free of panics.
    Uri::from_parts(parts).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_hop_by_hop_and_connection_listed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("close, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn forwarded_headers_append() {
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, "10.0.0.1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        add_forwarded(&mut h, "::ffff:10.0.0.2".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2");
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        add_forwarded(&mut h, "10.0.0.3".parse().unwrap());
        assert_eq!(
            h["x-forwarded-for"],
            "10.0.0.1, 10.0.0.2, 1.1.1.1, 10.0.0.3"
        );
        assert_eq!(h.get_all("x-forwarded-proto").iter().count(), 3);
    }

    #[test]
    fn uri_from_parts() {
        let a = Authority::from_static("127.0.0.1:8080");
        let u = upstream_uri(&a, PathAndQuery::from_static("/x?y=1"));
        assert_eq!(u.to_string(), "http://127.0.0.1:8080/x?y=1");
    }
}
