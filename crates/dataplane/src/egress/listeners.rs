//! The outbound proxy's two ways in: the transparent listener (connections redirected by
//! iptables `REDIRECT`, destination from `SO_ORIGINAL_DST`) and the explicit forward proxy
//! (`CONNECT host:port`, absolute-form HTTP requests).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use ir::Hostname;
use socket2::SockRef;
use tokio::net::{TcpListener, TcpStream};

use super::{EgressContext, serve_connection};
use crate::Shared;
use crate::body::{self, ProxyBody};
use crate::error::ProxyError;
use crate::proxy::{self, Connection};
use crate::upgrade::Slot;

/// How long the accept loops pause after an accept error, so that they do not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Who the outbound proxy works for.
#[derive(Clone, Debug, Default)]
pub struct OutboundSettings {
    /// The workload's namespace: its EgressNetworks apply first.
    pub namespace: String,
    /// Fixed answers for the explicit proxy's name resolution (`--resolve HOST=IP`), checked
    /// before the system resolver.
    pub resolve: BTreeMap<String, IpAddr>,
}

/// Accepts connections redirected to `socket` and serves each for its original destination:
/// a Service address of the config is served as that bind (mesh routes); anything else is
/// egress.
pub(crate) async fn transparent_accept_loop(
    shared: Arc<Shared>,
    socket: TcpListener,
    settings: Arc<OutboundSettings>,
) {
    let local = socket.local_addr().ok();
    loop {
        // Outbound connections count against the same connection limit as inbound ones.
        let slot = shared.connection_slots.acquire().await;
        match socket.accept().await {
            Ok((stream, client)) => {
                let shared = Arc::clone(&shared);
                let settings = Arc::clone(&settings);
                tokio::spawn(async move {
                    serve_transparent(shared, settings, local, client, stream).await;
                    drop(slot);
                });
            }
            Err(error) => {
                tracing::warn!(%error, "outbound accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

async fn serve_transparent(
    shared: Arc<Shared>,
    settings: Arc<OutboundSettings>,
    local: Option<SocketAddr>,
    client: SocketAddr,
    stream: TcpStream,
) {
    let _ = stream.set_nodelay(true);
    let destination = match original_destination(&stream) {
        Ok(destination) => destination,
        Err(error) => {
            tracing::debug!(%client, %error, "no original destination; closing");
            return;
        }
    };
    // A connection made to the proxy's own port (not redirected) would loop forever.
    if Some(destination) == local {
        tracing::debug!(%client, "connection addressed to the outbound proxy itself; closing");
        return;
    }
    let config = shared.config.load_full();
    if config.binds.contains_key(&destination) {
        let namespace = Some(Arc::from(settings.namespace.as_str()));
        crate::listener::serve_intercepted(shared, destination, client, stream, namespace).await;
        return;
    }
    serve_connection(
        shared,
        &settings.namespace,
        client,
        destination,
        stream,
        None,
    )
    .await;
}

/// The destination a connection had before iptables redirected it.
fn original_destination(stream: &TcpStream) -> std::io::Result<SocketAddr> {
    let socket = SockRef::from(stream);
    let address = match stream.local_addr()? {
        SocketAddr::V4(_) => socket.original_dst_v4()?,
        SocketAddr::V6(_) => socket.original_dst_v6()?,
    };
    address
        .as_socket()
        .ok_or_else(|| std::io::Error::other("original destination is not an IP address"))
}

/// Accepts explicit-proxy clients on `socket`.
pub(crate) async fn explicit_accept_loop(
    shared: Arc<Shared>,
    socket: TcpListener,
    settings: Arc<OutboundSettings>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.options.header_read_timeout);
    let builder = builder.http1_only();
    loop {
        let slot = shared.connection_slots.acquire().await;
        match socket.accept().await {
            Ok((stream, client)) => {
                let shared = Arc::clone(&shared);
                let settings = Arc::clone(&settings);
                let builder = builder.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let _ = stream.set_nodelay(true);
                    let service = service_fn(move |request| {
                        let shared = Arc::clone(&shared);
                        let settings = Arc::clone(&settings);
                        async move {
                            Ok::<_, Infallible>(
                                proxy_request(shared, settings, client, request).await,
                            )
                        }
                    });
                    let io = TokioIo::new(stream);
                    if let Err(error) = builder.serve_connection_with_upgrades(io, service).await {
                        tracing::debug!(%client, %error, "proxy connection ended with an error");
                    }
                });
            }
            Err(error) => {
                tracing::warn!(%error, "egress proxy accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

/// One request to the explicit proxy: a CONNECT opens a tunnel that is then served as an
/// egress connection; an absolute-form request is served as an egress request.
async fn proxy_request(
    shared: Arc<Shared>,
    settings: Arc<OutboundSettings>,
    client: SocketAddr,
    request: Request<Incoming>,
) -> Response<ProxyBody> {
    let target = match proxy_target(&request) {
        Ok(target) => target,
        Err(message) => return plain(StatusCode::BAD_REQUEST, message),
    };
    let destination = match resolve(&settings, &target.host, target.port).await {
        Ok(destination) => destination,
        Err(error) => {
            tracing::info!(
                target: "portcullis::access",
                %client,
                host = %target.host,
                error = %error,
                "egress proxy target cannot be resolved"
            );
            return error.into_response();
        }
    };
    let authority = Some(target.host.clone());
    let config = shared.config.load_full();
    if request.method() == Method::CONNECT && config.binds.contains_key(&destination) {
        // A mesh destination (a Service's clusterIP:port): served by its routes, with this
        // workload's consumer routes.
        let upgrade = hyper::upgrade::on(request);
        tokio::spawn(async move {
            match upgrade.await {
                Ok(upgraded) => {
                    let namespace = Some(Arc::from(settings.namespace.as_str()));
                    let io = TokioIo::new(upgraded);
                    crate::listener::serve_tunnel(shared, destination, client, io, namespace).await;
                }
                Err(error) => tracing::debug!(%client, %error, "CONNECT tunnel failed"),
            }
        });
        return Response::new(body::empty());
    }
    if request.method() == Method::CONNECT {
        let upgrade = hyper::upgrade::on(request);
        tokio::spawn(async move {
            match upgrade.await {
                Ok(upgraded) => {
                    let io = TokioIo::new(upgraded);
                    let namespace = settings.namespace.clone();
                    serve_connection(shared, &namespace, client, destination, io, authority).await;
                }
                Err(error) => tracing::debug!(%client, %error, "CONNECT tunnel failed"),
            }
        });
        return Response::new(body::empty());
    }
    let context = EgressContext {
        destination,
        network: config
            .egress
            .classify(&settings.namespace, destination.ip())
            .cloned(),
        authority,
    };
    let connection = Connection {
        bind: destination,
        client,
        forwarded_for: crate::filters::client_address(client.ip()),
        tls: None,
        tunnel: Slot::default(),
        egress: Some(Arc::new(context)),
        namespace: None,
    };
    proxy::handle(shared, connection, request).await
}

/// Where a proxy request goes.
pub(crate) struct ProxyTarget {
    host: Hostname,
    port: u16,
}

/// The target of a CONNECT (`host:port`, port required) or of an absolute-form `http://`
/// request, whose `Host` header, when present, must name the same host.
pub(crate) fn proxy_target<B>(request: &Request<B>) -> Result<ProxyTarget, &'static str> {
    let uri = request.uri();
    let authority = uri
        .authority()
        .ok_or("a proxy request needs CONNECT host:port or an absolute http:// URI")?;
    let host = Hostname::from_request_host(authority.host()).ok_or("the target has no host")?;
    let port = if request.method() == Method::CONNECT {
        authority.port_u16().ok_or("CONNECT needs host:port")?
    } else {
        if uri.scheme_str() != Some("http") {
            return Err("only http:// URIs are proxied; use CONNECT for TLS");
        }
        authority.port_u16().unwrap_or(80)
    };
    if request.method() != Method::CONNECT {
        let mut hosts = request.headers().get_all(header::HOST).iter();
        if let Some(value) = hosts.next() {
            let named = value.to_str().ok().and_then(Hostname::from_request_host);
            if named.as_ref() != Some(&host) {
                return Err("the Host header names another host than the request URI");
            }
        }
        if hosts.next().is_some() {
            return Err("a request must have at most one Host header");
        }
    }
    Ok(ProxyTarget { host, port })
}

/// Resolves a proxy target: an IP literal as it is, a fixed answer from the settings, else
/// the system resolver's first address.
async fn resolve(
    settings: &OutboundSettings,
    host: &Hostname,
    port: u16,
) -> Result<SocketAddr, ProxyError> {
    let name = host.as_str();
    let literal = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    if let Ok(ip) = literal.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    if let Some(ip) = settings.resolve.get(name) {
        return Ok(SocketAddr::new(*ip, port));
    }
    let unresolvable = |reason: String| ProxyError::Unresolvable {
        host: name.to_string(),
        reason,
    };
    let mut found = tokio::net::lookup_host((name, port))
        .await
        .map_err(|error| unresolvable(error.to_string()))?;
    found
        .next()
        .ok_or_else(|| unresolvable("no addresses".to_string()))
}

fn plain(status: StatusCode, message: &str) -> Response<ProxyBody> {
    let mut response = Response::new(body::full(format!("{message}\n")));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(method: Method, uri: &str, host: Option<&str>) -> Result<(String, u16), String> {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(host) = host {
            builder = builder.header(header::HOST, host);
        }
        let request = builder.body(()).map_err(|e| e.to_string())?;
        proxy_target(&request)
            .map(|t| (t.host.as_str().to_string(), t.port))
            .map_err(str::to_string)
    }

    #[test]
    fn connect_needs_a_port() {
        assert_eq!(
            target(Method::CONNECT, "api.mistral.ai:443", None),
            Ok(("api.mistral.ai".into(), 443))
        );
        assert!(target(Method::CONNECT, "api.mistral.ai", None).is_err());
    }

    #[test]
    fn absolute_form_host_must_agree() {
        assert_eq!(
            target(
                Method::GET,
                "http://Docs.Example.com/x",
                Some("docs.example.com")
            ),
            Ok(("docs.example.com".into(), 80))
        );
        assert!(
            target(
                Method::GET,
                "http://docs.example.com/x",
                Some("evil.example")
            )
            .is_err()
        );
        assert!(target(Method::GET, "https://docs.example.com/x", None).is_err());
        assert!(target(Method::GET, "/x", Some("docs.example.com")).is_err());
    }
}
