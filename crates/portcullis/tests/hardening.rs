//! Malformed and hostile HTTP/1.1 requests: the gateway answers them itself (400 or 431) or
//! closes the connection. A request with both Content-Length and Transfer-Encoding is framed
//! by Transfer-Encoding (RFC 9112 §6.3), forwarded with the gateway's own framing, and the
//! connection is closed after the answer, so bytes hidden behind it ("GET /smuggled") are
//! never read as a request. A bad request never takes the process down.

mod support;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
