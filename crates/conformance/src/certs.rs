//! The Secrets and ConfigMaps the Go suite generates after applying the base manifests
//! (README "Generated certificates").
//!
//! The README asks for RSA 2048 keys. rcgen can only generate RSA keys with its `aws_lc_rs`
//! backend, and the workspace builds it with `ring`, so every key here is ECDSA P-256 and
//! `tls.key` is a PKCS#8 `PRIVATE KEY` rather than PKCS#1 `RSA PRIVATE KEY`. Nothing in the
//! cases depends on the key algorithm.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use serde_json::{Value, json};

const INFRA: &str = "gateway-conformance-infra";
const WEB: &str = "gateway-conformance-web-backend";
const APP: &str = "gateway-conformance-app-backend";

/// Builds every generated object of the README's table, with fresh keys.
pub fn generated_objects() -> anyhow::Result<Vec<Value>> {
    let validity = Validity::one_year_from_now();
    let ca_a = Ca::new("conformance CA A", &validity)?;
    let ca_b = Ca::new("conformance CA B", &validity)?;
    let ca_c = Ca::new("conformance CA C", &validity)?;
    let ca_d = Ca::new("conformance CA D", &validity)?;
    let web_ca = Ca::new("conformance web-backend CA", &validity)?;

    let server = |names: &[Name]| Leaf {
        names: names.to_vec(),
        usage: Usage::Server,
    };
    let client = Leaf {
        names: Vec::new(),
        usage: Usage::Client,
    };
    let passthrough = server(&[Name::Dns("abc.example.com")]).self_signed(&validity)?;

    Ok(vec![
        tls_secret(
            WEB,
            "certificate",
            &server(&[Name::Uri("*")]).self_signed(&validity)?,
        ),
        tls_secret(
            INFRA,
            "tls-validity-checks-certificate",
            &server(&[
                Name::Uri("*"),
                Name::Dns("*.org"),
                Name::Dns("*.wildcard.org"),
            ])
            .self_signed(&validity)?,
        ),
        ca_config_map(WEB, "web-backend-cm", &web_ca),
        ca_config_map(INFRA, "tls-validity-checks-ca-certificate", &ca_a),
        tls_secret(
            INFRA,
            "tls-validity-checks-client-certificate",
            &client.signed_by(&ca_a, &validity)?,
        ),
        ca_config_map(INFRA, "tls-validity-checks-per-port-ca-certificate", &ca_b),
        tls_secret(
            INFRA,
            "tls-validity-checks-per-port-client-certificate",
            &client.signed_by(&ca_b, &validity)?,
        ),
        tls_secret(INFRA, "tls-passthrough-checks-certificate", &passthrough),
        tls_secret(APP, "tls-passthrough-checks-certificate", &passthrough),
        ca_config_map(INFRA, "tls-checks-ca-certificate", &ca_c),
        tls_secret(
            INFRA,
            "tls-checks-certificate",
            &server(&[
                Name::Dns("abc.example.com"),
                Name::Uri("spiffe://abc.example.com/test-identity"),
                Name::Dns("other.example.com"),
            ])
            .signed_by(&ca_c, &validity)?,
        ),
        tls_secret(
            INFRA,
            "tls-checks-client-certificate",
            &client.signed_by(&ca_c, &validity)?,
        ),
        tls_secret(
            INFRA,
            "tls-terminate-checks-certificate",
            &server(&[Name::Dns("tls.example.com")]).signed_by(&ca_c, &validity)?,
        ),
        ca_config_map(INFRA, "mismatch-ca-certificate", &ca_d),
    ])
}

/// Standard base64 with padding, as Kubernetes uses for `Secret.data`.
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A PEM certificate with its PEM private key.
struct Pair {
    cert: String,
    key: String,
}

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    key_pem: String,
}

