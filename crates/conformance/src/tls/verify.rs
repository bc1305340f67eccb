//! How the client decides to trust a server certificate, for each kind of README `trust`.
//!
//! * A ConfigMap CA is an ordinary root: rustls' webpki verifier does everything.
//! * A Secret's `tls.crt` is "a leaf used as root". Go's `crypto/x509`, which upstream's
//!   client uses, accepts a leaf that is itself in the root pool and then matches the
//!   server name against its DNS SANs with Go's wildcard rules. webpki cannot do the same
//!   for our certificates, for two reasons (the tests below show both):
//!   - it refuses the wildcard SAN `*.org` (of `tls-validity-checks-certificate`): like NSS
//!     it wants at least two labels after a wildcard, so `example.org` never matches;
//!   - a leaf that a CA signed (`tls-checks-certificate`) is not its own issuer, so a path
//!     from it to itself as anchor does not exist (`UnknownIssuer`).
//!
//!   [`PinnedVerifier`] therefore accepts exactly the pinned certificate bytes, matches the
//!   server name against the DNS SANs as Go does, and still checks every handshake
//!   signature against the pinned key, so the server must hold that certificate's key.
//!   It does not check the validity period: the pin *is* the trust decision, and the
//!   generated certificates are valid from yesterday for a year.
//! * "System roots" (README `tls-connection-rejected`) can never vouch for a certificate the
//!   runner generated, so [`NoRootsVerifier`] rejects every server certificate as upstream's
//!   client would: only a server that gives up *before* presenting one looks like a refusal.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{self, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};

/// Trusts exactly the pinned certificates (a Secret's `tls.crt`); see the module docs.
#[derive(Debug)]
pub(crate) struct PinnedVerifier {
    pinned: Vec<CertificateDer<'static>>,
    algorithms: WebPkiSupportedAlgorithms,
}

/// Trusts no server certificate at all; see the module docs.
#[derive(Debug)]
pub(crate) struct NoRootsVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

/// The DNS names (`dNSName` entries of the subjectAltName extension) of a DER certificate,
/// as written, wildcards included. `None` when the DER cannot be read.
pub(crate) fn dns_names(certificate: &[u8]) -> Option<Vec<String>> {
    let (certificate, _) = element(certificate, SEQUENCE)?;
    let (tbs, _) = element(certificate, SEQUENCE)?;
    // tbsCertificate: version [0], serial, signature, issuer, validity, subject, spki,
    // issuerUniqueID [1], subjectUniqueID [2], extensions [3]; only [3] matters here.
    let mut fields = tbs;
    let extensions = loop {
        let (tag, value, rest) = tlv(fields)?;
        if tag == EXTENSIONS {
            break value;
        }
        fields = rest;
    };
    let (mut extensions, _) = element(extensions, SEQUENCE)?;
    while !extensions.is_empty() {
        let (extension, rest) = element(extensions, SEQUENCE)?;
        extensions = rest;
        let (oid, rest) = element(extension, OID)?;
        if oid != SUBJECT_ALT_NAME {
            continue;
        }
        // `critical BOOLEAN DEFAULT FALSE` may sit between the OID and the value.
        let rest = match tlv(rest)? {
            (BOOLEAN, _, after) => after,
            _ => rest,
        };
        let (value, _) = element(rest, OCTET_STRING)?;
        let (mut names, _) = element(value, SEQUENCE)?;
        let mut found = Vec::new();
        while !names.is_empty() {
            let (tag, name, rest) = tlv(names)?;
            names = rest;
            if tag == DNS_NAME {
                found.push(String::from_utf8(name.to_vec()).ok()?);
            }
        }
        return Some(found);
    }
    Some(Vec::new())
}

/// Go's `crypto/x509` hostname matching: case-insensitive, a trailing dot ignored, and a
/// leftmost label of exactly `*` matching one non-empty label, so `*.org` matches
/// `example.org` (webpki would not). A lone `*` matches nothing.
pub(crate) fn dns_name_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if pattern.is_empty() || host.is_empty() {
        return false;
    }
    let pattern: Vec<&str> = pattern.split('.').collect();
    let host: Vec<&str> = host.split('.').collect();
    if pattern.len() != host.len() || pattern == ["*"] {
        return false;
    }
    pattern
        .iter()
        .zip(&host)
        .enumerate()
        .all(|(i, (p, h))| (i == 0 && *p == "*" && !h.is_empty()) || p == h)
}

impl PinnedVerifier {
    pub(crate) fn new(
        pinned: Vec<CertificateDer<'static>>,
        algorithms: WebPkiSupportedAlgorithms,
    ) -> Self {
        Self { pinned, algorithms }
    }
}

