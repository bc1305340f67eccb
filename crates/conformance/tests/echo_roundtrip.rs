//! Self-test of the echo backend (including the WebSocket echo on `/ws`), the client and the
//! expectation comparison, with real sockets on loopback and no portcullis: the client talks
//! to a backend pod directly, as if the Gateway were a perfect pass-through.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use conformance::backends::{AddressAllocator, Backends, H2C_PORT, HTTP_PORT, Pod};
use conformance::case::HttpExpect;
use conformance::client::{self, Outgoing, Protocol, Reply};
use conformance::expect::{self, EchoReply, RequestUrl};
use conformance::manifests::{Manifests, parse_documents};
use conformance::tls::Keyring;
use conformance::websocket_cases::{self, Frame, check_replies, handshake_request};

const DEPLOYMENT: &str = "
kind: Deployment
metadata: {name: selftest-echo, namespace: selftest}
spec:
  replicas: 2
  template:
    metadata: {labels: {app: selftest-echo}}
    spec: {containers: [{name: echo, image: echo-basic}]}
";

/// Starts the deployment's pods from `127.0.203.<first>`: the top of the backend range, away
/// from the addresses a concurrent run hands out. Each test uses its own addresses.
async fn start(first: u8) -> (Backends, Ipv4Addr) {
    let mut manifests = Manifests::default();
    for doc in parse_documents(DEPLOYMENT).expect("valid yaml") {
        manifests.upsert(doc).expect("named document");
    }
    let mut addresses = AddressAllocator::starting_at(Ipv4Addr::new(127, 0, 203, first));
    let pods = Pod::plan_all(&manifests, &mut addresses, &mut rand::rng()).expect("plan");
    let address = pods[0].address;
    (
        Backends::start(pods, &Keyring::default())
            .await
            .expect("backends start"),
        address,
    )
}

fn request(protocol: Protocol, target: &str, headers: &[(&str, &str)]) -> Outgoing {
    Outgoing {
        protocol,
        method: "GET".to_owned(),
        target: target.to_owned(),
        host: "example.com".to_owned(),
        headers: headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        tls: None,
    }
}

async fn send(address: Ipv4Addr, port: u16, outgoing: &Outgoing) -> Reply {
    client::exchange(
        SocketAddr::from((address, port)),
        outgoing,
        false,
        Duration::from_secs(10),
    )
    .await
    .expect("the echo answers")
}

fn url() -> RequestUrl {
    RequestUrl {
        scheme: "http".into(),
        host: "127.0.203.200".into(),
        port: None,
    }
}

#[tokio::test]
async fn echo_answers_like_echo_basic() {
    let (backends, address) = start(200).await;
    let started = Instant::now();

    let outgoing = request(
        Protocol::Http1,
        "/v2/example?x=1",
        &[
            ("x-header-set", "a"),
            ("X-Echo-Set-Header", "X-Out:1,X-Out:2"),
        ],
    );
    let reply = send(address, HTTP_PORT, &outgoing).await;
    let expect: HttpExpect = serde_yaml_ng::from_str(
        "status: [200]\nbackend: selftest-echo\nnamespace: selftest\n\
         backend_request: {method: GET, path: '/v2/example?x=1', host: example.com, headers: {X-Header-Set: a}}\n\
         response_headers: {X-Out: '1,2', X-Content-Type-Options: nosniff}\n",
    )
    .expect("valid expect");
    assert_eq!(expect::compare(&expect, "GET", &url(), &reply), Ok(()));
    let echo = EchoReply::from_reply(&reply, "GET").expect("echo json");
    assert_eq!(expect::backend_name(&echo.pod), "selftest-echo");
    let body = String::from_utf8_lossy(&reply.body);
    assert!(body.starts_with("{\n \"path\""), "indented like Go: {body}");
    assert!(
        body.contains("\"proto\": \"HTTP/1.1\"") && body.contains("\"httpPort\": \"3000\""),
        "{body}"
    );

    let log = backends
        .log("selftest", "selftest-echo")
        .expect("deployment log");
    assert_eq!(log.count_since("/v2/example?x=1", started), 1);
}

#[tokio::test]
async fn status_health_and_delay_paths() {
    let (_backends, address) = start(210).await;
    let teapot = send(
        address,
        HTTP_PORT,
        &request(Protocol::Http1, "/status/418", &[]),
    )
    .await;
    assert_eq!((teapot.status, teapot.body.len()), (418, 0));
    let health = send(
        address,
        HTTP_PORT,
        &request(Protocol::Http1, "/health", &[]),
    )
    .await;
    assert_eq!((health.status, &health.body[..]), (200, &b"OK"[..]));

    let started = Instant::now();
    let delayed = send(
        address,
        HTTP_PORT,
        &request(Protocol::Http1, "/slow?delay=300ms", &[]),
    )
    .await;
    assert_eq!(delayed.status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn h2c_port_speaks_prior_knowledge_http2_only() {
    let (_backends, address) = start(220).await;
    let reply = send(
        address,
        H2C_PORT,
        &request(Protocol::H2cPriorKnowledge, "/h2?y=2", &[]),
    )
    .await;
    let echo = EchoReply::from_reply(&reply, "GET").expect("echo json");
    assert_eq!(
        (echo.host.as_str(), echo.path.as_str()),
        ("example.com", "/h2?y=2")
    );
    assert!(String::from_utf8_lossy(&reply.body).contains("\"proto\": \"HTTP/2.0\""));

    let refused = send(address, H2C_PORT, &request(Protocol::Http1, "/", &[])).await;
    assert_eq!(
        (refused.status, &refused.body[..]),
        (400, &b"Expected h2c request"[..])
    );
}

#[tokio::test]
async fn ws_path_echoes_text_and_binary_frames() {
    let (_backends, address) = start(230).await;
    let target = SocketAddr::from((address, HTTP_PORT));
    let frames = vec![
        Frame::Text("Websocket Support!".to_owned()),
        Frame::BinaryBytes(vec![1, 2, 3, 4, 5, 6, 7]),
    ];
    let authority = target.to_string();
    for _ in 0..2 {
        let handshake =
            handshake_request(&authority, "/ws", &authority, Some("ws://gateway/selftest"))
                .expect("request");
        let received = websocket_cases::session(target, handshake, &frames)
            .await
            .expect("a WebSocket session with the echo");
        assert_eq!(check_replies(&frames, &received), Ok(()));
    }

    // A plain GET of /ws is not a handshake, and other paths still echo on that port.
    let plain = send(address, HTTP_PORT, &request(Protocol::Http1, "/ws", &[])).await;
    assert_eq!(plain.status, 400);
    let echo = send(address, HTTP_PORT, &request(Protocol::Http1, "/after", &[])).await;
    assert_eq!(echo.status, 200);
}
