//! Passive health: endpoints that fail several times in a row are ejected from load
//! balancing for a while (Envoy's consecutive-failure outlier detection).
//!
//! A failure is a connection that could not be made or a 502/503/504 answer; any other
//! answer resets the count. The n-th ejection of an endpoint lasts n times the base time, up to
//! ten times. An ejected endpoint returns when its time is up. Ejection never empties a
//! backend: when every endpoint is ejected, all of them are used again, since sending
//! somewhere beats answering 503 for a backend that may have recovered.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Endpoints remembered before the table is cleared (endpoints come and go with reloads).
const MAX_ENDPOINTS: usize = 10_000;
/// The longest ejection, in multiples of the base time.
const MAX_MULTIPLIER: u32 = 10;

/// What a request or connection attempt told about an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It answered (with something other than 502, 503 or 504).
    Healthy,
    /// It could not be reached, or answered 502, 503 or 504.
    Failed,
}

#[derive(Default)]
struct Health {
    consecutive_failures: u32,
    ejections: u32,
    ejected_until: Option<Instant>,
}

/// Health of every endpoint, shared by every request.
pub struct Outliers {
    threshold: u32,
    base: Duration,
    endpoints: Mutex<HashMap<SocketAddr, Health>>,
    /// Ejections so far (`portcullis_outlier_ejections_total`).
    pub ejections: prometheus_client::metrics::counter::Counter,
}

impl Outliers {
    /// Ejects after `threshold` consecutive failures, for `base` times the ejection count.
    pub fn new(threshold: u32, base: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            base,
            endpoints: Mutex::default(),
            ejections: prometheus_client::metrics::counter::Counter::default(),
        }
    }

    /// Records an outcome; returns `true` when it ejected the endpoint.
    pub fn report(&self, endpoint: SocketAddr, outcome: Outcome) -> bool {
        let mut endpoints = self.lock();
        if endpoints.len() >= MAX_ENDPOINTS && !endpoints.contains_key(&endpoint) {
            endpoints.clear();
        }
        let health = endpoints.entry(endpoint).or_default();
        match outcome {
            Outcome::Healthy => {
                health.consecutive_failures = 0;
                false
            }
            Outcome::Failed => {
                health.consecutive_failures += 1;
                if health.consecutive_failures < self.threshold {
                    return false;
                }
                health.consecutive_failures = 0;
                health.ejections = (health.ejections + 1).min(MAX_MULTIPLIER);
                self.ejections.inc();
                health.ejected_until = Some(Instant::now() + self.base * health.ejections);
                tracing::warn!(%endpoint, ejections = health.ejections, "endpoint ejected after consecutive failures");
                true
            }
        }
    }

    /// Whether `endpoint` is ejected now.
    pub fn is_ejected(&self, endpoint: SocketAddr) -> bool {
        self.lock()
            .get(&endpoint)
            .and_then(|h| h.ejected_until)
            .is_some_and(|until| Instant::now() < until)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Health>> {
        // Counters and times only; a panic elsewhere cannot leave them inconsistent.
        self.endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// The outcome an HTTP status tells.
pub fn of_status(status: u16) -> Outcome {
    if matches!(status, 502..=504) {
        Outcome::Failed
    } else {
        Outcome::Healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_failures_eject_and_success_resets() {
        let outliers = Outliers::new(3, Duration::from_secs(60));
        let endpoint: SocketAddr = "127.0.0.1:1".parse().expect("address");
        assert!(!outliers.report(endpoint, Outcome::Failed));
        assert!(!outliers.report(endpoint, Outcome::Failed));
        assert!(!outliers.report(endpoint, Outcome::Healthy));
        assert!(!outliers.report(endpoint, Outcome::Failed));
        assert!(!outliers.report(endpoint, Outcome::Failed));
        assert!(!outliers.is_ejected(endpoint));
        assert!(outliers.report(endpoint, Outcome::Failed));
        assert!(outliers.is_ejected(endpoint));
    }

    #[test]
    fn ejection_ends() {
        let outliers = Outliers::new(1, Duration::from_millis(1));
        let endpoint: SocketAddr = "127.0.0.1:1".parse().expect("address");
        assert!(outliers.report(endpoint, Outcome::Failed));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!outliers.is_ejected(endpoint));
    }
}
