//! TLS listeners with `tls.mode: Terminate`: the gateway completes the handshake with its own
//! certificate and relays the decrypted bytes to plain TCP backends chosen by the SNI's
//! TLSRoute (conformance: TLSRouteTerminateSimpleSameNamespace,
//! TLSRouteMixedTerminationSameNamespace).

use std::collections::HashMap;
use std::sync::Arc;

use http::StatusCode;
use ir::{PathMatch, RouteKind};

use crate::support::stream::{
    StreamBackend, bind_config, echo, finish, greeting, is_closed, passthrough_listener,
    stream_route, terminate_listener,
};
use crate::support::tls::{
    Authority, Hello, Leaf, closed_without_alert, https_listener, peer_leaf,
};
use crate::support::{BIND, Gateway, Upstream, backend, forward, route, unused_port, weighted};

/// A terminate listener for `*.example.com` serving `leaf`, with one route for
/// `a.example.com` to `backend`.
fn site(leaf: &Leaf, backend: &StreamBackend) -> ir::Config {
    let route = stream_route(
        "to-a",
        RouteKind::Tls,
        &["a.example.com"],
        vec![weighted(1, backend.backend())],
    );
    bind_config(ir::Bind {
        tls_terminate: vec![terminate_listener(Some("*.example.com"), leaf, vec![route])],
        ..ir::Bind::default()
    })
}

#[tokio::test]
async fn the_client_talks_tls_with_the_gateway_and_plain_bytes_reach_the_backend() {
    let pki = Authority::new();
    let leaf = pki.issue(&["*.example.com"]);
    let plain = StreamBackend::tcp("plain").await;
    let gateway = Gateway::start(site(&leaf, &plain)).await;

    // The client offers h2 as browsers do; the gateway relays bytes and negotiates nothing.
    let mut tls = pki
        .handshake(gateway.addr, Hello::h2("a.example.com"))
        .await
        .expect("handshake with the gateway");
    assert!(peer_leaf(&tls) == Some(leaf.der.clone()));
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    assert_eq!(greeting(&mut tls).await, "plain");
    echo(&mut tls, "line one\n").await;
    echo(&mut tls, "line two\n").await;
    // Our close_notify reaches the backend as end of stream; its bye still comes back.
    finish(tls).await;
}

#[tokio::test]
async fn connections_are_split_by_weight() {
    let pki = Authority::new();
    let leaf = pki.issue(&["w.example.com"]);
    let three = StreamBackend::tcp("three").await;
    let one = StreamBackend::tcp("one").await;
    let zero = StreamBackend::tcp("zero").await;
    let route = stream_route(
        "split",
        RouteKind::Tls,
        &[],
        vec![
            weighted(3, three.backend()),
            weighted(1, one.backend()),
            weighted(0, zero.backend()),
        ],
    );
    let gateway = Gateway::start(bind_config(ir::Bind {
        tls_terminate: vec![terminate_listener(None, &leaf, vec![route])],
        ..ir::Bind::default()
    }))
    .await;

    // Every connection is a full handshake, so fewer than for passthrough.
    let mut seen: HashMap<String, u32> = HashMap::new();
    for _ in 0..100 {
        let mut tls = pki
            .handshake(gateway.addr, Hello::http1("w.example.com"))
            .await
            .expect("handshake");
        *seen.entry(greeting(&mut tls).await).or_default() += 1;
    }
    let count = |name: &str| seen.get(name).copied().unwrap_or(0);
    assert_eq!(count("zero"), 0, "{seen:?}");
    assert_eq!(count("three") + count("one"), 100, "{seen:?}");
    // 75 expected; this allows about five standard deviations either way.
    assert!((53..=97).contains(&count("three")), "{seen:?}");
}

