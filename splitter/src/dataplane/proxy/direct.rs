//! The HTTP/1.1 client: every request goes to its backend from the request's own task, which
//! writes the request head (and streams the request body, if any), reads the response head
//! and then, through [`DirectBody`], the response body, straight from the pooled socket.
//!
//! hyper's client drives every connection from a task of its own and passes the request, the
//! response head and each body chunk between that task and the request's over channels. On the
//! proxy's hot path those hand-offs and the second dispatcher took a large share of the proxy's
//! user CPU. Here there is one task and no channel: the response body is read by whoever polls
//! it, the client connection's task.
//!
//! The pieces, laid out as pingora's client is: the connection with its read buffer
//! ([`Connection`]), the request body sender ([`BodySender`]: as the body's size is known, a
//! Content-Length body, else chunked, trailers included), the response head reader (at most
//! [`MAX_INTERIM`] informational responses, a head of at most 64 KiB however the bytes
//! arrive), the response body decoder ([`Decoder`]: Content-Length, chunked with trailers,
//! until the close, none for HEAD/1xx/204/304), and the pool of idle connections (`pool`). A
//! 101 answer to an upgrade request hands the socket, and what was read past the head, over to
//! the splice (`upgrade`).

use std::{
    io,
    mem::MaybeUninit,
    net::SocketAddr,
    pin::Pin,
    task::{Context, Poll, Waker, ready},
    time::Duration,
};

use bytes::{Buf, Bytes, BytesMut};
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version, header,
    request::Parts,
};
use http_body::{Body, Frame, SizeHint};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    time::Sleep,
};
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
/// Largest response head accepted, status line and final CRLF included.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Most informational (1xx) responses before the final one; past it the exchange fails (502).
pub const MAX_INTERIM: usize = 8;
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
    /// Longest wait for the backend's next bytes while a response is awaited or read.
    read_timeout: Option<Duration>,
    /// The read timer, made at the connection's first wait.
    timer: Option<Pin<Box<Sleep>>>,
    /// A read is waiting, since `wait_since`.
    waiting: bool,
    wait_since: tokio::time::Instant,
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
            read_timeout: None,
            timer: None,
            waiting: false,
            wait_since: tokio::time::Instant::now(),
        }))
    }

    /// Fails a read that waits longer than `timeout` for the backend's next bytes.
    pub fn with_read_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.0.read_timeout = timeout;
        self
    }

    /// The socket, what was read from it beyond the last response head (an upgraded
    /// connection's first bytes), and its place under the per-endpoint cap, which a tunnel
    /// keeps for as long as it is open.
    pub fn into_parts(self) -> (TcpStream, BytesMut, Option<EndpointPermit>) {
        let Connection {
            stream,
            buf,
            permit,
            ..
        } = *self.0;
        (stream, buf, permit)
    }
}

impl Connection {
    /// Whether an idle connection can take another request. Nothing may arrive on an idle
    /// HTTP/1.1 connection: readable means a FIN (the backend's idle timeout), a reset or stray
    /// bytes, and the connection is done. Costs no system call while nothing arrived.
    pub fn idle_state(&mut self) -> IdleState {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => IdleState::Usable,
            Poll::Ready(Err(_)) => IdleState::Closed,
            // The readiness may be stale (the last read filled the buffer exactly): a read
            // that would block clears it and proves the connection quiet.
            Poll::Ready(Ok(())) => match self.stream.try_read(&mut [0u8; 1]) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => IdleState::Usable,
                Ok(n) if n > 0 => IdleState::Stray,
                _ => IdleState::Closed,
            },
        }
    }

    /// [`idle_state`](Self::idle_state) is [`IdleState::Usable`].
    pub fn idle_usable(&mut self) -> bool {
        self.idle_state() == IdleState::Usable
    }

    /// Reads what the socket has into the buffer (through tokio's `poll_read`, which notes a
    /// short read as drained and so spares the next poll a would-block `recv`). A read that
    /// waits longer than the read timeout fails with `TimedOut`; the timer is looked at only
    /// when a read has to wait, and each read that brings bytes ends the wait.
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
            self.buf.reserve(READ_CHUNK);
        }
        match poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf) {
            Poll::Ready(r) => {
                self.waiting = false;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let Some(limit) = self.read_timeout else {
                    return Poll::Pending;
                };
                if !self.waiting {
                    self.waiting = true;
                    self.wait_since = tokio::time::Instant::now();
                }
                let due = self.wait_since + limit;
                // The timer is not moved at each wait (re-registering it costs more than the
                // rest of a wait): it may fire early, for an older wait, and is then moved on
                // to this one's deadline.
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                while timer.as_mut().poll(cx).is_ready() {
                    if tokio::time::Instant::now() >= due {
                        self.waiting = false;
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "backend sent nothing within the read timeout",
                        )));
                    }
                    timer.as_mut().reset(due);
                }
                Poll::Pending
            }
        }
    }
}

