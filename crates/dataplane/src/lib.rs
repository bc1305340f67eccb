//! The data plane: serves whatever [`ir::Config`] it is handed.
//!
//! Stage: the last one of *sources → snapshot → translate → data plane*. Input: an
//! `Arc<ir::Config>` per reload ([`Dataplane::apply`]). Output: traffic. It binds the sockets
//! the config names, serves HTTP/1.1 and h2c (prior knowledge) on each of them, or terminates
//! TLS first where the bind's listeners have certificates (`tls.rs`: SNI picks the
//! certificate, ALPN picks HTTP/2 or HTTP/1.1), and runs every request through one readable
//! request path (`proxy::handle`): config snapshot, listener by Host (421 when it is not the
//! listener the SNI chose), route selection, filters, backend by weight, endpoint pool,
//! response filters, access log. gRPC calls go the same way; only the gateway's own errors
//! differ for them, as Trailers-Only answers with a gRPC status (`grpc.rs`). HTTP/1.1
//! WebSocket handshakes go the same way too, on a fresh upstream connection; after the
//! backend's 101 the connection's task relays bytes both ways (`upgrade.rs`).
//!
//! TLS passthrough, TLS terminate-and-relay and TCP listeners route whole connections instead
//! (`stream.rs`): the SNI of the ClientHello (`sni.rs`, read without losing it by `peek.rs`)
//! or the TCP listener's route picks a backend by weight, and bytes are relayed both ways;
//! a terminate listener first completes the handshake with its own certificate and relays
//! the decrypted bytes. A socket may mix HTTPS, passthrough and terminate listeners; the SNI
//! picks the most specific one per connection (`stream/route.rs`).
//!
//! Each request and each connection takes one config snapshot and keeps it, so a reload
//! never changes a request in flight or moves a relayed connection. Sockets are reconciled on
//! every reload: new bind addresses are bound, removed ones stop accepting while their open
//! connections finish, and the rest are untouched. Certificates are loaded once per config;
//! a socket whose kind changes (plain, TLS, passthrough, TCP) keeps listening, and each new
//! connection follows the config current when it is accepted.
//!
//! Must not depend on: `model`, `translate`, `sources`, kube.

mod authn;
mod balance;
mod body;
mod cors;
mod egress;
mod error;
mod ext_auth;
mod filters;
mod forward;
#[doc(hidden)]
pub mod fuzzing;
mod grpc;
mod health;
mod limits;
mod listener;
mod metrics;
mod mirror;
mod outlier;
mod peek;
mod proxy;
mod rate_limit;
mod redirect;
mod retry;
mod sni;
mod stream;
mod tls;
mod trace;
mod upgrade;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::task::JoinSet;

pub use balance::Algorithm as LoadBalancer;
pub use egress::{DecisionKey, OutboundSettings, Verdict};
pub use error::{EGRESS_ERROR_HEADER, Fault, ProxyError};
pub use trace::TracingOptions;

use forward::Upstreams;
use listener::Listener;
use mirror::Mirrors;

/// A handle to the data plane; clones share it. Dropping the last clone stops accepting.
#[derive(Clone)]
pub struct Dataplane {
    inner: Arc<Inner>,
}

/// Limits and timeouts that are not part of the routing config.
#[derive(Clone, Debug)]
pub struct Options {
    /// Time allowed to open a connection to an endpoint.
    pub connect_timeout: Duration,
    /// How long an idle upstream connection stays in its pool.
    pub pool_idle_timeout: Duration,
    /// Idle upstream connections kept per endpoint.
    pub pool_max_idle_per_endpoint: usize,
    /// Time allowed for a client to send a request's headers (HTTP/1.1).
    pub header_read_timeout: Duration,
    /// How long connections of a socket removed from the config may take to finish.
    pub drain_timeout: Duration,
    /// Largest request body copied to mirrors; larger requests are not mirrored.
    pub mirror_body_limit: usize,
    /// Mirror requests in flight at once; more are dropped (and counted).
    pub mirror_concurrency: usize,
    /// Time allowed for one mirror request.
    pub mirror_timeout: Duration,
    /// The listen backlog of each socket.
    pub listen_backlog: i32,
    /// Time allowed for a client to complete the TLS handshake on a TLS socket.
    pub tls_handshake_timeout: Duration,
    /// Time allowed for a client to send its whole ClientHello on a socket with TLS
    /// passthrough listeners, where the SNI decides where the connection goes.
    pub client_hello_timeout: Duration,
    /// Consecutive failures (failed connections, 502/503/504) that eject an endpoint.
    pub outlier_consecutive_failures: u32,
    /// How long a first ejection lasts; the n-th lasts n times as long (up to 10).
    pub outlier_base_ejection: Duration,
    /// Time allowed for an ExternalAuth service to answer; after it the request is denied.
    pub external_auth_timeout: Duration,
    /// The Redis that global rate limits count in (`redis://host:port`); without it they
    /// are not enforced.
    pub rate_limit_redis: Option<String>,
    /// How an endpoint of a backend is chosen.
    pub load_balancer: LoadBalancer,
    /// Client connections served at once, over all sockets; at the limit, new connections
    /// wait in the listen backlog.
    pub max_connections: usize,
    /// Streams an HTTP/2 client may have open at once on one connection.
    pub http2_max_concurrent_streams: u32,
    /// Where request spans are exported; `None`: tracing is off.
    pub tracing: Option<TracingOptions>,
    /// The runtime that serves traffic: listening sockets, connections, health probes and
    /// the span exporter live there. `None`: the runtime `Dataplane::new` and `apply` are
    /// called on. The binary gives the data plane a runtime of its own, so that reloads
    /// never hold up requests and one worker can be a single-threaded scheduler.
    pub runtime: Option<tokio::runtime::Handle>,
}

