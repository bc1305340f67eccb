//! TLS origination under a BackendTLSPolicy: the policy hostname is the SNI and the name
//! verified, subjectAltNames replace it, the Gateway's client certificate is presented, and
//! every certificate the policy rejects (wrong host, expired, unknown CA) is answered 502, never
//! 504; a policy without usable trust anchors is answered 500.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use ir::{Backend, BackendProtocol, BackendTls, BackendTrust, HttpListener, PathMatch};
use ir::{Endpoint, SubjectAltName, TlsCertificate};
use rcgen::{CertificateParams, SanType};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::support::tls::{Authority, Leaf};
use crate::support::{Gateway, config, forward, listener, route, weighted};

/// An HTTPS upstream that answers with the SNI it saw and whether a client certificate came.
struct TlsUpstream {
    addr: SocketAddr,
}

impl TlsUpstream {
    /// Serves `leaf`; with `client_ca`, a client certificate signed by it is required.
    async fn start(leaf: &Leaf, client_ca: Option<&Authority>) -> Self {
        let acceptor = acceptor(leaf, client_ca);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(stream).await else {
                        return;
                    };
                    let (_, session) = stream.get_ref();
                    let sni = session.server_name().map(str::to_string);
                    let client_cert = session.peer_certificates().is_some_and(|c| !c.is_empty());
                    let service = service_fn(move |request: Request<Incoming>| {
                        let body = json!({
                            "sni": sni,
                            "clientCertificate": client_cert,
                            "path": request.uri().path(),
                            "version": format!("{:?}", request.version()),
                        });
                        async move {
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(
                                body.to_string(),
                            ))))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr }
    }

    /// A backend for this upstream under `tls`.
    fn backend(&self, tls: BackendTls) -> Arc<Backend> {
        tls_backend(self.addr, BackendProtocol::Http1, tls)
    }
}

/// A backend at `addr` speaking `protocol` under `tls`.
fn tls_backend(addr: SocketAddr, protocol: BackendProtocol, tls: BackendTls) -> Arc<Backend> {
    Arc::new(Backend {
        name: "default/secure:443".into(),
        protocol,
        endpoints: vec![Endpoint { addr }],
        tls: Some(Arc::new(tls)),
        health: None,
    })
}

