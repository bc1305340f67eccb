//! TLS termination: certificates loaded per config, selected by SNI at each handshake.
//!
//! A socket is a TLS socket when its `ir::Bind` has HTTP listeners with a certificate
//! (Gateway listeners of protocol `HTTPS` sharing a port). Whether to run a handshake is
//! decided per connection from the current config, so a socket whose kind changes between
//! configs needs no re-bind: connections accepted after the reload get the new kind.
//!
//! TLS listeners with `tls.mode: Terminate` (`ir::Bind::tls_terminate`) are chosen before
//! the handshake, from the peeked ClientHello (`stream::route_tls`). Their handshake then
//! serves exactly the certificate of the chosen listener, with no ALPN, through an acceptor
//! that [`Certificates::acceptor_for`] hands out from the same snapshot, so a reload between
//! the peek and the handshake cannot pair one listener's routes with another's key.
//!
//! Certificates are parsed once per config, when it is applied ([`Certificates::load`]), and
//! kept next to that config in one snapshot. Every TLS socket has one rustls `ServerConfig`
//! whose [`ResolvesServerCert`] reads the *current* snapshot at each ClientHello, so a
//! rotated certificate is served to new handshakes at once while established connections
//! keep the session they negotiated.
//!
//! Frontend client certificate validation (`ir::HttpListener::client_validation`, one
//! setting per port) works the same way: the socket's `ServerConfig` has a
//! [`ClientVerifier`] that reads the current snapshot's verifier for its bind at each
//! handshake. `AllowValidOnly` requires a certificate chaining to the CA;
//! `AllowInsecureFallback` requests one and lets the connection go ahead whatever the client
//! presents. Verifiers are built when a config is loaded ([`Certificates::load`]).
//!
//! Selection mirrors request routing: the SNI picks a listener with [`ir::Bind::listener_for`]
//! (an exact hostname before the longest wildcard before a listener without hostname), and
//! the request path later checks that the request's host picks the same listener
//! (421 Misdirected Request otherwise; see `proxy.rs`).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ir::{
    ClientValidation, ClientValidationMode, Hostname, HttpListener, TlsCertificate,
    TlsTerminateListener,
};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, ServerConnection,
    SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::Shared;

/// The ALPN protocol id of HTTP/2 (RFC 9113 §3.2).
const ALPN_H2: &[u8] = b"h2";
/// The ALPN protocol id of HTTP/1.1 (RFC 7301 §6).
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The certificates of one config, keyed the way handshakes look them up.
pub struct Certificates {
    /// The config the keys were loaded for; SNI selection reads its binds.
    config: Arc<ir::Config>,
    /// For each bind, what its listeners serve.
    keys: HashMap<SocketAddr, BindKeys>,
    /// Every distinct certificate of the config and what loading it gave, so that the next
    /// config parses only the certificates that changed.
    loaded: HashMap<ByContent, Option<Loaded>>,
    /// For each bind with frontend client validation, how client certificates are checked.
    verifiers: HashMap<SocketAddr, BindVerifier>,
}

/// What a connection's handshake settled, as the request path needs it.
#[derive(Clone, Debug)]
pub struct Session {
    /// The SNI the client sent, normalised like a request host; `None` without SNI.
    pub server_name: Option<Hostname>,
    /// Whether ALPN chose HTTP/2. Without ALPN (or with `http/1.1`) the connection is
    /// HTTP/1.1.
    pub http2: bool,
}

