//! HTTP/1.1 protocol upgrades (WebSocket and the like): the request's `Upgrade` is passed to the
//! backend, and once it answers 101 the two connections are spliced byte for byte.

use http::{HeaderMap, HeaderValue, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;

use super::{direct::DirectConnection, upstream::list_has};

/// The protocol the client asks to switch to: an `Upgrade` header and the `upgrade` token in
/// `Connection` (RFC 9110 section 7.8). HTTP/2 has no such mechanism here.
pub fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    if !list_has(headers, &header::CONNECTION, "upgrade") {
        return None;
    }
    // An h2c upgrade would hand the whole connection to one backend and bypass routing for
    // every later request on it; such clients get plain HTTP/1.1 instead (RFC 9113 deprecates
    // the mechanism), and h2c with prior knowledge is served natively.
    let protocol = headers.get(header::UPGRADE)?;
    (!list_has(headers, &header::UPGRADE, "h2c")).then(|| protocol.clone())
}

/// Puts back the two hop-by-hop headers an upgrade needs after the generic strip removed them.
pub fn restore_upgrade_headers(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Copies bytes both ways between the upgraded client connection and the backend's (first
/// what was read from the backend past its 101 head) until one side closes; runs on its own
/// task so the response can be returned first.
pub fn splice(client: OnUpgrade, backend: DirectConnection) {
    tokio::spawn(async move {
        let client = match client.await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                return;
            }
        };
        let (mut backend, early) = backend.into_parts();
        let mut client = TokioIo::new(client);
        if !early.is_empty() && client.write_all(&early).await.is_err() {
            return;
        }
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut backend).await {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_needs_both_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(requested_upgrade(&h).is_none());
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert_eq!(requested_upgrade(&h).unwrap(), "websocket");
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(
            requested_upgrade(&h).is_none(),
            "h2c upgrades are not passed on"
        );
        h.remove(header::UPGRADE);
        assert!(requested_upgrade(&h).is_none());
    }
}
