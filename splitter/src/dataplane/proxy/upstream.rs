//! The client side: requests to backends over this thread's keep-alive HTTP/1.1 connections
//! (the exchange itself is `direct`'s), and the header hygiene of a proxy hop.

use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Response, header,
    request::Parts,
    uri::{Authority, PathAndQuery, Uri},
};
use http_body::Body;
use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

use super::{
    direct::{self, DirectBody, DirectConnection, RequestFraming},
    error::UpstreamError,
    pool,
    slots::{EndpointPermit, EndpointSlots},
};

/// Settings of the upstream connections.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    pub connect_timeout: Duration,
    pub pool_idle_timeout: Duration,
    /// Idle connections kept per endpoint, per proxy worker thread.
    pub pool_max_idle_per_host: usize,
    /// Longest wait for a backend's next bytes while its response is awaited or read (per
    /// read, like nginx's `proxy_read_timeout`); a wait for the response head gets 504, one
    /// in the body cuts the response. `None`: no limit.
    pub read_timeout: Option<Duration>,
    /// Connections open to one endpoint at once over all worker threads, idle pooled ones
    /// included; a request that would need another is answered 503. 0: no limit.
    pub max_connections_per_endpoint: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(60),
            pool_max_idle_per_host: 256,
            read_timeout: Some(Duration::from_secs(60)),
            max_connections_per_endpoint: 1024,
        }
    }
}

/// Sends requests to backends over the calling thread's pooled connections (`pool`); bodies
/// are streamed in both directions. Called on a proxy worker thread, everything a request
/// touches stays on that thread.
#[derive(Clone, Debug)]
pub struct Upstream {
    config: UpstreamConfig,
    slots: EndpointSlots,
}

impl Upstream {
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    pub fn new(config: &UpstreamConfig) -> Self {
        Self {
            config: config.clone(),
            slots: EndpointSlots::new(config.max_connections_per_endpoint),
        }
    }

    /// Sends a request (`parts`: origin-form URI; `hop` is added as the head is written) and
    /// its body, if any, to `endpoint`. Bodyless requests, most of them, take the lighter path
    /// ([`send_bodyless`](Self::send_bodyless)); a body is streamed, framed by its known size
    /// or chunked. A request that a reused connection refused before any of its body was taken
    /// is sent again on another connection.
    pub async fn send<B>(
        &self,
        endpoint: SocketAddr,
        parts: &Parts,
        hop: &HopHeaders<'_>,
        body: Option<B>,
    ) -> Result<Response<DirectBody>, UpstreamError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match body {
            None => self.send_bodyless(endpoint, parts, hop).await,
            // Boxed: requests with a body are the rarer kind, and the body's future would
            // otherwise enlarge every request's.
            Some(body) => Box::pin(self.send_with_body(endpoint, parts, hop, body)).await,
        }
    }

    async fn send_with_body<B>(
        &self,
        endpoint: SocketAddr,
        parts: &Parts,
        hop: &HopHeaders<'_>,
        mut body: B,
    ) -> Result<Response<DirectBody>, UpstreamError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let framing = RequestFraming::of(Some(&body));
        let head = Bytes::from(direct::encode_request_head(parts, hop, framing));
        loop {
            let (conn, reused) = match pool::checkout(endpoint, self.config.pool_idle_timeout) {
                Some(conn) => (conn, true),
                None => (self.open(endpoint).await?, false),
            };
            match direct::exchange_with_body(
                conn,
                head.clone(),
                body,
                framing,
                &parts.method,
                endpoint,
                self.config.pool_max_idle_per_host,
            )
            .await
            {
                Ok(resp) => return Ok(resp),
                Err((failure, Some(unsent))) if reused && failure.retryable => {
                    tracing::debug!(%endpoint, error = %failure.error, "reused connection failed; retrying on another");
                    body = unsent;
                }
                Err((failure, _)) => return Err(failure.error),
            }
        }
    }

    /// Sends a request without a body (`parts`: origin-form URI; `hop` is added as the head is
    /// written) to `endpoint` from
    /// this task (`direct`). A reused connection that turns out closed before anything came
    /// back gets the request again on another one when that is safe (not yet written, or an
    /// idempotent method).
    pub async fn send_bodyless(
        &self,
        endpoint: SocketAddr,
        parts: &Parts,
        hop: &HopHeaders<'_>,
    ) -> Result<Response<DirectBody>, UpstreamError> {
        let head = direct::encode_request_head(parts, hop, RequestFraming::None);
        loop {
            let (conn, reused) = match pool::checkout(endpoint, self.config.pool_idle_timeout) {
                Some(conn) => (conn, true),
                // Boxed: connecting is rare, and its future would otherwise enlarge every
                // request's (which hyper moves, whole, per request).
                None => (Box::pin(self.open(endpoint)).await?, false),
            };
            match direct::exchange(
                conn,
                &head,
                &parts.method,
                endpoint,
                self.config.pool_max_idle_per_host,
            )
            .await
            {
                Ok(resp) => return Ok(resp),
                Err(failure) if reused && failure.retryable => {
                    tracing::debug!(%endpoint, error = %failure.error, "reused connection failed; retrying on another");
                }
                Err(failure) => return Err(failure.error),
            }
        }
    }

    async fn open(&self, endpoint: SocketAddr) -> Result<DirectConnection, UpstreamError> {
        let (stream, permit) = self.connect(endpoint).await?;
        Ok(DirectConnection::new(stream)
            .with_read_timeout(self.config.read_timeout)
            .holding(permit))
    }

    /// A new connection to `endpoint` under the per-endpoint cap and the connect timeout (also
    /// what a TLS passthrough connection splices to).
    pub(super) async fn connect(
        &self,
        endpoint: SocketAddr,
    ) -> Result<(TcpStream, EndpointPermit), UpstreamError> {
        let permit = self
            .slots
            .acquire(endpoint)
            .ok_or(UpstreamError::EndpointFull(self.slots.max()))?;
        let stream =
            tokio::time::timeout(self.config.connect_timeout, TcpStream::connect(endpoint))
                .await
                .map_err(|_| UpstreamError::ConnectTimeout(self.config.connect_timeout))?
                .map_err(UpstreamError::Connect)?;
        // Nagle would hold a request head back behind the backend's delayed ACK.
        let _ = stream.set_nodelay(true);
        // Finds backends that vanished without a FIN while a connection sits idle in the pool.
        let _ = SockRef::from(&stream)
            .set_tcp_keepalive(&TcpKeepalive::new().with_time(Duration::from_secs(60)));
        Ok((stream, permit))
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
    // Most messages carry none of them: one pass over the few names present is cheaper than
    // hashing all seven for removal.
    if !headers.keys().any(|n| HOP_BY_HOP.contains(n)) {
        return;
    }
    // Names listed in Connection are rare; collect them only when Connection is present.
    if headers.contains_key(header::CONNECTION) {
        // Host is never hop-by-hop, whatever the sender lists (`Connection: host`).
        let listed: Vec<HeaderName> = list_items(headers, &header::CONNECTION)
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .filter(|n| *n != header::HOST)
            .collect();
        for n in listed {
            headers.remove(n);
        }
    }
    for n in &HOP_BY_HOP {
        headers.remove(n);
    }
}