/// A bind address of the config that could not be bound. It is retried on the next
/// [`Dataplane::apply`].
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}")]
pub struct BindFailure {
    /// The `ir::Config::binds` key.
    pub addr: SocketAddr,
    /// Why binding failed.
    #[source]
    pub error: io::Error,
}

/// State shared by the handle, the accept loops and every request.
struct Shared {
    config: ArcSwap<ir::Config>,
    /// The certificates of `config`, loaded when it was applied; TLS handshakes read it.
    certificates: ArcSwap<tls::Certificates>,
    options: Options,
    upstreams: Upstreams,
    mirrors: Mirrors,
    /// Egress decisions so far.
    decisions: egress::Decisions,
    /// Requests by route and backend.
    requests: metrics::RequestMetrics,
    /// Tokens for retries.
    retry_budget: retry::Budget,
    /// AuthenticationPolicy checks.
    authenticator: authn::Authenticator,
    /// RateLimitPolicy counters.
    limiter: rate_limit::Limiter,
    /// The process-wide connection limit.
    connection_slots: limits::ConnectionSlots,
    /// HTTP/2 connections closed for cancelling too many of their streams early.
    reset_abuse: prometheus_client::metrics::counter::Counter,
    /// Request spans, when tracing is on.
    tracer: Option<trace::Tracer>,
}

struct Inner {
    shared: Arc<Shared>,
    sockets: Mutex<Sockets>,
}

/// The open sockets. Changed only under the lock, together with the config, so that the
/// sockets always match the current config.
#[derive(Default)]
struct Sockets {
    open: BTreeMap<SocketAddr, Listener>,
    /// Connections of removed sockets that are finishing.
    draining: JoinSet<()>,
    /// The outbound listeners' accept loops (transparent and explicit egress proxy); they
    /// stop at shutdown.
    outbound: JoinSet<()>,
    shut_down: bool,
}

// === impl Dataplane ===

impl Dataplane {
    /// Creates a data plane with an empty config; nothing listens until [`Dataplane::apply`].
    pub fn new(options: Options) -> Self {
        // Background tasks (the pool sweeper, the span exporter) run where traffic does.
        let serving = options.runtime.as_ref().map(tokio::runtime::Handle::enter);
        let upstreams = Upstreams::new(&options);
        let mirrors = Mirrors::new(upstreams.clone(), &options);
        let requests = metrics::RequestMetrics::default();
        requests.register_counter(
            "outlier_ejections",
            "Endpoints ejected after consecutive failures",
            upstreams.outliers.ejections.clone(),
        );
        requests.register_counter(
            "health_check_failures",
            "Failed active health-check probes",
            upstreams.health.failures.clone(),
        );
        requests.register_gauge(
            "endpoints_unhealthy",
            "Endpoints out of load balancing because they fail their health checks",
            upstreams.health.unhealthy.clone(),
        );
        let connection_slots = limits::ConnectionSlots::new(options.max_connections);
        requests.register_gauge(
            "connections_open",
            "Client connections being served, over all sockets",
            connection_slots.open_gauge(),
        );
        let reset_abuse = prometheus_client::metrics::counter::Counter::default();
        requests.register_counter(
            "http2_premature_reset_closes",
            "HTTP/2 connections closed for cancelling most of their streams right after opening them",
            reset_abuse.clone(),
        );
        let dropped_spans = prometheus_client::metrics::counter::Counter::default();
        requests.register_counter(
            "trace_spans_dropped",
            "Spans not exported: the export queue was full or the collector failed",
            dropped_spans.clone(),
        );
        let tracer = options.tracing.as_ref().and_then(|tracing| {
            trace::Tracer::start(tracing, dropped_spans)
                .inspect_err(|error| tracing::error!(%error, "tracing is off"))
                .ok()
        });
        drop(serving);
        let shared = Arc::new(Shared {
            config: ArcSwap::from_pointee(ir::Config::default()),
            certificates: ArcSwap::from_pointee(tls::Certificates::empty()),
            upstreams,
            mirrors,
            decisions: egress::Decisions::default(),
            requests,
            retry_budget: retry::Budget::default(),
            authenticator: authn::Authenticator::default(),
            limiter: rate_limit::Limiter::new(options.rate_limit_redis.clone()),
            connection_slots,
            reset_abuse,
            tracer,
            options,
        });
        Self {
            inner: Arc::new(Inner {
                shared,
                sockets: Mutex::default(),
            }),
        }
    }

