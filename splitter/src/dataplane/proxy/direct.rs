//! Requests without a body (most GETs) go to the backend without hyper's client: the request's
//! own task writes the request head, reads the response head and then, through [`DirectBody`],
//! the response body, straight from the pooled socket.
//!
//! hyper's client drives every connection from a task of its own and passes the request, the
//! response head and each body chunk between that task and the request's over channels. On the
//! proxy's hot path those hand-offs and the second dispatcher took a large share of the proxy's
//! user CPU. Here there is one task and no channel: the response body is read by whoever polls
//! it, the client connection's task.
//!
//! Requests with a body or an upgrade keep hyper's client (`upstream`): it streams both
//! directions at once and can hand a 101 over to the splice.

use std::{
    io,
    mem::MaybeUninit,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll, Waker, ready},
};

use bytes::{Bytes, BytesMut};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version, header,
    request::Parts,
};
use http_body::{Body, Frame, SizeHint};
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tokio_util::io::poll_read_buf;

use self::layout::{Layout, Seen, span};
use super::{
    error::UpstreamError,
    pool,
    slots::EndpointPermit,
    upstream::{HopHeaders, list_has, list_items},
};

/// Most header fields in a response head (hyper's default too).
const MAX_HEADERS: usize = 100;
/// Largest response head read before the backend is given up on.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Longest chunk-size or trailer line of a chunked body.
const MAX_LINE_BYTES: usize = 4 * 1024;
/// Bytes asked of the socket per read.
const READ_CHUNK: usize = 8 * 1024;

mod layout;

/// A keep-alive connection to a backend with what was read from it and not consumed yet.
/// Boxed once for its lifetime: it travels inside every response body, which is moved at each
/// step on its way to hyper, and moving a pointer copies less than moving the whole state.
#[derive(Debug)]
pub struct DirectConnection(Box<Connection>);

#[derive(Debug)]
pub struct Connection {
    stream: TcpStream,
    /// The connection's place under the per-endpoint cap, given back when it closes.
    permit: Option<EndpointPermit>,
    buf: BytesMut,
    layout: Layout,
}

impl std::ops::Deref for DirectConnection {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        &self.0
    }
}

impl std::ops::DerefMut for DirectConnection {
    fn deref_mut(&mut self) -> &mut Connection {
        &mut self.0
    }
}

impl DirectConnection {
    /// Keeps `permit` for as long as the connection lives.
    pub fn holding(mut self, permit: EndpointPermit) -> Self {
        self.0.permit = Some(permit);
        self
    }

    pub fn new(stream: TcpStream) -> Self {
        Self(Box::new(Connection {
            stream,
            permit: None,
            buf: BytesMut::with_capacity(READ_CHUNK),
            layout: Layout::default(),
        }))
    }
}

impl Connection {
    /// Whether an idle connection can take another request. Nothing may arrive on an idle
    /// HTTP/1.1 connection: readable means a FIN (the backend's idle timeout), a reset or stray
    /// bytes, and the connection is done. Costs no system call while nothing arrived.
    pub fn idle_usable(&mut self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // The readiness may be stale (the last read filled the buffer exactly): a read
            // that would block clears it and proves the connection quiet.
            Poll::Ready(Ok(())) => matches!(
                self.stream.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            ),
        }
    }

    async fn read_more(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_read_more(cx)).await
    }

    /// Reads what the socket has into the buffer (through tokio's `poll_read`, which notes a
    /// short read as drained and so spares the next poll a would-block `recv`).
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
            self.buf.reserve(READ_CHUNK);
        }
        poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf)
    }
}

/// Why an exchange produced no response, and whether the request may be sent again on another
/// connection.
#[derive(Debug)]
pub struct ExchangeFailure {
    pub error: UpstreamError,
    /// Nothing came back and the request either was not written or is idempotent: a reused
    /// connection the backend had closed while it sat idle, the classic keep-alive race.
    pub retryable: bool,
}

