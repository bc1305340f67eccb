//! The gRPC echo backend (README "What the gRPC echo backend answers"): Deployments with
//! `GRPC_ECHO_SERVER=1` serve `gateway_api_conformance.echo_basic.grpcecho.GrpcEcho` in
//! cleartext HTTP/2 (prior knowledge) on 3000 and, when they mount a certificate, over TLS
//! (ALPN `h2`) on 8443. `Echo` and `EchoTwo` answer with the call's [`Assertions`];
//! `EchoThree` is declared upstream but not implemented, so it answers `Unimplemented`, as
//! do unknown services and methods (grpc-go's answer to both).
//!
//! Errors go out as Trailers-Only responses (`grpc-status` in the only HEADERS frame), replies
//! as HEADERS, one DATA frame and a `grpc-status: 0` trailer; see `grpc` for the framing.

use std::convert::Infallible;
use std::future::{Ready, ready};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::WithTrailers;
use http_body_util::{BodyExt as _, Either, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::echo::accept_loop;
use crate::grpc::{
    Assertions, Code, Context, EchoRequest, EchoResponse, Header, MAX_MESSAGE, SERVICE,
    TlsAssertions, decode_frame, encode_frame,
};
use crate::tls::server::TlsFacts;

/// How long a TLS client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the gRPC echo would learn from its environment.
#[derive(Debug, Clone)]
pub struct GrpcEchoIdentity {
    /// `NAMESPACE`.
    pub namespace: String,
    /// `POD_NAME`.
    pub pod: String,
}

/// A reply body: empty for Trailers-Only answers, one message plus trailers otherwise.
type ReplyBody = Either<Full<Bytes>, WithTrailers<Full<Bytes>, TrailersReady>>;
type TrailersReady = Ready<Option<Result<HeaderMap, Infallible>>>;

/// Serves cleartext gRPC on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, identity: Arc<GrpcEchoIdentity>) {
    accept_loop(listener, move |stream, _| {
        serve_connection(stream, None, identity.clone())
    })
    .await;
}

/// Serves gRPC over TLS on `listener` until the task is aborted; a failed handshake just ends
/// its connection.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    identity: Arc<GrpcEchoIdentity>,
) {
    accept_loop(listener, move |stream, _| {
        let (acceptor, identity) = (acceptor.clone(), identity.clone());
        async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
            if let Ok(Ok(stream)) = handshake.await {
                let facts = Arc::new(TlsFacts::of(stream.get_ref().1));
                serve_connection(stream, Some(facts), identity).await;
            }
        }
    })
    .await;
}

/// The reply to one call: `Ok(response)` or the error status and message.
pub fn reply_to(
    full_method: &str,
    request_body: &[u8],
    received: &HeaderMap,
    authority: &str,
    tls: Option<&TlsFacts>,
    identity: &GrpcEchoIdentity,
) -> Result<EchoResponse, (Code, String)> {
    let Some(method) = full_method
        .strip_prefix('/')
        .and_then(|m| m.strip_prefix(SERVICE))
        .and_then(|m| m.strip_prefix('/'))
    else {
        return Err((
            Code::UNIMPLEMENTED,
            format!("unknown service {full_method}"),
        ));
    };
    match method {
        "Echo" | "EchoTwo" => {}
        "EchoThree" => {
            return Err((
                Code::UNIMPLEMENTED,
                "method EchoThree not implemented".to_owned(),
            ));
        }
        other => return Err((Code::UNIMPLEMENTED, format!("unknown method {other}"))),
    }
    let request = decode_frame(request_body)
        .map_err(|e| e.to_string())
        .and_then(|payload| EchoRequest::decode(payload).map_err(|e| e.to_string()))
        .map_err(|e| (Code::INTERNAL, format!("error unmarshalling request: {e}")))?;
    // Received metadata: every header except pseudo-headers, one entry per value.
    let headers = received
        .iter()
        .map(|(name, value)| Header {
            key: name.as_str().to_owned(),
            value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
        })
        .collect();
    Ok(EchoResponse {
        assertions: Some(Assertions {
            fully_qualified_method: full_method.to_owned(),
            headers,
            authority: authority.to_owned(),
            context: Some(Context {
                namespace: identity.namespace.clone(),
                ingress: String::new(),
                service_name: String::new(),
                pod: identity.pod.clone(),
            }),
            tls_assertions: tls.map(|facts| TlsAssertions {
                version: facts.echo_version_name(),
                negotiated_protocol: facts.negotiated_protocol(),
                server_name: facts.server_name.clone().unwrap_or_default(),
                cipher_suite: facts.go_cipher_suite_name(),
                peer_certificates: facts.peer_certificates_pem(),
            }),
        }),
        request: Some(request),
    })
}

