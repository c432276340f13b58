//! The body of a response the proxy sends: a backend's, streamed, or a small one of its own.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;

use super::direct::DirectBody;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
pub enum ProxyBody {
    /// From a hyper client connection (requests with a body, upgrades).
    Hyper(Incoming),
    /// Read straight from a backend connection by the client connection's task (`direct`).
    Direct(DirectBody),
    /// Written by the proxy itself: errors, redirects.
    Local(Full<Bytes>),
}

impl ProxyBody {
    pub fn local(bytes: Bytes) -> Self {
        Self::Local(Full::new(bytes))
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::Direct(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Self::Local(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(b) => b.is_end_stream(),
            Self::Direct(b) => b.is_end_stream(),
            Self::Local(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Hyper(b) => b.size_hint(),
            Self::Direct(b) => b.size_hint(),
            Self::Local(b) => b.size_hint(),
        }
    }
}