    /// Swaps in a new config atomically and reconciles sockets: binds sockets for new
    /// `binds` keys, stops accepting on removed ones (existing connections finish), keeps
    /// the rest untouched. Returns the binds that failed (address + io error) so the caller
    /// can report them. After [`Dataplane::shutdown`] the config is stored but no socket is
    /// opened.
    pub async fn apply(&self, config: Arc<ir::Config>) -> Vec<BindFailure> {
        let shared = &self.inner.shared;
        let mut failures = Vec::new();
        // Parsing keys is the slow part of a reload; it happens before taking the lock.
        let certificates = Arc::new(tls::Certificates::load(
            Arc::clone(&config),
            &shared.certificates.load(),
        ));
        let removed = {
            let _serving = shared.enter();
            let mut sockets = self.sockets();
            while sockets.draining.try_join_next().is_some() {}
            if sockets.shut_down {
                shared.store(config, certificates);
                return failures;
            }
            // Bind first: a new socket queues connections but serves none before the new
            // config is stored below.
            let mut bound = Vec::new();
            for &addr in config.binds.keys() {
                if sockets.open.contains_key(&addr) {
                    continue;
                }
                match listener::bind(addr, shared.options.listen_backlog) {
                    Ok(socket) => bound.push((addr, socket)),
                    Err(error) => failures.push(BindFailure { addr, error }),
                }
            }
            let stale: Vec<SocketAddr> = sockets
                .open
                .keys()
                .filter(|addr| !config.binds.contains_key(addr))
                .copied()
                .collect();
            let removed: Vec<Listener> = stale
                .iter()
                .filter_map(|addr| sockets.open.remove(addr))
                .collect();
            shared
                .upstreams
                .health
                .reconcile(&config, &shared.upstreams);
            shared.store(config, certificates);
            for (addr, socket) in bound {
                match Listener::spawn(Arc::clone(shared), addr, socket) {
                    Ok(listener) => {
                        tracing::info!(%addr, local = %listener.local_addr(), "listening");
                        sockets.open.insert(addr, listener);
                    }
                    Err(error) => failures.push(BindFailure { addr, error }),
                }
            }
            removed
        };
        for failure in &failures {
            tracing::warn!(addr = %failure.addr, error = %failure.error, "cannot listen");
        }
        let drain_timeout = shared.options.drain_timeout;
        for listener in removed {
            let addr = listener.local_addr();
            if let Some(draining) = listener.stop().await {
                tracing::info!(%addr, "stopped listening");
                let _serving = shared.enter();
                self.sockets().draining.spawn(draining.drain(drain_timeout));
            }
        }
        failures
    }

    /// The current config snapshot.
    pub fn config(&self) -> Arc<ir::Config> {
        self.inner.shared.config.load_full()
    }

    /// The address actually bound for a `binds` key, if it is listening. It differs from the
    /// key when the key asks for port 0 (tests) or an unspecified address.
    pub fn local_addr(&self, bind: SocketAddr) -> Option<SocketAddr> {
        self.sockets().open.get(&bind).map(Listener::local_addr)
    }