/// Why a TLS certificate could not be turned into a signing key.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// `tls.crt` is not valid PEM.
    #[error("tls.crt is not a valid PEM certificate chain")]
    Chain(#[source] rustls::pki_types::pem::Error),
    /// `tls.crt` holds no certificate.
    #[error("tls.crt holds no certificate")]
    NoCertificate,
    /// `tls.key` holds no valid PEM private key.
    #[error("tls.key holds no valid PEM private key")]
    Key(#[source] rustls::pki_types::pem::Error),
    /// rustls rejected the key (unsupported algorithm, or it does not match the leaf).
    #[error("the private key cannot be used with the certificate")]
    Rejected(#[source] rustls::Error),
    /// No server configuration could be built around the key (the crypto provider offers
    /// none of the protocol versions asked for; not expected with ring).
    #[error("no TLS server configuration can be built")]
    ServerConfig(#[source] rustls::Error),
}

/// Why a TLS handshake did not complete. Either way only that connection ends.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The client did not finish the handshake within `Options::tls_handshake_timeout`.
    #[error("TLS handshake timed out")]
    Timeout,
    /// The client is not speaking TLS, chose nothing we offer, or went away.
    #[error("TLS handshake failed")]
    Failed(#[source] io::Error),
}

/// The rustls server configuration of the socket bound for the config key `bind`: TLS 1.2
/// and 1.3 with the ring provider, ALPN `h2` and `http/1.1`, and certificates chosen by
/// [`Resolver`] from whatever config is current at each handshake.
pub fn acceptor(shared: Arc<Shared>, bind: SocketAddr) -> Result<TlsAcceptor, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(Arc::new(ClientVerifier {
            shared: Arc::clone(&shared),
            bind,
            provider: provider(),
        }))
        .with_cert_resolver(Arc::new(Resolver { shared, bind }));
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Runs the server side of the handshake, giving up after `limit`.
pub async fn handshake<S>(
    acceptor: &TlsAcceptor,
    stream: S,
    limit: Duration,
) -> Result<(TlsStream<S>, Session), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let stream = tokio::time::timeout(limit, acceptor.accept(stream))
        .await
        .map_err(|_| HandshakeError::Timeout)?
        .map_err(HandshakeError::Failed)?;
    let session = Session::of(stream.get_ref().1);
    Ok((stream, session))
}

/// The listener a TLS client addressed: the one [`ir::Bind::listener_for`] picks for its SNI,
/// or without SNI the listener without hostname (else the most specific one).
pub fn listener_for_server_name<'b>(
    bind: &'b ir::Bind,
    server_name: Option<&Hostname>,
) -> Option<&'b Arc<HttpListener>> {
    match server_name {
        Some(name) => bind.listener_for(name.as_str()),
        // `listener_for` breaks ties between equally specific listeners by taking the last
        // one (`max_by_key`), so the last listener without hostname is the one it would pick
        // for any host that only such listeners match.
        None => bind
            .http
            .iter()
            .rev()
            .find(|listener| listener.hostname.is_none())
            .or_else(|| bind.http.first()),
    }
}

// === impl Certificates ===

impl Certificates {
    /// The certificates of the empty config.
    pub fn empty() -> Self {
        Self {
            config: Arc::default(),
            keys: HashMap::new(),
            loaded: HashMap::new(),
            verifiers: HashMap::new(),
        }
    }

    /// Loads the certificate of every TLS listener in `config`. Certificates that `previous`
    /// already loaded are reused; a certificate that fails to load is logged once and the
    /// handshakes that select its listener fail.
    pub fn load(config: Arc<ir::Config>, previous: &Self) -> Self {
        let provider = provider();
        let mut loaded = HashMap::new();
        let mut load = |certificate: &Arc<TlsCertificate>, owner: Owner<'_>| {
            let content = ByContent(Arc::clone(certificate));
            let entry = loaded.entry(content).or_insert_with_key(|content| {
                previous
                    .loaded
                    .get(content)
                    .cloned()
                    .unwrap_or_else(|| load_certificate(&content.0, &provider, owner))
            });
            entry.clone()
        };
        let mut keys = HashMap::new();
        let mut verifiers = HashMap::new();
        for (&addr, bind) in &config.binds {
            // One setting per port; should Gateways sharing the socket disagree, the first
            // listener with a certificate and a setting decides.
            if let Some((listener, validation)) = bind.http.iter().find_map(|listener| {
                listener.tls.as_ref()?;
                Some((listener, listener.client_validation.as_ref()?))
            }) {
                let owner = Owner::new(addr, &listener.gateway, &listener.name);
                verifiers.insert(addr, BindVerifier::load(validation, &provider, owner));
            }
            let http = bind
                .http
                .iter()
                .map(|listener| {
                    let owner = Owner::new(addr, &listener.gateway, &listener.name);
                    let certificate = listener.tls.as_ref()?;
                    load(certificate, owner).map(|loaded| loaded.key)
                })
                .collect();
            let tls_terminate = bind
                .tls_terminate
                .iter()
                .map(|listener| {
                    let owner = Owner::new(addr, &listener.gateway, &listener.name);
                    load(&listener.tls, owner).map(|loaded| loaded.relay)
                })
                .collect();
            keys.insert(
                addr,
                BindKeys {
                    http,
                    tls_terminate,
                },
            );
        }
        Self {
            config,
            keys,
            loaded,
            verifiers,
        }
    }

    /// The config these certificates were loaded for.
    pub fn config(&self) -> &Arc<ir::Config> {
        &self.config
    }

    /// Whether connections accepted on the socket of config key `bind` start with a TLS
    /// handshake: some HTTP listener of the bind has a certificate.
    pub fn terminates(&self, bind: SocketAddr) -> bool {
        self.config
            .binds
            .get(&bind)
            .is_some_and(|bind| bind.http.iter().any(|listener| listener.tls.is_some()))
    }

    /// The acceptor for a connection that [`crate::stream::route_tls`] gave to the terminate
    /// listener `listener` of the socket of config key `bind`: it presents that listener's
    /// certificate whatever the ClientHello asks for, and negotiates no ALPN (the decrypted
    /// bytes are relayed, not parsed). `None` when the certificate did not load, or when
    /// `listener` is not one of this config's.
    pub fn acceptor_for(
        &self,
        bind: SocketAddr,
        listener: &Arc<TlsTerminateListener>,
    ) -> Option<&TlsAcceptor> {
        let index = self
            .config
            .binds
            .get(&bind)?
            .tls_terminate
            .iter()
            .position(|candidate| Arc::ptr_eq(candidate, listener))?;
        self.keys.get(&bind)?.tls_terminate.get(index)?.as_ref()
    }

    /// The key to present on the socket of config key `bind` to a client that sent
    /// `server_name`; `None` aborts the handshake.
    fn resolve(&self, bind: SocketAddr, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let config_bind = self.config.binds.get(&bind)?;
        let server_name = server_name.and_then(Hostname::from_request_host);
        let listener = listener_for_server_name(config_bind, server_name.as_ref())?;
        let index = config_bind
            .http
            .iter()
            .position(|candidate| Arc::ptr_eq(candidate, listener))?;
        let key = self.keys.get(&bind)?.http.get(index)?.clone();
        if key.is_none() {
            tracing::debug!(
                %bind,
                server_name = server_name.as_ref().map_or("-", Hostname::as_str),
                listener = %listener.name,
                "no usable certificate for the selected listener"
            );
        }
        key
    }
}

