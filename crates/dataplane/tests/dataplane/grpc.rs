//! gRPC calls through the gateway: backends' trailers reach the client, the gateway's own
//! errors end calls with Trailers-Only answers, and weights apply per call.

use std::collections::HashMap;
use std::time::Duration;

use http::StatusCode;
use ir::{Action, BackendProtocol, BackendTarget, InvalidBackend, PathMatch, WeightedBackend};

use crate::support::grpc::{GrpcClient, GrpcUpstream, message};
use crate::support::tls::{Authority, H2, Hello, https_listener};
use crate::support::{
    Gateway, backend, config, forward, listener, route, rule, unused_port, weighted,
};

const HOST: &str = "grpc.example.com";
/// `timeouts.request` of the `/slow.Service/` rule; its upstream takes far longer.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(200);

/// A gateway for [`HOST`] with a working service and one service per way to fail:
/// `/ok.Service/`, `/empty.Service/` (no endpoints), `/refused.Service/`, `/invalid.Service/`
/// (an invalid backendRef), `/broken.Service/` (an invalid rule) and `/slow.Service/`.
struct Failures {
    gateway: Gateway,
    _ok: GrpcUpstream,
    _slow: GrpcUpstream,
}

impl Failures {
    async fn start() -> Self {
        let ok = GrpcUpstream::start("ok").await;
        let slow = GrpcUpstream::slow("slow", Duration::from_secs(30)).await;
        let empty = backend("default/empty:50051", BackendProtocol::H2c, &[]);
        let refused_addr = ([127, 0, 0, 1], unused_port()).into();
        let refusing = backend(
            "default/refusing:50051",
            BackendProtocol::H2c,
            &[refused_addr],
        );
        let invalid = WeightedBackend {
            weight: 1,
            target: BackendTarget::Invalid(InvalidBackend {
                reference: "default/missing:50051".into(),
                reason: "BackendNotFound".into(),
            }),
            request_headers: None,
            response_headers: None,
        };
        let mut timed = forward("slow", vec![weighted(1, slow.backend())]);
        timed.timeouts.request = Some(REQUEST_TIMEOUT);
        let broken = rule("broken", Action::Invalid("unsupported filter".into()));
        let service = |name: &str, rule| route(None, PathMatch::prefix(&format!("/{name}/")), rule);
        let routes = vec![
            service("ok.Service", forward("ok", vec![weighted(1, ok.backend())])),
            service("empty.Service", forward("empty", vec![weighted(1, empty)])),
            service(
                "refused.Service",
                forward("refused", vec![weighted(1, refusing)]),
            ),
            service("invalid.Service", forward("invalid", vec![invalid])),
            service("broken.Service", broken),
            service("slow.Service", timed),
        ];
        let gateway = Gateway::start(config(vec![listener(Some(HOST), routes)])).await;
        Self {
            gateway,
            _ok: ok,
            _slow: slow,
        }
    }

    async fn client(&self) -> GrpcClient {
        GrpcClient::h2c(self.gateway.addr).await
    }
}

#[tokio::test]
async fn backend_trailers_reach_h2c_clients() {
    let failures = Failures::start().await;
    let mut client = failures.client().await;

    let answer = client.call(HOST, "/ok.Service/Get").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, message(b"ok"));
    assert!(!answer.ended_with_headers);
    assert_eq!(answer.trailer("grpc-status"), Some("0"));
    assert_eq!(answer.trailer("grpc-message"), Some("fine"));
    assert_eq!(answer.trailer("x-served-by"), Some("ok"));
    // The status travels in the trailers only.
    assert_eq!(answer.header("grpc-status"), None);
    assert_eq!(answer.header("x-seen-te"), Some("trailers"));
}

#[tokio::test]
async fn backend_trailers_reach_h2_clients_over_tls() {
    let upstream = GrpcUpstream::start("tls").await;
    let pki = Authority::new();
    let leaf = pki.issue(&[HOST]);
    let routes = vec![route(
        None,
        PathMatch::prefix("/"),
        forward("tls", vec![weighted(1, upstream.backend())]),
    )];
    let gateway = Gateway::start(config(vec![https_listener(Some(HOST), &leaf, routes)])).await;
    let hello = Hello {
        server_name: HOST,
        sni: true,
        alpn: &[H2],
    };
    let stream = pki.handshake(gateway.addr, hello).await.expect("handshake");
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(H2));
    let mut client = GrpcClient::over(stream, "https").await;

    let answer = client.call(HOST, "/tls.Service/Get").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.body, message(b"tls"));
    assert_eq!(answer.trailer("grpc-status"), Some("0"));
    assert_eq!(answer.trailer("x-served-by"), Some("tls"));
}