/// The items of a comma-separated list header over all its fields (RFC 9110 section 5.6.1),
/// trimmed; a field that is not text is skipped.
pub fn list_items<'a>(
    headers: &'a HeaderMap,
    name: &HeaderName,
) -> impl Iterator<Item = &'a str> + use<'a> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// Whether a list header holds `token` (compared without case, as tokens are).
pub fn list_has(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    list_items(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// A client's address as `X-Forwarded-For` carries it (an IPv4-mapped IPv6 peer as plain IPv4).
/// Made once per connection: every request on it forwards the same address.
pub fn client_address(ip: IpAddr) -> HeaderValue {
    // An address's text is always a valid header value.
    HeaderValue::try_from(ip.to_canonical().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

static XFF: HeaderName = HeaderName::from_static("x-forwarded-for");
static XFP: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// What this hop adds to every request it forwards: Host when the client sent none (see
/// [`default_host`]) and the client address and scheme (see [`add_forwarded`]).
pub struct HopHeaders<'a> {
    /// The client address, from [`client_address`].
    pub client: &'a HeaderValue,
    /// The endpoint, Host of a request that has none.
    pub endpoint: &'a Authority,
    /// The scheme the client spoke to the listener, `http` or `https`: `X-Forwarded-Proto`.
    pub scheme: &'static str,
}

impl HopHeaders<'_> {
    /// Adds them to `headers`: what [`write_fields`](Self::write_fields) writes, as a map
    /// (the tests' reference).
    #[cfg(test)]
    pub fn apply(&self, headers: &mut HeaderMap) {
        default_host(headers, self.endpoint);
        add_forwarded(headers, self.client, self.scheme);
    }

    /// Writes `headers` as HTTP/1.1 field lines with the additions made as they are written,
    /// leaving the map as it is: the lines [`apply`](Self::apply) and then writing every field
    /// would give, but for their order (X-Forwarded-For comes last). Inserting into the map
    /// hashes each name and may grow the map, which costs more than writing the request head.
    /// With `own_length`, Content-Length is left out: the caller frames the body itself.
    pub fn write_fields(&self, headers: &HeaderMap, own_length: bool, out: &mut Vec<u8>) {
        let mut host = false;
        for (name, value) in headers {
            if *name == XFF || (own_length && *name == header::CONTENT_LENGTH) {
                continue;
            }
            host |= *name == header::HOST;
            field_line(out, name.as_str().as_bytes(), value.as_bytes());
        }
        if !host {
            field_line(
                out,
                header::HOST.as_str().as_bytes(),
                self.endpoint.as_str().as_bytes(),
            );
        }
        out.extend_from_slice(XFF.as_str().as_bytes());
        out.extend_from_slice(b": ");
        for previous in headers.get_all(&XFF) {
            out.extend_from_slice(previous.as_bytes());
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(self.client.as_bytes());
        out.extend_from_slice(b"\r\n");
        field_line(out, XFP.as_str().as_bytes(), self.scheme.as_bytes());
    }
}

fn field_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Appends the client address (from [`client_address`]) to `X-Forwarded-For` and the scheme
/// to `X-Forwarded-Proto`. (The HTTP/1.1 path writes the same while writing the head, see
/// [`HopHeaders::write_fields`]; the HTTP/2 client takes a map.)
pub fn add_forwarded(headers: &mut HeaderMap, client: &HeaderValue, scheme: &'static str) {
    // One lookup for the common case, a first hop, which has no text to build.
    match headers.entry(&XFF) {
        header::Entry::Vacant(slot) => {
            slot.insert(client.clone());
        }
        header::Entry::Occupied(mut previous) => {
            // Several XFF lines are folded into one: a chain of hops is read as one list.
            let mut chain = Vec::new();
            for prev in previous.iter() {
                chain.extend_from_slice(prev.as_bytes());
                chain.extend_from_slice(b", ");
            }
            chain.extend_from_slice(client.as_bytes());
            // Valid header bytes joined by ", " stay valid.
            previous.insert(HeaderValue::from_bytes(&chain).unwrap_or_else(|_| client.clone()));
        }
    }
    headers.append(XFP.clone(), HeaderValue::from_static(scheme));
}

/// The upstream request target: origin-form (`/path?query`), which is what an HTTP/1.1 server
/// that is not a proxy expects; the endpoint goes into Host only when the client sent none.
pub fn upstream_uri(path_and_query: PathAndQuery) -> Uri {
    Uri::from(path_and_query)
}

/// Sets Host to the endpoint when the request has none (an HTTP/1.0 client may omit it);
/// HTTP/1.1 requires it.
#[cfg(test)]
pub fn default_host(headers: &mut HeaderMap, endpoint: &Authority) {
    if !headers.contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(endpoint.as_str())
    {
        headers.insert(header::HOST, v);
    }
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
        let client = |a: &str| client_address(a.parse().unwrap());
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, &client("10.0.0.1"), "http");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        add_forwarded(&mut h, &client("::ffff:10.0.0.2"), "http");
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 10.0.0.2");
        h.append("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        add_forwarded(&mut h, &client("10.0.0.3"), "http");
        assert_eq!(
            h["x-forwarded-for"],
            "10.0.0.1, 10.0.0.2, 1.1.1.1, 10.0.0.3"
        );
        assert_eq!(h.get_all("x-forwarded-proto").iter().count(), 3);
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, &client("2001:db8::1"), "http");
        assert_eq!(h["x-forwarded-for"], "2001:db8::1");
    }

    /// The hop's additions as the head is encoded are those of the reference, inserting them
    /// into the map.
    #[test]
    fn hop_headers_written_or_applied_agree() {
        let endpoint = Authority::from_static("10.0.0.9:8080");
        let client = client_address("10.0.0.1".parse().unwrap());
        let hop = HopHeaders {
            client: &client,
            endpoint: &endpoint,
            scheme: "https",
        };
        let maps: [&[(&str, &str)]; 5] = [
            &[],
            &[("host", "example.com"), ("accept", "*/*")],
            &[("x-forwarded-for", "1.1.1.1"), ("host", "a")],
            &[
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-for", "2.2.2.2, 3.3.3.3"),
                ("x-forwarded-proto", "https"),
                ("cookie", "a=1"),
                ("cookie", "b=2"),
            ],
            &[("x-forwarded-proto", "https"), ("host", "")],
        ];
        for fields in maps {
            let mut map = HeaderMap::new();
            for (n, v) in fields {
                map.append(*n, HeaderValue::from_static(v));
            }
            let mut written = Vec::new();
            hop.write_fields(&map, false, &mut written);
            let mut slots = [httparse::EMPTY_HEADER; 16];
            written.extend_from_slice(b"\r\n");
            assert!(
                httparse::parse_headers(&written, &mut slots)
                    .unwrap()
                    .is_complete()
            );
            let mut from_written: Vec<(String, Vec<u8>)> = slots
                .iter()
                .take_while(|h| !h.name.is_empty())
                .map(|h| (h.name.to_owned(), h.value.to_vec()))
                .collect();
            hop.apply(&mut map);
            let mut from_applied: Vec<(String, Vec<u8>)> = map
                .iter()
                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect();
            from_written.sort();
            from_applied.sort();
            assert_eq!(from_written, from_applied, "{fields:?}");
        }
    }

    #[test]
    fn uri_is_origin_form() {
        let u = upstream_uri(PathAndQuery::from_static("/x?y=1"));
        assert_eq!(u.to_string(), "/x?y=1");
        assert!(u.authority().is_none());
    }

    #[test]
    fn host_defaults_to_the_endpoint() {
        let a = Authority::from_static("127.0.0.1:8080");
        let mut h = HeaderMap::new();
        default_host(&mut h, &a);
        assert_eq!(h[header::HOST], "127.0.0.1:8080");
        h.insert(header::HOST, HeaderValue::from_static("example.com"));
        default_host(&mut h, &a);
        assert_eq!(h[header::HOST], "example.com");
    }
}
