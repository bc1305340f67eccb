//! Malformed and hostile HTTP/1.1 requests: the gateway answers them itself (400 or 431) or
//! closes the connection. A request with both Content-Length and Transfer-Encoding is framed
//! by Transfer-Encoding (RFC 9112 §6.3), forwarded with the gateway's own framing, and the
//! connection is closed after the answer, so bytes hidden behind it ("GET /smuggled") are
//! never read as a request. A bad request never takes the process down.

mod support;

use std::convert::Infallible;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::{Gateway, Upstream, free_port, get};

/// A hostile request: what it is, its bytes, and the answers allowed (`None`: closed).
type Case = (&'static str, Vec<u8>, &'static [Option<u16>]);

/// Sends `raw` on a new connection; the status line's code, or `None` if the gateway closed
/// the connection without answering. Panics if more than one response came back: every case
/// is one request, and a second answer would mean hidden bytes were served as a request.
async fn send_raw(port: u16, raw: &[u8]) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    // The gateway may answer and close before it has read everything: a failed write is a
    // refusal like any other.
    let _ = stream.write_all(raw).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response);
    assert!(
        text.matches("HTTP/1.1 ").count() <= 1,
        "more than one response: {text}"
    );
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn smuggling_and_oversized_requests_are_refused() {
    let upstream = Upstream::start("up").await;
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = support::one_route_yaml(port, "up", upstream.port);
    support::replace(dir.path(), "all.yaml", &manifests);
    let gateway = Gateway::start(dir.path()).await;
    let url = format!("http://127.0.0.1:{port}/");
    gateway
        .wait_until(|| async { get(&url, &[]).await.is_ok_and(|(s, _)| s == 200) })
        .await;
    let before = upstream.hits();

    let many_headers: String = (0..200).map(|i| format!("x-h{i}: v\r\n")).collect();
    let huge_header = format!("x-big: {}\r\n", "a".repeat(512 * 1024));
    let cases: [Case; 6] = [
        (
            "Content-Length with Transfer-Encoding",
            b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: a\r\n\r\n".to_vec(),
            &[Some(200), Some(400), None],
        ),
        (
            "two different Content-Lengths",
            b"POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello!".to_vec(),
            &[Some(400), None],
        ),
        (
            "obs-fold header continuation",
            b"GET / HTTP/1.1\r\nhost: a\r\nx-folded: one\r\n two\r\n\r\n".to_vec(),
            &[Some(400), None],
        ),
        (
            "invalid chunk size",
            b"POST / HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(),
            &[Some(400), None],
        ),
        (
            "200 header fields",
            format!("GET / HTTP/1.1\r\nhost: a\r\n{many_headers}\r\n").into_bytes(),
            &[Some(431), None],
        ),
        (
            "a 512 KiB header",
            format!("GET / HTTP/1.1\r\nhost: a\r\n{huge_header}\r\n").into_bytes(),
            &[Some(431), None],
        ),
    ];
    for (case, raw, allowed) in cases {
        let answer = send_raw(port, &raw).await;
        assert!(
            allowed.contains(&answer),
            "{case}: got {answer:?}, allowed {allowed:?}"
        );
    }
    // At most the Transfer-Encoding-framed POST and the chunked body with a bad size (started
    // towards the backend before the size was read) reach it; nothing else does.
    assert!(
        upstream.hits() - before <= 2,
        "{} requests reached the backend",
        upstream.hits() - before
    );
    let (status, _) = get(&url, &[]).await.expect("still serving");
    assert_eq!(status, 200);
}

