//! A backend dies under load: one of a Service's two endpoints is killed (its socket and
//! every connection to it closed) while clients keep sending GETs through a route with
//! retries. No client sees an error: requests that meet the dead endpoint (refused
//! connections, or connections closed mid-request) are retried on the other one, and the dead
//! endpoint soon stops being tried at all. With round robin it is ejected after five
//! consecutive failures; with peak EWMA its first failure makes it far costlier than the
//! live endpoint, so it is avoided at once and never collects five failures in a row.

mod support;

use std::time::Duration;

use support::{Gateway, Load, Upstream, free_port, get, sample};

const CLIENTS: usize = 8;

async fn killing_one_of_two_endpoints_fails_no_get(balancer: &str) {
    let survivor = Upstream::start("survivor").await;
    let victim = Upstream::start("victim").await;
    let port = free_port();
    let manifests = format!(
        "{}{}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: retried}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - backendRefs: [{{name: pair, port: 80}}]
    retry: {{attempts: 2, backoff: 1ms}}
",
        support::gateway_yaml(port),
        support::pair_service_yaml(&[
            ("pair-survivor", survivor.port),
            ("pair-victim", victim.port)
        ]),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    support::replace(dir.path(), "all.yaml", &manifests);
    let gateway = Gateway::start_with(dir.path(), &["--load-balancer", balancer]).await;
    let url = format!("http://127.0.0.1:{port}/");
    gateway
        .wait_until(|| async { get(&url, &[]).await.is_ok_and(|(s, _)| s == 200) })
        .await;

    let load = Load::start(&url, &[], CLIENTS);
    // Both endpoints serve for a while, then one dies with the load still on.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let victim_hits = victim.hits();
    assert!(victim_hits > 0, "the victim never served before it died");
    drop(victim);
    let killed_at = load.ok();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let retries_of = |metrics: &str| {
        sample(
            metrics,
            "portcullis_retries_total{route_kind=\"HTTPRoute\",route_namespace=\"default\",route_name=\"retried\"}",
        )
    };
    let retries_after_a_second = retries_of(&gateway.admin("/metrics").await.1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ok, failed) = load.stop().await;
    eprintln!("{balancer}: {ok} requests succeeded ({killed_at} before the kill), {failed} failed");
    assert!(
        ok - killed_at > 200,
        "too few requests after the kill to mean anything: {}",
        ok - killed_at
    );
    assert_eq!(failed, 0, "{failed} of {} GETs failed", ok + failed);

    let (_, metrics) = gateway.admin("/metrics").await;
    let retries = retries_of(&metrics);
    assert!(
        retries >= 1.0,
        "no retry was needed: the test proves nothing"
    );
    // A second after the kill the dead endpoint is out of rotation: no more retries.
    assert!(
        retries - retries_after_a_second <= 2.0,
        "still retrying a second after the kill: {retries_after_a_second} then {retries}"
    );
    let ejections = sample(&metrics, "portcullis_outlier_ejections_total");
    if balancer == "round-robin" {
        assert_eq!(ejections, 1.0, "the dead endpoint was not ejected");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_an_endpoint_under_load_fails_no_get_with_peak_ewma() {
    killing_one_of_two_endpoints_fails_no_get("peak-ewma").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_an_endpoint_under_load_fails_no_get_with_round_robin() {
    killing_one_of_two_endpoints_fails_no_get("round-robin").await;
}
