//! gRPC on the wire, shared by the gRPC echo backend (`grpc_echo`) and the `grpc` case types
//! (`grpc_cases`): the messages of upstream's `conformance/echo-basic/grpcecho.proto`, the
//! length-prefixed message framing, status codes, and a minimal unary client.
//!
//! Why no tonic: we need one unary service and one unary client call with empty requests.
//! gRPC framing over hyper's HTTP/2 (already a dependency) is a 5-byte prefix and a
//! `grpc-status` trailer, a few dozen lines here. Tonic would bring tower, its transport stack
//! and a hand-written codec and service anyway (there is no protoc here), for more code, not
//! less. The messages are `prost` types written by hand with the proto's field numbers.
//!
//! The client judges a call like grpc-go, upstream's client: a non-200 HTTP status maps to a
//! code by the table of gRPC's `http-grpc-status-mapping.md` (404 is `Unimplemented`), a 200
//! that is not `application/grpc` is `Unknown`, otherwise `grpc-status` from the trailers or,
//! in a Trailers-Only response, from the headers.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use bytes::{BufMut as _, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;
use tokio::net::TcpStream;

use crate::client::ensure_loopback;

/// The echo service's full name.
pub const SERVICE: &str = "gateway_api_conformance.echo_basic.grpcecho.GrpcEcho";
/// Largest message either side reads.
pub const MAX_MESSAGE: usize = 4 << 20;

/// `Header`: one received metadata entry.
#[derive(Clone, PartialEq, Message)]
pub struct Header {
    /// Metadata key (lowercase).
    #[prost(string, tag = "1")]
    pub key: String,
    /// One value.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `Context`: what the backend learned from its environment.
#[derive(Clone, PartialEq, Message)]
pub struct Context {
    /// `NAMESPACE`.
    #[prost(string, tag = "1")]
    pub namespace: String,
    /// `INGRESS_NAME`.
    #[prost(string, tag = "2")]
    pub ingress: String,
    /// `SERVICE_NAME`.
    #[prost(string, tag = "3")]
    pub service_name: String,
    /// `POD_NAME`.
    #[prost(string, tag = "4")]
    pub pod: String,
}

/// `TLSAssertions`: the backend's view of a TLS connection.
#[derive(Clone, PartialEq, Message)]
pub struct TlsAssertions {
    /// E.g. `TLSv1.3`.
    #[prost(string, tag = "1")]
    pub version: String,
    /// ALPN protocol.
    #[prost(string, tag = "2")]
    pub negotiated_protocol: String,
    /// SNI sent by the client.
    #[prost(string, tag = "3")]
    pub server_name: String,
    /// IANA cipher suite name.
    #[prost(string, tag = "4")]
    pub cipher_suite: String,
    /// Client certificates (PEM), in the order sent.
    #[prost(string, repeated, tag = "5")]
    pub peer_certificates: Vec<String>,
}

/// `Assertions`: what the echo saw of the call.
#[derive(Clone, PartialEq, Message)]
pub struct Assertions {
    /// E.g. `/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo`.
    #[prost(string, tag = "1")]
    pub fully_qualified_method: String,
    /// Received metadata.
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<Header>,
    /// The `:authority` received.
    #[prost(string, tag = "3")]
    pub authority: String,
    /// The backend's identity.
    #[prost(message, optional, tag = "4")]
    pub context: Option<Context>,
    /// Present over TLS only.
    #[prost(message, optional, tag = "5")]
    pub tls_assertions: Option<TlsAssertions>,
}

/// `EchoRequest`: empty.
#[derive(Clone, PartialEq, Message)]
pub struct EchoRequest {}

/// `EchoResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct EchoResponse {
    /// What the echo saw.
    #[prost(message, optional, tag = "1")]
    pub assertions: Option<Assertions>,
    /// The request, echoed.
    #[prost(message, optional, tag = "2")]
    pub request: Option<EchoRequest>,
}

