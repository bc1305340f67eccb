//! AuthenticationPolicy enforcement: JWT, basic auth and API keys, checked against the key
//! material `translate` compiled into [`ir::Authentication`].
//!
//! Answers follow what clients of Envoy's filters expect: missing or bad credentials get 401
//! with a `WWW-Authenticate` challenge (`Bearer` with RFC 6750's `error="invalid_token"`,
//! `Basic` with the realm, `ApiKey`); a valid token for another audience gets 403. A policy
//! that could not be compiled answers 500 for every request, so that a broken policy never
//! opens a route. Each configured method must accept the request.
//!
//! Remote JWKS (`remoteJWKS`) are fetched on first use and kept for the provider's refresh
//! time; a fetch that fails keeps the last keys (or, without any, refuses the token with
//! 401) and is not retried for a second. HTTPS fetches trust the system's CA bundle
//! (`SSL_CERT_FILE` first), as `wellKnownCACertificates: System` does.
//!
//! bcrypt is slow on purpose (tens of milliseconds), so it runs on the blocking pool, and
//! the users whose password was just verified are remembered (by a SHA-256 of user,
//! password and stored hash) for a minute, bounded, so a busy client does not pay it on
//! every request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use ir::{ApiKeys, Authentication, BasicAuth, Jwt, JwtKey, JwtKeys, KeySource, PasswordHash};
use jsonwebtoken::errors::ErrorKind;
use serde_json::{Map, Value};
use sha2::Digest;

use crate::error::ProxyError;

/// The claims of a verified token, for rate limit keys.
pub(crate) type Claims = Map<String, Value>;

/// How long a verified bcrypt password is remembered.
const VERIFIED_TTL: Duration = Duration::from_secs(60);
/// How many verified passwords are remembered before the memory is cleared.
const VERIFIED_MAX: usize = 10_000;

/// Checks requests against authentication policies; shared by every request.
#[derive(Default)]
pub(crate) struct Authenticator {
    verified: Mutex<HashMap<[u8; 32], Instant>>,
    /// Remote JWKS by URL: when they were last fetched (or tried) and the keys.
    remote: Mutex<HashMap<String, Fetched>>,
}

/// A remote JWKS as last fetched.
#[derive(Clone)]
struct Fetched {
    tried: Instant,
    keys: Option<Arc<Vec<JwtKey>>>,
}

/// The longest JWKS document read.
const JWKS_LIMIT: usize = 1024 * 1024;
/// Time allowed to fetch a JWKS.
const JWKS_TIMEOUT: Duration = Duration::from_secs(5);
/// The least time between two attempts to fetch one JWKS after a failure.
const JWKS_RETRY: Duration = Duration::from_secs(1);

impl Authenticator {
    /// Checks `parts` against `policy`, adding the headers the policy forwards. Returns the
    /// token's claims when a JWT was verified.
    pub(crate) async fn authenticate(
        &self,
        policy: &Authentication,
        parts: &mut Parts,
    ) -> Result<Option<Claims>, ProxyError> {
        if let Some(reason) = &policy.invalid {
            return Err(ProxyError::InvalidRule(format!(
                "AuthenticationPolicy {} is invalid: {reason}",
                policy.policy
            )));
        }
        if let Some(basic) = &policy.basic {
            self.basic(&policy.policy, basic, &parts.headers).await?;
        }
        if let Some(keys) = &policy.api_key {
            api_key(&policy.policy, keys, parts)?;
        }
        let Some(jwt) = &policy.jwt else {
            return Ok(None);
        };
        let mut keys = Vec::with_capacity(jwt.providers.len());
        for provider in &jwt.providers {
            keys.push(match &provider.keys {
                JwtKeys::Static(keys) => Some(Arc::clone(keys)),
                JwtKeys::Remote { uri, refresh } => self.remote_keys(uri, *refresh).await,
            });
        }
        jwt_claims(&policy.policy, jwt, &keys, &mut parts.headers).map(Some)
    }

    /// The keys at `uri`, fetched when there are none yet or they are older than `refresh`.
    async fn remote_keys(&self, uri: &str, refresh: Duration) -> Option<Arc<Vec<JwtKey>>> {
        let now = Instant::now();
        let cached = self
            .remote
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(uri)
            .cloned();
        if let Some(cached) = &cached {
            let fresh = cached.keys.is_some() && now - cached.tried < refresh;
            let resting = cached.keys.is_none() && now - cached.tried < JWKS_RETRY;
            if fresh || resting {
                return cached.keys.clone();
            }
        }
        let keys = match tokio::time::timeout(JWKS_TIMEOUT, fetch_jwks(uri)).await {
            Ok(Ok(keys)) => Some(Arc::new(keys)),
            Ok(Err(error)) => {
                tracing::warn!(%uri, %error, "cannot fetch JWKS");
                cached.and_then(|c| c.keys)
            }
            Err(_) => {
                tracing::warn!(%uri, "fetching JWKS timed out");
                cached.and_then(|c| c.keys)
            }
        };
        let mut remote = self.remote.lock().unwrap_or_else(PoisonError::into_inner);
        if remote.len() >= 1_000 && !remote.contains_key(uri) {
            remote.clear();
        }
        remote.insert(
            uri.to_string(),
            Fetched {
                tried: now,
                keys: keys.clone(),
            },
        );
        keys
    }

