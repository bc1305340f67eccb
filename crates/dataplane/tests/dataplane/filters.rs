//! Filters and the proxy's own header handling, observed at the upstream and the client.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use http_body_util::Full;
use ir::{
    Action, HeaderModifier, HttpListener, Mirror, PathMatch, PathModifier, Redirect,
    RedirectScheme, UrlRewrite,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{
    Gateway, Upstream, config, everything_to, forward, listener, request, route, rule, send,
    weighted,
};

fn modifier(
    set: &[(&'static str, &'static str)],
    add: &[(&'static str, &'static str)],
    remove: &[&'static str],
) -> HeaderModifier {
    let pairs = |list: &[(&'static str, &'static str)]| {
        list.iter()
            .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
            .collect()
    };
    HeaderModifier {
        set: pairs(set),
        add: pairs(add),
        remove: remove.iter().map(|n| HeaderName::from_static(n)).collect(),
    }
}

fn header<'a>(echoed: &'a Value, name: &str) -> Vec<&'a str> {
    echoed["headers"][name]
        .as_array()
        .map(|values| values.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn redirect(
    scheme: Option<RedirectScheme>,
    port: Option<u16>,
    path: Option<PathModifier>,
) -> Action {
    Action::Redirect(Box::new(Redirect {
        scheme,
        hostname: None,
        path,
        port,
        status: 302,
    }))
}

#[tokio::test]
async fn redirects_build_location_per_the_spec() {
    let routes = vec![
        route(
            None,
            PathMatch::prefix("/same"),
            rule("same", redirect(None, None, None)),
        ),
        route(
            None,
            PathMatch::prefix("/https"),
            rule("https", redirect(Some(RedirectScheme::Https), None, None)),
        ),
        route(
            None,
            PathMatch::prefix("/port"),
            rule("port", redirect(None, Some(8443), None)),
        ),
        route(
            None,
            PathMatch::prefix("/old"),
            rule(
                "prefix",
                Action::Redirect(Box::new(Redirect {
                    scheme: None,
                    hostname: Some("new.example.com".into()),
                    path: Some(PathModifier::PrefixMatch("/new".into())),
                    port: None,
                    status: 301,
                })),
            ),
        ),
    ];
    // The listener is declared on 8080, so a redirect that keeps the scheme keeps that port.
    let declared = Arc::new(HttpListener {
        port: 8080,
        ..(*listener(None, routes)).clone()
    });
    let gateway = Gateway::start(config(vec![declared])).await;

    let cases = [
        (
            "/same/x?q=1",
            StatusCode::FOUND,
            "http://example.com:8080/same/x?q=1",
        ),
        ("/https/x", StatusCode::FOUND, "https://example.com/https/x"),
        ("/port", StatusCode::FOUND, "http://example.com:8443/port"),
        (
            "/old/rest?a=b",
            StatusCode::MOVED_PERMANENTLY,
            "http://new.example.com:8080/new/rest?a=b",
        ),
    ];
    for (target, status, location) in cases {
        let answer = gateway.get("Example.com:1234", target).await;
        assert_eq!(answer.status, status, "{target}");
        assert_eq!(answer.header("location"), Some(location), "{target}");
    }
}

#[tokio::test]
async fn url_rewrite_changes_host_and_prefix() {
    let upstream = Upstream::echo("rewritten").await;
    let mut rewrite = forward("rewrite", vec![weighted(1, upstream.backend())]);
    rewrite.filters.rewrite = Some(Box::new(UrlRewrite {
        hostname: Some("internal.example".into()),
        path: Some(PathModifier::PrefixMatch("/v2".into())),
    }));
    let gateway = Gateway::start(config(vec![listener(
        None,
        vec![route(None, PathMatch::prefix("/v1/"), rewrite)],
    )]))
    .await;

    let answer = gateway.get("public.example", "/v1/items?id=7").await;
    assert_eq!(answer.status, StatusCode::OK);
    let echoed = answer.echoed();
    assert_eq!(echoed["host"], "internal.example");
    assert_eq!(echoed["path"], "/v2/items?id=7");
}

#[tokio::test]
async fn header_modifiers_apply_on_rule_and_backend() {
    let upstream = Upstream::echo("headers").await;
    let mut backend = weighted(1, upstream.backend());
    backend.request_headers = Some(Box::new(modifier(&[("x-backend", "yes")], &[], &[])));
    backend.response_headers = Some(Box::new(modifier(
        &[],
        &[("x-backend-response", "yes")],
        &[],
    )));
    let mut modified = forward("modified", vec![backend]);
    modified.filters.request_headers = Some(Box::new(modifier(
        &[("x-set", "new")],
        &[("x-add", "second")],
        &[("x-remove")],
    )));
    modified.filters.response_headers = Some(Box::new(modifier(
        &[("content-type", "text/test")],
        &[],
        &[],
    )));
    let gateway = Gateway::start(config(vec![listener(
        None,
        vec![route(None, PathMatch::prefix("/"), modified)],
    )]))
    .await;

    let sent = request("GET", "example.com", "/")
        .header("x-set", "old")
        .header("x-add", "first")
        .header("x-remove", "gone")
        .body(Full::default());
    let answer = send(gateway.addr, sent).await;
    assert_eq!(answer.status, StatusCode::OK);
    let echoed = answer.echoed();
    assert_eq!(header(&echoed, "x-set"), ["new"]);
    assert_eq!(header(&echoed, "x-add"), ["first", "second"]);
    assert!(header(&echoed, "x-remove").is_empty());
    assert_eq!(header(&echoed, "x-backend"), ["yes"]);
    assert_eq!(answer.header("content-type"), Some("text/test"));
    assert_eq!(answer.header("x-backend-response"), Some("yes"));
}

#[tokio::test]
async fn mirror_receives_a_copy_with_the_body() {
    let mut primary = Upstream::echo("primary").await;
    let mut mirror = Upstream::echo("mirror").await;
    let mut mirrored = forward("mirrored", vec![weighted(1, primary.backend())]);
    mirrored.filters.mirrors = vec![Mirror {
        backend: mirror.backend(),
        numerator: 1,
        denominator: 1,
    }];
    let gateway = Gateway::start(config(vec![listener(
        None,
        vec![route(None, PathMatch::prefix("/"), mirrored)],
    )]))
    .await;

    let sent =
        request("POST", "example.com", "/submit?x=1").body(Full::new(Bytes::from("payload")));
    let answer = send(gateway.addr, sent).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.echoed()["backend"], "primary");
    assert_eq!(answer.echoed()["body"], "payload");
    let original = primary.next_request().await;
    let copy = mirror.next_request().await;
    for field in ["method", "path", "host", "body"] {
        assert_eq!(copy[field], original[field], "{field}");
    }
}

#[tokio::test]
async fn hop_by_hop_headers_are_removed_and_forwarded_headers_added() {
    let upstream = Upstream::echo("plain").await;
    let gateway = Gateway::start(everything_to(&upstream)).await;

    // A raw request, so that the client library adds and removes nothing.
    let raw = "GET /a/%2e%2E/b?x=1&&y=%20 HTTP/1.1\r\n\
               Host: example.com\r\n\
               Connection: keep-alive, X-Hop\r\n\
               X-Hop: 1\r\n\
               Keep-Alive: timeout=5\r\n\
               Proxy-Authorization: secret\r\n\
               TE: trailers\r\n\
               X-Forwarded-For: 192.0.2.1\r\n\
               X-Forwarded-Proto: https\r\n\
               X-End-To-End: kept\r\n\
               \r\n";
    let mut stream = tokio::net::TcpStream::connect(gateway.addr)
        .await
        .expect("connect");
    stream.write_all(raw.as_bytes()).await.expect("send");
    let mut upstream = upstream;
    let echoed = upstream.next_request().await;
    for name in [
        "connection",
        "x-hop",
        "keep-alive",
        "proxy-authorization",
        "te",
    ] {
        assert!(header(&echoed, name).is_empty(), "{name} was forwarded");
    }
    assert_eq!(header(&echoed, "x-end-to-end"), ["kept"]);
    assert_eq!(header(&echoed, "x-forwarded-for"), ["192.0.2.1, 127.0.0.1"]);
    assert_eq!(header(&echoed, "x-forwarded-proto"), ["http"]);
    assert_eq!(echoed["host"], "example.com");
    assert_eq!(echoed["path"], "/a/%2e%2E/b?x=1&&y=%20");

    // The upstream answered with hop-by-hop headers of its own; none reach the client.
    let mut response = Vec::new();
    let mut chunk = [0; 4096];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = tokio::time::timeout(crate::support::PATIENCE, stream.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read response");
        assert!(read > 0, "connection closed before the response head");
        response.extend_from_slice(&chunk[..read]);
    }
    let head = String::from_utf8_lossy(&response).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("x-upstream-hop"), "{head}");
    assert!(!head.contains("keep-alive: timeout"), "{head}");
}
