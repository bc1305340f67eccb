//! Transparent interception, as a sidecar sees it: a "pod" network namespace whose outbound
//! TCP is redirected by iptables to `portcullis run --outbound`, and an "outside" namespace
//! reached over a veth pair, where the LLM stand-in and a plain HTTP server listen. The proxy
//! runs as its own user, and iptables leaves that user's connections alone (as Linkerd's and
//! Istio's proxies are excluded by UID), so its connections to original destinations are not
//! redirected back to itself.
//!
//! The same proxy also serves mesh routes at a Service's ClusterIP that exists nowhere: the
//! connection is intercepted and its original destination selects the Service's routes, a
//! 40/60 split between endpoints in two server namespaces and a header-based rule, with no
//! change to the client. The iptables rules are installed by `portcullis init`.
//!
//! Needs root (namespaces, iptables), which CI has. The namespaces are created here and
//! deleted when the test ends.

mod support;

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};
use tokio::net::TcpStream;

use support::Upstream;
use support::tls::Llm;

/// The proxy's user, excluded from redirection.
const PROXY_UID: &str = "2102";
const OUTBOUND_PORT: u16 = 15001;
const ADMIN_PORT: u16 = 9901;
/// Addresses on the veth pair: outside every default cluster network, so the EgressNetwork
/// without `networks` covers the outside one.
const POD_IP: &str = "198.18.0.1";
const OUTSIDE_IP: &str = "198.18.0.2";
/// The second server namespace (calendar-v2), on its own veth pair.
const POD_IP_2: &str = "198.18.1.1";
const SERVER_2_IP: &str = "198.18.1.2";
/// The ClusterIP of the meshed Service; nothing has this address.
const CLUSTER_IP: &str = "10.96.0.10";

fn run(program: &str, args: &[&str]) {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} {args:?}: {e} (this test needs iproute2 and iptables)")
        });
    assert!(
        output.status.success(),
        "{program} {args:?} failed (this test needs root): {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The pod namespace joined by veth pairs to two server namespaces; deleted on drop.
struct Namespaces {
    pod: String,
    outside: String,
    server_2: String,
}

impl Namespaces {
    fn create() -> Self {
        let id = std::process::id();
        let namespaces = Self {
            pod: format!("pc-pod-{id}"),
            outside: format!("pc-out-{id}"),
            server_2: format!("pc-srv-{id}"),
        };
        let pod = namespaces.pod.as_str();
        run("ip", &["netns", "add", pod]);
        run("ip", &["-n", pod, "link", "set", "lo", "up"]);
        let pairs = [
            (namespaces.outside.as_str(), "a", POD_IP, OUTSIDE_IP),
            (namespaces.server_2.as_str(), "b", POD_IP_2, SERVER_2_IP),
        ];
        for (other, tag, pod_ip, other_ip) in pairs {
            let (pod_if, other_if) = (format!("pcp{tag}{id}"), format!("pco{tag}{id}"));
            run("ip", &["netns", "add", other]);
            run(
                "ip",
                &[
                    "link", "add", &pod_if, "type", "veth", "peer", "name", &other_if,
                ],
            );
            run("ip", &["link", "set", &pod_if, "netns", pod]);
            run("ip", &["link", "set", &other_if, "netns", other]);
            for (ns, interface, ip) in [(pod, &pod_if, pod_ip), (other, &other_if, other_ip)] {
                run("ip", &["-n", ns, "link", "set", "lo", "up"]);
                run(
                    "ip",
                    &[
                        "-n",
                        ns,
                        "addr",
                        "add",
                        &format!("{ip}/24"),
                        "dev",
                        interface,
                    ],
                );
                run("ip", &["-n", ns, "link", "set", interface, "up"]);
            }
            if tag == "a" {
                // The ClusterIP needs a route for connect() to get as far as iptables.
                run(
                    "ip",
                    &["-n", pod, "route", "add", "10.96.0.0/12", "dev", &pod_if],
                );
            }
        }
        run(
            "ip",
            &[
                "netns",
                "exec",
                pod,
                env!("CARGO_BIN_EXE_portcullis"),
                "init",
                "--proxy-uid",
                PROXY_UID,
                "--outbound-port",
                &OUTBOUND_PORT.to_string(),
            ],
        );
        namespaces
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.outside, &self.server_2] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Runs `body` on a new thread inside namespace `ns`, with its own runtime.
fn in_namespace<T: Send + 'static>(
    ns: &str,
    body: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        setns(file, CloneFlags::CLONE_NEWNET).expect("enter the namespace");
        body()
    })
}

