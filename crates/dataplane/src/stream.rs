//! Connection-level routing: TLS passthrough and TLS terminate-and-relay (by the
//! ClientHello's SNI), and TCP.
//!
//! These listeners route whole connections. The accept loop takes one config snapshot per
//! connection and hands it here; the connection then gets one route, one backend chosen by
//! weight, one endpoint (round robin, as for HTTP), and from then on its bytes are copied
//! both ways, uninterpreted, until both sides have closed (a half-close is passed on). A
//! reload never touches an established connection: it stays on its backend, and only new
//! connections see the new config.
//!
//! A connection that cannot be routed is closed before anything reaches a backend, without a
//! TLS alert: the client sees the connection end during its handshake. RFC 6066 §3 allows a
//! server to continue or to refuse an unknown name; the Gateway API conformance suite
//! (`tls-connection-rejected`, as Go's client reports it) expects the refusal to be an EOF or
//! a reset, which is also what Envoy does for an unmatched filter chain.
//!
//! A TLS listener with `tls.mode: Terminate` ([`relay_terminated`]) runs the handshake with
//! its own certificate and relays the decrypted bytes to a plain TCP backend. Its route and
//! backend are chosen before the handshake, so a name or route that cannot be served is
//! refused in the same way, without a handshake.
//!
//! Which listener takes a connection on a socket with TLS listeners (HTTPS, passthrough and
//! terminate-and-relay ones, possibly on one port: TLSRouteModeMixed) is decided by
//! [`route_tls`].

mod route;

use std::net::SocketAddr;
use std::time::Instant;

use ir::{Hostname, StreamRoute, TcpListener, TlsPassthroughListener, TlsTerminateListener};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::Shared;
use crate::error::{Fault, ProxyError};
use crate::forward;
use crate::outlier::Outcome;
use crate::peek::{ClientHello, Rewind};
use crate::tls::{self, HandshakeError};

pub use route::{TlsRoute, route_tls};

/// The addresses of an accepted connection.
#[derive(Clone, Copy, Debug)]
pub struct Accepted {
    /// The `ir::Config::binds` key of the socket that accepted it.
    pub bind: SocketAddr,
    /// The client's address.
    pub client: SocketAddr,
}

/// Serves a connection on a socket with a TCP listener: its first route (translate orders
/// TCPRoutes oldest first), a backend by weight, then bytes both ways.
pub async fn serve_tcp<C>(shared: &Shared, accepted: Accepted, listener: &TcpListener, client: C)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let mut log = StreamLog::new(accepted, "TCP");
    log.listener(&listener.gateway, &listener.name);
    let routed = async {
        let route = listener.routes.first().ok_or(ProxyError::NoRoute)?;
        log.route(route);
        let (upstream, endpoint) = connect(shared, route, &mut log).await?;
        splice(client, upstream, endpoint, &[], &mut log).await
    };
    if let Err(error) = routed.await {
        log.fail(&error);
    }
    log.record();
}

/// Passes a TLS connection through to a backend of `route`: the ClientHello already read
/// goes first, then bytes both ways.
pub async fn pass_through(
    shared: &Shared,
    accepted: Accepted,
    mut client: TcpStream,
    hello: ClientHello,
    listener: &TlsPassthroughListener,
    route: &StreamRoute,
) {
    let mut log = StreamLog::new(accepted, "TLS");
    log.listener(&listener.gateway, &listener.name);
    log.server_name = hello.server_name;
    log.route(route);
    let result = match connect(shared, route, &mut log).await {
        Ok((upstream, endpoint)) => {
            splice(client, upstream, endpoint, &hello.bytes, &mut log).await
        }
        Err(error) => {
            close(&mut client).await;
            Err(error)
        }
    };
    if let Err(error) = result {
        log.fail(&error);
    }
    log.record();
}

