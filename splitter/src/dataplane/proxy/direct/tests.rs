//! The direct exchange against scripted backends on loopback: real sockets, replies written
//! byte for byte as a backend might send them.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use http::{Request, header, uri::Authority};
use http_body_util::BodyExt;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::*;
use crate::dataplane::proxy::upstream::{Upstream, UpstreamConfig};

/// What the backend does after one reply.
#[derive(Clone, Copy, PartialEq)]
enum Then {
    KeepOpen,
    Close,
}

#[derive(Clone)]
struct Reply {
    bytes: &'static [u8],
    /// Written one byte per write, so the reader meets every split.
    trickle: bool,
    then: Then,
}

fn reply(bytes: &'static [u8]) -> Reply {
    Reply {
        bytes,
        trickle: false,
        then: Then::KeepOpen,
    }
}

/// `bytes`, after which the backend closes the connection.
fn reply_and_close(bytes: &'static [u8]) -> Reply {
    Reply {
        then: Then::Close,
        ..reply(bytes)
    }
}

/// A backend answering every request head with `reply`; counts the connections it accepted.
async fn backend(reply: Reply) -> (SocketAddr, Arc<AtomicUsize>) {
    backend_cycling(vec![reply]).await
}

/// A backend answering the requests on each connection with `replies` in turn, over and over.
async fn backend_cycling(replies: Vec<Reply>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let replies = replies.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                for reply in replies.iter().cycle() {
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => seen.extend_from_slice(&buf[..n]),
                        }
                    }
                    let end = seen.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    seen.drain(..end);
                    if reply.trickle {
                        for b in reply.bytes {
                            if s.write_all(&[*b]).await.is_err() {
                                return;
                            }
                            s.flush().await.unwrap();
                        }
                    } else if s.write_all(reply.bytes).await.is_err() {
                        return;
                    }
                    if reply.then == Then::Close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

fn upstream() -> Upstream {
    Upstream::new(&UpstreamConfig::default())
}

/// The hop's additions every test request gets.
struct Hop {
    client: HeaderValue,
    endpoint: Authority,
}

impl Hop {
    fn new() -> Self {
        Self {
            client: HeaderValue::from_static("10.0.0.1"),
            endpoint: Authority::from_static("10.0.0.9:80"),
        }
    }

    fn headers(&self) -> HopHeaders<'_> {
        HopHeaders {
            client: &self.client,
            endpoint: &self.endpoint,
            scheme: "http",
        }
    }
}

fn get(method: Method) -> Parts {
    Request::builder()
        .method(method)
        .uri("/x?y=1")
        .header(header::HOST, "example.com")
        .body(())
        .unwrap()
        .into_parts()
        .0
}

/// One request: status, headers and the whole body (or the body's error).
async fn send(
    addr: SocketAddr,
    method: Method,
) -> Result<(StatusCode, HeaderMap, Result<Bytes, io::Error>), UpstreamError> {
    let hop = Hop::new();
    let resp = upstream()
        .send_bodyless(addr, &get(method), &hop.headers())
        .await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map(|c| c.to_bytes());
    Ok((parts.status, parts.headers, body))
}

#[tokio::test]
async fn a_content_length_body_is_read_and_the_connection_reused() {
    let (addr, accepted) = backend(reply(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-empty:\r\nset-cookie: a\r\nset-cookie: b\r\n\r\nhello",
    ))
    .await;
    for _ in 0..3 {
        let (status, headers, body) = send(addr, Method::GET).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_LENGTH], "5");
        assert_eq!(headers["x-empty"], "");
        let cookies: Vec<_> = headers.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(cookies, ["a", "b"]);
        assert_eq!(body.unwrap(), "hello");
        assert_eq!(pool::idle_count(addr), 1);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection served all three"
    );
}

