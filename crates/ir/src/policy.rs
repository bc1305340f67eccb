//! Authentication and rate limits in effect for a rule: compiled from our
//! `AuthenticationPolicy` and `RateLimitPolicy` kinds by `translate`, enforced by the data
//! plane before a request goes anywhere.
//!
//! Key material is compiled here (JWKS into decoding keys, htpasswd into hashes, API keys into
//! digests), so a request only ever verifies; nothing is parsed per request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use serde::{Serialize, Serializer};

/// The policies in effect for one rule (on one listener, when a Gateway's policy applies).
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RulePolicies {
    /// The AuthenticationPolicy that applies, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authentication: Option<Applied<Authentication>>,
    /// The RateLimitPolicy that applies, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<Applied<RateLimit>>,
}

/// A policy in effect, and the attachment that brought it (for `explain` and `/config`).
#[derive(Clone, Debug, Serialize)]
pub struct Applied<T> {
    /// The compiled policy.
    pub policy: Arc<T>,
    /// Its target that reaches the rule, such as `HTTPRoute default/app rule jwt` or
    /// `Gateway default/edge listener http`.
    pub via: Arc<str>,
}

/// A compiled AuthenticationPolicy: a request needs valid credentials for every method set.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Authentication {
    /// The policy, `namespace/name`.
    pub policy: String,
    /// Set when the policy could not be compiled (a missing Secret, a JWKS that does not
    /// parse): every request is refused with 500 rather than let through unchecked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub invalid: Option<String>,
    /// Bearer tokens.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwt: Option<Jwt>,
    /// Basic authentication.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub basic: Option<BasicAuth>,
    /// API keys.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeys>,
}

/// JWT providers; a token valid for one of them is accepted.
#[derive(Clone, Debug, Serialize)]
pub struct Jwt {
    /// The providers, in the policy's order.
    pub providers: Vec<JwtProvider>,
}

/// One issuer and its keys.
#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JwtProvider {
    /// The provider's name.
    pub name: String,
    /// Required `iss`, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Accepted `aud` values; empty accepts any.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    /// Its keys, or where to fetch them.
    pub keys: JwtKeys,
    /// Claims copied into request headers.
    #[serde(serialize_with = "serialize_claim_headers")]
    pub claim_to_headers: Vec<(String, HeaderName)>,
}

/// Where a provider's keys are.
#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum JwtKeys {
    /// Read from a ConfigMap or Secret with the config.
    Static(#[serde(serialize_with = "serialize_key_ids")] Arc<Vec<JwtKey>>),
    /// Fetched from an HTTP(S) URL by the data plane and kept for `refresh`.
    #[serde(rename_all = "camelCase")]
    Remote {
        /// The JWKS URL.
        uri: String,
        /// How long fetched keys are used before they are fetched again.
        refresh: Duration,
    },
}

/// One key of a JWKS.
#[derive(Clone)]
pub struct JwtKey {
    /// `kid`, matched against the token header's when both have one.
    pub id: Option<String>,
    /// The algorithm the key is for (from the JWK's `alg`, or its key type).
    pub algorithm: jsonwebtoken::Algorithm,
    /// The verification key.
    pub key: jsonwebtoken::DecodingKey,
}

/// Basic authentication against an htpasswd file.
#[derive(Clone, Serialize)]
pub struct BasicAuth {
    /// The challenge's realm.
    pub realm: String,
    /// Users and their password hashes.
    #[serde(serialize_with = "serialize_user_names")]
    pub users: HashMap<String, PasswordHash>,
}

/// A password hash from an htpasswd file.
#[derive(Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$2a$`, `$2b$`, `$2y$` (bcrypt).
    Bcrypt(String),
    /// `{SHA}` + base64 of the SHA-1 digest.
    Sha1([u8; 20]),
}

/// API keys, stored as SHA-256 digests so that looking one up reveals nothing through timing.
#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeys {
    /// Digest of each key → the client id it belongs to.
    #[serde(serialize_with = "serialize_client_ids")]
    pub keys: HashMap<[u8; 32], String>,
    /// Where a key is looked for, in order.
    pub sources: Vec<KeySource>,
    /// Tells the backend which client the key belongs to.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "serialize_opt_name"
    )]
    pub client_id_header: Option<HeaderName>,
}

/// Where an API key is looked for.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum KeySource {
    /// A header.
    Header(#[serde(serialize_with = "serialize_name")] HeaderName),
    /// A query parameter.
    Query(String),
}

/// A compiled RateLimitPolicy: a request must be within every limit.
#[derive(Clone, Debug, Serialize)]
pub struct RateLimit {
    /// The policy, `namespace/name`.
    pub policy: String,
    /// The limits.
    pub limits: Vec<Limit>,
}

