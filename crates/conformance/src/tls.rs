//! The client side of TLS (README "`http`" keys `sni`, `trust` and `client_cert`, and
//! "`tls-connection-rejected`"): which certificates a case trusts and presents, and one
//! handshake that also records whether the server asked for a client certificate.
//!
//! Certificate material comes from the generated Secrets and ConfigMaps (README "Generated
//! certificates"), the same objects the runner writes for portcullis; [`Keyring`] indexes
//! them and [`Keyring::roots`] is the pure trust-root selection. Cryptography is rustls with
//! *ring*, like the dataplane. How a `trust` turns into a verifier is in [`verify`]; the
//! backends' side of TLS (server configurations from mounted files) is in [`server`].

pub mod server;
mod verify;

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use base64::Engine as _;
use rustls::client::danger::ServerCertVerifier;
use rustls::client::{ResolvesClientCert, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, SignatureScheme};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// ALPN identifier of HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";
/// ALPN identifier of HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// A case's `trust` (or `client_cert`) as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustRef {
    /// `{secret: ns/name}`: that Secret's `tls.crt`, the only root ("a leaf used as root").
    Secret(String),
    /// `{configmap: ns/name, key: ca.crt}`: the CA certificate under `key`.
    ConfigMap {
        /// `namespace/name` of the ConfigMap.
        name: String,
        /// Data key holding the PEM (default `ca.crt`).
        key: String,
    },
    /// Any text, e.g. `system roots (no custom CA)`: no root the runner controls.
    SystemRoots,
}

/// What a client trusts, after looking a [`TrustRef`] up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Roots {
    /// These exact certificates (a Secret's `tls.crt`).
    Pinned(Vec<CertificateDer<'static>>),
    /// These certificate authorities (a ConfigMap's CA).
    Authorities(Vec<CertificateDer<'static>>),
    /// No certificate at all.
    Nothing,
}

/// The data of the generated Secrets and ConfigMaps by `namespace/name`, decoded.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    config_maps: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

/// Everything needed to open TLS connections for one case; cheap to clone.
#[derive(Debug, Clone)]
pub struct TlsClient {
    provider: Arc<CryptoProvider>,
    server_name: ServerName<'static>,
    verifier: Arc<dyn ServerCertVerifier>,
    identity: Option<Arc<CertifiedKey>>,
    alpn: Vec<Vec<u8>>,
    tls13_only: bool,
}

/// One connection's TLS state: a connector whose client-certificate resolver records
/// whether the server asked, readable whatever the handshake's outcome.
pub struct TlsConnection {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    recorder: Arc<Recorder>,
}

/// Why TLS settings could not be prepared: the case or the generated objects are wrong.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// `trust` / `client_cert` has an unknown shape.
    #[error("{0}: want {{secret: ns/name}}, {{configmap: ns/name, key: k}} or a description")]
    BadReference(String),
    /// No generated object of that kind and name.
    #[error("{kind} {name} is not among the generated objects")]
    Missing {
        /// `Secret` or `ConfigMap`.
        kind: &'static str,
        /// `namespace/name`.
        name: String,
    },
    /// The object exists but lacks the key.
    #[error("{kind} {name} has no {key:?}")]
    MissingKey {
        /// `Secret` or `ConfigMap`.
        kind: &'static str,
        /// `namespace/name`.
        name: String,
        /// The data key.
        key: String,
    },
    /// The PEM holds no usable certificate or key.
    #[error("{what}: {problem}")]
    BadPem {
        /// Which object and key.
        what: String,
        /// What is wrong with it.
        problem: String,
    },
    /// `sni` is neither a DNS name nor an address.
    #[error("server name {0:?} is not a valid DNS name or IP address")]
    ServerName(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The root store could not become a verifier.
    #[error("root certificates: {0}")]
    Roots(#[from] rustls::client::VerifierBuilderError),
}

/// Records a CertificateRequest and answers it with the case's `client_cert`, if any.
#[derive(Debug)]
struct Recorder {
    asked: AtomicBool,
    identity: Option<Arc<CertifiedKey>>,
}

/// rustls with *ring*, like the dataplane.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TrustRef {
    /// Reads a `trust` or `client_cert` value.
    pub fn from_value(value: &Value) -> Result<Self, TlsSetupError> {
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_owned);
        match (value, text("secret"), text("configmap")) {
            (Value::String(_), _, _) => Ok(Self::SystemRoots),
            (_, Some(name), None) => Ok(Self::Secret(name)),
            (_, None, Some(name)) => Ok(Self::ConfigMap {
                name,
                key: text("key").unwrap_or_else(|| "ca.crt".to_owned()),
            }),
            _ => Err(TlsSetupError::BadReference(value.to_string())),
        }
    }
}