/// What an idle pooled connection turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleState {
    /// Quiet: it can take a request.
    Usable,
    /// Closed or reset by the backend.
    Closed,
    /// The backend sent bytes nobody asked for: it is out of step with its responses.
    Stray,
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

/// How the request body is framed on the backend hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestFraming {
    /// No body.
    None,
    /// Content-Length: the body's size was known.
    Length(u64),
    /// Transfer-Encoding: chunked.
    Chunked,
}

impl RequestFraming {
    /// The framing of `body` (`None` for no body): by the size the body itself knows, never
    /// by a Content-Length header, so that the length written is the length sent.
    pub fn of<B: Body>(body: Option<&B>) -> Self {
        match body {
            None => Self::None,
            Some(b) => match b.size_hint().exact() {
                Some(n) => Self::Length(n),
                None => Self::Chunked,
            },
        }
    }
}

/// The request head as HTTP/1.1 writes it; `parts` carries the origin-form target and the
/// headers already made fit for the hop but for `hop`'s additions. With a body, the framing
/// header is this client's (any Content-Length in `parts` is left out).
pub fn encode_request_head(
    parts: &Parts,
    hop: &HopHeaders<'_>,
    framing: RequestFraming,
) -> Vec<u8> {
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = Vec::with_capacity(160 + target.len() + 48 * parts.headers.len());
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    hop.write_fields(&parts.headers, framing != RequestFraming::None, &mut out);
    match framing {
        // A method that defines a body says it has none (RFC 9112 section 6.3); an HTTP/2
        // client ends such a request without a Content-Length.
        RequestFraming::None => {
            if matches!(parts.method, Method::POST | Method::PUT | Method::PATCH)
                && !parts.headers.contains_key(header::CONTENT_LENGTH)
            {
                out.extend_from_slice(b"content-length: 0\r\n");
            }
        }
        RequestFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        RequestFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
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
    let mut reader = HeadReader::default();
    match std::future::poll_fn(|cx| reader.poll(&mut conn, cx)).await {
        Ok(head) => DirectBody::respond(conn, head, method == Method::HEAD, endpoint, max_idle)
            .map_err(|error| ExchangeFailure {
                error,
                retryable: false,
            }),
        Err(HeadError {
            error,
            nothing_back,
        }) => Err(ExchangeFailure {
            error,
            retryable: nothing_back && may_retry,
        }),
    }
}

/// [`exchange`] for a request with a body: the body is streamed to the backend while its
/// answer is awaited, so a backend that answers early (413, a redirect) is heard at once; the
/// connection is then not reused, as the rest of the body was never sent. When the exchange
/// fails before any of the body was taken, the body comes back with the failure.
pub async fn exchange_with_body<B>(
    mut conn: DirectConnection,
    head: Bytes,
    body: B,
    framing: RequestFraming,
    method: &Method,
    endpoint: SocketAddr,
    max_idle: usize,
) -> Result<Response<DirectBody>, (ExchangeFailure, Option<B>)>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    // The head goes out with as much of the body as is already there, in one write.
    let mut sender = BodySender::new(head, body, framing == RequestFraming::Chunked);
    let mut sent: Option<Result<(), io::Error>> = None;
    let mut reader = HeadReader::default();
    let read = std::future::poll_fn(|cx| {
        if sent.is_none()
            && let Poll::Ready(r) = sender.poll_send(&mut conn.stream, cx)
        {
            match r {
                Ok(()) => sent = Some(Ok(())),
                Err(SendError::Client(e)) => {
                    return Poll::Ready(Err(HeadError {
                        error: UpstreamError::RequestBody(e),
                        nothing_back: false,
                    }));
                }
                // The backend may have answered and closed: what it said is read first.
                Err(SendError::Upstream(e)) => sent = Some(Err(e)),
            }
        }
        reader.poll(&mut conn, cx)
    })
    .await;
    match read {
        Ok(head) => {
            let complete = matches!(sent, Some(Ok(())));
            let mut resp =
                DirectBody::respond(conn, head, method == Method::HEAD, endpoint, max_idle)
                    .map_err(|error| {
                        let failure = ExchangeFailure {
                            error,
                            retryable: false,
                        };
                        (failure, None)
                    })?;
            if !complete {
                resp.body_mut().reusable = false;
            }
            Ok(resp)
        }
        Err(HeadError {
            error,
            nothing_back,
        }) => {
            let untouched = !sender.taken;
            let failure = ExchangeFailure {
                error,
                retryable: nothing_back && untouched,
            };
            Err((failure, untouched.then_some(sender.body)))
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why sending a request body stopped.
enum SendError {
    /// The client's body failed (it went away, or broke its framing).
    Client(BoxError),
    /// Writing to the backend failed.
    Upstream(io::Error),
}

/// Streams a request body to the backend, framed by Content-Length (written as it comes) or
/// chunked (each data frame one chunk; the client's trailers, if any, after the last).
pub struct BodySender<B> {
    body: B,
    chunked: bool,
    /// Bytes to write before the next frame is asked for.
    out: std::collections::VecDeque<Bytes>,
    /// The body has ended and its end is queued.
    ended: bool,
    /// Something was taken from the body: it can no longer be sent elsewhere.
    taken: bool,
}

impl<B> BodySender<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    /// `head` is written first, with what the body has ready by then.
    pub fn new(head: Bytes, body: B, chunked: bool) -> Self {
        Self {
            body,
            chunked,
            out: std::collections::VecDeque::from([head]),
            ended: false,
            taken: false,
        }
    }

    /// Writes the body to `io` as it arrives, what is queued in one vectored write; ready
    /// once all of it has been written.
    fn poll_send<W: AsyncWrite + Unpin>(
        &mut self,
        io: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), SendError>> {
        /// Most buffers gathered into one write.
        const GATHER: usize = 16;
        loop {
            // Take what the body has ready, so that it goes out with what is queued.
            while !self.ended && self.out.len() < GATHER {
                match Pin::new(&mut self.body).poll_frame(cx) {
                    Poll::Pending => break,
                    Poll::Ready(Some(Ok(frame))) => {
                        self.taken = true;
                        self.queue(frame);
                    }
                    Poll::Ready(Some(Err(e))) => {
                        self.taken = true;
                        return Poll::Ready(Err(SendError::Client(e.into())));
                    }
                    Poll::Ready(None) => {
                        if self.chunked {
                            self.end_chunked(None);
                        }
                        self.ended = true;
                    }
                }
            }
            if self.out.is_empty() {
                // All written: done, or waiting for the body (its waker is registered).
                return if self.ended {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            let slices: Vec<io::IoSlice<'_>> =
                self.out.iter().map(|b| io::IoSlice::new(b)).collect();
            let written = match ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices)) {
                Ok(0) => {
                    return Poll::Ready(Err(SendError::Upstream(io::ErrorKind::WriteZero.into())));
                }
                Ok(n) => n,
                Err(e) => return Poll::Ready(Err(SendError::Upstream(e))),
            };
            let mut left = written;
            while left > 0 {
                let Some(front) = self.out.front_mut() else {
                    break;
                };
                let n = left.min(front.len());
                front.advance(n);
                left -= n;
                if front.is_empty() {
                    self.out.pop_front();
                }
            }
        }
    }

    fn queue(&mut self, frame: Frame<Bytes>) {
        match frame.into_data() {
            Ok(data) if data.is_empty() => {}
            Ok(data) if self.chunked => {
                self.out
                    .push_back(Bytes::from(format!("{:x}\r\n", data.len())));
                self.out.push_back(data);
                self.out.push_back(Bytes::from_static(b"\r\n"));
            }
            Ok(data) => self.out.push_back(data),
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers()
                    && self.chunked
                {
                    self.end_chunked(Some(&trailers));
                }
            }
        }
    }

    /// Queues the last chunk and the trailer section.
    fn end_chunked(&mut self, trailers: Option<&HeaderMap>) {
        if self.ended {
            return;
        }
        let mut end = b"0\r\n".to_vec();
        for (name, value) in trailers.into_iter().flatten() {
            end.extend_from_slice(name.as_str().as_bytes());
            end.extend_from_slice(b": ");
            end.extend_from_slice(value.as_bytes());
            end.extend_from_slice(b"\r\n");
        }
        end.extend_from_slice(b"\r\n");
        self.out.push_back(Bytes::from(end));
        self.ended = true;
    }
}

/// Why no final response head was read.
struct HeadError {
    error: UpstreamError,
    /// Nothing at all came back: the request may not have been seen.
    nothing_back: bool,
}

/// Reads response heads off a connection up to the final one.
#[derive(Default)]
struct HeadReader {
    /// Informational responses passed over so far.
    interim: usize,
}

impl HeadReader {
    fn poll(
        &mut self,
        conn: &mut Connection,
        cx: &mut Context<'_>,
    ) -> Poll<Result<ResponseHead, HeadError>> {
        let fail = |error| {
            Poll::Ready(Err(HeadError {
                error,
                nothing_back: false,
            }))
        };
        loop {
            let Connection { buf, layout, .. } = conn;
            match parse_head(buf, layout) {
                Ok(Some(head))
                    if head.status.is_informational()
                        && head.status != StatusCode::SWITCHING_PROTOCOLS =>
                {
                    // 100 Continue, 103 Early Hints: the final response follows.
                    self.interim += 1;
                    if self.interim > MAX_INTERIM {
                        return fail(UpstreamError::Protocol(
                            "too many informational (1xx) responses",
                        ));
                    }
                    continue;
                }
                Ok(Some(head)) => return Poll::Ready(Ok(head)),
                // Partial: every byte buffered belongs to the head.
                Ok(None) if conn.buf.len() >= MAX_HEAD_BYTES => {
                    return fail(UpstreamError::Protocol("response head larger than 64 KiB"));
                }
                Ok(None) => {}
                Err(error) => return fail(error),
            }
            let nothing_back = conn.buf.is_empty() && self.interim == 0;
            match ready!(conn.poll_read_more(cx)) {
                Ok(0) => {
                    return Poll::Ready(Err(HeadError {
                        error: UpstreamError::Protocol("connection closed before a response"),
                        nothing_back,
                    }));
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                    return fail(UpstreamError::ReadTimeout);
                }
                Err(e) => {
                    return Poll::Ready(Err(HeadError {
                        error: UpstreamError::Io(e),
                        nothing_back,
                    }));
                }
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
            Ok(httparse::Status::Complete(len)) if len > MAX_HEAD_BYTES => {
                return Err(UpstreamError::Protocol("response head larger than 64 KiB"));
            }
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
    /// A 101 answer: the connection is kept for [`take_upgraded`](Self::take_upgraded).
    switched: bool,
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
        let switched = head.status == StatusCode::SWITCHING_PROTOCOLS;
        let mut body = Self {
            conn: Some(conn),
            framing,
            reusable,
            endpoint,
            max_idle,
            switched,
        };
        if !switched && (framing == Framing::Empty || framing == Framing::Length(0)) {
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
        let Some(conn) = self.conn.take() else {
            return;
        };
        if !self.reusable {
            return;
        }
        if conn.buf.is_empty() {
            pool::checkin(self.endpoint, conn, self.max_idle);
        } else {
            // Bytes after a complete response: the backend is out of step (a wrong length, a
            // second response nobody asked for). Its connections are not trusted for a while.
            pool::distrust(self.endpoint);
        }
    }

    /// The connection of a 101 (Switching Protocols) answer, for the splice; `None` for any
    /// other response.
    pub fn take_upgraded(&mut self) -> Option<DirectConnection> {
        if self.switched {
            self.conn.take()
        } else {
            None
        }
    }

    /// The next piece of body from what is buffered: `Ok(None)` means more must be read.
    fn decode(&mut self) -> Result<Option<Step>, io::Error> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(Some(Step::End));
        };
        decode(&mut self.framing, &mut conn.buf)
    }
}

/// The response body decoder: takes the next piece of body off the front of `buf` as
/// `framing` says, and advances `framing`; `Ok(None)` means more bytes are needed. Bytes
/// beyond the body's end are left in `buf`.
fn decode(framing: &mut Framing, buf: &mut BytesMut) -> Result<Option<Step>, io::Error> {
    loop {
        match framing {
            Framing::Empty | Framing::Length(0) => return Ok(Some(Step::End)),
            Framing::Length(left) | Framing::Chunked(Chunk::Data(left)) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= take as u64;
                if matches!(*framing, Framing::Chunked(Chunk::Data(0))) {
                    *framing = Framing::Chunked(Chunk::DataEnd);
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
                    *framing = Framing::Chunked(if size == 0 {
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
                *framing = Framing::Chunked(Chunk::Size);
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
