//! Listening sockets, accept loops, and choosing how each accepted connection is served.
//!
//! Each bound socket has one accept loop task. Each accepted connection gets its own task,
//! which decides from the current config how to serve it: relayed to a TCP backend, routed
//! by the SNI of its ClientHello (passed through, terminated and relayed, see `stream.rs`, or
//! terminated as HTTPS), terminated as HTTPS (the TLS handshake first, see `tls.rs`), or
//! plain HTTP. A slow or broken client only ever holds up itself.
//!
//! Stopping the accept loop closes the socket at once and hands back its open connections
//! ([`Draining`]); draining asks them to finish their in-flight requests and close (HTTP/1.1
//! `Connection: close`, HTTP/2 `GOAWAY`), so removing a socket from the config never cuts a
//! request short. A connection still in its TLS handshake is asked to close as soon as the
//! handshake ends. Connections relayed as a whole (TCP, TLS passthrough and TLS terminated
//! and relayed) cannot be asked to close; they keep going until they end or the drain limit
//! cuts them off.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::rt::{Read, Write};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

use crate::Shared;
use crate::error::ProxyError;
use crate::limits::ResetWatch;
use crate::peek::{self, Rewind};
use crate::proxy::{self, Connection};
use crate::stream::{self, Accepted, TlsRoute};
use crate::tls;
use crate::upgrade::Slot;

/// How long the accept loop pauses after an accept error (for example, out of file
/// descriptors), so that it does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// A running accept loop.
pub struct Listener {
    local_addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Draining>,
}

/// The connections of a socket that stopped accepting.
pub struct Draining {
    graceful: GracefulShutdown,
    connections: JoinSet<()>,
}

/// Binds `addr` with `SO_REUSEADDR` (so a restart does not wait for `TIME_WAIT`) and starts
/// listening. IPv6 sockets are IPv6-only, so `0.0.0.0:p` and `[::]:p` can both be bound.
pub fn bind(addr: SocketAddr, backlog: i32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    TcpListener::from_std(socket.into())
}

// === impl Listener ===

impl Listener {
    /// Starts accepting on `socket`; requests are served with the config key `bind`.
    pub fn spawn(shared: Arc<Shared>, bind: SocketAddr, socket: TcpListener) -> io::Result<Self> {
        let local_addr = socket.local_addr()?;
        let servers = Servers::new(Arc::clone(&shared), bind).map_err(io::Error::other)?;
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(shared, bind, servers, socket, stopped));
        Ok(Self {
            local_addr,
            stop,
            task,
        })
    }

    /// The address the socket is bound to (its real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting and closes the socket; returns the connections still open.
    pub async fn stop(self) -> Option<Draining> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(draining) => Some(draining),
            Err(error) => {
                tracing::error!(addr = %self.local_addr, %error, "accept loop failed");
                None
            }
        }
    }
}

// === impl Draining ===

impl Draining {
    /// Asks every connection to close after its in-flight requests, waits up to `limit`, then
    /// aborts whatever is left.
    pub async fn drain(self, limit: Duration) {
        let Self {
            graceful,
            connections,
        } = self;
        if tokio::time::timeout(limit, graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                open = connections.len(),
                "connections did not drain in time; closing them"
            );
        }
        // Dropping the set aborts any connection task still running.
        drop(connections);
    }
}

/// A connection's part in a drain. `http` watches an HTTP connection, which a drain asks to
/// finish its requests and close. `held` is only dropped when the connection's task ends, so
/// a drain also waits (up to its limit) for what cannot be asked to close: relayed TCP and
/// TLS connections, and WebSocket tunnels, which outlive their HTTP connection.
struct Watchers {
    http: Watcher,
    held: Watcher,
}

/// How a socket serves its connections: the TLS acceptor for when the config makes it a TLS
/// socket, and the HTTP server settings for each protocol choice.
struct Servers {
    tls: TlsAcceptor,
    /// HTTP/1.1 or HTTP/2 with prior knowledge, told apart by the first bytes.
    auto: auto::Builder<TokioExecutor>,
    /// HTTP/1.1 only: TLS connections that did not choose `h2` by ALPN.
    http1: auto::Builder<TokioExecutor>,
    /// HTTP/2 only: TLS connections that chose `h2` by ALPN.
    http2: auto::Builder<TokioExecutor>,
}