    /// Stops accepting on every socket and lets in-flight requests finish for up to `grace`;
    /// connections still open after that are closed.
    pub async fn shutdown(&self, grace: Duration) {
        let (open, mut draining) = {
            let mut sockets = self.sockets();
            sockets.shut_down = true;
            sockets.outbound.abort_all();
            (
                std::mem::take(&mut sockets.open),
                std::mem::take(&mut sockets.draining),
            )
        };
        for listener in open.into_values() {
            if let Some(connections) = listener.stop().await {
                let _serving = self.inner.shared.enter();
                draining.spawn(connections.drain(grace));
            }
        }
        let all_done = async { while draining.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, all_done).await.is_err() {
            tracing::warn!("shutdown grace period over; closing remaining connections");
        }
        // Dropping the set aborts the drains still running, and with them their connections.
    }

    /// Serves the transparent outbound listener on `socket` (created inside the serving
    /// runtime, `Options::runtime`, so that its connections are driven there): connections that iptables
    /// redirected there are served for their original destination (`SO_ORIGINAL_DST`): as
    /// that socket of the config if there is one (a mesh Service address), otherwise as
    /// egress traffic of a workload in `settings.namespace`. Runs until [`Dataplane::shutdown`].
    pub fn serve_outbound(&self, socket: tokio::net::TcpListener, settings: OutboundSettings) {
        let task = egress::transparent_accept_loop(
            Arc::clone(&self.inner.shared),
            socket,
            Arc::new(settings),
        );
        let _serving = self.inner.shared.enter();
        self.sockets().outbound.spawn(task);
    }

    /// Serves the explicit egress proxy on `socket`: `CONNECT host:port` tunnels and
    /// absolute-form `http://` requests, resolved with `settings.resolve` first and enforced
    /// like transparent egress traffic. Runs until [`Dataplane::shutdown`].
    pub fn serve_egress_proxy(&self, socket: tokio::net::TcpListener, settings: OutboundSettings) {
        let task = egress::explicit_accept_loop(
            Arc::clone(&self.inner.shared),
            socket,
            Arc::new(settings),
        );
        let _serving = self.inner.shared.enter();
        self.sockets().outbound.spawn(task);
    }

    /// The request metrics (per route and backend), in the Prometheus text format.
    pub fn request_metrics(&self) -> String {
        self.inner.shared.requests.encode()
    }

    /// Egress decisions counted so far, by network, route, hostname and verdict.
    pub fn egress_decisions(&self) -> Vec<(DecisionKey, u64)> {
        self.inner.shared.decisions.snapshot()
    }

    /// Mirror copies dropped so far (body over the limit, no endpoint, too many in flight).
    pub fn mirror_drops(&self) -> u64 {
        self.inner.shared.mirrors.dropped()
    }

    fn sockets(&self) -> MutexGuard<'_, Sockets> {
        // The lock is never held across an await and guards no invariant a panic could break
        // halfway, so a poisoned lock is still usable.
        self.inner
            .sockets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Dataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dataplane")
            .field("binds", &self.sockets().open.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

// === impl Shared ===

impl Shared {
    /// Enters the serving runtime, if it is not the caller's: sockets created and tasks
    /// spawned while the guard lives belong to it.
    fn enter(&self) -> Option<tokio::runtime::EnterGuard<'_>> {
        self.options
            .runtime
            .as_ref()
            .map(tokio::runtime::Handle::enter)
    }

    /// Publishes a config and its certificates. Requests read `config`; accepting and
    /// handshakes read only `certificates`, which carries the config it was loaded for, so a
    /// handshake never pairs one config's listeners with another's keys.
    fn store(&self, config: Arc<ir::Config>, certificates: Arc<tls::Certificates>) {
        self.certificates.store(certificates);
        self.config.store(config);
    }
}

// === impl Options ===

impl Default for Options {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            pool_idle_timeout: Duration::from_secs(90),
            pool_max_idle_per_endpoint: 64,
            header_read_timeout: Duration::from_secs(30),
            drain_timeout: Duration::from_secs(30),
            mirror_body_limit: 64 * 1024,
            mirror_concurrency: 256,
            mirror_timeout: Duration::from_secs(10),
            listen_backlog: 1024,
            tls_handshake_timeout: Duration::from_secs(10),
            client_hello_timeout: Duration::from_secs(10),
            outlier_consecutive_failures: 5,
            outlier_base_ejection: Duration::from_secs(30),
            external_auth_timeout: Duration::from_secs(5),
            rate_limit_redis: None,
            load_balancer: LoadBalancer::default(),
            max_connections: 10_000,
            http2_max_concurrent_streams: 100,
            tracing: None,
            runtime: None,
        }
    }
}
