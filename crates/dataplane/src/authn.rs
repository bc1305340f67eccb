//! AuthenticationPolicy enforcement: JWT, basic auth and API keys, checked against the key
//! material `translate` compiled into [`ir::Authentication`].
//!
//! Answers follow what clients of Envoy's filters expect: missing or bad credentials get 401
//! with a `WWW-Authenticate` challenge (`Bearer` with RFC 6750's `error="invalid_token"`,
//! `Basic` with the realm, `ApiKey`); a valid token for another audience gets 403. A policy
//! that could not be compiled answers 500 for every request, so that a broken policy never
//! opens a route. Each configured method must accept the request.
//!
//! bcrypt is slow on purpose (tens of milliseconds), so it runs on the blocking pool, and
//! the users whose password was just verified are remembered (by a SHA-256 of user,
//! password and stored hash) for a minute, bounded, so a busy client does not pay it on
//! every request.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use ir::{ApiKeys, Authentication, BasicAuth, Jwt, KeySource, PasswordHash};
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
}

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
        match &policy.jwt {
            Some(jwt) => jwt_claims(&policy.policy, jwt, &mut parts.headers).map(Some),
            None => Ok(None),
        }
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
fn jwt_claims(policy: &str, jwt: &Jwt, headers: &mut HeaderMap) -> Result<Claims, ProxyError> {
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
    for provider in &jwt.providers {
        let keys = provider.keys.iter().filter(|key| {
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
