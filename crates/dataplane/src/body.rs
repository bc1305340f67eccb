//! The body type of the request path, and bounded buffering for request mirroring.
//!
//! Requests and responses flow through as streams ([`ProxyBody`]); only a request that is
//! mirrored is buffered, and only up to a limit, so that one copy can go to each mirror.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

use crate::error::BoxError;

/// The body of every request and response the data plane sends.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body made of one chunk.
pub fn full(data: impl Into<Bytes>) -> ProxyBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// Boxes any body whose errors can be boxed (hyper's `Incoming`, mostly).
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// What the request path learns from a request body as it streams to the upstream.
#[derive(Debug, Default)]
pub struct Watched {
    /// Set when the body failed. A request whose body broke (a bad chunk size, a client that
    /// went away) is the client's doing, even though the upstream client is the one that
    /// reports it; the flag lets the request path answer 400 instead of blaming the backend.
    pub failed: AtomicBool,
    /// Bytes of data so far, for the access log.
    pub received: AtomicU64,
}

/// Reports into `watched` what `body` does.
pub fn watched(body: ProxyBody, watched: Arc<Watched>) -> ProxyBody {
    let frames = Arc::clone(&watched);
    body.map_err(move |error| {
        watched.failed.store(true, Ordering::Relaxed);
        error
    })
    .map_frame(move |frame| {
        if let Some(data) = frame.data_ref() {
            frames
                .received
                .fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        frame
    })
    .boxed_unsync()
}

/// Calls `done` with the bytes of data `body` carried once it has ended, or once it is
/// dropped before its end (the client went away): the access log line and the span of a
/// request are finished when its response has been sent, not when its headers were.
pub fn on_end<F>(body: ProxyBody, done: F) -> ProxyBody
where
    F: FnOnce(u64) + Send + Unpin + 'static,
{
    Observed {
        inner: body,
        sent: 0,
        done: Some(done),
    }
    .boxed_unsync()
}

struct Observed<F: FnOnce(u64)> {
    inner: ProxyBody,
    sent: u64,
    done: Option<F>,
}

impl<F: FnOnce(u64)> Observed<F> {
    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            done(self.sent);
        }
    }
}

impl<F: FnOnce(u64) + Unpin> Body for Observed<F> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.sent += data.len() as u64;
                }
            }
            Poll::Ready(None | Some(Err(_))) => self.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<F: FnOnce(u64)> Drop for Observed<F> {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The outcome of [`buffer_bounded`].
pub enum Buffered {
    /// The whole body fit in the limit.
    Complete {
        /// Every data frame, concatenated.
        data: Bytes,
        /// Trailers, if the body had any.
        trailers: Option<HeaderMap>,
    },
    /// The body is larger than the limit; this body replays what was read, then the rest.
    TooLarge(ProxyBody),
}

/// Reads `body` until it ends or more than `limit` bytes have been read. Never holds more
/// than `limit` plus one frame in memory.
pub async fn buffer_bounded(mut body: ProxyBody, limit: usize) -> Result<Buffered, BoxError> {
    let mut data = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(chunk) => {
                data.extend_from_slice(&chunk);
                if data.len() > limit {
                    let rest = Prefixed {
                        prefix: Some(data.freeze()),
                        rest: body,
                    };
                    return Ok(Buffered::TooLarge(rest.boxed_unsync()));
                }
            }
            Err(frame) => {
                // Trailers end the body.
                return Ok(Buffered::Complete {
                    data: data.freeze(),
                    trailers: frame.into_trailers().ok(),
                });
            }
        }
    }
    Ok(Buffered::Complete {
        data: data.freeze(),
        trailers: None,
    })
}

/// A body that sends `data` and then `trailers`, to replay a buffered request.
pub fn replay(data: Bytes, trailers: Option<HeaderMap>) -> ProxyBody {
    match trailers {
        None => full(data),
        Some(trailers) => Full::new(data)
            .map_err(|never| match never {})
            .with_trailers(std::future::ready(Some(Ok(trailers))))
            .boxed_unsync(),
    }
}

/// Already-read bytes followed by the unread rest of a body.
struct Prefixed {
    prefix: Option<Bytes>,
    rest: ProxyBody,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.rest.size_hint();
        let prefix = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        hint.set_lower(hint.lower() + prefix);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + prefix);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of two frames, to exercise the frame loop.
    fn two_frames(first: &'static str, second: &'static str) -> ProxyBody {
        Prefixed {
            prefix: Some(Bytes::from_static(first.as_bytes())),
            rest: full(second),
        }
        .boxed_unsync()
    }

    #[tokio::test]
    async fn small_body_is_buffered_whole() {
        let body = two_frames("hel", "lo");
        let Ok(Buffered::Complete { data, trailers }) = buffer_bounded(body, 16).await else {
            panic!("expected a complete body");
        };
        assert_eq!(&data[..], b"hello");
        assert!(trailers.is_none());
    }

    #[tokio::test]
    async fn large_body_is_replayed_in_full() {
        let body = two_frames("012345", "6789abcdef");
        let Ok(Buffered::TooLarge(body)) = buffer_bounded(body, 4).await else {
            panic!("expected a body over the limit");
        };
        let collected = body.collect().await.map(|c| c.to_bytes());
        assert_eq!(collected.ok().as_deref(), Some(&b"0123456789abcdef"[..]));
    }

    #[tokio::test]
    async fn trailers_survive_replay() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
        let body = replay(Bytes::from_static(b"x"), Some(trailers));
        let Ok(Buffered::Complete { data, trailers }) = buffer_bounded(body, 16).await else {
            panic!("expected a complete body");
        };
        assert_eq!(&data[..], b"x");
        assert!(trailers.is_some_and(|t| t.contains_key("grpc-status")));
    }
}
