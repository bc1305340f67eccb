//! Self-test of the gRPC echo and the gRPC client with real sockets on loopback and no
//! portcullis: unary calls over one connection and over a connection each, and the
//! Trailers-Only answer of an unimplemented method.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use conformance::grpc::{self, Call, Code, SERVICE};
use conformance::grpc_echo::{self, GrpcEchoIdentity};
use tokio::net::TcpListener;

const TIMEOUT: Duration = Duration::from_secs(5);

async fn start() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("bound address");
    let identity = Arc::new(GrpcEchoIdentity {
        namespace: "selftest".to_owned(),
        pod: "grpc-selftest-abcdefghij-klmno".to_owned(),
    });
    (address, tokio::spawn(grpc_echo::serve(listener, identity)))
}

fn call(method: &str) -> Call {
    Call {
        authority: "foo.example.com".to_owned(),
        full_method: format!("/{SERVICE}/{method}"),
        metadata: vec![("X-Test".to_owned(), "yes".to_owned())],
    }
}

#[tokio::test]
async fn echo_reports_method_authority_metadata_and_pod() {
    let (address, server) = start().await;
    let outcome = grpc::unary(address, None, &call("EchoTwo"), TIMEOUT)
        .await
        .expect("call completes");
    assert_eq!(outcome.code, Code::OK, "{}", outcome.message);
    let assertions = outcome
        .response
        .and_then(|r| r.assertions)
        .expect("assertions");
    assert_eq!(
        assertions.fully_qualified_method,
        format!("/{SERVICE}/EchoTwo")
    );
    assert_eq!(assertions.authority, "foo.example.com");
    assert!(
        assertions
            .headers
            .iter()
            .any(|h| h.key == "x-test" && h.value == "yes")
    );
    let context = assertions.context.expect("context");
    assert_eq!(
        (context.namespace.as_str(), context.pod.as_str()),
        ("selftest", "grpc-selftest-abcdefghij-klmno")
    );
    server.abort();
}

#[tokio::test]
async fn echo_three_is_unimplemented_on_a_shared_connection() {
    let (address, server) = start().await;
    let connection = grpc::connect(address).await.expect("connects");
    for _ in 0..3 {
        let outcome = grpc::unary(address, Some(&connection), &call("EchoThree"), TIMEOUT)
            .await
            .expect("call completes");
        assert_eq!(outcome.code, Code::UNIMPLEMENTED);
        let ok = grpc::unary(address, Some(&connection), &call("Echo"), TIMEOUT)
            .await
            .expect("call completes");
        assert_eq!(ok.code, Code::OK);
    }
    server.abort();
}
