//! TLS passthrough: connections routed by the SNI of their ClientHello to TLS backends that
//! the client talks to directly, and mixed sockets where some names are terminated instead.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use dataplane::Options;
use http::StatusCode;
use ir::{BackendProtocol, PathMatch, RouteKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::TcpStream;

use crate::support::stream::{
    SEGMENT_GAP, StreamBackend, bind_config, client_hello, closed_after, echo, finish, greeting,
    passthrough_listener, stream_route,
};
use crate::support::tls::{
    Authority, H2, Hello, Leaf, closed_without_alert, https_listener, peer_leaf,
};
use crate::support::{Gateway, Upstream, backend, forward, route, unused_port, weighted};

/// Two TLS backends with their own certificates, `a.example.com` and `b.example.com`, and
/// a passthrough listener for `*.example.com` with one route to each.
struct Site {
    pki: Authority,
    leaves: [Leaf; 2],
    gateway: Gateway,
}

impl Site {
    async fn start(options: Options) -> Self {
        let pki = Authority::new();
        let leaves = [pki.issue(&["a.example.com"]), pki.issue(&["b.example.com"])];
        let a = StreamBackend::tls("a", &leaves[0]).await;
        let b = StreamBackend::tls("b", &leaves[1]).await;
        let listener = passthrough_listener(
            Some("*.example.com"),
            vec![
                stream_route(
                    "to-a",
                    RouteKind::Tls,
                    &["a.example.com"],
                    vec![weighted(1, a.backend())],
                ),
                stream_route(
                    "to-b",
                    RouteKind::Tls,
                    &["b.example.com"],
                    vec![weighted(1, b.backend())],
                ),
            ],
        );
        let config = bind_config(ir::Bind {
            tls_passthrough: vec![listener],
            ..ir::Bind::default()
        });
        let gateway = Gateway::with_options(options, config).await;
        Self {
            pki,
            leaves,
            gateway,
        }
    }
}

/// A connection to `addr` through a relay that sends the client's first flight (its
/// ClientHello) in `pieces` separate TCP segments, pausing between them.
async fn dribbling(addr: SocketAddr, pieces: usize) -> DuplexStream {
    let (client, mut relay) = tokio::io::duplex(64 * 1024);
    let mut upstream = TcpStream::connect(addr).await.expect("connect");
    upstream.set_nodelay(true).expect("nodelay");
    tokio::spawn(async move {
        let mut first = vec![0; 16 * 1024];
        let Ok(read) = relay.read(&mut first).await else {
            return;
        };
        for piece in first[..read].chunks(read.div_ceil(pieces)) {
            if upstream.write_all(piece).await.is_err() {
                return;
            }
            tokio::time::sleep(SEGMENT_GAP).await;
        }
        let _ = tokio::io::copy_bidirectional(&mut relay, &mut upstream).await;
    });
    client
}

#[tokio::test]
async fn sni_picks_the_backend_and_the_client_talks_tls_with_it() {
    let site = Site::start(Options::default()).await;
    for (name, leaf, backend) in [
        ("a.example.com", &site.leaves[0], "a"),
        ("b.example.com", &site.leaves[1], "b"),
    ] {
        let mut tls = site
            .pki
            .handshake(site.gateway.addr, Hello::h2(name))
            .await
            .unwrap_or_else(|error| panic!("handshake for {name}: {error}"));
        assert!(peer_leaf(&tls) == Some(leaf.der.clone()), "{name}");
        // The backend offers no ALPN; the gateway did not answer in its place.
        assert_eq!(tls.get_ref().1.alpn_protocol(), None);
        assert_eq!(greeting(&mut tls).await, backend);
        echo(&mut tls, "ping through the gateway").await;
        finish(tls).await;
    }
}

#[tokio::test]
async fn connections_are_split_by_weight() {
    // Routing needs only the ClientHello, so plain TCP backends that greet at once stand in
    // for TLS ones here: 200 TLS handshakes would make this test slow in debug builds.
    let three = StreamBackend::tcp("three").await;
    let one = StreamBackend::tcp("one").await;
    let zero = StreamBackend::tcp("zero").await;
    let route = stream_route(
        "split",
        RouteKind::Tls,
        &["w.example.com"],
        vec![
            weighted(3, three.backend()),
            weighted(1, one.backend()),
            weighted(0, zero.backend()),
        ],
    );
    let gateway = Gateway::start(bind_config(ir::Bind {
        tls_passthrough: vec![passthrough_listener(None, vec![route])],
        ..ir::Bind::default()
    }))
    .await;

    let hello = client_hello("w.example.com");
    let mut seen: HashMap<String, u32> = HashMap::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(gateway.addr).await.expect("connect");
        stream
            .write_all(&hello)
            .await
            .expect("send the ClientHello");
        *seen.entry(greeting(&mut stream).await).or_default() += 1;
    }
    let count = |name: &str| seen.get(name).copied().unwrap_or(0);
    assert_eq!(count("zero"), 0, "{seen:?}");
    assert_eq!(count("three") + count("one"), 200, "{seen:?}");
    // 150 expected; this allows about five standard deviations either way.
    assert!((120..=180).contains(&count("three")), "{seen:?}");
}

