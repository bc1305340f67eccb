//! Batch case types (README "`weighted-distribution`", "`mirror-percentage`",
//! "`backend-header-consistency`"): many requests, judged together.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rand::Rng as _;
use serde::Deserialize;
use tokio::task::JoinSet;

use crate::case::{Case, MirrorRef};
use crate::expect::{EchoReply, backend_name};
use crate::traffic::{HttpTarget, TrafficContext};

/// The `distribution` block (keys of every batch type; unused ones stay at their defaults).
#[derive(Debug, Clone, Deserialize)]
pub struct Distribution {
    /// Requests per batch.
    #[serde(default = "five_hundred")]
    pub requests: usize,
    /// Requests in flight at once.
    #[serde(default = "ten")]
    pub concurrency: usize,
    /// Backend deployment to expected share.
    #[serde(default)]
    pub weights: BTreeMap<String, f64>,
    /// Allowed distance between a share and its weight.
    #[serde(default = "five_percent")]
    pub absolute_tolerance: f64,
    /// Batches to try before failing.
    #[serde(default = "ten")]
    pub max_attempts: usize,
    /// Present when upstream adds random delays and headers to each request.
    #[serde(default)]
    pub entropy: Option<String>,
    /// How each request is sent, in words (gRPC: whether each RPC gets its own connection).
    #[serde(default)]
    pub each_request: Option<String>,
    /// Mirror backends and the accepted count range.
    #[serde(default)]
    pub mirror_backends: Vec<MirrorShare>,
    /// Pause between batches.
    #[serde(default)]
    pub pause_between_attempts_s: Option<f64>,
}

/// One mirror backend of `mirror-percentage`.
#[derive(Debug, Clone, Deserialize)]
pub struct MirrorShare {
    /// The mirror deployment.
    #[serde(flatten)]
    pub mirror: MirrorRef,
    /// Lowest accepted count of mirrored copies.
    pub min_count: f64,
    /// Highest accepted count of mirrored copies.
    pub max_count: f64,
}

/// README: map each answer to a backend, compare shares with weights (normalised): each
/// within tolerance, no unknown backend, nothing at all for weight 0.
pub fn check_distribution(
    counts: &BTreeMap<String, usize>,
    weights: &BTreeMap<String, f64>,
    tolerance: f64,
) -> Result<(), String> {
    let total: usize = counts.values().sum();
    let weight_sum: f64 = weights.values().sum();
    if total == 0 || weight_sum <= 0.0 {
        return Err("no answers or no weights to compare".to_owned());
    }
    if let Some(unknown) = counts.keys().find(|b| !weights.contains_key(*b)) {
        return Err(format!(
            "answer from {unknown}, which is not in the weights table"
        ));
    }
    for (backend, weight) in weights {
        let count = counts.get(backend).copied().unwrap_or(0);
        let share = count as f64 / total as f64;
        let expected = weight / weight_sum;
        if expected == 0.0 && count > 0 {
            return Err(format!(
                "{backend} has weight 0 but got {count} of {total} requests"
            ));
        }
        if (share - expected).abs() > tolerance {
            return Err(format!(
                "{backend} got {share:.3} of {total} requests, want {expected:.3} ± {tolerance}"
            ));
        }
    }
    Ok(())
}

/// `weighted-distribution`.
pub async fn weighted_distribution(case: &Case, ctx: &TrafficContext) -> Result<(), String> {
    let target = Arc::new(HttpTarget::prepare(case, ctx).await?);
    let distribution = distribution(case)?;
    // "First the preceding plain case must pass": converge before measuring.
    target.eventually(ctx.consistency_cap()).await?;
    let mut last = String::new();
    for attempt in 1..=distribution.max_attempts.max(1) {
        let entropy = distribution.entropy.is_some();
        let answers = batch(
            &target,
            distribution.requests,
            distribution.concurrency,
            move |t| single(t, entropy),
        )
        .await;
        match answers.and_then(|pods| {
            let mut counts = BTreeMap::new();
            for pod in &pods {
                *counts.entry(backend_name(pod).to_owned()).or_insert(0) += 1;
            }
            check_distribution(
                &counts,
                &distribution.weights,
                distribution.absolute_tolerance,
            )
        }) {
            Ok(()) => return Ok(()),
            Err(error) => last = format!("attempt {attempt}: {error}"),
        }
    }
    Err(last)
}

