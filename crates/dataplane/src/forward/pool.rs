//! Keep-alive HTTP/1.1 connections to cleartext endpoints, on hyper's connection API.
//!
//! The hot path of most routes, so written here instead of going through hyper-util's
//! legacy client, which the load benchmark's profile showed at the top: for every request
//! it keys its pool by the endpoint's authority string and spawns a task that waits for the
//! response to be read before it hands the connection back. Here a connection goes back to
//! its endpoint's list as soon as the response head arrives, and a checkout takes the most
//! recently used connection whose dispatcher is ready for another request (its previous
//! response has been read); one whose response is still streaming stays listed and is
//! skipped. Each connection is driven by a task of its own, as hyper requires.
//!
//! What hyper-util's client also does and this keeps: a request that a pooled connection
//! did not send (the peer had closed it) goes out once more on a fresh connection; idle
//! connections are closed after the idle timeout; at most `max_idle` ready connections are
//! kept per endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use crate::body::ProxyBody;
use crate::error::ProxyError;

/// Connections per endpoint.
pub(super) struct Http1Pool {
    endpoints: Mutex<HashMap<SocketAddr, Vec<Listed>>>,
    max_idle: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
}

/// A connection in its endpoint's list: idle, or still delivering its last response.
struct Listed {
    sender: SendRequest<ProxyBody>,
    /// When it was last handed back (its last response head). A connection listed longer
    /// than the idle timeout is closed, even if it streamed a response part of that time.
    since: Instant,
}

