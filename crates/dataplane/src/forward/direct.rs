//! The direct exchange: a bodiless, idempotent request (most GETs) sent on a pooled
//! cleartext HTTP/1.1 connection by the request's own task, without hyper's client.
//!
//! Why by hand: hyper's client connection must be driven by a task of its own, and every
//! request crosses to it through a channel and comes back through another; on the load
//! benchmark's profile that machinery and hyper's client codec were a fifth of the data
//! plane's user time. Here the request's task writes the head and reads the response
//! itself, and the response body reads from the socket as the client side polls it. The
//! head is parsed by `httparse`; framing (`h1.rs`) follows RFC 9112.
//!
//! Requests with a body, or whose method is not idempotent, still go through hyper
//! (`pool.rs`): streaming a body while a response may already be arriving, and knowing
//! whether a request that failed was sent at all, are what hyper's dispatcher is for.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker, ready};
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::h1::{self, Chunked, Decoded, Framing, Parsed};
use super::pool::Http1Pool;
use crate::body::ProxyBody;
use crate::error::{BoxError, ProxyError};

/// How much room a read asks for.
const READ_SIZE: usize = 8 * 1024;

/// Whether `request` can take the direct exchange: no body, nothing that would give it one,
/// and a method that may be sent again if a pooled connection turns out to have closed.
pub(super) fn eligible(request: &Request<ProxyBody>) -> bool {
    matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE | Method::TRACE
    ) && request.body().is_end_stream()
        && !request.headers().contains_key(header::TRANSFER_ENCODING)
        && !request.headers().contains_key(header::CONTENT_LENGTH)
}

/// A connection of the direct exchange, with the bytes read from it and not yet used.
pub(super) struct Connection {
    io: TcpStream,
    buffer: BytesMut,
    /// When it was last handed back to the pool.
    pub(super) since: Instant,
}

/// Why an exchange failed; `stale` when a reused connection was found closed before any
/// answer came, so the request may go once more on a new one.
pub(super) struct Failure {
    pub(super) error: ProxyError,
    pub(super) stale: bool,
}

impl Connection {
    pub(super) fn new(io: TcpStream) -> Self {
        Self {
            io,
            buffer: BytesMut::new(),
            since: Instant::now(),
        }
    }

    /// Whether an idle connection still looks usable: the upstream has neither closed it
    /// nor sent anything unasked. Costs no system call unless the socket has become
    /// readable since the last response was read.
    pub(super) fn looks_open(&self) -> bool {
        if !self.buffer.is_empty() {
            return false;
        }
        let mut context = Context::from_waker(Waker::noop());
        match self.io.poll_read_ready(&mut context) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable: an end of stream, unasked bytes, or readiness left over from the
            // last read. Only the last may stay.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            }
        }
    }

    /// Writes a request head and reads the response head; interim (1xx) responses are
    /// skipped.
    pub(super) async fn round_trip(
        &mut self,
        head: &[u8],
        method: &Method,
        reused: bool,
        endpoint: SocketAddr,
    ) -> Result<h1::Head, Failure> {
        let failed = |error: BoxError, stale: bool| Failure {
            error: ProxyError::Upstream {
                endpoint,
                source: error,
            },
            stale,
        };
        if let Err(error) = self.io.write_all(head).await {
            return Err(failed(error.into(), reused));
        }
        let mut answered = false;
        loop {
            if !self.buffer.is_empty() {
                answered = true;
                match h1::parse_response(&mut self.buffer, method) {
                    Ok(Parsed::Complete(head)) => return Ok(head),
                    Ok(Parsed::Informational(length)) => {
                        self.buffer.advance(length);
                        continue;
                    }
                    Ok(Parsed::Partial) => {}
                    Err(error) => return Err(failed(error.into(), false)),
                }
            }
            self.buffer.reserve(READ_SIZE);
            match self.io.read_buf(&mut self.buffer).await {
                Ok(0) => {
                    let closed = "the upstream closed the connection before the response head";
                    return Err(failed(closed.into(), reused && !answered));
                }
                Ok(_) => {}
                Err(error) => {
                    let stale = reused
                        && !answered
                        && matches!(
                            error.kind(),
                            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                        );
                    return Err(failed(error.into(), stale));
                }
            }
        }
    }
}