impl Keyring {
    /// Indexes the Secrets (base64 `data`, or `stringData`) and ConfigMaps (`data`) among
    /// `objects`; other kinds and undecodable entries are left out (lookups then name them).
    pub fn from_objects(objects: &[Value]) -> Self {
        let mut keyring = Self::default();
        for object in objects {
            let (Some(kind), Some(namespace), Some(name)) = (
                object.get("kind").and_then(Value::as_str),
                object
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str),
                object.pointer("/metadata/name").and_then(Value::as_str),
            ) else {
                continue;
            };
            let entries = |field: &str| {
                object
                    .get(field)
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .filter_map(|(key, value)| Some((key.clone(), value.as_str()?.to_owned())))
            };
            let data: BTreeMap<String, Vec<u8>> = match kind {
                "Secret" => entries("data")
                    .filter_map(|(key, encoded)| {
                        let decoded = base64::engine::general_purpose::STANDARD.decode(encoded);
                        Some((key, decoded.ok()?))
                    })
                    .chain(entries("stringData").map(|(key, text)| (key, text.into_bytes())))
                    .collect(),
                "ConfigMap" => entries("data")
                    .map(|(key, text)| (key, text.into_bytes()))
                    .collect(),
                _ => continue,
            };
            let map = if kind == "Secret" {
                &mut keyring.secrets
            } else {
                &mut keyring.config_maps
            };
            map.insert(format!("{namespace}/{name}"), data);
        }
        keyring
    }

    /// README: `trust: {secret: X}` trusts only the `tls.crt` of X, `{configmap: X, key}` the
    /// CA in that ConfigMap, and a description (system roots) nothing the runner generated.
    pub fn roots(&self, trust: &TrustRef) -> Result<Roots, TlsSetupError> {
        match trust {
            TrustRef::Secret(name) => {
                let pem = self.entry("Secret", &self.secrets, name, "tls.crt")?;
                Ok(Roots::Pinned(certificates(pem, name, "tls.crt")?))
            }
            TrustRef::ConfigMap { name, key } => {
                let pem = self.entry("ConfigMap", &self.config_maps, name, key)?;
                Ok(Roots::Authorities(certificates(pem, name, key)?))
            }
            TrustRef::SystemRoots => Ok(Roots::Nothing),
        }
    }

    /// The certificates of a Secret's `tls.crt`.
    pub fn certificate_chain(
        &self,
        secret: &str,
    ) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
        certificates(
            self.entry("Secret", &self.secrets, secret, "tls.crt")?,
            secret,
            "tls.crt",
        )
    }

    /// The `tls.crt` chain and `tls.key` of a Secret, ready to present.
    pub fn identity(
        &self,
        secret: &str,
        provider: &CryptoProvider,
    ) -> Result<Arc<CertifiedKey>, TlsSetupError> {
        let chain = certificates(
            self.entry("Secret", &self.secrets, secret, "tls.crt")?,
            secret,
            "tls.crt",
        )?;
        let key_pem = self.entry("Secret", &self.secrets, secret, "tls.key")?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsSetupError::BadPem {
            what: format!("Secret {secret} tls.key"),
            problem: e.to_string(),
        })?;
        Ok(Arc::new(CertifiedKey::from_der(chain, key, provider)?))
    }

    /// Client settings for one case: trust `trust`, present `client_cert` when asked,
    /// send `server_name` as SNI and offer `alpn`.
    pub fn client(
        &self,
        server_name: &str,
        trust: &TrustRef,
        client_cert: Option<&TrustRef>,
        alpn: &[&[u8]],
    ) -> Result<TlsClient, TlsSetupError> {
        let provider = provider();
        let algorithms = provider.signature_verification_algorithms;
        let verifier: Arc<dyn ServerCertVerifier> = match self.roots(trust)? {
            Roots::Pinned(certs) => Arc::new(verify::PinnedVerifier::new(certs, algorithms)),
            Roots::Authorities(cas) => {
                let mut store = RootCertStore::empty();
                for ca in cas {
                    store.add(ca)?;
                }
                WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
                    .build()?
            }
            Roots::Nothing => Arc::new(verify::NoRootsVerifier::new(algorithms)),
        };
        let identity = match client_cert {
            None => None,
            Some(TrustRef::Secret(name)) => Some(self.identity(name, &provider)?),
            Some(other) => return Err(TlsSetupError::BadReference(format!("{other:?}"))),
        };
        Ok(TlsClient {
            server_name: ServerName::try_from(server_name.to_owned())
                .map_err(|_| TlsSetupError::ServerName(server_name.to_owned()))?,
            provider,
            verifier,
            identity,
            alpn: alpn.iter().map(|p| p.to_vec()).collect(),
            tls13_only: false,
        })
    }

    fn entry<'a>(
        &self,
        kind: &'static str,
        objects: &'a BTreeMap<String, BTreeMap<String, Vec<u8>>>,
        name: &str,
        key: &str,
    ) -> Result<&'a [u8], TlsSetupError> {
        let data = objects.get(name).ok_or_else(|| TlsSetupError::Missing {
            kind,
            name: name.to_owned(),
        })?;
        data.get(key)
            .map(Vec::as_slice)
            .ok_or_else(|| TlsSetupError::MissingKey {
                kind,
                name: name.to_owned(),
                key: key.to_owned(),
            })
    }
}

