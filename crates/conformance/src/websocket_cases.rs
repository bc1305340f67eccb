//! The `websocket` case type (README "Cases" → `websocket`): open
//! `ws://<gateway>:<port><url_path>` with the case's Origin, send each frame and read its
//! echo before sending the next; eventually consistent (3 passing sessions in a row, a try
//! every 1 s, for up to 30 s).
//!
//! What a session must show is [`check_replies`], a pure function of the expected and the
//! received frames; [`session`] is the socket side, and [`websocket`] the retry loop.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{HeaderValue, header};
use serde::Deserialize;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::case::Case;
use crate::client;
use crate::traffic::{PASSES_IN_A_ROW, REQUEST_TIMEOUT, TrafficContext, gateway_address};

/// The placeholder upstream fills with the Go sub-test's name (`t.Name()`).
const SUBTEST_PLACEHOLDER: &str = "<name of the Go sub-test>";

/// One data frame of a case: `{text: ...}` or `{binary_bytes: [...]}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Frame {
    /// A text frame.
    Text(String),
    /// A binary frame, one byte per list entry.
    BinaryBytes(Vec<u8>),
}

/// `request` of `websocket`.
#[derive(Debug, Clone, Deserialize)]
pub struct WebSocketRequest {
    /// Path (and query) of the handshake request.
    #[serde(default = "ws_path")]
    pub url_path: String,
    /// Only `ws` (cleartext) is supported.
    #[serde(default = "ws_scheme")]
    pub scheme: String,
    /// The `Origin` header; [`SUBTEST_PLACEHOLDER`] is replaced by the case's name.
    #[serde(default)]
    pub origin: Option<String>,
    /// Host header; absent = the gateway address, with `:port` unless it is 80.
    #[serde(default)]
    pub host: Option<String>,
    /// Frames to send, in order, each answered before the next is sent.
    pub frames: Vec<Frame>,
}

/// `expect` of `websocket`.
#[derive(Debug, Clone, Deserialize)]
pub struct WebSocketExpect {
    /// Only `succeeds` is supported.
    #[serde(default = "succeeds")]
    pub handshake: String,
    /// The frames that must come back, one per sent frame.
    pub replies: Vec<Frame>,
    /// Passing sessions in a row the case needs (upstream's 3).
    #[serde(default)]
    pub consecutive_successes: Option<u32>,
}

impl Frame {
    /// The WebSocket message carrying this frame.
    pub fn message(&self) -> Message {
        match self {
            Frame::Text(text) => Message::text(text.as_str()),
            Frame::BinaryBytes(bytes) => Message::binary(Bytes::from(bytes.clone())),
        }
    }

    /// The data frame of a received message; `None` for control messages.
    pub fn of_message(message: &Message) -> Option<Self> {
        match message {
            Message::Text(text) => Some(Frame::Text(text.as_str().to_owned())),
            Message::Binary(bytes) => Some(Frame::BinaryBytes(bytes.to_vec())),
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => None,
        }
    }
}

impl WebSocketRequest {
    /// Converts a case's `request` block.
    pub fn from_value(value: &Value) -> anyhow::Result<Self> {
        serde_json::from_value(value.clone()).context("request block")
    }
}

impl WebSocketExpect {
    /// Converts a case's `expect` block.
    pub fn from_value(value: &Value) -> anyhow::Result<Self> {
        serde_json::from_value(value.clone()).context("expect block")
    }
}

/// The frames received must be the expected ones, in order, kind and content unchanged.
pub fn check_replies(expected: &[Frame], received: &[Frame]) -> Result<(), String> {
    for (index, want) in expected.iter().enumerate() {
        match received.get(index) {
            Some(got) if got == want => {}
            Some(got) => return Err(format!("reply {}: got {got:?}, want {want:?}", index + 1)),
            None => return Err(format!("reply {}: missing, want {want:?}", index + 1)),
        }
    }
    if received.len() > expected.len() {
        return Err(format!(
            "{} replies, want {}",
            received.len(),
            expected.len()
        ));
    }
    Ok(())
}

