//! A 40/60 GRPCRoute canary with real tonic servers: one client connection carries 10,000 unary
//! calls and each version's share must be within 2 points of its weight, both when the route's
//! parent is a Service (served at its clusterIP:port) and when it is a Gateway listener.

mod support;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Request, Response, Status};
use tonic_prost::ProstCodec;

use support::{Gateway, free_port};

/// The Service's clusterIP; other tests use other 127.0.2.x addresses.
const CLUSTER_IP: &str = "127.0.2.30";
const SERVICE: &str = "calendar.v1.Calendar";
const METHOD: &str = "/calendar.v1.Calendar/WhoAmI";
const CALLS: u64 = 10_000;
const IN_FLIGHT: u64 = 16;

#[derive(Clone, PartialEq, prost::Message)]
struct WhoAmIRequest {
    #[prost(string, tag = "1")]
    caller: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WhoAmIReply {
    #[prost(string, tag = "1")]
    server: String,
}

/// The `calendar.v1.Calendar` service: `WhoAmI` answers with the server's name.
#[derive(Clone)]
struct Calendar {
    name: &'static str,
    calls: Arc<AtomicU64>,
}

impl NamedService for Calendar {
    const NAME: &'static str = SERVICE;
}

impl tower::Service<http::Request<Body>> for Calendar {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let (name, calls) = (self.name, self.calls.clone());
        Box::pin(async move {
            if request.uri().path() != METHOD {
                return Ok(Status::unimplemented("no such method").into_http());
            }
            let who_am_i = tower::service_fn(move |_: Request<WhoAmIRequest>| {
                calls.fetch_add(1, Ordering::Relaxed);
                async move {
                    Ok::<_, Status>(Response::new(WhoAmIReply {
                        server: name.to_string(),
                    }))
                }
            });
            let mut grpc = tonic::server::Grpc::new(ProstCodec::default());
            Ok(grpc.unary(who_am_i, request).await)
        })
    }
}

/// A tonic server on an ephemeral 127.0.0.1 port; stopped when dropped.
struct CalendarServer {
    port: u16,
    calls: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CalendarServer {
    async fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a gRPC server");
        let port = listener.local_addr().expect("server address").port();
        let calls = Arc::new(AtomicU64::new(0));
        let service = Calendar {
            name,
            calls: calls.clone(),
        };
        let task = tokio::spawn(async move {
            Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .expect("the gRPC server runs");
        });
        Self { port, calls, task }
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

impl Drop for CalendarServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Services `calendar-v1` and `calendar-v2` (port 80, h2c) with one endpoint each.
fn backends_yaml(v1: u16, v2: u16) -> String {
    let mut yaml = String::new();
    for (name, target) in [("calendar-v1", v1), ("calendar-v2", v2)] {
        yaml.push_str(&format!(
            "---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec: {{ports: [{{port: 80, targetPort: {target}, appProtocol: kubernetes.io/h2c}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{port: {target}, appProtocol: kubernetes.io/h2c}}]
endpoints: [{{addresses: [127.0.0.1]}}]
"
        ));
    }
    yaml
}

/// A GRPCRoute `calendar` with the given parentRef, splitting every call 40/60.
fn route_yaml(parent_ref: &str) -> String {
    format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: calendar}}
spec:
  parentRefs: [{parent_ref}]
  rules:
  - matches: [{{method: {{service: {SERVICE}}}}}]
    backendRefs:
    - {{name: calendar-v1, port: 80, weight: 40}}
    - {{name: calendar-v2, port: 80, weight: 60}}
"
    )
}

/// One `WhoAmI` call; the answering server's name.
async fn who_am_i(channel: Channel) -> Result<String, Status> {
    let mut client = tonic::client::Grpc::new(channel);
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    let request = Request::new(WhoAmIRequest {
        caller: "web".to_string(),
    });
    let reply: Response<WhoAmIReply> = client
        .unary(
            request,
            PathAndQuery::from_static(METHOD),
            ProstCodec::default(),
        )
        .await?;
    Ok(reply.into_inner().server)
}

/// A channel to `addr` whose connector counts the TCP connections it opens.
async fn counted_channel(addr: SocketAddr, connections: Arc<AtomicU64>) -> Channel {
    let connector = tower::service_fn(move |_: http::Uri| {
        let connections = connections.clone();
        async move {
            connections.fetch_add(1, Ordering::Relaxed);
            TcpStream::connect(addr).await.map(TokioIo::new)
        }
    });
    Endpoint::from_shared(format!("http://{addr}"))
        .expect("an endpoint URI")
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .connect_with_connector(connector)
        .await
        .expect("connect to the proxy")
}

