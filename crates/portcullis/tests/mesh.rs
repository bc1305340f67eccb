//! GAMMA in standalone mode: a route attached to a Service is served at the Service's
//! clusterIP:port, here the calendar canary of the Cal-LLM story split 40/60 per request.

mod support;

use support::{Gateway, Upstream, free_port, get};

const CLUSTER_IP: &str = "127.0.2.10";
/// A Service without routes: connections to it are relayed to its endpoints.
const PLAIN_IP: &str = "127.0.2.12";

fn manifests(port: u16, v1: u16, v2: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: calendar}}
spec:
  parentRefs: [{{group: \"\", kind: Service, name: calendar, port: {port}}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /calendar}}}}]
    backendRefs: [{{name: a, port: 80, weight: 40}}, {{name: b, port: 80, weight: 60}}]
---
apiVersion: v1
kind: Service
metadata: {{name: calendar}}
spec: {{clusterIP: {CLUSTER_IP}, ports: [{{port: {port}}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: plain}}
spec: {{clusterIP: {PLAIN_IP}, ports: [{{port: {port}, targetPort: {v2}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: plain, labels: {{kubernetes.io/service-name: plain}}}}
addressType: IPv4
ports: [{{port: {v2}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
{}{}",
        support::service_yaml("a", v1),
        support::service_yaml("b", v2),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn service_routes_split_calls_at_the_cluster_ip() {
    let (a, b) = (Upstream::start("a").await, Upstream::start("b").await);
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    support::replace(dir.path(), "mesh.yaml", &manifests(port, a.port, b.port));
    let gateway = Gateway::start(dir.path()).await;
    let url = format!("http://{CLUSTER_IP}:{port}/calendar/list");
    gateway
        .wait_until(|| async { get(&url, &[]).await.is_ok_and(|(s, _)| s == 200) })
        .await;

    let mut to_a = 0;
    const CALLS: u32 = 500;
    for _ in 0..CALLS {
        let (status, body) = get(&url, &[]).await.expect("the Service address answers");
        assert_eq!(status, 200);
        if body == "a" {
            to_a += 1;
        }
    }
    // 40% expected (200 of 500); the bounds are about five standard deviations.
    assert!(
        (145..=255).contains(&to_a),
        "{to_a} of {CALLS} calls went to a"
    );

    let other = format!("http://{CLUSTER_IP}:{port}/elsewhere");
    let (status, _) = get(&other, &[]).await.expect("answers");
    assert_eq!(
        status, 404,
        "a Service with routes answers 404 when none matches"
    );
}