/// A TLS acceptor serving `leaf` with ALPN h2 and http/1.1; with `client_ca`, a client
/// certificate signed by it is required.
fn acceptor(leaf: &Leaf, client_ca: Option<&Authority>) -> TlsAcceptor {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(&ca.ca_pem) {
                roots.add(cert.expect("CA PEM")).expect("CA anchor");
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let chain = CertificateDer::pem_slice_iter(&leaf.certificate.chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .expect("chain");
    let key = PrivateKeyDer::from_pem_slice(&leaf.certificate.key_pem).expect("key");
    let mut config = builder.with_single_cert(chain, key).expect("server config");
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    TlsAcceptor::from(Arc::new(config))
}

/// A policy trusting `ca` with `hostname`.
fn policy(ca: &Authority, hostname: &str, names: Vec<SubjectAltName>) -> BackendTls {
    BackendTls {
        policy: "default/policy".into(),
        server_name: hostname.into(),
        trust: BackendTrust::Certificates {
            source: "default/ca".into(),
            ca_pem: ca.ca_pem.clone(),
        },
        subject_alt_names: names,
    }
}

/// A plain HTTP listener whose every path goes to `backend`, presenting `client` to it.
fn gateway_to(backend: Arc<Backend>, client: Option<Arc<TlsCertificate>>) -> ir::Config {
    let rule = forward("secure", vec![weighted(1, backend)]);
    let plain = listener(None, vec![route(None, PathMatch::prefix("/"), rule)]);
    config(vec![Arc::new(HttpListener {
        backend_client_certificate: client,
        ..HttpListener::clone(&plain)
    })])
}

#[tokio::test]
async fn policy_hostname_is_the_sni_and_the_verified_name() {
    let ca = Authority::new();
    let upstream = TlsUpstream::start(&ca.issue(&["api.internal"]), None).await;
    let backend = upstream.backend(policy(&ca, "api.internal", Vec::new()));
    let gateway = Gateway::start(gateway_to(backend, None)).await;

    for target in ["/first", "/second"] {
        let answer = gateway.get("www.example.com", target).await;
        assert_eq!(answer.status, StatusCode::OK);
        let echoed = answer.echoed();
        assert_eq!(echoed["sni"], "api.internal");
        assert_eq!(echoed["path"], target);
        assert_eq!(echoed["clientCertificate"], false);
    }
}

#[tokio::test]
async fn certificate_for_another_host_is_refused_with_502() {
    let ca = Authority::new();
    let upstream = TlsUpstream::start(&ca.issue(&["other.internal"]), None).await;
    let backend = upstream.backend(policy(&ca, "api.internal", Vec::new()));
    let gateway = Gateway::start(gateway_to(backend, None)).await;

    let answer = gateway.get("www.example.com", "/").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn expired_certificate_is_refused_with_502() {
    let ca = Authority::new();
    let mut params = CertificateParams::new(vec!["api.internal".to_string()]).expect("names");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    let expired = ca.issue_with("expired", params);
    let upstream = TlsUpstream::start(&expired, None).await;
    let backend = upstream.backend(policy(&ca, "api.internal", Vec::new()));
    let gateway = Gateway::start(gateway_to(backend, None)).await;

    let answer = gateway.get("www.example.com", "/").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused_with_502() {
    let ca = Authority::new();
    let other = Authority::new();
    let upstream = TlsUpstream::start(&other.issue(&["api.internal"]), None).await;
    let backend = upstream.backend(policy(&ca, "api.internal", Vec::new()));
    let gateway = Gateway::start(gateway_to(backend, None)).await;

    let answer = gateway.get("www.example.com", "/").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn subject_alt_names_replace_the_hostname() {
    let ca = Authority::new();
    let mut params = CertificateParams::new(vec!["workload.internal".to_string()]).expect("names");
    params.subject_alt_names.push(SanType::URI(
        "spiffe://cluster.local/ns/default/sa/api"
            .try_into()
            .expect("URI"),
    ));
    let upstream = TlsUpstream::start(&ca.issue_with("spiffe", params), None).await;
    let expect = |names: Vec<SubjectAltName>| {
        gateway_to(upstream.backend(policy(&ca, "api.internal", names)), None)
    };
    let cases = [
        (
            vec![SubjectAltName::Uri(
                "spiffe://cluster.local/ns/default/sa/api".into(),
            )],
            StatusCode::OK,
        ),
        (
            vec![SubjectAltName::Hostname("workload.internal".into())],
            StatusCode::OK,
        ),
        (
            vec![
                SubjectAltName::Uri("spiffe://cluster.local/ns/default/sa/web".into()),
                SubjectAltName::Hostname("api.internal".into()),
            ],
            StatusCode::BAD_GATEWAY,
        ),
    ];
    for (names, status) in cases {
        let gateway = Gateway::start(expect(names.clone())).await;
        let answer = gateway.get("www.example.com", "/").await;
        assert_eq!(answer.status, status, "{names:?}");
        if status == StatusCode::OK {
            // The hostname is still the SNI, although it is not what was verified.
            assert_eq!(answer.echoed()["sni"], "api.internal");
        }
    }
}

#[tokio::test]
async fn gateway_client_certificate_is_presented() {
    let ca = Authority::new();
    let clients = Authority::new();
    let upstream = TlsUpstream::start(&ca.issue(&["api.internal"]), Some(&clients)).await;
    let backend = upstream.backend(policy(&ca, "api.internal", Vec::new()));
    let identity = clients.issue(&["gateway.internal"]);

    let gateway = Gateway::start(gateway_to(
        backend.clone(),
        Some(identity.certificate.clone()),
    ))
    .await;
    let answer = gateway.get("www.example.com", "/").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.echoed()["clientCertificate"], true);

    // Without one, the backend refuses the handshake.
    let gateway = Gateway::start(gateway_to(backend, None)).await;
    let answer = gateway.get("www.example.com", "/").await;
    assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
}

#[tokio::test]
async fn policy_without_trust_anchors_is_answered_500() {
    let ca = Authority::new();
    let upstream = TlsUpstream::start(&ca.issue(&["api.internal"]), None).await;
    let backend = upstream.backend(BackendTls {
        trust: BackendTrust::Invalid("ConfigMap default/ca does not exist".into()),
        ..policy(&ca, "api.internal", Vec::new())
    });
    let gateway = Gateway::start(gateway_to(backend, None)).await;

    let answer = gateway.get("www.example.com", "/").await;
    assert_eq!(answer.status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn http2_backends_get_alpn_h2_over_tls() {
    let ca = Authority::new();
    let upstream = TlsUpstream::start(&ca.issue(&["api.internal"]), None).await;
    let backend = tls_backend(
        upstream.addr,
        BackendProtocol::H2c,
        policy(&ca, "api.internal", Vec::new()),
    );
    let gateway = Gateway::start(gateway_to(backend, None)).await;

    let answer = gateway.get("www.example.com", "/grpc").await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.echoed()["version"], "HTTP/2.0");
    assert_eq!(answer.echoed()["sni"], "api.internal");
}

#[tokio::test]
async fn websocket_handshakes_reach_tls_backends_over_tls() {
    use tokio_tungstenite::tungstenite::Message;

    use crate::support::websocket::{EchoUpstream, connect, round_trip};

    let ca = Authority::new();
    let leaf = ca.issue(&["ws.internal"]);
    let mut upstream = EchoUpstream::start_tls(acceptor(&leaf, None)).await;
    let backend = tls_backend(
        upstream.addr,
        BackendProtocol::Http1,
        policy(&ca, "ws.internal", Vec::new()),
    );
    let gateway = Gateway::start(gateway_to(backend, None)).await;

    let (mut ws, _) = connect(gateway.addr, "www.example.com", "/ws")
        .await
        .expect("the handshake passes through");
    upstream.next_handshake().await;
    let hello = Message::text("over tls");
    assert_eq!(round_trip(&mut ws, hello.clone()).await, hello);

    // A backend whose certificate the policy rejects gets no handshake: 502.
    let backend = tls_backend(
        upstream.addr,
        BackendProtocol::Http1,
        policy(&ca, "other.internal", Vec::new()),
    );
    let gateway = Gateway::start(gateway_to(backend, None)).await;
    let refused = connect(gateway.addr, "www.example.com", "/ws").await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::BAD_GATEWAY);
        }
        other => panic!("expected a 502, got {other:?}"),
    }
}
