//! Active health checks (HealthCheckPolicy): an endpoint that starts failing its probes is
//! taken out of load balancing while it still accepts connections (which passive outlier
//! detection alone would never notice), and comes back once it passes again.

mod support;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use support::{Gateway, free_port, get};

/// An upstream that answers `name` on every path but `/healthz`, which answers `health`;
/// it counts the other requests and remembers the probes' Host header.
struct Probed {
    port: u16,
    health: Arc<AtomicU16>,
    served: Arc<AtomicU64>,
    probe_host: Arc<std::sync::Mutex<String>>,
}

async fn probed(name: &'static str) -> Probed {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let health = Arc::new(AtomicU16::new(200));
    let served = Arc::new(AtomicU64::new(0));
    let probe_host = Arc::new(std::sync::Mutex::new(String::new()));
    let (h, s, p) = (health.clone(), served.clone(), probe_host.clone());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (health, served, probe_host) = (h.clone(), s.clone(), p.clone());
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let answer = if request.uri().path() == "/healthz" {
                        let host = request
                            .headers()
                            .get("host")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string();
                        *probe_host.lock().expect("lock") = host;
                        let status = health.load(Ordering::Relaxed);
                        hyper::Response::builder()
                            .status(status)
                            .body(Full::new(Bytes::from("health")))
                    } else {
                        served.fetch_add(1, Ordering::Relaxed);
                        hyper::Response::builder().body(Full::new(Bytes::from(name)))
                    };
                    async move { Ok::<_, Infallible>(answer.expect("response")) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Probed {
        port,
        health,
        served,
        probe_host,
    }
}

/// The value of the sample named exactly `name` (no labels).
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_endpoint_failing_its_probes_gets_no_traffic_until_it_passes_again() {
    let good = probed("good").await;
    let sick = probed("sick").await;
    let port = free_port();
    let manifests = format!(
        "{}{}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: pair}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{name: pair, port: 80}}]}}]
---
apiVersion: portcullis.dev/v1alpha1
kind: HealthCheckPolicy
metadata: {{name: pair-health}}
spec:
  targetRefs: [{{group: '', kind: Service, name: pair}}]
  interval: 100ms
  timeout: 500ms
  unhealthyThreshold: 2
  healthyThreshold: 2
  http: {{path: /healthz}}
",
        support::gateway_yaml(port),
        support::pair_service_yaml(&[("pair-good", good.port), ("pair-sick", sick.port)]),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    support::replace(dir.path(), "all.yaml", &manifests);
    let gateway = Gateway::start_with(dir.path(), &["--load-balancer", "round-robin"]).await;
    let url = format!("http://127.0.0.1:{port}/work");
    gateway
        .wait_until(|| async { get(&url, &[]).await.is_ok_and(|(s, _)| s == 200) })
        .await;
    // Both serve while both pass.
    for _ in 0..10 {
        assert_eq!(get(&url, &[]).await.map(|(s, _)| s), Ok(200));
    }
    assert!(good.served.load(Ordering::Relaxed) > 0);
    assert!(sick.served.load(Ordering::Relaxed) > 0);
    assert_eq!(*sick.probe_host.lock().expect("lock"), "pair.default");

    // The sick endpoint fails its probes but still serves: only health checks can tell.
    sick.health.store(503, Ordering::Relaxed);
    gateway
        .wait_until(|| async {
            let (_, metrics) = gateway.admin("/metrics").await;
            sample(&metrics, "portcullis_endpoints_unhealthy") == Some(1.0)
        })
        .await;
    let before = sick.served.load(Ordering::Relaxed);
    for _ in 0..20 {
        let (status, body) = get(&url, &[]).await.expect("answer");
        assert_eq!((status, body.as_str()), (200, "good"));
    }
    assert_eq!(sick.served.load(Ordering::Relaxed), before);
    let (_, metrics) = gateway.admin("/metrics").await;
    assert!(sample(&metrics, "portcullis_health_check_failures_total").is_some_and(|n| n >= 2.0));

    // Passing again, it is back in rotation.
    sick.health.store(200, Ordering::Relaxed);
    gateway
        .wait_until(|| async {
            let (_, metrics) = gateway.admin("/metrics").await;
            sample(&metrics, "portcullis_endpoints_unhealthy") == Some(0.0)
        })
        .await;
    for _ in 0..10 {
        assert_eq!(get(&url, &[]).await.map(|(s, _)| s), Ok(200));
    }
    assert!(sick.served.load(Ordering::Relaxed) > before);

    // Both failing: every endpoint is used rather than none (panic mode).
    good.health.store(500, Ordering::Relaxed);
    sick.health.store(500, Ordering::Relaxed);
    gateway
        .wait_until(|| async {
            let (_, metrics) = gateway.admin("/metrics").await;
            sample(&metrics, "portcullis_endpoints_unhealthy") == Some(2.0)
        })
        .await;
    for _ in 0..4 {
        assert_eq!(get(&url, &[]).await.map(|(s, _)| s), Ok(200));
    }

    // Removing the policy stops the probes and forgets their verdicts.
    let without_policy = manifests
        .split("---\napiVersion: portcullis.dev")
        .next()
        .expect("manifests")
        .to_string();
    support::replace(dir.path(), "all.yaml", &without_policy);
    gateway
        .wait_until(|| async {
            let (_, metrics) = gateway.admin("/metrics").await;
            sample(&metrics, "portcullis_endpoints_unhealthy") == Some(0.0)
        })
        .await;
}