/// The proxy process inside the pod namespace, as [`PROXY_UID`]; killed by PID on drop.
struct Proxy(Child);

impl Proxy {
    fn start(ns: &str, config: &Path) -> Self {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "setpriv"])
            .args([
                &format!("--reuid={PROXY_UID}"),
                &format!("--regid={PROXY_UID}"),
                "--clear-groups",
            ])
            .arg(env!("CARGO_BIN_EXE_portcullis"))
            .args(["run", "--config"])
            .arg(config)
            .args(["--admin", &format!("127.0.0.1:{ADMIN_PORT}")])
            .args(["--outbound", &format!("127.0.0.1:{OUTBOUND_PORT}")])
            .args(["--workload-namespace", "apps"])
            .env("PORTCULLIS_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start portcullis");
        Self(child)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn manifests(llm_port: u16, http_port: u16, v1_port: u16, v2_port: u16) -> String {
    format!(
        "apiVersion: policy.linkerd.io/v1alpha1
kind: EgressNetwork
metadata: {{name: deny-all, namespace: apps}}
spec: {{trafficPolicy: Deny}}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: allow-mistral-ai-access, namespace: apps}}
spec:
  hostnames: [api.mistral.ai]
  parentRefs: [{{group: policy.linkerd.io, kind: EgressNetwork, name: deny-all, port: {llm_port}}}]
  rules:
  - backendRefs: [{{group: policy.linkerd.io, kind: EgressNetwork, name: deny-all}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: docs, namespace: apps}}
spec:
  hostnames: [docs.example.com]
  parentRefs: [{{group: policy.linkerd.io, kind: EgressNetwork, name: deny-all, port: {http_port}}}]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /docs}}}}]
{calendar}{calendar_v1}{calendar_v2}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: calendar, namespace: apps}}
spec:
  parentRefs: [{{group: \"\", kind: Service, name: calendar, port: 8080}}]
  rules:
  - matches:
    - path: {{type: PathPrefix, value: /calendar}}
      headers: [{{name: x-canary, value: always}}]
    backendRefs: [{{name: calendar-v2, port: 8080}}]
  - matches: [{{path: {{type: PathPrefix, value: /calendar}}}}]
    backendRefs: [{{name: calendar-v1, port: 8080, weight: 40}}, {{name: calendar-v2, port: 8080, weight: 60}}]
",
        calendar = service("calendar", Some(CLUSTER_IP), None),
        calendar_v1 = service("calendar-v1", None, Some((OUTSIDE_IP, v1_port))),
        calendar_v2 = service("calendar-v2", None, Some((SERVER_2_IP, v2_port))),
    )
}

/// A Service in `apps` on port 8080, with a ClusterIP and/or one endpoint.
fn service(name: &str, cluster_ip: Option<&str>, endpoint: Option<(&str, u16)>) -> String {
    let cluster_ip = cluster_ip
        .map(|ip| format!("clusterIP: {ip}, "))
        .unwrap_or_default();
    let target = endpoint
        .map(|(_, port)| format!(", targetPort: {port}"))
        .unwrap_or_default();
    let mut yaml = format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: apps}}
spec: {{{cluster_ip}ports: [{{port: 8080{target}}}]}}
"
    );
    if let Some((ip, port)) = endpoint {
        yaml.push_str(&format!(
            "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, namespace: apps, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{port: {port}}}]
endpoints: [{{addresses: [{ip}]}}]
"
        ));
    }
    yaml
}

/// Plain HTTP/1.1 GET to `addr` with `host`; the status and the egress error header.
async fn get(
    addr: SocketAddr,
    host: &str,
    path: &str,
) -> Result<(u16, Option<String>, String), String> {
    get_with(addr, host, path, &[]).await
}

/// [`get`] with extra headers.
async fn get_with(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, Option<String>, String), String> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let mut request = hyper::Request::get(path).header("host", host);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let error = response
        .headers()
        .get(dataplane::EGRESS_ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, error, String::from_utf8_lossy(&body).into_owned()))
}

