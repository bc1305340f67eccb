//! Test upstreams, a test client, and builders for hand-made `ir::Config`s.
//!
//! The echo upstream answers every request with JSON describing what it received (backend
//! name, method, target, host, version, headers, body) and reports the same to the test
//! through a channel, so mirrors and in-flight requests can be observed without sleeping.

pub mod grpc;
pub mod stream;
pub mod tls;
pub mod websocket;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dataplane::{Dataplane, Options};
use http::{HeaderMap, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use ir::{
    Action, Backend, BackendProtocol, BackendTarget, Candidate, Endpoint, HostnameMatch,
    HttpListener, HttpMatch, PathMatch, RedirectScheme, RequestFilters, RouteId, RouteKind,
    RouteTable, Rule, Timeouts, WeightedBackend,
};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// How long a test waits for something that should happen promptly.
pub const PATIENCE: Duration = Duration::from_secs(5);

/// The config key every single-socket test uses: an ephemeral port on loopback.
pub const BIND: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

// === upstreams ===

/// An in-process echo server.
pub struct Upstream {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its name, echoed as `backend`.
    pub name: String,
    seen: mpsc::UnboundedReceiver<Value>,
}

impl Upstream {
    /// Starts an echo upstream that answers at once.
    pub async fn echo(name: &str) -> Self {
        Self::start(name, Duration::ZERO).await
    }

    /// Starts an echo upstream that waits `delay` before answering (after reporting the
    /// request to the test).
    pub async fn start(name: &str, delay: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream address");
        let (tx, seen) = mpsc::unbounded_channel();
        let backend = name.to_string();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let tx = tx.clone();
                let backend = backend.clone();
                let service =
                    service_fn(move |request| echo(backend.clone(), delay, tx.clone(), request));
                tokio::spawn(async move {
                    let builder = auto::Builder::new(TokioExecutor::new());
                    let _ = builder
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            name: name.to_string(),
            seen,
        }
    }

    /// The next request this upstream received, as echoed.
    pub async fn next_request(&mut self) -> Value {
        tokio::time::timeout(PATIENCE, self.seen.recv())
            .await
            .expect("upstream received nothing in time")
            .expect("upstream stopped")
    }

    /// A backend whose only endpoint is this upstream.
    pub fn backend(&self) -> Arc<Backend> {
        backend(&self.name, BackendProtocol::Http1, &[self.addr])
    }
}

async fn echo(
    backend: String,
    delay: Duration,
    seen: mpsc::UnboundedSender<Value>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers.entry(name.to_string()).or_default().push(value);
    }
    let host = parts
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| parts.uri.authority().map(ToString::to_string));
    let echoed = json!({
        "backend": backend,
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "host": host,
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body": String::from_utf8_lossy(&body),
    });
    let _ = seen.send(echoed.clone());
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mut response = Response::new(Full::new(Bytes::from(echoed.to_string())));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    if parts.version == Version::HTTP_11 {
        // Hop-by-hop headers on the way back, which the gateway must remove.
        let headers = response.headers_mut();
        headers.insert(
            "connection",
            http::HeaderValue::from_static("x-upstream-hop"),
        );
        headers.insert("x-upstream-hop", http::HeaderValue::from_static("1"));
        headers.insert("keep-alive", http::HeaderValue::from_static("timeout=5"));
    }
    Ok(response)
}

/// A loopback port that nothing listens on (bound, then released).
pub fn unused_port() -> u16 {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").expect("bind probe");
    socket.local_addr().expect("probe address").port()
}

// === gateway and client ===

/// A running data plane with one socket.
pub struct Gateway {
    /// The data plane.
    pub dataplane: Dataplane,
    /// Where the `BIND` socket actually listens.
    pub addr: SocketAddr,
}

impl Gateway {
    /// Starts a data plane serving `config`, which must bind [`BIND`].
    pub async fn start(config: ir::Config) -> Self {
        Self::with_options(Options::default(), config).await
    }

    /// Starts a data plane with `options` serving `config`, which must bind [`BIND`].
    pub async fn with_options(options: Options, config: ir::Config) -> Self {
        let dataplane = Dataplane::new(options);
        let failures = dataplane.apply(Arc::new(config)).await;
        assert!(failures.is_empty(), "bind failures: {failures:?}");
        let addr = dataplane.local_addr(BIND).expect("BIND is listening");
        Self { dataplane, addr }
    }

    /// `GET http://host/target` over HTTP/1.1.
    pub async fn get(&self, host: &str, target: &str) -> Answer {
        send(
            self.addr,
            request("GET", host, target).body(Full::default()),
        )
        .await
    }
}

/// A response with its body read.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
}

