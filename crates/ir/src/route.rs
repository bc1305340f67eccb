//! Compiled HTTP routes and route selection with the Gateway API's precedence.
//!
//! Precedence, from the HTTPRoute spec (`HTTPRouteRule.matches` and `HTTPRouteSpec.hostnames`):
//!
//! 1. Hostname first: "precedence must be given to rules from the HTTPRoute with the largest
//!    number of: characters in a matching non-wildcard hostname; characters in a matching
//!    hostname". A route with an exact hostname wins over a wildcard one, a longer wildcard
//!    over a shorter one, and routes without hostnames come last. When nothing in a more
//!    specific hostname group matches the request, the next group is tried.
//! 2. Within a hostname group, "across all rules specified on applicable Routes, precedence
//!    must be given to the match having: Exact path match; Prefix path match with largest
//!    number of characters; Method match; Largest number of header matches; Largest number of
//!    query param matches." The spec leaves RegularExpression paths to the implementation: we
//!    rank them after Exact and before every PathPrefix, longer patterns first, as Envoy
//!    Gateway does.
//! 3. Ties: "the oldest Route based on creation timestamp", then "alphabetical order by
//!    {namespace}/{name}", then the first matching rule in list order (and within a rule the
//!    first match). Translate passes the route's position in that order as
//!    [`Candidate::route_rank`].

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use foldhash::fast::RandomState;
use http::{HeaderMap, HeaderName, Method};
use regex::Regex;
use serde::{Serialize, Serializer};

use crate::backend::WeightedBackend;
use crate::filter::{Redirect, RequestFilters};
use crate::hostname::{Hostname, HostnameMatch};

/// Which kind of route a rule came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum RouteKind {
    /// `HTTPRoute`.
    #[serde(rename = "HTTPRoute")]
    Http,
    /// `GRPCRoute`.
    #[serde(rename = "GRPCRoute")]
    Grpc,
    /// `TLSRoute`.
    #[serde(rename = "TLSRoute")]
    Tls,
    /// `TCPRoute`.
    #[serde(rename = "TCPRoute")]
    Tcp,
}

/// Identifies a rule for logs, metrics and `explain`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct RouteId {
    /// The route kind.
    pub kind: RouteKind,
    /// Route namespace (shared by the route's rules, and cloned into each request's metric
    /// labels without allocating).
    pub namespace: Arc<str>,
    /// Route name.
    pub name: Arc<str>,
    /// Index of the rule in `spec.rules`.
    pub rule: usize,
    /// The rule's `name`, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_name: Option<String>,
}

/// A compiled rule: filters plus what to do with a matching request.
#[derive(Clone, Debug, Serialize)]
pub struct Rule {
    /// Where the rule came from.
    pub id: RouteId,
    /// Filters other than redirects.
    pub filters: RequestFilters,
    /// Forward, redirect, or fail.
    pub action: Action,
    /// `timeouts`.
    pub timeouts: Timeouts,
    /// `retry` (experimental channel): how a failed backend request is tried again. Boxed,
    /// as is a redirect: few rules have one, and a config holds a rule per route rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry: Option<Box<Retry>>,
    /// Authentication and rate limits from our policies.
    #[serde(skip_serializing_if = "crate::RulePolicies::is_empty")]
    pub policies: crate::RulePolicies,
}

/// What a rule does with a request.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Action {
    /// Pick one backend by weight and forward.
    Forward(Vec<WeightedBackend>),
    /// Answer with a redirect.
    Redirect(Box<Redirect>),
    /// The rule cannot be served (for example an unsupported filter); every matching request
    /// gets 500, as the spec requires for invalid rules.
    Invalid(String),
}

/// `HTTPRouteRule.timeouts`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    /// `request`: from the moment the request is received until the response is complete.
    pub request: Option<Duration>,
    /// `backendRequest`: one attempt towards a backend.
    pub backend_request: Option<Duration>,
}

/// `HTTPRouteRule.retry` (GEP-1731).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Retry {
    /// Retries after the first attempt.
    pub attempts: u32,
    /// The least time between two attempts.
    pub backoff: Duration,
    /// Response statuses that are retried; failures to connect are always retried.
    pub codes: Vec<u16>,
}

/// One `HTTPRouteMatch`: all of its conditions must hold.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HttpMatch {
    /// The path condition (the spec's default is `PathPrefix /`).
    pub path: PathMatch,
    /// The method, if constrained.
    #[serde(serialize_with = "serialize_method")]
    pub method: Option<Method>,
    /// Header conditions.
    pub headers: Vec<HeaderMatch>,
    /// Query parameter conditions.
    pub query_params: Vec<QueryMatch>,
}

/// A path condition.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum PathMatch {
    /// The whole path equals the value.
    Exact(String),
    /// The path starts with these path elements. Stored without a trailing slash, so `/`
    /// is stored as the empty string.
    Prefix(String),
    /// The whole path matches the expression.
    Regex(#[serde(serialize_with = "serialize_regex")] Regex),
}

