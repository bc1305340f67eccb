//! The `CORS` filter over real sockets: preflights answered by the gateway (the upstream never
//! sees them), actual requests forwarded and their responses decorated.

use http::StatusCode;
use http_body_util::Full;
use ir::{Cors, CorsList, OriginPattern, PathMatch};

use crate::support::weighted;
use crate::support::{Answer, Gateway, Upstream, config, forward, listener, request, route, send};

fn list(names: &[&str]) -> CorsList {
    let names: Vec<String> = names.iter().map(ToString::to_string).collect();
    CorsList::new(&names).expect("valid list")
}

/// `cors-multiple-origins-methods-headers` of the conformance suite.
fn listed() -> Cors {
    Cors {
        allow_origins: ["https://www.foo.com", "https://*.bar.com"]
            .iter()
            .map(|origin| OriginPattern::parse(origin).expect("valid origin"))
            .collect(),
        allow_methods: list(&["GET", "OPTIONS"]),
        allow_headers: list(&["x-header-1", "x-header-2"]),
        expose_headers: list(&["x-header-3", "x-header-4"]),
        max_age: 3600,
        allow_credentials: true,
    }
}

/// Everything `*`, with or without credentials.
fn wildcards(allow_credentials: bool) -> Cors {
    Cors {
        allow_origins: vec![OriginPattern::Any],
        allow_methods: list(&["*"]),
        allow_headers: list(&["*"]),
        expose_headers: CorsList::Unset,
        max_age: 5,
        allow_credentials,
    }
}

async fn gateway(upstream: &Upstream, filters: Vec<(&'static str, Cors)>) -> Gateway {
    let routes = filters
        .into_iter()
        .map(|(prefix, cors)| {
            let mut rule = forward(prefix, vec![weighted(1, upstream.backend())]);
            rule.filters.cors = Some(Box::new(cors));
            route(None, PathMatch::prefix(prefix), rule)
        })
        .collect();
    Gateway::start(config(vec![listener(None, routes)])).await
}

async fn preflight(gateway: &Gateway, path: &str, origin: &str, method: &str) -> Answer {
    let sent = request("OPTIONS", "example.com", path)
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header("access-control-request-headers", "x-header-1, x-header-2")
        .body(Full::default());
    send(gateway.addr, sent).await
}

async fn actual(gateway: &Gateway, path: &str, origin: &str) -> Answer {
    let sent = request("GET", "example.com", path)
        .header("origin", origin)
        .header("cookie", "sid=abc")
        .body(Full::default());
    send(gateway.addr, sent).await
}

#[tokio::test]
async fn allowed_preflight_is_answered_by_the_gateway() {
    let mut upstream = Upstream::echo("cors").await;
    let gateway = gateway(&upstream, vec![("/cors", listed())]).await;

    for origin in ["https://www.foo.com", "https://xpto.www.bar.com"] {
        let answer = preflight(&gateway, "/cors", origin, "GET").await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT, "{origin}");
        assert!(answer.body.is_empty());
        assert_eq!(answer.header("access-control-allow-origin"), Some(origin));
        assert_eq!(
            answer.header("access-control-allow-methods"),
            Some("GET, OPTIONS")
        );
        assert_eq!(
            answer.header("access-control-allow-headers"),
            Some("x-header-1, x-header-2")
        );
        assert_eq!(
            answer.header("access-control-expose-headers"),
            Some("x-header-3, x-header-4")
        );
        assert_eq!(answer.header("access-control-max-age"), Some("3600"));
        assert_eq!(
            answer.header("access-control-allow-credentials"),
            Some("true")
        );
        assert_eq!(answer.header("vary"), Some("Origin"));
    }
    // The upstream saw none of them: the next request it gets is this one.
    let _ = actual(&gateway, "/cors", "https://www.foo.com").await;
    assert_eq!(upstream.next_request().await["method"], "GET");
}

