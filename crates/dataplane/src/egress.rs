//! Egress: enforcing `EgressNetwork`s on traffic leaving a workload.
//!
//! Traffic reaches the outbound proxy two ways (`egress/listeners.rs`): redirected
//! transparently by iptables, where the original destination comes from `SO_ORIGINAL_DST`,
//! or through the explicit forward proxy (`CONNECT host:port`, or an absolute-form HTTP
//! request), where the proxy resolves the host itself. Either way one connection (or, for
//! absolute-form, one request) has a destination address and port, and the workload's
//! namespace is known from the proxy's settings.
//!
//! [`serve_connection`] classifies the destination ([`ir::Egress::classify`]) and applies the
//! routes of that network's port: a TCPRoute takes the connection as it is; a TLSRoute is
//! chosen by the SNI of the ClientHello, read without consuming it; HTTPRoutes and
//! GRPCRoutes are applied per request by the ordinary request path (`proxy.rs`, through
//! [`select`]). What no route describes gets the network's `trafficPolicy`: `Allow` sends it
//! on to the original destination, `Deny` refuses it: HTTP with 403, gRPC with
//! `PERMISSION_DENIED`, TLS by closing the connection after its ClientHello, anything else by
//! closing it at once. Every decision is counted ([`Decisions`]) and logged.
//!
//! Names must agree. Through the explicit proxy the client names its destination, and the
//! proxy picks the address: a ClientHello whose SNI, or a request whose `Host`, differs from
//! the CONNECT authority is denied, so an allowed name cannot smuggle traffic to a
//! destination of the client's choosing (the bypass Linkerd documents for transparent
//! egress, where the address comes from the client). Under `Deny`, a TLS connection without
//! SNI and a request to an IP-literal host are denied too: no route can have named them.

pub(crate) mod listeners;
mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use ir::{EgressNetwork, EgressPort, Hostname, HttpListener, Protocol, Selected, TrafficPolicy};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::Shared;
use crate::error::ProxyError;
use crate::forward;
use crate::peek::{self, Rewind};
use crate::proxy::{self, Connection};
use crate::stream::{self, Accepted, StreamLog};
use crate::upgrade::Slot;

pub use listeners::OutboundSettings;
pub(crate) use listeners::{explicit_accept_loop, transparent_accept_loop};
pub use metrics::{Decision, DecisionKey, Decisions, Verdict};

/// What the request path needs to know about egress traffic.
#[derive(Clone, Debug)]
pub struct EgressContext {
    /// Where the client was connecting (its original destination, or the address the explicit
    /// proxy resolved).
    pub destination: SocketAddr,
    /// The network the destination belongs to, for the workload's namespace; `None`: the
    /// traffic is not classified and goes on unrestricted.
    pub network: Option<Arc<EgressNetwork>>,
    /// The host the client named through the explicit proxy; requests must name it too.
    pub authority: Option<Hostname>,
}

/// What the request path does with an egress request.
pub(crate) enum Selection<'a> {
    /// Serve it with this rule of the port's routes.
    Route(&'a HttpListener, Selected<'a>),
    /// Send it on to the original destination, unchanged.
    Original,
}

// === impl EgressContext ===

impl EgressContext {
    fn network_name(&self) -> String {
        self.network
            .as_ref()
            .map_or_else(|| "-".to_string(), |n| n.full_name())
    }

    fn denied(&self, reason: impl Into<String>) -> ProxyError {
        ProxyError::EgressDenied {
            network: self.network_name(),
            reason: reason.into(),
        }
    }
}

/// Chooses what to do with one egress HTTP request, and counts the decision.
pub(crate) fn select<'a, B>(
    shared: &Shared,
    egress: &'a EgressContext,
    host: &Hostname,
    request: &Request<B>,
) -> Result<Selection<'a>, ProxyError> {
    let decide = |verdict: Verdict, route: Option<String>| {
        shared.decisions.record(Decision {
            network: egress.network.as_deref(),
            protocol: Protocol::Http,
            route,
            hostname: Some(host.as_str()),
            verdict,
        });
    };
    if let Some(expected) = &egress.authority
        && expected != host
    {
        decide(Verdict::Deny, None);
        return Err(egress.denied(format!(
            "Host {host} differs from the proxy request's host {expected}"
        )));
    }
    let Some(network) = &egress.network else {
        decide(Verdict::Allow, None);
        return Ok(Selection::Original);
    };
    if network.policy == TrafficPolicy::Deny && host.as_str().parse::<std::net::IpAddr>().is_ok() {
        decide(Verdict::Deny, None);
        return Err(egress.denied(format!("IP-literal host {host} is not allowed")));
    }
    if let Some(EgressPort::Http(listener)) = network.ports.get(&egress.destination.port())
        && let Ok(selected) = proxy::select_route(listener, host, request)
    {
        let id = &selected.rule.id;
        decide(
            Verdict::Allow,
            Some(format!("{}/{}", id.namespace, id.name)),
        );
        return Ok(Selection::Route(listener, selected));
    }
    match network.policy {
        TrafficPolicy::Allow => {
            decide(Verdict::Allow, None);
            Ok(Selection::Original)
        }
        TrafficPolicy::Deny => {
            decide(Verdict::Deny, None);
            Err(egress.denied(format!(
                "no route allows {host} on port {}",
                egress.destination.port()
            )))
        }
    }
}

