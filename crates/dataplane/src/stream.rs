//! Connection-level routing: TLS passthrough (by the ClientHello's SNI) and TCP.
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
//! Which connections on a mixed socket (HTTPS and TLS passthrough listeners on one port,
//! TLSRouteModeMixed) are passed through is decided by [`route_tls`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ir::{Hostname, HostnameMatch, StreamRoute, TcpListener, TlsPassthroughListener};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::Shared;
use crate::error::{Fault, ProxyError};
use crate::forward;
use crate::peek::ClientHello;

/// The addresses of an accepted connection.
#[derive(Clone, Copy, Debug)]
pub struct Accepted {
    /// The `ir::Config::binds` key of the socket that accepted it.
    pub bind: SocketAddr,
    /// The client's address.
    pub client: SocketAddr,
}

/// Where a TLS connection goes on a socket with passthrough listeners.
#[derive(Debug)]
pub enum TlsRoute<'b> {
    /// Pass the connection through to a backend of `route`.
    PassThrough {
        /// The listener the SNI selected.
        listener: &'b Arc<TlsPassthroughListener>,
        /// Its route for the SNI.
        route: &'b Arc<StreamRoute>,
    },
    /// Terminate TLS with the bind's HTTPS listeners and serve HTTP.
    Terminate,
    /// Close the connection: no listener, or no route of the selected listener, takes it.
    Refuse(ProxyError),
}

/// Decides where a TLS connection on `bind` goes by its SNI.
///
/// The most specific listener that matches the SNI serves the connection, whichever its
/// protocol, just as the most specific HTTP listener serves a request (listener isolation,
/// GEP-1713): an HTTPS listener for `a.example.com` is not shadowed by a passthrough
/// listener without hostname on the same port. On a tie the passthrough listener wins.
/// A passthrough listener that wins but has no route for the SNI refuses the connection
/// rather than handing it to a less specific HTTPS listener, as a request that its listener
/// cannot route gets 404. Without SNI, only listeners without hostname match.
pub fn route_tls<'b>(bind: &'b ir::Bind, server_name: Option<&Hostname>) -> TlsRoute<'b> {
    let sni = server_name.map(Hostname::as_str);
    let terminating = bind.http.iter().any(|listener| listener.tls.is_some());
    let https = bind
        .http
        .iter()
        .filter(|listener| listener.tls.is_some())
        .filter_map(|listener| match (&listener.hostname, sni) {
            (None, _) => Some((0, 0)),
            (Some(pattern), Some(sni)) if pattern.matches(sni) => Some(pattern.specificity()),
            _ => None,
        })
        .max();
    let passthrough = bind.passthrough_for(sni).filter(|listener| {
        let specificity = listener
            .hostname
            .as_ref()
            .map_or((0, 0), HostnameMatch::specificity);
        https.is_none_or(|https| specificity >= https)
    });
    match passthrough {
        Some(listener) => match listener.select(sni) {
            Some(route) => TlsRoute::PassThrough { listener, route },
            None => TlsRoute::Refuse(ProxyError::NoRoute),
        },
        // The HTTPS listeners decide, as on a socket without passthrough listeners: the
        // certificate resolver fails the handshake of an SNI that none of them takes.
        None if terminating => TlsRoute::Terminate,
        None => TlsRoute::Refuse(ProxyError::NoListener {
            host: sni.unwrap_or_default().to_string(),
        }),
    }
}

/// Serves a connection on a socket with a TCP listener: its first route (translate orders
/// TCPRoutes oldest first), a backend by weight, then bytes both ways.
pub async fn serve_tcp(
    shared: &Shared,
    accepted: Accepted,
    listener: &TcpListener,
    client: TcpStream,
) {
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
    let (_, backend) = forward::choose_backend(&route.backends)?;
    log.backend = Some(backend.name.clone());
    let endpoint = shared.upstreams.endpoint(backend)?;
    log.endpoint = Some(endpoint);
    let stream = forward::connect(endpoint, shared.options.connect_timeout).await?;
    Ok((stream, endpoint))
}

