//! Frontend client certificate validation: `AllowValidOnly` requires a client certificate
//! from the configured CA, `AllowInsecureFallback` asks for one and lets every client in,
//! listeners without a setting do not ask, and a reload changes the setting of a socket.

use std::sync::Arc;

use http::StatusCode;
use ir::{Candidate, ClientValidation, ClientValidationMode, HttpListener, PathMatch};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::tls::{Authority, Hello, Identity, Leaf, https_listener};
use crate::support::{Gateway, PATIENCE, Upstream, config, forward, route, weighted};

/// Every path to `upstream`.
fn to(upstream: &Upstream) -> Vec<Candidate> {
    let rule = forward(&upstream.name, vec![weighted(1, upstream.backend())]);
    vec![route(None, PathMatch::prefix("/"), rule)]
}

/// The server PKI, the trusted client CA and an untrusted one, and one client leaf of each.
struct Pki {
    server: Authority,
    leaf: Leaf,
    trusted: Leaf,
    untrusted: Leaf,
    client_ca: Authority,
}

impl Pki {
    fn new() -> Self {
        let server = Authority::new();
        let client_ca = Authority::new();
        let other_ca = Authority::new();
        Self {
            leaf: server.issue(&["www.example.com"]),
            trusted: client_ca.issue(&["client.example.com"]),
            untrusted: other_ca.issue(&["client.example.com"]),
            server,
            client_ca,
        }
    }

    fn listener(
        &self,
        upstream: &Upstream,
        mode: Option<ClientValidationMode>,
    ) -> Arc<HttpListener> {
        let plain = https_listener(Some("www.example.com"), &self.leaf, to(upstream));
        Arc::new(HttpListener {
            client_validation: mode.map(|mode| {
                Arc::new(ClientValidation {
                    source: "infra/client-ca".into(),
                    ca_pem: self.client_ca.ca_pem.clone(),
                    mode,
                })
            }),
            ..HttpListener::clone(&plain)
        })
    }

    /// `GET /` as `identity`: the status, or `None` when the connection failed before an
    /// answer (handshake refused, or closed after it).
    async fn get(&self, gateway: &Gateway, identity: &Arc<Identity>) -> Option<StatusCode> {
        let tcp = tokio::net::TcpStream::connect(gateway.addr)
            .await
            .expect("connect");
        let mut stream = self
            .server
            .handshake_as(tcp, Hello::http1("www.example.com"), Arc::clone(identity))
            .await
            .ok()?;
        let request = b"GET / HTTP/1.1\r\nhost: www.example.com\r\nconnection: close\r\n\r\n";
        stream.write_all(request).await.ok()?;
        let mut received = Vec::new();
        tokio::time::timeout(PATIENCE, stream.read_to_end(&mut received))
            .await
            .expect("the gateway answered or closed in time")
            .ok()?;
        let text = String::from_utf8_lossy(&received);
        let code = text.strip_prefix("HTTP/1.1 ")?.get(..3)?;
        StatusCode::from_bytes(code.as_bytes()).ok()
    }
}

#[tokio::test]
async fn allow_valid_only_requires_a_certificate_from_the_ca() {
    let pki = Pki::new();
    let upstream = Upstream::echo("mtls").await;
    let listener = pki.listener(&upstream, Some(ClientValidationMode::AllowValidOnly));
    let gateway = Gateway::start(config(vec![listener])).await;

    let trusted = Arc::new(Identity::of(&pki.trusted));
    assert_eq!(pki.get(&gateway, &trusted).await, Some(StatusCode::OK));
    assert!(trusted.requested());

    let untrusted = Arc::new(Identity::of(&pki.untrusted));
    assert_eq!(pki.get(&gateway, &untrusted).await, None);
    assert!(untrusted.requested());

    let anonymous = Arc::new(Identity::none());
    assert_eq!(pki.get(&gateway, &anonymous).await, None);
    assert!(anonymous.requested());
}

#[tokio::test]
async fn allow_insecure_fallback_asks_but_lets_every_client_in() {
    let pki = Pki::new();
    let upstream = Upstream::echo("fallback").await;
    let listener = pki.listener(&upstream, Some(ClientValidationMode::AllowInsecureFallback));
    let gateway = Gateway::start(config(vec![listener])).await;

    for identity in [
        Identity::of(&pki.trusted),
        Identity::of(&pki.untrusted),
        Identity::none(),
    ] {
        let identity = Arc::new(identity);
        assert_eq!(pki.get(&gateway, &identity).await, Some(StatusCode::OK));
        assert!(identity.requested());
    }
}

#[tokio::test]
async fn without_validation_no_certificate_is_requested_and_a_reload_turns_it_on() {
    let pki = Pki::new();
    let upstream = Upstream::echo("plain").await;
    let gateway = Gateway::start(config(vec![pki.listener(&upstream, None)])).await;

    let anonymous = Arc::new(Identity::none());
    assert_eq!(pki.get(&gateway, &anonymous).await, Some(StatusCode::OK));
    assert!(!anonymous.requested());

    let strict = pki.listener(&upstream, Some(ClientValidationMode::AllowValidOnly));
    let failures = gateway
        .dataplane
        .apply(Arc::new(config(vec![strict])))
        .await;
    assert!(failures.is_empty());
    let anonymous = Arc::new(Identity::none());
    assert_eq!(pki.get(&gateway, &anonymous).await, None);
    assert!(anonymous.requested());
    let trusted = Arc::new(Identity::of(&pki.trusted));
    assert_eq!(pki.get(&gateway, &trusted).await, Some(StatusCode::OK));
}