    async fn basic(
        &self,
        policy: &str,
        basic: &BasicAuth,
        headers: &HeaderMap,
    ) -> Result<(), ProxyError> {
        let challenge = || {
            let realm = basic.realm.replace(['"', '\\'], "");
            HeaderValue::from_str(&format!("Basic realm=\"{realm}\", charset=\"UTF-8\""))
                .unwrap_or(HeaderValue::from_static("Basic"))
        };
        let refuse = |reason: &str| ProxyError::Unauthenticated {
            policy: policy.to_string(),
            reason: reason.to_string(),
            challenge: challenge(),
        };
        let encoded =
            credentials(headers, "Basic").ok_or_else(|| refuse("no basic credentials"))?;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| refuse("malformed basic credentials"))?;
        let (user, password) = decoded
            .split_once(':')
            .ok_or_else(|| refuse("malformed basic credentials"))?;
        let stored = basic
            .users
            .get(user)
            .ok_or_else(|| refuse("unknown user"))?;
        let accepted = match stored {
            PasswordHash::Sha1(digest) => {
                let given: [u8; 20] = sha1::Sha1::digest(password.as_bytes()).into();
                constant_time_eq(&given, digest)
            }
            PasswordHash::Bcrypt(hash) => self.bcrypt(user, password, hash).await,
        };
        if accepted {
            Ok(())
        } else {
            Err(refuse("wrong password"))
        }
    }

    async fn bcrypt(&self, user: &str, password: &str, hash: &str) -> bool {
        let mut hasher = sha2::Sha256::new();
        for part in [user, password, hash] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        let id: [u8; 32] = hasher.finalize().into();
        let now = Instant::now();
        {
            let verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
            if verified.get(&id).is_some_and(|at| now - *at < VERIFIED_TTL) {
                return true;
            }
        }
        let (password, hash) = (password.to_string(), hash.to_string());
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        if ok {
            let mut verified = self.verified.lock().unwrap_or_else(PoisonError::into_inner);
            if verified.len() >= VERIFIED_MAX {
                verified.clear();
            }
            verified.insert(id, now);
        }
        ok
    }
}

/// Fetches and parses a JWKS over HTTP/1.1 (HTTPS with the system's roots).
async fn fetch_jwks(uri: &str) -> Result<Vec<JwtKey>, String> {
    use http_body_util::{BodyExt, Empty, Limited};
    use hyper_util::rt::TokioIo;
    let parsed: http::Uri = uri.parse().map_err(|e| format!("bad URL: {e}"))?;
    let https = parsed.scheme_str() == Some("https");
    let host = parsed
        .host()
        .ok_or("the URL has no host")?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = parsed.port_u16().unwrap_or(if https { 443 } else { 80 });
    let authority = parsed.authority().map_or(host.clone(), |a| a.to_string());
    let request = http::Request::get(parsed.path_and_query().map_or("/", |p| p.as_str()))
        .header(header::HOST, authority)
        .header(header::ACCEPT, "application/json")
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let response = if https {
        let roots = crate::forward::system_roots()
            .as_ref()
            .map_err(Clone::clone)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(Arc::clone(roots))
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("bad server name: {e}"))?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        sender.send_request(request).await
    } else {
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        sender.send_request(request).await
    }
    .map_err(|e| e.to_string())?;
    if response.status() != http::StatusCode::OK {
        return Err(format!("answered {}", response.status()));
    }
    let body = Limited::new(response.into_body(), JWKS_LIMIT)
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    JwtKey::parse_set(&body)
}

/// The credentials after `scheme` in `Authorization` (the scheme compares without case).
fn credentials<'h>(headers: &'h HeaderMap, scheme: &str) -> Option<&'h str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (given, rest) = value.split_once(' ')?;
    given
        .eq_ignore_ascii_case(scheme)
        .then(|| rest.trim())
        .filter(|rest| !rest.is_empty())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn api_key(policy: &str, keys: &ApiKeys, parts: &mut Parts) -> Result<(), ProxyError> {
    let refuse = |reason: &str| ProxyError::Unauthenticated {
        policy: policy.to_string(),
        reason: reason.to_string(),
        challenge: HeaderValue::from_static("ApiKey"),
    };
    let presented = keys.sources.iter().find_map(|source| match source {
        KeySource::Header(name) => parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        KeySource::Query(name) => query_parameter(parts.uri.query()?, name),
    });
    let presented = presented.ok_or_else(|| refuse("no API key"))?;
    let client = keys
        .client_of(presented.trim())
        .ok_or_else(|| refuse("unknown API key"))?;
    if let Some(header) = &keys.client_id_header
        && let Ok(value) = HeaderValue::from_str(client)
    {
        parts.headers.insert(header.clone(), value);
    }
    Ok(())
}