impl TlsClient {
    /// Refuses TLS 1.2 (README `min_tls_version: '1.3'`); rustls never offers less than 1.2.
    pub fn require_tls13(mut self) -> Self {
        self.tls13_only = true;
        self
    }

    /// Fresh state for one connection. A fresh rustls config per connection also means no
    /// session resumption: every handshake is a full one, as with upstream's client (no
    /// session cache), so a server that asks for client certificates always gets to ask.
    pub fn connection(&self) -> Result<TlsConnection, TlsSetupError> {
        let versions: &[&rustls::SupportedProtocolVersion] = if self.tls13_only {
            &[&rustls::version::TLS13]
        } else {
            rustls::DEFAULT_VERSIONS
        };
        let recorder = Arc::new(Recorder {
            asked: AtomicBool::new(false),
            identity: self.identity.clone(),
        });
        let mut config = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(versions)?
            .dangerous()
            .with_custom_certificate_verifier(self.verifier.clone())
            .with_client_cert_resolver(recorder.clone());
        config.alpn_protocols = self.alpn.clone();
        Ok(TlsConnection {
            connector: TlsConnector::from(Arc::new(config)),
            server_name: self.server_name.clone(),
            recorder,
        })
    }
}

impl TlsConnection {
    /// Runs the handshake over `tcp`.
    pub async fn handshake(&self, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        self.connector.connect(self.server_name.clone(), tcp).await
    }

    /// Whether the server sent a CertificateRequest so far.
    pub fn client_cert_requested(&self) -> bool {
        self.recorder.asked.load(Ordering::Relaxed)
    }
}

impl ResolvesClientCert for Recorder {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        // rustls calls this exactly when a CertificateRequest arrives.
        self.asked.store(true, Ordering::Relaxed);
        self.identity.clone()
    }

    fn has_certs(&self) -> bool {
        // Always true, so that rustls always consults `resolve` (and records) the same way;
        // with nothing to present it then sends an empty Certificate, as Go does.
        true
    }
}

