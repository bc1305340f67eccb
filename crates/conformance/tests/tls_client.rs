//! Self-test of the HTTPS client with real sockets on loopback and no portcullis: a small
//! rustls server with the generated certificates stands in for an HTTPS listener. It checks
//! the pieces the conformance cases rely on: the pinned `trust` of a leaf with `*.org`
//! SANs, ALPN `h2`, `client_cert` and `client_cert_requested`, the `connection-error`
//! judgement of a refused client certificate, and `tls-connection-rejected`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use conformance::client::{self, Outgoing, Protocol};
use conformance::expect;
use conformance::failure::{Failure, FailureKind};
use conformance::tls::{ALPN_H2, ALPN_HTTP1, Keyring, TlsClient, TrustRef};

const INFRA: &str = "gateway-conformance-infra";
const SERVER: &str = "tls-validity-checks-certificate";
const TIMEOUT: Duration = Duration::from_secs(10);

/// The generated objects and their data, decoded.
struct Material {
    objects: Vec<Value>,
}

impl Material {
    fn new() -> Self {
        Self {
            objects: conformance::certs::generated_objects().expect("generated"),
        }
    }

    fn data(&self, name: &str, key: &str) -> Vec<u8> {
        let object = self
            .objects
            .iter()
            .find(|o| o.pointer("/metadata/name").and_then(Value::as_str) == Some(name))
            .expect("generated object");
        let text = object["data"][key].as_str().expect("data entry");
        match object["kind"].as_str() {
            Some("Secret") => base64::engine::general_purpose::STANDARD
                .decode(text)
                .expect("base64"),
            _ => text.as_bytes().to_vec(),
        }
    }

    /// A server presenting `tls-validity-checks-certificate`, requiring a client
    /// certificate signed by the CA in `client_ca` when given.
    fn server(&self, client_ca: Option<&str>) -> Arc<ServerConfig> {
        let provider = conformance::tls::provider();
        let chain = CertificateDer::pem_slice_iter(&self.data(SERVER, "tls.crt"))
            .collect::<Result<Vec<_>, _>>()
            .expect("server chain");
        let key = PrivateKeyDer::from_pem_slice(&self.data(SERVER, "tls.key")).expect("key");
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = match client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(&self.data(ca, "ca.crt")) {
                    roots.add(cert.expect("ca pem")).expect("ca");
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .expect("client verifier");
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key).expect("server config");
        config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
        Arc::new(config)
    }
}