/// `mirror-percentage`.
pub async fn mirror_percentage(case: &Case, ctx: &TrafficContext) -> Result<(), String> {
    let target = Arc::new(HttpTarget::prepare(case, ctx).await?);
    let distribution = distribution(case)?;
    let pause = Duration::from_secs_f64(
        distribution
            .pause_between_attempts_s
            .unwrap_or(2.0)
            .max(0.0),
    );
    let cap = ctx.consistency_cap();
    let mut last = String::new();
    for attempt in 1..=distribution.max_attempts.max(1) {
        let started = Instant::now();
        let sent = batch(
            &target,
            distribution.requests,
            distribution.concurrency,
            move |t| logical(t, cap),
        )
        .await;
        // Mirrors are fire-and-forget at the proxy; give the last copies a moment to land.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let outcome = sent.and_then(|_| {
            for share in &distribution.mirror_backends {
                let (namespace, backend) = (&share.mirror.namespace, &share.mirror.backend);
                let log = ctx
                    .backends
                    .log(namespace, backend)
                    .ok_or_else(|| format!("no mirror backend {namespace}/{backend}"))?;
                let count = log.count_since(&target.path, started) as f64;
                if count < share.min_count || count > share.max_count {
                    return Err(format!(
                        "{backend} logged {count} copies of {}, want {}..={}",
                        target.path, share.min_count, share.max_count
                    ));
                }
            }
            Ok(())
        });
        match outcome {
            Ok(()) => return Ok(()),
            Err(error) => last = format!("attempt {attempt}: {error}"),
        }
        tokio::time::sleep(pause).await;
    }
    Err(last)
}

/// `backend-header-consistency`: 100 sequential single requests; each backend must receive
/// exactly one `Backend` header, a prefix of the answering pod's name.
pub async fn backend_header_consistency(case: &Case, ctx: &TrafficContext) -> Result<(), String> {
    let target = HttpTarget::prepare(case, ctx).await?;
    for index in 1..=100 {
        let reply = target
            .send()
            .await
            .map_err(|e| format!("request {index}: {e}"))?;
        let echo = EchoReply::from_reply(&reply, &target.outgoing.method)
            .map_err(|e| format!("request {index}: {e}"))?;
        match echo.header("Backend").map(Vec::as_slice) {
            Some([value]) if echo.pod.starts_with(value.as_str()) => {}
            Some([value]) => {
                return Err(format!(
                    "request {index}: Backend header {value:?} but pod {:?}",
                    echo.pod
                ));
            }
            other => {
                return Err(format!(
                    "request {index}: want exactly one Backend header, got {other:?}"
                ));
            }
        }
    }
    Ok(())
}

/// The case's `distribution` block.
pub(crate) fn distribution(case: &Case) -> Result<Distribution, String> {
    serde_json::from_value(case.distribution.clone())
        .map_err(|e| format!("distribution block: {e}"))
}

/// Sends `requests` requests, `concurrency` at a time; each yields the answering pod.
pub(crate) async fn batch<T, F, Fut>(
    target: &Arc<T>,
    requests: usize,
    concurrency: usize,
    each: F,
) -> Result<Vec<String>, String>
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<String, String>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..concurrency.clamp(1, 64) {
        let (target, next, each) = (target.clone(), next.clone(), each.clone());
        workers.spawn(async move {
            let mut pods = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < requests {
                pods.push(each(target.clone()).await?);
            }
            Ok::<_, String>(pods)
        });
    }
    let mut pods = Vec::with_capacity(requests);
    while let Some(joined) = workers.join_next().await {
        pods.extend(joined.map_err(|e| format!("request worker: {e}"))??);
    }
    Ok(pods)
}

