//! The body of a response the proxy sends: a backend's, streamed, or a small one of its own;
//! with the access log on, it carries the request's log line, written when the body ends.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;

use super::{access::AccessEntry, direct::DirectBody};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug)]
pub struct ProxyBody {
    inner: Inner,
    /// The request's access log line, when the log is on.
    log: Option<Box<AccessEntry>>,
}

#[derive(Debug)]
enum Inner {
    /// Read straight from a backend connection by the client connection's task (`direct`).
    Direct(DirectBody),
    /// Written by the proxy itself: errors, redirects.
    Local(Full<Bytes>),
    /// An HTTP/2 backend's (`h2c`), streamed frame by frame, trailers included.
    Http2(hyper::body::Incoming),
}

impl ProxyBody {
    pub fn local(bytes: Bytes) -> Self {
        Self {
            inner: Inner::Local(Full::new(bytes)),
            log: None,
        }
    }

    pub fn http2(body: hyper::body::Incoming) -> Self {
        Self {
            inner: Inner::Http2(body),
            log: None,
        }
    }

    pub fn direct(body: DirectBody) -> Self {
        Self {
            inner: Inner::Direct(body),
            log: None,
        }
    }

    /// Writes `entry` once the body has been sent whole, has failed, or was dropped.
    pub(crate) fn log_to(&mut self, mut entry: Box<AccessEntry>) {
        // hyper does not poll a body that says it has ended: an empty one is complete now.
        if self.is_end_stream() {
            entry.body_complete();
        }
        self.log = Some(entry);
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.inner {
            Inner::Direct(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Inner::Local(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            Inner::Http2(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        };
        if let (Some(log), Poll::Ready(frame)) = (this.log.as_deref_mut(), &polled) {
            match frame {
                Some(Ok(f)) => {
                    log.bytes += f.data_ref().map_or(0, |d| d.len() as u64);
                    // The last frame of a body of known length: hyper asks for no more.
                    let ended = match &this.inner {
                        Inner::Direct(b) => b.is_end_stream(),
                        Inner::Local(b) => b.is_end_stream(),
                        Inner::Http2(b) => b.is_end_stream(),
                    };
                    if ended {
                        log.body_complete();
                    }
                }
                Some(Err(_)) => log.body_failed(),
                None => log.body_complete(),
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Direct(b) => b.is_end_stream(),
            Inner::Local(b) => b.is_end_stream(),
            Inner::Http2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Direct(b) => b.size_hint(),
            Inner::Local(b) => b.size_hint(),
            Inner::Http2(b) => b.size_hint(),
        }
    }
}
