//! Keep-alive HTTP/1.1 connections to cleartext endpoints.
//!
//! The hot path of most routes. Bodiless idempotent requests take the direct exchange
//! (`direct.rs`): the request's task writes the head and the response body reads the
//! socket, and the connection comes back to its endpoint's list when the body has ended.
//! Other requests go through hyper's connection API, one task per connection: such a
//! connection goes back to its list as soon as the response head arrives, and a checkout
//! takes the most recently used connection whose dispatcher is ready for another request
//! (its previous response has been read); one whose response is still streaming stays
//! listed and is skipped.
//!
//! Both replace hyper-util's legacy client, which the load benchmark's profile showed at
//! the top: for every request it keys its pool by the endpoint's authority string and
//! spawns a task that waits for the response to be read before it hands the connection
//! back. What that client also does and this keeps: a request that a pooled connection did
//! not send (the peer had closed it) goes out once more on a fresh connection; idle
//! connections are closed after the idle timeout; at most `max_idle` ready connections are
//! kept per endpoint.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use super::UpstreamBody;
use super::direct::{self, Connection};
use crate::body::ProxyBody;
use crate::error::ProxyError;

/// Connections per endpoint.
pub(super) struct Http1Pool {
    /// hyper's connections.
    endpoints: Mutex<HashMap<SocketAddr, Vec<Listed>>>,
    /// Idle connections of the direct exchange, the most recently used last.
    direct: Mutex<HashMap<SocketAddr, Vec<Connection>>>,
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
            direct: Mutex::default(),
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
        self: &Arc<Self>,
        endpoint: SocketAddr,
        request: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        if direct::eligible(&request) {
            return self.send_direct(endpoint, request).await;
        }
        let response = self.send_hyper(endpoint, request).await?;
        Ok(response.map(UpstreamBody::Hyper))
    }

    /// The direct exchange: on the most recently used idle connection, and once more on a
    /// new one if that had closed (the method is idempotent, and nothing came back).
    async fn send_direct(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        request: Request<ProxyBody>,
    ) -> Result<Response<UpstreamBody>, ProxyError> {
        let (parts, _) = request.into_parts();
        let mut head = Vec::with_capacity(256);
        super::h1::encode_request(&parts, &mut head);
        if let Some(mut connection) = self.checkout_direct(endpoint) {
            match connection
                .round_trip(&head, &parts.method, true, endpoint)
                .await
            {
                Ok(answer) => {
                    let response = direct::response(connection, answer, self.clone(), endpoint);
                    return Ok(response.map(UpstreamBody::Direct));
                }
                Err(failure) if failure.stale => {}
                Err(failure) => return Err(failure.error),
            }
        }
        let stream = super::connect(endpoint, self.connect_timeout).await?;
        let mut connection = Connection::new(stream);
        let answer = connection
            .round_trip(&head, &parts.method, false, endpoint)
            .await
            .map_err(|failure| failure.error)?;
        let response = direct::response(connection, answer, self.clone(), endpoint);
        Ok(response.map(UpstreamBody::Direct))
    }

    /// The most recently used idle direct connection to `endpoint` that still looks open;
    /// expired and closed ones are dropped on the way.
    fn checkout_direct(&self, endpoint: SocketAddr) -> Option<Connection> {
        let mut endpoints = self.lock_direct();
        let idle = endpoints.get_mut(&endpoint)?;
        let now = Instant::now();
        let mut found = None;
        while let Some(connection) = idle.pop() {
            if now - connection.since < self.idle_timeout && connection.looks_open() {
                found = Some(connection);
                break;
            }
        }
        if idle.is_empty() {
            endpoints.remove(&endpoint);
        }
        found
    }

    /// Keeps a direct connection whose response has been read, unless `endpoint` already
    /// has `max_idle` idle ones.
    pub(super) fn checkin_direct(&self, endpoint: SocketAddr, mut connection: Connection) {
        let mut endpoints = self.lock_direct();
        let idle = endpoints.entry(endpoint).or_default();
        if idle.len() < self.max_idle {
            connection.since = Instant::now();
            idle.push(connection);
        }
    }

    /// Sends `request` through hyper on a connection of its own task.
    async fn send_hyper(
        &self,
        endpoint: SocketAddr,
        mut request: Request<ProxyBody>,
    ) -> Result<Response<hyper::body::Incoming>, ProxyError> {
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
        self.lock_direct().retain(|_, idle| {
            idle.retain(|c| now - c.since < self.idle_timeout && c.looks_open());
            !idle.is_empty()
        });
    }

    /// Connections listed for `endpoint` (idle or streaming), for tests.
    #[cfg(test)]
    fn listed(&self, endpoint: SocketAddr) -> usize {
        self.lock().get(&endpoint).map_or(0, Vec::len)
    }

    /// Idle direct connections to `endpoint`, for tests.
    #[cfg(test)]
    fn idle_direct(&self, endpoint: SocketAddr) -> usize {
        self.lock_direct().get(&endpoint).map_or(0, Vec::len)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Vec<Listed>>> {
        // A poisoned map only holds connections; keep using it.
        self.endpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_direct(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Vec<Connection>>> {
        // A poisoned map only holds connections; keep using it.
        self.direct.lock().unwrap_or_else(PoisonError::into_inner)
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

    use http_body::Body as _;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    /// A response whose body never ends.
    const STREAMING: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n";

    /// What a test server does with the `n`th request (from 0) of a connection: answer it
    /// with these bytes and keep the connection, answer and close, or close unanswered.
    #[derive(Clone, Copy)]
    enum Step {
        Reply(&'static [u8]),
        ReplyAndClose(&'static [u8]),
        Close,
    }

    /// An HTTP/1.1 server that follows `script` on every connection and counts its
    /// connections. Request bodies are not read; requests are told apart by their heads.
    async fn scripted(script: fn(usize) -> Step) -> (SocketAddr, Arc<AtomicUsize>) {
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
                    let mut served = 0;
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
                            let step = script(served);
                            served += 1;
                            match step {
                                Step::Reply(reply) | Step::ReplyAndClose(reply) => {
                                    if stream.write_all(reply).await.is_err() {
                                        return;
                                    }
                                    if matches!(step, Step::ReplyAndClose(_)) {
                                        return;
                                    }
                                }
                                Step::Close => return,
                            }
                        }
                    }
                });
            }
        });
        (addr, connections)
    }

    fn request(addr: SocketAddr, method: http::Method, body: &'static str) -> Request<ProxyBody> {
        let mut request = Request::new(if body.is_empty() {
            crate::body::empty()
        } else {
            crate::body::full(body)
        });
        *request.method_mut() = method;
        *request.uri_mut() = http::Uri::from_static("/");
        request.headers_mut().insert(
            http::header::HOST,
            http::HeaderValue::from_str(&addr.to_string()).expect("host"),
        );
        request
    }

    /// A GET: the direct exchange.
    fn get(addr: SocketAddr) -> Request<ProxyBody> {
        request(addr, http::Method::GET, "")
    }

    /// A POST with a body: hyper's connections.
    fn post(addr: SocketAddr) -> Request<ProxyBody> {
        request(addr, http::Method::POST, "x")
    }

    async fn exchange(
        pool: &Arc<Http1Pool>,
        addr: SocketAddr,
        request: Request<ProxyBody>,
    ) -> String {
        let response = pool.send(addr, request).await.expect("response");
        let body = response.into_body().collect().await.expect("body");
        String::from_utf8_lossy(&body.to_bytes()).into_owned()
    }

    async fn fetch(pool: &Arc<Http1Pool>, addr: SocketAddr) -> String {
        exchange(pool, addr, get(addr)).await
    }

    fn pool() -> Arc<Http1Pool> {
        Http1Pool::new(8, Duration::from_secs(60), Duration::from_secs(5))
    }

    #[tokio::test]
    async fn sequential_requests_share_one_connection() {
        let (addr, connections) = scripted(|_| Step::Reply(OK)).await;
        let pool = pool();
        for _ in 0..20 {
            assert_eq!(fetch(&pool, addr).await, "ok");
        }
        for _ in 0..5 {
            assert_eq!(exchange(&pool, addr, post(addr)).await, "ok");
            // hyper's dispatcher marks its connection ready once it has read the response.
            tokio::task::yield_now().await;
        }
        // One connection for the direct exchange, one of hyper's.
        assert_eq!(connections.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle_direct(addr), 1);
        assert_eq!(pool.listed(addr), 1);
    }

    #[tokio::test]
    async fn a_connection_still_streaming_is_not_reused() {
        let (addr, connections) = scripted(|_| Step::Reply(STREAMING)).await;
        let pool = pool();
        // Two responses whose bodies have not ended: two connections, both listed.
        let first = pool.send(addr, post(addr)).await.expect("first");
        let second = pool.send(addr, post(addr)).await.expect("second");
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
    async fn a_direct_connection_comes_back_only_after_its_body() {
        let (addr, connections) = scripted(|_| Step::Reply(STREAMING)).await;
        let pool = pool();
        let mut first = pool.send(addr, get(addr)).await.expect("first");
        let frame = first
            .body_mut()
            .frame()
            .await
            .expect("a frame")
            .expect("data");
        assert_eq!(frame.into_data().expect("data"), "ok");
        let second = pool.send(addr, get(addr)).await.expect("second");
        assert_eq!(connections.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle_direct(addr), 0);
        // Dropped before their ends: closed, never listed.
        drop((first, second));
        assert_eq!(pool.idle_direct(addr), 0);
    }

    #[tokio::test]
    async fn a_connection_the_peer_closed_is_replaced_without_failing_the_request() {
        let (addr, connections) = scripted(|_| Step::ReplyAndClose(OK)).await;
        let pool = pool();
        for _ in 0..5 {
            assert_eq!(fetch(&pool, addr).await, "ok");
            assert_eq!(exchange(&pool, addr, post(addr)).await, "ok");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(connections.load(Ordering::SeqCst), 10);
    }

    #[tokio::test]
    async fn a_request_that_finds_its_connection_closing_goes_again_on_a_new_one() {
        // Each connection answers one request, then reads the next and closes unanswered:
        // the closed connection looked open when it was taken.
        let (addr, connections) = scripted(|n| match n {
            0 => Step::Reply(OK),
            _ => Step::Close,
        })
        .await;
        let pool = pool();
        for _ in 0..3 {
            assert_eq!(fetch(&pool, addr).await, "ok");
        }
        assert_eq!(connections.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn chunked_bodies_and_interim_responses_are_read_and_the_connection_reused() {
        let (addr, connections) = scripted(|_| {
            Step::Reply(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nx-sum: 5\r\n\r\n",
            )
        })
        .await;
        let pool = pool();
        for _ in 0..3 {
            let response = pool.send(addr, get(addr)).await.expect("response");
            assert_eq!(response.status(), http::StatusCode::OK);
            let collected = response.into_body().collect().await.expect("body");
            assert_eq!(collected.trailers().expect("trailers")["x-sum"], "5");
            assert_eq!(collected.to_bytes(), "abcde");
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn connections_that_cannot_carry_another_request_are_not_kept() {
        let (close, _) = scripted(|_| {
            Step::Reply(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok")
        })
        .await;
        // More bytes than the length said: whatever follows is not a response to us.
        let (extra, _) =
            scripted(|_| Step::Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA")).await;
        // No length: the body runs until the upstream closes.
        let (until_close, _) =
            scripted(|_| Step::ReplyAndClose(b"HTTP/1.1 200 OK\r\n\r\nall of it")).await;
        let pool = pool();
        assert_eq!(fetch(&pool, close).await, "ok");
        assert_eq!(fetch(&pool, extra).await, "ok");
        assert_eq!(fetch(&pool, until_close).await, "all of it");
        for addr in [close, extra, until_close] {
            assert_eq!(pool.idle_direct(addr), 0);
        }
    }

    #[tokio::test]
    async fn a_head_response_has_no_body_whatever_its_length() {
        let (addr, connections) =
            scripted(|_| Step::Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\n")).await;
        let pool = pool();
        for _ in 0..2 {
            let response = pool
                .send(addr, request(addr, http::Method::HEAD, ""))
                .await
                .expect("response");
            assert_eq!(response.headers()["content-length"], "9");
            assert!(response.body().is_end_stream());
        }
        assert_eq!(connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn bad_responses_are_upstream_errors() {
        let (garbage, _) = scripted(|_| Step::Reply(b"NOT HTTP\r\n\r\n")).await;
        let (lengths, _) = scripted(|_| {
            Step::Reply(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nok")
        })
        .await;
        let (silent, _) = scripted(|_| Step::Close).await;
        let pool = pool();
        for addr in [garbage, lengths, silent] {
            let error = pool.send(addr, get(addr)).await.err();
            assert!(
                matches!(error, Some(ProxyError::Upstream { .. })),
                "{error:?}"
            );
        }
        // A body cut short fails the body, not the head.
        let (short, _) =
            scripted(|_| Step::ReplyAndClose(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nok"))
                .await;
        let response = pool.send(short, get(short)).await.expect("head");
        assert!(response.into_body().collect().await.is_err());
        assert_eq!(pool.idle_direct(short), 0);
    }

    #[tokio::test]
    async fn idle_connections_expire() {
        let (addr, connections) = scripted(|_| Step::Reply(OK)).await;
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
        let pool = pool();
        for request in [get(addr), post(addr)] {
            let error = pool.send(addr, request).await.err();
            assert!(
                matches!(error, Some(ProxyError::ConnectionRefused { .. })),
                "{error:?}"
            );
        }
    }
}
