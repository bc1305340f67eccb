//! TCP listeners, and what reloads do to connection-level routes: backends by weight,
//! connections that cannot be routed, reloads, sockets that change kind, and draining.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use dataplane::Options;
use http::StatusCode;
use ir::{BackendProtocol, BackendTarget, InvalidBackend, RouteKind, WeightedBackend};
use tokio::net::TcpStream;

use crate::support::stream::{
    StreamBackend, bind_config, echo, finish, greeting, is_closed, passthrough_listener,
    stream_route, tcp_config, tcp_listener,
};
use crate::support::tls::{Authority, Hello};
use crate::support::{BIND, Gateway, Upstream, backend, everything_to, unused_port, weighted};

async fn connect(gateway: &Gateway) -> TcpStream {
    TcpStream::connect(gateway.addr).await.expect("connect")
}

#[tokio::test]
async fn tcp_connections_are_relayed_to_backends_chosen_by_weight() {
    let a = StreamBackend::tcp("a").await;
    let b = StreamBackend::tcp("b").await;
    let zero = StreamBackend::tcp("zero").await;
    let gateway = Gateway::start(tcp_config(vec![
        weighted(1, a.backend()),
        weighted(1, b.backend()),
        weighted(0, zero.backend()),
    ]))
    .await;

    let mut seen: HashMap<String, u32> = HashMap::new();
    for _ in 0..60 {
        let mut stream = connect(&gateway).await;
        *seen.entry(greeting(&mut stream).await).or_default() += 1;
    }
    // Each side has a chance of 2^-60 to be missing.
    assert!(seen.get("a").is_some_and(|&n| n > 0), "{seen:?}");
    assert!(seen.get("b").is_some_and(|&n| n > 0), "{seen:?}");
    assert_eq!(seen.get("zero"), None, "{seen:?}");

    let mut stream = connect(&gateway).await;
    greeting(&mut stream).await;
    echo(&mut stream, "one").await;
    echo(&mut stream, &"x".repeat(100_000)).await;
    finish(stream).await;
}

#[tokio::test]
async fn tcp_connections_without_a_usable_backend_are_closed() {
    let working = StreamBackend::tcp("working").await;
    let gateway = Gateway::start(tcp_config(vec![weighted(1, working.backend())])).await;
    let invalid = WeightedBackend {
        weight: 1,
        target: BackendTarget::Invalid(InvalidBackend {
            reference: "default/missing:80".into(),
            reason: "BackendNotFound".into(),
        }),
        request_headers: None,
        response_headers: None,
    };
    let refusing = backend(
        "refusing",
        BackendProtocol::Http1,
        &[([127, 0, 0, 1], unused_port()).into()],
    );
    let unusable = [
        ("invalid backend", tcp_config(vec![invalid])),
        (
            "no endpoints",
            tcp_config(vec![weighted(
                1,
                backend("empty", BackendProtocol::Http1, &[]),
            )]),
        ),
        ("refused", tcp_config(vec![weighted(1, refusing)])),
        (
            "zero weight",
            tcp_config(vec![weighted(0, working.backend())]),
        ),
        ("no backends", tcp_config(vec![])),
        (
            "no routes",
            bind_config(ir::Bind {
                tcp: Some(tcp_listener(vec![])),
                ..ir::Bind::default()
            }),
        ),
    ];
    for (case, config) in unusable {
        let failures = gateway.dataplane.apply(Arc::new(config)).await;
        assert!(failures.is_empty(), "{case}: {failures:?}");
        let mut stream = connect(&gateway).await;
        assert!(
            is_closed(&mut stream).await,
            "{case}: the connection stayed open"
        );
    }

    let config = tcp_config(vec![weighted(1, working.backend())]);
    gateway.dataplane.apply(Arc::new(config)).await;
    let mut stream = connect(&gateway).await;
    assert_eq!(greeting(&mut stream).await, "working");
}

#[tokio::test]
async fn a_reload_moves_new_connections_and_keeps_open_ones_on_their_backend() {
    let old = StreamBackend::tcp("old").await;
    let new = StreamBackend::tcp("new").await;
    let gateway = Gateway::start(tcp_config(vec![weighted(1, old.backend())])).await;
    let mut before = connect(&gateway).await;
    assert_eq!(greeting(&mut before).await, "old");

    let config = tcp_config(vec![weighted(1, new.backend())]);
    let failures = gateway.dataplane.apply(Arc::new(config)).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(gateway.dataplane.local_addr(BIND), Some(gateway.addr));

    let mut after = connect(&gateway).await;
    assert_eq!(greeting(&mut after).await, "new");
    echo(&mut before, "still on the old backend").await;
    finish(before).await;
    finish(after).await;
}

#[tokio::test]
async fn a_socket_changes_between_http_tcp_and_passthrough_without_rebinding() {
    let http = Upstream::echo("http").await;
    let tcp = StreamBackend::tcp("tcp").await;
    let pki = Authority::new();
    let leaf = pki.issue(&["tls.example.com"]);
    let tls = StreamBackend::tls("tls", &leaf).await;
    let gateway = Gateway::start(everything_to(&http)).await;
    let apply = async |config: ir::Config| {
        let failures = gateway.dataplane.apply(Arc::new(config)).await;
        assert!(failures.is_empty(), "{failures:?}");
        assert_eq!(gateway.dataplane.local_addr(BIND), Some(gateway.addr));
    };
    assert_eq!(gateway.get("a.test", "/").await.status, StatusCode::OK);

    apply(tcp_config(vec![weighted(1, tcp.backend())])).await;
    let mut over_tcp = connect(&gateway).await;
    assert_eq!(greeting(&mut over_tcp).await, "tcp");

    let route = stream_route("tls", RouteKind::Tls, &[], vec![weighted(1, tls.backend())]);
    apply(bind_config(ir::Bind {
        tls_passthrough: vec![passthrough_listener(None, vec![route])],
        ..ir::Bind::default()
    }))
    .await;
    let mut passed = pki
        .handshake(gateway.addr, Hello::http1("tls.example.com"))
        .await
        .expect("handshake with the backend");
    assert_eq!(greeting(&mut passed).await, "tls");

    apply(everything_to(&http)).await;
    let answer = gateway.get("a.test", "/").await;
    assert_eq!(answer.echoed()["backend"], "http");
    // The connections made under the earlier configs go on.
    echo(&mut over_tcp, "tcp still").await;
    echo(&mut passed, "tls still").await;
    finish(over_tcp).await;
    finish(passed).await;
}

#[tokio::test]
async fn a_removed_socket_keeps_its_connections_until_the_drain_limit() {
    let backend = StreamBackend::tcp("drained").await;
    let options = Options {
        drain_timeout: Duration::from_secs(1),
        ..Options::default()
    };
    let config = tcp_config(vec![weighted(1, backend.backend())]);
    let gateway = Gateway::with_options(options, config).await;
    let mut open = connect(&gateway).await;
    assert_eq!(greeting(&mut open).await, "drained");

    let failures = gateway
        .dataplane
        .apply(Arc::new(ir::Config::default()))
        .await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(gateway.dataplane.local_addr(BIND), None);
    assert!(
        TcpStream::connect(gateway.addr).await.is_err(),
        "the removed socket still accepts"
    );
    echo(&mut open, "while draining").await;
    // A relayed connection cannot be asked to close; the drain limit ends it.
    assert!(is_closed(&mut open).await, "the drain limit did not apply");
}
