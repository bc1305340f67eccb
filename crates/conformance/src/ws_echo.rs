//! The WebSocket half of the HTTP echo (README "What the HTTP echo backend answers": `/ws`
//! accepts a WebSocket and echoes every frame back).
//!
//! [`accept`] judges an HTTP/1.1 request for `/ws` against RFC 6455 section 4.2.1 and builds
//! either the `101 Switching Protocols` answer or the refusal; [`echo_frames`] then runs on
//! the upgraded connection and sends every text and binary message back unchanged (pings are
//! answered and closes completed by the WebSocket layer itself). The echo's connection task
//! hands the upgrade from one to the other, so aborting a backend ends its tunnels too.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, Version, header};
use http_body_util::Full;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// The only WebSocket protocol version (RFC 6455) the echo speaks.
pub const WEBSOCKET_VERSION: &str = "13";

/// Why a `/ws` request is not a WebSocket handshake the echo accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Not `GET` over HTTP/1.1, or `Upgrade: websocket` / `Connection: upgrade` missing, or
    /// no valid `Sec-WebSocket-Key`: answered 400.
    BadHandshake(&'static str),
    /// A `Sec-WebSocket-Version` other than 13: answered 426 naming version 13.
    UnsupportedVersion,
}

impl Refusal {
    /// The answer the echo sends instead of switching protocols.
    pub fn response(&self) -> Response<Full<Bytes>> {
        let (status, body) = match self {
            Refusal::BadHandshake(why) => (StatusCode::BAD_REQUEST, *why),
            Refusal::UnsupportedVersion => (
                StatusCode::UPGRADE_REQUIRED,
                "unsupported Sec-WebSocket-Version",
            ),
        };
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        if *self == Refusal::UnsupportedVersion {
            response.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static(WEBSOCKET_VERSION),
            );
        }
        response
    }
}

