//! The server side of TLS, for the backends that serve it (README "Containers and their
//! behaviour": the HTTP echo's HTTPS on 8443, the TCP echo's TLS on 8443).
//!
//! [`Keyring::server_config`] turns the files a Deployment mounts (see `mounts`) into a
//! rustls server configuration, and [`TlsFacts`] is what a backend reports about a finished
//! handshake. The names it reports follow Go's `crypto/tls`, since upstream's echo is written
//! in Go and the cases compare those strings: `TLS 1.3` (`tls.VersionName`), cipher suites by
//! their IANA names (`tls.CipherSuiteName`), curves as `CurveID.String()` (`X25519`,
//! `CurveP256`).

use std::sync::Arc;

use base64::Engine as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConnection, WebPkiClientVerifier};
use rustls::{CipherSuite, NamedGroup, ProtocolVersion, RootCertStore, ServerConfig};

use super::{Keyring, TlsSetupError, certificates, provider};
use crate::mounts::{MountedFile, ServerTlsFiles, VolumeSource};

/// What a backend learned from one server-side handshake.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFacts {
    /// Negotiated protocol version.
    pub version: Option<ProtocolVersion>,
    /// The SNI the client sent.
    pub server_name: Option<String>,
    /// The ALPN protocol agreed on.
    pub alpn: Option<Vec<u8>>,
    /// Negotiated cipher suite.
    pub cipher_suite: Option<CipherSuite>,
    /// The key exchange group (Go calls it the curve).
    pub key_exchange: Option<NamedGroup>,
    /// Client certificates, leaf first.
    pub peer_certificates: Vec<CertificateDer<'static>>,
}

impl Keyring {
    /// The content of one mounted file.
    pub fn file(&self, file: &MountedFile) -> Result<&[u8], TlsSetupError> {
        match file.source {
            VolumeSource::Secret => self.entry("Secret", &self.secrets, &file.object, &file.key),
            VolumeSource::ConfigMap => {
                self.entry("ConfigMap", &self.config_maps, &file.object, &file.key)
            }
        }
    }

    /// A server configuration presenting `files.cert` with `files.key`, offering `alpn`. With
    /// `files.client_ca`, a client certificate is verified against it *when presented* but
    /// not required, like Go's `tls.VerifyClientCertIfGiven` in upstream's echo.
    pub fn server_config(
        &self,
        files: &ServerTlsFiles,
        alpn: &[&[u8]],
    ) -> Result<Arc<ServerConfig>, TlsSetupError> {
        let provider = provider();
        let chain = certificates(self.file(&files.cert)?, &files.cert.object, &files.cert.key)?;
        let key = PrivateKeyDer::from_pem_slice(self.file(&files.key)?).map_err(|e| {
            TlsSetupError::BadPem {
                what: format!("{} {}", files.key.object, files.key.key),
                problem: e.to_string(),
            }
        })?;
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in certificates(self.file(ca)?, &ca.object, &ca.key)? {
                    roots.add(cert)?;
                }
                let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .allow_unauthenticated()
                    .build()?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key)?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }
}