/// One limit.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Limit {
    /// `namespace/name/limit`: what its counters are named by, so a policy's counts survive
    /// reloads and are shared by every rule it applies to.
    pub id: String,
    /// Local or global.
    pub scope: LimitScope,
    /// Requests per window.
    pub requests: u32,
    /// The window.
    pub window: Duration,
    /// What tells clients apart.
    pub key: ClientKey,
}

/// Where a limit is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum LimitScope {
    /// A token bucket in each process.
    Local,
    /// A fixed-window counter in Redis, shared by every process.
    Global,
}

/// What a limit counts by.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum ClientKey {
    /// One count for every client.
    Everyone,
    /// The connection's client address.
    ClientIp,
    /// A header's value.
    Header(#[serde(serialize_with = "serialize_name")] HeaderName),
    /// A verified JWT's claim.
    JwtClaim(String),
}

// === impl JwtKey ===

impl JwtKey {
    /// The signing keys of a JWKS document (keys marked for encryption are left out). A key
    /// without `alg` gets the one its type allows (RFC 7518): RS256, ES256/ES384 by curve,
    /// EdDSA, HS256.
    pub fn parse_set(document: &[u8]) -> Result<Vec<JwtKey>, String> {
        use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet, PublicKeyUse};
        use jsonwebtoken::{Algorithm, DecodingKey};
        let set: JwkSet =
            serde_json::from_slice(document).map_err(|e| format!("not a JWKS: {e}"))?;
        let keys = set
            .keys
            .iter()
            .filter(|jwk| jwk.common.public_key_use != Some(PublicKeyUse::Encryption))
            .map(|jwk| {
                let id = jwk.common.key_id.clone();
                let named = id.as_deref().unwrap_or("without kid");
                let algorithm = match jwk.common.key_algorithm {
                    Some(algorithm) => {
                        Algorithm::try_from(algorithm).map_err(|e| format!("key {named}: {e}"))?
                    }
                    None => match &jwk.algorithm {
                        AlgorithmParameters::RSA(_) => Algorithm::RS256,
                        AlgorithmParameters::EllipticCurve(ec)
                            if ec.curve == EllipticCurve::P256 =>
                        {
                            Algorithm::ES256
                        }
                        AlgorithmParameters::EllipticCurve(ec)
                            if ec.curve == EllipticCurve::P384 =>
                        {
                            Algorithm::ES384
                        }
                        AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                        AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
                        _ => return Err(format!("key {named}: unsupported key type")),
                    },
                };
                let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {named}: {e}"))?;
                Ok(JwtKey { id, algorithm, key })
            })
            .collect::<Result<Vec<_>, String>>()?;
        if keys.is_empty() {
            return Err("the JWKS has no signing keys".into());
        }
        Ok(keys)
    }
}

// === impl RulePolicies ===

impl RulePolicies {
    /// Whether no policy applies.
    pub fn is_empty(&self) -> bool {
        self.authentication.is_none() && self.rate_limit.is_none()
    }
}

// === impl ApiKeys ===

impl ApiKeys {
    /// The SHA-256 digest keys are stored and looked up by.
    pub fn digest(key: &str) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(key.as_bytes()).into()
    }

    /// The client id of a presented key.
    pub fn client_of(&self, key: &str) -> Option<&str> {
        self.keys.get(&Self::digest(key)).map(String::as_str)
    }
}

impl std::fmt::Debug for JwtProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtProvider")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field(
                "keys",
                &match &self.keys {
                    JwtKeys::Static(keys) => format!("{} keys", keys.len()),
                    JwtKeys::Remote { uri, .. } => uri.clone(),
                },
            )
            .finish()
    }
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("realm", &self.realm)
            .field("users", &self.users.len())
            .finish()
    }
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("keys", &self.keys.len())
            .field("sources", &self.sources)
            .finish()
    }
}

// Secrets never appear in `/config` or `explain` output: only key ids, user names and
// client ids do.

fn serialize_key_ids<S: Serializer>(keys: &Arc<Vec<JwtKey>>, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(keys.iter().map(|k| k.id.as_deref().unwrap_or("-")))
}

fn serialize_claim_headers<S: Serializer>(
    pairs: &[(String, HeaderName)],
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().map(|(claim, header)| (claim, header.as_str())))
}

fn serialize_user_names<S: Serializer>(
    users: &HashMap<String, PasswordHash>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut names: Vec<&String> = users.keys().collect();
    names.sort();
    s.collect_seq(names)
}

fn serialize_client_ids<S: Serializer>(
    keys: &HashMap<[u8; 32], String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    let mut ids: Vec<&String> = keys.values().collect();
    ids.sort();
    s.collect_seq(ids)
}

fn serialize_name<S: Serializer>(name: &HeaderName, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(name.as_str())
}

fn serialize_opt_name<S: Serializer>(name: &Option<HeaderName>, s: S) -> Result<S::Ok, S::Error> {
    match name {
        Some(name) => s.serialize_str(name.as_str()),
        None => s.serialize_none(),
    }
}