async fn serve_connection<S>(stream: S, tls: Option<Arc<TlsFacts>>, identity: Arc<GrpcEchoIdentity>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |request| {
        let (tls, identity) = (tls.clone(), identity.clone());
        async move { Ok::<_, Infallible>(answer(request, tls.as_deref(), &identity).await) }
    });
    // Errors here are the peer's doing (reset, not HTTP/2); the echo just moves on.
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(stream), service)
        .await;
}

async fn answer(
    request: Request<Incoming>,
    tls: Option<&TlsFacts>,
    identity: &GrpcEchoIdentity,
) -> Response<ReplyBody> {
    let (parts, body) = request.into_parts();
    let body = match Limited::new(body, MAX_MESSAGE).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(error) => return trailers_only(Code::INTERNAL, &format!("reading request: {error}")),
    };
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            let host = parts.headers.get(http::header::HOST)?;
            host.to_str().ok().map(str::to_owned)
        })
        .unwrap_or_default();
    let full_method = parts.uri.path();
    match reply_to(
        full_method,
        &body,
        &parts.headers,
        &authority,
        tls,
        identity,
    ) {
        Ok(response) => {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            let body = Full::new(encode_frame(&response)).with_trailers(ready(Some(Ok(trailers))));
            let mut reply = Response::new(Either::Right(body));
            grpc_content_type(reply.headers_mut());
            reply
        }
        Err((code, message)) => trailers_only(code, &message),
    }
}

/// A Trailers-Only answer: HTTP 200 whose only HEADERS frame carries the status.
fn trailers_only(code: Code, message: &str) -> Response<ReplyBody> {
    let mut reply = Response::new(Either::Left(Full::new(Bytes::new())));
    *reply.status_mut() = StatusCode::OK;
    let headers = reply.headers_mut();
    grpc_content_type(headers);
    headers.insert("grpc-status", HeaderValue::from(code.0));
    // grpc-message is percent-encoded; our messages are plain ASCII without `%`.
    if let Ok(value) = HeaderValue::from_str(message) {
        headers.insert("grpc-message", value);
    }
    reply
}

fn grpc_content_type(headers: &mut HeaderMap) {
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> GrpcEchoIdentity {
        GrpcEchoIdentity {
            namespace: "gateway-conformance-infra".to_owned(),
            pod: "grpc-infra-backend-v1-abcdefghij-klmno".to_owned(),
        }
    }

    fn call(method: &str) -> Result<EchoResponse, (Code, String)> {
        let mut received = HeaderMap::new();
        received.insert("x-jitter", HeaderValue::from_static("5"));
        let full_method = format!("/{SERVICE}/{method}");
        let body = encode_frame(&EchoRequest {});
        reply_to(&full_method, &body, &received, "foo.com", None, &identity())
    }

    #[test]
    fn echo_and_echo_two_report_the_call() {
        for method in ["Echo", "EchoTwo"] {
            let response = call(method).expect("answers");
            let assertions = response.assertions.expect("assertions");
            assert_eq!(
                assertions.fully_qualified_method,
                format!("/{SERVICE}/{method}")
            );
            assert_eq!(assertions.authority, "foo.com");
            assert_eq!(
                assertions.headers,
                vec![Header {
                    key: "x-jitter".to_owned(),
                    value: "5".to_owned()
                }]
            );
            let context = assertions.context.expect("context");
            assert_eq!(context.pod, identity().pod);
            assert_eq!(context.namespace, identity().namespace);
            assert_eq!(assertions.tls_assertions, None);
        }
    }

    #[test]
    fn echo_three_and_unknown_methods_are_unimplemented() {
        assert_eq!(call("EchoThree").map_err(|e| e.0), Err(Code::UNIMPLEMENTED));
        assert_eq!(call("EchoFour").map_err(|e| e.0), Err(Code::UNIMPLEMENTED));
        let other = reply_to(
            "/x.Y/Echo",
            &[0; 5],
            &HeaderMap::new(),
            "",
            None,
            &identity(),
        );
        assert_eq!(other.map_err(|e| e.0), Err(Code::UNIMPLEMENTED));
    }

    #[test]
    fn an_unframed_request_is_internal() {
        let full_method = format!("/{SERVICE}/Echo");
        let reply = reply_to(
            &full_method,
            &[0, 0],
            &HeaderMap::new(),
            "",
            None,
            &identity(),
        );
        assert_eq!(reply.map_err(|e| e.0), Err(Code::INTERNAL));
    }
}