impl TlsFacts {
    /// Reads the facts off a connection whose handshake has completed.
    pub fn of(connection: &ServerConnection) -> Self {
        Self {
            version: connection.protocol_version(),
            server_name: connection.server_name().map(str::to_owned),
            alpn: connection.alpn_protocol().map(<[u8]>::to_vec),
            cipher_suite: connection.negotiated_cipher_suite().map(|s| s.suite()),
            key_exchange: connection.negotiated_key_exchange_group().map(|g| g.name()),
            peer_certificates: connection
                .peer_certificates()
                .map(<[CertificateDer<'static>]>::to_vec)
                .unwrap_or_default(),
        }
    }

    /// Go's `tls.VersionName`: `TLS 1.3`, `TLS 1.2`; `0x0305` for versions it does not know.
    pub fn go_version_name(&self) -> String {
        let number = self.version.map(u16::from).unwrap_or(0);
        match number {
            0x0301..=0x0304 => format!("TLS 1.{}", number - 0x0301),
            0x0300 => "SSLv3".to_owned(),
            _ => format!("0x{number:04X}"),
        }
    }

    /// What the HTTP echo writes as `tls.version`: `TLSv1.3`, `TLSv1.2` (its own spelling,
    /// not Go's), and nothing for other versions.
    pub fn echo_version_name(&self) -> String {
        match self.version.map(u16::from) {
            Some(number @ 0x0301..=0x0304) => format!("TLSv1.{}", number - 0x0301),
            _ => String::new(),
        }
    }

    /// Go's `tls.CipherSuiteName`: the IANA name (`TLS_AES_128_GCM_SHA256`,
    /// `TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`), `0x1301`-style for unknown suites. rustls
    /// prefixes its TLS 1.3 names with `TLS13_`, which IANA does not.
    pub fn go_cipher_suite_name(&self) -> String {
        let Some(suite) = self.cipher_suite else {
            return String::new();
        };
        match suite.as_str() {
            Some(name) => match name.strip_prefix("TLS13_") {
                Some(rest) => format!("TLS_{rest}"),
                None => name.to_owned(),
            },
            None => format!("0x{:04X}", u16::from(suite)),
        }
    }

    /// Go's `CurveID.String()` of the key exchange group; empty without one (the TCP echo
    /// then omits `curves`).
    pub fn go_curve_name(&self) -> String {
        let Some(group) = self.key_exchange else {
            return String::new();
        };
        match u16::from(group) {
            0x0017 => "CurveP256".to_owned(),
            0x0018 => "CurveP384".to_owned(),
            0x0019 => "CurveP521".to_owned(),
            0x001d => "X25519".to_owned(),
            0x11ec => "X25519MLKEM768".to_owned(),
            other => format!("CurveID({other})"),
        }
    }

    /// The agreed ALPN protocol as text; empty without one.
    pub fn negotiated_protocol(&self) -> String {
        self.alpn
            .as_deref()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default()
    }

    /// The client certificates as PEM blocks, as Go's `pem.Encode` writes them.
    pub fn peer_certificates_pem(&self) -> Vec<String> {
        self.peer_certificates
            .iter()
            .map(|der| pem_certificate(der))
            .collect()
    }
}

/// One `CERTIFICATE` PEM block with 64-column base64 lines and a final newline.
pub fn pem_certificate(der: &[u8]) -> String {
    let encoded = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    // Base64 is ASCII, so every 64-byte chunk is valid UTF-8.
    for line in encoded.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring() -> Keyring {
        Keyring::from_objects(&crate::certs::generated_objects().expect("generated"))
    }

    fn secret_file(object: &str, key: &str) -> MountedFile {
        MountedFile {
            source: VolumeSource::Secret,
            object: object.to_owned(),
            key: key.to_owned(),
        }
    }

    fn files(client_ca: Option<MountedFile>) -> ServerTlsFiles {
        let secret = "gateway-conformance-infra/tls-passthrough-checks-certificate";
        ServerTlsFiles {
            cert: secret_file(secret, "tls.crt"),
            key: secret_file(secret, "tls.key"),
            client_ca,
        }
    }

    #[test]
    fn mounted_generated_objects_become_server_configs() {
        let keyring = keyring();
        let config = keyring
            .server_config(&files(None), &[b"h2"])
            .expect("valid material");
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);

        let ca = MountedFile {
            source: VolumeSource::ConfigMap,
            object: "gateway-conformance-infra/tls-checks-ca-certificate".to_owned(),
            key: "ca.crt".to_owned(),
        };
        assert!(keyring.server_config(&files(Some(ca)), &[]).is_ok());

        let missing = secret_file("gateway-conformance-infra/nothing", "tls.crt");
        assert!(matches!(
            keyring.file(&missing),
            Err(TlsSetupError::Missing { kind: "Secret", .. })
        ));
        let mut wrong_key = files(None);
        wrong_key.key = secret_file(&wrong_key.key.object, "tls.crt");
        assert!(
            keyring.server_config(&wrong_key, &[]).is_err(),
            "a certificate is no key"
        );
    }

    #[test]
    fn names_follow_go() {
        let facts = TlsFacts {
            version: Some(ProtocolVersion::TLSv1_3),
            cipher_suite: Some(CipherSuite::TLS13_AES_128_GCM_SHA256),
            key_exchange: Some(NamedGroup::X25519),
            alpn: Some(b"h2".to_vec()),
            ..TlsFacts::default()
        };
        assert_eq!(facts.go_version_name(), "TLS 1.3");
        assert_eq!(facts.echo_version_name(), "TLSv1.3");
        assert_eq!(facts.go_cipher_suite_name(), "TLS_AES_128_GCM_SHA256");
        assert_eq!(facts.go_curve_name(), "X25519");
        assert_eq!(facts.negotiated_protocol(), "h2");

        let tls12 = TlsFacts {
            version: Some(ProtocolVersion::TLSv1_2),
            cipher_suite: Some(CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
            key_exchange: Some(NamedGroup::secp256r1),
            ..TlsFacts::default()
        };
        assert_eq!(tls12.go_version_name(), "TLS 1.2");
        assert_eq!(tls12.echo_version_name(), "TLSv1.2");
        assert_eq!(
            tls12.go_cipher_suite_name(),
            "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
        );
        assert_eq!(tls12.go_curve_name(), "CurveP256");

        let unknown = TlsFacts {
            version: Some(ProtocolVersion::Unknown(0x7f1c)),
            cipher_suite: Some(CipherSuite::Unknown(0xabcd)),
            key_exchange: Some(NamedGroup::Unknown(4)),
            ..TlsFacts::default()
        };
        assert_eq!(unknown.go_version_name(), "0x7F1C");
        assert_eq!(unknown.echo_version_name(), "");
        assert_eq!(unknown.go_cipher_suite_name(), "0xABCD");
        assert_eq!(unknown.go_curve_name(), "CurveID(4)");
        assert_eq!(TlsFacts::default().go_curve_name(), "");
        assert_eq!(TlsFacts::default().negotiated_protocol(), "");
    }

    #[test]
    fn pem_blocks_round_trip() {
        let der: Vec<u8> = (0..=200).collect();
        let pem = pem_certificate(&der);
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----\n"));
        assert!(pem.ends_with("\n-----END CERTIFICATE-----\n"));
        assert!(pem.lines().all(|line| line.len() <= 64));
        let parsed = CertificateDer::from_pem_slice(pem.as_bytes()).expect("valid PEM");
        assert_eq!(parsed.as_ref(), der.as_slice());
    }
}