/// Serves HTTPS on an ephemeral loopback port: every request gets 200 with its version in
/// `x-proto`. Connections whose handshake fails are dropped.
async fn serve_https(config: Arc<ServerConfig>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(|request: hyper::Request<hyper::body::Incoming>| {
                    let proto = format!("{:?}", request.version());
                    async move {
                        Ok::<_, Infallible>(
                            hyper::Response::builder()
                                .header("x-proto", proto)
                                .body(Full::new(Bytes::from_static(b"ok")))
                                .expect("response"),
                        )
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    });
    address
}

fn client(keyring: &Keyring, sni: &str, client_secret: Option<&str>, alpn: &[u8]) -> TlsClient {
    let trust = TrustRef::Secret(format!("{INFRA}/{SERVER}"));
    let client_cert = client_secret.map(|name| TrustRef::Secret(format!("{INFRA}/{name}")));
    keyring
        .client(sni, &trust, client_cert.as_ref(), &[alpn])
        .expect("client settings")
}

fn request(protocol: Protocol, tls: TlsClient) -> Outgoing {
    Outgoing {
        protocol,
        method: "GET".to_owned(),
        target: "/".to_owned(),
        host: "example.org".to_owned(),
        headers: Vec::new(),
        tls: Some(tls),
    }
}

#[tokio::test]
async fn https_over_http1_and_h2_trusts_the_pinned_wildcard_leaf() {
    let material = Material::new();
    let keyring = Keyring::from_objects(&material.objects);
    let address = serve_https(material.server(None)).await;

    for (protocol, alpn, want) in [
        (Protocol::Http1, ALPN_HTTP1, "HTTP/1.1"),
        (Protocol::Http2, ALPN_H2, "HTTP/2.0"),
    ] {
        // `*.org` covers example.org and `*.wildcard.org` the deeper name.
        for sni in ["example.org", "third-example.wildcard.org"] {
            let outgoing = request(protocol, client(&keyring, sni, None, alpn));
            let reply = client::attempt(address, &outgoing, TIMEOUT)
                .await
                .unwrap_or_else(|f| panic!("{sni} over {want}: {f}"));
            assert_eq!(reply.joined("x-proto").as_deref(), Some(want));
            assert_eq!(reply.client_cert_requested, Some(false));
        }
    }

    let wrong_name = request(
        Protocol::Http1,
        client(&keyring, "example.com", None, ALPN_HTTP1),
    );
    let failure = client::attempt(address, &wrong_name, TIMEOUT)
        .await
        .expect_err("example.com is not in the certificate");
    assert_eq!(failure.kind, FailureKind::UntrustedServer, "{failure}");
    assert!(
        expect::connection_error(&Err(failure), None).is_err(),
        "distrusting the server is not the server refusing"
    );
}

#[tokio::test]
async fn client_certificates_are_presented_and_refusals_judged() {
    let material = Material::new();
    let keyring = Keyring::from_objects(&material.objects);
    let address = serve_https(material.server(Some("tls-validity-checks-ca-certificate"))).await;

    let accepted = request(
        Protocol::Http1,
        client(
            &keyring,
            "example.org",
            Some("tls-validity-checks-client-certificate"),
            ALPN_HTTP1,
        ),
    );
    let reply = client::attempt(address, &accepted, TIMEOUT)
        .await
        .expect("a certificate of the right CA is accepted");
    assert_eq!(
        (reply.status, reply.client_cert_requested),
        (200, Some(true))
    );

    let wrong_ca = request(
        Protocol::Http1,
        client(
            &keyring,
            "example.org",
            Some("tls-validity-checks-per-port-client-certificate"),
            ALPN_HTTP1,
        ),
    );
    let outcome = client::attempt(address, &wrong_ca, TIMEOUT).await;
    // TLS 1.3: the client's handshake is done before the server reads its certificate, so
    // the server's alert arrives with the first read of the HTTP exchange.
    assert!(
        matches!(&outcome, Err(f) if matches!(f.kind, FailureKind::Alert(_))),
        "{outcome:?}"
    );
    assert_eq!(
        expect::connection_error(&outcome, Some(true)),
        Ok(()),
        "{outcome:?}"
    );

    let without = request(
        Protocol::Http1,
        client(&keyring, "example.org", None, ALPN_HTTP1),
    );
    let outcome = client::attempt(address, &without, TIMEOUT).await;
    assert_eq!(expect::connection_error(&outcome, Some(true)), Ok(()));
}

#[tokio::test]
async fn a_server_closing_on_client_hello_is_a_rejected_handshake() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            // Read the ClientHello, then close without a word, as a listener that knows
            // no route for the SNI does.
            let mut buffer = [0u8; 512];
            let _ = tcp.readable().await;
            let _ = tcp.try_read(&mut buffer);
            drop(tcp);
        }
    });
    let keyring = Keyring::default();
    let tls = keyring
        .client("non.matching.com", &TrustRef::SystemRoots, None, &[])
        .expect("settings");
    let connection = tls.connection().expect("connection");
    let tcp = TcpStream::connect(address).await.expect("connect");
    let outcome = connection.handshake(tcp).await.map(drop).map_err(|e| {
        Failure::from_error(
            &anyhow::Error::new(e),
            Some(connection.client_cert_requested()),
        )
    });
    assert_eq!(
        expect::tls_connection_rejected(&outcome),
        Ok(()),
        "{outcome:?}"
    );

    // A server that completes its side with an untrusted certificate is no rejection.
    let material = Material::new();
    let https = serve_https(material.server(None)).await;
    let connection = tls.connection().expect("connection");
    let tcp = TcpStream::connect(https).await.expect("connect");
    let outcome = connection
        .handshake(tcp)
        .await
        .map(drop)
        .map_err(|e| Failure::from_error(&anyhow::Error::new(e), None));
    assert!(expect::tls_connection_rejected(&outcome).is_err());
}
