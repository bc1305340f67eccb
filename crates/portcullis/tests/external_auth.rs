//! The ExternalAuth filter against real authorization services: an HTTP one and an Envoy
//! ext_authz gRPC one (both in this test), approving, denying, and not answering at all.

mod support;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use envoy_types::ext_authz::v3::CheckRequestExt;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue as ProtoHeader, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{
    Authorization, AuthorizationServer,
};
use envoy_types::pb::envoy::service::auth::v3::{
    CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response,
};
use envoy_types::pb::envoy::r#type::v3::HttpStatus;
use envoy_types::pb::google::rpc::Status;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use support::{Gateway, Upstream, free_port, send};

/// What the HTTP authorization service saw: request target, headers, body.
type Seen = Arc<Mutex<Vec<(String, hyper::HeaderMap, Bytes)>>>;

/// An HTTP authorization service: `Authorization: Bearer good` (and, when a body came, the
/// body `hello`) is approved with `x-user: alice` and `x-dropped: yes`; anything else gets
/// 401 with a challenge and a body of its own.
async fn http_authz() -> (u16, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let record = record.clone();
                    async move {
                        let (parts, body) = request.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let good = parts
                            .headers
                            .get("authorization")
                            .is_some_and(|v| v == "Bearer good")
                            && (body.is_empty() || body == "hello");
                        record.lock().expect("lock").push((
                            parts.uri.to_string(),
                            parts.headers.clone(),
                            body,
                        ));
                        let response = if good {
                            hyper::Response::builder()
                                .header("x-user", "alice")
                                .header("x-dropped", "yes")
                                .body(Full::new(Bytes::new()))
                        } else {
                            hyper::Response::builder()
                                .status(401)
                                .header("www-authenticate", "Bearer realm=\"test\"")
                                .body(Full::new(Bytes::from("denied by http authz")))
                        };
                        Ok::<_, std::convert::Infallible>(response.expect("response"))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (port, seen)
}

/// An ext_authz gRPC service: `authorization: Bearer good` is approved with `x-user: bob`
/// on the request and `x-authz: grpc` on the response; anything else is denied with 403 and
/// a body.
#[derive(Clone, Default)]
struct GrpcAuthz {
    seen: Arc<Mutex<Vec<CheckRequest>>>,
}

#[tonic::async_trait]
impl Authorization for GrpcAuthz {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let request = request.into_inner();
        let good = request
            .get_client_headers()
            .and_then(|h| h.get("authorization"))
            .is_some_and(|v| v == "Bearer good");
        self.seen.lock().expect("lock").push(request);
        let header = |key: &str, value: &str| HeaderValueOption {
            header: Some(ProtoHeader {
                key: key.into(),
                value: value.into(),
                raw_value: Vec::new(),
            }),
            append_action: 2,
            ..Default::default()
        };
        let response = if good {
            CheckResponse {
                status: Some(Status::default()),
                http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![header("x-user", "bob")],
                    response_headers_to_add: vec![header("x-authz", "grpc")],
                    ..Default::default()
                })),
                ..Default::default()
            }
        } else {
            CheckResponse {
                status: Some(Status {
                    code: 7,
                    ..Default::default()
                }),
                http_response: Some(check_response::HttpResponse::DeniedResponse(
                    DeniedHttpResponse {
                        status: Some(HttpStatus { code: 403 }),
                        headers: vec![header("x-denied-by", "grpc")],
                        body: "denied by grpc authz".into(),
                    },
                )),
                ..Default::default()
            }
        };
        Ok(tonic::Response::new(response))
    }
}

async fn grpc_authz() -> (u16, GrpcAuthz) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let service = GrpcAuthz::default();
    let server = AuthorizationServer::new(service.clone());
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await;
    });
    (port, service)
}

fn manifests(port: u16, backend: u16, http: u16, grpc: u16, dead: u16) -> String {
    let mut yaml = support::gateway_yaml(port);
    for (name, target) in [
        ("backend", backend),
        ("authz-http", http),
        ("authz-grpc", grpc),
        ("authz-dead", dead),
    ] {
        yaml.push_str(&support::service_yaml(name, target));
    }
    yaml.push_str(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: guarded}
spec:
  parentRefs: [{name: edge}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /http}}]
    filters:
    - type: ExternalAuth
      externalAuth:
        protocol: HTTP
        backendRef: {name: authz-http, port: 80}
        http:
          path: /check
          allowedHeaders: [x-tenant]
          allowedResponseHeaders: [x-user]
    backendRefs: [{name: backend, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /body}}]
    filters:
    - type: ExternalAuth
      externalAuth:
        protocol: HTTP
        backendRef: {name: authz-http, port: 80}
        forwardBody: {maxSize: 16}
    backendRefs: [{name: backend, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /grpc}}]
    filters:
    - type: ExternalAuth
      externalAuth:
        protocol: GRPC
        backendRef: {name: authz-grpc, port: 80}
        grpc: {allowedHeaders: [authorization, x-tenant]}
    backendRefs: [{name: backend, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /down}}]
    filters:
    - type: ExternalAuth
      externalAuth:
        protocol: GRPC
        backendRef: {name: authz-dead, port: 80}
    backendRefs: [{name: backend, port: 80}]
",
    );
    yaml
}

