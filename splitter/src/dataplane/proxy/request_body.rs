//! An HTTP/2 request body that gives up when its client stops sending. HTTP/1.1 bodies are
//! watched through the connection's socket (`idle`); an HTTP/2 connection carries many streams,
//! and one stalled upload stays invisible while the others move, so each stream's body keeps
//! its own timer. On a rule with RequestMirror filters the body also hands each chunk to the
//! copies' tee (`mirror::BodyTee`), which sends them when the body ends.

use std::{
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error a stalled body ends with: the request is answered 408.
#[derive(Debug, thiserror::Error)]
#[error("no request body data for {0:?}")]
pub struct BodyIdle(pub Duration);

/// `inner`, failing with [`BodyIdle`] once no frame arrived for `timeout` while one was awaited
/// (`None`: no timer, the body as it is).
pub struct IdleTimedBody<B> {
    inner: B,
    timeout: Option<Duration>,
    /// Armed when a poll waits, moved forward by every frame.
    timer: Option<Pin<Box<Sleep>>>,
    /// RequestMirror copies waiting for this body (`None` on almost every request).
    tee: Option<Box<super::mirror::BodyTee>>,
}

impl<B> IdleTimedBody<B> {
    pub fn new(inner: B, timeout: Option<Duration>) -> Self {
        Self {
            inner,
            timeout,
            timer: None,
            tee: None,
        }
    }

    /// Has `tee` see every data chunk and send its copies when the body ends.
    pub fn with_tee(mut self, tee: Option<Box<super::mirror::BodyTee>>) -> Self {
        self.tee = tee;
        self
    }
}

impl<B> Body for IdleTimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                // A frame (or the end) came: the next wait starts its own count.
                this.timer = None;
                if let Some(tee) = &mut this.tee {
                    match &frame {
                        Some(Ok(f)) => {
                            if let Some(data) = f.data_ref() {
                                tee.data(data);
                            }
                            if this.inner.is_end_stream()
                                && let Some(tee) = this.tee.take()
                            {
                                tee.finish();
                            }
                        }
                        None => {
                            if let Some(tee) = this.tee.take() {
                                tee.finish();
                            }
                        }
                        // A failed body is not mirrored (the tee's drop counts it).
                        Some(Err(_)) => this.tee = None,
                    }
                }
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let Some(timeout) = this.timeout else {
                    return Poll::Pending;
                };
                let timer = this.timer.get_or_insert_with(|| {
                    Box::pin(tokio::time::sleep_until(Instant::now() + timeout))
                });
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyIdle(timeout))))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, StreamBody};

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stops_fails_after_the_timeout_and_a_moving_one_does_not() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
        let stream = tokio_stream_from(rx);
        let mut body = IdleTimedBody::new(StreamBody::new(stream), Some(Duration::from_secs(1)));
        // Frames every 0.9 s keep it alive.
        for _ in 0..3 {
            let tx = tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(900)).await;
                let _ = tx.send(Ok(Frame::data(Bytes::from_static(b"x")))).await;
            });
            let f = body.frame().await.expect("a frame").expect("not idle");
            assert!(f.is_data());
        }
        // Then nothing: the error comes one timeout later.
        let started = Instant::now();
        let err = body.frame().await.expect("an error").expect_err("idle");
        assert!(err.is::<BodyIdle>(), "{err}");
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        drop(tx);
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl futures::Stream<Item = T> + Unpin {
        Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
