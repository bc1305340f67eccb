//! TLS origination towards backends (BackendTLSPolicy): a rustls client configuration per
//! policy, client certificate and protocol, and the connector that hyper-util's pools use.
//!
//! What is verified follows `BackendTLSPolicyValidation`: the certificate chain must lead to
//! the policy's CA certificates (or the system's, for `wellKnownCACertificates: System`);
//! `hostname` is always the SNI, and "MUST match the certificate served by the matching
//! backend, unless SubjectAltNames is specified", in which case the certificate "MUST have at
//! least one Subject Alternate Name matching one of the specified SubjectAltNames" and the
//! hostname is not used for authentication.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use ir::{BackendProtocol, BackendTls, BackendTrust, SubjectAltName, TlsCertificate};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// Why a TLS client configuration could not be built for a backend.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The policy itself is invalid (translate said why).
    #[error("BackendTLSPolicy {policy} is invalid: {reason}")]
    InvalidPolicy {
        /// `namespace/name` of the policy.
        policy: String,
        /// Why.
        reason: String,
    },
    /// No CA certificate could be used.
    #[error("BackendTLSPolicy {policy}: no usable CA certificate ({reason})")]
    NoTrustAnchors {
        /// `namespace/name` of the policy.
        policy: String,
        /// Why.
        reason: String,
    },
    /// `hostname` is not a valid TLS server name.
    #[error("BackendTLSPolicy {policy}: hostname {hostname:?} is not a valid server name")]
    ServerName {
        /// `namespace/name` of the policy.
        policy: String,
        /// The hostname.
        hostname: String,
    },
    /// The Gateway's client certificate or key is unusable.
    #[error("client certificate {source_name} is unusable: {reason}")]
    ClientCertificate {
        /// `namespace/name` of the Secret.
        source_name: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("BackendTLSPolicy {policy}: {source}")]
    Rustls {
        /// `namespace/name` of the policy.
        policy: String,
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
}

/// The TLS handshake with a backend failed (certificate not trusted, not valid for the
/// expected name, expired, or the backend refused ours).
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake with the backend failed (BackendTLSPolicy {policy})")]
pub struct HandshakeError {
    /// `namespace/name` of the policy.
    pub policy: String,
    /// What rustls reported.
    #[source]
    pub source: io::Error,
}

/// What a TLS client is built for: one per distinct policy, client certificate and protocol.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ClientKey {
    /// The policy's settings.
    pub tls: Arc<BackendTls>,
    /// The Gateway's client certificate, if any.
    pub client_certificate: Option<Arc<TlsCertificate>>,
    /// HTTP/1.1 or HTTP/2.
    pub protocol: BackendProtocol,
}

/// Connects over TCP, then performs the TLS handshake a policy asks for. hyper-util pools the
/// resulting connections per endpoint, as it does cleartext ones.
#[derive(Clone)]
pub struct TlsConnector {
    tcp: HttpConnector,
    tls: tokio_rustls::TlsConnector,
    server_name: ServerName<'static>,
    policy: Arc<str>,
}

/// A TLS connection to a backend, as hyper-util's pool wants it.
pub struct TlsConnection(TokioIo<TlsStream<TcpStream>>);

/// Accepts a certificate when its chain is trusted and it carries one of the policy's
/// subject alternative names (used only when the policy lists some).
#[derive(Debug)]
struct SubjectAltNameVerifier {
    chain: Arc<WebPkiServerVerifier>,
    names: Vec<SubjectAltName>,
}

// === impl ClientKey ===

impl ClientKey {
    /// Builds the connector for this key on top of `tcp`.
    pub fn connector(&self, tcp: HttpConnector) -> Result<TlsConnector, SettingsError> {
        let policy = self.tls.policy.clone();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = roots(&self.tls)?;
        let chain = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
            .build()
            .map_err(|error| SettingsError::NoTrustAnchors {
                policy: policy.clone(),
                reason: error.to_string(),
            })?;
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|source| SettingsError::Rustls {
                policy: policy.clone(),
                source,
            })?;
        let builder = if self.tls.subject_alt_names.is_empty() {
            builder.with_webpki_verifier(chain)
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(SubjectAltNameVerifier {
                    chain,
                    names: self.tls.subject_alt_names.clone(),
                }))
        };
        let mut config = match &self.client_certificate {
            None => builder.with_no_client_auth(),
            Some(certificate) => {
                let (chain, key) = client_identity(certificate, &provider)?;
                builder.with_client_auth_cert(chain, key).map_err(|error| {
                    SettingsError::ClientCertificate {
                        source_name: certificate.source.clone(),
                        reason: error.to_string(),
                    }
                })?
            }
        };
        config.alpn_protocols = match self.protocol {
            BackendProtocol::Http1 => vec![b"http/1.1".to_vec()],
            BackendProtocol::H2c => vec![b"h2".to_vec()],
        };
        let server_name = ServerName::try_from(self.tls.server_name.clone()).map_err(|_| {
            SettingsError::ServerName {
                policy: policy.clone(),
                hostname: self.tls.server_name.clone(),
            }
        })?;
        Ok(TlsConnector {
            tcp,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
            server_name,
            policy: policy.into(),
        })
    }
}