#[tokio::test]
async fn an_sni_no_route_takes_is_closed_and_the_socket_serves_on() {
    let site = Site::start(Options::default()).await;
    let addr = site.gateway.addr;

    for name in ["other.test", "c.example.com"] {
        let refused = site.pki.handshake(addr, Hello::http1(name)).await;
        let error = refused.expect_err("a handshake for an unrouted name succeeded");
        assert!(closed_without_alert(&error), "{name}: {error:?}");
    }
    let no_sni = Hello {
        sni: false,
        ..Hello::http1("a.example.com")
    };
    let error = site.pki.handshake(addr, no_sni).await.expect_err("no SNI");
    assert!(closed_without_alert(&error), "no SNI: {error:?}");

    let mut tls = site
        .pki
        .handshake(addr, Hello::http1("a.example.com"))
        .await
        .expect("the socket still serves");
    assert_eq!(greeting(&mut tls).await, "a");
}

#[tokio::test]
async fn a_route_without_a_usable_backend_is_closed() {
    let pki = Authority::new();
    let refusing = backend(
        "refusing",
        BackendProtocol::Http1,
        &[([127, 0, 0, 1], unused_port()).into()],
    );
    let route = stream_route("down", RouteKind::Tls, &[], vec![weighted(1, refusing)]);
    let gateway = Gateway::start(bind_config(ir::Bind {
        tls_passthrough: vec![passthrough_listener(None, vec![route])],
        ..ir::Bind::default()
    }))
    .await;
    let refused = pki
        .handshake(gateway.addr, Hello::http1("down.example.com"))
        .await;
    let error = refused.expect_err("no backend to talk to");
    assert!(closed_without_alert(&error), "{error:?}");
}

#[tokio::test]
async fn a_client_hello_in_several_segments_is_reassembled() {
    let site = Site::start(Options::default()).await;
    let relayed = dribbling(site.gateway.addr, 4).await;
    let mut tls = site
        .pki
        .handshake_over(relayed, Hello::http1("b.example.com"))
        .await
        .expect("handshake with the backend");
    assert!(peer_leaf(&tls) == Some(site.leaves[1].der.clone()));
    assert_eq!(greeting(&mut tls).await, "b");
    echo(&mut tls, "after a slow hello").await;
}

#[tokio::test]
async fn garbage_and_stalled_clients_are_closed_and_the_socket_serves_on() {
    let site = Site::start(Options {
        client_hello_timeout: Duration::from_millis(200),
        ..Options::default()
    })
    .await;
    let addr = site.gateway.addr;

    let http = closed_after(addr, b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n").await;
    assert!(http.is_empty(), "{http:?}");
    // SSLv2-style hello, a 16 MiB "ClientHello", a zero-length record: refused at once.
    for garbage in [
        &b"\x80\x2e\x01\x03\x01\x00\x15"[..],
        b"\x16\x03\x01\x00\x04\x01\xff\xff\xff",
        b"\x16\x03\x01\x00\x00",
    ] {
        assert!(closed_after(addr, garbage).await.is_empty(), "{garbage:?}");
    }
    // Silence, and half a ClientHello: closed by the ClientHello timeout.
    assert!(closed_after(addr, b"").await.is_empty());
    let hello_start = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
    assert!(closed_after(addr, hello_start).await.is_empty());

    let mut tls = site
        .pki
        .handshake(addr, Hello::http1("a.example.com"))
        .await
        .expect("the socket still serves");
    assert_eq!(greeting(&mut tls).await, "a");
}

#[tokio::test]
async fn a_mixed_socket_passes_one_name_through_and_terminates_another() {
    let pki = Authority::new();
    let gateway_leaf = pki.issue(&["term.example.com"]);
    let backend_leaf = pki.issue(&["pass.example.com"]);
    let terminated = Upstream::echo("terminated").await;
    let passed = StreamBackend::tls("passed", &backend_leaf).await;
    let http_rule = forward("https", vec![weighted(1, terminated.backend())]);
    let bind = ir::Bind {
        http: vec![https_listener(
            Some("term.example.com"),
            &gateway_leaf,
            vec![route(None, PathMatch::prefix("/"), http_rule)],
        )],
        // Without hostname, this listener takes every name the HTTPS listener does not.
        tls_passthrough: vec![passthrough_listener(
            None,
            vec![stream_route(
                "pass",
                RouteKind::Tls,
                &["pass.example.com"],
                vec![weighted(1, passed.backend())],
            )],
        )],
        ..ir::Bind::default()
    };
    let gateway = Gateway::start(bind_config(bind)).await;

    let mut tls = pki
        .handshake(gateway.addr, Hello::http1("pass.example.com"))
        .await
        .expect("handshake with the backend");
    assert!(peer_leaf(&tls) == Some(backend_leaf.der.clone()));
    assert_eq!(greeting(&mut tls).await, "passed");
    echo(&mut tls, "passed through").await;

    // The peeked ClientHello is replayed to the gateway's own TLS, HTTP/2 included.
    for hello in [
        Hello::h2("term.example.com"),
        Hello::http1("term.example.com"),
    ] {
        let mut client = pki
            .connect(gateway.addr, hello)
            .await
            .expect("handshake with the gateway");
        assert!(client.leaf == gateway_leaf.der);
        assert_eq!(client.is_http2(), hello.alpn.first() == Some(&H2));
        let answer = client.get("term.example.com", "/x").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.echoed()["backend"], "terminated");
        assert_eq!(answer.echoed()["headers"]["x-forwarded-proto"][0], "https");
    }

    let refused = pki.handshake(gateway.addr, Hello::http1("else.test")).await;
    let error = refused.expect_err("no route takes else.test");
    assert!(closed_without_alert(&error), "{error:?}");
    finish(tls).await;
}
