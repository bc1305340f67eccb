//! WebSockets (HTTP/1.1 Upgrade) through the gateway: echo over plain and TLS sockets, close,
//! refused handshakes, tunnels that outlive timeouts and reloads, h2c backends, and the
//! upgrades that are not WebSockets.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dataplane::Options;
use futures_util::StreamExt;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use ir::{BackendProtocol, PathMatch, Timeouts};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::{Error, Message};

use crate::support::tls::{Authority, Hello, https_listener};
use crate::support::websocket::{
    EchoUpstream, ORIGIN, connect, open, refusing_upstream, round_trip,
};
use crate::support::{
    Answer, Gateway, PATIENCE, Upstream, backend, config, everything_to, forward, listener, read,
    route, unused_port, weighted,
};

/// `/ws` to the WebSocket echo at `ws`, `/refused` to `refused`, everything else to `plain`.
fn routes(ws: SocketAddr, refused: SocketAddr, plain: &Upstream) -> Vec<ir::Candidate> {
    let ws = forward(
        "ws",
        vec![weighted(1, backend("ws", BackendProtocol::Http1, &[ws]))],
    );
    let refused = forward(
        "refused",
        vec![weighted(
            1,
            backend("refused", BackendProtocol::Http1, &[refused]),
        )],
    );
    let plain = forward("plain", vec![weighted(1, plain.backend())]);
    vec![
        route(None, PathMatch::prefix("/ws"), ws),
        route(None, PathMatch::prefix("/refused"), refused),
        route(None, PathMatch::prefix("/"), plain),
    ]
}

/// A gateway serving [`routes`] on a plain socket, with its upstreams.
async fn gateway() -> (Gateway, EchoUpstream, Upstream) {
    let ws = EchoUpstream::start().await;
    let plain = Upstream::echo("plain").await;
    let refused = refusing_upstream().await;
    let routes = routes(ws.addr, refused, &plain);
    let gateway = Gateway::start(config(vec![listener(None, routes)])).await;
    (gateway, ws, plain)
}

#[tokio::test]
async fn text_and_binary_messages_echo_until_close() {
    let (gateway, mut upstream, _) = gateway().await;

    let (mut ws, headers) = connect(gateway.addr, "example.com", "/ws")
        .await
        .expect("handshake through the gateway");
    // Connection and Upgrade reach the client with the 101, though both are hop-by-hop.
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(
        header("upgrade").map(str::to_ascii_lowercase).as_deref(),
        Some("websocket")
    );
    assert!(header("sec-websocket-accept").is_some());

    let seen = upstream.next_handshake().await;
    let header = |name: &str| seen.get(name).and_then(|v| v.to_str().ok());
    assert_eq!(header("origin"), Some(ORIGIN));
    assert_eq!(header("host"), Some("example.com"));
    assert_eq!(header("upgrade"), Some("websocket"));
    assert_eq!(header("connection"), Some("upgrade"));
    assert_eq!(header("x-forwarded-for"), Some("127.0.0.1"));

    let text = round_trip(&mut ws, Message::text("hello, gateway")).await;
    assert_eq!(text, Message::text("hello, gateway"));
    let binary = Message::binary(Bytes::from_static(&[0, 1, 2, 254, 255]));
    assert_eq!(round_trip(&mut ws, binary.clone()).await, binary);

    ws.close(None).await.expect("send close");
    let reply = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("close answered in time");
    assert!(
        matches!(reply, Some(Ok(Message::Close(_))) | None),
        "{reply:?}"
    );
}

#[tokio::test]
async fn refused_handshake_passes_the_403_through() {
    let (gateway, _, _) = gateway().await;

    let refused = connect(gateway.addr, "example.com", "/refused").await;
    let Err(Error::Http(response)) = refused else {
        panic!("expected an HTTP answer, got {refused:?}");
    };
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        response.body().as_deref(),
        Some(&b"no sockets\n"[..]),
        "the backend's own body"
    );
}

