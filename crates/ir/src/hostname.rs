//! Hostnames and hostname patterns as the Gateway API defines them.
//!
//! A hostname is a lowercase DNS name; a pattern may start with `*.` to match one or more
//! leading labels ("`*.example.com` matches `foo.example.com` and `foo.bar.example.com`, but
//! not `example.com`", HTTPRoute `hostnames` and Listener `hostname` docs).

use std::borrow::Borrow;
use std::fmt;
use std::sync::Arc;

use serde::{Serialize, Serializer};

/// A lowercase DNS name without a port.
///
/// Shared, not copied: one route hostname ends up in the route's attachments, in a candidate
/// per rule match and as the key of its listener's hostname index, and with thousands of
/// routes those copies were a measurable part of a config and of the time to build it.
/// Hashes and compares as the `str` it holds, so maps keyed by it are looked up by `&str`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Hostname(Arc<str>);

/// A hostname or a `*.`-prefixed wildcard.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(into = "String")]
pub enum HostnameMatch {
    /// Matches exactly this name.
    Exact(Hostname),
    /// Matches any name with at least one label before this suffix. Holds the suffix without
    /// the `*`, starting with a dot: `*.example.com` is stored as `.example.com`.
    Wildcard(Arc<str>),
}

// === impl Hostname ===

impl Hostname {
    /// Normalises a host as it arrives in a request: lowercase, without port or trailing dot.
    /// Returns `None` for an empty host.
    pub fn from_request_host(host: &str) -> Option<Self> {
        let host = strip_port(host);
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.is_empty() {
            return None;
        }
        Some(Self::new_unchecked(host))
    }

    /// Wraps a name that `model` already validated.
    pub fn new_unchecked(name: &str) -> Self {
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            Self(name.to_ascii_lowercase().into())
        } else {
            Self(name.into())
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Hostname {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl Serialize for Hostname {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl fmt::Display for Hostname {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

// === impl HostnameMatch ===

impl HostnameMatch {
    /// Parses a hostname or wildcard already validated against the Gateway API pattern.
    pub fn parse(value: &str) -> Self {
        match value.strip_prefix('*') {
            Some(suffix) => Self::Wildcard(suffix.to_ascii_lowercase().into()),
            None => Self::Exact(Hostname::new_unchecked(value)),
        }
    }

    /// Whether a (normalised) request host matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(name) => name.as_str() == host,
            Self::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(&**suffix),
        }
    }

    /// Orders patterns by how specific they are: exact names before wildcards, and among each,
    /// more characters first. Larger is more specific.
    pub fn specificity(&self) -> (u8, usize) {
        match self {
            Self::Exact(name) => (2, name.as_str().len()),
            Self::Wildcard(suffix) => (1, suffix.len()),
        }
    }

    /// The intersection of two patterns, as the spec defines for a route hostname against a
    /// listener hostname: the more specific of the two when one contains the other, or
    /// nothing when they are disjoint.
    pub fn intersect(&self, other: &Self) -> Option<Self> {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b)) => (a == b).then(|| self.clone()),
            (Self::Exact(name), wildcard @ Self::Wildcard(_))
            | (wildcard @ Self::Wildcard(_), Self::Exact(name)) => wildcard
                .matches(name.as_str())
                .then(|| Self::Exact(name.clone())),
            (Self::Wildcard(a), Self::Wildcard(b)) => {
                if a.ends_with(&**b) {
                    Some(self.clone())
                } else if b.ends_with(&**a) {
                    Some(other.clone())
                } else {
                    None
                }
            }
        }
    }
}

impl fmt::Display for HostnameMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exact(name) => f.write_str(name.as_str()),
            Self::Wildcard(suffix) => write!(f, "*{suffix}"),
        }
    }
}

impl From<HostnameMatch> for String {
    fn from(value: HostnameMatch) -> Self {
        value.to_string()
    }
}

/// Removes a `:port` suffix, keeping bracketed IPv6 literals intact.
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.find(']') {
            Some(end) => &host[..end + 2],
            None => host,
        };
    }
    match host.rfind(':') {
        Some(colon) if host[colon + 1..].bytes().all(|b| b.is_ascii_digit()) => &host[..colon],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_needs_at_least_one_label() {
        let pattern = HostnameMatch::parse("*.example.com");
        assert!(pattern.matches("foo.example.com"));
        assert!(pattern.matches("foo.bar.example.com"));
        assert!(!pattern.matches("example.com"));
        assert!(!pattern.matches("fooexample.com"));
    }

    #[test]
    fn request_host_drops_port_case_and_trailing_dot() {
        let host = Hostname::from_request_host("Foo.Example.com.:8080");
        assert_eq!(host.as_ref().map(Hostname::as_str), Some("foo.example.com"));
        let v6 = Hostname::from_request_host("[::1]:80");
        assert_eq!(v6.as_ref().map(Hostname::as_str), Some("[::1]"));
    }

    #[test]
    fn intersection_keeps_the_more_specific_side() {
        let exact = HostnameMatch::parse("very.specific.com");
        let wild = HostnameMatch::parse("*.specific.com");
        let wilder = HostnameMatch::parse("*.com");
        assert_eq!(exact.intersect(&wild), Some(exact.clone()));
        assert_eq!(wild.intersect(&wilder), Some(wild.clone()));
        assert_eq!(wilder.intersect(&wild), Some(wild.clone()));
        assert_eq!(exact.intersect(&HostnameMatch::parse("*.other.com")), None);
    }
}