#[tokio::test]
async fn backend_trailers_only_answer_stays_trailers_only() {
    let failures = Failures::start().await;
    let mut client = failures.client().await;

    let answer = client.call(HOST, "/ok.Service/Fail").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.header("grpc-status"), Some("5"));
    assert_eq!(answer.header("grpc-message"), Some("no%20such%20thing"));
    assert!(answer.ended_with_headers, "{answer:?}");
    assert!(answer.body.is_empty());
    assert!(answer.trailers.is_none());
}

#[tokio::test]
async fn unrouted_calls_get_unimplemented() {
    let failures = Failures::start().await;
    let mut client = failures.client().await;

    let no_route = client.call(HOST, "/other.Service/Get").await;
    no_route.assert_trailers_only("12");
    assert_eq!(no_route.header("grpc-message"), Some("404 Not Found"));
    let no_listener = client.call("other.example.com", "/ok.Service/Get").await;
    no_listener.assert_trailers_only("12");
    // The connection is still good for the next call.
    let ok = client.call(HOST, "/ok.Service/Get").await;
    assert_eq!(ok.trailer("grpc-status"), Some("0"));
}

#[tokio::test]
async fn calls_to_unusable_backends_get_unavailable() {
    let failures = Failures::start().await;
    let mut client = failures.client().await;

    for path in [
        "/empty.Service/Get",
        "/refused.Service/Get",
        // GRPCRoute: an invalid backendRef gets UNAVAILABLE, where HTTPRoute says 500.
        "/invalid.Service/Get",
    ] {
        let answer = client.call(HOST, path).await;
        answer.assert_trailers_only("14");
    }
    let empty = client.call(HOST, "/empty.Service/Get").await;
    assert_eq!(
        empty.header("grpc-message"),
        Some("503 Service Unavailable")
    );
}

#[tokio::test]
async fn calls_on_invalid_rules_get_internal() {
    let failures = Failures::start().await;
    let mut client = failures.client().await;

    let answer = client.call(HOST, "/broken.Service/Get").await;
    answer.assert_trailers_only("13");
    assert_eq!(
        answer.header("grpc-message"),
        Some("500 Internal Server Error")
    );
}

#[tokio::test]
async fn calls_past_the_request_timeout_get_deadline_exceeded() {
    let failures = Failures::start().await;
    let mut client = failures.client().await;

    let answer = client.call(HOST, "/slow.Service/Get").await;
    answer.assert_trailers_only("4");
    assert_eq!(answer.header("grpc-message"), Some("504 Gateway Timeout"));
}

#[tokio::test]
async fn other_content_types_keep_http_statuses() {
    let failures = Failures::start().await;
    let mut client = failures.client().await;

    let cases = [
        ("/other.Service/Get", StatusCode::NOT_FOUND),
        ("/empty.Service/Get", StatusCode::SERVICE_UNAVAILABLE),
        ("/invalid.Service/Get", StatusCode::INTERNAL_SERVER_ERROR),
        ("/broken.Service/Get", StatusCode::INTERNAL_SERVER_ERROR),
        ("/slow.Service/Get", StatusCode::GATEWAY_TIMEOUT),
    ];
    // gRPC-Web and anything else that is not `application/grpc` is plain HTTP.
    for content_type in ["application/json", "application/grpc-web+proto"] {
        for (path, status) in cases {
            let answer = client.send(HOST, path, content_type).await;
            assert_eq!(answer.status, status, "{content_type} {path}");
            assert_eq!(answer.header("grpc-status"), None, "{content_type} {path}");
            assert_eq!(
                answer.header("content-type"),
                Some("text/plain; charset=utf-8"),
                "{content_type} {path}"
            );
        }
    }
}

#[tokio::test]
async fn weights_apply_per_call_on_one_connection() {
    let light = GrpcUpstream::start("light").await;
    let heavy = GrpcUpstream::start("heavy").await;
    let split = forward(
        "split",
        vec![weighted(40, light.backend()), weighted(60, heavy.backend())],
    );
    let routes = vec![route(None, PathMatch::prefix("/"), split)];
    let gateway = Gateway::start(config(vec![listener(None, routes)])).await;
    // One HTTP/2 connection carries every call, as a gRPC channel does.
    let mut client = GrpcClient::h2c(gateway.addr).await;

    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..400 {
        let answer = client.call(HOST, "/split.Service/Get").await;
        assert_eq!(answer.trailer("grpc-status"), Some("0"), "{answer:?}");
        let name = answer.trailer("x-served-by").unwrap_or("?").to_string();
        *counts.entry(name).or_default() += 1;
    }
    let light = counts.get("light").copied().unwrap_or(0);
    let heavy = counts.get("heavy").copied().unwrap_or(0);
    assert_eq!(light + heavy, 400, "{counts:?}");
    // Expected 160/240 (standard deviation about 9.8); the bounds are six deviations wide.
    assert!((101..=219).contains(&light), "{counts:?}");
}