#[tokio::test(flavor = "multi_thread")]
async fn http_and_grpc_services_approve_deny_and_fail_closed() {
    let backend = Upstream::echo_headers().await;
    let (http_port, http_seen) = http_authz().await;
    let (grpc_port, grpc_service) = grpc_authz().await;
    // Nothing listens there: the service is down.
    let dead = free_port();
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = manifests(port, backend.port, http_port, grpc_port, dead);
    support::replace(dir.path(), "all.yaml", &yaml);
    let gateway = Gateway::start(dir.path()).await;
    let base = format!("http://127.0.0.1:{port}");
    let good = [
        ("authorization", "Bearer good"),
        ("x-tenant", "t1"),
        ("x-private", "p"),
    ];
    let url = format!("{base}/http/x?q=1");
    gateway
        .wait_until(|| async {
            send("GET", &url, &good, "")
                .await
                .is_ok_and(|a| a.status == 200)
        })
        .await;

    // HTTP: approved, with only the allowed response header copied into the request.
    let answer = send("GET", &url, &good, "").await.expect("http approved");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains("x-user: alice"), "{}", answer.body);
    assert!(!answer.body.contains("x-dropped"), "{}", answer.body);
    {
        let seen = http_seen.lock().expect("lock");
        let (target, headers, body) = seen.last().expect("the service was asked");
        assert_eq!(target, "/check/http/x?q=1");
        assert_eq!(headers["authorization"], "Bearer good");
        assert_eq!(headers["x-tenant"], "t1");
        assert_eq!(headers["content-length"], "0");
        assert!(
            !headers.contains_key("x-private"),
            "only allowed headers go"
        );
        assert!(body.is_empty());
    }
    // HTTP: denied; the client gets the service's answer and the backend sees nothing.
    let before = backend.hits();
    let answer = send("GET", &url, &[("authorization", "Bearer bad")], "")
        .await
        .expect("http denied");
    assert_eq!(answer.status, 401);
    assert_eq!(answer.headers["www-authenticate"], "Bearer realm=\"test\"");
    assert_eq!(answer.body, "denied by http authz");
    assert_eq!(backend.hits(), before);

    // Body forwarding: the body goes to the service and still reaches the backend; a body
    // over maxSize is refused.
    let answer = send("POST", &format!("{base}/body"), &good, "hello")
        .await
        .expect("body");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        http_seen.lock().expect("lock").last().map(|s| s.2.clone()),
        Some(Bytes::from("hello"))
    );
    let answer = send("POST", &format!("{base}/body"), &good, "hola")
        .await
        .expect("body");
    assert_eq!(answer.status, 401, "the service judged the body");
    let answer = send("POST", &format!("{base}/body"), &good, &"x".repeat(100))
        .await
        .expect("large body");
    assert_eq!(answer.status, 413);

    // gRPC ext_authz: approved, with request and response headers from the service.
    let answer = send("GET", &format!("{base}/grpc/y"), &good, "")
        .await
        .expect("grpc approved");
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains("x-user: bob"), "{}", answer.body);
    assert_eq!(answer.headers["x-authz"], "grpc");
    {
        let seen = grpc_service.seen.lock().expect("lock");
        let check = seen.last().expect("the service was asked");
        let http = check
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .expect("http attributes");
        assert_eq!(http.method, "GET");
        assert_eq!(http.path, "/grpc/y");
        assert_eq!(http.host, format!("127.0.0.1:{port}"));
        assert_eq!(http.headers.get("x-tenant").map(String::as_str), Some("t1"));
        assert!(
            !http.headers.contains_key("x-private"),
            "only allowed headers go"
        );
        let source = check.attributes.as_ref().and_then(|a| a.source.as_ref());
        assert!(
            source.is_some_and(|s| s.address.is_some()),
            "the client's address goes"
        );
    }
    // gRPC: denied with the service's status, header and body.
    let before = backend.hits();
    let answer = send("GET", &format!("{base}/grpc/y"), &[], "")
        .await
        .expect("grpc denied");
    assert_eq!(answer.status, 403);
    assert_eq!(answer.headers["x-denied-by"], "grpc");
    assert_eq!(answer.body, "denied by grpc authz");
    assert_eq!(backend.hits(), before);

    // A service that is down: fail closed.
    let answer = send("GET", &format!("{base}/down"), &good, "")
        .await
        .expect("down");
    assert_eq!(answer.status, 403);
    assert_eq!(backend.hits(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_slower_than_the_timeout_denies() {
    let backend = Upstream::echo_headers().await;
    // An authorization service that accepts connections and never answers in time.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let slow = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|_request: hyper::Request<hyper::body::Incoming>| async {
                    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    let port = free_port();
    let mut yaml = support::gateway_yaml(port);
    yaml.push_str(&support::service_yaml("backend", backend.port));
    yaml.push_str(&support::service_yaml("authz", slow));
    yaml.push_str(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: guarded}
spec:
  parentRefs: [{name: edge}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /guarded}}]
    filters:
    - type: ExternalAuth
      externalAuth: {protocol: HTTP, backendRef: {name: authz, port: 80}}
    backendRefs: [{name: backend, port: 80}]
  - backendRefs: [{name: backend, port: 80}]
",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    support::replace(dir.path(), "all.yaml", &yaml);
    let gateway = Gateway::start_with(dir.path(), &["--external-auth-timeout", "300ms"]).await;
    let open = format!("http://127.0.0.1:{port}/open");
    gateway
        .wait_until(|| async {
            send("GET", &open, &[], "")
                .await
                .is_ok_and(|a| a.status == 200)
        })
        .await;
    let started = std::time::Instant::now();
    let answer = send("GET", &format!("http://127.0.0.1:{port}/guarded"), &[], "")
        .await
        .expect("answer");
    assert_eq!(answer.status, 403);
    // Denied by the timeout, not by the service's ten seconds.
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(
        backend.hits(),
        1,
        "only the readiness request reached the backend"
    );
}
