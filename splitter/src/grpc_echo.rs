//! A gRPC echo backend over HTTP/2 with prior knowledge (h2c), for tests and the conformance
//! suite: it answers like the upstream conformance echo server's gRPC half (echo-basic,
//! service `gateway_api_conformance.echo_basic.grpcecho.GrpcEcho`), plus two streaming methods
//! of its own for the proxy's streaming tests.
//!
//! - `GrpcEcho/Echo` and `GrpcEcho/EchoTwo`: one `EchoResponse` whose assertions name the
//!   method called, the request headers (`:authority` first) and the pod's context;
//!   `GrpcEcho/EchoThree` and any other method: UNIMPLEMENTED, as upstream. A request header
//!   `x-echo-delay-ms: N` delays the answer by N milliseconds (at most a minute): a slow
//!   backend for the tests.
//! - `splitter.echo.Stream/Count`: server streaming, `x-count` messages (default 3) of the
//!   pod's name, one every `x-interval-ms` milliseconds (default 100), then status OK.
//! - `splitter.echo.Stream/Bidi`: every message is sent back as soon as it arrives; the
//!   response trailers carry `x-messages` (how many) and, when the request ended with
//!   trailers, `x-request-trailer-<name>` for each of them.
//!
//! The protobuf messages are few and flat, so they are written and read by hand ([`wire`]).

use std::{convert::Infallible, io, net::SocketAddr, sync::Arc, time::Duration};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};
use http_body::Frame;
use http_body_util::{BodyExt, StreamBody, combinators::UnsyncBoxBody};
use hyper::{body::Incoming, server::conn::http2, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{net::TcpListener, sync::mpsc, task::JoinHandle};

/// The upstream echo service.
pub const ECHO_SERVICE: &str = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";
/// This module's streaming service.
pub const STREAM_SERVICE: &str = "splitter.echo.Stream";

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type ReplyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Who answers, as upstream's echo reports it (`Context`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodContext {
    pub namespace: String,
    pub ingress: String,
    pub service_name: String,
    pub pod: String,
}

/// What `Echo` and `EchoTwo` answer (`Assertions` of the upstream `EchoResponse`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EchoAssertions {
    pub fully_qualified_method: String,
    pub headers: Vec<(String, String)>,
    pub authority: String,
    pub context: PodContext,
}