impl Servers {
    fn new(shared: Arc<Shared>, bind: SocketAddr) -> Result<Arc<Self>, rustls::Error> {
        let auto = server_builder(&shared);
        Ok(Arc::new(Self {
            http1: auto.clone().http1_only(),
            http2: auto.clone().http2_only(),
            auto,
            tls: tls::acceptor(shared, bind)?,
        }))
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    bind: SocketAddr,
    servers: Arc<Servers>,
    socket: TcpListener,
    mut stopped: oneshot::Receiver<()>,
) -> Draining {
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            // A dropped sender (the data plane itself was dropped) also stops the loop.
            _ = &mut stopped => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            // A slot of the connection limit first: at the limit, connections wait in the
            // backlog until a served one ends.
            accepted = async {
                let slot = shared.connection_slots.acquire().await;
                (slot, socket.accept().await)
            } => match accepted {
                (slot, Ok((stream, client))) => {
                    shared.requests.accepted(bind);
                    // The watchers are taken here, not in the task, so that a drain that starts
                    // while the task has not run yet still reaches this connection.
                    let watchers = Watchers {
                        http: graceful.watcher(),
                        held: graceful.watcher(),
                    };
                    let serving = serve(
                        Arc::clone(&servers),
                        watchers,
                        Arc::clone(&shared),
                        (bind, client, None),
                        stream,
                    );
                    connections.spawn(async move {
                        serving.await;
                        drop(slot);
                    });
                }
                (_, Err(error)) => {
                    tracing::warn!(%bind, %error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            },
        }
    }
    drop(socket);
    tracing::debug!(%bind, open = connections.len(), "stopped accepting");
    Draining {
        graceful,
        connections,
    }
}

/// HTTP/1.1 and HTTP/2 with prior knowledge on the same socket: the builder reads the first
/// bytes and picks the protocol.
fn server_builder(shared: &Shared) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(shared.options.header_read_timeout)
        // One `write` of head and body copied together: most responses are small, and the
        // load benchmark (scenario A) gained about 4% over vectored writes; large bodies
        // pay one more copy.
        .writev(false);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(shared.options.http2_max_concurrent_streams);
    builder
}

/// Serves one connection until it closes, as the config current when it was accepted makes
/// its socket serve it: relayed to a TCP backend, routed by its SNI (passed through,
/// terminated and relayed, or served as HTTPS), served as HTTPS, or plain HTTP. Errors end
/// only this connection.
async fn serve(
    servers: Arc<Servers>,
    watchers: Watchers,
    shared: Arc<Shared>,
    (bind, client, namespace): (SocketAddr, SocketAddr, Option<Arc<str>>),
    stream: TcpStream,
) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "setting TCP_NODELAY failed");
    }
    let accepted = Accepted { bind, client };
    // One snapshot decides how the connection is served. The certificates carry the config
    // they were loaded for, so the two cannot disagree.
    let certificates = shared.certificates.load_full();
    let config = Arc::clone(certificates.config());
    let Some(bind_config) = config.binds.get(&bind) else {
        // Removed while this connection was being accepted: plain HTTP answers 404.
        return serve_plain(&servers, watchers, shared, accepted, stream, namespace).await;
    };
    // A mesh client whose namespace has consumer routes here is served HTTP by them, even
    // where everyone else's connections are relayed (a Service without producer routes).
    let consumer = namespace
        .as_deref()
        .is_some_and(|ns| bind_config.consumers.contains_key(ns));
    if let Some(listener) = bind_config.tcp.as_ref().filter(|_| !consumer) {
        stream::serve_tcp(&shared, accepted, listener, stream).await;
        // Connections routed as a whole cannot be asked to finish early; holding the watchers
        // until they end lets a drain wait for them, up to its limit.
        drop(watchers);
    } else if !bind_config.tls_passthrough.is_empty() || !bind_config.tls_terminate.is_empty() {
        let snapshot = (&*certificates, bind_config);
        serve_by_server_name(servers, watchers, shared, accepted, snapshot, stream).await;
    } else if certificates.terminates(bind) {
        let stream = Rewind::new(Bytes::new(), stream);
        serve_tls(servers, watchers, shared, accepted, stream).await;
    } else {
        serve_plain(&servers, watchers, shared, accepted, stream, namespace).await;
    }
}