/// Writes `first` (bytes already read from the client) upstream, then copies both ways until
/// both sides are closed. When one side closes its sending half, the other side's sending
/// half is shut down too and the other direction goes on (`copy_bidirectional`).
async fn splice(
    mut client: TcpStream,
    mut upstream: TcpStream,
    endpoint: SocketAddr,
    first: &[u8],
    log: &mut StreamLog,
) -> Result<(), ProxyError> {
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
struct StreamLog {
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
    fn new(accepted: Accepted, protocol: &'static str) -> Self {
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

    fn fail(&mut self, error: &ProxyError) {
        self.error = Some(error.to_string());
        self.fault = Some(error.fault());
    }

    fn record(&self) {
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

#[cfg(test)]
mod tests {
    use ir::{HttpListener, RedirectScheme, RouteId, RouteKind, RouteTable, TlsCertificate};

    use super::*;

    fn https(hostname: Option<&str>) -> Arc<HttpListener> {
        Arc::new(HttpListener {
            gateway: "ns/gateway".into(),
            name: hostname.unwrap_or("https").into(),
            hostname: hostname.map(HostnameMatch::parse),
            port: 443,
            scheme: RedirectScheme::Https,
            routes: RouteTable::new(Vec::new()),
            tls: Some(Arc::new(TlsCertificate {
                source: "ns/cert".into(),
                chain_pem: Vec::new(),
                key_pem: Vec::new(),
            })),
        })
    }

    fn passthrough(hostname: Option<&str>, routes: &[&[&str]]) -> Arc<TlsPassthroughListener> {
        let routes = routes
            .iter()
            .enumerate()
            .map(|(index, hostnames)| {
                Arc::new(StreamRoute {
                    id: RouteId {
                        kind: RouteKind::Tls,
                        namespace: "ns".into(),
                        name: format!("route-{index}"),
                        rule: 0,
                        rule_name: None,
                    },
                    hostnames: hostnames.iter().map(|h| HostnameMatch::parse(h)).collect(),
                    backends: Vec::new(),
                })
            })
            .collect();
        Arc::new(TlsPassthroughListener {
            gateway: "ns/gateway".into(),
            name: hostname.unwrap_or("passthrough").into(),
            hostname: hostname.map(HostnameMatch::parse),
            routes,
        })
    }

    /// What `route_tls` decides, as text: `pass <listener> <route>`, `terminate`, or the
    /// refusal.
    fn decide(bind: &ir::Bind, sni: Option<&str>) -> String {
        let sni = sni.and_then(Hostname::from_request_host);
        match route_tls(bind, sni.as_ref()) {
            TlsRoute::PassThrough { listener, route } => {
                format!("pass {} {}", listener.name, route.id.name)
            }
            TlsRoute::Terminate => "terminate".into(),
            TlsRoute::Refuse(error) => format!("refuse: {error}"),
        }
    }

    #[test]
    fn passthrough_only_sockets_route_or_refuse() {
        let bind = ir::Bind {
            tls_passthrough: vec![passthrough(
                Some("*.example.com"),
                &[&["a.example.com"], &["b.example.com"]],
            )],
            ..ir::Bind::default()
        };
        assert_eq!(
            decide(&bind, Some("a.example.com")),
            "pass *.example.com route-0"
        );
        assert_eq!(
            decide(&bind, Some("B.example.com")),
            "pass *.example.com route-1"
        );
        assert_eq!(
            decide(&bind, Some("c.example.com")),
            "refuse: no route matches"
        );
        assert_eq!(
            decide(&bind, Some("other.test")),
            "refuse: no listener for host \"other.test\""
        );
        assert_eq!(decide(&bind, None), "refuse: no listener for host \"\"");
    }

    #[test]
    fn the_most_specific_listener_of_either_kind_wins() {
        let bind = ir::Bind {
            http: vec![
                https(Some("term.example.com")),
                https(Some("*.example.com")),
            ],
            tls_passthrough: vec![
                passthrough(Some("pass.example.com"), &[&[]]),
                passthrough(None, &[&["any.example.com", "other.test"]]),
            ],
            tcp: None,
        };
        assert_eq!(
            decide(&bind, Some("pass.example.com")),
            "pass pass.example.com route-0"
        );
        // An exact HTTPS listener beats the passthrough listener without hostname...
        assert_eq!(decide(&bind, Some("term.example.com")), "terminate");
        // ...and so does a wildcard one, even where the passthrough route would match.
        assert_eq!(decide(&bind, Some("any.example.com")), "terminate");
        assert_eq!(
            decide(&bind, Some("other.test")),
            "pass passthrough route-0"
        );
        // The passthrough listener without hostname takes every other SNI, and refuses those
        // its routes do not.
        assert_eq!(decide(&bind, Some("else.test")), "refuse: no route matches");
        assert_eq!(decide(&bind, None), "refuse: no route matches");
    }

    #[test]
    fn without_a_passthrough_match_https_listeners_decide() {
        let bind = ir::Bind {
            http: vec![https(Some("term.example.com"))],
            tls_passthrough: vec![passthrough(Some("pass.example.com"), &[&[]])],
            tcp: None,
        };
        assert_eq!(decide(&bind, Some("unknown.test")), "terminate");
        assert_eq!(decide(&bind, None), "terminate");
        let tie = ir::Bind {
            http: vec![https(None)],
            tls_passthrough: vec![passthrough(None, &[&[]])],
            tcp: None,
        };
        assert_eq!(decide(&tie, Some("x.test")), "pass passthrough route-0");
    }
}
