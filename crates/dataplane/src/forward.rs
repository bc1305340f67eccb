//! Upstream clients: one keep-alive pool per endpoint, HTTP/1.1 or h2c; backend choice by
//! weight and endpoint choice, shared by the HTTP path and connection-level routes.
//!
//! Cleartext HTTP/1.1, the common case, goes through our own per-endpoint pool (`pool`).
//! h2c and TLS go through hyper-util's legacy `Client`, which keeps its idle connections
//! keyed by scheme and authority; we always address an endpoint by its socket address, so
//! each endpoint gets its own pool. There is one such client for h2c and one per
//! BackendTLSPolicy setting that backends are reached with (`origination`).

mod direct;
pub(crate) mod h1;
mod origination;
mod pool;

use std::borrow::Cow;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use ir::{Backend, BackendProtocol, BackendTarget, TlsCertificate, WeightedBackend};
use tokio::net::TcpStream;

use crate::Options;
use crate::balance::{Algorithm, Loads};
use crate::body::ProxyBody;
use crate::error::{BoxError, ProxyError};
use crate::health::HealthChecks;
use crate::outlier::Outliers;

pub use direct::DirectBody;
pub(crate) use origination::system_roots;
use origination::{ClientKey, TlsConnection, TlsConnector};
pub use origination::{HandshakeError, SettingsError};

/// How many round-robin cursors are kept before they are forgotten. Backends come and go with
/// config reloads; forgetting a cursor only restarts its rotation.
const MAX_CURSORS: usize = 10_000;

/// How many TLS clients (distinct policy settings) are kept before they are all dropped.
/// Settings change only with reloads; a dropped client only costs new connections.
const MAX_TLS_CLIENTS: usize = 1_000;

/// The upstream clients, shared by every request (cheap to clone).
#[derive(Clone)]
pub struct Upstreams {
    http1: Arc<pool::Http1Pool>,
    h2c: Client<HttpConnector, ProxyBody>,
    /// Clients that originate TLS, one per distinct settings.
    tls: Arc<Mutex<HashMap<ClientKey, Client<TlsConnector, ProxyBody>>>>,
    /// What TLS clients are built from.
    connector: HttpConnector,
    builder: hyper_util::client::legacy::Builder,
    /// Round-robin position per backend name.
    cursors: Arc<Mutex<HashMap<Arc<str>, usize>>>,
    /// Passive health of the endpoints.
    pub outliers: Arc<Outliers>,
    /// Active health of the endpoints (HealthCheckPolicy).
    pub(crate) health: Arc<HealthChecks>,
    /// How endpoints are chosen, and their load.
    algorithm: Algorithm,
    loads: Arc<Loads>,
}

// === impl Upstreams ===