#[tokio::test]
async fn each_response_gets_its_own_fields_when_the_backend_changes_them() {
    // The second reply has the first one's names (the connection's remembered layout is
    // filled in), the third other names and chunked framing (it must be learned anew), the
    // fourth a repeated name (not remembered).
    let (addr, accepted) = backend_cycling(vec![
        reply(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-N: 1\r\n\r\nab"),
        reply(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nX-N: 22\r\n\r\ncde"),
        reply(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-N: 3\r\n\r\n1\r\nf\r\n0\r\n\r\n",
        ),
        reply(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nX-N: 4\r\nX-N: 5\r\n\r\ng"),
    ])
    .await;
    type Fields = &'static [(&'static str, &'static str)];
    let expected: [(u16, Fields, &str); 4] = [
        (200, &[("content-length", "2"), ("x-n", "1")], "ab"),
        (404, &[("content-length", "3"), ("x-n", "22")], "cde"),
        (200, &[("transfer-encoding", "chunked"), ("x-n", "3")], "f"),
        (
            200,
            &[("content-length", "1"), ("x-n", "4"), ("x-n", "5")],
            "g",
        ),
    ];
    for (status, fields, body) in expected.iter().cycle().take(8) {
        let (got_status, headers, got_body) = send(addr, Method::GET).await.unwrap();
        assert_eq!(got_status.as_u16(), *status);
        let got: Vec<_> = headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.to_str().unwrap()))
            .collect();
        assert_eq!(got, *fields);
        assert_eq!(got_body.unwrap(), *body);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection served all"
    );
}

#[tokio::test]
async fn a_chunked_body_is_decoded_across_every_split() {
    let (addr, accepted) = backend(Reply {
        trickle: true,
        ..reply(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
              5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\ntrailer-x: 1\r\n\r\n",
        )
    })
    .await;
    for _ in 0..2 {
        let (_, headers, body) = send(addr, Method::GET).await.unwrap();
        assert_eq!(body.unwrap(), "hello world");
        assert!(!headers.contains_key(header::CONTENT_LENGTH));
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "reused after the trailers"
    );
}

#[tokio::test]
async fn a_body_without_length_runs_to_the_close() {
    let (addr, _) = backend(reply_and_close(
        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil the end",
    ))
    .await;
    let (_, _, body) = send(addr, Method::GET).await.unwrap();
    assert_eq!(body.unwrap(), "until the end");
    assert_eq!(pool::idle_count(addr), 0);
}

#[tokio::test]
async fn head_204_and_304_responses_have_no_body() {
    // The Content-Length of a HEAD answer describes the GET's body, which is never sent.
    let (addr, accepted) = backend(reply(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n")).await;
    for _ in 0..2 {
        let (_, headers, body) = send(addr, Method::HEAD).await.unwrap();
        assert_eq!(headers[header::CONTENT_LENGTH], "10");
        assert_eq!(body.unwrap(), "");
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    for status in [
        &b"HTTP/1.1 204 No Content\r\n\r\n"[..],
        b"HTTP/1.1 304 Not Modified\r\n\r\n",
    ] {
        let bytes: &'static [u8] = status;
        let (addr, accepted) = backend(reply(bytes)).await;
        for _ in 0..2 {
            assert_eq!(send(addr, Method::GET).await.unwrap().2.unwrap(), "");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
}

#[tokio::test]
async fn interim_responses_are_passed_over() {
    let (addr, _) = backend(reply(
        b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>\r\n\r\n\
          HTTP/1.1 100 Continue\r\n\r\n\
          HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok",
    ))
    .await;
    let (status, headers, body) = send(addr, Method::GET).await.unwrap();
    assert_eq!(status, StatusCode::CREATED);
    assert!(!headers.contains_key("link"));
    assert_eq!(body.unwrap(), "ok");
}

#[tokio::test]
async fn connections_the_backend_will_close_are_not_pooled() {
    for bytes in [
        &b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"[..],
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 2\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    ] {
        let (addr, accepted) = backend(reply(bytes)).await;
        for _ in 0..2 {
            let (_, headers, body) = send(addr, Method::GET).await.unwrap();
            assert_eq!(body.unwrap(), "ok");
            if headers.contains_key(header::TRANSFER_ENCODING) {
                assert!(!headers.contains_key(header::CONTENT_LENGTH), "TE wins over CL");
            }
        }
        assert_eq!(pool::idle_count(addr), 0);
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "a fresh connection per request");
    }
    // HTTP/1.0 with keep-alive asked for is reused.
    let (addr, accepted) = backend(reply(
        b"HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok",
    ))
    .await;
    for _ in 0..2 {
        send(addr, Method::GET).await.unwrap().2.unwrap();
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_backend_closing_idle_connections_loses_no_request() {
    let (addr, accepted) = backend(reply_and_close(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ))
    .await;
    for i in 0..6 {
        // Half the time the close has been seen before the next checkout, half the time the
        // request meets it on the reused connection and goes out again.
        if i % 2 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (_, _, body) = send(addr, Method::GET).await.unwrap();
        assert_eq!(body.unwrap(), "ok");
    }
    assert!(accepted.load(Ordering::SeqCst) >= 6);
}

#[tokio::test]
async fn a_non_idempotent_request_is_not_sent_twice() {
    // The backend reads the request and closes without answering: a POST may have been acted
    // on, so the failure is the client's to see (a GET would be retried).
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            // Answers the first request, reads the second and closes without a word.
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                .await;
            let _ = s.read(&mut buf).await;
        }
    });
    send(addr, Method::GET).await.unwrap().2.unwrap();
    assert_eq!(pool::idle_count(addr), 1);
    let err = send(addr, Method::POST).await.unwrap_err();
    assert!(!err.is_connect(), "{err}");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the POST was not sent again"
    );
}

#[tokio::test]
async fn broken_responses_are_errors() {
    for bytes in [
        &b"NOT HTTP AT ALL\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nbad header\r\n\r\n",
    ] {
        let (addr, _) = backend(reply(bytes)).await;
        let err = send(addr, Method::GET).await.unwrap_err();
        assert!(!err.is_connect(), "{err}");
    }
    // Closed before any answer.
    let (addr, _) = backend(reply_and_close(b"")).await;
    assert!(send(addr, Method::GET).await.is_err());
}

#[tokio::test]
async fn broken_bodies_are_body_errors() {
    for bytes in [
        // Shorter than announced.
        &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc"[..],
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nokXX0\r\n\r\n",
    ] {
        let (addr, _) = backend(reply_and_close(bytes)).await;
        let (_, _, body) = send(addr, Method::GET).await.unwrap();
        assert!(body.is_err(), "{:?}", std::str::from_utf8(bytes));
        assert_eq!(pool::idle_count(addr), 0);
    }
}

#[tokio::test]
async fn an_endless_head_is_cut_off() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\n").await;
        let lines = b"x-filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(64);
        while s.write_all(&lines).await.is_ok() {}
    });
    let err = send(addr, Method::GET).await.unwrap_err();
    assert!(
        err.to_string().contains("64 KiB") || err.to_string().contains("too many"),
        "{err}"
    );
}