/// The first value of a query parameter, percent-decoded (`+` as space).
fn query_parameter(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key)? == name)
            .then(|| percent_decode(value))
            .flatten()
    })
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            byte => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Verifies the bearer token against the providers, in order; the first that verifies it
/// wins. Claims named in `claimToHeaders` are then set on the request.
fn jwt_claims(
    policy: &str,
    jwt: &Jwt,
    keys: &[Option<Arc<Vec<JwtKey>>>],
    headers: &mut HeaderMap,
) -> Result<Claims, ProxyError> {
    let refuse = |reason: &str, description: &str| ProxyError::Unauthenticated {
        policy: policy.to_string(),
        reason: reason.to_string(),
        challenge: HeaderValue::from_str(&format!(
            "Bearer error=\"invalid_token\", error_description=\"{description}\""
        ))
        .unwrap_or(HeaderValue::from_static("Bearer")),
    };
    let Some(token) = credentials(headers, "Bearer").map(str::to_string) else {
        return Err(ProxyError::Unauthenticated {
            policy: policy.to_string(),
            reason: "no bearer token".into(),
            challenge: HeaderValue::from_static("Bearer"),
        });
    };
    let header = jsonwebtoken::decode_header(&token)
        .map_err(|_| refuse("malformed token", "the token is malformed"))?;
    // The most telling failure across providers and keys: a wrong audience beats an expiry,
    // which beats a signature no key verifies.
    let mut failure = (
        0,
        refuse("no key verifies the token", "the token is not valid"),
    );
    for (provider, keys) in jwt.providers.iter().zip(keys) {
        let Some(keys) = keys else {
            // The provider's keys could not be fetched: it verifies nothing.
            continue;
        };
        let keys = keys.iter().filter(|key| {
            key.algorithm == header.alg
                && match (&header.kid, &key.id) {
                    (Some(wanted), Some(id)) => wanted == id,
                    _ => true,
                }
        });
        for key in keys {
            let mut validation = jsonwebtoken::Validation::new(key.algorithm);
            validation.leeway = 30;
            validation.validate_nbf = true;
            match &provider.issuer {
                Some(issuer) => validation.set_issuer(&[issuer]),
                None => validation.iss = None,
            }
            if provider.audiences.is_empty() {
                validation.validate_aud = false;
            } else {
                validation.set_audience(&provider.audiences);
            }
            match jsonwebtoken::decode::<Claims>(&token, &key.key, &validation) {
                Ok(data) => {
                    for (claim, header) in &provider.claim_to_headers {
                        let value = match data.claims.get(claim) {
                            Some(Value::String(text)) => text.clone(),
                            Some(Value::Null) | None => continue,
                            Some(other) => other.to_string(),
                        };
                        if let Ok(value) = HeaderValue::from_str(&value) {
                            headers.insert(header.clone(), value);
                        }
                    }
                    return Ok(data.claims);
                }
                Err(error) => {
                    let (rank, error) = match error.kind() {
                        ErrorKind::InvalidAudience => (
                            3,
                            ProxyError::Forbidden {
                                policy: policy.to_string(),
                                reason: format!("token audience not accepted by {}", provider.name),
                            },
                        ),
                        ErrorKind::ExpiredSignature => {
                            (2, refuse("expired token", "the token has expired"))
                        }
                        ErrorKind::ImmatureSignature => (
                            2,
                            refuse("token not yet valid", "the token is not valid yet"),
                        ),
                        ErrorKind::InvalidIssuer => (
                            1,
                            refuse("token from another issuer", "the token is not valid"),
                        ),
                        _ => (0, refuse("token not verified", "the token is not valid")),
                    };
                    if rank > failure.0 {
                        failure = (rank, error);
                    }
                }
            }
        }
    }
    Err(failure.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_are_decoded() {
        assert_eq!(
            query_parameter("a=1&key=a%2Bb+c", "key").as_deref(),
            Some("a+b c")
        );
        assert_eq!(query_parameter("key", "key").as_deref(), Some(""));
        assert_eq!(query_parameter("other=1", "key"), None);
        assert_eq!(query_parameter("key=%zz", "key"), None);
    }

    #[test]
    fn credentials_need_their_scheme() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        assert_eq!(credentials(&headers, "Bearer"), Some("abc"));
        assert_eq!(credentials(&headers, "Basic"), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(credentials(&headers, "Bearer"), None);
    }
}
