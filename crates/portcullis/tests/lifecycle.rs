//! Graceful shutdown: on SIGTERM `/ready` turns false, the listeners stop accepting, a request
//! in flight still gets its answer, and the process exits 0.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};

use support::{Gateway, free_port, get};

/// How long the upstream takes to answer: long enough to be in flight at SIGTERM.
const SLOW: Duration = Duration::from_millis(1500);

async fn slow_upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_request| async {
                    tokio::time::sleep(SLOW).await;
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

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let upstream = slow_upstream().await;
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = support::one_route_yaml(port, "slow", upstream);
    support::replace(dir.path(), "all.yaml", &manifests);
    let mut gateway = Gateway::start(dir.path()).await;
    let url = format!("http://127.0.0.1:{port}/");
    gateway
        .wait_until(|| async { get(&url, &[]).await.is_ok_and(|(s, _)| s == 200) })
        .await;

    let in_flight = tokio::spawn({
        let url = url.clone();
        async move { get(&url, &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    gateway.terminate();

    let ready = format!("http://127.0.0.1:{}/ready", gateway.admin);
    gateway
        .wait_until(|| async { get(&ready, &[]).await.is_ok_and(|(s, _)| s == 503) })
        .await;
    let refused = TcpStream::connect(("127.0.0.1", port)).await;
    assert!(
        refused.is_err(),
        "the listener still accepts during the drain"
    );

    let answer = in_flight.await.expect("the request task");
    assert_eq!(
        answer,
        Ok((200, "slow".to_string())),
        "the in-flight request was cut"
    );
    assert_eq!(gateway.exit_code(Duration::from_secs(10)).await, Some(0));
}
