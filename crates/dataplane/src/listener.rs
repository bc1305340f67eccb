//! Listening sockets, accept loops, and serving HTTP/1.1 and h2c on accepted connections.
//!
//! Each bound socket has one accept loop task. Stopping it closes the socket at once and
//! hands back its open connections ([`Draining`]); draining asks them to finish their
//! in-flight requests and close (HTTP/1.1 `Connection: close`, HTTP/2 `GOAWAY`), so removing a
//! socket from the config never cuts a request short.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

use crate::Shared;
use crate::proxy::{self, Connection};

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
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(shared, bind, socket, stopped));
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

async fn accept_loop(
    shared: Arc<Shared>,
    bind: SocketAddr,
    socket: TcpListener,
    mut stopped: oneshot::Receiver<()>,
) -> Draining {
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let builder = server_builder(&shared);
    loop {
        tokio::select! {
            // A dropped sender (the data plane itself was dropped) also stops the loop.
            _ = &mut stopped => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = socket.accept() => match accepted {
                Ok((stream, client)) => {
                    let connection = Connection { bind, client };
                    let serving = serve(&builder, &graceful, Arc::clone(&shared), connection, stream);
                    connections.spawn(serving);
                }
                Err(error) => {
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
        .header_read_timeout(shared.options.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    builder
}

/// Serves one connection until it closes. Errors end only this connection.
fn serve(
    builder: &auto::Builder<TokioExecutor>,
    graceful: &GracefulShutdown,
    shared: Arc<Shared>,
    connection: Connection,
    stream: TcpStream,
) -> impl Future<Output = ()> + Send + 'static {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "setting TCP_NODELAY failed");
    }
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(proxy::handle(shared, connection, request).await) }
    });
    // WebSocket support (a later issue) switches this to `serve_connection_with_upgrades`.
    let serving = builder
        .serve_connection(TokioIo::new(stream), service)
        .into_owned();
    let watched = graceful.watch(serving);
    async move {
        if let Err(error) = watched.await {
            tracing::debug!(client = %connection.client, %error, "connection ended with an error");
        }
    }
}
