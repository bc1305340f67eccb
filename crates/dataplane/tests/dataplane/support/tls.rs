//! A throwaway certificate authority, HTTPS listeners, and a TLS client that reports what the
//! gateway presented (certificate, ALPN) and sends requests over HTTP/1.1 or HTTP/2.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ir::{Candidate, HttpListener, RedirectScheme, TlsCertificate};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use std::sync::atomic::{AtomicBool, Ordering};

use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::{Answer, PATIENCE, read};

/// ALPN ids as clients offer them.
pub const H2: &[u8] = b"h2";
/// ALPN id of HTTP/1.1.
pub const HTTP1: &[u8] = b"http/1.1";

/// A certificate authority that issues leaf certificates for the test's listeners.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    roots: Arc<RootCertStore>,
    /// The CA certificate, PEM-encoded (as a `ca.crt` ConfigMap key holds it).
    pub ca_pem: Vec<u8>,
}

/// A leaf certificate as the gateway gets it (PEM) and as a client sees it (DER).
pub struct Leaf {
    /// The `ir` form, for a listener.
    pub certificate: Arc<TlsCertificate>,
    /// The DER of the leaf, to compare with what the gateway presented.
    pub der: CertificateDer<'static>,
}

/// How a test client connects.
#[derive(Clone, Copy)]
pub struct Hello<'a> {
    /// The name the client verifies the certificate against, and sends as SNI if `sni`.
    pub server_name: &'a str,
    /// Whether the ClientHello carries SNI.
    pub sni: bool,
    /// ALPN protocols offered, in preference order.
    pub alpn: &'a [&'a [u8]],
}

/// An established TLS connection to the gateway, ready for requests.
pub struct TlsClient {
    /// The leaf certificate the gateway presented.
    pub leaf: CertificateDer<'static>,
    /// The ALPN protocol chosen by the gateway.
    pub alpn: Option<Vec<u8>>,
    sender: Sender,
}

enum Sender {
    Http1(http1::SendRequest<Full<Bytes>>),
    Http2(http2::SendRequest<Full<Bytes>>),
}

impl Authority {
    /// A new CA with a fresh key.
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "portcullis test CA");
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        let mut roots = RootCertStore::empty();
        roots
            .add(cert.der().clone())
            .expect("CA is a valid trust anchor");
        Self {
            ca_pem: cert.pem().into_bytes(),
            issuer: Issuer::new(params, key),
            roots: Arc::new(roots),
        }
    }

    /// A leaf for `names` (DNS SANs), signed by this CA.
    pub fn issue(&self, names: &[&str]) -> Leaf {
        let names: Vec<String> = names.iter().map(ToString::to_string).collect();
        let params = CertificateParams::new(names.clone()).expect("leaf names");
        self.issue_with(&names.join("+"), params)
    }

    /// A leaf made from `params` (for SANs of other types, validity periods), signed by this
    /// CA; `label` names it in `source`.
    pub fn issue_with(&self, label: &str, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed leaf");
        Leaf {
            certificate: Arc::new(TlsCertificate {
                source: format!("default/{label}"),
                chain_pem: cert.pem().into_bytes(),
                key_pem: key.serialize_pem().into_bytes(),
            }),
            der: cert.der().clone(),
        }
    }

    /// Connects to `addr` and completes the handshake, trusting only this CA. Every call
    /// makes a new client config, so no session is resumed.
    pub async fn connect(&self, addr: SocketAddr, hello: Hello<'_>) -> io::Result<TlsClient> {
        let stream = self.handshake(addr, hello).await?;
        let (_, session) = stream.get_ref();
        let leaf = session
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|leaf| leaf.clone().into_owned())
            .ok_or_else(|| io::Error::other("no peer certificate"))?;
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        let io = TokioIo::new(stream);
        let sender = if alpn.as_deref() == Some(H2) {
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(io::Error::other)?;
            tokio::spawn(connection);
            Sender::Http2(sender)
        } else {
            let (sender, connection) = http1::handshake(io).await.map_err(io::Error::other)?;
            tokio::spawn(connection);
            Sender::Http1(sender)
        };
        Ok(TlsClient { leaf, alpn, sender })
    }

    /// Only the TLS handshake.
    pub async fn handshake(
        &self,
        addr: SocketAddr,
        hello: Hello<'_>,
    ) -> io::Result<TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        self.handshake_over(tcp, hello).await
    }

    /// The TLS handshake over a connection the test set up itself.
    pub async fn handshake_over<S>(&self, stream: S, hello: Hello<'_>) -> io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.handshake_as(stream, hello, Arc::new(Identity::none()))
            .await
    }

    /// The TLS handshake, presenting `identity` if the gateway asks for a client
    /// certificate.
    pub async fn handshake_as<S>(
        &self,
        stream: S,
        hello: Hello<'_>,
        identity: Arc<Identity>,
    ) -> io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?
            .with_root_certificates(Arc::clone(&self.roots))
            .with_client_cert_resolver(identity);
        config.enable_sni = hello.sni;
        config.alpn_protocols = hello.alpn.iter().map(|id| id.to_vec()).collect();
        let name = ServerName::try_from(hello.server_name.to_string()).map_err(io::Error::other)?;
        let connecting = TlsConnector::from(Arc::new(config)).connect(name, stream);
        tokio::time::timeout(PATIENCE, connecting)
            .await
            .map_err(|_| io::Error::other("handshake did not finish in time"))?
    }
}

