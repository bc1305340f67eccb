//! Route selection cost as the number of routes on one listener grows.
//!
//! Each route has its own exact hostname and two rules (an exact path with a header match,
//! and a path prefix), the shape of a multi-tenant ingress. Lookups go to a hostname in the
//! middle of the table, a path that falls through to the prefix rule, and a host that only the
//! catch-all route matches.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use ir::{
    Action, Candidate, HeaderMatch, HostnameMatch, HttpMatch, HttpRequestParts, PathMatch,
    RequestFilters, RouteId, RouteKind, RouteTable, Rule, StringMatch, Timeouts,
};

fn table(routes: usize) -> RouteTable {
    table_with_hosts(routes, |r| format!("host-{r}.example.com"))
}

/// Every route on one hostname: the worst case, where selection scans the matches in
/// precedence order.
fn shared_host_table(routes: usize) -> RouteTable {
    table_with_hosts(routes, |_| "shared.example.com".to_string())
}

fn table_with_hosts(routes: usize, host: impl Fn(usize) -> String) -> RouteTable {
    let mut candidates = Vec::new();
    for r in 0..routes {
        for (index, matcher) in [
            HttpMatch {
                path: PathMatch::Exact(format!("/api/v1/items/{r}")),
                headers: vec![HeaderMatch {
                    name: HeaderName::from_static("x-tenant"),
                    value: StringMatch::Exact(format!("t{r}")),
                }],
                ..HttpMatch::default()
            },
            HttpMatch {
                path: PathMatch::prefix("/static"),
                ..HttpMatch::default()
            },
        ]
        .into_iter()
        .enumerate()
        {
            candidates.push(Candidate {
                hostname: Some(HostnameMatch::parse(&host(r))),
                matcher,
                rule: Arc::new(Rule {
                    id: RouteId {
                        kind: RouteKind::Http,
                        namespace: "bench".into(),
                        name: format!("route-{r}").into(),
                        rule: index,
                        rule_name: None,
                    },
                    filters: RequestFilters::default(),
                    action: Action::Invalid("bench".into()),
                    timeouts: Timeouts::default(),
                    retry: None,
                    policies: Default::default(),
                }),
                route_rank: r,
                match_index: 0,
            });
        }
    }
    candidates.push(Candidate {
        hostname: None,
        matcher: HttpMatch::default(),
        rule: Arc::new(Rule {
            id: RouteId {
                kind: RouteKind::Http,
                namespace: "bench".into(),
                name: "catch-all".into(),
                rule: 0,
                rule_name: None,
            },
            filters: RequestFilters::default(),
            action: Action::Invalid("bench".into()),
            timeouts: Timeouts::default(),
            retry: None,
            policies: Default::default(),
        }),
        route_rank: routes,
        match_index: 0,
    });
    RouteTable::new(candidates)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_selection");
    for routes in [10usize, 1_000, 10_000] {
        let table = table(routes);
        let middle = routes / 2;
        let host = format!("host-{middle}.example.com");
        let exact_path = format!("/api/v1/items/{middle}");
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-tenant",
            HeaderValue::from_str(&format!("t{middle}")).expect("ascii"),
        );
        let cases = [
            ("exact_with_header", host.as_str(), exact_path.as_str()),
            ("prefix_fallthrough", host.as_str(), "/static/app.js"),
            ("catch_all", "unknown.example.org", "/"),
        ];
        for (name, host, path) in cases {
            group.bench_with_input(BenchmarkId::new(name, routes), &routes, |b, _| {
                b.iter(|| {
                    let request = HttpRequestParts {
                        host,
                        path,
                        query: None,
                        method: &Method::GET,
                        headers: &headers,
                    };
                    black_box(table.select(black_box(&request)).map(|s| s.rule.id.rule))
                });
            });
        }
    }
    for routes in [10usize, 1_000, 10_000] {
        let table = shared_host_table(routes);
        let last = routes - 1;
        let path = format!("/api/v1/items/{last}");
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-tenant",
            HeaderValue::from_str(&format!("t{last}")).expect("ascii"),
        );
        group.bench_with_input(
            BenchmarkId::new("shared_host_last_exact", routes),
            &routes,
            |b, _| {
                b.iter(|| {
                    let request = HttpRequestParts {
                        host: "shared.example.com",
                        path: &path,
                        query: None,
                        method: &Method::GET,
                        headers: &headers,
                    };
                    black_box(table.select(black_box(&request)).map(|s| s.rule.id.rule))
                });
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