#[derive(Clone, Copy)]
enum Name {
    Dns(&'static str),
    Uri(&'static str),
}

#[derive(Clone, Copy)]
enum Usage {
    Server,
    Client,
}

struct Leaf {
    names: Vec<Name>,
    usage: Usage,
}

/// One year from yesterday, so clock skew between processes never matters.
struct Validity {
    from: (i32, u8, u8),
    until: (i32, u8, u8),
}

impl Ca {
    fn new(common_name: &str, validity: &Validity) -> anyhow::Result<Self> {
        let mut params = validity.params(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().context("generating a CA key")?;
        let key_pem = key.serialize_pem();
        let issuer = CertifiedIssuer::self_signed(params, key).context("self-signing a CA")?;
        Ok(Self { issuer, key_pem })
    }
}

impl Leaf {
    fn params(&self, validity: &Validity) -> anyhow::Result<CertificateParams> {
        let common_name = match self.names.first() {
            Some(Name::Dns(name) | Name::Uri(name)) => name,
            None => "conformance client",
        };
        let mut params = validity.params(common_name);
        for name in &self.names {
            params.subject_alt_names.push(match name {
                Name::Dns(dns) => SanType::DnsName(Ia5String::try_from(*dns)?),
                Name::Uri(uri) => SanType::URI(Ia5String::try_from(*uri)?),
            });
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match self.usage {
            Usage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            Usage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        Ok(params)
    }

    fn self_signed(&self, validity: &Validity) -> anyhow::Result<Pair> {
        let key = KeyPair::generate().context("generating a key")?;
        let cert = self
            .params(validity)?
            .self_signed(&key)
            .context("self-signing")?;
        Ok(Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }

    fn signed_by(&self, ca: &Ca, validity: &Validity) -> anyhow::Result<Pair> {
        let key = KeyPair::generate().context("generating a key")?;
        let cert = self
            .params(validity)?
            .signed_by(&key, &ca.issuer)
            .context("signing")?;
        Ok(Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

impl Validity {
    fn one_year_from_now() -> Self {
        let days = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() / 86_400)
            .unwrap_or(0);
        let days = i64::try_from(days).unwrap_or(0);
        Self {
            from: civil_date(days - 1),
            until: civil_date(days + 365),
        }
    }

    fn params(&self, common_name: &str) -> CertificateParams {
        let mut params = CertificateParams::default();
        params.not_before = rcgen::date_time_ymd(self.from.0, self.from.1, self.from.2);
        params.not_after = rcgen::date_time_ymd(self.until.0, self.until.1, self.until.2);
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_date(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (
        i32::try_from(year).unwrap_or(2000),
        u8::try_from(month).unwrap_or(1),
        u8::try_from(day).unwrap_or(1),
    )
}

fn tls_secret(namespace: &str, name: &str, pair: &Pair) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"namespace": namespace, "name": name},
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64(pair.cert.as_bytes()),
            "tls.key": base64(pair.key.as_bytes()),
        },
    })
}

fn ca_config_map(namespace: &str, name: &str, ca: &Ca) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"namespace": namespace, "name": name},
        "data": {"ca.crt": ca.issuer.pem(), "key.crt": ca.key_pem},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, expected) in vectors {
            assert_eq!(base64(input.as_bytes()), expected, "input {input:?}");
        }
    }

    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(civil_date(0), (1970, 1, 1));
        assert_eq!(civil_date(11_016), (2000, 2, 29));
        assert_eq!(civil_date(20_454), (2026, 1, 1));
    }

    #[test]
    fn every_generated_object_is_named_and_typed() {
        let objects = generated_objects().expect("generation works");
        assert_eq!(objects.len(), 14);
        let secret = objects
            .iter()
            .find(|o| o.pointer("/metadata/name") == Some(&json!("tls-checks-certificate")))
            .expect("tls-checks-certificate");
        assert_eq!(secret["type"], "kubernetes.io/tls");
        assert!(
            secret
                .pointer("/data/tls.crt")
                .and_then(Value::as_str)
                .is_some()
        );
    }
}