/// The handshake request: `ws://<authority><path>` with `host` as Host and `origin` as
/// Origin when given.
pub fn handshake_request(
    authority: &str,
    path: &str,
    host: &str,
    origin: Option<&str>,
) -> Result<tungstenite::handshake::client::Request, String> {
    let url = format!("ws://{authority}{path}");
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("handshake request for {url}: {e}"))?;
    let headers = request.headers_mut();
    let host = HeaderValue::from_str(host).map_err(|_| format!("invalid Host {host:?}"))?;
    headers.insert(header::HOST, host);
    if let Some(origin) = origin {
        let origin =
            HeaderValue::from_str(origin).map_err(|_| format!("invalid Origin {origin:?}"))?;
        headers.insert(header::ORIGIN, origin);
    }
    Ok(request)
}

/// One WebSocket session: connect, handshake, then per frame send it and read the next data
/// frame; ends with a close. Fails on transport and handshake errors only; what came back is
/// judged by [`check_replies`].
pub async fn session(
    address: SocketAddr,
    request: tungstenite::handshake::client::Request,
    frames: &[Frame],
) -> Result<Vec<Frame>, String> {
    client::ensure_loopback(address.ip()).map_err(|e| format!("{e:#}"))?;
    let tcp = TcpStream::connect(address)
        .await
        .map_err(|e| format!("connecting to {address}: {e}"))?;
    let (mut socket, _) = tokio_tungstenite::client_async(request, tcp)
        .await
        .map_err(|e| match e {
            tungstenite::Error::Http(response) => format!(
                "WebSocket handshake refused: status {} (want 101)",
                response.status()
            ),
            other => format!("WebSocket handshake: {other}"),
        })?;
    let mut received = Vec::with_capacity(frames.len());
    for (index, frame) in frames.iter().enumerate() {
        socket
            .send(frame.message())
            .await
            .map_err(|e| format!("sending frame {}: {e}", index + 1))?;
        let reply = loop {
            match socket.next().await {
                Some(Ok(message)) => match Frame::of_message(&message) {
                    Some(frame) => break frame,
                    None if matches!(message, Message::Close(_)) => {
                        return Err(format!("closed by the peer before reply {}", index + 1));
                    }
                    None => continue,
                },
                Some(Err(e)) => return Err(format!("reading reply {}: {e}", index + 1)),
                None => return Err(format!("connection ended before reply {}", index + 1)),
            }
        };
        received.push(reply);
    }
    // A clean close is courtesy, not part of the expectation.
    let _ = socket.close(None).await;
    Ok(received)
}