impl EchoAssertions {
    /// Values of header `name` (lower-case).
    pub fn header(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// A running gRPC echo server, stopped on drop.
pub struct GrpcEchoServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for GrpcEchoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl GrpcEchoServer {
    pub async fn bind(addr: SocketAddr, context: PodContext) -> io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let context = Arc::new(context);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let context = context.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(context.clone(), req));
                    let _ = http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self { local_addr, task })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

async fn answer(
    context: Arc<PodContext>,
    req: Request<Incoming>,
) -> Result<Response<ReplyBody>, Infallible> {
    let path = req.uri().path().to_owned();
    let (service, method) = path
        .strip_prefix('/')
        .and_then(|p| p.split_once('/'))
        .unwrap_or(("", ""));
    Ok(match (service, method) {
        (ECHO_SERVICE, "Echo" | "EchoTwo") => echo(&context, req, &path).await,
        (STREAM_SERVICE, "Count") => count(&context, &req),
        (STREAM_SERVICE, "Bidi") => bidi(req),
        _ => trailers_only(12, "unknown method"),
    })
}

async fn echo(context: &PodContext, req: Request<Incoming>, path: &str) -> Response<ReplyBody> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .unwrap_or_default();
    let mut headers = vec![(":authority".to_owned(), authority.clone())];
    for (k, v) in req.headers() {
        headers.push((
            k.as_str().to_owned(),
            String::from_utf8_lossy(v.as_bytes()).into_owned(),
        ));
    }
    let delay = req
        .headers()
        .get("x-echo-delay-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms.min(60_000)));
    // The request message is empty; read it to the end of the stream.
    if req.into_body().collect().await.is_err() {
        return trailers_only(13, "request stream failed");
    }
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let reply = EchoAssertions {
        fully_qualified_method: path.to_owned(),
        headers,
        authority,
        context: context.clone(),
    };
    let frames = vec![
        Ok(Frame::data(wire::frame(&wire::echo_response(&reply)))),
        Ok(Frame::trailers(status_trailers(0, None))),
    ];
    grpc_response(StreamBody::new(futures::stream::iter(frames)).boxed_unsync())
}

fn count(context: &PodContext, req: &Request<Incoming>) -> Response<ReplyBody> {
    let number = |name: &str, default: u64| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let n = number("x-count", 3).min(1000);
    let interval = Duration::from_millis(number("x-interval-ms", 100).min(10_000));
    let pod = context.pod.clone();
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    tokio::spawn(async move {
        for i in 0..n {
            if i > 0 {
                tokio::time::sleep(interval).await;
            }
            let msg = wire::string_field(1, &format!("{pod} {i}"));
            if tx.send(Ok(Frame::data(wire::frame(&msg)))).await.is_err() {
                return;
            }
        }
        let _ = tx.send(Ok(Frame::trailers(status_trailers(0, None)))).await;
    });
    grpc_response(channel_body(rx))
}

fn bidi(req: Request<Incoming>) -> Response<ReplyBody> {
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    let mut body = req.into_body();
    tokio::spawn(async move {
        let mut pending = BytesMut::new();
        let mut messages = 0u64;
        let mut request_trailers = HeaderMap::new();
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return };
            match frame.into_data() {
                Ok(data) => {
                    pending.extend_from_slice(&data);
                    while let Some(msg) = wire::take_message(&mut pending) {
                        messages += 1;
                        if tx.send(Ok(Frame::data(wire::frame(&msg)))).await.is_err() {
                            return;
                        }
                    }
                }
                Err(frame) => {
                    if let Ok(t) = frame.into_trailers() {
                        request_trailers = t;
                    }
                }
            }
        }
        let mut trailers = status_trailers(0, None);
        trailers.insert("x-messages", HeaderValue::from(messages));
        for (k, v) in &request_trailers {
            if let Ok(name) =
                HeaderName::from_bytes(format!("x-request-trailer-{}", k.as_str()).as_bytes())
            {
                trailers.append(name, v.clone());
            }
        }
        let _ = tx.send(Ok(Frame::trailers(trailers))).await;
    });
    grpc_response(channel_body(rx))
}

fn channel_body(mut rx: mpsc::Receiver<Result<Frame<Bytes>, BoxError>>) -> ReplyBody {
    let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
    StreamBody::new(stream).boxed_unsync()
}

fn grpc_response(body: ReplyBody) -> Response<ReplyBody> {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    resp
}