/// Serves a connection that [`route_tls`] gave to a terminate-and-relay listener: chooses a
/// backend of `route` by weight and an endpoint, completes the TLS handshake with `acceptor`
/// (the listener's certificate, replaying the ClientHello already read), connects to the
/// endpoint in plain TCP, and relays the decrypted bytes both ways.
///
/// A route that cannot forward (no backend of non-zero weight, an invalid backend, no
/// endpoints) refuses the connection before the handshake, like a name without a route. An
/// endpoint that cannot be reached is only found out after it: the connection is then closed
/// without `close_notify`, so the client sees it truncated rather than ended.
pub async fn relay_terminated(
    shared: &Shared,
    accepted: Accepted,
    mut client: TcpStream,
    hello: ClientHello,
    acceptor: &TlsAcceptor,
    (listener, route): (&TlsTerminateListener, &StreamRoute),
) {
    let mut log = StreamLog::new(accepted, "TLS");
    log.listener(&listener.gateway, &listener.name);
    let ClientHello { bytes, server_name } = hello;
    log.server_name = server_name;
    log.route(route);
    let endpoint = match choose_endpoint(shared, route, &mut log) {
        Ok(endpoint) => endpoint,
        Err(error) => {
            close(&mut client).await;
            log.fail(&error);
            return log.record();
        }
    };
    let limit = shared.options.tls_handshake_timeout;
    let tls = match tls::handshake(acceptor, Rewind::new(bytes, client), limit).await {
        Ok((tls, _)) => tls,
        Err(error) => {
            log.handshake_failed(&error);
            return log.record();
        }
    };
    let relayed = match forward::connect(endpoint, shared.options.connect_timeout).await {
        Ok(upstream) => splice(tls, upstream, endpoint, &[], &mut log).await,
        // `tls` is dropped here, which closes the socket without `close_notify`.
        Err(error) => Err(error),
    };
    if let Err(error) = relayed {
        log.fail(&error);
    }
    log.record();
}

/// Closes a TLS connection that [`route_tls`] refused.
pub async fn refuse(
    accepted: Accepted,
    mut client: TcpStream,
    hello: ClientHello,
    error: ProxyError,
) {
    close(&mut client).await;
    let mut log = StreamLog::new(accepted, "TLS");
    log.server_name = hello.server_name;
    log.fail(&error);
    log.record();
}

// === helpers ===

/// Chooses a backend of `route` by weight and an endpoint of it, and connects within
/// `Options::connect_timeout`.
async fn connect(
    shared: &Shared,
    route: &StreamRoute,
    log: &mut StreamLog,
) -> Result<(TcpStream, SocketAddr), ProxyError> {
    let endpoint = choose_endpoint(shared, route, log)?;
    let connected = forward::connect(endpoint, shared.options.connect_timeout).await;
    let outcome = match &connected {
        Ok(_) => Outcome::Healthy,
        Err(_) => Outcome::Failed,
    };
    shared.upstreams.outliers.report(endpoint, outcome);
    Ok((connected?, endpoint))
}

/// Chooses a backend of `route` by weight, and an endpoint of it.
fn choose_endpoint(
    shared: &Shared,
    route: &StreamRoute,
    log: &mut StreamLog,
) -> Result<SocketAddr, ProxyError> {
    let (_, backend) = forward::choose_backend(&route.backends, None)?;
    log.backend = Some(backend.name.to_string());
    let endpoint = shared.upstreams.endpoint(&backend)?;
    log.endpoint = Some(endpoint);
    Ok(endpoint)
}

/// Writes `first` (bytes already read from the client) upstream, then copies both ways until
/// both sides are closed. When one side closes its sending half, the other side's sending
/// half is shut down too and the other direction goes on (`copy_bidirectional`).
pub(crate) async fn splice<C>(
    mut client: C,
    mut upstream: TcpStream,
    endpoint: SocketAddr,
    first: &[u8],
    log: &mut StreamLog,
) -> Result<(), ProxyError>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    if !first.is_empty() {
        upstream
            .write_all(first)
            .await
            .map_err(|error| ProxyError::Upstream {
                endpoint,
                source: error.into(),
            })?;
        log.received = u64::try_from(first.len()).unwrap_or(u64::MAX);
    }
    match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
        Ok((received, sent)) => {
            log.received += received;
            log.sent = sent;
        }
        // A reset from either side is how many connections end; it is logged, not an error
        // of the gateway.
        Err(error) => log.error = Some(format!("connection ended: {error}")),
    }
    Ok(())
}

