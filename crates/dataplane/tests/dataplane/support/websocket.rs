//! WebSocket upstreams and a WebSocket client, for the upgrade tests.
//!
//! The echo upstream performs a real RFC 6455 handshake (tokio-tungstenite), reports the
//! handshake's headers to the test, and sends every text and binary message back. The
//! refusing upstream answers every request, handshakes included, with 403.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request, Response as Ok101,
};
use tokio_tungstenite::tungstenite::{Error, Message};

use super::PATIENCE;

/// The `Origin` every test client sends, as browsers (and the conformance test) do.
pub const ORIGIN: &str = "http://gateway.example";

/// A WebSocket echo server.
pub struct EchoUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    handshakes: mpsc::UnboundedReceiver<HeaderMap>,
}

impl EchoUpstream {
    /// Starts it on an ephemeral loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream address");
        let (tx, handshakes) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(echo(stream, tx.clone()));
            }
        });
        Self { addr, handshakes }
    }

    /// Starts it behind TLS: every connection is accepted by `acceptor` first.
    pub async fn start_tls(acceptor: tokio_rustls::TlsAcceptor) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream address");
        let (tx, handshakes) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    if let Ok(stream) = acceptor.accept(stream).await {
                        echo(stream, tx).await;
                    }
                });
            }
        });
        Self { addr, handshakes }
    }

    /// The headers of the next handshake this upstream accepted.
    pub async fn next_handshake(&mut self) -> HeaderMap {
        tokio::time::timeout(PATIENCE, self.handshakes.recv())
            .await
            .expect("no handshake in time")
            .expect("upstream stopped")
    }
}

async fn echo<S>(stream: S, handshakes: mpsc::UnboundedSender<HeaderMap>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    #[expect(
        clippy::result_large_err,
        reason = "tungstenite's handshake callback trait fixes this signature"
    )]
    let record = |request: &Request, response: Ok101| -> Result<Ok101, ErrorResponse> {
        let _ = handshakes.send(request.headers().clone());
        Ok(response)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, record).await else {
        return;
    };
    while let Some(Ok(message)) = ws.next().await {
        if (message.is_text() || message.is_binary()) && ws.send(message).await.is_err() {
            return;
        }
        // A close is answered by tungstenite itself; the stream then ends.
    }
}

/// Starts an upstream that answers everything with `403 Forbidden`; returns its address.
pub async fn refusing_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind upstream");
    let addr = listener.local_addr().expect("upstream address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let service = service_fn(|_request| async {
                let mut response = Response::new(Full::new(Bytes::from_static(b"no sockets\n")));
                *response.status_mut() = StatusCode::FORBIDDEN;
                Ok::<_, Infallible>(response)
            });
            tokio::spawn(async move {
                let builder = auto::Builder::new(TokioExecutor::new());
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

/// Opens `ws://host/target` over `stream` (already connected to the gateway), with
/// [`ORIGIN`].
pub async fn open<S>(
    stream: S,
    host: &str,
    target: &str,
) -> Result<(WebSocketStream<S>, HeaderMap), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut request = format!("ws://{host}{target}").into_client_request()?;
    request
        .headers_mut()
        .insert("origin", HeaderValue::from_static(ORIGIN));
    let handshake = tokio_tungstenite::client_async(request, stream);
    let (ws, response) = tokio::time::timeout(PATIENCE, handshake)
        .await
        .expect("handshake answered in time")?;
    Ok((ws, response.headers().clone()))
}

/// Opens `ws://host/target` on a new plain connection to `gateway`.
pub async fn connect(
    gateway: SocketAddr,
    host: &str,
    target: &str,
) -> Result<(WebSocketStream<TcpStream>, HeaderMap), Error> {
    let stream = TcpStream::connect(gateway)
        .await
        .expect("connect to gateway");
    open(stream, host, target).await
}

/// Sends `message` and returns the next message that comes back.
pub async fn round_trip<S>(ws: &mut WebSocketStream<S>, message: Message) -> Message
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    ws.send(message).await.expect("send a message");
    tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("answer in time")
        .expect("socket still open")
        .expect("a valid message")
}
