use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, Method};
use proptest::prelude::*;

use super::*;
use crate::HostnameMatch;

fn rule(name: &str, index: usize) -> Arc<Rule> {
    Arc::new(Rule {
        id: RouteId {
            kind: RouteKind::Http,
            namespace: "default".into(),
            name: name.into(),
            rule: index,
            rule_name: None,
        },
        filters: RequestFilters::default(),
        action: Action::Invalid("test".into()),
        timeouts: Timeouts::default(),
        retry: None,
        policies: Default::default(),
    })
}

fn candidate(route: &str, rank: usize, hostname: Option<&str>, matcher: HttpMatch) -> Candidate {
    Candidate {
        hostname: hostname.map(HostnameMatch::parse),
        matcher,
        rule: rule(route, 0),
        route_rank: rank,
        match_index: 0,
    }
}

fn path(p: PathMatch) -> HttpMatch {
    HttpMatch {
        path: p,
        ..HttpMatch::default()
    }
}

fn select<'a>(
    table: &'a RouteTable,
    host: &str,
    target: &str,
    headers: &HeaderMap,
) -> Option<&'a str> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let request = HttpRequestParts {
        host,
        path,
        query,
        method: &Method::GET,
        headers,
    };
    table.select(&request).map(|s| &*s.rule.id.name)
}

#[test]
fn exact_path_beats_longer_prefix() {
    let table = RouteTable::new(vec![
        candidate("prefix", 0, None, path(PathMatch::prefix("/foo/bar"))),
        candidate("exact", 1, None, path(PathMatch::Exact("/foo".into()))),
    ]);
    let headers = HeaderMap::new();
    assert_eq!(select(&table, "a", "/foo", &headers), Some("exact"));
    assert_eq!(
        select(&table, "a", "/foo/bar/baz", &headers),
        Some("prefix")
    );
    assert_eq!(select(&table, "a", "/foobar", &headers), None);
}

#[test]
fn longest_prefix_wins() {
    let table = RouteTable::new(vec![
        candidate("short", 0, None, path(PathMatch::prefix("/"))),
        candidate("long", 1, None, path(PathMatch::prefix("/v2/"))),
    ]);
    let headers = HeaderMap::new();
    assert_eq!(select(&table, "a", "/v2", &headers), Some("long"));
    assert_eq!(select(&table, "a", "/v2/x", &headers), Some("long"));
    assert_eq!(select(&table, "a", "/v2x", &headers), Some("short"));
}

#[test]
fn more_header_matches_win_then_older_route() {
    let version = HeaderMatch {
        name: HeaderName::from_static("version"),
        value: StringMatch::Exact("two".into()),
    };
    let color = HeaderMatch {
        name: HeaderName::from_static("color"),
        value: StringMatch::Exact("blue".into()),
    };
    let one = HttpMatch {
        headers: vec![version.clone()],
        ..HttpMatch::default()
    };
    let two = HttpMatch {
        headers: vec![version, color],
        ..HttpMatch::default()
    };
    let table = RouteTable::new(vec![
        candidate("one-header-newer", 1, None, one.clone()),
        candidate("one-header-older", 0, None, one),
        candidate("two-headers", 2, None, two),
    ]);
    let mut headers = HeaderMap::new();
    headers.insert("version", HeaderValue::from_static("two"));
    assert_eq!(select(&table, "a", "/", &headers), Some("one-header-older"));
    headers.insert("color", HeaderValue::from_static("blue"));
    assert_eq!(select(&table, "a", "/", &headers), Some("two-headers"));
}

#[test]
fn exact_hostname_group_falls_through_to_wildcard_then_any() {
    let table = RouteTable::new(vec![
        candidate("any", 0, None, path(PathMatch::prefix("/"))),
        candidate(
            "wild",
            1,
            Some("*.example.com"),
            path(PathMatch::prefix("/w")),
        ),
        candidate(
            "exact",
            2,
            Some("foo.example.com"),
            path(PathMatch::prefix("/e")),
        ),
    ]);
    let headers = HeaderMap::new();
    assert_eq!(
        select(&table, "foo.example.com", "/e", &headers),
        Some("exact")
    );
    assert_eq!(
        select(&table, "foo.example.com", "/w", &headers),
        Some("wild")
    );
    assert_eq!(
        select(&table, "foo.example.com", "/x", &headers),
        Some("any")
    );
    assert_eq!(
        select(&table, "bar.example.com", "/e", &headers),
        Some("any")
    );
}