impl Upstreams {
    /// Builds both clients from the options.
    pub fn new(options: &Options) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(options.connect_timeout));
        connector.set_nodelay(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(options.pool_idle_timeout)
            .pool_max_idle_per_host(options.pool_max_idle_per_endpoint)
            // We always send a Host header of our own; never derive one from the endpoint.
            .set_host(false);
        let http1 = pool::Http1Pool::new(
            options.pool_max_idle_per_endpoint,
            options.pool_idle_timeout,
            options.connect_timeout,
        );
        let tls_builder = builder.clone();
        let h2c = builder.http2_only(true).build(connector.clone());
        Self {
            http1,
            h2c,
            tls: Arc::default(),
            connector,
            builder: tls_builder,
            cursors: Arc::default(),
            outliers: Arc::new(Outliers::new(
                options.outlier_consecutive_failures,
                options.outlier_base_ejection,
            )),
            algorithm: options.load_balancer,
            loads: Arc::default(),
            health: Arc::default(),
        }
    }

    /// Chooses an endpoint of `backend` (`balance.rs`), passing over ejected endpoints and
    /// those failing their health checks (all of them are used when none is left).
    pub fn endpoint(&self, backend: &Backend) -> Result<SocketAddr, ProxyError> {
        self.endpoint_avoiding(backend, &[])
    }

    /// Like [`Upstreams::endpoint`], but endpoints in `tried` (the ones a retried request
    /// already failed on) are chosen only when no other endpoint is healthy.
    pub fn endpoint_avoiding(
        &self,
        backend: &Backend,
        tried: &[SocketAddr],
    ) -> Result<SocketAddr, ProxyError> {
        let count = backend.endpoints.len();
        if count == 0 {
            return Err(ProxyError::NoEndpoints {
                backend: backend.name.to_string(),
            });
        }
        let usable = |addr: &SocketAddr| {
            !self.outliers.is_ejected(*addr) && !self.health.is_down(&backend.name, *addr)
        };
        if self.algorithm == Algorithm::PeakEwma {
            let mut healthy: Vec<SocketAddr> = backend
                .endpoints
                .iter()
                .map(|e| e.addr)
                .filter(usable)
                .collect();
            if healthy.iter().any(|addr| !tried.contains(addr)) {
                healthy.retain(|addr| !tried.contains(addr));
            }
            if healthy.is_empty() {
                healthy = backend.endpoints.iter().map(|e| e.addr).collect();
            }
            if let Some(chosen) = self.loads.choose(&healthy) {
                return Ok(chosen);
            }
        }
        let start = {
            // A poisoned map only holds counters; keep using it.
            let mut cursors = self.cursors.lock().unwrap_or_else(PoisonError::into_inner);
            if cursors.len() >= MAX_CURSORS && !cursors.contains_key(&backend.name) {
                cursors.clear();
            }
            let cursor = cursors.entry(backend.name.clone()).or_default();
            let start = *cursor;
            *cursor = cursor.wrapping_add(1);
            start
        };
        let in_turn = || {
            (0..count)
                .map(|offset| backend.endpoints[start.wrapping_add(offset) % count].addr)
                .filter(usable)
        };
        let healthy = in_turn()
            .find(|addr| !tried.contains(addr))
            .or_else(|| in_turn().next());
        Ok(healthy.unwrap_or(backend.endpoints[start % count].addr))
    }

    /// Sends `request` to `endpoint` over the protocol `backend` speaks, over TLS when a
    /// BackendTLSPolicy applies to it (presenting `client_certificate`, the Gateway's
    /// `spec.tls.backend` one, when set). The request target (path and query) is sent
    /// exactly as it is in `request`.
    pub async fn send(
        &self,
        backend: &Backend,
        client_certificate: Option<&Arc<TlsCertificate>>,
        endpoint: SocketAddr,
        request: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let in_flight = self.loads.start(endpoint);
        let response = self
            .exchange(backend, client_certificate, endpoint, request)
            .await;
        match &response {
            Ok(_) => in_flight.answered(),
            Err(error) if error.fault() == crate::error::Fault::Upstream => in_flight.failed(),
            Err(_) => {}
        }
        response
    }

    async fn exchange(
        &self,
        backend: &Backend,
        client_certificate: Option<&Arc<TlsCertificate>>,
        endpoint: SocketAddr,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let protocol = backend.protocol;
        if backend.tls.is_none() && protocol == BackendProtocol::Http1 {
            // Our pool sends the target as it is: origin-form.
            let target = request
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/"));
            *request.uri_mut() = Uri::from(target);
            *request.version_mut() = Version::HTTP_11;
            return self.http1.send(endpoint, request).await;
        }
        *request.uri_mut() = endpoint_uri(endpoint, request.uri())?;
        if let Some(tls) = &backend.tls {
            let key = ClientKey {
                tls: tls.clone(),
                client_certificate: client_certificate.cloned(),
                protocol,
            };
            let client = self.tls_client(key)?;
            *request.version_mut() = match protocol {
                BackendProtocol::Http1 => Version::HTTP_11,
                BackendProtocol::H2c => Version::HTTP_2,
            };
            return client
                .request(request)
                .await
                .map(|response| response.map(UpstreamBody::Hyper))
                .map_err(|error| ProxyError::from_client(endpoint, error));
        }
        *request.version_mut() = Version::HTTP_2;
        self.h2c
            .request(request)
            .await
            .map(|response| response.map(UpstreamBody::Hyper))
            .map_err(|error| ProxyError::from_client(endpoint, error))
    }
}

