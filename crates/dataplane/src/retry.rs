//! Retries (`HTTPRouteRule.retry`, GEP-1731) and the budget that keeps them from multiplying
//! load during an outage.
//!
//! A request is retried only when its body fits the replay limit (it is buffered once and
//! sent again from memory); when the failure happened before the backend could have acted on
//! it (a refused or failed connection), or the connection broke after an idempotent request
//! was sent (a backend that died mid-request), or the response status is one of the rule's
//! `codes`; and when the budget has a token. A retry goes to an endpoint the request has not
//! failed on yet, where the backend has one. Every first attempt adds a fifth of a token and every
//! retry takes one, so retries stay near 20% of the request rate on top of a small reserve,
//! as Linkerd's and Envoy's budgets do; an outage then costs at most that much extra load.

use std::sync::{Mutex, PoisonError};

/// Tokens added by each first attempt.
const DEPOSIT: f64 = 0.2;
/// Tokens the budget starts with and never exceeds the reserve plus this.
const RESERVE: f64 = 10.0;
const CAP: f64 = 100.0;

/// The retry budget shared by every request of a data plane.
pub struct Budget {
    tokens: Mutex<f64>,
}

impl Default for Budget {
    fn default() -> Self {
        Self {
            tokens: Mutex::new(RESERVE),
        }
    }
}

impl Budget {
    /// Records a first attempt.
    pub fn deposit(&self) {
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        *tokens = (*tokens + DEPOSIT).min(CAP);
    }

    /// Takes a token for one retry; `false` when the budget is spent.
    pub fn withdraw(&self) -> bool {
        let mut tokens = self.tokens.lock().unwrap_or_else(PoisonError::into_inner);
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_bounded_by_a_fifth_of_the_requests_plus_the_reserve() {
        let budget = Budget::default();
        let mut retries = 0;
        for _ in 0..1000 {
            budget.deposit();
            // Every request fails and wants as many retries as it can get.
            while budget.withdraw() {
                retries += 1;
            }
        }
        // 10 in reserve plus 1000 × 0.2.
        assert!((209..=210).contains(&retries), "{retries} retries");
    }
}