/// How the first bytes of a connection look.
enum Detected {
    /// A TLS handshake record.
    Tls,
    /// An HTTP/1 request line or the HTTP/2 preface.
    Http,
    /// Anything else, or nothing within the detection timeout.
    Opaque,
}

/// Serves one egress connection to `destination` until it closes. `authority` is the host
/// named in a CONNECT request, when the connection came through the explicit proxy.
pub(crate) async fn serve_connection<I>(
    shared: Arc<Shared>,
    namespace: &str,
    client: SocketAddr,
    destination: SocketAddr,
    mut io: I,
    authority: Option<Hostname>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = shared.config.load_full();
    let context = EgressContext {
        destination,
        network: config.egress.classify(namespace, destination.ip()).cloned(),
        authority,
    };
    let port = context
        .network
        .as_ref()
        .and_then(|network| network.ports.get(&destination.port()));
    let accepted = Accepted {
        bind: destination,
        client,
    };
    // Unclassified traffic reached transparently is none of our business: relay it as it
    // is, without waiting for the client to speak (some protocols start with the server).
    if context.network.is_none() && context.authority.is_none() {
        let log = StreamLog::new(accepted, "TCP");
        return relay_original(&shared, &context, io, Bytes::new(), log, Protocol::Tcp).await;
    }
    match port {
        Some(EgressPort::Tcp(routes)) => {
            let mut log = StreamLog::new(accepted, "TCP");
            log.set_listener(&listener_label(&context));
            let route = routes.first().map(Arc::clone);
            relay_route(&shared, &context, io, Bytes::new(), log, route, None).await;
        }
        Some(EgressPort::Http(_)) => serve_http(shared, context, client, io, Bytes::new()).await,
        Some(EgressPort::Tls(_)) | None => {
            let limit = shared.options.client_hello_timeout;
            let (detected, prefix) = match detect(&mut io, limit).await {
                Ok(found) => found,
                Err(error) => {
                    tracing::debug!(%client, %destination, %error, "egress connection ended before it spoke");
                    return;
                }
            };
            match detected {
                Detected::Tls => serve_tls(&shared, &context, accepted, io, prefix).await,
                Detected::Http => serve_http(shared, context, client, io, prefix).await,
                Detected::Opaque => {
                    let log = StreamLog::new(accepted, "TCP");
                    let mut guarded = Guarded::new(&shared, &context, Protocol::Tcp, None);
                    if let Some(authority) = &context.authority {
                        guarded.log_authority(authority);
                    }
                    match context.network.as_ref().map(|n| n.policy) {
                        Some(TrafficPolicy::Deny) => {
                            guarded.deny(log, io, "no route allows this traffic").await;
                        }
                        _ => {
                            relay_original(&shared, &context, io, prefix, log, Protocol::Tcp).await;
                        }
                    }
                }
            }
        }
    }
}

/// Reads the first bytes, for at most `limit`: enough to tell TLS and HTTP from the rest.
async fn detect<I>(io: &mut I, limit: Duration) -> std::io::Result<(Detected, Bytes)>
where
    I: AsyncRead + Unpin,
{
    let mut buffer = vec![0; 64];
    let read = match tokio::time::timeout(limit, io.read(&mut buffer)).await {
        Ok(read) => read?,
        // Silent clients are relayed (or refused) as opaque traffic.
        Err(_) => return Ok((Detected::Opaque, Bytes::new())),
    };
    if read == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buffer.truncate(read);
    Ok((kind_of(&buffer), Bytes::from(buffer)))
}

