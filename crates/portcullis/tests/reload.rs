//! Reloads under load: a route's weights and matches are rewritten 100 times while clients
//! keep sending requests through the gateway; not one request may fail.
//!
//! Starts the real `portcullis` binary on a temporary directory, two upstreams in-process,
//! all on 127.0.0.1. Files are replaced by rename, the way Kubernetes volume updates and
//! careful editors write them.

mod support;

use std::time::Duration;

use support::{Gateway, Load, Upstream, free_port, get};

const REWRITES: usize = 100;
const CLIENTS: usize = 4;

fn manifests(port: u16, a: u16, b: u16) -> String {
    format!(
        "{}{}{}",
        support::gateway_yaml(port),
        support::service_yaml("a", a),
        support::service_yaml("b", b)
    )
}

/// The route in its `round`-th form: every form matches the clients' requests, with a
/// different match and a different split.
fn route(round: usize) -> String {
    let matches = match round % 3 {
        0 => "[{path: {type: PathPrefix, value: /}}]",
        1 => "[{path: {type: PathPrefix, value: /load}, headers: [{name: x-load, value: 'yes'}]}]",
        _ => "[{path: {type: Exact, value: /load/ping}, method: GET}]",
    };
    let (wa, wb) = if round == REWRITES {
        (0, 100)
    } else {
        [(100, 0), (50, 50), (1, 99), (70, 30)][round % 4]
    };
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: split}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - matches: {matches}
    backendRefs: [{{name: a, port: 80, weight: {wa}}}, {{name: b, port: 80, weight: {wb}}}]
"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rewriting_a_route_a_hundred_times_under_load_fails_no_request() {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("base.yaml"),
        manifests(port, a.port, b.port),
    )
    .expect("write");
    support::replace(dir.path(), "route.yaml", &route(0));
    let gateway = Gateway::start(dir.path()).await;
    let url = format!("http://127.0.0.1:{port}/load/ping");
    gateway
        .wait_until(|| async { get(&url, &[]).await.is_ok_and(|(s, _)| s == 200) })
        .await;

    let load = Load::start(&url, &[("x-load", "yes")], CLIENTS);
    for round in 1..=REWRITES {
        support::replace(dir.path(), "route.yaml", &route(round));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // The last form sends everything to b: seeing only b proves the reloads were applied.
    let last = route(REWRITES);
    assert!(
        last.contains("weight: 0}, {name: b, port: 80, weight: 100"),
        "{last}"
    );
    gateway
        .wait_until(|| async {
            get(&url, &[("x-load", "yes")])
                .await
                .is_ok_and(|(_, body)| body == "b")
        })
        .await;
    // Each rewrite was its own reload (the directory is quiet for 150 ms after each), give
    // or take a few that the watcher saw together.
    let (_, metrics) = gateway.admin("/metrics").await;
    let reloads: f64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("portcullis_config_reloads_total "))
        .and_then(|value| value.parse().ok())
        .expect("reload counter");
    assert!(
        reloads >= (REWRITES * 9 / 10) as f64,
        "only {reloads} reloads for {REWRITES} rewrites"
    );
    let (ok, failed) = load.stop().await;
    eprintln!("{REWRITES} rewrites: {ok} requests succeeded, {failed} failed");
    assert!(ok > 500, "too few requests to mean anything: {ok}");
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed during reloads",
        ok + failed
    );
    assert!(
        a.hits() > 0 && b.hits() > 0,
        "both backends served: a={} b={}",
        a.hits(),
        b.hits()
    );
}