/// Waits until a call on a fresh connection to `addr` is answered by one of the servers.
async fn wait_for_route(gateway: &Gateway, addr: SocketAddr) {
    gateway
        .wait_until(|| async {
            let Ok(endpoint) = Endpoint::from_shared(format!("http://{addr}")) else {
                return false;
            };
            let Ok(channel) = endpoint
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(2))
                .connect()
                .await
            else {
                return false;
            };
            who_am_i(channel)
                .await
                .is_ok_and(|name| name.starts_with("calendar-v"))
        })
        .await;
}

/// Sends `CALLS` calls over one connection to `addr`, `IN_FLIGHT` at a time, and checks the
/// split by the answers, by the servers' own counts, and that one connection carried them all.
async fn check_split(addr: SocketAddr, v1: &CalendarServer, v2: &CalendarServer) {
    let connections = Arc::new(AtomicU64::new(0));
    let channel = counted_channel(addr, connections.clone()).await;
    let (v1_before, v2_before) = (v1.calls(), v2.calls());
    let started = Instant::now();

    // Each worker takes call numbers until all are taken: at most IN_FLIGHT calls at once.
    let issued = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (channel, issued) = (channel.clone(), issued.clone());
        workers.push(tokio::spawn(async move {
            let (mut to_v1, mut to_v2) = (0u64, 0u64);
            while issued.fetch_add(1, Ordering::Relaxed) < CALLS {
                match who_am_i(channel.clone()).await.as_deref() {
                    Ok("calendar-v1") => to_v1 += 1,
                    Ok("calendar-v2") => to_v2 += 1,
                    Ok(other) => panic!("an answer from an unknown server: {other}"),
                    Err(status) => panic!("a call failed: {status:?}"),
                }
            }
            (to_v1, to_v2)
        }));
    }
    let (mut to_v1, mut to_v2) = (0u64, 0u64);
    for worker in workers {
        let (a, b) = worker.await.expect("a client task");
        to_v1 += a;
        to_v2 += b;
    }
    let elapsed = started.elapsed();

    assert_eq!(to_v1 + to_v2, CALLS, "every call succeeded");
    assert_eq!(
        (v1.calls() - v1_before, v2.calls() - v2_before),
        (to_v1, to_v2),
        "the servers counted the calls the client saw answered"
    );
    assert_eq!(
        connections.load(Ordering::Relaxed),
        1,
        "the client opened exactly one connection"
    );
    let v1_share = to_v1 as f64 * 100.0 / CALLS as f64;
    let v2_share = to_v2 as f64 * 100.0 / CALLS as f64;
    println!(
        "{addr}: {CALLS} calls on one connection in {elapsed:.1?}: calendar-v1 {to_v1} ({v1_share:.2}%), calendar-v2 {to_v2} ({v2_share:.2}%)"
    );
    assert!(
        (v1_share - 40.0).abs() <= 2.0,
        "calendar-v1 got {v1_share:.2}% of the calls, weight 40"
    );
    assert!(
        (v2_share - 60.0).abs() <= 2.0,
        "calendar-v2 got {v2_share:.2}% of the calls, weight 60"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn split_applies_per_call_at_the_service_cluster_ip() {
    let (v1, v2) = (
        CalendarServer::start("calendar-v1").await,
        CalendarServer::start("calendar-v2").await,
    );
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: calendar}}
spec: {{clusterIP: {CLUSTER_IP}, ports: [{{name: grpc, port: {port}, appProtocol: kubernetes.io/h2c}}]}}
{}{}",
        route_yaml(&format!(
            "{{group: \"\", kind: Service, name: calendar, port: {port}}}"
        )),
        backends_yaml(v1.port, v2.port),
    );
    support::replace(dir.path(), "mesh.yaml", &manifests);
    let gateway = Gateway::start(dir.path()).await;
    let addr: SocketAddr = format!("{CLUSTER_IP}:{port}")
        .parse()
        .expect("a socket address");
    wait_for_route(&gateway, addr).await;

    check_split(addr, &v1, &v2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn split_applies_per_call_at_a_gateway_listener() {
    let (v1, v2) = (
        CalendarServer::start("calendar-v1").await,
        CalendarServer::start("calendar-v2").await,
    );
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = format!(
        "{}{}{}",
        support::gateway_yaml(port),
        route_yaml("{name: edge}"),
        backends_yaml(v1.port, v2.port),
    );
    support::replace(dir.path(), "gateway.yaml", &manifests);
    let gateway = Gateway::start(dir.path()).await;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_for_route(&gateway, addr).await;

    check_split(addr, &v1, &v2).await;
}