/// Judges a handshake request; on success returns the `Sec-WebSocket-Accept` value.
pub fn accept_key(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Result<String, Refusal> {
    if method != Method::GET || version != Version::HTTP_11 {
        return Err(Refusal::BadHandshake(
            "a WebSocket handshake is a GET over HTTP/1.1",
        ));
    }
    if !has_token(headers, &header::UPGRADE, "websocket") {
        return Err(Refusal::BadHandshake("missing Upgrade: websocket"));
    }
    if !has_token(headers, &header::CONNECTION, "upgrade") {
        return Err(Refusal::BadHandshake("missing Connection: upgrade"));
    }
    let version = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    if version != Some(WEBSOCKET_VERSION) {
        return Err(Refusal::UnsupportedVersion);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|v| v.as_bytes().trim_ascii())
        .ok_or(Refusal::BadHandshake("missing Sec-WebSocket-Key"))?;
    // RFC 6455: the key is 16 random bytes, base64-encoded.
    match BASE64.decode(key) {
        Ok(raw) if raw.len() == 16 => Ok(derive_accept_key(key)),
        _ => Err(Refusal::BadHandshake("invalid Sec-WebSocket-Key")),
    }
}

/// The answer to a `/ws` request: `101 Switching Protocols` with the accept key, or the
/// refusal. The caller starts [`echo_frames`] on the upgraded connection only after a 101.
pub fn accept(method: &Method, version: Version, headers: &HeaderMap) -> Response<Full<Bytes>> {
    let key = match accept_key(method, version, headers) {
        Ok(key) => key,
        Err(refusal) => return refusal.response(),
    };
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let answer = response.headers_mut();
    answer.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    answer.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    // The accept key is base64, always a valid header value; a failure would only drop it.
    if let Ok(value) = HeaderValue::from_str(&key) {
        answer.insert(header::SEC_WEBSOCKET_ACCEPT, value);
    }
    response
}

/// Echoes every text and binary message on `io` (an upgraded connection) until the peer
/// closes or the connection fails. Text stays text, binary stays binary, content unchanged.
pub async fn echo_frames<S>(io: S)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut socket = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    while let Some(Ok(message)) = socket.next().await {
        let reply = match message {
            Message::Text(_) | Message::Binary(_) => message,
            // Pong replies and the closing handshake are queued by tungstenite and written
            // on the next read; nothing to send here.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {
                continue;
            }
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}

/// Whether one of the comma-separated values of header `name` equals `token`
/// (case-insensitively), as `Connection: keep-alive, Upgrade` needs.
fn has_token(headers: &HeaderMap, name: &header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of RFC 6455 section 1.3.
    const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
    const RFC_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

    fn handshake_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        headers.insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        headers.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static(RFC_KEY));
        headers
    }

    #[test]
    fn rfc_example_is_accepted() {
        let key = accept_key(&Method::GET, Version::HTTP_11, &handshake_headers());
        assert_eq!(key.as_deref(), Ok(RFC_ACCEPT));
        let response = accept(&Method::GET, Version::HTTP_11, &handshake_headers());
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert_eq!(response.headers()[header::SEC_WEBSOCKET_ACCEPT], RFC_ACCEPT);
        assert_eq!(response.headers()[header::UPGRADE], "websocket");
    }

    #[test]
    fn broken_handshakes_are_refused() {
        let refused = |method: Method, version: Version, edit: &dyn Fn(&mut HeaderMap)| {
            let mut headers = handshake_headers();
            edit(&mut headers);
            accept_key(&method, version, &headers).expect_err("must be refused")
        };
        let keep = |_: &mut HeaderMap| {};
        assert!(matches!(
            refused(Method::POST, Version::HTTP_11, &keep),
            Refusal::BadHandshake(_)
        ));
        assert!(matches!(
            refused(Method::GET, Version::HTTP_2, &keep),
            Refusal::BadHandshake(_)
        ));
        let no_upgrade = |h: &mut HeaderMap| drop(h.remove(header::UPGRADE));
        assert_eq!(
            refused(Method::GET, Version::HTTP_11, &no_upgrade),
            Refusal::BadHandshake("missing Upgrade: websocket")
        );
        let close = |h: &mut HeaderMap| {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        };
        assert_eq!(
            refused(Method::GET, Version::HTTP_11, &close),
            Refusal::BadHandshake("missing Connection: upgrade")
        );
        let old = |h: &mut HeaderMap| {
            h.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        };
        let refusal = refused(Method::GET, Version::HTTP_11, &old);
        assert_eq!(refusal, Refusal::UnsupportedVersion);
        let response = refusal.response();
        assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(response.headers()[header::SEC_WEBSOCKET_VERSION], "13");
        let short_key = |h: &mut HeaderMap| {
            h.insert(
                header::SEC_WEBSOCKET_KEY,
                HeaderValue::from_static("c2hvcnQ="),
            );
        };
        assert_eq!(
            refused(Method::GET, Version::HTTP_11, &short_key),
            Refusal::BadHandshake("invalid Sec-WebSocket-Key")
        );
        let no_key = |h: &mut HeaderMap| drop(h.remove(header::SEC_WEBSOCKET_KEY));
        assert_eq!(
            refused(Method::GET, Version::HTTP_11, &no_key),
            Refusal::BadHandshake("missing Sec-WebSocket-Key")
        );
    }

    #[tokio::test]
    async fn frames_come_back_unchanged_over_a_raw_pipe() {
        let (server, client) = tokio::io::duplex(64 * 1024);
        let echo = tokio::spawn(echo_frames(server));
        let mut client = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let sent = [
            Message::text("Websocket Support!"),
            Message::binary(vec![1u8, 2, 3, 4, 5, 6, 7]),
        ];
        for message in sent {
            client.send(message.clone()).await.expect("send");
            let reply = client.next().await.expect("a reply").expect("a frame");
            assert_eq!(reply, message);
        }
        client.close(None).await.expect("close");
        // The echo completes the closing handshake and returns.
        while let Some(Ok(_)) = client.next().await {}
        echo.await.expect("echo task");
    }
}