// === impl Session ===

impl Session {
    fn of(connection: &ServerConnection) -> Self {
        Self {
            server_name: connection
                .server_name()
                .and_then(Hostname::from_request_host),
            http2: connection.alpn_protocol() == Some(ALPN_H2),
        }
    }
}

// === impl Resolver ===

/// Picks the certificate for a ClientHello on one socket from the current config.
struct Resolver {
    shared: Arc<Shared>,
    bind: SocketAddr,
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.shared
            .certificates
            .load()
            .resolve(self.bind, client_hello.server_name())
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("bind", &self.bind)
            .finish_non_exhaustive()
    }
}

// === impl ClientVerifier ===

/// Checks client certificates on one socket with the current config's setting for it.
struct ClientVerifier {
    shared: Arc<Shared>,
    bind: SocketAddr,
    provider: Arc<CryptoProvider>,
}

impl ClientVerifier {
    fn current(&self) -> Option<BindVerifier> {
        self.shared
            .certificates
            .load()
            .verifiers
            .get(&self.bind)
            .cloned()
    }
}

impl ClientCertVerifier for ClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.current().is_some()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.current()
            .is_some_and(|v| v.mode == ClientValidationMode::AllowValidOnly)
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The hints would borrow from a snapshot that a reload may drop; clients then offer
        // whatever certificate they have, which the verification below judges.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let Some(current) = self.current() else {
            return Ok(ClientCertVerified::assertion());
        };
        let verdict = match &current.inner {
            Some(inner) => inner.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        };
        match (verdict, current.mode) {
            (Ok(verified), _) => Ok(verified),
            (Err(_), ClientValidationMode::AllowInsecureFallback) => {
                Ok(ClientCertVerified::assertion())
            }
            (Err(error), ClientValidationMode::AllowValidOnly) => {
                tracing::debug!(bind = %self.bind, %error, "client certificate refused");
                Err(error)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl std::fmt::Debug for ClientVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientVerifier")
            .field("bind", &self.bind)
            .finish_non_exhaustive()
    }
}

/// The client validation of one bind, built from its CA bundle.
#[derive(Clone)]
struct BindVerifier {
    /// `None` when the CA bundle did not load: every certificate is then refused.
    inner: Option<Arc<dyn ClientCertVerifier>>,
    mode: ClientValidationMode,
}

impl BindVerifier {
    fn load(
        validation: &ClientValidation,
        provider: &Arc<CryptoProvider>,
        owner: Owner<'_>,
    ) -> Self {
        let inner = client_verifier(validation, provider);
        if let Err(error) = &inner {
            tracing::warn!(
                bind = %owner.bind,
                gateway = %owner.gateway,
                listener = %owner.listener,
                ca = %validation.source,
                %error,
                "client validation CA cannot be used; client certificates will be refused"
            );
        }
        Self {
            inner: inner.ok(),
            mode: validation.mode,
        }
    }
}