/// Serves a connection that the transparent outbound listener intercepted on its way to
/// `bind`, a socket of the config (a mesh Service's `clusterIP:port`), exactly as if that
/// socket had accepted it. It is not part of any socket's drain: it ends with its client.
pub(crate) async fn serve_intercepted(
    shared: Arc<Shared>,
    bind: SocketAddr,
    client: SocketAddr,
    stream: TcpStream,
    namespace: Option<Arc<str>>,
) {
    let servers = match Servers::new(Arc::clone(&shared), bind) {
        Ok(servers) => servers,
        Err(error) => {
            tracing::warn!(%bind, %error, "cannot serve an intercepted connection");
            return;
        }
    };
    let graceful = GracefulShutdown::new();
    let watchers = Watchers {
        http: graceful.watcher(),
        held: graceful.watcher(),
    };
    serve(servers, watchers, shared, (bind, client, namespace), stream).await;
}

/// Serves a tunnel that the explicit outbound proxy opened to `bind`, a mesh Service's
/// `clusterIP:port`: relayed to its endpoints when it has no routes for this client, else
/// served HTTP by its routes (the client namespace's consumer routes, if any).
pub(crate) async fn serve_tunnel<I>(
    shared: Arc<Shared>,
    bind: SocketAddr,
    client: SocketAddr,
    io: I,
    namespace: Option<Arc<str>>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let config = shared.config.load_full();
    let Some(bind_config) = config.binds.get(&bind) else {
        return;
    };
    let consumer = namespace
        .as_deref()
        .is_some_and(|ns| bind_config.consumers.contains_key(ns));
    if let Some(listener) = bind_config.tcp.as_ref().filter(|_| !consumer) {
        stream::serve_tcp(&shared, Accepted { bind, client }, listener, io).await;
        return;
    }
    let graceful = GracefulShutdown::new();
    let watchers = Watchers {
        http: graceful.watcher(),
        held: graceful.watcher(),
    };
    let connection = Connection {
        bind,
        client,
        forwarded_for: crate::filters::client_address(client.ip()),
        tls: None,
        tunnel: Slot::default(),
        egress: None,
        namespace,
    };
    let builder = server_builder(&shared);
    serve_http(&builder, watchers, shared, connection, TokioIo::new(io)).await;
}

/// On a socket with TLS listeners routed by SNI (passthrough, terminate-and-relay): reads
/// the ClientHello, then passes the connection through, terminates it and relays the bytes,
/// refuses it, or serves HTTPS with the ClientHello replayed, as [`stream::route_tls`]
/// decides for its SNI. `bind_config` is the bind's entry in the config of `certificates`,
/// so the listener chosen and the acceptor of its certificate come from one snapshot.
async fn serve_by_server_name(
    servers: Arc<Servers>,
    watchers: Watchers,
    shared: Arc<Shared>,
    accepted: Accepted,
    (certificates, bind_config): (&tls::Certificates, &ir::Bind),
    mut stream: TcpStream,
) {
    let limit = shared.options.client_hello_timeout;
    let hello = match peek::read_client_hello(&mut stream, limit).await {
        Ok(hello) => hello,
        Err(error) => {
            // Like failed handshakes: routine for scanners, so only a debug line.
            let Accepted { bind, client } = accepted;
            tracing::debug!(%client, %bind, %error, "no routable ClientHello");
            return;
        }
    };
    match stream::route_tls(bind_config, hello.server_name.as_ref()) {
        TlsRoute::PassThrough { listener, route } => {
            stream::pass_through(&shared, accepted, stream, hello, listener, route).await;
            // As for TCP: the drain waits for the connection, up to its limit.
            drop(watchers);
        }
        TlsRoute::Terminate { listener, route } => {
            match certificates.acceptor_for(accepted.bind, listener) {
                Some(acceptor) => {
                    let routed = (&**listener, &**route);
                    stream::relay_terminated(&shared, accepted, stream, hello, acceptor, routed)
                        .await;
                }
                // Logged when the certificate was loaded; like an HTTPS listener whose
                // certificate did not load, this listener cannot complete a handshake.
                None => {
                    let error = ProxyError::UnusableCertificate {
                        listener: format!("{}/{}", listener.gateway, listener.name),
                    };
                    stream::refuse(accepted, stream, hello, error).await;
                }
            }
            drop(watchers);
        }
        TlsRoute::Refuse(error) => stream::refuse(accepted, stream, hello, error).await,
        TlsRoute::Https => {
            let stream = Rewind::new(hello.bytes, stream);
            serve_tls(servers, watchers, shared, accepted, stream).await;
        }
    }
}

