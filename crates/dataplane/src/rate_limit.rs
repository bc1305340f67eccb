//! RateLimitPolicy enforcement.
//!
//! - `Local` limits are token buckets in this process: `requests` tokens, refilled evenly
//!   over the window, so a client may burst up to the limit and then gets the steady rate.
//! - `Global` limits are fixed-window counters in Redis, shared by every process that points
//!   at the same Redis (`run --rate-limit-redis`): one `INCR` per request on a key named by
//!   the limit, the client key and the window, expiring with the window. This is the
//!   algorithm of Envoy's reference ratelimit service, on the engine it uses; Redis does the
//!   counting, nothing is home-made. When Redis cannot be reached the request is let
//!   through (and counted in `errors`), as Envoy's `failure_mode_deny: false` default does:
//!   an outage of the limiter must not become an outage of every route.
//!
//! Counters are named by the limit's policy and name, so they survive reloads and are shared
//! by every rule the policy covers. A request must be within every limit; the tightest one
//! is reported in `RateLimit-*` headers on answered requests, and a refused one gets 429
//! with `Retry-After` (`error.rs`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderMap;
use http::header::HeaderValue;
use ir::{ClientKey, Limit, LimitScope, RateLimit};
use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;

use crate::authn::Claims;
use crate::error::ProxyError;

/// Local buckets kept before idle ones are dropped.
const MAX_BUCKETS: usize = 100_000;
/// The longest a client key may be (longer header values share one count).
const MAX_KEY: usize = 256;

/// The script of one fixed-window count: increments, sets the expiry on the first request
/// of a window, and returns the count and the window's remaining milliseconds.
const COUNT_SCRIPT: &str = r"
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
return {n, ttl}
";

/// What the tightest limit says about an admitted request.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Quota {
    limit: u64,
    remaining: u64,
    reset: Duration,
}

/// Local buckets and the Redis connection; shared by every request.
pub(crate) struct Limiter {
    buckets: Mutex<HashMap<(String, String), Bucket>>,
    redis_url: Option<String>,
    redis: OnceCell<Option<ConnectionManager>>,
    script: redis::Script,
    /// Global checks that failed (Redis unreachable or erroring) and were let through.
    pub(crate) errors: AtomicU64,
    /// Requests refused, all limits together.
    pub(crate) limited: AtomicU64,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl Limiter {
    /// A limiter; global limits count in the Redis at `redis_url` (`redis://host:port/db`).
    pub(crate) fn new(redis_url: Option<String>) -> Self {
        Self {
            buckets: Mutex::default(),
            redis_url,
            redis: OnceCell::new(),
            script: redis::Script::new(COUNT_SCRIPT),
            errors: AtomicU64::new(0),
            limited: AtomicU64::new(0),
        }
    }

    /// Counts the request against every limit of `policy`; refuses it when one is used up.
    pub(crate) async fn check(
        &self,
        policy: &RateLimit,
        client: IpAddr,
        headers: &HeaderMap,
        claims: Option<&Claims>,
    ) -> Result<Option<Quota>, ProxyError> {
        let mut tightest: Option<Quota> = None;
        for limit in &policy.limits {
            let key = client_key(&limit.key, client, headers, claims);
            let verdict = match limit.scope {
                LimitScope::Local => Some(self.take_local(limit, key)),
                LimitScope::Global => self.take_global(limit, &key).await,
            };
            let Some(verdict) = verdict else { continue };
            match verdict {
                Ok(quota) => {
                    if tightest.is_none_or(|t| quota.remaining < t.remaining) {
                        tightest = Some(quota);
                    }
                }
                Err(retry_after) => {
                    self.limited.fetch_add(1, Ordering::Relaxed);
                    return Err(ProxyError::RateLimited {
                        policy: policy.policy.clone(),
                        limit: u64::from(limit.requests),
                        retry_after,
                    });
                }
            }
        }
        Ok(tightest)
    }

    /// Takes a token from the limit's bucket for `key`; `Err` holds when one will be there.
    fn take_local(&self, limit: &Limit, key: String) -> Result<Quota, Duration> {
        let capacity = f64::from(limit.requests);
        let rate = capacity / limit.window.as_secs_f64().max(f64::MIN_POSITIVE);
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= MAX_BUCKETS {
            // Drop the buckets that have refilled: forgetting them changes nothing.
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * rate < capacity
            });
            if buckets.len() >= MAX_BUCKETS {
                buckets.clear();
            }
        }
        let bucket = buckets.entry((limit.id.clone(), key)).or_insert(Bucket {
            tokens: capacity,
            updated: now,
        });
        let refilled = now.duration_since(bucket.updated).as_secs_f64() * rate;
        bucket.tokens = (bucket.tokens + refilled).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            let missing = capacity - bucket.tokens;
            Ok(Quota {
                limit: u64::from(limit.requests),
                remaining: bucket.tokens.floor() as u64,
                reset: Duration::from_secs_f64(missing / rate),
            })
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / rate))
        }
    }

    /// Counts the request in Redis; `None` when Redis could not be asked.
    async fn take_global(&self, limit: &Limit, key: &str) -> Option<Result<Quota, Duration>> {
        let Some(mut redis) = self.connection().await else {
            self.errors.fetch_add(1, Ordering::Relaxed);
            return None;
        };
        let window = limit.window.as_millis().max(1);
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let name = format!("portcullis:rl:{}:{}:{}", limit.id, key, now / window);
        let result: redis::RedisResult<(u64, i64)> = self
            .script
            .key(name)
            .arg(u64::try_from(window).unwrap_or(u64::MAX))
            .invoke_async(&mut redis)
            .await;
        let (count, ttl) = match result {
            Ok(answer) => answer,
            Err(error) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(%error, limit = %limit.id, "global rate limit not checked (Redis)");
                return None;
            }
        };
        let reset = Duration::from_millis(u64::try_from(ttl).unwrap_or(0));
        let allowed = u64::from(limit.requests);
        Some(if count <= allowed {
            Ok(Quota {
                limit: allowed,
                remaining: allowed - count,
                reset,
            })
        } else {
            Err(reset)
        })
    }

    async fn connection(&self) -> Option<ConnectionManager> {
        let url = self.redis_url.as_deref()?;
        self.redis
            .get_or_init(|| async {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(1)))
                    .set_response_timeout(Some(Duration::from_millis(500)))
                    .set_number_of_retries(2);
                let client = match redis::Client::open(url) {
                    Ok(client) => client,
                    Err(error) => {
                        tracing::error!(%error, "--rate-limit-redis is not a usable Redis URL");
                        return None;
                    }
                };
                match client.get_connection_manager_with_config(config).await {
                    Ok(manager) => Some(manager),
                    Err(error) => {
                        tracing::warn!(%error, "cannot connect to Redis for global rate limits");
                        None
                    }
                }
            })
            .await
            .clone()
    }
}