fn trailers_only(code: u32, message: &'static str) -> Response<ReplyBody> {
    let mut resp = Response::new(
        http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    resp.headers_mut()
        .extend(status_trailers(code, Some(message)));
    resp
}

fn status_trailers(code: u32, message: Option<&'static str>) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from(code));
    if let Some(m) = message {
        t.insert("grpc-message", HeaderValue::from_static(m));
    }
    t
}

/// The protobuf wire format of the echo messages and gRPC's message framing
/// (a compressed flag, a 4-byte big-endian length, the message), for the server above and for
/// test clients.
pub mod wire {
    use super::*;

    /// One length-prefixed, uncompressed gRPC message.
    pub fn frame(message: &[u8]) -> Bytes {
        let mut out = BytesMut::with_capacity(5 + message.len());
        out.put_u8(0);
        out.put_u32(message.len() as u32);
        out.put_slice(message);
        out.freeze()
    }

    /// Takes the first whole gRPC message off `buf`, if it holds one.
    pub fn take_message(buf: &mut BytesMut) -> Option<Bytes> {
        if buf.len() < 5 {
            return None;
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            return None;
        }
        buf.advance(5);
        Some(buf.split_to(len).freeze())
    }

    fn varint(out: &mut BytesMut, mut v: u64) {
        while v >= 0x80 {
            out.put_u8((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        out.put_u8(v as u8);
    }

    fn bytes_field(out: &mut BytesMut, number: u32, value: &[u8]) {
        varint(out, u64::from(number << 3 | 2));
        varint(out, value.len() as u64);
        out.put_slice(value);
    }

    /// A message holding one string field.
    pub fn string_field(number: u32, value: &str) -> Bytes {
        let mut out = BytesMut::new();
        bytes_field(&mut out, number, value.as_bytes());
        out.freeze()
    }

    /// `EchoResponse { assertions: Assertions { fully_qualified_method = 1, headers = 2
    /// (Header { key = 1, value = 2 }), authority = 3, context = 4 (Context { namespace = 1,
    /// ingress = 2, service_name = 3, pod = 4 }) } = 1 }`.
    pub fn echo_response(a: &EchoAssertions) -> Bytes {
        let mut assertions = BytesMut::new();
        bytes_field(&mut assertions, 1, a.fully_qualified_method.as_bytes());
        for (k, v) in &a.headers {
            let mut h = BytesMut::new();
            bytes_field(&mut h, 1, k.as_bytes());
            bytes_field(&mut h, 2, v.as_bytes());
            bytes_field(&mut assertions, 2, &h);
        }
        bytes_field(&mut assertions, 3, a.authority.as_bytes());
        let mut ctx = BytesMut::new();
        for (n, v) in [
            (1, &a.context.namespace),
            (2, &a.context.ingress),
            (3, &a.context.service_name),
            (4, &a.context.pod),
        ] {
            if !v.is_empty() {
                bytes_field(&mut ctx, n, v.as_bytes());
            }
        }
        bytes_field(&mut assertions, 4, &ctx);
        let mut out = BytesMut::new();
        bytes_field(&mut out, 1, &assertions);
        out.freeze()
    }

    /// The length-delimited fields of a message, by number; other wire types are skipped.
    /// `None` when the bytes are not a well-formed message.
    pub fn fields(mut buf: &[u8]) -> Option<Vec<(u32, &[u8])>> {
        fn read_varint(buf: &mut &[u8]) -> Option<u64> {
            let mut v = 0u64;
            for shift in (0..64).step_by(7) {
                let (&b, rest) = buf.split_first()?;
                *buf = rest;
                v |= u64::from(b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    return Some(v);
                }
            }
            None
        }
        let mut out = Vec::new();
        while !buf.is_empty() {
            let key = read_varint(&mut buf)?;
            let number = u32::try_from(key >> 3).ok()?;
            match key & 7 {
                0 => {
                    read_varint(&mut buf)?;
                }
                1 => buf = buf.get(8..)?,
                5 => buf = buf.get(4..)?,
                2 => {
                    let len = usize::try_from(read_varint(&mut buf)?).ok()?;
                    let (value, rest) = (buf.get(..len)?, buf.get(len..)?);
                    out.push((number, value));
                    buf = rest;
                }
                _ => return None,
            }
        }
        Some(out)
    }

    fn text(v: &[u8]) -> String {
        String::from_utf8_lossy(v).into_owned()
    }

    /// Reads an `EchoResponse`.
    pub fn parse_echo_response(msg: &[u8]) -> Option<EchoAssertions> {
        let mut out = EchoAssertions::default();
        for (n, v) in fields(msg)? {
            if n != 1 {
                continue;
            }
            for (n, v) in fields(v)? {
                match n {
                    1 => out.fully_qualified_method = text(v),
                    2 => {
                        let (mut k, mut val) = (String::new(), String::new());
                        for (n, v) in fields(v)? {
                            match n {
                                1 => k = text(v),
                                2 => val = text(v),
                                _ => {}
                            }
                        }
                        out.headers.push((k, val));
                    }
                    3 => out.authority = text(v),
                    4 => {
                        for (n, v) in fields(v)? {
                            let v = text(v);
                            match n {
                                1 => out.context.namespace = v,
                                2 => out.context.ingress = v,
                                3 => out.context.service_name = v,
                                4 => out.context.pod = v,
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
        Some(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn echo_response_round_trips() {
            let a = EchoAssertions {
                fully_qualified_method: format!("/{ECHO_SERVICE}/Echo"),
                headers: vec![(":authority".into(), "x".into()), ("a".into(), "b".into())],
                authority: "x".into(),
                context: PodContext {
                    namespace: "ns".into(),
                    pod: "p-1".into(),
                    ..PodContext::default()
                },
            };
            let framed = frame(&echo_response(&a));
            let mut buf = BytesMut::from(&framed[..]);
            let msg = take_message(&mut buf).unwrap();
            assert!(buf.is_empty());
            assert_eq!(parse_echo_response(&msg), Some(a));
            assert_eq!(fields(&[0x0a, 0x05, 1]), None, "truncated");
        }
    }
}