/// The client certificate a test client presents, and whether the gateway asked for one.
#[derive(Debug)]
pub struct Identity {
    key: Option<Arc<CertifiedKey>>,
    requested: AtomicBool,
}

impl Identity {
    /// No certificate to present.
    pub fn none() -> Self {
        Self {
            key: None,
            requested: AtomicBool::new(false),
        }
    }

    /// Presents `leaf` (issued by any [`Authority`]).
    pub fn of(leaf: &Leaf) -> Self {
        let provider = rustls::crypto::ring::default_provider();
        let chain = CertificateDer::pem_slice_iter(&leaf.certificate.chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .expect("leaf chain");
        let key = PrivateKeyDer::from_pem_slice(&leaf.certificate.key_pem).expect("leaf key");
        let key = CertifiedKey::from_der(chain, key, &provider).expect("usable leaf");
        Self {
            key: Some(Arc::new(key)),
            requested: AtomicBool::new(false),
        }
    }

    /// Whether the gateway sent a CertificateRequest.
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }
}

impl ResolvesClientCert for Identity {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.requested.store(true, Ordering::SeqCst);
        self.key.clone()
    }

    fn has_certs(&self) -> bool {
        // Always consulted, so that `requested` records every CertificateRequest.
        true
    }
}

impl<'a> Hello<'a> {
    /// SNI `server_name`, offering HTTP/1.1 only.
    pub fn http1(server_name: &'a str) -> Self {
        Self {
            server_name,
            sni: true,
            alpn: &[HTTP1],
        }
    }

    /// SNI `server_name`, offering HTTP/2 first, as browsers do.
    pub fn h2(server_name: &'a str) -> Self {
        Self {
            server_name,
            sni: true,
            alpn: &[H2, HTTP1],
        }
    }
}

impl TlsClient {
    /// `GET target` for `host` (the `Host` header on HTTP/1.1, `:authority` on HTTP/2).
    pub async fn get(&mut self, host: &str, target: &str) -> Answer {
        let builder = Request::builder().method("GET");
        let response = match &mut self.sender {
            Sender::Http1(sender) => {
                let request = builder
                    .uri(target)
                    .header(http::header::HOST, host)
                    .body(Full::default())
                    .expect("valid request");
                answered(sender.send_request(request)).await
            }
            Sender::Http2(sender) => {
                let request = builder
                    .uri(format!("https://{host}{target}"))
                    .version(Version::HTTP_2)
                    .body(Full::default())
                    .expect("valid request");
                answered(sender.send_request(request)).await
            }
        };
        read(response).await
    }

    /// Whether requests go over HTTP/2.
    pub fn is_http2(&self) -> bool {
        matches!(self.sender, Sender::Http2(_))
    }
}

async fn answered(
    sending: impl Future<Output = hyper::Result<Response<Incoming>>>,
) -> Response<Incoming> {
    tokio::time::timeout(PATIENCE, sending)
        .await
        .expect("gateway answered in time")
        .expect("gateway answered")
}

/// An `https` listener on port 443 with `hostname`, serving `leaf`.
pub fn https_listener(
    hostname: Option<&str>,
    leaf: &Leaf,
    routes: Vec<Candidate>,
) -> Arc<HttpListener> {
    let plain = super::listener(hostname, routes);
    Arc::new(HttpListener {
        port: 443,
        scheme: RedirectScheme::Https,
        tls: Some(Arc::clone(&leaf.certificate)),
        client_validation: None,
        backend_client_certificate: None,
        ..HttpListener::clone(&plain)
    })
}

/// The leaf certificate the other end presented.
pub fn peer_leaf<S>(stream: &TlsStream<S>) -> Option<CertificateDer<'static>> {
    let (_, session) = stream.get_ref();
    session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|leaf| leaf.clone().into_owned())
}

/// Whether a failed client handshake ended the way the conformance suite's
/// `tls-connection-rejected` expects: EOF or a reset, not an alert or another TLS error.
pub fn closed_without_alert(error: &io::Error) -> bool {
    let tls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some();
    !tls_error
        && matches!(
            error.kind(),
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
        )
}