impl NoRootsVerifier {
    pub(crate) fn new(algorithms: WebPkiSupportedAlgorithms) -> Self {
        Self { algorithms }
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        if !self
            .pinned
            .iter()
            .any(|pin| pin.as_ref() == end_entity.as_ref())
        {
            return Err(CertificateError::UnknownIssuer.into());
        }
        let ServerName::DnsName(host) = server_name else {
            // Every HTTPS case names an SNI; an address has no DNS SAN to match.
            return Err(CertificateError::NotValidForName.into());
        };
        let names = dns_names(end_entity.as_ref()).ok_or(CertificateError::BadEncoding)?;
        if names
            .iter()
            .any(|name| dns_name_matches(name, host.as_ref()))
        {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(CertificateError::NotValidForName.into())
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for NoRootsVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Err(CertificateError::UnknownIssuer.into())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

const BOOLEAN: u8 = 0x01;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
/// `[3] EXPLICIT` (constructed, context-specific 3): the extensions of a tbsCertificate.
const EXTENSIONS: u8 = 0xa3;
/// `[2] IMPLICIT IA5String` (primitive, context-specific 2): a GeneralName's dNSName.
const DNS_NAME: u8 = 0x82;
/// 2.5.29.17, id-ce-subjectAltName, as DER content octets.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// Reads one DER element with the given tag: its contents and what follows.
fn element(input: &[u8], want: u8) -> Option<(&[u8], &[u8])> {
    let (tag, value, rest) = tlv(input)?;
    (tag == want).then_some((value, rest))
}

/// Reads one DER tag-length-value (single-byte tags, definite lengths up to 4 bytes).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, input) = input.split_first()?;
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut input) = input.split_first()?;
    let length = if first < 0x80 {
        usize::from(first)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 {
            return None;
        }
        let (bytes, rest) = input.split_at_checked(count)?;
        input = rest;
        bytes
            .iter()
            .fold(0usize, |length, byte| (length << 8) | usize::from(*byte))
    };
    let (value, rest) = input.split_at_checked(length)?;
    Some((tag, value, rest))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use rcgen::string::Ia5String;
    use rcgen::{CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
    use rustls::RootCertStore;
    use rustls::client::WebPkiServerVerifier;

    fn provider() -> Arc<crypto::CryptoProvider> {
        Arc::new(crypto::ring::default_provider())
    }

    /// A self-signed leaf like `tls-validity-checks-certificate`.
    fn validity_leaf() -> CertificateDer<'static> {
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![
            SanType::URI(Ia5String::try_from("*").expect("ia5")),
            SanType::DnsName(Ia5String::try_from("*.org").expect("ia5")),
            SanType::DnsName(Ia5String::try_from("*.wildcard.org").expect("ia5")),
        ];
        let key = KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().clone()
    }

    fn dns(name: &str) -> ServerName<'static> {
        ServerName::try_from(name.to_owned()).expect("dns name")
    }

    fn verify(verifier: &dyn ServerCertVerifier, cert: &CertificateDer<'_>, sni: &str) -> bool {
        verifier
            .verify_server_cert(cert, &[], &dns(sni), &[], UnixTime::now())
            .is_ok()
    }

    #[test]
    fn subject_alt_dns_names_are_read_as_written() {
        assert_eq!(
            dns_names(validity_leaf().as_ref()),
            Some(vec!["*.org".to_owned(), "*.wildcard.org".to_owned()])
        );
        assert_eq!(dns_names(b"\x30\x05garbage"), None);
    }

    #[test]
    fn wildcards_match_one_leftmost_label_like_go() {
        assert!(dns_name_matches("*.org", "example.org"));
        assert!(dns_name_matches(
            "*.wildcard.org",
            "Third-Example.wildcard.org."
        ));
        assert!(dns_name_matches("abc.example.com", "ABC.example.com"));
        assert!(!dns_name_matches("*.org", "a.b.org"));
        assert!(!dns_name_matches("*.org", "org"));
        assert!(!dns_name_matches("*", "localhost"));
        assert!(!dns_name_matches("a*.org", "ab.org"));
    }

    #[test]
    fn the_pinned_leaf_verifies_for_every_name_its_sans_cover() {
        let leaf = validity_leaf();
        let verifier = PinnedVerifier::new(
            vec![leaf.clone()],
            provider().signature_verification_algorithms,
        );
        for sni in [
            "example.org",
            "unknown-example.org",
            "third-example.wildcard.org",
        ] {
            assert!(verify(&verifier, &leaf, sni), "{sni}");
        }
        assert!(!verify(&verifier, &leaf, "example.com"), "name not covered");
        assert!(
            !verify(&verifier, &validity_leaf(), "example.org"),
            "other bytes, same names"
        );
    }

    /// Why [`PinnedVerifier`] exists: webpki, given the same leaf as its only root, refuses.
    #[test]
    fn webpki_refuses_these_leaves_as_their_own_roots() {
        let leaf = validity_leaf();
        let mut roots = RootCertStore::empty();
        roots
            .add(leaf.clone())
            .expect("any certificate makes an anchor");
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .expect("verifier");
        assert!(!verify(webpki.as_ref(), &leaf, "example.org"), "*.org");

        // A CA-signed leaf (like tls-checks-certificate) pinned as the only root.
        let ca_key = KeyPair::generate().expect("key");
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca, ca_key).expect("ca");
        let signed = CertificateParams::new(vec!["abc.example.com".to_owned()])
            .expect("params")
            .signed_by(&KeyPair::generate().expect("key"), &ca)
            .expect("leaf")
            .der()
            .clone();
        let mut roots = RootCertStore::empty();
        roots.add(signed.clone()).expect("anchor");
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .expect("verifier");
        assert!(!verify(webpki.as_ref(), &signed, "abc.example.com"));
        let pinned = PinnedVerifier::new(
            vec![signed.clone()],
            provider().signature_verification_algorithms,
        );
        assert!(verify(&pinned, &signed, "abc.example.com"));
    }

    #[test]
    fn no_roots_trusts_nothing() {
        let verifier = NoRootsVerifier::new(provider().signature_verification_algorithms);
        assert!(!verify(&verifier, &validity_leaf(), "example.org"));
    }
}