/// TLS starts with a handshake record (content type 22, version major 3); HTTP/1 with a
/// method token and a space; HTTP/2 with its preface.
fn kind_of(first: &[u8]) -> Detected {
    if first.len() >= 2 && first[0] == 0x16 && first[1] == 0x03 {
        return Detected::Tls;
    }
    if first.starts_with(b"PRI * HTTP/2.0") {
        return Detected::Http;
    }
    let token = first.iter().take_while(|b| b.is_ascii_uppercase()).count();
    if (3..=10).contains(&token) && first.get(token) == Some(&b' ') {
        return Detected::Http;
    }
    Detected::Opaque
}

/// Serves HTTP on an egress connection: each request goes through the ordinary request path,
/// which asks [`select`] what to do with it.
async fn serve_http<I>(
    shared: Arc<Shared>,
    context: EgressContext,
    client: SocketAddr,
    io: I,
    prefix: Bytes,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let connection = Connection {
        bind: context.destination,
        client,
        forwarded_for: crate::filters::client_address(client.ip()),
        tls: None,
        tunnel: Slot::default(),
        egress: Some(Arc::new(context)),
        namespace: None,
    };
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        let connection = connection.clone();
        async move {
            Ok::<_, std::convert::Infallible>(proxy::handle(shared, connection, request).await)
        }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let io = TokioIo::new(Rewind::new(prefix, io));
    if let Err(error) = builder.serve_connection(io, service).await {
        tracing::debug!(%client, %error, "egress HTTP connection ended with an error");
    }
}

/// Routes a TLS connection by the SNI of its ClientHello.
async fn serve_tls<I>(
    shared: &Shared,
    context: &EgressContext,
    accepted: Accepted,
    mut io: I,
    prefix: Bytes,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let mut log = StreamLog::new(accepted, "TLS");
    let limit = shared.options.client_hello_timeout;
    let hello = {
        let mut replayed = Rewind::new(prefix, &mut io);
        peek::read_client_hello(&mut replayed, limit).await
    };
    let hello = match hello {
        Ok(hello) => hello,
        Err(error) => {
            // Not a ClientHello after all, or a broken one: nothing vouches for a name, and
            // the bytes read are gone, so whatever the policy the connection can only close.
            let mut guarded = Guarded::new(shared, context, Protocol::Tls, None);
            let reason = format!("no routable ClientHello: {error}");
            return guarded.deny(log, io, &reason).await;
        }
    };
    log.set_server_name(hello.server_name.clone());
    let sni = hello.server_name.as_ref().map(Hostname::as_str);
    let mut guarded = Guarded::new(shared, context, Protocol::Tls, sni);
    if let Some(expected) = &context.authority {
        guarded.log_authority(expected);
        if sni != Some(expected.as_str()) {
            let reason = format!(
                "the ClientHello names {}, not the proxy request's host {expected}",
                sni.unwrap_or("no server")
            );
            return guarded.deny(log, io, &reason).await;
        }
    }
    let Some(network) = &context.network else {
        return relay_original(shared, context, io, hello.bytes, log, Protocol::Tls).await;
    };
    log.set_listener(&listener_label(context));
    let port = network.ports.get(&context.destination.port());
    let route = port.and_then(|port| port.tls_route(sni));
    match (route, network.policy) {
        (Some(route), _) => {
            let route = Some(Arc::clone(route));
            relay_route(shared, context, io, hello.bytes, log, route, sni).await;
        }
        (None, TrafficPolicy::Allow) => {
            relay_original(shared, context, io, hello.bytes, log, Protocol::Tls).await;
        }
        (None, TrafficPolicy::Deny) => {
            let reason = match sni {
                None => "a TLS connection without SNI cannot be allowed".to_string(),
                Some(sni) => format!(
                    "no route allows {sni} on port {}",
                    context.destination.port()
                ),
            };
            guarded.deny(log, io, &reason).await;
        }
    }
}

/// Relays a connection through a TCPRoute or TLSRoute rule; without a route (a port whose
/// TCPRoute list is empty, which translate does not produce) it is refused.
async fn relay_route<I>(
    shared: &Shared,
    context: &EgressContext,
    io: I,
    first: Bytes,
    mut log: StreamLog,
    route: Option<Arc<ir::StreamRoute>>,
    sni: Option<&str>,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let protocol = if sni.is_some()
        || route
            .as_ref()
            .is_some_and(|r| r.id.kind == ir::RouteKind::Tls)
    {
        Protocol::Tls
    } else {
        Protocol::Tcp
    };
    let Some(route) = route else {
        let mut guarded = Guarded::new(shared, context, protocol, sni);
        return guarded.deny(log, io, "no route").await;
    };
    log.set_route(&route);
    let name = format!("{}/{}", route.id.namespace, route.id.name);
    shared.decisions.record(Decision {
        network: context.network.as_deref(),
        protocol,
        route: Some(name),
        hostname: sni,
        verdict: Verdict::Allow,
    });
    let endpoint = forward::choose_backend(&route.backends, Some(context.destination)).and_then(
        |(_, backend)| {
            log.set_backend(&backend.name);
            shared.upstreams.endpoint(&backend)
        },
    );
    relay_to(shared, io, &first, log, endpoint).await;
}

