//! Reloads under load: a route's weights and matches are rewritten 100 times while clients
//! keep sending requests through the gateway; not one request may fail. And routes added,
//! removed and edited among others, served by patching the previous config, in precedence
//! order.
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

/// Upstreams `a` and `b`, the gateway's port, and a directory with the Gateway and both
/// Services in `base.yaml`.
async fn setup() -> (Upstream, Upstream, u16, tempfile::TempDir) {
    let a = Upstream::start("a").await;
    let b = Upstream::start("b").await;
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("base.yaml"),
        manifests(port, a.port, b.port),
    )
    .expect("write");
    (a, b, port, dir)
}

/// The value of a counter on the gateway's `/metrics`.
async fn counter(gateway: &Gateway, name: &str) -> f64 {
    support::sample(&gateway.admin("/metrics").await.1, &format!("{name} "))
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
    let (a, b, port, dir) = setup().await;
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

/// An HTTPRoute `name` sending `match` (a path match) to Service `backend`.
fn path_route(name: &str, path: &str, backend: &str) -> String {
    format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{matches: [{{path: {path}}}], backendRefs: [{{name: {backend}, port: 80}}]}}]
"
    )
}

#[tokio::test]
async fn route_changes_are_patched_in_precedence_order() {
    let (_a, _b, port, dir) = setup().await;
    let mut routes: String = (0..20)
        .map(|i| {
            path_route(
                &format!("filler-{i:02}"),
                &format!("{{type: PathPrefix, value: /f{i}}}"),
                "a",
            )
        })
        .collect();
    routes.push_str(&path_route("m-api", "{type: PathPrefix, value: /v1}", "a"));
    std::fs::write(dir.path().join("routes.yaml"), routes).expect("write");
    let gateway = Gateway::start(dir.path()).await;
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let answers = |path: &'static str, expected: &'static str| {
        let url = url(path);
        async move {
            get(&url, &[])
                .await
                .is_ok_and(|(status, body)| status == 200 && body == expected)
        }
    };
    gateway.wait_until(|| answers("/v1/x", "a")).await;
    let before = counter(&gateway, "portcullis_config_patched_reloads_total").await;

    // Same path match, and `default/a-api` comes before `default/m-api`: it wins.
    support::replace(
        dir.path(),
        "a-api.yaml",
        &path_route("a-api", "{type: PathPrefix, value: /v1}", "b"),
    );
    gateway.wait_until(|| answers("/v1/x", "b")).await;
    // Later by name: it changes what /v1 answers in no way, so wait for the reload.
    let reloads = || counter(&gateway, "portcullis_config_reloads_total");
    let reloaded = reloads().await;
    support::replace(
        dir.path(),
        "z-api.yaml",
        &path_route("z-api", "{type: PathPrefix, value: /v1}", "a"),
    );
    gateway
        .wait_until(|| async { reloads().await > reloaded })
        .await;
    assert!(answers("/v1/x", "b").await);
    // Removed: the older route serves again.
    std::fs::remove_file(dir.path().join("a-api.yaml")).expect("remove");
    gateway.wait_until(|| answers("/v1/x", "a")).await;
    // Edited to a longer prefix (more specific): it takes /v1/only, z-api the rest.
    support::replace(
        dir.path(),
        "z-api.yaml",
        &path_route("z-api", "{type: PathPrefix, value: /v1/only}", "b"),
    );
    gateway.wait_until(|| answers("/v1/only/x", "b")).await;
    assert!(answers("/v1/x", "a").await);
    assert!(answers("/f19/y", "a").await);

    // Each of the four changes was its own reload, and `--verify-patches` (on in every
    // test) compared each patch with a full translation.
    let after = counter(&gateway, "portcullis_config_patched_reloads_total").await;
    assert!(
        after - before >= 4.0,
        "{} patched reloads for 4 changes",
        after - before
    );
    let (status, _) = gateway.admin("/ready").await;
    assert_eq!(status, 200, "the gateway is still up");
}

/// Whether `/status` shows HTTPRoute `name` accepted by its parent.
fn accepted(status: &str, name: &str) -> bool {
    let document: serde_json::Value = serde_json::from_str(status).unwrap_or_default();
    document["objects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| o["kind"] == "HTTPRoute" && o["metadata"]["name"] == name)
        .flat_map(|o| {
            o["status"]["parents"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|p| p["conditions"].as_array().cloned().unwrap_or_default())
        .any(|c| c["type"] == "Accepted" && c["status"] == "True")
}

#[tokio::test]
async fn patched_routes_get_their_status_once_changes_pause() {
    let (_a, _b, port, dir) = setup().await;
    support::replace(
        dir.path(),
        "m-api.yaml",
        &path_route("m-api", "{type: PathPrefix, value: /v1}", "a"),
    );
    // As users run it: without --verify-patches, status is computed after the changes.
    let gateway = Gateway::start_unverified(dir.path(), &[]).await;
    let url = format!("http://127.0.0.1:{port}/v1/x");
    gateway
        .wait_until(|| async { get(&url, &[]).await.is_ok_and(|(_, body)| body == "a") })
        .await;
    assert!(accepted(&gateway.admin("/status").await.1, "m-api"));

    support::replace(
        dir.path(),
        "a-api.yaml",
        &path_route("a-api", "{type: PathPrefix, value: /v1}", "b"),
    );
    gateway
        .wait_until(|| async { get(&url, &[]).await.is_ok_and(|(_, body)| body == "b") })
        .await;
    assert!(counter(&gateway, "portcullis_config_patched_reloads_total").await >= 1.0);
    // Served by a patch; its status follows within the quiet period.
    gateway
        .wait_until(|| async { accepted(&gateway.admin("/status").await.1, "a-api") })
        .await;
    assert!(accepted(&gateway.admin("/status").await.1, "m-api"));

    // Changes about one quiet period apart: each status translation starts as the next
    // change arrives, and the last one's status still comes.
    let names: Vec<String> = (0..6).map(|k| format!("s{k}-api")).collect();
    for (k, name) in names.iter().enumerate() {
        let path = format!("{{type: PathPrefix, value: /s{k}}}");
        support::replace(
            dir.path(),
            &format!("{name}.yaml"),
            &path_route(name, &path, "b"),
        );
        tokio::time::sleep(Duration::from_millis(90 + 5 * k as u64)).await;
    }
    gateway
        .wait_until(|| async {
            let status = gateway.admin("/status").await.1;
            names.iter().all(|name| accepted(&status, name))
        })
        .await;
    for k in 0..names.len() {
        let url = format!("http://127.0.0.1:{port}/s{k}/x");
        assert_eq!(
            get(&url, &[]).await.map(|(_, body)| body).ok(),
            Some("b".into())
        );
    }
}