/// An upstream that answers every request after `delay`.
async fn slow_upstream(delay: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(move |_request| async move {
                    tokio::time::sleep(delay).await;
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from("slow"))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    port
}

/// A gateway with one route to `upstream` on a new port, serving; its URL.
async fn gateway_to(upstream: u16, args: &[&str]) -> (Gateway, String, tempfile::TempDir) {
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    support::replace(
        dir.path(),
        "all.yaml",
        &support::one_route_yaml(port, "up", upstream),
    );
    let gateway = Gateway::start_with(dir.path(), args).await;
    let url = format!("http://127.0.0.1:{port}/");
    gateway
        .wait_until(|| async { get(&url, &[]).await.is_ok_and(|(s, _)| s == 200) })
        .await;
    (gateway, url, dir)
}

/// The port of a `http://127.0.0.1:PORT/` URL.
fn port_of(url: &str) -> u16 {
    url.trim_start_matches("http://127.0.0.1:")
        .trim_end_matches('/')
        .parse()
        .expect("port")
}

/// A keep-alive connection that has been served one request, left open.
async fn served_keep_alive(port: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .expect("write");
    let mut answer = [0u8; 1024];
    let read = stream.read(&mut answer).await.expect("answer");
    assert!(answer[..read].starts_with(b"HTTP/1.1 200"));
    stream
}

/// Slowloris: a client that sends its headers a byte at a time and never ends them is
/// disconnected once `--header-read-timeout` passes, and other clients are served meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_never_finishes_its_headers_is_cut_off_at_the_timeout() {
    let upstream = Upstream::start("up").await;
    let (_gateway, url, _dir) = gateway_to(upstream.port, &["--header-read-timeout", "1s"]).await;
    let port = port_of(&url);

    let started = Instant::now();
    let mut slow = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    slow.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n")
        .await
        .expect("first bytes");
    let dripping = async {
        // A header byte every 100 ms, for up to 10 s; never the blank line that ends them.
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if slow.write_all(b"x").await.is_err() {
                return;
            }
            let mut byte = [0u8; 512];
            // Closed (or reset) ends the drip; a 408 answer before the close is fine.
            let read = tokio::time::timeout(Duration::from_millis(1), slow.read(&mut byte)).await;
            if let Ok(Ok(0) | Err(_)) = read {
                return;
            }
        }
        panic!("the slow client was never disconnected");
    };
    let others = async {
        let mut served = 0;
        for _ in 0..10 {
            let (status, _) = get(&url, &[]).await.expect("another client is served");
            assert_eq!(status, 200);
            served += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        served
    };
    let ((), served) = tokio::join!(dripping, others);
    let cut_after = started.elapsed();
    assert_eq!(served, 10);
    assert!(
        cut_after >= Duration::from_millis(900),
        "cut off after {cut_after:?}, before the 1 s timeout"
    );
}

/// `--max-connections 2`: a third client waits (in the listen backlog) while two connections
/// are open, and is served as soon as one of them closes.
#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_limit_wait_for_a_free_slot() {
    let upstream = Upstream::start("up").await;
    let (gateway, url, _dir) = gateway_to(upstream.port, &["--max-connections", "2"]).await;
    let port = port_of(&url);

    // Two keep-alive connections, each served one request and left open.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(served_keep_alive(port).await);
    }
    let (_, metrics) = gateway.admin("/metrics").await;
    assert!(
        metrics.contains("portcullis_connections_open 2"),
        "open connections not counted:\n{metrics}"
    );

    let third = tokio::spawn({
        let url = url.clone();
        async move { get(&url, &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "a third connection was served");
    drop(held.pop());
    let (status, _) = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a slot is free")
        .expect("task")
        .expect("request");
    assert_eq!(status, 200);
}

/// HTTP/2 rapid reset: a client that opens streams and cancels them right away has its
/// connection closed once most of 500 streams were cancelled early; other clients go on.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_cancelling_most_of_its_streams_is_disconnected() {
    let upstream = slow_upstream(Duration::from_secs(2)).await;
    let (gateway, url, _dir) = gateway_to(upstream, &[]).await;
    let authority = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();

    let stream = TcpStream::connect(&authority).await.expect("connect");
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2c handshake");
    let connection = tokio::spawn(connection);
    let mut opened = 0;
    // Batches of 20 streams, each cancelled 50 ms after it was sent (time for the gateway
    // to take them on: streams reset before that hit hyper's own, smaller limit); bounded.
    for _ in 0..60 {
        if connection.is_finished() {
            break;
        }
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let request = hyper::Request::get(format!("http://{authority}/"))
                    .body(Empty::<Bytes>::new())
                    .expect("request");
                let mut sender = sender.clone();
                tokio::spawn(async move { sender.send_request(request).await })
            })
            .collect();
        opened += calls.len();
        tokio::time::sleep(Duration::from_millis(50)).await;
        for call in calls {
            call.abort();
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("the gateway closed the connection")
        .expect("connection task");
    assert!(opened >= 500, "closed after only {opened} streams");
    let (_, metrics) = gateway.admin("/metrics").await;
    assert!(
        metrics.contains("portcullis_http2_premature_reset_closes_total 1"),
        "closure not counted:\n{metrics}"
    );
    let (status, body) = get(&url, &[]).await.expect("others are served");
    assert_eq!((status, body.as_str()), (200, "slow"));
}

/// An HTTP/1.1 keep-alive connection left idle is closed once `--header-read-timeout`
/// passes without the next request's headers.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_keep_alive_connection_is_closed_at_the_header_timeout() {
    let upstream = Upstream::start("up").await;
    let (_gateway, url, _dir) = gateway_to(upstream.port, &["--header-read-timeout", "1s"]).await;
    let port = port_of(&url);
    let mut stream = served_keep_alive(port).await;
    let mut answer = [0u8; 1024];
    let idle = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.read(&mut answer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle connection stayed open for 10 s");
    assert!(
        idle.elapsed() >= Duration::from_millis(900),
        "closed after {:?}, before the timeout",
        idle.elapsed()
    );
}