#[test]
fn query_param_uses_first_occurrence() {
    let m = HttpMatch {
        query_params: vec![QueryMatch {
            name: "animal".into(),
            value: StringMatch::Exact("whale".into()),
        }],
        ..HttpMatch::default()
    };
    let table = RouteTable::new(vec![candidate("q", 0, None, m)]);
    let headers = HeaderMap::new();
    assert_eq!(select(&table, "a", "/?animal=whale", &headers), Some("q"));
    assert_eq!(
        select(&table, "a", "/?x=1&animal=whale", &headers),
        Some("q")
    );
    assert_eq!(
        select(&table, "a", "/?animal=dolphin&animal=whale", &headers),
        None
    );
    assert_eq!(select(&table, "a", "/", &headers), None);
}

fn arb_prefix() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 0..4)
        .prop_map(|parts| format!("/{}", parts.join("/")))
}

proptest! {
    /// Whatever the order routes are declared in, the selected rule is a matching one with
    /// the longest prefix among all matching candidates.
    #[test]
    fn selection_is_the_longest_matching_prefix(
        prefixes in prop::collection::vec(arb_prefix(), 1..12),
        request in arb_prefix(),
    ) {
        let candidates: Vec<_> = prefixes
            .iter()
            .enumerate()
            .map(|(i, p)| candidate(&format!("r{i}"), i, None, path(PathMatch::prefix(p))))
            .collect();
        let table = RouteTable::new(candidates.clone());
        let headers = HeaderMap::new();
        let chosen = select(&table, "h", &request, &headers);
        let best = candidates
            .iter()
            .filter(|c| c.matcher.path.matches(&request))
            .map(|c| match &c.matcher.path { PathMatch::Prefix(p) => p.len(), _ => 0 })
            .max();
        match (chosen, best) {
            (None, None) => {}
            (Some(name), Some(len)) => {
                let chosen = candidates.iter().find(|c| &*c.rule.id.name == name).map(|c| &c.matcher.path);
                let chosen_len = match chosen { Some(PathMatch::Prefix(p)) => p.len(), _ => usize::MAX };
                prop_assert_eq!(chosen_len, len);
            }
            other => prop_assert!(false, "mismatch {:?}", other),
        }
    }
}

fn arb_candidate() -> impl Strategy<Value = (Option<&'static str>, bool, String, bool)> {
    (
        prop::sample::select(vec![
            None,
            Some("a.example.com"),
            Some("*.example.com"),
            Some("*.a.example.com"),
        ]),
        any::<bool>(),
        arb_prefix(),
        any::<bool>(),
    )
}

proptest! {
    /// The indexed table agrees with a naive scan: hostname groups from most to least
    /// specific, and within a group the first matching candidate in precedence order.
    #[test]
    fn table_agrees_with_a_naive_scan(
        specs in prop::collection::vec(arb_candidate(), 1..16),
        host in prop::sample::select(vec!["a.example.com", "b.example.com", "x.a.example.com", "other.org"]),
        request in arb_prefix(),
        post in any::<bool>(),
    ) {
        let candidates: Vec<_> = specs
            .iter()
            .enumerate()
            .map(|(i, (hostname, exact, p, method))| {
                let path = if *exact { PathMatch::Exact(p.clone()) } else { PathMatch::prefix(p) };
                let matcher = HttpMatch {
                    path,
                    method: method.then_some(Method::POST),
                    ..HttpMatch::default()
                };
                candidate(&format!("r{i}"), i, *hostname, matcher)
            })
            .collect();
        let table = RouteTable::new(candidates.clone());
        let headers = HeaderMap::new();
        let method = if post { Method::POST } else { Method::GET };
        let parts = HttpRequestParts { host, path: &request, query: None, method: &method, headers: &headers };
        let chosen = table.select(&parts).map(|s| s.rule.id.name.clone());

        let mut naive: Vec<_> = candidates
            .iter()
            .filter(|c| c.hostname.as_ref().is_none_or(|h| h.matches(host)))
            .filter(|c| c.matcher.matches(&parts))
            .collect();
        naive.sort_by_key(|c| {
            let group = c.hostname.as_ref().map_or((0, 0), HostnameMatch::specificity);
            (std::cmp::Reverse(group), precedence_key(c))
        });
        prop_assert_eq!(chosen, naive.first().map(|c| c.rule.id.name.clone()));
    }
}
