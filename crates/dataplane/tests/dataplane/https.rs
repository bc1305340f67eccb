//! HTTPS listeners: certificates by SNI, ALPN, misdirected requests, certificate rotation,
//! sockets that change between plain and TLS, and clients that never finish a handshake.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dataplane::{Dataplane, Options};
use http::StatusCode;
use ir::{Candidate, PathMatch, TlsCertificate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::tls::{Authority, H2, HTTP1, Hello, Leaf, https_listener};
use crate::support::{
    BIND, Gateway, PATIENCE, Upstream, config, everything_to, forward, route, weighted,
};

/// Every path to `upstream`, through a rule named after it.
fn to(upstream: &Upstream) -> Vec<Candidate> {
    let rule = forward(&upstream.name, vec![weighted(1, upstream.backend())]);
    vec![route(None, PathMatch::prefix("/"), rule)]
}

/// Two HTTPS listeners on one socket, each with its own certificate and upstream:
/// `a.example.com` ("exact") and `*.example.com` ("wildcard").
struct TwoListeners {
    pki: Authority,
    exact: Leaf,
    wildcard: Leaf,
    upstreams: [Upstream; 2],
}

impl TwoListeners {
    async fn new() -> Self {
        let pki = Authority::new();
        Self {
            exact: pki.issue(&["a.example.com"]),
            wildcard: pki.issue(&["*.example.com"]),
            pki,
            upstreams: [
                Upstream::echo("exact").await,
                Upstream::echo("wildcard").await,
            ],
        }
    }

    fn listeners(&self) -> Vec<Arc<ir::HttpListener>> {
        vec![
            https_listener(Some("a.example.com"), &self.exact, to(&self.upstreams[0])),
            https_listener(
                Some("*.example.com"),
                &self.wildcard,
                to(&self.upstreams[1]),
            ),
        ]
    }
}

/// Writes `bytes` on a new connection and reads until the gateway closes it, which it must do
/// within [`PATIENCE`].
async fn raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(bytes).await.expect("send");
    let mut received = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the gateway kept the connection open");
    received
}

