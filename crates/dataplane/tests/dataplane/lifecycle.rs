//! Timeouts, protocols, reloads, socket reconciliation and shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dataplane::{Dataplane, Options};
use http::StatusCode;
use ir::{PathMatch, Timeouts};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{
    BIND, Gateway, PATIENCE, Upstream, config, config_at, everything_to, forward, listener, route,
    send_h2c, unused_port, weighted,
};

/// Long enough that a timeout of a few milliseconds always fires first, short enough that
/// the upstream tasks left behind end soon.
const SLOW: Duration = Duration::from_secs(2);

#[tokio::test]
async fn request_and_backend_timeouts_are_504() {
    let slow = Upstream::start("slow", SLOW).await;
    let mut whole = forward("whole", vec![weighted(1, slow.backend())]);
    whole.timeouts = Timeouts {
        request: Some(Duration::from_millis(100)),
        backend_request: None,
    };
    let mut attempt = forward("attempt", vec![weighted(1, slow.backend())]);
    attempt.timeouts = Timeouts {
        request: None,
        backend_request: Some(Duration::from_millis(100)),
    };
    let gateway = Gateway::start(config(vec![listener(
        None,
        vec![
            route(None, PathMatch::prefix("/whole"), whole),
            route(None, PathMatch::prefix("/attempt"), attempt),
        ],
    )]))
    .await;

    for target in ["/whole", "/attempt"] {
        let answer = gateway.get("example.com", target).await;
        assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT, "{target}");
    }
}

#[tokio::test]
async fn h2c_clients_are_served_and_authority_becomes_host() {
    let upstream = Upstream::echo("for-h2").await;
    let gateway = Gateway::start(everything_to(&upstream)).await;

    let answer = send_h2c(gateway.addr, "h2.example.com", "/over/h2?q").await;
    assert_eq!(answer.status, StatusCode::OK);
    let echoed = answer.echoed();
    assert_eq!(echoed["host"], "h2.example.com");
    assert_eq!(echoed["path"], "/over/h2?q");
    // The backend speaks HTTP/1.1 whatever the client spoke.
    assert_eq!(echoed["version"], "HTTP/1.1");
}

#[tokio::test]
async fn reload_keeps_in_flight_requests_on_their_config() {
    let mut old = Upstream::start("old", Duration::from_millis(300)).await;
    let new = Upstream::echo("new").await;
    let gateway = Gateway::start(everything_to(&old)).await;

    let addr = gateway.addr;
    let in_flight = tokio::spawn(async move {
        crate::support::send(
            addr,
            crate::support::request("GET", "example.com", "/slow").body(Default::default()),
        )
        .await
    });
    old.next_request().await;
    let failures = gateway.dataplane.apply(Arc::new(everything_to(&new))).await;
    assert!(failures.is_empty());

    let after = gateway.get("example.com", "/fast").await;
    assert_eq!(after.echoed()["backend"], "new");
    let before = in_flight.await.expect("request task");
    assert_eq!(before.status, StatusCode::OK);
    assert_eq!(before.echoed()["backend"], "old");
    // The socket itself was kept.
    assert_eq!(gateway.dataplane.local_addr(BIND), Some(addr));
}

#[tokio::test]
async fn removed_socket_stops_accepting_and_finishes_its_requests() {
    let mut slow = Upstream::start("slow", Duration::from_millis(300)).await;
    let second: SocketAddr = ([127, 0, 0, 1], unused_port()).into();
    let mut both = everything_to(&slow);
    let extra = config_at(second, everything_to(&slow).binds[&BIND].http.clone());
    both.binds.extend(extra.binds);
    let gateway = Gateway::start(both).await;
    assert_eq!(gateway.dataplane.local_addr(second), Some(second));

    let in_flight = tokio::spawn(async move {
        crate::support::send(
            second,
            crate::support::request("GET", "example.com", "/").body(Default::default()),
        )
        .await
    });
    slow.next_request().await;
    let failures = gateway
        .dataplane
        .apply(Arc::new(everything_to(&slow)))
        .await;
    assert!(failures.is_empty());

    assert_eq!(gateway.dataplane.local_addr(second), None);
    let refused = tokio::net::TcpStream::connect(second).await;
    assert!(refused.is_err(), "the removed socket still accepts");
    let finished = in_flight.await.expect("request task");
    assert_eq!(finished.status, StatusCode::OK);
    // The socket that stayed in the config still serves.
    assert_eq!(gateway.get("example.com", "/").await.status, StatusCode::OK);
}

#[tokio::test]
async fn bind_failures_are_returned_and_retried() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("occupy a port");
    let addr = taken.local_addr().expect("occupied address");
    let dataplane = Dataplane::new(Options::default());
    let wanted = Arc::new(config_at(addr, vec![listener(None, vec![])]));

    let failures = dataplane.apply(Arc::clone(&wanted)).await;
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].addr, addr);
    assert_eq!(dataplane.local_addr(addr), None);

    drop(taken);
    let failures = dataplane.apply(wanted).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(dataplane.local_addr(addr), Some(addr));
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let mut slow = Upstream::start("slow", Duration::from_millis(300)).await;
    let gateway = Gateway::start(everything_to(&slow)).await;
    let addr = gateway.addr;
    let in_flight = tokio::spawn(async move {
        crate::support::send(
            addr,
            crate::support::request("GET", "example.com", "/").body(Default::default()),
        )
        .await
    });
    slow.next_request().await;

    tokio::time::timeout(PATIENCE, gateway.dataplane.shutdown(PATIENCE))
        .await
        .expect("shutdown finished within its grace");
    let finished = in_flight.await.expect("request task");
    assert_eq!(finished.status, StatusCode::OK);
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn malformed_requests_do_not_take_the_gateway_down() {
    let upstream = Upstream::echo("a").await;
    let gateway = Gateway::start(everything_to(&upstream)).await;

    for garbage in [
        &b"\x16\x03\x01\x02\x00garbage\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: \xff\xfe\r\nConnection: close\r\n\r\n",
        b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        b"GET http://[::1 HTTP/1.1\r\nHost: a\r\n\r\n",
    ] {
        let mut stream = tokio::net::TcpStream::connect(gateway.addr)
            .await
            .expect("connect");
        stream.write_all(garbage).await.expect("send");
        let mut response = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut response)).await;
        let head = String::from_utf8_lossy(&response);
        assert!(
            response.is_empty() || head.starts_with("HTTP/1.1 4"),
            "{head}"
        );
    }
    assert_eq!(gateway.get("example.com", "/").await.status, StatusCode::OK);
}