impl Upstreams {
    /// Opens a new connection to `endpoint` for an upgraded request (which never shares a
    /// pooled connection): TCP, then TLS when a BackendTLSPolicy applies to `backend`.
    pub async fn connect_unpooled(
        &self,
        backend: &Backend,
        client_certificate: Option<&Arc<TlsCertificate>>,
        endpoint: SocketAddr,
        limit: Duration,
    ) -> Result<UpstreamIo, ProxyError> {
        let Some(tls) = &backend.tls else {
            return Ok(UpstreamIo::Plain(hyper_util::rt::TokioIo::new(
                connect(endpoint, limit).await?,
            )));
        };
        let key = ClientKey {
            tls: tls.clone(),
            client_certificate: client_certificate.cloned(),
            protocol: BackendProtocol::Http1,
        };
        let mut connector = key
            .connector(self.connector.clone())
            .map_err(ProxyError::BackendTlsSettings)?;
        let destination = endpoint_uri(endpoint, &Uri::from_static("/"))?;
        match tokio::time::timeout(limit, TlsConnection::open(&mut connector, destination)).await {
            Ok(Ok(connection)) => Ok(UpstreamIo::Tls(Box::new(connection))),
            Ok(Err(error)) => Err(ProxyError::from_connect(endpoint, error)),
            Err(_) => Err(ProxyError::UpstreamConnect {
                endpoint,
                source: io::Error::new(io::ErrorKind::TimedOut, "TLS connect timed out").into(),
            }),
        }
    }

    /// The TLS client for `key`, built on first use.
    fn tls_client(&self, key: ClientKey) -> Result<Client<TlsConnector, ProxyBody>, ProxyError> {
        {
            // A poisoned map only holds clients; keep using it.
            let clients = self.tls.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(client) = clients.get(&key) {
                return Ok(client.clone());
            }
        }
        let connector = key
            .connector(self.connector.clone())
            .map_err(ProxyError::BackendTlsSettings)?;
        let mut builder = self.builder.clone();
        if key.protocol == BackendProtocol::H2c {
            builder.http2_only(true);
        }
        let client = builder.build(connector);
        let mut clients = self.tls.lock().unwrap_or_else(PoisonError::into_inner);
        if clients.len() >= MAX_TLS_CLIENTS {
            clients.clear();
        }
        Ok(clients.entry(key).or_insert(client).clone())
    }
}

/// The body of an upstream response: read by hyper's client, or by the direct exchange.
pub enum UpstreamBody {
    /// From hyper's client (h2c, TLS, and requests with a body).
    Hyper(Incoming),
    /// From the direct exchange (`direct.rs`).
    Direct(DirectBody),
}

