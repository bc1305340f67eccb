//! Route selection and backend choice as a client sees them: statuses and which upstream
//! answered.

use std::collections::HashMap;

use http::StatusCode;
use http_body_util::Full;
use ir::{Action, BackendProtocol, BackendTarget, InvalidBackend, PathMatch, WeightedBackend};

use crate::support::{
    Gateway, Upstream, backend, config, forward, listener, request, route, rule, send, unused_port,
    weighted,
};

#[tokio::test]
async fn routes_by_host_and_path() {
    let foo_a = Upstream::echo("foo-a").await;
    let foo_b = Upstream::echo("foo-b").await;
    let bar = Upstream::echo("bar").await;
    let other = Upstream::echo("other").await;
    let foo = listener(
        Some("foo.example.com"),
        vec![
            route(
                None,
                PathMatch::prefix("/a"),
                forward("a", vec![weighted(1, foo_a.backend())]),
            ),
            route(
                None,
                PathMatch::Exact("/b".into()),
                forward("b", vec![weighted(1, foo_b.backend())]),
            ),
        ],
    );
    let any = listener(
        None,
        vec![
            route(
                Some("bar.example.com"),
                PathMatch::prefix("/"),
                forward("bar", vec![weighted(1, bar.backend())]),
            ),
            route(
                None,
                PathMatch::prefix("/"),
                forward("other", vec![weighted(1, other.backend())]),
            ),
        ],
    );
    let gateway = Gateway::start(config(vec![foo, any])).await;

    let cases = [
        ("foo.example.com", "/a", "foo-a"),
        ("FOO.example.com:80", "/a/deeper?x=1", "foo-a"),
        ("foo.example.com", "/b", "foo-b"),
        ("bar.example.com", "/anything", "bar"),
        ("else.example.com", "/a", "other"),
    ];
    for (host, target, expected) in cases {
        let answer = gateway.get(host, target).await;
        assert_eq!(answer.status, StatusCode::OK, "{host}{target}");
        assert_eq!(answer.echoed()["backend"], expected, "{host}{target}");
        assert_eq!(answer.echoed()["path"], target, "{host}{target}");
    }
}

#[tokio::test]
async fn no_listener_or_no_route_is_404() {
    let upstream = Upstream::echo("a").await;
    let foo = listener(
        Some("foo.example.com"),
        vec![route(
            None,
            PathMatch::Exact("/only".into()),
            forward("only", vec![weighted(1, upstream.backend())]),
        )],
    );
    let gateway = Gateway::start(config(vec![foo])).await;

    assert_eq!(
        gateway.get("foo.example.com", "/only").await.status,
        StatusCode::OK
    );
    // Exact means exact: neither a longer path nor another host matches.
    assert_eq!(
        gateway.get("foo.example.com", "/only/more").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        gateway.get("bar.example.com", "/only").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn weights_split_traffic_and_zero_is_never_chosen() {
    let heavy = Upstream::echo("heavy").await;
    let light = Upstream::echo("light").await;
    let never = Upstream::echo("never").await;
    let split = forward(
        "split",
        vec![
            weighted(3, heavy.backend()),
            weighted(1, light.backend()),
            weighted(0, never.backend()),
        ],
    );
    let gateway = Gateway::start(config(vec![listener(
        None,
        vec![route(None, PathMatch::prefix("/"), split)],
    )]))
    .await;

    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..400 {
        let answer = gateway.get("example.com", "/").await;
        let name = answer.echoed()["backend"]
            .as_str()
            .unwrap_or("?")
            .to_string();
        *counts.entry(name).or_default() += 1;
    }
    let heavy = counts.get("heavy").copied().unwrap_or(0);
    let light = counts.get("light").copied().unwrap_or(0);
    assert_eq!(heavy + light, 400, "{counts:?}");
    // Expected 300/100; the bounds are over six standard deviations wide.
    assert!((240..=360).contains(&heavy), "{counts:?}");
    assert!(!counts.contains_key("never"), "{counts:?}");
}

#[tokio::test]
async fn invalid_rules_and_backends_are_500() {
    let upstream = Upstream::echo("valid").await;
    let invalid = WeightedBackend {
        weight: 1,
        target: BackendTarget::Invalid(InvalidBackend {
            reference: "default/missing:80".into(),
            reason: "BackendNotFound".into(),
        }),
        request_headers: None,
        response_headers: None,
    };
    let routes = vec![
        route(
            None,
            PathMatch::prefix("/invalid-backend"),
            forward("invalid-backend", vec![invalid]),
        ),
        route(
            None,
            PathMatch::prefix("/zero"),
            forward("zero", vec![weighted(0, upstream.backend())]),
        ),
        route(
            None,
            PathMatch::prefix("/no-backends"),
            forward("no-backends", vec![]),
        ),
        route(
            None,
            PathMatch::prefix("/invalid-rule"),
            rule("invalid-rule", Action::Invalid("unsupported filter".into())),
        ),
    ];
    let gateway = Gateway::start(config(vec![listener(None, routes)])).await;

    for target in ["/invalid-backend", "/zero", "/no-backends", "/invalid-rule"] {
        let answer = gateway.get("example.com", target).await;
        assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR, "{target}");
    }
}

#[tokio::test]
async fn missing_or_refusing_endpoints_are_503() {
    let empty = backend("default/empty:80", BackendProtocol::Http1, &[]);
    let refused_addr = ([127, 0, 0, 1], unused_port()).into();
    let refusing = backend(
        "default/refusing:80",
        BackendProtocol::Http1,
        &[refused_addr],
    );
    let routes = vec![
        route(
            None,
            PathMatch::prefix("/empty"),
            forward("empty", vec![weighted(1, empty)]),
        ),
        route(
            None,
            PathMatch::prefix("/refused"),
            forward("refused", vec![weighted(1, refusing)]),
        ),
    ];
    let gateway = Gateway::start(config(vec![listener(None, routes)])).await;

    let empty = gateway.get("example.com", "/empty").await;
    assert_eq!(empty.status, StatusCode::SERVICE_UNAVAILABLE);
    let refused = gateway.get("example.com", "/refused").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn h2c_backends_get_http2_and_endpoints_rotate() {
    let one = Upstream::echo("one").await;
    let two = Upstream::echo("two").await;
    let both = backend(
        "default/h2c:80",
        BackendProtocol::H2c,
        &[one.addr, two.addr],
    );
    // Round robin, so that the rotation over one multiplexed connection per endpoint shows.
    let options = dataplane::Options {
        load_balancer: dataplane::LoadBalancer::RoundRobin,
        ..dataplane::Options::default()
    };
    let routes = vec![route(
        None,
        PathMatch::prefix("/"),
        forward("h2c", vec![weighted(1, both)]),
    )];
    let gateway = Gateway::with_options(options, config(vec![listener(None, routes)])).await;

    let mut seen = Vec::new();
    for _ in 0..4 {
        let sent = request("POST", "example.com", "/grpc-ish")
            .header("te", "trailers")
            .body(Full::default());
        let answer = send(gateway.addr, sent).await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.echoed()["version"], "HTTP/2.0");
        // gRPC needs `TE: trailers`, which HTTP/2 allows through.
        assert_eq!(answer.echoed()["headers"]["te"][0], "trailers");
        seen.push(
            answer.echoed()["backend"]
                .as_str()
                .unwrap_or("?")
                .to_string(),
        );
    }
    assert_eq!(seen, ["one", "two", "one", "two"]);
}