/// The count a request belongs to under `key`.
fn client_key(
    key: &ClientKey,
    client: IpAddr,
    headers: &HeaderMap,
    claims: Option<&Claims>,
) -> String {
    let mut text = match key {
        ClientKey::Everyone => String::new(),
        ClientKey::ClientIp => client.to_string(),
        ClientKey::Header(name) => headers
            .get(name)
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default(),
        ClientKey::JwtClaim(claim) => match claims.and_then(|c| c.get(claim)) {
            Some(serde_json::Value::String(text)) => text.clone(),
            Some(other) => other.to_string(),
            None => String::new(),
        },
    };
    if text.len() > MAX_KEY {
        let mut end = MAX_KEY;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

impl Quota {
    /// Adds the `RateLimit-*` fields to an answered request.
    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        let reset = self.reset.as_secs() + u64::from(self.reset.subsec_nanos() > 0);
        headers.insert("ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("ratelimit-reset", HeaderValue::from(reset));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests: u32, window: Duration) -> Limit {
        Limit {
            id: "ns/policy/0".into(),
            scope: LimitScope::Local,
            requests,
            window,
            key: ClientKey::ClientIp,
        }
    }

    #[test]
    fn a_bucket_allows_its_burst_then_refuses_with_a_retry_time() {
        let limiter = Limiter::new(None);
        let limit = limit(3, Duration::from_secs(60));
        for remaining in [2, 1, 0] {
            let quota = limiter
                .take_local(&limit, "a".into())
                .expect("within the burst");
            assert_eq!(quota.remaining, remaining);
        }
        let retry = limiter.take_local(&limit, "a".into()).expect_err("used up");
        assert!(
            retry > Duration::from_secs(15) && retry <= Duration::from_secs(20),
            "{retry:?}"
        );
        // Another client has its own bucket.
        assert!(limiter.take_local(&limit, "b".into()).is_ok());
    }

    #[test]
    fn keys_come_from_where_the_limit_says() {
        let mut headers = HeaderMap::new();
        headers.insert("x-user", HeaderValue::from_static("alice"));
        let ip: IpAddr = [127, 0, 0, 9].into();
        let mut claims = Claims::new();
        claims.insert("sub".into(), "bob".into());
        let key = |k: ClientKey| client_key(&k, ip, &headers, Some(&claims));
        assert_eq!(key(ClientKey::Everyone), "");
        assert_eq!(key(ClientKey::ClientIp), "127.0.0.9");
        assert_eq!(
            key(ClientKey::Header(http::HeaderName::from_static("x-user"))),
            "alice"
        );
        assert_eq!(key(ClientKey::JwtClaim("sub".into())), "bob");
        assert_eq!(key(ClientKey::JwtClaim("none".into())), "");
    }
}