impl http_body::Body for UpstreamBody {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, BoxError>>> {
        match self.get_mut() {
            Self::Hyper(body) => std::pin::Pin::new(body)
                .poll_frame(cx)
                .map_err(BoxError::from),
            Self::Direct(body) => std::pin::Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(body) => body.is_end_stream(),
            Self::Direct(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> http_body::SizeHint {
        match self {
            Self::Hyper(body) => body.size_hint(),
            Self::Direct(body) => body.size_hint(),
        }
    }
}

/// A connection opened by [`Upstreams::connect_unpooled`].
pub enum UpstreamIo {
    /// Cleartext.
    Plain(hyper_util::rt::TokioIo<TcpStream>),
    /// TLS under a BackendTLSPolicy.
    Tls(Box<TlsConnection>),
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => std::pin::Pin::new(io).poll_read(cx, buf),
            Self::Tls(io) => std::pin::Pin::new(io.as_mut()).poll_read(cx, buf),
        }
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(io) => std::pin::Pin::new(io).poll_write(cx, buf),
            Self::Tls(io) => std::pin::Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => std::pin::Pin::new(io).poll_flush(cx),
            Self::Tls(io) => std::pin::Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(io) => std::pin::Pin::new(io).poll_shutdown(cx),
            Self::Tls(io) => std::pin::Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Opens a new TCP connection to `endpoint` within `limit`, with `TCP_NODELAY`: for
/// connection-level routes and for upgraded requests, which never share a pooled connection.
pub async fn connect(endpoint: SocketAddr, limit: Duration) -> Result<TcpStream, ProxyError> {
    let stream = match tokio::time::timeout(limit, TcpStream::connect(endpoint)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) if error.kind() == io::ErrorKind::ConnectionRefused => {
            return Err(ProxyError::ConnectionRefused {
                endpoint,
                source: error.into(),
            });
        }
        Ok(Err(error)) => {
            return Err(ProxyError::UpstreamConnect {
                endpoint,
                source: error.into(),
            });
        }
        Err(_) => {
            let timed_out = io::Error::new(io::ErrorKind::TimedOut, "connect timed out");
            return Err(ProxyError::UpstreamConnect {
                endpoint,
                source: timed_out.into(),
            });
        }
    };
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%endpoint, %error, "setting TCP_NODELAY failed");
    }
    Ok(stream)
}

/// Picks a backendRef by weight and resolves it. An invalid one is an error: HTTP answers it
/// with 500, as the spec requires for "requests that would have been sent to an invalid
/// backend"; connection-level routes close the connection.
pub fn choose_backend(
    backends: &[WeightedBackend],
    original: Option<SocketAddr>,
) -> Result<(&WeightedBackend, Cow<'_, Backend>), ProxyError> {
    let chosen = pick_weighted(backends)?;
    match &chosen.target {
        BackendTarget::Service(backend) => Ok((chosen, Cow::Borrowed(&**backend))),
        BackendTarget::OriginalDestination => match original {
            Some(destination) => Ok((chosen, Cow::Owned(original_destination(destination)))),
            None => Err(ProxyError::InvalidBackend {
                reference: "EgressNetwork".into(),
                reason: "the original destination is only known for egress traffic".into(),
            }),
        },
        BackendTarget::Invalid(invalid) => Err(ProxyError::InvalidBackend {
            reference: invalid.reference.clone(),
            reason: invalid.reason.clone(),
        }),
    }
}

/// The backend of egress traffic sent on to where the client was connecting.
pub fn original_destination(destination: SocketAddr) -> Backend {
    Backend {
        name: format!("original-destination {destination}").into(),
        protocol: BackendProtocol::Http1,
        endpoints: vec![ir::Endpoint { addr: destination }],
        tls: None,
        health: None,
    }
}

/// Picks a backendRef with probability weight / total. Weight 0 is never picked; no positive
/// weight at all means the rule cannot forward.
fn pick_weighted(backends: &[WeightedBackend]) -> Result<&WeightedBackend, ProxyError> {
    let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
    if total == 0 {
        return Err(ProxyError::NoBackends);
    }
    let mut point = rand::random_range(0..total);
    for backend in backends {
        let weight = u64::from(backend.weight);
        if point < weight {
            return Ok(backend);
        }
        point -= weight;
    }
    Err(ProxyError::NoBackends)
}

