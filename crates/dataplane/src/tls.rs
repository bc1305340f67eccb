//! TLS termination: certificates loaded per config, selected by SNI at each handshake.
//!
//! A socket is a TLS socket when its `ir::Bind` has HTTP listeners with a certificate
//! (Gateway listeners of protocol `HTTPS` sharing a port). Whether to run a handshake is
//! decided per connection from the current config, so a socket whose kind changes between
//! configs needs no re-bind: connections accepted after the reload get the new kind.
//!
//! Certificates are parsed once per config, when it is applied ([`Certificates::load`]), and
//! kept next to that config in one snapshot. Every TLS socket has one rustls `ServerConfig`
//! whose [`ResolvesServerCert`] reads the *current* snapshot at each ClientHello, so a
//! rotated certificate is served to new handshakes at once while established connections
//! keep the session they negotiated.
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

use ir::{Hostname, HttpListener, TlsCertificate};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, ServerConnection};
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
    /// For each bind, the key of each HTTP listener in `ir::Bind::http` order: `None` for a
    /// listener without TLS or whose certificate did not load.
    keys: HashMap<SocketAddr, Vec<Option<Arc<CertifiedKey>>>>,
    /// Every distinct certificate of the config and what loading it gave, so that the next
    /// config parses only the certificates that changed.
    loaded: HashMap<ByContent, Option<Arc<CertifiedKey>>>,
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
        .with_no_client_auth()
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
        }
    }

    /// Loads the certificate of every TLS listener in `config`. Certificates that `previous`
    /// already loaded are reused; a certificate that fails to load is logged once and the
    /// handshakes that select its listener fail.
    pub fn load(config: Arc<ir::Config>, previous: &Self) -> Self {
        let provider = provider();
        let mut loaded = HashMap::new();
        let mut keys = HashMap::new();
        for (&addr, bind) in &config.binds {
            let mut bind_keys = Vec::with_capacity(bind.http.len());
            for listener in &bind.http {
                let key = listener.tls.as_ref().and_then(|certificate| {
                    let content = ByContent(Arc::clone(certificate));
                    let key = loaded.entry(content).or_insert_with_key(|content| {
                        previous.loaded.get(content).cloned().unwrap_or_else(|| {
                            load_certificate(&content.0, &provider, addr, listener)
                        })
                    });
                    key.clone()
                });
                bind_keys.push(key);
            }
            keys.insert(addr, bind_keys);
        }
        Self {
            config,
            keys,
            loaded,
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
        let key = self.keys.get(&bind)?.get(index)?.clone();
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

/// Loads one certificate, logging why it is unusable if it is.
fn load_certificate(
    certificate: &TlsCertificate,
    provider: &CryptoProvider,
    bind: SocketAddr,
    listener: &HttpListener,
) -> Option<Arc<CertifiedKey>> {
    match certified_key(certificate, provider) {
        Ok(key) => Some(Arc::new(key)),
        Err(error) => {
            tracing::warn!(
                %bind,
                gateway = %listener.gateway,
                listener = %listener.name,
                secret = %certificate.source,
                error = %error,
                source = ?std::error::Error::source(&error),
                "certificate cannot be served; handshakes for this listener will fail"
            );
            None
        }
    }
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
mod tests {
    use std::collections::BTreeMap;

    use ir::{HostnameMatch, RedirectScheme, RouteTable};

    use super::*;

    const BIND: SocketAddr =
        SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 443);

    fn certificate(names: &[&str]) -> Arc<TlsCertificate> {
        let names: Vec<String> = names.iter().map(ToString::to_string).collect();
        let key = rcgen::KeyPair::generate().expect("generate a key");
        let params = rcgen::CertificateParams::new(names.clone()).expect("valid names");
        let cert = params.self_signed(&key).expect("self-sign");
        Arc::new(TlsCertificate {
            source: format!("default/{}", names.join("+")),
            chain_pem: cert.pem().into_bytes(),
            key_pem: key.serialize_pem().into_bytes(),
        })
    }

    fn listener(
        name: &str,
        hostname: Option<&str>,
        tls: Option<Arc<TlsCertificate>>,
    ) -> Arc<HttpListener> {
        Arc::new(HttpListener {
            gateway: "default/gateway".into(),
            name: name.into(),
            hostname: hostname.map(HostnameMatch::parse),
            port: 443,
            scheme: RedirectScheme::Https,
            routes: RouteTable::new(Vec::new()),
            tls,
        })
    }

    fn bind(listeners: Vec<Arc<HttpListener>>) -> ir::Bind {
        let mut bind = ir::Bind {
            http: listeners,
            ..ir::Bind::default()
        };
        bind.sort_listeners();
        bind
    }

    fn config(listeners: Vec<Arc<HttpListener>>) -> Arc<ir::Config> {
        Arc::new(ir::Config {
            binds: BTreeMap::from([(BIND, bind(listeners))]),
        })
    }

    fn name_of(selected: Option<&Arc<HttpListener>>) -> Option<&str> {
        selected.map(|listener| listener.name.as_str())
    }

    fn served(key: Option<Arc<CertifiedKey>>) -> Option<CertificateDer<'static>> {
        key.and_then(|key| {
            key.end_entity_cert()
                .ok()
                .map(|cert| cert.clone().into_owned())
        })
    }

    fn leaf(certificate: &TlsCertificate) -> Option<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(&certificate.chain_pem)
            .next()
            .and_then(Result::ok)
    }

    #[test]
    fn server_name_selects_like_the_host() {
        let bind = bind(vec![
            listener("any", None, None),
            listener("wildcard", Some("*.example.com"), None),
            listener("exact", Some("a.example.com"), None),
        ]);
        for (sni, expected) in [
            ("a.example.com", "exact"),
            ("b.example.com", "wildcard"),
            ("other.test", "any"),
        ] {
            let sni = Hostname::from_request_host(sni);
            let selected = listener_for_server_name(&bind, sni.as_ref());
            assert_eq!(name_of(selected), Some(expected));
        }
        assert_eq!(name_of(listener_for_server_name(&bind, None)), Some("any"));
    }

    #[test]
    fn without_server_name_the_most_specific_listener_is_the_fallback() {
        let bind = bind(vec![
            listener("wildcard", Some("*.example.com"), None),
            listener("exact", Some("a.example.com"), None),
        ]);
        assert_eq!(
            name_of(listener_for_server_name(&bind, None)),
            Some("exact")
        );
        let unmatched = Hostname::from_request_host("other.test");
        assert_eq!(
            name_of(listener_for_server_name(&bind, unmatched.as_ref())),
            None
        );
    }

    #[test]
    fn without_server_name_ties_break_as_listener_for_does() {
        let bind = bind(vec![
            listener("first", None, None),
            listener("second", None, None),
        ]);
        let by_host = bind.listener_for("anything.test");
        let by_default = listener_for_server_name(&bind, None);
        assert_eq!(name_of(by_default), name_of(by_host));
    }

    #[test]
    fn certificates_follow_the_server_name() {
        let exact = certificate(&["a.example.com"]);
        let wildcard = certificate(&["*.example.com"]);
        let config = config(vec![
            listener(
                "wildcard",
                Some("*.example.com"),
                Some(Arc::clone(&wildcard)),
            ),
            listener("exact", Some("a.example.com"), Some(Arc::clone(&exact))),
        ]);
        let certificates = Certificates::load(config, &Certificates::empty());
        assert!(certificates.terminates(BIND));
        let resolve = |sni| served(certificates.resolve(BIND, sni));
        assert_eq!(resolve(Some("A.Example.com")), leaf(&exact));
        assert_eq!(resolve(Some("b.example.com")), leaf(&wildcard));
        // Without SNI, the most specific listener (there is none without hostname).
        assert_eq!(resolve(None), leaf(&exact));
        assert_eq!(resolve(Some("other.test")), None);
        let other_bind = SocketAddr::from(([127, 0, 0, 1], 8443));
        assert!(
            certificates
                .resolve(other_bind, Some("a.example.com"))
                .is_none()
        );
        assert!(!certificates.terminates(other_bind));
    }

    #[test]
    fn unchanged_certificates_are_not_parsed_again() {
        let kept = certificate(&["kept.example.com"]);
        let first = Certificates::load(
            config(vec![listener("kept", None, Some(Arc::clone(&kept)))]),
            &Certificates::empty(),
        );
        // An equal certificate in a new `Arc`, as the next translation produces it.
        let again = Arc::new(TlsCertificate::clone(&kept));
        let second = Certificates::load(config(vec![listener("kept", None, Some(again))]), &first);
        let before = first.resolve(BIND, None).expect("loaded");
        let after = second.resolve(BIND, None).expect("reused");
        assert!(Arc::ptr_eq(&before, &after));
    }

    #[test]
    fn unusable_certificates_fail_only_their_listener() {
        let good = certificate(&["good.example.com"]);
        let other = certificate(&["other.example.com"]);
        let mismatched = Arc::new(TlsCertificate {
            source: "default/mismatched".into(),
            chain_pem: good.chain_pem.clone(),
            key_pem: other.key_pem.clone(),
        });
        let garbage = Arc::new(TlsCertificate {
            source: "default/garbage".into(),
            chain_pem: b"not pem".to_vec(),
            key_pem: b"not pem either".to_vec(),
        });
        let config = config(vec![
            listener("good", Some("good.example.com"), Some(Arc::clone(&good))),
            listener("mismatched", Some("bad.example.com"), Some(mismatched)),
            listener("garbage", Some("garbage.example.com"), Some(garbage)),
        ]);
        let certificates = Certificates::load(config, &Certificates::empty());
        assert!(
            certificates
                .resolve(BIND, Some("bad.example.com"))
                .is_none()
        );
        assert!(
            certificates
                .resolve(BIND, Some("garbage.example.com"))
                .is_none()
        );
        assert_eq!(
            served(certificates.resolve(BIND, Some("good.example.com"))),
            leaf(&good)
        );
    }

    #[test]
    fn pem_errors_are_told_apart() {
        let provider = provider();
        let good = certificate(&["good.example.com"]);
        let with = |chain: &[u8], key: &[u8]| {
            certified_key(
                &TlsCertificate {
                    source: "default/test".into(),
                    chain_pem: chain.to_vec(),
                    key_pem: key.to_vec(),
                },
                &provider,
            )
        };
        assert!(with(&good.chain_pem, &good.key_pem).is_ok());
        assert!(matches!(
            with(b"", &good.key_pem),
            Err(CertificateError::NoCertificate)
        ));
        assert!(matches!(
            with(&good.chain_pem, b""),
            Err(CertificateError::Key(_))
        ));
        let other = certificate(&["other.example.com"]);
        assert!(matches!(
            with(&good.chain_pem, &other.key_pem),
            Err(CertificateError::Rejected(_))
        ));
    }
}
