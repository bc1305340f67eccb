//! A gRPC-shaped upstream and client: HTTP/2 only, length-prefixed messages, and the status in
//! trailers. Not a gRPC library, only the framing the gateway must carry and produce.
//!
//! The upstream answers `…/Fail` with a Trailers-Only `NOT_FOUND`, and every other method with
//! one message (its own name) followed by trailers: `grpc-status: 0`, `grpc-message`, and
//! `x-served-by` naming it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use http_body::Body;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use ir::{Backend, BackendProtocol};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

use super::{PATIENCE, backend};

/// The content type of the calls the client makes.
pub const GRPC: &str = "application/grpc+proto";

type GrpcBody = UnsyncBoxBody<Bytes, Infallible>;

// === upstream ===

/// An h2c server that answers like a gRPC service.
pub struct GrpcUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its name, sent back in the message and in `x-served-by`.
    pub name: String,
}

impl GrpcUpstream {
    /// Starts an upstream that answers at once.
    pub async fn start(name: &str) -> Self {
        Self::slow(name, Duration::ZERO).await
    }

    /// Starts an upstream that waits `delay` before sending response headers.
    pub async fn slow(name: &str, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream address");
        let served_by = name.to_string();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                // Without it, Nagle's algorithm and delayed ACKs add 40 ms to every call.
                let _ = stream.set_nodelay(true);
                let served_by = served_by.clone();
                let service = service_fn(move |request| answer(served_by.clone(), delay, request));
                tokio::spawn(async move {
                    let builder = auto::Builder::new(TokioExecutor::new()).http2_only();
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            name: name.to_string(),
        }
    }

    /// An h2c backend whose only endpoint is this upstream.
    pub fn backend(&self) -> Arc<Backend> {
        backend(&self.name, BackendProtocol::H2c, &[self.addr])
    }
}

async fn answer(
    served_by: String,
    delay: Duration,
    request: Request<Incoming>,
) -> Result<Response<GrpcBody>, Infallible> {
    let fails = request.uri().path().ends_with("/Fail");
    // Whether the gateway passed the client's `TE: trailers` on, which gRPC servers require.
    let te = request.headers().get("te").cloned();
    let _ = request.into_body().collect().await;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut response = if fails {
        let mut response = Response::new(Empty::new().boxed_unsync());
        let headers = response.headers_mut();
        headers.insert("grpc-status", HeaderValue::from_static("5"));
        headers.insert(
            "grpc-message",
            HeaderValue::from_static("no%20such%20thing"),
        );
        response
    } else {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        trailers.insert("grpc-message", HeaderValue::from_static("fine"));
        if let Ok(name) = HeaderValue::from_str(&served_by) {
            trailers.insert("x-served-by", name);
        }
        let body = Full::new(message(served_by.as_bytes()))
            .with_trailers(std::future::ready(Some(Ok(trailers))))
            .boxed_unsync();
        Response::new(body)
    };
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static(GRPC));
    if let Some(te) = te {
        headers.insert("x-seen-te", te);
    }
    Ok(response)
}

/// One gRPC length-prefixed message: not compressed, 4-byte big-endian length, payload.
pub fn message(payload: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(5 + payload.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(payload.len()).expect("test payloads are small"));
    framed.put_slice(payload);
    framed.freeze()
}

// === client ===

/// One HTTP/2 connection to the gateway; every call is a stream on it.
pub struct GrpcClient {
    sender: http2::SendRequest<Full<Bytes>>,
    scheme: &'static str,
}

/// What a call got back.
#[derive(Debug)]
pub struct GrpcAnswer {
    /// The HTTP status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// Whether the HEADERS frame ended the stream (a Trailers-Only response).
    pub ended_with_headers: bool,
    /// The response body: length-prefixed messages, or the text of an HTTP error.
    pub body: Bytes,
    /// The trailers, if a trailers frame followed the body.
    pub trailers: Option<HeaderMap>,
}

impl GrpcClient {
    /// Connects over h2c with prior knowledge.
    pub async fn h2c(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect to gateway");
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        Self::over(stream, "http").await
    }

    /// Speaks HTTP/2 over `io` (a TLS stream that negotiated `h2`, for `https`).
    pub async fn over<I>(io: I, scheme: &'static str) -> Self
    where
        I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, connection) = http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .expect("h2 handshake");
        tokio::spawn(connection);
        Self { sender, scheme }
    }

    /// Calls `path` (`/package.Service/Method`) on `authority` with one message.
    pub async fn call(&mut self, authority: &str, path: &str) -> GrpcAnswer {
        self.send(authority, path, GRPC).await
    }

    /// Sends the same request with another content type (to see the HTTP answers).
    pub async fn send(&mut self, authority: &str, path: &str, content_type: &str) -> GrpcAnswer {
        let request = Request::post(format!("{}://{authority}{path}", self.scheme))
            .version(Version::HTTP_2)
            .header("content-type", content_type)
            .header("te", "trailers")
            .body(Full::new(message(b"ping")))
            .expect("valid request");
        let response = tokio::time::timeout(PATIENCE, self.sender.send_request(request))
            .await
            .expect("gateway answered in time")
            .expect("gateway answered");
        let (parts, body) = response.into_parts();
        // Checked before reading: true only if END_STREAM came with the HEADERS frame.
        let ended_with_headers = body.is_end_stream();
        let collected = tokio::time::timeout(PATIENCE, body.collect())
            .await
            .expect("body ended in time")
            .expect("response body");
        let trailers = collected.trailers().cloned();
        GrpcAnswer {
            status: parts.status,
            headers: parts.headers,
            ended_with_headers,
            body: collected.to_bytes(),
            trailers,
        }
    }
}

impl GrpcAnswer {
    /// A response header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A trailer as text.
    pub fn trailer(&self, name: &str) -> Option<&str> {
        self.trailers
            .as_ref()
            .and_then(|trailers| trailers.get(name))
            .and_then(|v| v.to_str().ok())
    }

    /// Asserts that this is the gateway's own Trailers-Only answer with `code`.
    #[track_caller]
    pub fn assert_trailers_only(&self, code: &str) {
        assert_eq!(self.status, StatusCode::OK, "{self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/grpc"),
            "{self:?}"
        );
        assert_eq!(self.header("grpc-status"), Some(code), "{self:?}");
        assert!(self.header("grpc-message").is_some(), "{self:?}");
        assert!(self.ended_with_headers, "{self:?}");
        assert!(self.body.is_empty(), "{self:?}");
        assert!(self.trailers.is_none(), "{self:?}");
    }
}