/// Closes our sending half; the client sees EOF in the middle of its handshake. An error
/// means the client is gone already.
async fn close(client: &mut TcpStream) {
    let _ = client.shutdown().await;
}

// === impl StreamLog ===

/// The access-log line of one connection, filled in as it is routed.
pub(crate) struct StreamLog {
    started: Instant,
    client: SocketAddr,
    bind: SocketAddr,
    protocol: &'static str,
    listener: Option<String>,
    server_name: Option<Hostname>,
    route: Option<String>,
    backend: Option<String>,
    endpoint: Option<SocketAddr>,
    received: u64,
    sent: u64,
    error: Option<String>,
    fault: Option<Fault>,
}

impl StreamLog {
    pub(crate) fn set_listener(&mut self, label: &str) {
        self.listener = Some(label.to_string());
    }

    pub(crate) fn set_server_name(&mut self, server_name: Option<Hostname>) {
        self.server_name = server_name;
    }

    pub(crate) fn server_name(&self) -> Option<&Hostname> {
        self.server_name.as_ref()
    }

    pub(crate) fn set_route(&mut self, route: &StreamRoute) {
        self.route(route);
    }

    /// Names an implicit route (an egress network's traffic policy).
    pub(crate) fn set_route_name(&mut self, name: &str) {
        self.route = Some(name.to_string());
    }

    pub(crate) fn set_backend(&mut self, name: &str) {
        self.backend = Some(name.to_string());
    }

    pub(crate) fn set_endpoint(&mut self, endpoint: SocketAddr) {
        self.endpoint = Some(endpoint);
    }

    pub(crate) fn new(accepted: Accepted, protocol: &'static str) -> Self {
        Self {
            started: Instant::now(),
            client: accepted.client,
            bind: accepted.bind,
            protocol,
            listener: None,
            server_name: None,
            route: None,
            backend: None,
            endpoint: None,
            received: 0,
            sent: 0,
            error: None,
            fault: None,
        }
    }

    fn listener(&mut self, gateway: &str, name: &str) {
        self.listener = Some(format!("{gateway}/{name}"));
    }

    fn route(&mut self, route: &StreamRoute) {
        let id = &route.id;
        self.route = Some(format!("{}/{}#{}", id.namespace, id.name, id.rule));
    }

    pub(crate) fn fail(&mut self, error: &ProxyError) {
        self.error = Some(error.to_string());
        self.fault = Some(error.fault());
    }

    /// A failed handshake is the client's doing (a scanner, a client that distrusts the
    /// certificate, one that went away); it is not a [`ProxyError`], which is about routing.
    fn handshake_failed(&mut self, error: &HandshakeError) {
        let cause = std::error::Error::source(error).map(ToString::to_string);
        self.error = Some(match cause {
            Some(cause) => format!("{error}: {cause}"),
            None => error.to_string(),
        });
        self.fault = Some(Fault::Client);
    }

    pub(crate) fn record(&self) {
        tracing::info!(
            target: "portcullis::access",
            client = %self.client,
            bind = %self.bind,
            protocol = self.protocol,
            listener = self.listener.as_deref().unwrap_or("-"),
            tls_server_name = self.server_name.as_ref().map(Hostname::as_str),
            route = self.route.as_deref().unwrap_or("-"),
            backend = self.backend.as_deref().unwrap_or("-"),
            endpoint = ?self.endpoint,
            bytes_received = self.received,
            bytes_sent = self.sent,
            error = self.error.as_deref().unwrap_or("-"),
            fault = ?self.fault,
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
        );
    }
}
