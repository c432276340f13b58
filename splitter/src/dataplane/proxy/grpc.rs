//! The proxy's own answers to gRPC calls. A gRPC client reads the outcome of a call from
//! `grpc-status`, not from the HTTP status, so a call the proxy cannot forward is answered the
//! way gRPC servers answer errors: a "trailers-only" response (HTTP 200, `content-type:
//! application/grpc`, `grpc-status` and `grpc-message`, no body; on HTTP/2 one HEADERS frame
//! that ends the stream). Codes as the GRPCRoute spec asks: UNAVAILABLE for a share that has no
//! backend to go to (invalid backendRef, no ready endpoint, connection refused), UNIMPLEMENTED
//! for a call no rule matches (the code a gRPC client also derives from HTTP 404).

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, header};

use super::{ForwardError, body::ProxyBody, error::UpstreamError};

/// gRPC status codes (grpc/doc/statuscodes.md) the proxy answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    Cancelled = 1,
    DeadlineExceeded = 4,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
}

/// Whether a request is a gRPC call (`content-type: application/grpc`, `+proto` and the like).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.get(..16)
                .is_some_and(|p| p.eq_ignore_ascii_case("application/grpc"))
                && matches!(v.as_bytes().get(16), None | Some(b'+' | b';'))
        })
}

/// The client's deadline for the call: `grpc-timeout` (PROTOCOL-HTTP2: 1 to 8 digits and a
/// unit, `H` hours, `M` minutes, `S` seconds, `m` milliseconds, `u` microseconds, `n`
/// nanoseconds). `None` when absent or malformed (a malformed one is the backend's to refuse).
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = v.split_at(v.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The gRPC status of a call the proxy could not forward, and its message. The message is
/// the reason only: endpoint addresses and plan details stay in the logs, as with HTTP.
pub fn status_of(err: &ForwardError) -> (Code, &'static str) {
    match err {
        ForwardError::NoRoute => (Code::Unimplemented, "no route matches the method"),
        ForwardError::NoBackends => (Code::Unavailable, "the rule has no backend"),
        ForwardError::InvalidBackend { .. } => (Code::Unavailable, "the backend is invalid"),
        ForwardError::NoEndpoints(_) => (Code::Unavailable, "no healthy backend"),
        ForwardError::Connect { .. } => (Code::Unavailable, "cannot connect to the backend"),
        ForwardError::Upstream {
            source: UpstreamError::RequestBody(_),
            ..
        } => (Code::Cancelled, "the request stream failed"),
        ForwardError::Upstream { .. } => (Code::Unavailable, "the backend failed"),
        ForwardError::Timeout(_) => (Code::DeadlineExceeded, "the backend did not answer in time"),
        ForwardError::BadRequest(_) => (Code::Internal, "malformed request"),
        ForwardError::Rewrite(_) | ForwardError::UnaskedUpgrade(_) => {
            (Code::Internal, "the request cannot be forwarded")
        }
    }
}

/// A trailers-only response for `err`.
pub fn error_response(err: &ForwardError) -> Response<ProxyBody> {
    let (code, message) = status_of(err);
    let mut resp = Response::new(ProxyBody::local(Bytes::new()));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from(code as u32));
    // Plain ASCII without `%`: valid as it is in grpc-message's percent-encoding.
    h.insert("grpc-message", HeaderValue::from_static(message));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types() {
        let of = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            is_grpc(&h)
        };
        assert!(of("application/grpc"));
        assert!(of("application/grpc+proto"));
        assert!(of("Application/GRPC;charset=utf-8"));
        assert!(!of("application/grpc-web"));
        assert!(!of("application/json"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn grpc_timeouts() {
        let of = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("grpc-timeout", HeaderValue::from_str(v).unwrap());
            timeout(&h)
        };
        assert_eq!(of("200m"), Some(Duration::from_millis(200)));
        assert_eq!(of("3S"), Some(Duration::from_secs(3)));
        assert_eq!(of("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(of("5n"), Some(Duration::from_nanos(5)));
        assert_eq!(of("123456789S"), None, "more than 8 digits");
        assert_eq!(of("m"), None);
        assert_eq!(of("10x"), None);
        assert_eq!(of("-1S"), None);
        assert_eq!(timeout(&HeaderMap::new()), None);
    }

    #[test]
    fn a_call_without_route_is_unimplemented_and_without_backend_unavailable() {
        let resp = error_response(&ForwardError::NoRoute);
        assert_eq!(resp.status(), http::StatusCode::OK);
        assert_eq!(resp.headers()["grpc-status"], "12");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/grpc");
        let resp = error_response(&ForwardError::NoEndpoints("ns/a:80".into()));
        assert_eq!(resp.headers()["grpc-status"], "14");
    }
}