/// One request that must meet the expectation at once. With `entropy`, like upstream: a
/// random delay up to 1 s, a random `X-Jitter` header, or both.
async fn single(target: Arc<HttpTarget>, entropy: bool) -> Result<String, String> {
    let mut target = (*target).clone();
    if entropy {
        let (choice, delay, jitter) = {
            let mut rng = rand::rng();
            (
                rng.random_range(0..3),
                rng.random_range(0..1000),
                rng.random_range(0..10_000),
            )
        };
        if choice != 1 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if choice != 0 {
            target
                .outgoing
                .headers
                .push(("X-Jitter".to_owned(), jitter.to_string()));
        }
    }
    let reply = target.try_once().await?;
    Ok(EchoReply::from_reply(&reply, &target.outgoing.method)?.pod)
}

/// One logical request: repeated (1 s pause after a failure, up to `cap`) until one answer
/// meets the expectation.
async fn logical(target: Arc<HttpTarget>, cap: Duration) -> Result<String, String> {
    let started = Instant::now();
    loop {
        match target.try_once().await {
            Ok(reply) => return Ok(EchoReply::from_reply(&reply, &target.outgoing.method)?.pod),
            Err(error) if started.elapsed() >= cap => {
                return Err(format!("logical request: {error}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

fn five_hundred() -> usize {
    500
}

fn ten() -> usize {
    10
}

fn five_percent() -> f64 {
    0.05
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
        pairs.iter().map(|(b, c)| (b.to_string(), *c)).collect()
    }

    fn weights(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(b, w)| (b.to_string(), *w)).collect()
    }

    #[test]
    fn shares_within_tolerance_pass() {
        let w = weights(&[("v1", 0.7), ("v2", 0.3), ("v3", 0.0)]);
        assert_eq!(
            check_distribution(&counts(&[("v1", 360), ("v2", 140)]), &w, 0.05),
            Ok(())
        );
    }

    #[test]
    fn weights_are_normalised() {
        let w = weights(&[("v1", 70.0), ("v2", 30.0)]);
        assert_eq!(
            check_distribution(&counts(&[("v1", 350), ("v2", 150)]), &w, 0.05),
            Ok(())
        );
    }

    #[test]
    fn a_share_outside_tolerance_fails() {
        let w = weights(&[("v1", 0.7), ("v2", 0.3)]);
        let error =
            check_distribution(&counts(&[("v1", 400), ("v2", 100)]), &w, 0.05).expect_err("skewed");
        assert!(error.starts_with("v1 got 0.800"), "{error}");
    }

    #[test]
    fn zero_weight_backends_must_get_nothing() {
        let w = weights(&[("v1", 1.0), ("v3", 0.0)]);
        let error = check_distribution(&counts(&[("v1", 499), ("v3", 1)]), &w, 0.05)
            .expect_err("v3 answered");
        assert!(error.contains("weight 0"), "{error}");
    }

    #[test]
    fn unknown_backends_fail() {
        let w = weights(&[("v1", 1.0)]);
        let error =
            check_distribution(&counts(&[("v1", 1), ("x", 1)]), &w, 0.5).expect_err("unknown");
        assert!(error.contains("answer from x"), "{error}");
    }

    #[test]
    fn distribution_blocks_parse_with_defaults() {
        let d: Distribution = serde_json::from_value(serde_json::json!({
            "requests": 500,
            "mirror_backends": [{"backend": "b", "namespace": "n", "percent": 20, "min_count": 85.0, "max_count": 115.0}],
        }))
        .expect("valid block");
        assert_eq!((d.concurrency, d.max_attempts), (10, 10));
        assert_eq!(d.mirror_backends[0].mirror.backend, "b");
    }
}