#[tokio::test]
async fn plain_requests_share_the_connection_with_a_refused_handshake() {
    let (gateway, _, _) = gateway().await;
    let stream = TcpStream::connect(gateway.addr)
        .await
        .expect("connect to gateway");
    let (mut sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1.1 handshake");
    tokio::spawn(connection.with_upgrades());

    let mut exchange = async |target: &str, upgrade: bool| -> Answer {
        let mut request = Request::builder().uri(target).header("host", "example.com");
        if upgrade {
            request = request
                .header("connection", "Upgrade")
                .header("upgrade", "websocket")
                .header("sec-websocket-version", "13")
                .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
        }
        let request = request
            .body(Full::<Bytes>::default())
            .expect("valid request");
        let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
            .await
            .expect("answered in time")
            .expect("answered");
        read(response).await
    };
    assert_eq!(exchange("/before", false).await.status, StatusCode::OK);
    assert_eq!(
        exchange("/refused", true).await.status,
        StatusCode::FORBIDDEN
    );
    let after = exchange("/after", false).await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(after.echoed()["path"], "/after");
}

#[tokio::test]
async fn other_upgrades_are_removed_as_hop_by_hop_headers() {
    let upstream = Upstream::echo("plain").await;
    let gateway = Gateway::start(everything_to(&upstream)).await;

    let request = crate::support::request("GET", "example.com", "/h2c")
        .header("connection", "Upgrade, HTTP2-Settings")
        .header("upgrade", "h2c")
        .header("http2-settings", "AAMAAABkAAQAAP__")
        .body(Full::default());
    let answer = crate::support::send(gateway.addr, request).await;
    assert_eq!(answer.status, StatusCode::OK);
    let headers = &answer.echoed()["headers"];
    for hop in ["connection", "upgrade", "http2-settings"] {
        assert!(headers.get(hop).is_none(), "{hop} reached the backend");
    }
}

#[tokio::test]
async fn websockets_work_over_tls() {
    let upstream = EchoUpstream::start().await;
    let pki = Authority::new();
    let leaf = pki.issue(&["ws.example.com"]);
    let rule = forward(
        "ws",
        vec![weighted(
            1,
            backend("ws", BackendProtocol::Http1, &[upstream.addr]),
        )],
    );
    let routes = vec![route(None, PathMatch::prefix("/"), rule)];
    let listener = https_listener(Some("ws.example.com"), &leaf, routes);
    let gateway = Gateway::start(config(vec![listener])).await;

    let tls = pki
        .handshake(gateway.addr, Hello::http1("ws.example.com"))
        .await
        .expect("TLS handshake");
    let (mut ws, _) = open(tls, "ws.example.com", "/ws")
        .await
        .expect("handshake through the gateway");
    let text = round_trip(&mut ws, Message::text("over TLS")).await;
    assert_eq!(text, Message::text("over TLS"));
}

#[tokio::test]
async fn open_tunnels_outlive_request_timeouts_and_reloads() {
    let upstream = EchoUpstream::start().await;
    let mut rule = forward(
        "ws",
        vec![weighted(
            1,
            backend("ws", BackendProtocol::Http1, &[upstream.addr]),
        )],
    );
    // Both timeouts cover the handshake only; the tunnel stays open past them.
    let limit = Duration::from_millis(200);
    rule.timeouts = Timeouts {
        request: Some(limit),
        backend_request: Some(limit),
    };
    let routes = vec![route(None, PathMatch::prefix("/"), rule)];
    let gateway = Gateway::start(config(vec![listener(None, routes)])).await;
    let (mut ws, _) = connect(gateway.addr, "example.com", "/ws")
        .await
        .expect("handshake through the gateway");
    assert_eq!(
        round_trip(&mut ws, Message::text("one")).await,
        Message::text("one")
    );

    let replacement = Upstream::echo("replacement").await;
    let failures = gateway
        .dataplane
        .apply(Arc::new(everything_to(&replacement)))
        .await;
    assert!(failures.is_empty());
    // New requests follow the new config...
    let answer = gateway.get("example.com", "/ws").await;
    assert_eq!(answer.echoed()["backend"], "replacement");
    // ...while the open tunnel, now older than both timeouts, keeps its backend.
    tokio::time::sleep(limit * 2).await;
    assert_eq!(
        round_trip(&mut ws, Message::text("two")).await,
        Message::text("two")
    );
}

#[tokio::test]
async fn h2c_backends_get_the_handshake_over_http1() {
    let upstream = EchoUpstream::start().await;
    let rule = forward(
        "ws",
        vec![weighted(
            1,
            backend("ws", BackendProtocol::H2c, &[upstream.addr]),
        )],
    );
    let routes = vec![route(None, PathMatch::prefix("/"), rule)];
    let gateway = Gateway::start(config(vec![listener(None, routes)])).await;

    let (mut ws, _) = connect(gateway.addr, "example.com", "/ws")
        .await
        .expect("handshake through the gateway");
    let binary = Message::binary(Bytes::from_static(b"\x00h2c\xff"));
    assert_eq!(round_trip(&mut ws, binary.clone()).await, binary);
}

#[tokio::test]
async fn unreachable_backend_is_503_before_any_switch() {
    let closed = SocketAddr::from(([127, 0, 0, 1], unused_port()));
    let rule = forward(
        "ws",
        vec![weighted(
            1,
            backend("ws", BackendProtocol::Http1, &[closed]),
        )],
    );
    let routes = vec![route(None, PathMatch::prefix("/"), rule)];
    let gateway = Gateway::start(config(vec![listener(None, routes)])).await;

    let refused = connect(gateway.addr, "example.com", "/ws").await;
    let Err(Error::Http(response)) = refused else {
        panic!("expected an HTTP answer, got {refused:?}");
    };
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_removed_socket_keeps_its_tunnels_until_the_drain_limit() {
    let upstream = EchoUpstream::start().await;
    let rule = forward(
        "ws",
        vec![weighted(
            1,
            backend("ws", BackendProtocol::Http1, &[upstream.addr]),
        )],
    );
    let routes = vec![route(None, PathMatch::prefix("/"), rule)];
    let options = Options {
        drain_timeout: Duration::from_secs(1),
        ..Options::default()
    };
    let gateway = Gateway::with_options(options, config(vec![listener(None, routes)])).await;
    let (mut ws, _) = connect(gateway.addr, "example.com", "/ws")
        .await
        .expect("handshake through the gateway");

    let failures = gateway
        .dataplane
        .apply(Arc::new(ir::Config::default()))
        .await;
    assert!(failures.is_empty(), "{failures:?}");
    // A WebSocket cannot be asked to close the way an HTTP connection can; it goes on...
    assert_eq!(
        round_trip(&mut ws, Message::text("while draining")).await,
        Message::text("while draining")
    );
    // ...until the drain limit ends it.
    let ended = tokio::time::timeout(PATIENCE, ws.next())
        .await
        .expect("the drain limit did not apply");
    assert!(!matches!(ended, Some(Ok(Message::Text(_)))), "{ended:?}");
}
