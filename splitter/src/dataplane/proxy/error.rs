//! Errors of the L7 proxy, one enum per layer: starting a listener, compiling a route, and
//! serving one request.

use std::{io, net::SocketAddr, time::Duration};

use http::StatusCode;

use splitter_plan::plan::l7::InvalidReason;

use super::request_body::BodyIdle;

/// Starting or running a listener.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("cannot start the proxy worker threads: {0}")]
    Workers(#[source] io::Error),
}

impl ProxyError {
    /// The host has no such address family (an IPv6 wildcard listener on a node booted without
    /// IPv6): the address can never be served here, so it is skipped rather than failed.
    pub fn is_unsupported_family(&self) -> bool {
        match self {
            Self::Bind { source, .. } => source.raw_os_error() == Some(libc::EAFNOSUPPORT),
            Self::Workers(_) => false,
        }
    }
}

/// Why one route of a table, or one request's rewrite, cannot be served. Matches and filters
/// arrive validated from the model, so only what depends on the endpoints or on the request is
/// left to fail here.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("endpoint {0} cannot be written as a URI authority")]
    Endpoint(SocketAddr),
    #[error("rewritten path is not a valid URI path: {0}")]
    RewrittenPath(String),
}

/// One exchange with a backend that did not produce a response head.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connect: {0}")]
    Connect(#[source] io::Error),
    #[error("connect: no answer within {0:?}")]
    ConnectTimeout(Duration),
    #[error("no answer within the read timeout")]
    ReadTimeout,
    #[error("request body: {0}")]
    RequestBody(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("I/O: {0}")]
    Io(#[source] io::Error),
    #[error("invalid response head: {0}")]
    Parse(#[source] httparse::Error),
    #[error("{0}")]
    Protocol(&'static str),
    #[error("the endpoint has {0} connections open, its limit")]
    EndpointFull(usize),
    #[error("HTTP/2: {0}")]
    Http2(#[source] hyper::Error),
}

impl UpstreamError {
    /// No connection was ever established: nothing of the request reached the backend.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            Self::Connect(_) | Self::ConnectTimeout(_) | Self::EndpointFull(_)
        )
    }
}

/// Why a request was answered by the proxy instead of a backend.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("bad request: {0}")]
    BadRequest(super::hygiene::BadRequest),
    #[error("no route matches")]
    NoRoute,
    #[error("the rule has no backend with a non-zero weight")]
    NoBackends,
    #[error("backend {backend} is invalid: {reason:?}")]
    InvalidBackend {
        backend: String,
        reason: InvalidReason,
    },
    #[error("backend {0} has no ready endpoints")]
    NoEndpoints(String),
    #[error("cannot rewrite the request: {0}")]
    Rewrite(#[source] RouteError),
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: UpstreamError,
    },
    #[error("upstream {endpoint} failed: {source}")]
    Upstream {
        endpoint: String,
        #[source]
        source: UpstreamError,
    },
    #[error("upstream {0} switched protocols without being asked to")]
    UnaskedUpgrade(String),
    #[error("upstream {0} did not answer in time")]
    Timeout(String),
}

impl ForwardError {
    /// The client's request body failed (an HTTP/2 stream it reset, a connection it closed):
    /// nobody waits for this answer.
    pub fn client_gone(&self) -> bool {
        matches!(
            self,
            Self::Upstream {
                source: UpstreamError::RequestBody(e),
                ..
            } if !e.is::<BodyIdle>()
        )
    }

    /// The client's request body stalled (HTTP/2; see `request_body`).
    fn body_idle(&self) -> bool {
        matches!(
            self,
            Self::Upstream {
                source: UpstreamError::RequestBody(e),
                ..
            } if e.is::<BodyIdle>()
        )
    }

    pub fn status(&self) -> StatusCode {
        if self.body_idle() {
            return StatusCode::REQUEST_TIMEOUT;
        }
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::NoBackends | Self::InvalidBackend { .. } | Self::Rewrite(_) => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            Self::NoEndpoints(_)
            | Self::Connect {
                source: UpstreamError::EndpointFull(_),
                ..
            } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Connect { .. } | Self::Upstream { .. } | Self::UnaskedUpgrade(_) => {
                StatusCode::BAD_GATEWAY
            }
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_address_family_is_unsupported() {
        let addr: SocketAddr = "[::]:80".parse().unwrap();
        let bind = |errno| ProxyError::Bind {
            addr,
            source: io::Error::from_raw_os_error(errno),
        };
        assert!(bind(libc::EAFNOSUPPORT).is_unsupported_family());
        assert!(!bind(libc::EADDRINUSE).is_unsupported_family());
        assert!(!bind(libc::EADDRNOTAVAIL).is_unsupported_family());
    }
}
