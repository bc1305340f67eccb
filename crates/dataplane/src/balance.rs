//! Choosing an endpoint of a backend: power of two choices over peak-EWMA latency (Linkerd's
//! and Finagle's default), or plain round robin (`--load-balancer round-robin`).
//!
//! Each endpoint keeps an estimate of its response time (time to response headers) that
//! jumps up to any slower observation at once ("peak") and otherwise decays towards recent
//! observations, and towards zero while the endpoint is not used, so a slow endpoint is
//! tried again after a while. Its cost is that estimate times the requests in flight to it
//! plus one. Two healthy endpoints are drawn at random and the cheaper one is used: the
//! load follows the faster endpoints without sending everything to one of them.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How fast an estimate forgets: after this long, an observation weighs 1/e.
const DECAY: Duration = Duration::from_secs(10);
/// What a failed attempt (no answer: refused, reset, timed out) counts as: an endpoint that
/// fails is avoided until this decays, well before passive health would eject it.
const FAILURE_PENALTY: f64 = 1.0;
/// Endpoints tracked before the table is reset (endpoints come and go with reloads).
const MAX_ENDPOINTS: usize = 10_000;

/// The load balancing algorithm.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Algorithm {
    /// Power of two choices over peak-EWMA latency and requests in flight.
    #[default]
    PeakEwma,
    /// Each endpoint in turn.
    RoundRobin,
}

/// The load of every endpoint seen.
#[derive(Default)]
pub(crate) struct Loads {
    endpoints: Mutex<HashMap<SocketAddr, Arc<Load>>>,
}

/// One endpoint's load.
pub(crate) struct Load {
    in_flight: AtomicU32,
    estimate: Mutex<Estimate>,
}

#[derive(Clone, Copy)]
struct Estimate {
    /// Seconds.
    value: f64,
    updated: Instant,
}

/// Counts a request in flight until dropped, then records its response time.
pub(crate) struct InFlight {
    load: Arc<Load>,
    started: Instant,
    /// What the attempt counts as, once it ended: its time, a failure, or nothing.
    outcome: Outcome,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Pending,
    Answered,
    Failed,
}

impl Loads {
    fn get(&self, endpoint: SocketAddr) -> Arc<Load> {
        let mut endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if endpoints.len() >= MAX_ENDPOINTS && !endpoints.contains_key(&endpoint) {
            endpoints.clear();
        }
        Arc::clone(endpoints.entry(endpoint).or_insert_with(|| {
            Arc::new(Load {
                in_flight: AtomicU32::new(0),
                estimate: Mutex::new(Estimate {
                    value: 0.0,
                    updated: Instant::now(),
                }),
            })
        }))
    }

    /// The cheaper of two candidates drawn at random from `candidates` (all of them when
    /// there are one or two).
    pub(crate) fn choose(&self, candidates: &[SocketAddr]) -> Option<SocketAddr> {
        match candidates {
            [] => None,
            [only] => Some(*only),
            _ => {
                let first = rand::random_range(0..candidates.len());
                let mut second = rand::random_range(0..candidates.len() - 1);
                if second >= first {
                    second += 1;
                }
                let now = Instant::now();
                let (a, b) = (candidates[first], candidates[second]);
                if self.get(b).cost(now) < self.get(a).cost(now) {
                    Some(b)
                } else {
                    Some(a)
                }
            }
        }
    }

    /// Starts a request to `endpoint`; the guard records it when it ends.
    pub(crate) fn start(&self, endpoint: SocketAddr) -> InFlight {
        let load = self.get(endpoint);
        load.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            load,
            started: Instant::now(),
            outcome: Outcome::Pending,
        }
    }
}

impl Load {
    fn cost(&self, now: Instant) -> f64 {
        let estimate = *self.estimate.lock().unwrap_or_else(PoisonError::into_inner);
        let pending = f64::from(self.in_flight.load(Ordering::Relaxed));
        estimate.decayed(now) * (pending + 1.0)
    }
}

impl Estimate {
    fn decayed(self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.value * (-elapsed / DECAY.as_secs_f64()).exp()
    }

    fn observe(&mut self, rtt: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        let weight = (-elapsed / DECAY.as_secs_f64()).exp();
        self.value = if rtt > self.value {
            rtt
        } else {
            self.value * weight + rtt * (1.0 - weight)
        };
        self.updated = now;
    }
}

impl InFlight {
    /// The response headers arrived: its time counts in the estimate.
    pub(crate) fn answered(mut self) {
        self.outcome = Outcome::Answered;
    }

    /// No answer came: the endpoint counts as very slow for a while.
    pub(crate) fn failed(mut self) {
        self.outcome = Outcome::Failed;
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.load.in_flight.fetch_sub(1, Ordering::Relaxed);
        let now = Instant::now();
        let rtt = match self.outcome {
            Outcome::Pending => None,
            Outcome::Answered => Some(now.duration_since(self.started).as_secs_f64()),
            Outcome::Failed => Some(FAILURE_PENALTY),
        };
        if let Some(rtt) = rtt {
            self.load
                .estimate
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .observe(rtt, now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_jumps_to_peaks_and_decays() {
        let start = Instant::now();
        let mut estimate = Estimate {
            value: 0.010,
            updated: start,
        };
        estimate.observe(0.100, start);
        assert!(
            (estimate.value - 0.100).abs() < 1e-9,
            "a slower answer counts at once"
        );
        let later = start + DECAY;
        assert!((estimate.decayed(later) - 0.100 / std::f64::consts::E).abs() < 1e-6);
        estimate.observe(0.001, later);
        assert!(estimate.value < 0.100 && estimate.value > 0.001);
    }

    #[test]
    fn the_cheaper_endpoint_is_chosen_from_two() {
        let loads = Loads::default();
        let (slow, fast): (SocketAddr, SocketAddr) =
            (([127, 0, 0, 1], 1).into(), ([127, 0, 0, 1], 2).into());
        loads.get(slow).estimate.lock().expect("lock").value = 0.050;
        loads.get(fast).estimate.lock().expect("lock").value = 0.001;
        assert!((0..100).all(|_| loads.choose(&[slow, fast]) == Some(fast)));
        // Requests in flight make the fast one dearer.
        let guards: Vec<_> = (0..100).map(|_| loads.start(fast)).collect();
        assert_eq!(loads.choose(&[slow, fast]), Some(slow));
        drop(guards);
    }

    #[test]
    fn two_distinct_candidates_are_drawn_from_many() {
        let loads = Loads::default();
        let endpoints: Vec<SocketAddr> = (1..=5).map(|p| ([127, 0, 0, 1], p).into()).collect();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..1000 {
            seen.extend(loads.choose(&endpoints));
        }
        assert_eq!(
            seen.len(),
            5,
            "every endpoint gets chosen when all cost the same"
        );
    }
}
