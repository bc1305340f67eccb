//! A backend dies under load: one of a Service's two endpoints is killed (its socket and
//! every connection to it closed) while clients keep sending GETs through a route with
//! retries. No client sees an error: requests that meet the dead endpoint (refused
//! connections, or connections closed mid-request) are retried on the other one, and the dead
//! endpoint soon stops being tried at all. With round robin it is ejected after five
//! consecutive failures; with peak EWMA its first failure makes it far costlier than the
//! live endpoint, so it is avoided at once and never collects five failures in a row.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use support::{Gateway, Upstream, free_port, get};

const CLIENTS: usize = 8;

fn slice(name: &str, target: u16) -> String {
    format!(
        "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, labels: {{kubernetes.io/service-name: pair}}}}
addressType: IPv4
ports: [{{port: {target}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
"
    )
}

/// The value of the first sample whose line starts with `prefix`.
fn sample(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in\n{metrics}"))
}

async fn killing_one_of_two_endpoints_fails_no_get(balancer: &str) {
    let survivor = Upstream::start("survivor").await;
    let victim = Upstream::start("victim").await;
    let port = free_port();
    let manifests = format!(
        "{}---
apiVersion: v1
kind: Service
metadata: {{name: pair}}
spec: {{ports: [{{port: 80}}]}}
{}{}---
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
        slice("pair-survivor", survivor.port),
        slice("pair-victim", victim.port),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    support::replace(dir.path(), "all.yaml", &manifests);
    let gateway = Gateway::start_with(dir.path(), &["--load-balancer", balancer]).await;
    let url = format!("http://127.0.0.1:{port}/");
    gateway
        .wait_until(|| async { get(&url, &[]).await.is_ok_and(|(s, _)| s == 200) })
        .await;

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (stop, ok, failed, url) = (stop.clone(), ok.clone(), failed.clone(), url.clone());
        clients.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match get(&url, &[]).await {
                    Ok((200, _)) => ok.fetch_add(1, Ordering::Relaxed),
                    Ok((status, body)) => {
                        eprintln!("failed request: {status} {body}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(error) => {
                        eprintln!("failed request: {error}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    // Both endpoints serve for a while, then one dies with the load still on.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let victim_hits = victim.hits();
    assert!(victim_hits > 0, "the victim never served before it died");
    drop(victim);
    let killed_at = ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let retries_of = |metrics: &str| {
        sample(
            metrics,
            "portcullis_retries_total{route_kind=\"HTTPRoute\",route_namespace=\"default\",route_name=\"retried\"}",
        )
    };
    let retries_after_a_second = retries_of(&gateway.admin("/metrics").await.1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("client task");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
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