#[tokio::test]
async fn denied_preflight_has_no_cors_headers() {
    let mut upstream = Upstream::echo("cors").await;
    let gateway = gateway(&upstream, vec![("/cors", listed())]).await;

    let cases = [
        ("https://foobar.com", "GET"),
        ("https://bar.com", "GET"),
        ("http://www.foo.com", "GET"),
        ("https://www.foo.com", "DELETE"),
    ];
    for (origin, method) in cases {
        let answer = preflight(&gateway, "/cors", origin, method).await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT, "{origin} {method}");
        let cors_headers = answer
            .headers
            .keys()
            .filter(|name| name.as_str().starts_with("access-control-"))
            .count();
        assert_eq!(cors_headers, 0, "{origin} {method}");
    }
    let _ = actual(&gateway, "/cors", "https://foobar.com").await;
    assert_eq!(upstream.next_request().await["method"], "GET");
}

#[tokio::test]
async fn wildcard_origin_echoes_the_origin_and_the_request() {
    let upstream = Upstream::echo("cors").await;
    let gateway = gateway(
        &upstream,
        vec![("/creds", wildcards(true)), ("/anon", wildcards(false))],
    )
    .await;

    for path in ["/creds", "/anon"] {
        let answer = preflight(&gateway, path, "https://foobar.com:12345", "PUT").await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT);
        assert_eq!(
            answer.header("access-control-allow-origin"),
            Some("https://foobar.com:12345")
        );
        assert_eq!(answer.header("access-control-allow-methods"), Some("PUT"));
        assert_eq!(
            answer.header("access-control-allow-headers"),
            Some("x-header-1, x-header-2")
        );
        assert_eq!(answer.header("access-control-max-age"), Some("5"));
        let credentials = answer.header("access-control-allow-credentials");
        assert_eq!(credentials, (path == "/creds").then_some("true"), "{path}");
    }
}

#[tokio::test]
async fn actual_requests_are_forwarded_and_decorated() {
    let mut upstream = Upstream::echo("cors").await;
    let gateway = gateway(
        &upstream,
        vec![
            ("/cors", listed()),
            ("/creds", wildcards(true)),
            ("/anon", wildcards(false)),
        ],
    )
    .await;

    let answer = actual(&gateway, "/cors", "https://www.bar.com").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.echoed()["headers"]["origin"][0],
        "https://www.bar.com"
    );
    assert_eq!(
        answer.header("access-control-allow-origin"),
        Some("https://www.bar.com")
    );
    assert_eq!(
        answer.header("access-control-allow-credentials"),
        Some("true")
    );
    assert_eq!(
        answer.header("access-control-expose-headers"),
        Some("x-header-3, x-header-4")
    );
    assert_eq!(answer.header("vary"), Some("Origin"));
    assert_eq!(answer.header("access-control-max-age"), None);
    assert_eq!(upstream.next_request().await["method"], "GET");

    let denied = actual(&gateway, "/cors", "https://foobar.com").await;
    assert_eq!(denied.status, StatusCode::OK);
    assert_eq!(denied.header("access-control-allow-origin"), None);
    assert_eq!(denied.header("access-control-allow-credentials"), None);

    let credentialed = actual(&gateway, "/creds", "https://other.foo.com").await;
    assert_eq!(
        credentialed.header("access-control-allow-origin"),
        Some("https://other.foo.com")
    );
    assert_eq!(
        credentialed.header("access-control-allow-credentials"),
        Some("true")
    );
    let anonymous = actual(&gateway, "/anon", "https://other.foo.com").await;
    assert_eq!(
        anonymous.header("access-control-allow-origin"),
        Some("https://other.foo.com")
    );
    assert_eq!(anonymous.header("access-control-allow-credentials"), None);

    // No `Origin`: not a CORS request, nothing added.
    let plain = gateway.get("example.com", "/cors").await;
    assert_eq!(plain.header("access-control-allow-origin"), None);
    assert_eq!(plain.header("vary"), None);
}