#[tokio::test]
async fn a_dead_pooled_connection_is_not_handed_out() {
    let (addr, _) = backend(reply(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")).await;
    let conn = DirectConnection::new(TcpStream::connect(addr).await.unwrap());
    pool::checkin(addr, conn, 8);
    assert!(pool::checkout(addr, Duration::from_secs(60)).is_some());

    // A peer that closes: readable with EOF, so not usable.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closing = listener.local_addr().unwrap();
    let mut conn = DirectConnection::new(TcpStream::connect(closing).await.unwrap());
    drop(listener.accept().await.unwrap());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while conn.idle_usable() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the close was never seen"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[test]
fn request_heads_are_origin_form_http11() {
    let hop = Hop::new();
    let head = encode_request_head(&get(Method::GET), &hop.headers(), RequestFraming::None);
    assert_eq!(
        String::from_utf8(head).unwrap(),
        "GET /x?y=1 HTTP/1.1\r\nhost: example.com\r\nx-forwarded-for: 10.0.0.1\r\n\
         x-forwarded-proto: http\r\n\r\n"
    );
    let head = String::from_utf8(encode_request_head(
        &get(Method::POST),
        &hop.headers(),
        RequestFraming::None,
    ))
    .unwrap();
    assert!(head.ends_with("content-length: 0\r\n\r\n"), "{head}");
}

/// Feeds `wire` to the body decoder in the pieces `cuts` makes (sorted offsets) and returns the
/// body and what was left after its end, or the decoder's error.
fn decode_in_pieces(
    mut framing: Framing,
    wire: &[u8],
    cuts: &[usize],
) -> Result<(Vec<u8>, Vec<u8>), io::Error> {
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut bounds: Vec<usize> = cuts.iter().map(|c| c.min(&wire.len()).to_owned()).collect();
    bounds.push(wire.len());
    bounds.sort_unstable();
    let mut fed = 0;
    for end in bounds {
        buf.extend_from_slice(&wire[fed..end.max(fed)]);
        fed = end.max(fed);
        loop {
            match decode(&mut framing, &mut buf)? {
                Some(Step::Data(d)) => body.extend_from_slice(&d),
                Some(Step::End) => {
                    let mut rest = buf.to_vec();
                    rest.extend_from_slice(&wire[fed..]);
                    return Ok((body, rest));
                }
                None => break,
            }
        }
    }
    Err(invalid("the body never ended"))
}

/// `body` chunked in pieces of `sizes` (cycled), with an extension on every other size line
/// and the trailers given.
fn chunked(body: &[u8], sizes: &[usize], trailers: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = body;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        let ext = if i % 2 == 1 { ";ext=1" } else { "" };
        out.extend_from_slice(format!("{n:X}{ext}\r\n").as_bytes());
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
        i += 1;
    }
    out.extend_from_slice(b"0\r\n");
    out.extend_from_slice(trailers);
    out.extend_from_slice(b"\r\n");
    out
}

const NEXT: &[u8] = b"HTTP/1.1 200 OK\r\n";

#[test]
fn the_body_decoder_meets_every_two_piece_split() {
    let body = b"hello chunked world";
    let mut wire = chunked(body, &[5, 1, 7], b"x-t: 1\r\nx-u: 2\r\n");
    wire.extend_from_slice(NEXT);
    for cut in 0..=wire.len() {
        let (got, rest) = decode_in_pieces(Framing::Chunked(Chunk::Size), &wire, &[cut]).unwrap();
        assert_eq!(
            (got.as_slice(), rest.as_slice()),
            (&body[..], NEXT),
            "cut at {cut}"
        );
    }
    let mut wire = body.to_vec();
    wire.extend_from_slice(NEXT);
    for cut in 0..=wire.len() {
        let (got, rest) =
            decode_in_pieces(Framing::Length(body.len() as u64), &wire, &[cut]).unwrap();
        assert_eq!(
            (got.as_slice(), rest.as_slice()),
            (&body[..], NEXT),
            "cut at {cut}"
        );
    }
}

proptest::proptest! {
    /// Any body, chunked any way, with or without trailers, cut anywhere: the same body comes
    /// out, and the next response's bytes are left untouched.
    #[test]
    fn chunked_bodies_decode_across_arbitrary_splits(
        body in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
        sizes in proptest::collection::vec(1usize..200, 1..8),
        trailers in proptest::bool::ANY,
        cuts in proptest::collection::vec(0usize..1200, 0..12),
    ) {
        let trailer: &[u8] = if trailers { b"x-checksum: 0\r\n" } else { b"" };
        let mut wire = chunked(&body, &sizes, trailer);
        wire.extend_from_slice(NEXT);
        let (got, rest) = decode_in_pieces(Framing::Chunked(Chunk::Size), &wire, &cuts).unwrap();
        proptest::prop_assert_eq!(got, body);
        proptest::prop_assert_eq!(rest, NEXT);
    }

    #[test]
    fn length_bodies_decode_across_arbitrary_splits(
        body in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
        cuts in proptest::collection::vec(0usize..700, 0..12),
    ) {
        let mut wire = body.clone();
        wire.extend_from_slice(NEXT);
        let (got, rest) = decode_in_pieces(Framing::Length(body.len() as u64), &wire, &cuts).unwrap();
        proptest::prop_assert_eq!(got, body);
        proptest::prop_assert_eq!(rest, NEXT);
    }

    /// Garbage never panics the decoder; it ends, errs or waits for more.
    #[test]
    fn the_chunked_decoder_never_panics(
        wire in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        cuts in proptest::collection::vec(0usize..300, 0..6),
    ) {
        let _ = decode_in_pieces(Framing::Chunked(Chunk::Size), &wire, &cuts);
    }
}

#[tokio::test]
async fn informational_responses_are_bounded() {
    let many: &'static [u8] = Box::leak(
        [
            b"HTTP/1.1 100 Continue\r\n\r\n".repeat(MAX_INTERIM + 1),
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec(),
        ]
        .concat()
        .into_boxed_slice(),
    );
    let (addr, _) = backend(reply(many)).await;
    let err = send(addr, Method::GET).await.unwrap_err();
    assert!(err.to_string().contains("informational"), "{err}");
}

#[tokio::test]
async fn a_request_body_is_streamed_in_its_framing() {
    // The backend reads the whole request (head and body up to an end it recognises), then
    // answers with what it read.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let done = seen.ends_with(b"0\r\n\r\n") || seen.ends_with(b"hello");
                    if done {
                        let _ = tx.send(std::mem::take(&mut seen));
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .await;
                    }
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
            });
        }
    });
    let hop = Hop::new();
    let mut parts = get(Method::POST);
    // A stale Content-Length in the map is not what frames the body.
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
    let resp = upstream()
        .send(
            addr,
            &parts,
            &hop.headers(),
            Some(http_body_util::Full::new(Bytes::from_static(b"hello"))),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let wire = String::from_utf8(rx.recv().await.unwrap()).unwrap();
    assert!(wire.contains("\r\ncontent-length: 5\r\n"), "{wire}");
    assert!(!wire.contains("99"), "{wire}");
    assert!(wire.ends_with("\r\n\r\nhello"), "{wire}");
    drop(resp);

    // No known size: chunked, one chunk per frame.
    let frames =
        ["ab", "cde"].map(|d| Ok::<_, io::Error>(Frame::data(Bytes::from_static(d.as_bytes()))));
    let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
    let resp = upstream()
        .send(addr, &get(Method::PUT), &hop.headers(), Some(body))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let wire = String::from_utf8(rx.recv().await.unwrap()).unwrap();
    assert!(
        wire.contains("\r\ntransfer-encoding: chunked\r\n"),
        "{wire}"
    );
    assert!(
        wire.ends_with("\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n"),
        "{wire}"
    );
}