/// A gRPC status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Code(pub u32);

/// Why a length-prefixed message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer than the 5 prefix bytes.
    #[error("message shorter than its 5-byte prefix ({0} bytes)")]
    Truncated(usize),
    /// The compressed flag is set; nobody negotiated compression.
    #[error("compressed message without negotiated compression")]
    Compressed,
    /// The prefix declares a different length than the bytes that follow.
    #[error("prefix declares {declared} bytes but {actual} follow")]
    LengthMismatch {
        /// Length in the prefix.
        declared: usize,
        /// Bytes after the prefix.
        actual: usize,
    },
}

/// The end of one unary call.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// Status of the call.
    pub code: Code,
    /// `grpc-message` or how the status was derived.
    pub message: String,
    /// The decoded reply, for `OK`.
    pub response: Option<EchoResponse>,
}

/// What to call and how.
#[derive(Debug, Clone)]
pub struct Call {
    /// `:authority`.
    pub authority: String,
    /// `/service/method`.
    pub full_method: String,
    /// Request metadata (keys are lowercased when sent).
    pub metadata: Vec<(String, String)>,
}

/// The sending half of one HTTP/2 connection, for several calls.
pub type Connection = SendRequest<Full<Bytes>>;

impl Code {
    /// `OK`.
    pub const OK: Self = Self(0);
    /// `Unknown`.
    pub const UNKNOWN: Self = Self(2);
    /// `Unimplemented`.
    pub const UNIMPLEMENTED: Self = Self(12);
    /// `Internal`.
    pub const INTERNAL: Self = Self(13);
    /// `Unavailable`.
    pub const UNAVAILABLE: Self = Self(14);