/// `http://<endpoint><path and query>`: the authority picks the pool, the rest is sent as is.
fn endpoint_uri(endpoint: SocketAddr, original: &Uri) -> Result<Uri, ProxyError> {
    let target = original
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"));
    let invalid = || ProxyError::InvalidFilterResult {
        what: "request target",
        value: target.to_string(),
    };
    let authority = Authority::try_from(endpoint.to_string()).map_err(|_| invalid())?;
    Uri::builder()
        .scheme(Scheme::HTTP)
        .authority(authority)
        .path_and_query(target.clone())
        .build()
        .map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ir::{Endpoint, InvalidBackend};

    fn backend(ports: &[u16]) -> Backend {
        Backend {
            name: "ns/svc:80".into(),
            protocol: BackendProtocol::Http1,
            endpoints: ports
                .iter()
                .map(|&port| Endpoint {
                    addr: ([127, 0, 0, 1], port).into(),
                })
                .collect(),
            tls: None,
            health: None,
        }
    }

    fn weighted(weight: u32, name: &str) -> WeightedBackend {
        WeightedBackend {
            weight,
            target: BackendTarget::Invalid(InvalidBackend {
                reference: name.into(),
                reason: String::new(),
            }),
            request_headers: None,
            response_headers: None,
        }
    }

    fn name(backend: &WeightedBackend) -> &str {
        match &backend.target {
            BackendTarget::Invalid(invalid) => &invalid.reference,
            BackendTarget::Service(service) => &service.name,
            BackendTarget::OriginalDestination => "original destination",
        }
    }

    #[test]
    fn zero_weight_is_never_chosen() {
        let backends = [weighted(0, "zero"), weighted(1, "one")];
        for _ in 0..1000 {
            assert_eq!(pick_weighted(&backends).map(name).ok(), Some("one"));
        }
    }

    #[test]
    fn all_zero_or_none_is_an_error() {
        assert!(matches!(
            pick_weighted(&[weighted(0, "a"), weighted(0, "b")]),
            Err(ProxyError::NoBackends)
        ));
        assert!(matches!(pick_weighted(&[]), Err(ProxyError::NoBackends)));
        assert!(matches!(
            choose_backend(&[weighted(1, "invalid")], None),
            Err(ProxyError::InvalidBackend { .. })
        ));
    }

    #[test]
    fn original_destination_is_known_only_for_egress() {
        let original = [WeightedBackend {
            weight: 1,
            target: BackendTarget::OriginalDestination,
            request_headers: None,
            response_headers: None,
        }];
        assert!(matches!(
            choose_backend(&original, None),
            Err(ProxyError::InvalidBackend { .. })
        ));
        let destination: SocketAddr = "127.0.0.1:4443".parse().expect("address");
        let (_, backend) = choose_backend(&original, Some(destination)).expect("chosen");
        assert_eq!(backend.endpoints, vec![ir::Endpoint { addr: destination }]);
    }

    #[tokio::test]
    async fn endpoints_rotate_round_robin() {
        let upstreams = Upstreams::new(&Options {
            load_balancer: crate::LoadBalancer::RoundRobin,
            ..Options::default()
        });
        let backend = backend(&[1, 2, 3]);
        let ports: Vec<u16> = (0..6)
            .filter_map(|_| upstreams.endpoint(&backend).ok())
            .map(|addr| addr.port())
            .collect();
        assert_eq!(ports, [1, 2, 3, 1, 2, 3]);
    }

    #[tokio::test]
    async fn no_endpoints_is_an_error() {
        let upstreams = Upstreams::new(&Options::default());
        let error = upstreams.endpoint(&backend(&[]));
        assert!(matches!(error, Err(ProxyError::NoEndpoints { .. })));
    }

    #[test]
    fn target_is_kept_byte_for_byte() {
        let original: Uri = "/a/%2F/b?x=1&&y".parse().expect("valid target");
        let uri = endpoint_uri(([10, 0, 0, 1], 8080).into(), &original);
        assert_eq!(
            uri.ok().map(|u| u.to_string()).as_deref(),
            Some("http://10.0.0.1:8080/a/%2F/b?x=1&&y")
        );
    }
}
