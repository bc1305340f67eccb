//! `HTTPRouteRule.retry`: a status listed in `codes` and a refused connection are tried again,
//! with the request body replayed; without a retry policy the first answer stands.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dataplane::{LoadBalancer, Options};
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use ir::{Action, BackendProtocol, PathMatch, Retry};
use tokio::net::TcpListener;

use crate::support::{
    Gateway, backend, config, listener, request, route, rule, send, unused_port, weighted,
};

/// An upstream that answers 503 to its first `failures` requests, then 200 with the body it
/// received; counts requests.
async fn flaky(failures: u32) -> (SocketAddr, Arc<AtomicU32>) {
    upstream(failures, Duration::ZERO).await
}

/// An upstream that echoes the request body after `delay`, with 503 for the first
/// `failures` requests, counting requests.
async fn upstream(failures: u32, delay: Duration) -> (SocketAddr, Arc<AtomicU32>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(AtomicU32::new(0));
    let count = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let count = Arc::clone(&count);
                    async move {
                        let n = count.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(delay).await;
                        let body = request
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let mut response = hyper::Response::new(Full::new(body));
                        if n < failures {
                            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn retrying(name: &str, endpoints: &[SocketAddr], retry: Option<Retry>) -> ir::Rule {
    let target = backend(
        &format!("default/{name}:80"),
        BackendProtocol::Http1,
        endpoints,
    );
    let mut rule = rule(name, Action::Forward(vec![weighted(1, target)]));
    rule.retry = retry.map(Box::new);
    rule
}

fn policy(attempts: u32, codes: &[u16]) -> Option<Retry> {
    Some(Retry {
        attempts,
        backoff: Duration::from_millis(1),
        codes: codes.to_vec(),
    })
}

#[tokio::test]
async fn listed_codes_and_refused_connections_are_retried_with_the_body() {
    let (retried, retried_seen) = flaky(2).await;
    let (plain, plain_seen) = flaky(1).await;
    let (short, short_seen) = flaky(5).await;
    let refused: SocketAddr = ([127, 0, 0, 1], unused_port()).into();
    let (after_refusal, _) = flaky(0).await;
    let routes = vec![
        route(
            None,
            PathMatch::prefix("/retried"),
            retrying("retried", &[retried], policy(2, &[503])),
        ),
        route(
            None,
            PathMatch::prefix("/plain"),
            retrying("plain", &[plain], None),
        ),
        route(
            None,
            PathMatch::prefix("/short"),
            retrying("short", &[short], policy(1, &[503])),
        ),
        route(
            None,
            PathMatch::prefix("/refused"),
            // Round robin: the first attempt goes to the refusing endpoint, the retry to the
            // one that answers.
            retrying("refused", &[refused, after_refusal], policy(1, &[])),
        ),
    ];
    let gateway = Gateway::start(config(vec![listener(None, routes)])).await;

    let sent = request("POST", "example.com", "/retried").body(Full::new(Bytes::from("hello")));
    let answer = send(gateway.addr, sent).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.body,
        Bytes::from("hello"),
        "the body is replayed on retries"
    );
    assert_eq!(retried_seen.load(Ordering::SeqCst), 3);

    let answer = gateway.get("example.com", "/plain").await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "no retry policy"
    );
    assert_eq!(plain_seen.load(Ordering::SeqCst), 1);

    let answer = gateway.get("example.com", "/short").await;
    assert_eq!(
        answer.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "retries ran out"
    );
    assert_eq!(short_seen.load(Ordering::SeqCst), 2);

    let answer = gateway.get("example.com", "/refused").await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "a refused connection is retried"
    );
}

#[tokio::test]
async fn an_endpoint_that_keeps_failing_is_ejected() {
    let refused: SocketAddr = ([127, 0, 0, 1], unused_port()).into();
    let (good, good_seen) = flaky(0).await;
    let routes = vec![route(
        None,
        PathMatch::prefix("/"),
        retrying("pair", &[refused, good], None),
    )];
    let options = Options {
        load_balancer: LoadBalancer::RoundRobin,
        ..Options::default()
    };
    let gateway = Gateway::with_options(options, config(vec![listener(None, routes)])).await;
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(gateway.get("example.com", "/").await.status);
    }
    let failed = statuses
        .iter()
        .filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE)
        .count();
    // Round robin alternates until the refusing endpoint has failed 5 times in a row (the
    // default threshold); then it is ejected and every request goes to the good one.
    assert_eq!(failed, 5, "{statuses:?}");
    assert!(
        statuses[10..].iter().all(|s| *s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(good_seen.load(Ordering::SeqCst), 15);
}

/// An upstream that answers after `delay`, counting requests.
async fn slow(delay: Duration) -> (SocketAddr, Arc<AtomicU32>) {
    upstream(0, delay).await
}

#[tokio::test]
async fn the_default_balancer_prefers_the_faster_endpoint_and_avoids_a_failing_one() {
    let (slow_addr, slow_seen) = slow(Duration::from_millis(40)).await;
    let (fast_addr, fast_seen) = slow(Duration::ZERO).await;
    let refused: SocketAddr = ([127, 0, 0, 1], unused_port()).into();
    let routes = vec![
        route(
            None,
            PathMatch::prefix("/speed"),
            retrying("speed", &[slow_addr, fast_addr], None),
        ),
        route(
            None,
            PathMatch::prefix("/pair"),
            retrying("pair", &[refused, fast_addr], None),
        ),
    ];
    let gateway = Gateway::start(config(vec![listener(None, routes)])).await;
    for _ in 0..100 {
        assert_eq!(
            gateway.get("example.com", "/speed").await.status,
            StatusCode::OK
        );
    }
    let (slow, fast) = (
        slow_seen.load(Ordering::SeqCst),
        fast_seen.load(Ordering::SeqCst),
    );
    // Round robin would give each 50; peak EWMA goes back to the slow one only when its
    // estimate has decayed.
    assert!(fast >= 85, "fast {fast}, slow {slow}");

    let mut failed = 0;
    for _ in 0..20 {
        if gateway.get("example.com", "/pair").await.status != StatusCode::OK {
            failed += 1;
        }
    }
    assert!(
        failed <= 1,
        "a refusing endpoint is avoided after it fails: {failed} failed"
    );
}