    /// Names as grpc-go's `codes.Code.String()` spells them, by number.
    const NAMES: [&'static str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];

    /// Parses a name such as `OK`, `Unimplemented` or `UNIMPLEMENTED`.
    pub fn from_name(name: &str) -> Option<Self> {
        let squashed = name.replace('_', "");
        (0u32..)
            .zip(Self::NAMES)
            .find(|(_, known)| known.eq_ignore_ascii_case(&squashed))
            .map(|(number, _)| Self(number))
    }

    /// grpc-go's name, or `Code(n)` for numbers outside the table.
    pub fn name(self) -> String {
        usize::try_from(self.0)
            .ok()
            .and_then(|i| Self::NAMES.get(i))
            .map_or_else(|| format!("Code({})", self.0), |n| (*n).to_owned())
    }

    /// gRPC's mapping of a non-200 HTTP status (`http-grpc-status-mapping.md`).
    pub fn of_http_status(status: u16) -> Self {
        match status {
            400 => Self::INTERNAL,
            401 => Self(16),
            403 => Self(7),
            404 => Self::UNIMPLEMENTED,
            429 | 502..=504 => Self::UNAVAILABLE,
            _ => Self::UNKNOWN,
        }
    }
}

/// Frames one uncompressed message: flag 0, big-endian `u32` length, payload.
pub fn encode_frame(message: &impl Message) -> Bytes {
    let payload = message.encode_to_vec();
    let length = u32::try_from(payload.len()).expect("our messages are far below 4 GiB");
    let mut frame = BytesMut::with_capacity(5 + payload.len());
    frame.put_u8(0);
    frame.put_u32(length);
    frame.put_slice(&payload);
    frame.freeze()
}

/// The payload of a body holding exactly one uncompressed message (unary calls).
pub fn decode_frame(body: &[u8]) -> Result<&[u8], FrameError> {
    let Some((prefix, payload)) = body.split_first_chunk::<5>() else {
        return Err(FrameError::Truncated(body.len()));
    };
    if prefix[0] != 0 {
        return Err(FrameError::Compressed);
    }
    let declared = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    if declared != payload.len() {
        return Err(FrameError::LengthMismatch {
            declared,
            actual: payload.len(),
        });
    }
    Ok(payload)
}

/// The status of a finished call, judged like grpc-go (see the module docs).
pub fn call_status(http_status: u16, headers: &HeaderMap, trailers: Option<&HeaderMap>) -> Code {
    if http_status != 200 {
        return Code::of_http_status(http_status);
    }
    let content_type = header_str(headers, "content-type").unwrap_or("");
    if !content_type.starts_with("application/grpc") {
        return Code::UNKNOWN;
    }
    let status = trailers
        .and_then(|t| header_str(t, "grpc-status"))
        .or_else(|| header_str(headers, "grpc-status"));
    match status.map(str::parse::<u32>) {
        Some(Ok(code)) => Code(code),
        // Malformed, or the stream ended without a status.
        Some(Err(_)) | None => Code::INTERNAL,
    }
}

/// Opens a cleartext HTTP/2 connection (prior knowledge) to a loopback address.
pub async fn connect(address: SocketAddr) -> anyhow::Result<Connection> {
    ensure_loopback(address.ip())?;
    let stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to {address}"))?;
    let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .context("HTTP/2 handshake")?;
    tokio::spawn(connection);
    Ok(sender)
}

/// One unary `EchoRequest` call on `connection`, or on a new connection when `None`; the
/// timeout covers connecting and the whole answer.
pub async fn unary(
    address: SocketAddr,
    connection: Option<&Connection>,
    call: &Call,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let exchange = async {
        let mut sender = match connection {
            Some(connection) => connection.clone(),
            None => connect(address).await?,
        };
        sender.ready().await.context("HTTP/2 connection")?;
        let response = sender.send_request(request(call)?).await?;
        let (parts, body) = response.into_parts();
        let collected = Limited::new(body, MAX_MESSAGE)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the reply: {e}"))?;
        let trailers = collected.trailers().cloned();
        let body = collected.to_bytes();
        Ok(outcome(
            parts.status.as_u16(),
            &parts.headers,
            trailers.as_ref(),
            &body,
        ))
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within {timeout:?}")))
}

fn request(call: &Call) -> anyhow::Result<Request<Full<Bytes>>> {
    let uri = Uri::builder()
        .scheme("http")
        .authority(call.authority.as_str())
        .path_and_query(call.full_method.as_str())
        .build()
        .with_context(|| format!("authority {:?} and method", call.authority))?;
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("user-agent", "portcullis-conformance")
        .body(Full::new(encode_frame(&EchoRequest {})))?;
    for (key, value) in &call.metadata {
        let name = HeaderName::from_bytes(key.to_ascii_lowercase().as_bytes())
            .with_context(|| format!("metadata key {key:?}"))?;
        let value = HeaderValue::from_str(value).with_context(|| format!("metadata {key}"))?;
        request.headers_mut().append(name, value);
    }
    Ok(request)
}

/// Combines the status with the decoded reply; an undecodable `OK` reply is `Internal`, as
/// in grpc-go.
fn outcome(status: u16, headers: &HeaderMap, trailers: Option<&HeaderMap>, body: &[u8]) -> Outcome {
    let code = call_status(status, headers, trailers);
    let message = trailers
        .and_then(|t| header_str(t, "grpc-message"))
        .or_else(|| header_str(headers, "grpc-message"))
        .map_or_else(|| format!("HTTP {status}"), str::to_owned);
    if code != Code::OK {
        return Outcome {
            code,
            message,
            response: None,
        };
    }
    match decode_frame(body).map(EchoResponse::decode) {
        Ok(Ok(response)) => Outcome {
            code,
            message,
            response: Some(response),
        },
        Ok(Err(error)) => Outcome {
            code: Code::INTERNAL,
            message: format!("undecodable EchoResponse: {error}"),
            response: None,
        },
        Err(error) => Outcome {
            code: Code::INTERNAL,
            message: format!("reply body: {error}"),
            response: None,
        },
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[cfg(test)]
mod tests;