/// Relays a connection to its original destination (allowed by policy, or unclassified).
async fn relay_original<I>(
    shared: &Shared,
    context: &EgressContext,
    io: I,
    first: Bytes,
    mut log: StreamLog,
    protocol: Protocol,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let hostname = log.server_name().map(|h| h.as_str().to_string());
    shared.decisions.record(Decision {
        network: context.network.as_deref(),
        protocol,
        route: None,
        hostname: hostname.as_deref(),
        verdict: Verdict::Allow,
    });
    if let Some(network) = &context.network {
        log.set_listener(&listener_label(context));
        log.set_route_name(network.policy.implicit_route(protocol));
    }
    relay_to(shared, io, &first, log, Ok(context.destination)).await;
}

/// Connects to `endpoint` (or fails with why there is none), sends `first` (bytes already
/// read from the client), relays both ways, and writes the connection's log line.
async fn relay_to<I>(
    shared: &Shared,
    mut io: I,
    first: &[u8],
    mut log: StreamLog,
    endpoint: Result<SocketAddr, ProxyError>,
) where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let relayed = async {
        let endpoint = endpoint?;
        log.set_endpoint(endpoint);
        let upstream = forward::connect(endpoint, shared.options.connect_timeout).await?;
        stream::splice(&mut io, upstream, endpoint, first, &mut log).await
    };
    if let Err(error) = relayed.await {
        let _ = io.shutdown().await;
        log.fail(&error);
    }
    log.record();
}

fn listener_label(context: &EgressContext) -> String {
    format!(
        "EgressNetwork {} port {}",
        context.network_name(),
        context.destination.port()
    )
}

/// A connection-level refusal about to happen, with what it is counted under.
struct Guarded<'a> {
    shared: &'a Shared,
    context: &'a EgressContext,
    protocol: Protocol,
    hostname: Option<&'a str>,
    authority: Option<String>,
}

impl<'a> Guarded<'a> {
    fn new(
        shared: &'a Shared,
        context: &'a EgressContext,
        protocol: Protocol,
        hostname: Option<&'a str>,
    ) -> Self {
        Self {
            shared,
            context,
            protocol,
            hostname,
            authority: None,
        }
    }

    fn log_authority(&mut self, authority: &Hostname) {
        self.authority = Some(authority.to_string());
    }

    /// Counts and logs the refusal, and closes the connection without a word: for TLS, the
    /// client sees the connection end during its handshake.
    async fn deny<I>(&mut self, mut log: StreamLog, mut io: I, reason: &str)
    where
        I: AsyncWrite + Unpin,
    {
        let _ = io.shutdown().await;
        drop(io);
        self.shared.decisions.record(Decision {
            network: self.context.network.as_deref(),
            protocol: self.protocol,
            route: None,
            hostname: self.hostname.or(self.authority.as_deref()),
            verdict: Verdict::Deny,
        });
        if let Some(network) = &self.context.network {
            log.set_listener(&listener_label(self.context));
            log.set_route_name(network.policy.implicit_route(self.protocol));
        }
        log.fail(&self.context.denied(reason));
        log.record();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes_tell_tls_http_and_the_rest_apart() {
        assert!(matches!(kind_of(&[0x16, 0x03, 0x01, 0x02]), Detected::Tls));
        assert!(matches!(kind_of(b"GET / HTTP/1.1\r\n"), Detected::Http));
        assert!(matches!(kind_of(b"OPTIONS * HTTP/1.1\r\n"), Detected::Http));
        assert!(matches!(
            kind_of(b"PRI * HTTP/2.0\r\n\r\nSM"),
            Detected::Http
        ));
        assert!(matches!(
            kind_of(b"SSH-2.0-OpenSSH_9.6\r\n"),
            Detected::Opaque
        ));
        assert!(matches!(kind_of(b"get / HTTP/1.1"), Detected::Opaque));
        assert!(matches!(kind_of(&[0x16]), Detected::Opaque));
    }
}
