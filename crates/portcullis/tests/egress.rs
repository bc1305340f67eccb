//! Egress through the explicit proxy: `apps/deny-all` (an EgressNetwork with
//! `trafficPolicy: Deny`) plus routes that allow `api.mistral.ai` over TLS and
//! `docs.example.com` over plain HTTP; everything else is refused, and every decision shows
//! in the metrics. `api.mistral.ai` is a local HTTPS server with a certificate from a test CA,
//! reached through `--resolve`: nothing leaves the loopback interface.

mod support;

use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use support::tls::{Llm, PATIENCE, connect_tunnel};
use support::{Upstream, free_port};

/// An absolute-form request through the proxy: status, the egress error header, body.
async fn proxied_get(
    proxy: SocketAddr,
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(u16, Option<String>, String), String> {
    let stream = TcpStream::connect(proxy).await.map_err(|e| e.to_string())?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{e}"))?;
    let host = uri.authority().map(|a| a.to_string()).unwrap_or_default();
    let mut request = hyper::Request::get(uri);
    if !headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("host"))
    {
        request = request.header("host", host);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let error = response
        .headers()
        .get(dataplane::EGRESS_ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, error, String::from_utf8_lossy(&body).into_owned()))
}

/// A gRPC call over h2c inside a CONNECT tunnel; returns the `grpc-status` the proxy sent.
async fn grpc_status(proxy: SocketAddr, target: &str, path: &str) -> Result<String, String> {
    let tunnel = connect_tunnel(proxy, target)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tunnel))
            .await
            .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let request = hyper::Request::post(format!("http://{target}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(PATIENCE, sender.send_request(request))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .ok_or_else(|| format!("no grpc-status in {:?}", response.headers()))
}

fn manifests(llm_port: u16, http_port: u16, gateway_port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Namespace
metadata: {{name: apps}}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: EgressNetwork
metadata: {{name: deny-all, namespace: apps}}
spec:
  trafficPolicy: Deny
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {{name: allow-mistral-ai-access, namespace: apps}}
spec:
  hostnames: [api.mistral.ai]
  parentRefs:
  - {{group: policy.linkerd.io, kind: EgressNetwork, name: deny-all, port: {llm_port}}}
  rules:
  - backendRefs:
    - {{group: policy.linkerd.io, kind: EgressNetwork, name: deny-all}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: docs, namespace: apps}}
spec:
  hostnames: [docs.example.com]
  parentRefs:
  - {{group: policy.linkerd.io, kind: EgressNetwork, name: deny-all, port: {http_port}}}
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /internal}}}}]
    backendRefs: [{{name: egress-gateway, port: 80}}]
  - matches: [{{path: {{type: PathPrefix, value: /docs}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: egress-gateway, namespace: apps}}
spec: {{ports: [{{port: 80, targetPort: {gateway_port}}}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {{name: egress-gateway, namespace: apps, labels: {{kubernetes.io/service-name: egress-gateway}}}}
addressType: IPv4
ports: [{{port: {gateway_port}}}]
endpoints: [{{addresses: [127.0.0.1]}}]
"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn explicit_proxy_allows_only_named_hosts() {
    let llm = Llm::start([127, 0, 0, 1].into()).await;
    let docs = Upstream::start("docs").await;
    let egress_gateway = Upstream::start("egress-gateway").await;
    let dir = tempfile::tempdir().expect("tempdir");
    support::replace(
        dir.path(),
        "egress.yaml",
        &manifests(llm.port, docs.port, egress_gateway.port),
    );
    let proxy_port = free_port();
    let proxy: SocketAddr = ([127, 0, 0, 1], proxy_port).into();
    let gateway = support::Gateway::start_with(
        dir.path(),
        &[
            "--egress-proxy",
            &proxy.to_string(),
            "--workload-namespace",
            "apps",
            "--resolve",
            "api.mistral.ai=127.0.0.1",
            "--resolve",
            "example.com=127.0.0.1",
            "--resolve",
            "docs.example.com=127.0.0.1",
            "--resolve",
            "other.example.com=127.0.0.1",
        ],
    )
    .await;
    let mistral = format!("api.mistral.ai:{}", llm.port);
    gateway
        .wait_until(|| async {
            llm.call(proxy, &mistral, Some("api.mistral.ai"))
                .await
                .is_ok()
        })
        .await;

    // Allowed: the named host on the route's port.
    let body = llm
        .call(proxy, &mistral, Some("api.mistral.ai"))
        .await
        .expect("api.mistral.ai is allowed");
    assert!(body.contains("choices"), "{body}");

    // Refused: another host, an IP literal, no SNI, an allowed SNI inside a tunnel to
    // another host, and the allowed host on another port.
    let example = format!("example.com:{}", llm.port);
    let literal = format!("127.0.0.1:{}", llm.port);
    let other_port = format!("api.mistral.ai:{}", llm.other_port);
    let refusals = [
        ("another host", example.as_str(), Some("example.com")),
        ("an IP literal", literal.as_str(), Some("api.mistral.ai")),
        ("no SNI", mistral.as_str(), None),
        (
            "allowed SNI, other CONNECT host",
            example.as_str(),
            Some("api.mistral.ai"),
        ),
        (
            "SNI of another host in an allowed tunnel",
            mistral.as_str(),
            Some("example.com"),
        ),
        ("another port", other_port.as_str(), Some("api.mistral.ai")),
    ];
    for (case, target, sni) in refusals {
        let result = llm.call(proxy, target, sni).await;
        assert!(
            result.is_err(),
            "{case}: expected a refusal, got {result:?}"
        );
    }

    // Plain HTTP: the route's host and path go to the original destination, /internal to the
    // in-cluster egress gateway; another host is answered 403 with the egress header.
    let docs_url = format!("http://docs.example.com:{}/docs/intro", docs.port);
    let (status, _, body) = proxied_get(proxy, &docs_url, &[]).await.expect("answered");
    assert_eq!((status, body.as_str()), (200, "docs"));
    let internal = format!("http://docs.example.com:{}/internal/x", docs.port);
    let (status, _, body) = proxied_get(proxy, &internal, &[]).await.expect("answered");
    assert_eq!((status, body.as_str()), (200, "egress-gateway"));
    let other = format!("http://other.example.com:{}/docs", docs.port);
    let (status, error, body) = proxied_get(proxy, &other, &[]).await.expect("answered");
    assert_eq!(status, 403);
    assert_eq!(error.as_deref(), Some("traffic not allowed"));
    assert_eq!(body, "");
    let (status, _, _) = proxied_get(proxy, &docs_url, &[("host", "other.example.com")])
        .await
        .expect("answered");
    assert_eq!(status, 400, "a Host that disagrees with the URI is refused");
    let (status, _, _) = proxied_get(
        proxy,
        &docs_url,
        &[("host", "docs.example.com"), ("host", "other.example.com")],
    )
    .await
    .expect("answered");
    assert_eq!(status, 400, "two Host headers are refused");

    // gRPC to a path no route allows: PERMISSION_DENIED.
    let docs_target = format!("docs.example.com:{}", docs.port);
    let code = grpc_status(proxy, &docs_target, "/calendar.Calendar/List")
        .await
        .expect("a gRPC answer");
    assert_eq!(code, "7");

    // Every decision is counted.
    let (_, metrics) = gateway.admin("/metrics").await;
    for expected in [
        r#"route="apps/allow-mistral-ai-access",hostname="api.mistral.ai",decision="allow""#,
        r#"route="tls-egress-deny",hostname="example.com",decision="deny""#,
        r#"route="apps/docs",hostname="docs.example.com",decision="allow""#,
        r#"route="http-egress-deny",hostname="other.example.com",decision="deny""#,
    ] {
        assert!(metrics.contains(expected), "{expected} not in\n{metrics}");
    }
    assert_eq!(docs.hits(), 1, "only the allowed request reached docs");
}