#[test]
fn sidecar_intercepts_egress_and_mesh_traffic() {
    let namespaces = Namespaces::create();
    let outside_ip: IpAddr = OUTSIDE_IP.parse().expect("address");

    // The outside world: the LLM stand-in, a docs server and calendar v1; calendar v2 in
    // the second server namespace.
    let (ready, servers) = mpsc::channel();
    let _outside = in_namespace(&namespaces.outside, move || {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async move {
            let llm = Llm::start(outside_ip).await;
            let docs = Upstream::start_on(outside_ip, "docs").await;
            let v1 = Upstream::start_on(outside_ip, "calendar-v1").await;
            let _ = ready.send((llm, (docs.port, v1.port)));
            // Serve until the test process ends.
            std::future::pending::<()>().await;
            drop((docs, v1));
        });
    });
    let (llm, (docs_port, v1_port)) = servers
        .recv_timeout(Duration::from_secs(10))
        .expect("servers started");
    let (ready, server_2) = mpsc::channel();
    let _server_2 = in_namespace(&namespaces.server_2, move || {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async move {
            let ip: IpAddr = SERVER_2_IP.parse().expect("address");
            let v2 = Upstream::start_on(ip, "calendar-v2").await;
            let _ = ready.send(v2.port);
            std::future::pending::<()>().await;
            drop(v2);
        });
    });
    let v2_port = server_2
        .recv_timeout(Duration::from_secs(10))
        .expect("calendar-v2 started");

    let dir = tempfile::tempdir().expect("tempdir");
    support::replace(
        dir.path(),
        "egress.yaml",
        &manifests(llm.port, docs_port, v1_port, v2_port),
    );
    // The proxy runs as another user: let it read the manifests.
    run("chmod", &["-R", "a+rX", &dir.path().display().to_string()]);
    let _proxy = Proxy::start(&namespaces.pod, dir.path());

    let client = in_namespace(&namespaces.pod, move || {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async move {
            let outside = |port| SocketAddr::new(outside_ip, port);
            let admin = SocketAddr::from(([127, 0, 0, 1], ADMIN_PORT));
            let deadline = Instant::now() + Duration::from_secs(20);
            let mistral = outside(llm.port);
            loop {
                let allowed = match TcpStream::connect(mistral).await {
                    Ok(stream) => llm.call_over(stream, Some("api.mistral.ai")).await,
                    Err(error) => Err(error),
                };
                match allowed {
                    Ok(body) => {
                        assert!(body.contains("choices"), "{body}");
                        break;
                    }
                    Err(error) if Instant::now() > deadline => {
                        panic!("api.mistral.ai never became reachable: {error}")
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }

            let refusals = [
                ("another host", mistral, Some("example.com")),
                ("no SNI", mistral, None),
                ("another port", outside(llm.other_port), Some("api.mistral.ai")),
            ];
            for (case, addr, sni) in refusals {
                let stream = TcpStream::connect(addr).await.expect("connect is intercepted");
                let result = llm.call_over(stream, sni).await;
                assert!(result.is_err(), "{case}: expected a refusal, got {result:?}");
            }

            let docs = outside(docs_port);
            let (status, _, body) = get(docs, "docs.example.com", "/docs/a").await.expect("answer");
            assert_eq!((status, body.as_str()), (200, "docs"));
            let (status, error, _) = get(docs, "other.example.com", "/docs/a").await.expect("answer");
            assert_eq!((status, error.as_deref()), (403, Some("traffic not allowed")));

            // Mesh: the ClusterIP exists nowhere, yet the intercepted connection is served by
            // the Service's routes: the 40/60 split, the header rule, and 404 off the routes.
            let service = SocketAddr::new(CLUSTER_IP.parse().expect("address"), 8080);
            const CALLS: u32 = 500;
            let mut to_v1 = 0;
            for _ in 0..CALLS {
                let (status, _, body) = get(service, "calendar", "/calendar/today").await.expect("answer");
                assert_eq!(status, 200);
                if body == "calendar-v1" {
                    to_v1 += 1;
                }
            }
            // 40% expected (200 of 500); the bounds are about five standard deviations.
            assert!((145..=255).contains(&to_v1), "{to_v1} of {CALLS} calls went to v1");
            for _ in 0..20 {
                let (status, _, body) = get_with(service, "calendar", "/calendar/today", &[("x-canary", "always")])
                    .await
                    .expect("answer");
                assert_eq!((status, body.as_str()), (200, "calendar-v2"));
            }
            let (status, _, _) = get(service, "calendar", "/elsewhere").await.expect("answer");
            assert_eq!(status, 404);

            let (_, _, metrics) = get(admin, "127.0.0.1", "/metrics").await.expect("metrics");
            for expected in [
                r#"route="apps/allow-mistral-ai-access",hostname="api.mistral.ai",decision="allow""#,
                r#"route="tls-egress-deny",hostname="example.com",decision="deny""#,
                r#"route="tls-egress-deny",hostname="-",decision="deny""#,
                r#"route="http-egress-deny",hostname="other.example.com",decision="deny""#,
            ] {
                assert!(metrics.contains(expected), "{expected} not in\n{metrics}");
            }
        })
    });
    client
        .join()
        .expect("the checks in the pod namespace passed");
}