/// The trust anchors of a policy.
fn roots(tls: &BackendTls) -> Result<Arc<RootCertStore>, SettingsError> {
    let policy = tls.policy.clone();
    match &tls.trust {
        BackendTrust::Invalid(reason) => Err(SettingsError::InvalidPolicy {
            policy,
            reason: reason.clone(),
        }),
        BackendTrust::System => system_roots()
            .clone()
            .map_err(|reason| SettingsError::NoTrustAnchors { policy, reason }),
        BackendTrust::Certificates { source, ca_pem } => {
            let mut store = RootCertStore::empty();
            let certificates = CertificateDer::pem_slice_iter(ca_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|error| SettingsError::NoTrustAnchors {
                    policy: policy.clone(),
                    reason: format!("{source}: {error}"),
                })?;
            let (added, _) = store.add_parsable_certificates(certificates);
            if added == 0 {
                return Err(SettingsError::NoTrustAnchors {
                    policy,
                    reason: format!("{source} holds no usable CA certificate"),
                });
            }
            Ok(Arc::new(store))
        }
    }
}

/// The system trust store, read once: `SSL_CERT_FILE`, else the usual bundle locations of
/// Linux distributions.
pub(crate) fn system_roots() -> &'static Result<Arc<RootCertStore>, String> {
    static ROOTS: OnceLock<Result<Arc<RootCertStore>, String>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let candidates = std::env::var_os("SSL_CERT_FILE")
            .map(std::path::PathBuf::from)
            .into_iter()
            .chain(
                [
                    "/etc/ssl/certs/ca-certificates.crt",
                    "/etc/pki/tls/certs/ca-bundle.crt",
                    "/etc/ssl/ca-bundle.pem",
                    "/etc/ssl/cert.pem",
                ]
                .map(std::path::PathBuf::from),
            );
        for path in candidates {
            let Ok(pem) = std::fs::read(&path) else {
                continue;
            };
            let certificates = CertificateDer::pem_slice_iter(&pem).filter_map(Result::ok);
            let mut store = RootCertStore::empty();
            let (added, _) = store.add_parsable_certificates(certificates);
            if added > 0 {
                return Ok(Arc::new(store));
            }
        }
        Err("no system CA bundle found (set SSL_CERT_FILE)".to_string())
    })
}

/// The client certificate chain and key of the Gateway, checked against the provider.
fn client_identity(
    certificate: &TlsCertificate,
    provider: &CryptoProvider,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), SettingsError> {
    let unusable = |reason: String| SettingsError::ClientCertificate {
        source_name: certificate.source.clone(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(&certificate.chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| unusable(e.to_string()))?;
    let key =
        PrivateKeyDer::from_pem_slice(&certificate.key_pem).map_err(|e| unusable(e.to_string()))?;
    provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| unusable(e.to_string()))?;
    Ok((chain, key))
}

// === impl TlsConnector ===

impl tower_service::Service<Uri> for TlsConnector {
    type Response = TlsConnection;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future =
        Pin<Box<dyn Future<Output = Result<TlsConnection, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, destination: Uri) -> Self::Future {
        let connecting = self.tcp.call(destination);
        let tls = self.tls.clone();
        let server_name = self.server_name.clone();
        let policy = self.policy.clone();
        Box::pin(async move {
            let stream = connecting.await?.into_inner();
            let stream =
                tls.connect(server_name, stream)
                    .await
                    .map_err(|source| HandshakeError {
                        policy: policy.to_string(),
                        source,
                    })?;
            Ok(TlsConnection(TokioIo::new(stream)))
        })
    }
}

// === impl TlsConnection ===

impl TlsConnection {
    /// Opens one connection outside any pool (for upgraded requests, which keep theirs).
    pub async fn open(
        connector: &mut TlsConnector,
        destination: Uri,
    ) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        std::future::poll_fn(|cx| tower_service::Service::poll_ready(connector, cx)).await?;
        tower_service::Service::call(connector, destination).await
    }
}

impl Connection for TlsConnection {
    fn connected(&self) -> Connected {
        let connected = Connected::new();
        let (_, session) = self.0.inner().get_ref();
        if session.alpn_protocol() == Some(b"h2") {
            connected.negotiated_h2()
        } else {
            connected
        }
    }
}

impl Read for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl Write for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

// === impl SubjectAltNameVerifier ===

impl ServerCertVerifier for SubjectAltNameVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The chain (trust, validity period, usage) is checked first; webpki checks the name
        // last, so a name mismatch alone means the rest passed.
        match self.chain.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(_)
            | Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => {}
            Err(error) => return Err(error),
        }
        let mut uris: Option<Vec<String>> = None;
        for name in &self.names {
            let matched = match name {
                SubjectAltName::Hostname(hostname) => ServerName::try_from(hostname.as_str())
                    .is_ok_and(|expected| {
                        self.chain
                            .verify_server_cert(
                                end_entity,
                                intermediates,
                                &expected,
                                ocsp_response,
                                now,
                            )
                            .is_ok()
                    }),
                SubjectAltName::Uri(uri) => uris
                    .get_or_insert_with(|| uri_names(end_entity))
                    .iter()
                    .any(|presented| presented == uri),
            };
            if matched {
                return Ok(ServerCertVerified::assertion());
            }
        }
        Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName,
        ))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}

/// The URI subject alternative names of a certificate (none when it does not parse).
fn uri_names(certificate: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(certificate.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(names)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some((*uri).to_string()),
            _ => None,
        })
        .collect()
}