/// The request head as HTTP/1.1 writes it; `parts` carries the origin-form target and the
/// headers already made fit for the hop but for `hop`'s additions.
pub fn encode_request_head(parts: &Parts, hop: &HopHeaders<'_>) -> Vec<u8> {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = Vec::with_capacity(160 + target.len() + 48 * parts.headers.len());
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    hop.write_fields(&parts.headers, &mut out);
    // A method that defines a body says it has none (RFC 9112 section 6.3); an HTTP/2 client
    // ends such a request without a Content-Length.
    if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH)
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        out.extend_from_slice(b"content-length: 0\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Sends a bodyless request on `conn` and reads the response head. The body that follows is
/// read by the returned [`DirectBody`], which gives the connection back to this thread's pool
/// once the body has been read whole and the connection can be reused.
pub async fn exchange(
    mut conn: DirectConnection,
    head: &[u8],
    method: &Method,
    endpoint: SocketAddr,
    max_idle: usize,
) -> Result<Response<DirectBody>, ExchangeFailure> {
    let may_retry = method.is_idempotent();
    if let Err(e) = conn.stream.write_all(head).await {
        return Err(ExchangeFailure {
            error: UpstreamError::Io(e),
            retryable: true,
        });
    }
    let mut interim = false;
    loop {
        let Connection { buf, layout, .. } = &mut *conn;
        match parse_head(buf, layout) {
            Ok(Some(head))
                if head.status.is_informational()
                    && head.status != StatusCode::SWITCHING_PROTOCOLS =>
            {
                // 100 Continue, 103 Early Hints: the final response follows.
                interim = true;
                continue;
            }
            Ok(Some(head)) => {
                return DirectBody::respond(conn, head, method == Method::HEAD, endpoint, max_idle)
                    .map_err(|error| ExchangeFailure {
                        error,
                        retryable: false,
                    });
            }
            Ok(None) if conn.buf.len() >= MAX_HEAD_BYTES => {
                return Err(ExchangeFailure {
                    error: UpstreamError::Protocol("response head larger than 64 KiB"),
                    retryable: false,
                });
            }
            Ok(None) => {}
            Err(error) => {
                return Err(ExchangeFailure {
                    error,
                    retryable: false,
                });
            }
        }
        let nothing_back = conn.buf.is_empty() && !interim;
        match conn.read_more().await {
            Ok(0) => {
                return Err(ExchangeFailure {
                    error: UpstreamError::Protocol("connection closed before a response"),
                    retryable: nothing_back && may_retry,
                });
            }
            Ok(_) => {}
            Err(e) => {
                return Err(ExchangeFailure {
                    error: UpstreamError::Io(e),
                    retryable: nothing_back && may_retry,
                });
            }
        }
    }
}

/// A parsed response head; its header values share the bytes read from the socket.
#[derive(Debug)]
struct ResponseHead {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    seen: Seen,
}

/// Takes one complete response head off the front of `buf`, or `None` while it is partial.
/// `layout` is the connection's: a head with its names is filled in from it, another teaches
/// it.
fn parse_head(
    buf: &mut BytesMut,
    layout: &mut Layout,
) -> Result<Option<ResponseHead>, UpstreamError> {
    // Asked before every read, mostly of an empty buffer. A partial head is still parsed, so
    // that garbage is refused as soon as it arrives rather than when the connection ends.
    if buf.is_empty() {
        return Ok(None);
    }
    let (len, status, version, fresh) = {
        let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let len = match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut resp, buf, &mut slots)
        {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(UpstreamError::Parse(e)),
        };
        let status = resp
            .code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or(UpstreamError::Protocol("invalid status code"))?;
        let version = match resp.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        // Names and values are kept as offsets into the head: once it is frozen, values are
        // sliced out of it, shared rather than copied one by one. httparse parses in place,
        // so a non-empty name or value is a slice of `buf`.
        let start = buf.as_ptr() as usize;
        let fresh = if layout.matches(resp.headers, start) {
            None
        } else {
            let mut fields = Vec::with_capacity(resp.headers.len());
            let mut seen = Seen::default();
            for h in resp.headers.iter() {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| UpstreamError::Protocol("invalid header name"))?;
                seen.note(&name);
                fields.push((name, span(start, h.name.as_bytes()), span(start, h.value)));
            }
            Some((fields, seen))
        };
        (len, status, version, fresh)
    };
    let head = buf.split_to(len).freeze();
    let invalid_value = |_| UpstreamError::Protocol("invalid header value");
    let (headers, seen) = match fresh {
        None => layout.fill(&head).map_err(invalid_value)?,
        Some((fields, seen)) => {
            let mut headers = HeaderMap::with_capacity(fields.len());
            for (name, _, value) in &fields {
                let value = HeaderValue::from_maybe_shared(head.slice(value.clone()))
                    .map_err(invalid_value)?;
                headers.append(name.clone(), value);
            }
            layout.learn(
                fields.iter().map(|(_, name, _)| &head[name.clone()]),
                &headers,
                seen,
            );
            (headers, seen)
        }
    };
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        seen,
    }))
}

/// How the body after a response head ends (RFC 9112 section 6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Framing {
    /// Nothing follows the head.
    Empty,
    /// This many bytes are left.
    Length(u64),
    Chunked(Chunk),
    /// The body runs to the end of the connection.
    UntilClose,
}

/// Where a chunked body's decoder stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    Size,
    /// This many bytes of the current chunk are left.
    Data(u64),
    /// The CRLF that ends a chunk's data.
    DataEnd,
    /// Trailer lines, up to an empty line; they are dropped (an HTTP/1.1 client does not ask
    /// for them and nothing on this hop uses them).
    Trailers,
}

