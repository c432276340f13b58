//! Reading a TLS ClientHello without terminating TLS: the bytes are kept to be forwarded, and
//! the server name (SNI) is read by rustls's `Acceptor`, which parses the handshake (records
//! split over TCP segments, a hello split over records) without answering anything.

use std::{io, time::Duration};

use rustls::server::Acceptor;
use tokio::io::{AsyncRead, AsyncReadExt};

/// The most a client may send before its ClientHello is complete. A ClientHello is a few
/// hundred bytes, about 2 KiB with a post-quantum key share and large extensions; 16 KiB (one
/// full TLS record) is far above what real clients send and bounds what one connection makes
/// the proxy hold before it has a route.
pub const MAX_CLIENT_HELLO: usize = 16 * 1024;

/// A complete ClientHello and everything read with it.
#[derive(Debug)]
pub struct ClientHello {
    /// Every byte read from the client so far, to be written to the backend first.
    pub bytes: Vec<u8>,
    /// The SNI server name, lower-case; `None` when the client sent none.
    pub server_name: Option<String>,
}

/// Why no ClientHello could be read; the connection is closed.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    #[error("no complete ClientHello within {0:?}")]
    Timeout(Duration),
    #[error("the client closed the connection before its ClientHello was complete")]
    Closed,
    #[error("no complete ClientHello in the first {0} bytes")]
    TooLarge(usize),
    #[error("not a TLS ClientHello: {0}")]
    NotTls(String),
    #[error("reading the ClientHello: {0}")]
    Io(#[from] io::Error),
}

/// Reads from `io` until a complete ClientHello has arrived, at most `max` bytes and for at
/// most `timeout`.
pub async fn read_client_hello<S: AsyncRead + Unpin>(
    io: &mut S,
    max: usize,
    timeout: Duration,
) -> Result<ClientHello, HelloError> {
    tokio::time::timeout(timeout, read_until_complete(io, max))
        .await
        .map_err(|_| HelloError::Timeout(timeout))?
}

async fn read_until_complete<S: AsyncRead + Unpin>(
    io: &mut S,
    max: usize,
) -> Result<ClientHello, HelloError> {
    let mut acceptor = Acceptor::default();
    let mut bytes = Vec::with_capacity(2048);
    let mut chunk = vec![0u8; 4096];
    loop {
        let room = max.saturating_sub(bytes.len());
        if room == 0 {
            return Err(HelloError::TooLarge(max));
        }
        let n = io.read(&mut chunk[..room.min(4096)]).await?;
        if n == 0 {
            return Err(HelloError::Closed);
        }
        bytes.extend_from_slice(&chunk[..n]);
        if let Some(server_name) = feed(&mut acceptor, &chunk[..n])? {
            return Ok(ClientHello { bytes, server_name });
        }
    }
}

/// Gives `fresh` bytes to the acceptor; `Some(server name)` once the ClientHello is complete.
fn feed(acceptor: &mut Acceptor, mut fresh: &[u8]) -> Result<Option<Option<String>>, HelloError> {
    while !fresh.is_empty() {
        match acceptor.read_tls(&mut fresh) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => return Err(HelloError::NotTls(e.to_string())),
        }
    }
    match acceptor.accept() {
        Ok(None) => Ok(None),
        Ok(Some(accepted)) => Ok(Some(
            accepted
                .client_hello()
                .server_name()
                .map(str::to_ascii_lowercase),
        )),
        Err((e, _alert)) => Err(HelloError::NotTls(e.to_string())),
    }
}

/// A fatal `unrecognized_name` alert (RFC 6066 section 3) in a TLS 1.2 record, which TLS 1.2
/// and 1.3 clients both read before any ServerHello: no route takes the name the client asked
/// for.
pub const UNRECOGNIZED_NAME_ALERT: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112];

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// A real ClientHello from rustls's client for `name`.
    fn client_hello(name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(
            Arc::new(config),
            rustls::pki_types::ServerName::try_from(name.to_string()).unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    async fn read(bytes: Vec<u8>, pieces: usize) -> Result<ClientHello, HelloError> {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let step = bytes.len().div_ceil(pieces.max(1));
            for piece in bytes.chunks(step) {
                client.write_all(piece).await.unwrap();
                client.flush().await.unwrap();
                if pieces > 50 {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            // Dropped here: the reader sees the end of the stream.
        });
        let out = read_client_hello(&mut server, MAX_CLIENT_HELLO, Duration::from_secs(2)).await;
        drop(writer.await);
        out
    }

    #[tokio::test]
    async fn the_server_name_of_a_hello_in_one_piece_or_byte_by_byte() {
        let hello = client_hello("Abc.Example.com");
        for pieces in [1, 3, hello.len()] {
            let got = read(hello.clone(), pieces).await.unwrap();
            assert_eq!(got.server_name.as_deref(), Some("abc.example.com"));
            assert_eq!(got.bytes, hello, "every byte is kept for the backend");
        }
    }

    #[tokio::test]
    async fn garbage_an_http_request_and_a_truncated_hello_are_refused() {
        let e = read(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), 1).await;
        assert!(matches!(e, Err(HelloError::NotTls(_))), "{e:?}");
        let mut hello = client_hello("a.example.com");
        hello.truncate(40);
        // The writer closes after the truncated hello.
        assert!(matches!(read(hello, 1).await, Err(HelloError::Closed)));
    }

    #[tokio::test]
    async fn a_client_that_sends_nothing_times_out() {
        let (_client, mut server) = tokio::io::duplex(1024);
        let e = read_client_hello(&mut server, MAX_CLIENT_HELLO, Duration::from_millis(50)).await;
        assert!(matches!(e, Err(HelloError::Timeout(_))), "{e:?}");
    }

    #[tokio::test]
    async fn a_hello_larger_than_the_limit_is_refused() {
        let hello = client_hello("a.example.com");
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        // A record header announcing 16 KiB, then its start: never complete within 100 bytes.
        let mut big = hello[..5].to_vec();
        big[3] = 0x40;
        big[4] = 0x00;
        big.extend(std::iter::repeat_n(0u8, 200));
        use tokio::io::AsyncWriteExt;
        client.write_all(&big).await.unwrap();
        let e = read_client_hello(&mut server, 100, Duration::from_secs(1)).await;
        assert!(matches!(e, Err(HelloError::TooLarge(100))), "{e:?}");
    }

    proptest::proptest! {
        /// Whatever a client sends, in whatever pieces, the reader answers without panicking:
        /// a real hello with bytes flipped, or bytes at random.
        #[test]
        fn any_bytes_in_any_pieces_never_panic(
            flips in proptest::collection::vec((0usize..2048, proptest::num::u8::ANY), 0..8),
            noise in proptest::collection::vec(proptest::num::u8::ANY, 0..2048),
            cut in 1usize..64,
            real in proptest::bool::ANY,
        ) {
            let mut bytes = if real { client_hello("a.example.com") } else { noise };
            for (at, x) in flips {
                if !bytes.is_empty() {
                    let i = at % bytes.len();
                    bytes[i] ^= x;
                }
            }
            let mut acceptor = Acceptor::default();
            for piece in bytes.chunks(cut) {
                match feed(&mut acceptor, piece) {
                    Ok(None) => {}
                    Ok(Some(_)) | Err(_) => break,
                }
            }
        }
    }
}