/// A WebPKI verifier trusting the CA certificates of `validation`. Clients without a
/// certificate are let through here; [`ClientVerifier::client_auth_mandatory`] decides
/// whether they may skip it.
fn client_verifier(
    validation: &ClientValidation,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&validation.ca_pem) {
        let certificate = certificate.map_err(|e| format!("ca.crt is not valid PEM: {e}"))?;
        roots
            .add(certificate)
            .map_err(|e| format!("ca.crt holds an unusable certificate: {e}"))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
        .allow_unauthenticated()
        .build()
        .map_err(|e| e.to_string())
}

// === impl Fixed ===

/// Serves one key to every ClientHello: the listener was chosen before the handshake.
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}

impl std::fmt::Debug for Fixed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fixed").finish_non_exhaustive()
    }
}

// === helper types ===

/// What the listeners of one bind serve, in the order of their `ir::Bind` lists; `None` for
/// an HTTP listener without TLS, or a listener whose certificate did not load.
struct BindKeys {
    /// One per `ir::Bind::http` listener.
    http: Vec<Option<Arc<CertifiedKey>>>,
    /// One per `ir::Bind::tls_terminate` listener.
    tls_terminate: Vec<Option<TlsAcceptor>>,
}

/// A certificate that loaded: its key for HTTPS listeners, and an acceptor for terminate
/// listeners. Kept across configs while the certificate is unchanged, which also keeps the
/// acceptor's session cache, so clients can resume sessions across reloads.
#[derive(Clone)]
struct Loaded {
    key: Arc<CertifiedKey>,
    relay: TlsAcceptor,
}

/// The listener a certificate was loaded for, as its log line names it.
#[derive(Clone, Copy)]
struct Owner<'a> {
    bind: SocketAddr,
    gateway: &'a str,
    listener: &'a str,
}

impl<'a> Owner<'a> {
    fn new(bind: SocketAddr, gateway: &'a str, listener: &'a str) -> Self {
        Self {
            bind,
            gateway,
            listener,
        }
    }
}

// === impl ByContent ===

/// A certificate compared and hashed by its PEM bytes, so that equal Secrets share one
/// loaded key however many listeners or configs refer to them.
struct ByContent(Arc<TlsCertificate>);

impl PartialEq for ByContent {
    fn eq(&self, other: &Self) -> bool {
        self.0.chain_pem == other.0.chain_pem && self.0.key_pem == other.0.key_pem
    }
}

impl Eq for ByContent {}

impl Hash for ByContent {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.chain_pem.hash(state);
        self.0.key_pem.hash(state);
    }
}

// === helpers ===

/// The one crypto provider of the data plane: ring (not aws-lc-rs, which needs a C build).
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads one certificate, logging why it is unusable if it is. `owner` is the first listener
/// found to use it, for the log line.
fn load_certificate(
    certificate: &TlsCertificate,
    provider: &Arc<CryptoProvider>,
    owner: Owner<'_>,
) -> Option<Loaded> {
    let loaded = certified_key(certificate, provider).and_then(|key| {
        let key = Arc::new(key);
        let relay = relay_acceptor(Arc::clone(&key), provider)?;
        Ok(Loaded { key, relay })
    });
    match loaded {
        Ok(loaded) => Some(loaded),
        Err(error) => {
            tracing::warn!(
                bind = %owner.bind,
                gateway = %owner.gateway,
                listener = %owner.listener,
                secret = %certificate.source,
                error = %error,
                source = ?std::error::Error::source(&error),
                "certificate cannot be served; handshakes for this listener will fail"
            );
            None
        }
    }
}

/// The acceptor of terminate-and-relay listeners serving `key`: TLS 1.3 and 1.2, and no ALPN
/// protocols, so whatever a client offers, none is selected (RFC 7301 §3.2 lets a server
/// that supports none of them answer without the extension).
fn relay_acceptor(
    key: Arc<CertifiedKey>,
    provider: &Arc<CryptoProvider>,
) -> Result<TlsAcceptor, CertificateError> {
    let config = ServerConfig::builder_with_provider(Arc::clone(provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(CertificateError::ServerConfig)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Fixed(key)));
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Parses a `kubernetes.io/tls` pair: the chain (leaf first) and one private key.
fn certified_key(
    certificate: &TlsCertificate,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, CertificateError> {
    let chain = CertificateDer::pem_slice_iter(&certificate.chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(CertificateError::Chain)?;
    if chain.is_empty() {
        return Err(CertificateError::NoCertificate);
    }
    let key = PrivateKeyDer::from_pem_slice(&certificate.key_pem).map_err(CertificateError::Key)?;
    CertifiedKey::from_der(chain, key, provider).map_err(CertificateError::Rejected)
}

#[cfg(test)]
mod tests;