impl Http1Pool {
    pub(super) fn new(
        max_idle: usize,
        idle_timeout: Duration,
        connect_timeout: Duration,
    ) -> Arc<Self> {
        let pool = Arc::new(Self {
            endpoints: Mutex::default(),
            max_idle,
            idle_timeout,
            connect_timeout,
        });
        // Closes idle connections of endpoints no request asks for any more.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let weak = Arc::downgrade(&pool);
            runtime.spawn(sweep(weak, idle_timeout.max(Duration::from_secs(1))));
        }
        pool
    }

    /// Sends `request` (origin-form target, Host header set) to `endpoint`.
    pub(super) async fn send(
        &self,
        endpoint: SocketAddr,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, ProxyError> {
        if let Some(mut sender) = self.checkout(endpoint) {
            match sender.try_send_request(request).await {
                Ok(response) => {
                    self.checkin(endpoint, sender);
                    return Ok(response);
                }
                Err(mut error) => match error.take_message() {
                    // Not sent: the connection had closed. Once more on a new one.
                    Some(unsent) => request = unsent,
                    None => return Err(upstream(endpoint, error.into_error())),
                },
            }
        }
        let mut sender = self.connect(endpoint).await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| upstream(endpoint, error))?;
        self.checkin(endpoint, sender);
        Ok(response)
    }

    /// The most recently listed ready connection to `endpoint`; closed and expired ones
    /// are dropped on the way.
    fn checkout(&self, endpoint: SocketAddr) -> Option<SendRequest<ProxyBody>> {
        let mut endpoints = self.lock();
        let listed = endpoints.get_mut(&endpoint)?;
        let now = Instant::now();
        listed.retain(|l| !l.sender.is_closed() && now - l.since < self.idle_timeout);
        let position = listed.iter().rposition(|l| l.sender.is_ready());
        let sender = position.map(|p| listed.remove(p).sender);
        if listed.is_empty() {
            endpoints.remove(&endpoint);
        }
        sender
    }

    /// Lists a connection whose response head just arrived, unless the endpoint already
    /// has `max_idle` ready ones (then it closes once its response is read).
    fn checkin(&self, endpoint: SocketAddr, sender: SendRequest<ProxyBody>) {
        if sender.is_closed() {
            return;
        }
        let mut endpoints = self.lock();
        let listed = endpoints.entry(endpoint).or_default();
        if listed.iter().filter(|l| l.sender.is_ready()).count() >= self.max_idle {
            return;
        }
        listed.push(Listed {
            sender,
            since: Instant::now(),
        });
    }

    async fn connect(&self, endpoint: SocketAddr) -> Result<SendRequest<ProxyBody>, ProxyError> {
        let stream = super::connect(endpoint, self.connect_timeout).await?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|error| ProxyError::UpstreamConnect {
                endpoint,
                source: error.into(),
            })?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%endpoint, %error, "upstream connection ended");
            }
        });
        Ok(sender)
    }

    /// Drops closed and expired connections of every endpoint.
    fn sweep(&self) {
        let now = Instant::now();
        self.lock().retain(|_, listed| {
            listed.retain(|l| !l.sender.is_closed() && now - l.since < self.idle_timeout);
            !listed.is_empty()
        });
    }

    /// Connections listed for `endpoint` (idle or streaming), for tests.
    #[cfg(test)]
    fn listed(&self, endpoint: SocketAddr) -> usize {
        self.lock().get(&endpoint).map_or(0, Vec::len)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Vec<Listed>>> {
        // A poisoned map only holds connections; keep using it.
        self.endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

fn upstream(endpoint: SocketAddr, error: hyper::Error) -> ProxyError {
    ProxyError::Upstream {
        endpoint,
        source: error.into(),
    }
}

/// Sweeps every `period` until the pool is dropped.
async fn sweep(pool: Weak<Http1Pool>, period: Duration) {
    let mut ticks = tokio::time::interval(period);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.sweep(),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    /// A response whose body never ends.
    const STREAMING: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n";

    /// An HTTP/1.1 server that sends `reply` to every request and counts its connections;
    /// with `close_after_first`, it closes each connection after its first response.
    async fn server(
        reply: &'static [u8],
        close_after_first: bool,
    ) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buffer = vec![0u8; 4096];
                    let mut pending = Vec::new();
                    loop {
                        let Ok(read) = stream.read(&mut buffer).await else {
                            return;
                        };
                        if read == 0 {
                            return;
                        }
                        pending.extend_from_slice(&buffer[..read]);
                        while let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
                            pending.drain(..end + 4);
                            if stream.write_all(reply).await.is_err() {
                                return;
                            }
                            if close_after_first {
                                return;
                            }
                        }
                    }
                });
            }
        });
        (addr, connections)
    }

    fn get(addr: SocketAddr) -> Request<ProxyBody> {
        let mut request = Request::new(crate::body::empty());
        *request.uri_mut() = http::Uri::from_static("/");
        request.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_str(&addr.to_string()).expect("host"),
        );
        request
    }

    async fn fetch(pool: &Http1Pool, addr: SocketAddr) -> String {
        let response = pool.send(addr, get(addr)).await.expect("response");
        let body = response.into_body().collect().await.expect("body");
        String::from_utf8_lossy(&body.to_bytes()).into_owned()
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection() {
        let (addr, connections) = server(OK, false).await;
        let pool = Http1Pool::new(8, Duration::from_secs(60), Duration::from_secs(5));
        for _ in 0..20 {
            assert_eq!(fetch(&pool, addr).await, "ok");
            // The dispatcher marks the connection ready once it has read the response.
            tokio::task::yield_now().await;
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
        assert_eq!(pool.listed(addr), 1);
    }

    #[tokio::test]
    async fn a_connection_still_streaming_is_not_reused() {
        let (addr, connections) = server(STREAMING, false).await;
        let pool = Http1Pool::new(8, Duration::from_secs(60), Duration::from_secs(5));
        // Two responses whose bodies have not ended: two connections, both listed.
        let first = pool.send(addr, get(addr)).await.expect("first");
        let second = pool.send(addr, get(addr)).await.expect("second");
        assert_eq!(connections.load(Ordering::SeqCst), 2);
        assert_eq!(pool.listed(addr), 2);
        // A body dropped before its end leaves a connection that cannot be reused: it
        // closes, and the next checkout drops it.
        drop((first, second));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(pool.checkout(addr).is_none());
        assert_eq!(pool.listed(addr), 0);
    }

    #[tokio::test]
    async fn a_connection_the_peer_closed_is_replaced_without_failing_the_request() {
        let (addr, connections) = server(OK, true).await;
        let pool = Http1Pool::new(8, Duration::from_secs(60), Duration::from_secs(5));
        for _ in 0..5 {
            assert_eq!(fetch(&pool, addr).await, "ok");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(connections.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let (addr, connections) = server(OK, false).await;
        let pool = Http1Pool::new(8, Duration::from_millis(100), Duration::from_secs(5));
        assert_eq!(fetch(&pool, addr).await, "ok");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(fetch(&pool, addr).await, "ok");
        assert_eq!(connections.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_refused_connect_is_told_apart() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let pool = Http1Pool::new(8, Duration::from_secs(60), Duration::from_secs(5));
        let error = pool.send(addr, get(addr)).await.err();
        assert!(
            matches!(error, Some(ProxyError::ConnectionRefused { .. })),
            "{error:?}"
        );
    }
}