/// A header condition; names compare case-insensitively.
#[derive(Clone, Debug, Serialize)]
pub struct HeaderMatch {
    /// Header name.
    #[serde(serialize_with = "serialize_header_name")]
    pub name: HeaderName,
    /// The value condition.
    pub value: StringMatch,
}

/// A query parameter condition; names compare exactly.
#[derive(Clone, Debug, Serialize)]
pub struct QueryMatch {
    /// Parameter name.
    pub name: String,
    /// The value condition.
    pub value: StringMatch,
}

/// A value condition.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum StringMatch {
    /// Equal, byte for byte.
    Exact(String),
    /// Matches the whole value.
    Regex(#[serde(serialize_with = "serialize_regex")] Regex),
}

/// The parts of a request that route selection looks at.
#[derive(Clone, Copy, Debug)]
pub struct HttpRequestParts<'a> {
    /// Normalised host (lowercase, no port).
    pub host: &'a str,
    /// The path, without the query.
    pub path: &'a str,
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    /// The method.
    pub method: &'a Method,
    /// The headers.
    pub headers: &'a HeaderMap,
}

/// A route match waiting to be compiled into a [`RouteTable`].
#[derive(Clone, Debug)]
pub struct Candidate {
    /// The route hostname after intersection with the listener's, `None` for any host.
    pub hostname: Option<HostnameMatch>,
    /// The match.
    pub matcher: HttpMatch,
    /// The rule it selects.
    pub rule: Arc<Rule>,
    /// Position of the route in (creation timestamp, namespace/name) order.
    pub route_rank: usize,
    /// Index of the match within the rule.
    pub match_index: usize,
}

/// The result of route selection.
#[derive(Clone, Copy, Debug)]
pub struct Selected<'a> {
    /// The rule to apply.
    pub rule: &'a Arc<Rule>,
    /// The match that selected it.
    pub matcher: &'a HttpMatch,
}

/// Every route match of one listener, grouped by hostname and sorted by precedence.
///
/// Its maps hash with foldhash rather than SipHash: their keys come from the config, so a
/// client cannot fill them with colliding names, and every request looks its host and path
/// up.
#[derive(Clone, Debug, Default)]
pub struct RouteTable {
    entries: Vec<Candidate>,
    /// Keyed by the candidates' own (shared) hostnames, looked up by the request's host.
    exact: HashMap<Hostname, Group, RandomState>,
    /// Wildcard groups, most specific first.
    wildcards: Vec<(HostnameMatch, Group)>,
    any: Group,
}

/// The matches of one hostname group, in precedence order. Exact-path matches outrank every
/// other path match, so they are indexed by path: a request first looks up its own path,
/// then scans the remaining matches.
///
/// A table has a group per exact hostname, most of which have no exact-path matches: the
/// path index is boxed so that those groups (and the hostname index's slots) stay small.
#[derive(Clone, Debug, Default)]
struct Group {
    #[expect(
        clippy::box_collection,
        reason = "the box keeps an empty index one word wide instead of five"
    )]
    exact_paths: Option<Box<HashMap<String, Vec<usize>, RandomState>>>,
    others: Vec<usize>,
}

// === impl RouteTable ===

impl RouteTable {
    /// Compiles candidates into a table.
    pub fn new(mut entries: Vec<Candidate>) -> Self {
        entries.sort_by_key(precedence_key);
        // Sized for the worst case (every entry its own hostname) and trimmed after: growing
        // rehashed every hostname several times (with the hashing, a tenth of translating
        // 5,000 routes).
        let mut exact: HashMap<Hostname, Group, RandomState> =
            HashMap::with_capacity_and_hasher(entries.len(), RandomState::default());
        let mut wildcards: HashMap<HostnameMatch, Group> = HashMap::new();
        let mut any = Group::default();
        for (index, entry) in entries.iter().enumerate() {
            let group = match &entry.hostname {
                Some(HostnameMatch::Exact(name)) => exact.entry(name.clone()).or_default(),
                Some(wildcard @ HostnameMatch::Wildcard(_)) => {
                    wildcards.entry(wildcard.clone()).or_default()
                }
                None => &mut any,
            };
            group.push(index, &entry.matcher.path);
        }
        exact.shrink_to_fit();
        let mut wildcards: Vec<_> = wildcards.into_iter().collect();
        wildcards
            .sort_by(|(a, _), (b, _)| b.specificity().cmp(&a.specificity()).then_with(|| a.cmp(b)));
        Self {
            entries,
            exact,
            wildcards,
            any,
        }
    }

    /// Selects the rule for a request, or `None` (404).
    pub fn select<'a>(&'a self, request: &HttpRequestParts<'_>) -> Option<Selected<'a>> {
        let exact = self.exact.get(request.host).into_iter();
        let wildcards = self
            .wildcards
            .iter()
            .filter(|(pattern, _)| pattern.matches(request.host))
            .map(|(_, group)| group);
        exact
            .chain(wildcards)
            .chain(std::iter::once(&self.any))
            .find_map(|group| self.first_match(group, request))
    }

    /// The number of compiled matches.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no routes.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The compiled matches in precedence order, for `explain` and `/config`.
    pub fn candidates(&self) -> &[Candidate] {
        &self.entries
    }