/// Serves plain HTTP/1.1 or h2c.
async fn serve_plain(
    servers: &Servers,
    watchers: Watchers,
    shared: Arc<Shared>,
    accepted: Accepted,
    stream: TcpStream,
    namespace: Option<Arc<str>>,
) {
    let connection = Connection {
        bind: accepted.bind,
        client: accepted.client,
        forwarded_for: crate::filters::client_address(accepted.client.ip()),
        tls: None,
        tunnel: Slot::default(),
        egress: None,
        namespace,
    };
    let io = TokioIo::new(stream);
    serve_http(&servers.auto, watchers, shared, connection, io).await;
}

/// Terminates TLS and serves HTTP on the decrypted connection. `stream` replays the bytes
/// already read to choose between passthrough and termination, if any.
async fn serve_tls(
    servers: Arc<Servers>,
    watchers: Watchers,
    shared: Arc<Shared>,
    accepted: Accepted,
    stream: Rewind<TcpStream>,
) {
    let Accepted { bind, client } = accepted;
    let limit = shared.options.tls_handshake_timeout;
    match tls::handshake(&servers.tls, stream, limit).await {
        Ok((stream, session)) => {
            shared.requests.handshake(bind, true);
            let builder = if session.http2 {
                &servers.http2
            } else {
                &servers.http1
            };
            let connection = Connection {
                bind,
                client,
                forwarded_for: crate::filters::client_address(client.ip()),
                tls: Some(Arc::new(session)),
                tunnel: Slot::default(),
                egress: None,
                namespace: None,
            };
            serve_http(builder, watchers, shared, connection, TokioIo::new(stream)).await;
        }
        Err(error) => {
            // Scanners, plain-text clients and clients that distrust the certificate are
            // routine; they are not worth more than a debug line.
            shared.requests.handshake(bind, false);
            let cause = std::error::Error::source(&error).map(ToString::to_string);
            tracing::debug!(%client, %bind, %error, ?cause, "TLS handshake failed");
        }
    }
}

/// Serves HTTP on an established connection (plain or decrypted) until it closes, then relays
/// the WebSocket it switched to, if it did.
async fn serve_http<I>(
    builder: &auto::Builder<TokioExecutor>,
    watchers: Watchers,
    shared: Arc<Shared>,
    connection: Connection,
    io: I,
) where
    I: Read + Write + Unpin + Send + 'static,
{
    let Watchers { http, held } = watchers;
    let client = connection.client;
    let tunnel = connection.tunnel.clone();
    let http2_only = connection.tls.as_ref().is_some_and(|session| session.http2);
    let resets = Arc::new(ResetWatch::default());
    let abuse = shared.reset_abuse.clone();
    let service = {
        let resets = Arc::clone(&resets);
        service_fn(move |request| {
            let shared = Arc::clone(&shared);
            let connection = connection.clone();
            let stream = resets.open();
            // Boxed: hyper moves the service's future into its connection state on every
            // request, and this one is several kilobytes; a box is one copy and then a
            // pointer.
            Box::pin(async move {
                let response = proxy::handle(shared, connection, request).await;
                stream.finished();
                Ok::<_, Infallible>(response)
            })
        })
    };
    // HTTP/1.1 connections are served with upgrades, so that WebSocket handshakes can switch
    // protocols (`upgrade.rs`). That mode ignores `http1_only` and tells HTTP/1.1 from HTTP/2
    // by the first bytes instead; clients that chose `http/1.1` by ALPN send HTTP/1.1, so
    // nothing changes for them. Connections that chose `h2` stay strictly HTTP/2: HTTP/2 has
    // no Upgrade, and WebSockets over HTTP/2 (RFC 8441) are out of scope.
    let serving = async {
        if http2_only {
            http.watch(builder.serve_connection(io, service).into_owned())
                .await
        } else {
            let serving = builder.serve_connection_with_upgrades(io, service);
            http.watch(serving.into_owned()).await
        }
    };
    tokio::select! {
        result = serving => {
            if let Err(error) = result {
                tracing::debug!(%client, %error, "connection ended with an error");
            }
        }
        () = resets.tripped() => {
            // Dropping the connection closes it; its streams were mostly cancelled anyway.
            abuse.inc();
            tracing::warn!(%client, "closing a connection that cancels most of its streams");
        }
    }
    if let Some(tunnel) = tunnel.take() {
        tunnel.relay().await;
    }
    drop(held);
}