#[tokio::test]
async fn one_socket_passes_through_relays_and_serves_https_by_name() {
    let pki = Authority::new();
    let terminate_leaf = pki.issue(&["term.example.com"]);
    let https_leaf = pki.issue(&["web.example.com"]);
    let backend_leaf = pki.issue(&["pass.example.com"]);
    let relayed = StreamBackend::tcp("relayed").await;
    let passed = StreamBackend::tls("passed", &backend_leaf).await;
    let web = Upstream::echo("web").await;
    let http_rule = forward("web", vec![weighted(1, web.backend())]);
    let tls_route = |name: &str, backend: &StreamBackend| {
        stream_route(
            name,
            RouteKind::Tls,
            &[],
            vec![weighted(1, backend.backend())],
        )
    };
    let bind = ir::Bind {
        http: vec![https_listener(
            Some("web.example.com"),
            &https_leaf,
            vec![route(None, PathMatch::prefix("/"), http_rule)],
        )],
        tls_passthrough: vec![passthrough_listener(
            Some("pass.example.com"),
            vec![tls_route("pass", &passed)],
        )],
        tls_terminate: vec![terminate_listener(
            Some("term.example.com"),
            &terminate_leaf,
            vec![tls_route("term", &relayed)],
        )],
        tcp: None,
        consumers: Default::default(),
    };
    let gateway = Gateway::start(bind_config(bind)).await;

    let mut terminated = pki
        .handshake(gateway.addr, Hello::http1("term.example.com"))
        .await
        .expect("handshake with the gateway");
    assert!(peer_leaf(&terminated) == Some(terminate_leaf.der.clone()));
    assert_eq!(greeting(&mut terminated).await, "relayed");
    echo(&mut terminated, "decrypted by the gateway\n").await;

    let mut passed_through = pki
        .handshake(gateway.addr, Hello::http1("pass.example.com"))
        .await
        .expect("handshake with the backend");
    assert!(peer_leaf(&passed_through) == Some(backend_leaf.der.clone()));
    assert_eq!(greeting(&mut passed_through).await, "passed");
    echo(&mut passed_through, "end to end\n").await;

    let mut client = pki
        .connect(gateway.addr, Hello::h2("web.example.com"))
        .await
        .expect("handshake with the gateway");
    assert!(client.leaf == https_leaf.der);
    let answer = client.get("web.example.com", "/").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.echoed()["backend"], "web");

    finish(terminated).await;
    finish(passed_through).await;
}

#[tokio::test]
async fn names_without_a_route_are_closed_before_the_handshake() {
    let pki = Authority::new();
    let leaf = pki.issue(&["*.example.com"]);
    let plain = StreamBackend::tcp("plain").await;
    let gateway = Gateway::start(site(&leaf, &plain)).await;

    // b.example.com: the listener takes it, no route does; other.test: no listener does.
    for name in ["b.example.com", "other.test"] {
        let refused = pki.handshake(gateway.addr, Hello::http1(name)).await;
        let error = refused.expect_err("a handshake for an unrouted name succeeded");
        assert!(closed_without_alert(&error), "{name}: {error:?}");
    }
    let no_sni = Hello {
        sni: false,
        ..Hello::http1("a.example.com")
    };
    let error = pki
        .handshake(gateway.addr, no_sni)
        .await
        .expect_err("no SNI");
    assert!(closed_without_alert(&error), "no SNI: {error:?}");

    let mut tls = pki
        .handshake(gateway.addr, Hello::http1("a.example.com"))
        .await
        .expect("the socket still serves");
    assert_eq!(greeting(&mut tls).await, "plain");
}

#[tokio::test]
async fn backends_that_cannot_be_used_close_the_connection() {
    let pki = Authority::new();
    let leaf = pki.issue(&["*.example.com"]);
    let unreachable = backend(
        "unreachable",
        ir::BackendProtocol::Http1,
        &[([127, 0, 0, 1], unused_port()).into()],
    );
    let routes = vec![
        stream_route("none", RouteKind::Tls, &["none.example.com"], Vec::new()),
        stream_route(
            "down",
            RouteKind::Tls,
            &["down.example.com"],
            vec![weighted(1, unreachable)],
        ),
    ];
    let gateway = Gateway::start(bind_config(ir::Bind {
        tls_terminate: vec![terminate_listener(None, &leaf, routes)],
        ..ir::Bind::default()
    }))
    .await;

    // Known before the handshake: refused like a name without a route.
    let refused = pki
        .handshake(gateway.addr, Hello::http1("none.example.com"))
        .await;
    let error = refused.expect_err("a route without backends was served");
    assert!(closed_without_alert(&error), "{error:?}");
    // Known only when connecting, after the handshake: the connection ends at once.
    let mut tls = pki
        .handshake(gateway.addr, Hello::http1("down.example.com"))
        .await
        .expect("handshake with the gateway");
    assert!(is_closed(&mut tls).await);
}

#[tokio::test]
async fn a_rotated_certificate_reaches_new_connections_only() {
    let pki = Authority::new();
    let old = pki.issue(&["a.example.com"]);
    let new = pki.issue(&["a.example.com"]);
    let plain = StreamBackend::tcp("plain").await;
    let gateway = Gateway::start(site(&old, &plain)).await;

    let mut before = pki
        .handshake(gateway.addr, Hello::http1("a.example.com"))
        .await
        .expect("handshake");
    assert!(peer_leaf(&before) == Some(old.der.clone()));
    assert_eq!(greeting(&mut before).await, "plain");

    let failures = gateway.dataplane.apply(Arc::new(site(&new, &plain))).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(gateway.dataplane.local_addr(BIND), Some(gateway.addr));

    let mut after = pki
        .handshake(gateway.addr, Hello::http1("a.example.com"))
        .await
        .expect("handshake");
    assert!(
        peer_leaf(&after) == Some(new.der.clone()),
        "the new connection got the old certificate"
    );
    assert_eq!(greeting(&mut after).await, "plain");
    // The connection made before the rotation relays on as it was.
    echo(&mut before, "still here\n").await;
    finish(before).await;
    finish(after).await;
}