/// Every certificate in a PEM; at least one.
fn certificates(
    pem: &[u8],
    name: &str,
    key: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let bad = |problem: String| TlsSetupError::BadPem {
        what: format!("{name} {key}"),
        problem,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no CERTIFICATE block".to_owned()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keyring() -> Keyring {
        Keyring::from_objects(&crate::certs::generated_objects().expect("generated"))
    }

    fn pem_of(objects: &[Value], name: &str, pointer: &str) -> Vec<u8> {
        let object = objects
            .iter()
            .find(|o| o.pointer("/metadata/name") == Some(&json!(name)))
            .expect("object");
        let text = object
            .pointer(pointer)
            .and_then(Value::as_str)
            .expect("pem");
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .unwrap_or_else(|_| text.as_bytes().to_vec())
    }

    #[test]
    fn trust_references_parse_in_all_three_shapes() {
        let parse = |v: Value| TrustRef::from_value(&v).expect("valid");
        assert_eq!(
            parse(json!({"secret": "ns/s"})),
            TrustRef::Secret("ns/s".into())
        );
        assert_eq!(
            parse(json!({"configmap": "ns/c"})),
            TrustRef::ConfigMap {
                name: "ns/c".into(),
                key: "ca.crt".into()
            }
        );
        assert_eq!(
            parse(json!("system roots (no custom CA)")),
            TrustRef::SystemRoots
        );
        assert!(TrustRef::from_value(&json!({"secret": "a", "configmap": "b"})).is_err());
        assert!(TrustRef::from_value(&json!({"file": "x"})).is_err());
    }

    #[test]
    fn a_secret_pins_its_tls_crt_and_a_configmap_trusts_its_ca() {
        let objects = crate::certs::generated_objects().expect("generated");
        let keyring = Keyring::from_objects(&objects);
        let leaf = pem_of(&objects, "tls-validity-checks-certificate", "/data/tls.crt");
        let want = CertificateDer::pem_slice_iter(&leaf)
            .collect::<Result<Vec<_>, _>>()
            .expect("pem");
        let secret =
            TrustRef::Secret("gateway-conformance-infra/tls-validity-checks-certificate".into());
        assert_eq!(keyring.roots(&secret).expect("found"), Roots::Pinned(want));

        let ca = pem_of(&objects, "tls-checks-ca-certificate", "/data/ca.crt");
        let want = CertificateDer::pem_slice_iter(&ca)
            .collect::<Result<Vec<_>, _>>()
            .expect("pem");
        let config_map = TrustRef::ConfigMap {
            name: "gateway-conformance-infra/tls-checks-ca-certificate".into(),
            key: "ca.crt".into(),
        };
        assert_eq!(
            keyring.roots(&config_map).expect("found"),
            Roots::Authorities(want)
        );
        assert_eq!(
            keyring.roots(&TrustRef::SystemRoots).expect("nothing"),
            Roots::Nothing
        );
    }

    #[test]
    fn missing_objects_and_keys_are_named() {
        let keyring = keyring();
        let error = keyring
            .roots(&TrustRef::Secret("ns/absent".into()))
            .expect_err("absent");
        assert_eq!(
            error.to_string(),
            "Secret ns/absent is not among the generated objects"
        );
        let error = keyring
            .roots(&TrustRef::ConfigMap {
                name: "gateway-conformance-infra/tls-checks-ca-certificate".into(),
                key: "tls.crt".into(),
            })
            .expect_err("wrong key");
        assert!(error.to_string().ends_with("has no \"tls.crt\""), "{error}");
    }

    #[test]
    fn client_certificates_load_with_their_keys() {
        let keyring = keyring();
        let client = keyring.client(
            "example.org",
            &TrustRef::Secret("gateway-conformance-infra/tls-validity-checks-certificate".into()),
            Some(&TrustRef::Secret(
                "gateway-conformance-infra/tls-validity-checks-client-certificate".into(),
            )),
            &[ALPN_H2],
        );
        let client = client.expect("valid settings");
        assert!(client.identity.is_some());
        assert!(client.connection().is_ok());
        assert!(
            keyring
                .client(
                    "example.org",
                    &TrustRef::SystemRoots,
                    Some(&TrustRef::SystemRoots),
                    &[]
                )
                .is_err(),
            "a client certificate must name a Secret"
        );
    }
}
