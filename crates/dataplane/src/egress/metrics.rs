//! Counting egress decisions, labelled the way Linkerd labels routes: the parent (the
//! EgressNetwork), the route (an attached route's `namespace/name`, or the implicit route of
//! the traffic policy, such as `tls-egress-deny`), the hostname and the verdict.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use ir::{EgressNetwork, Protocol};

/// Distinct label sets kept before new hostnames are counted as `other`: hostnames come
/// from clients (SNI, `Host`), and a client must not be able to grow the metrics without
/// bound.
const MAX_KEYS: usize = 1024;

/// Allowed or denied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Verdict {
    /// Sent on.
    Allow,
    /// Refused.
    Deny,
}

/// One decision, as the deciding code sees it.
pub struct Decision<'a> {
    /// The network the traffic belongs to; `None`: unclassified.
    pub network: Option<&'a EgressNetwork>,
    /// HTTP, TLS or other traffic.
    pub protocol: Protocol,
    /// The attached route that decided, as `namespace/name`; `None`: the traffic policy.
    pub route: Option<String>,
    /// The SNI or `Host`, when there was one.
    pub hostname: Option<&'a str>,
    /// The verdict.
    pub verdict: Verdict,
}

/// The labels of one counter.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DecisionKey {
    /// EgressNetwork `namespace/name`; empty for unclassified traffic.
    pub network: String,
    /// `http`, `tls` or `tcp`.
    pub protocol: &'static str,
    /// The deciding route.
    pub route: String,
    /// The hostname, `-` when there was none, `other` past the label limit.
    pub hostname: String,
    /// The verdict.
    pub verdict: Verdict,
}

/// Decision counters, shared by every connection.
#[derive(Default)]
pub struct Decisions {
    counts: Mutex<BTreeMap<DecisionKey, u64>>,
}

impl Decisions {
    /// Counts one decision.
    pub fn record(&self, decision: Decision<'_>) {
        let route = match (&decision.route, decision.network) {
            (Some(route), _) => route.clone(),
            (None, Some(network)) => network.policy.implicit_route(decision.protocol).to_string(),
            (None, None) => "unclassified".to_string(),
        };
        let mut key = DecisionKey {
            network: decision
                .network
                .map(EgressNetwork::full_name)
                .unwrap_or_default(),
            protocol: match decision.protocol {
                Protocol::Http => "http",
                Protocol::Tls => "tls",
                Protocol::Tcp => "tcp",
            },
            route,
            hostname: decision.hostname.unwrap_or("-").to_string(),
            verdict: decision.verdict,
        };
        // Counters only; a panic elsewhere cannot leave them inconsistent.
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if counts.len() >= MAX_KEYS && !counts.contains_key(&key) {
            key.hostname = "other".to_string();
        }
        *counts.entry(key).or_default() += 1;
    }

    /// Every counter so far.
    pub fn snapshot(&self) -> Vec<(DecisionKey, u64)> {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}