#[tokio::test]
async fn https_requests_are_routed_with_forwarded_proto() {
    let pki = Authority::new();
    let leaf = pki.issue(&["www.example.com"]);
    let upstream = Upstream::echo("secure").await;
    let listener = https_listener(Some("www.example.com"), &leaf, to(&upstream));
    let gateway = Gateway::start(config(vec![listener])).await;

    let mut client = pki
        .connect(gateway.addr, Hello::http1("www.example.com"))
        .await
        .expect("handshake");
    assert_eq!(client.alpn.as_deref(), Some(HTTP1));
    for target in ["/first?q=1", "/second"] {
        let answer = client.get("www.example.com", target).await;
        assert_eq!(answer.status, StatusCode::OK);
        let echoed = answer.echoed();
        assert_eq!(echoed["backend"], "secure");
        assert_eq!(echoed["path"], target);
        assert_eq!(echoed["headers"]["x-forwarded-proto"][0], "https");
    }

    // A client that offers no ALPN at all gets HTTP/1.1.
    let no_alpn = Hello {
        alpn: &[],
        ..Hello::http1("www.example.com")
    };
    let mut client = pki.connect(gateway.addr, no_alpn).await.expect("handshake");
    assert_eq!(client.alpn, None);
    let answer = client.get("www.example.com", "/").await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn sni_selects_the_certificate_of_the_matching_listener() {
    let site = TwoListeners::new().await;
    let fallback = site.pki.issue(&["fallback.example.net"]);
    let fallback_upstream = Upstream::echo("fallback").await;
    let mut listeners = site.listeners();
    listeners.push(https_listener(None, &fallback, to(&fallback_upstream)));
    let gateway = Gateway::start(config(listeners)).await;

    let cases = [
        ("a.example.com", &site.exact, "exact"),
        ("b.example.com", &site.wildcard, "wildcard"),
        ("fallback.example.net", &fallback, "fallback"),
    ];
    for (server_name, leaf, backend) in cases {
        let mut client = site
            .pki
            .connect(gateway.addr, Hello::http1(server_name))
            .await
            .unwrap_or_else(|error| panic!("handshake for {server_name}: {error}"));
        assert!(
            client.leaf == leaf.der,
            "{server_name} got another certificate"
        );
        let answer = client.get(server_name, "/").await;
        assert_eq!(answer.echoed()["backend"], backend, "{server_name}");
    }

    // Without SNI, the listener without hostname answers.
    let no_sni = Hello {
        sni: false,
        ..Hello::http1("fallback.example.net")
    };
    let client = site
        .pki
        .connect(gateway.addr, no_sni)
        .await
        .expect("handshake");
    assert!(client.leaf == fallback.der);
}

#[tokio::test]
async fn sni_of_no_listener_fails_the_handshake_and_nothing_else() {
    let site = TwoListeners::new().await;
    let gateway = Gateway::start(config(site.listeners())).await;

    let unknown = site
        .pki
        .handshake(gateway.addr, Hello::http1("other.test"))
        .await;
    assert!(
        unknown.is_err(),
        "a handshake for an unknown name succeeded"
    );

    // Without SNI and without a listener without hostname, the most specific listener.
    let no_sni = Hello {
        sni: false,
        ..Hello::http1("a.example.com")
    };
    let client = site
        .pki
        .connect(gateway.addr, no_sni)
        .await
        .expect("handshake");
    assert!(client.leaf == site.exact.der);

    let mut client = site
        .pki
        .connect(gateway.addr, Hello::http1("a.example.com"))
        .await
        .expect("the socket still serves");
    assert_eq!(
        client.get("a.example.com", "/").await.status,
        StatusCode::OK
    );

    // One refused handshake, two completed, each counted for the socket.
    let metrics = gateway.dataplane.request_metrics();
    let count = |result: &str| {
        let prefix =
            format!("portcullis_tls_handshakes_total{{bind=\"{BIND}\",result=\"{result}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|n| n.parse::<u64>().ok())
    };
    assert_eq!(count("failed"), Some(1), "{metrics}");
    assert_eq!(count("ok"), Some(2), "{metrics}");
}

#[tokio::test]
async fn alpn_h2_serves_http2() {
    let site = TwoListeners::new().await;
    let gateway = Gateway::start(config(site.listeners())).await;

    let mut client = site
        .pki
        .connect(gateway.addr, Hello::h2("a.example.com"))
        .await
        .expect("handshake");
    assert_eq!(client.alpn.as_deref(), Some(H2));
    assert!(client.is_http2());
    let answer = client.get("a.example.com", "/over/h2?q").await;
    assert_eq!(answer.status, StatusCode::OK);
    let echoed = answer.echoed();
    assert_eq!(echoed["backend"], "exact");
    assert_eq!(echoed["host"], "a.example.com");
    assert_eq!(echoed["path"], "/over/h2?q");
    assert_eq!(echoed["headers"]["x-forwarded-proto"][0], "https");
}

#[tokio::test]
async fn host_of_another_listener_is_misdirected() {
    let site = TwoListeners::new().await;
    let gateway = Gateway::start(config(site.listeners())).await;

    let mut exact = site
        .pki
        .connect(gateway.addr, Hello::http1("a.example.com"))
        .await
        .expect("handshake");
    let answer = exact.get("a.example.com", "/").await;
    assert_eq!(answer.echoed()["backend"], "exact");
    // The wildcard listener serves this host, but the connection was made for the exact one.
    let answer = exact.get("b.example.com", "/").await;
    assert_eq!(answer.status, StatusCode::MISDIRECTED_REQUEST);
    // No listener serves this host at all: 404, as the spec asks.
    let answer = exact.get("unknown.test", "/").await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);

    // An HTTP/2 client may reuse a `*.example.com` connection for `a.example.com` (the
    // certificate covers it), but a more specific listener owns that host.
    let mut wildcard = site
        .pki
        .connect(gateway.addr, Hello::h2("b.example.com"))
        .await
        .expect("handshake");
    let answer = wildcard.get("a.example.com", "/").await;
    assert_eq!(answer.status, StatusCode::MISDIRECTED_REQUEST);
    let answer = wildcard.get("c.example.com", "/").await;
    assert_eq!(answer.echoed()["backend"], "wildcard");
}

#[tokio::test]
async fn rotated_certificate_reaches_new_connections_only() {
    let pki = Authority::new();
    let old = pki.issue(&["a.example.com"]);
    let new = pki.issue(&["a.example.com"]);
    let upstream = Upstream::echo("a").await;
    let with = |leaf: &Leaf| config(vec![https_listener(None, leaf, to(&upstream))]);
    let gateway = Gateway::start(with(&old)).await;

    let mut before = pki
        .connect(gateway.addr, Hello::http1("a.example.com"))
        .await
        .expect("handshake");
    assert!(before.leaf == old.der);
    assert_eq!(
        before.get("a.example.com", "/").await.status,
        StatusCode::OK
    );

    let failures = gateway.dataplane.apply(Arc::new(with(&new))).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(gateway.dataplane.local_addr(BIND), Some(gateway.addr));

    let mut after = pki
        .connect(gateway.addr, Hello::http1("a.example.com"))
        .await
        .expect("handshake");
    assert!(
        after.leaf == new.der,
        "the new connection got the old certificate"
    );
    assert_eq!(after.get("a.example.com", "/").await.status, StatusCode::OK);
    // The connection made before the rotation goes on as it was.
    assert_eq!(
        before.get("a.example.com", "/").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn unusable_certificate_fails_only_its_listener() {
    let pki = Authority::new();
    let good = pki.issue(&["good.example.com"]);
    let other = pki.issue(&["bad.example.com"]);
    // The chain of one certificate with the key of another.
    let mismatched = Leaf {
        certificate: Arc::new(TlsCertificate {
            source: "default/mismatched".into(),
            chain_pem: other.certificate.chain_pem.clone(),
            key_pem: good.certificate.key_pem.clone(),
        }),
        der: other.der.clone(),
    };
    let upstream = Upstream::echo("good").await;
    let gateway = Gateway::start(config(vec![
        https_listener(Some("good.example.com"), &good, to(&upstream)),
        https_listener(Some("bad.example.com"), &mismatched, to(&upstream)),
    ]))
    .await;

    let bad = pki
        .handshake(gateway.addr, Hello::http1("bad.example.com"))
        .await;
    assert!(
        bad.is_err(),
        "a listener with a broken certificate completed a handshake"
    );
    let mut client = pki
        .connect(gateway.addr, Hello::http1("good.example.com"))
        .await
        .expect("handshake");
    assert_eq!(
        client.get("good.example.com", "/").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn garbage_and_stalled_clients_do_not_break_the_socket() {
    let site = TwoListeners::new().await;
    let dataplane = Dataplane::new(Options {
        tls_handshake_timeout: Duration::from_millis(200),
        ..Options::default()
    });
    let failures = dataplane.apply(Arc::new(config(site.listeners()))).await;
    assert!(failures.is_empty(), "{failures:?}");
    let addr = dataplane.local_addr(BIND).expect("listening");

    let plain_http = raw(addr, b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n").await;
    assert!(!plain_http.starts_with(b"HTTP/"), "plain HTTP was served");
    // Nothing at all, then the start of a ClientHello that never completes: both are cut off
    // by the handshake timeout (`raw` fails if the connection stays open).
    raw(addr, b"").await;
    raw(addr, b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03").await;

    let mut client = site
        .pki
        .connect(addr, Hello::http1("a.example.com"))
        .await
        .expect("the socket still serves");
    assert_eq!(
        client.get("a.example.com", "/").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn socket_turns_between_plain_and_tls_without_rebinding() {
    let site = TwoListeners::new().await;
    let plain_upstream = Upstream::echo("plain").await;
    let gateway = Gateway::start(everything_to(&plain_upstream)).await;
    let answer = gateway.get("a.example.com", "/").await;
    assert_eq!(answer.echoed()["headers"]["x-forwarded-proto"][0], "http");

    let failures = gateway
        .dataplane
        .apply(Arc::new(config(site.listeners())))
        .await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(gateway.dataplane.local_addr(BIND), Some(gateway.addr));
    let mut client = site
        .pki
        .connect(gateway.addr, Hello::http1("a.example.com"))
        .await
        .expect("handshake after the switch to TLS");
    assert_eq!(
        client.get("a.example.com", "/").await.status,
        StatusCode::OK
    );
    let plain_http = raw(
        gateway.addr,
        b"GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n",
    )
    .await;
    assert!(!plain_http.starts_with(b"HTTP/"), "plain HTTP was served");

    let failures = gateway
        .dataplane
        .apply(Arc::new(everything_to(&plain_upstream)))
        .await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(gateway.dataplane.local_addr(BIND), Some(gateway.addr));
    let answer = gateway.get("a.example.com", "/").await;
    assert_eq!(answer.echoed()["backend"], "plain");
}
