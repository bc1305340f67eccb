//! Helpers for tests that run the `portcullis` binary: upstreams, the gateway process, and a
//! minimal HTTP client. Everything listens on 127.0.0.1.

#![allow(dead_code)]

pub mod tls;

use std::future::Future;
use std::net::TcpListener as StdListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("an ephemeral port")
}

/// A GatewayClass of ours and Gateway `default/edge` with one HTTP listener on
/// 127.0.0.1:`port`.
pub fn gateway_yaml(port: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: portcullis}}
spec: {{controllerName: portcullis.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: default}}
spec:
  gatewayClassName: portcullis
  addresses: [{{type: IPAddress, value: 127.0.0.1}}]
  listeners: [{{name: http, port: {port}, protocol: HTTP}}]
"
    )
}

/// Service `name` (port 80) with one endpoint, 127.0.0.1:`target`.
pub fn service_yaml(name: &str, target: u16) -> String {
    format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: {name}}}
spec: {{ports: [{{port: 80, targetPort: {target}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: {name}, labels: {{kubernetes.io/service-name: {name}}}}}
addressType: IPv4
ports: [{{port: {target}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
"
    )
}

/// Gateway `default/edge` on `port` with one HTTPRoute sending everything to Service `name`,
/// whose endpoint is 127.0.0.1:`target`.
pub fn one_route_yaml(port: u16, name: &str, target: u16) -> String {
    format!(
        "{}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: {name}}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{name: {name}, port: 80}}]}}]
{}",
        gateway_yaml(port),
        service_yaml(name, target)
    )
}

/// Writes a file atomically (write to a hidden temporary, then rename).
pub fn replace(dir: &Path, name: &str, contents: &str) {
    let temporary = dir.join(format!(".{name}.tmp"));
    std::fs::write(&temporary, contents).expect("write temporary");
    std::fs::rename(&temporary, dir.join(name)).expect("rename into place");
}

/// An upstream that answers every request with its name and counts hits.
pub struct Upstream {
    pub port: u16,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start(name: &'static str) -> Self {
        Self::start_on([127, 0, 0, 1].into(), name).await
    }

    /// An upstream on a port of `ip`.
    pub async fn start_on(ip: std::net::IpAddr, name: &'static str) -> Self {
        let listener = TcpListener::bind((ip, 0)).await.expect("bind upstream");
        let port = listener.local_addr().expect("addr").port();
        let hits = Arc::new(AtomicU64::new(0));
        let task = spawn_server(listener, hits.clone(), move |_| Bytes::from(name));
        Self { port, hits, task }
    }

    /// An upstream that answers with the request's headers, one `name: value` line each.
    pub async fn echo_headers() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
        let port = listener.local_addr().expect("addr").port();
        let hits = Arc::new(AtomicU64::new(0));
        let task = spawn_server(listener, hits.clone(), |request| {
            let lines: String = request
                .headers()
                .iter()
                .map(|(n, v)| format!("{n}: {}\n", String::from_utf8_lossy(v.as_bytes())))
                .collect();
            Bytes::from(lines)
        });
        Self { port, hits, task }
    }

    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `portcullis run` process; killed (by its PID) when dropped.
pub struct Gateway {
    child: Child,
    pub admin: u16,
}

impl Gateway {
    /// A `portcullis run` process the test started itself, killed when dropped like the
    /// others (also when an assertion fails first).
    pub fn adopt(child: Child, admin: u16) -> Self {
        Self { child, admin }
    }

    pub async fn start(config: &Path) -> Self {
        Self::start_with(config, &[]).await
    }

    /// Starts `portcullis run` with extra arguments. Every reload served by a patch is
    /// checked against a full translation (`--verify-patches`); a difference stops the
    /// gateway, which fails the test.
    pub async fn start_with(config: &Path, args: &[&str]) -> Self {
        let mut all = vec!["--verify-patches"];
        all.extend_from_slice(args);
        Self::start_unverified(config, &all).await
    }

    /// Starts `portcullis run` with extra arguments, as users run it: patched reloads get
    /// their status once changes pause.
    pub async fn start_unverified(config: &Path, args: &[&str]) -> Self {
        let admin = free_port();
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["run", "--config"])
            .arg(config)
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(args)
            .env("PORTCULLIS_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("start portcullis");
        let gateway = Self { child, admin };
        let ready = format!("http://127.0.0.1:{admin}/ready");
        gateway
            .wait_until(|| async { get(&ready, &[]).await.is_ok_and(|(s, _)| s == 200) })
            .await;
        gateway
    }

    /// Polls `condition` every 50 ms for up to 20 s.
    pub async fn wait_until<F, Fut>(&self, condition: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if condition().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("condition not met within 20 s");
    }

    /// `GET` an admin path.
    pub async fn admin(&self, path: &str) -> (u16, String) {
        get(&format!("http://127.0.0.1:{}{path}", self.admin), &[])
            .await
            .expect("admin answers")
    }
}

impl Gateway {
    /// Sends SIGTERM to the process (by its PID).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    /// Waits up to `limit` for the process to exit; its exit code (`None`: still running,
    /// or killed by a signal).
    pub async fn exit_code(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 GET on a new connection; returns status and body.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> Result<(u16, String), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let authority = uri.authority().ok_or("no authority")?.to_string();
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&authority))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    let mut request = hyper::Request::get(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header("host", authority);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("{e}"))?;
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .map_err(|_| "request timed out".to_string())?
        .map_err(|e| format!("request: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// What [`send`] got back.
pub struct Answer {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

/// One HTTP/1.1 request with a method, headers and a body, on a new connection.
pub async fn send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Result<Answer, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let authority = uri.authority().ok_or("no authority")?.to_string();
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&authority))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    let mut request = hyper::Request::builder()
        .method(method)
        .uri(uri.path_and_query().map_or("/", |p| p.as_str()))
        .header("host", authority);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| format!("{e}"))?;
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .map_err(|_| "request timed out".to_string())?
        .map_err(|e| format!("request: {e}"))?;
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    Ok(Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Serves HTTP/1.1 and h2c on `listener`, answering every request with the body `answer`
/// makes from it and counting requests in `hits`.
fn spawn_server<F>(
    listener: TcpListener,
    hits: Arc<AtomicU64>,
    answer: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(&hyper::Request<hyper::body::Incoming>) -> Bytes + Clone + Send + Sync + 'static,
{
    tokio::spawn(async move {
        // The connections belong to the accept task: aborting it (dropping the Upstream)
        // closes them all, as a backend process that dies would.
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            while connections.try_join_next().is_some() {}
            let (hits, answer) = (hits.clone(), answer.clone());
            connections.spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    hits.fetch_add(1, Ordering::Relaxed);
                    let body = answer(&request);
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(body)))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// A Service `pair` (port 80) in `default` with one EndpointSlice per `(slice name, port)`,
/// each endpoint on 127.0.0.1: two endpoints of one backend on different ports.
pub fn pair_service_yaml(endpoints: &[(&str, u16)]) -> String {
    let slices: String = endpoints
        .iter()
        .map(|(name, target)| {
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
        })
        .collect();
    format!(
        "---
apiVersion: v1
kind: Service
metadata: {{name: pair}}
spec: {{ports: [{{port: 80}}]}}
{slices}"
    )
}

/// The value of the first sample whose line starts with `prefix`.
pub fn sample(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample {prefix} in\n{metrics}"))
}

/// Clients sending GETs in a loop (each on a new connection) until stopped, for at most
/// two minutes; they count answers with status 200 and everything else.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(url: &str, headers: &[(&'static str, &'static str)], clients: usize) -> Self {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let clients = (0..clients)
            .map(|_| {
                let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
                let (url, headers) = (url.to_string(), headers.to_vec());
                tokio::spawn(async move {
                    let deadline = Instant::now() + Duration::from_secs(120);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        match get(&url, &headers).await {
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
                })
            })
            .collect();
        Self {
            stop,
            ok,
            failed,
            clients,
        }
    }

    /// Requests answered 200 so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the clients; (answered 200, failed).
    pub async fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.await.expect("client task");
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}