/// A response body read from a direct connection as it is polled; the connection goes back
/// to its pool once the body has ended cleanly, and is closed if the body is dropped before.
pub struct DirectBody {
    /// `None` once the body has ended or failed.
    connection: Option<Connection>,
    state: State,
    keep_alive: bool,
    pool: Arc<Http1Pool>,
    endpoint: SocketAddr,
}

enum State {
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

impl DirectBody {
    /// The body that follows `head` on `connection`. A body that is already complete (none,
    /// or all of it in the buffer) is handed back as soon as it is read.
    pub(super) fn new(
        connection: Connection,
        head: &h1::Head,
        pool: Arc<Http1Pool>,
        endpoint: SocketAddr,
    ) -> Self {
        let state = match head.framing {
            Framing::Empty => State::Length(0),
            Framing::Length(length) => State::Length(length),
            Framing::Chunked => State::Chunked(Chunked::default()),
            Framing::UntilClose => State::UntilClose,
        };
        let mut body = Self {
            connection: Some(connection),
            state,
            keep_alive: head.keep_alive,
            pool,
            endpoint,
        };
        if matches!(body.state, State::Length(0)) {
            body.finish();
        }
        body
    }

    /// The body has ended: the connection goes back to the pool if it can carry another
    /// request (nothing unasked in its buffer).
    fn finish(&mut self) {
        if let Some(connection) = self.connection.take()
            && self.keep_alive
            && connection.buffer.is_empty()
        {
            self.pool.checkin_direct(self.endpoint, connection);
        }
    }

    fn fail(&mut self, error: impl Into<BoxError>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.connection = None;
        Poll::Ready(Some(Err(error.into())))
    }
}

impl Body for DirectBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(connection) = this.connection.as_mut() else {
                return Poll::Ready(None);
            };
            let buffer = &mut connection.buffer;
            match &mut this.state {
                State::Length(left) if !buffer.is_empty() => {
                    let take = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(buffer.len());
                    let data = h1::take(buffer, take);
                    *left -= take as u64;
                    if *left == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::UntilClose if !buffer.is_empty() => {
                    let data = h1::take(buffer, buffer.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Chunked(decoder) => match decoder.decode(buffer) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(Decoded::Trailers(trailers)) => {
                        this.finish();
                        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
                    }
                    Ok(Decoded::End) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => {}
                    Err(error) => return this.fail(error),
                },
                State::Length(_) | State::UntilClose => {}
            }
            // The buffer holds nothing usable: read more.
            let connection = this.connection.as_mut().map(|c| (&mut c.io, &mut c.buffer));
            let Some((io, buffer)) = connection else {
                return Poll::Ready(None);
            };
            buffer.reserve(READ_SIZE);
            match ready!(tokio_util::io::poll_read_buf(Pin::new(io), cx, buffer)) {
                Ok(0) if matches!(this.state, State::UntilClose) => {
                    this.connection = None;
                    return Poll::Ready(None);
                }
                Ok(0) => {
                    return this
                        .fail("the upstream closed the connection before the end of the body");
                }
                Ok(_) => {}
                Err(error) => return this.fail(error),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.connection.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.connection, &self.state) {
            (None, _) => SizeHint::with_exact(0),
            (Some(_), State::Length(left)) => SizeHint::with_exact(*left),
            (Some(_), _) => SizeHint::default(),
        }
    }
}

/// The response for a head read on `connection`, whose body reads the rest.
pub(super) fn response(
    connection: Connection,
    head: h1::Head,
    pool: Arc<Http1Pool>,
    endpoint: SocketAddr,
) -> Response<DirectBody> {
    let body = DirectBody::new(connection, &head, pool, endpoint);
    let mut response = Response::new(body);
    *response.status_mut() = head.status;
    *response.version_mut() = head.version;
    *response.headers_mut() = head.headers;
    response
}