    fn first_match<'a>(
        &'a self,
        group: &Group,
        request: &HttpRequestParts<'_>,
    ) -> Option<Selected<'a>> {
        let exact = group
            .exact_paths
            .as_ref()
            .and_then(|paths| paths.get(request.path))
            .into_iter()
            .flatten();
        exact.chain(&group.others).find_map(|&index| {
            let entry = &self.entries[index];
            entry.matcher.matches(request).then_some(Selected {
                rule: &entry.rule,
                matcher: &entry.matcher,
            })
        })
    }
}

impl Group {
    /// Adds an entry; entries arrive in precedence order, so each list stays sorted.
    fn push(&mut self, index: usize, path: &PathMatch) {
        match path {
            PathMatch::Exact(value) => self
                .exact_paths
                .get_or_insert_default()
                .entry(value.clone())
                .or_default()
                .push(index),
            _ => self.others.push(index),
        }
    }
}

impl Serialize for RouteTable {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.entries.iter().map(|entry| CandidateView {
            hostname: entry.hostname.as_ref().map(ToString::to_string),
            matcher: &entry.matcher,
            rule: &entry.rule,
        }))
    }
}

#[derive(Serialize)]
struct CandidateView<'a> {
    hostname: Option<String>,
    #[serde(rename = "match")]
    matcher: &'a HttpMatch,
    rule: &'a Rule,
}

// === impl HttpMatch ===

impl HttpMatch {
    /// Whether every condition holds for the request.
    pub fn matches(&self, request: &HttpRequestParts<'_>) -> bool {
        self.path.matches(request.path)
            && self.method.as_ref().is_none_or(|m| m == request.method)
            && self.headers.iter().all(|h| h.matches(request.headers))
            && self.query_params.iter().all(|q| q.matches(request.query))
    }

    /// The `PathPrefix` value when this match is a prefix match, for `ReplacePrefixMatch`.
    pub fn matched_prefix(&self) -> Option<&str> {
        match &self.path {
            PathMatch::Prefix(prefix) => Some(prefix),
            _ => None,
        }
    }
}

// === impl PathMatch ===

impl PathMatch {
    /// Builds a prefix match, normalising the trailing slash away ("when specified, a
    /// trailing `/` is ignored").
    pub fn prefix(value: &str) -> Self {
        Self::Prefix(value.trim_end_matches('/').to_string())
    }

    /// Whether the path (without query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(value) => path == value,
            // "Matching is case-sensitive and done on a path element by element basis": the
            // prefix must end at a `/` boundary of the request path.
            Self::Prefix(prefix) => {
                path.starts_with(prefix.as_str())
                    && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
            }
            Self::Regex(regex) => regex.is_match(path),
        }
    }

    fn rank(&self) -> (u8, usize) {
        match self {
            Self::Exact(value) => (3, value.len()),
            Self::Regex(regex) => (2, regex.as_str().len()),
            Self::Prefix(prefix) => (1, prefix.len()),
        }
    }
}

impl Default for PathMatch {
    fn default() -> Self {
        Self::Prefix(String::new())
    }
}

// === impl HeaderMatch, QueryMatch, StringMatch ===

impl HeaderMatch {
    fn matches(&self, headers: &HeaderMap) -> bool {
        headers
            .get_all(&self.name)
            .iter()
            .any(|value| value.to_str().is_ok_and(|v| self.value.matches(v)))
    }
}

impl QueryMatch {
    /// "If a query param is repeated in an HTTP request, the behavior is purposely left
    /// undefined": we look at the first occurrence.
    fn matches(&self, query: Option<&str>) -> bool {
        let Some(query) = query else { return false };
        query
            .split('&')
            .filter_map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (name == self.name).then_some(value)
            })
            .next()
            .is_some_and(|value| self.value.matches(value))
    }
}

impl StringMatch {
    /// Whether the value matches.
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Self::Exact(expected) => expected == value,
            Self::Regex(regex) => regex.is_match(value),
        }
    }
}

/// Sort key: more specific first, then route order, then rule and match order.
type PrecedenceKey = (
    Reverse<(u8, usize)>,
    Reverse<bool>,
    Reverse<usize>,
    Reverse<usize>,
    usize,
    usize,
    usize,
);

fn precedence_key(entry: &Candidate) -> PrecedenceKey {
    let m = &entry.matcher;
    (
        Reverse(m.path.rank()),
        Reverse(m.method.is_some()),
        Reverse(m.headers.len()),
        Reverse(m.query_params.len()),
        entry.route_rank,
        entry.rule.id.rule,
        entry.match_index,
    )
}

fn serialize_regex<S: Serializer>(regex: &Regex, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(regex.as_str())
}

fn serialize_method<S: Serializer>(
    method: &Option<Method>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match method {
        Some(method) => serializer.serialize_some(method.as_str()),
        None => serializer.serialize_none(),
    }
}

fn serialize_header_name<S: Serializer>(
    name: &HeaderName,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(name.as_str())
}

#[cfg(test)]
mod tests;