fn framing(head: &ResponseHead, head_request: bool) -> Result<Framing, UpstreamError> {
    let (status, headers) = (head.status, &head.headers);
    if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    if head.seen.transfer_encoding {
        // Chunked only when it is the final coding; anything else runs to the close.
        let chunked = list_items(headers, &header::TRANSFER_ENCODING)
            .last()
            .is_some_and(|t| t.eq_ignore_ascii_case("chunked"));
        return Ok(if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            Framing::UntilClose
        });
    }
    if !head.seen.content_length {
        return Ok(Framing::UntilClose);
    }
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        // Repeated fields and lists are allowed only when they all agree.
        for part in value.as_bytes().split(|&b| b == b',') {
            let n = std::str::from_utf8(part)
                .ok()
                .map(str::trim)
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or(UpstreamError::Protocol("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(UpstreamError::Protocol("conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    Ok(length.map_or(Framing::UntilClose, Framing::Length))
}

/// A response body read straight from the backend connection by the task that polls it.
#[derive(Debug)]
pub struct DirectBody {
    /// `None` once the body has ended (the connection went back to the pool or was closed).
    conn: Option<DirectConnection>,
    framing: Framing,
    /// The backend keeps the connection open after this response.
    reusable: bool,
    endpoint: SocketAddr,
    max_idle: usize,
}

impl DirectBody {
    fn respond(
        conn: DirectConnection,
        mut head: ResponseHead,
        head_request: bool,
        endpoint: SocketAddr,
        max_idle: usize,
    ) -> Result<Response<Self>, UpstreamError> {
        let framing = framing(&head, head_request)?;
        let keep_alive = match (head.version, head.seen.connection) {
            (Version::HTTP_10, false) => false,
            (_, false) => true,
            (Version::HTTP_10, true) => list_has(&head.headers, &header::CONNECTION, "keep-alive"),
            (_, true) => !list_has(&head.headers, &header::CONNECTION, "close"),
        };
        let reusable = keep_alive
            && head.status != StatusCode::SWITCHING_PROTOCOLS
            && !matches!(framing, Framing::UntilClose)
            // Transfer-Encoding and Content-Length together are a smuggling attempt or a
            // broken backend: serve the response, never reuse the connection.
            && !(head.seen.transfer_encoding && head.seen.content_length);
        if head.seen.content_length && matches!(framing, Framing::Chunked(_) | Framing::UntilClose)
        {
            // The client hop is framed anew by the server; a length that does not describe
            // the body would mislead it.
            head.headers.remove(header::CONTENT_LENGTH);
        }
        let mut body = Self {
            conn: Some(conn),
            framing,
            reusable,
            endpoint,
            max_idle,
        };
        if framing == Framing::Empty || framing == Framing::Length(0) {
            body.finish();
        }
        let mut resp = Response::new(body);
        *resp.status_mut() = head.status;
        *resp.headers_mut() = head.headers;
        Ok(resp)
    }

    /// The body has been read whole: the connection goes back to the pool when the backend
    /// keeps it open and sent nothing beyond the body.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.reusable
            && conn.buf.is_empty()
        {
            pool::checkin(self.endpoint, conn, self.max_idle);
        }
    }

    /// The next piece of body from what is buffered: `Ok(None)` means more must be read.
    fn decode(&mut self) -> Result<Option<Step>, io::Error> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Some(Step::End));
        };
        let buf = &mut conn.buf;
        loop {
            match &mut self.framing {
                Framing::Empty | Framing::Length(0) => return Ok(Some(Step::End)),
                Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                    *left -= take as u64;
                    if matches!(self.framing, Framing::Chunked(Chunk::Data(0))) {
                        self.framing = Framing::Chunked(Chunk::DataEnd);
                    }
                    return Ok(Some(Step::Data(buf.split_to(take).freeze())));
                }
                Framing::UntilClose => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    return Ok(Some(Step::Data(buf.split().freeze())));
                }
                Framing::Chunked(Chunk::Size) => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((used, size))) => {
                        let _ = buf.split_to(used);
                        self.framing = Framing::Chunked(if size == 0 {
                            Chunk::Trailers
                        } else {
                            Chunk::Data(size)
                        });
                    }
                    Ok(httparse::Status::Partial) if buf.len() < MAX_LINE_BYTES => {
                        return Ok(None);
                    }
                    _ => return Err(invalid("invalid chunk size line")),
                },
                Framing::Chunked(Chunk::DataEnd) => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(invalid("chunk data not followed by CRLF"));
                    }
                    let _ = buf.split_to(2);
                    self.framing = Framing::Chunked(Chunk::Size);
                }
                Framing::Chunked(Chunk::Trailers) => {
                    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                        if buf.len() >= MAX_LINE_BYTES {
                            return Err(invalid("trailer line too long"));
                        }
                        return Ok(None);
                    };
                    let _ = buf.split_to(end + 2);
                    if end == 0 {
                        return Ok(Some(Step::End));
                    }
                }
            }
        }
    }
}

enum Step {
    Data(Bytes),
    End,
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

impl Body for DirectBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        loop {
            match this.decode() {
                Ok(Some(Step::Data(data))) => {
                    if this.framing == Framing::Length(0) {
                        // The last bytes: the connection is free before they are even sent on.
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Some(Step::End)) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(None) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(conn.poll_read_more(cx)) {
                Ok(0) if this.framing == Framing::UntilClose => {
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "backend closed the connection before the end of the body",
                    ))));
                }
                Ok(_) => {}
                Err(e) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(e)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (self.conn.is_some(), self.framing) {
            (false, _) => SizeHint::with_exact(0),
            (true, Framing::Length(n)) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