/// Runs a `websocket` case: one session per try, a try every 1 s, passing after
/// `consecutive_successes` (default 3) passing sessions in a row, failing after 30 s.
pub async fn websocket(case: &Case, ctx: &TrafficContext) -> Result<(), String> {
    let request = WebSocketRequest::from_value(&case.request).map_err(|e| format!("{e:#}"))?;
    let expect = WebSocketExpect::from_value(&case.expect).map_err(|e| format!("{e:#}"))?;
    if request.scheme != "ws" {
        return Err(format!(
            "unsupported case type: websocket over {:?}",
            request.scheme
        ));
    }
    if expect.handshake != "succeeds" {
        return Err(format!(
            "unsupported expect.handshake {:?}",
            expect.handshake
        ));
    }
    let port = case.port.unwrap_or(80);
    let ip = gateway_address(case, ctx).await?;
    let authority = match port {
        80 => ip.to_string(),
        _ => format!("{ip}:{port}"),
    };
    let host = request.host.clone().unwrap_or_else(|| authority.clone());
    // Go's `t.Name()` turns spaces into underscores.
    let origin = request
        .origin
        .as_deref()
        .map(|o| o.replace(SUBTEST_PLACEHOLDER, &case.name.replace(' ', "_")));
    let address = SocketAddr::new(ip, port);
    let needed = expect.consecutive_successes.unwrap_or(PASSES_IN_A_ROW);
    let cap = ctx.consistency_cap();
    let started = Instant::now();
    let (mut in_a_row, mut tries) = (0, 0);
    let mut last = String::from("no session");
    while started.elapsed() < cap {
        tries += 1;
        let handshake = handshake_request(&authority, &request.url_path, &host, origin.as_deref())?;
        let outcome = tokio::time::timeout(
            REQUEST_TIMEOUT,
            session(address, handshake, &request.frames),
        )
        .await
        .unwrap_or_else(|_| Err(format!("no complete session within {REQUEST_TIMEOUT:?}")));
        match outcome.and_then(|received| check_replies(&expect.replies, &received)) {
            Ok(()) => {
                in_a_row += 1;
                if in_a_row >= needed {
                    return Ok(());
                }
            }
            Err(why) => {
                in_a_row = 0;
                last = why;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(format!(
        "no {needed} passing sessions in a row within {cap:.0?} ({tries} tries); last: {last}"
    ))
}

fn ws_path() -> String {
    "/ws".to_owned()
}

fn ws_scheme() -> String {
    "ws".to_owned()
}

fn succeeds() -> String {
    "succeeds".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn the_case_frames() -> Vec<Frame> {
        vec![
            Frame::Text("Websocket Support!".to_owned()),
            Frame::BinaryBytes(vec![1, 2, 3, 4, 5, 6, 7]),
        ]
    }

    #[test]
    fn case_blocks_parse() {
        let request = WebSocketRequest::from_value(&json!({
            "url_path": "/ws",
            "scheme": "ws",
            "origin": "ws://gateway/<name of the Go sub-test>",
            "frames": [{"text": "Websocket Support!"}, {"binary_bytes": [1, 2, 3, 4, 5, 6, 7]}],
        }))
        .expect("request");
        assert_eq!(request.frames, the_case_frames());
        assert_eq!(request.host, None);
        let expect = WebSocketExpect::from_value(&json!({
            "handshake": "succeeds",
            "replies": [{"text": "Websocket Support!"}, {"binary_bytes": [1, 2, 3, 4, 5, 6, 7]}],
            "consecutive_successes": 3,
        }))
        .expect("expect");
        assert_eq!(expect.replies, the_case_frames());
        assert_eq!(expect.consecutive_successes, Some(3));
        let both = json!({"frames": [{"text": "a", "binary_bytes": [1]}]});
        assert!(WebSocketRequest::from_value(&both).is_err());
        let bad_byte = json!({"frames": [{"binary_bytes": [256]}]});
        assert!(WebSocketRequest::from_value(&bad_byte).is_err());
    }

    #[test]
    fn replies_must_match_in_kind_content_and_number() {
        let want = the_case_frames();
        assert_eq!(check_replies(&want, &want), Ok(()));
        // Text echoed as binary (same bytes) is a different frame.
        let as_binary = vec![
            Frame::BinaryBytes(b"Websocket Support!".to_vec()),
            want[1].clone(),
        ];
        let why = check_replies(&want, &as_binary).expect_err("kind differs");
        assert!(why.starts_with("reply 1:"), "{why}");
        let why = check_replies(&want, &want[..1]).expect_err("one missing");
        assert!(why.starts_with("reply 2: missing"), "{why}");
        let mut extra = want.clone();
        extra.push(Frame::Text(String::new()));
        assert!(check_replies(&want, &extra).is_err());
    }

    #[test]
    fn handshake_request_carries_host_and_origin() {
        let request =
            handshake_request("127.0.100.1", "/ws", "127.0.100.1", Some("ws://gateway/x"))
                .expect("request");
        assert_eq!(request.uri(), "ws://127.0.100.1/ws");
        assert_eq!(request.headers()[header::HOST], "127.0.100.1");
        assert_eq!(request.headers()[header::ORIGIN], "ws://gateway/x");
        assert_eq!(request.headers()[header::UPGRADE], "websocket");
        let request =
            handshake_request("127.0.100.1:8080", "/ws", "example.com", None).expect("request");
        assert_eq!(request.headers()[header::HOST], "example.com");
        assert!(request.headers().get(header::ORIGIN).is_none());
        assert!(handshake_request("127.0.0.1", "/ws", "bad\nhost", None).is_err());
    }
}