impl Answer {
    /// The body as echoed JSON.
    pub fn echoed(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not an echo ({}): {:?}", self.status, self.body))
    }

    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A request builder with `Host` set, for [`send`].
pub fn request(method: &str, host: &str, target: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(target)
        .header(http::header::HOST, host)
}

/// Sends a request over HTTP/1.1 to `addr`.
pub async fn send(addr: SocketAddr, request: http::Result<Request<Full<Bytes>>>) -> Answer {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut request = request.expect("valid request");
    let target = request.uri().path_and_query().map_or("/", |p| p.as_str());
    *request.uri_mut() = format!("http://{addr}{target}").parse().expect("valid uri");
    exchange(&client, request).await
}

/// Sends a request over HTTP/2 with prior knowledge to `addr`, naming `authority` in
/// `:authority` (and sending no `Host` header).
pub async fn send_h2c(addr: SocketAddr, authority: &str, target: &str) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to gateway");
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(connection);
    let request = Request::builder()
        .uri(format!("http://{authority}{target}"))
        .version(Version::HTTP_2)
        .body(Full::<Bytes>::default())
        .expect("valid request");
    let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .expect("gateway answered in time")
        .expect("gateway answered");
    read(response).await
}

async fn exchange(
    client: &Client<HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Answer {
    let response = tokio::time::timeout(PATIENCE, client.request(request))
        .await
        .expect("gateway answered in time")
        .expect("gateway answered");
    read(response).await
}

/// Reads a response and its whole body.
pub async fn read(response: Response<Incoming>) -> Answer {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

// === config builders ===

/// A backend named `name` with `endpoints`.
pub fn backend(name: &str, protocol: BackendProtocol, endpoints: &[SocketAddr]) -> Arc<Backend> {
    Arc::new(Backend {
        name: name.into(),
        protocol,
        endpoints: endpoints.iter().map(|&addr| Endpoint { addr }).collect(),
        tls: None,
        health: None,
    })
}

/// A backendRef with `weight` and no filters.
pub fn weighted(weight: u32, backend: Arc<Backend>) -> WeightedBackend {
    WeightedBackend {
        weight,
        target: BackendTarget::Service(backend),
        request_headers: None,
        response_headers: None,
    }
}

/// A rule named `name` forwarding to `backends`.
pub fn forward(name: &str, backends: Vec<WeightedBackend>) -> Rule {
    rule(name, Action::Forward(backends))
}

/// A rule named `name` with `action` and no filters or timeouts.
pub fn rule(name: &str, action: Action) -> Rule {
    Rule {
        id: RouteId {
            kind: RouteKind::Http,
            namespace: "default".into(),
            name: name.into(),
            rule: 0,
            rule_name: None,
        },
        filters: RequestFilters::default(),
        action,
        timeouts: Timeouts::default(),
        retry: None,
        policies: Default::default(),
    }
}

/// A route match: `hostname` (or any) and `path`, selecting `rule`.
pub fn route(hostname: Option<&str>, path: PathMatch, rule: Rule) -> Candidate {
    Candidate {
        hostname: hostname.map(HostnameMatch::parse),
        matcher: HttpMatch {
            path,
            ..HttpMatch::default()
        },
        rule: Arc::new(rule),
        route_rank: 0,
        match_index: 0,
    }
}

/// An `http` listener declared on port 80.
pub fn listener(hostname: Option<&str>, routes: Vec<Candidate>) -> Arc<HttpListener> {
    Arc::new(HttpListener {
        gateway: "default/gateway".into(),
        name: hostname.unwrap_or("http").into(),
        hostname: hostname.map(HostnameMatch::parse),
        port: 80,
        scheme: RedirectScheme::Http,
        routes: RouteTable::new(routes),
        tls: None,
        client_validation: None,
        backend_client_certificate: None,
    })
}

/// A config with one bind, `key`, serving `listeners`.
pub fn config_at(key: SocketAddr, listeners: Vec<Arc<HttpListener>>) -> ir::Config {
    let mut bind = ir::Bind {
        http: listeners,
        ..ir::Bind::default()
    };
    bind.sort_listeners();
    ir::Config {
        binds: BTreeMap::from([(key, bind)]),
        ..ir::Config::default()
    }
}

/// A config binding [`BIND`] with `listeners`.
pub fn config(listeners: Vec<Arc<HttpListener>>) -> ir::Config {
    config_at(BIND, listeners)
}

/// The simplest config: any host, any path, to `upstream`.
pub fn everything_to(upstream: &Upstream) -> ir::Config {
    let rule = forward("all", vec![weighted(1, upstream.backend())]);
    config(vec![listener(
        None,
        vec![route(None, PathMatch::prefix("/"), rule)],
    )])
}
