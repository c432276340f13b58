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
