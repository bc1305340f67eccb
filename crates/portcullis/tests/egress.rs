//! Egress through the explicit proxy: `apps/deny-all` (an EgressNetwork with
//! `trafficPolicy: Deny`) plus routes that allow `api.mistral.ai` over TLS and
//! `docs.example.com` over plain HTTP; everything else is refused, and every decision shows
//! in the metrics. `api.mistral.ai` is a local HTTPS server with a certificate from a test CA,
//! reached through `--resolve`: nothing leaves the loopback interface.

mod support;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use support::{Upstream, free_port};

const PATIENCE: Duration = Duration::from_secs(5);

/// A test CA and an HTTPS server presenting a certificate for `api.mistral.ai` (and, to
/// prove that a refusal is the proxy's doing, for `example.com` too).
struct Llm {
    roots: Arc<rustls::RootCertStore>,
    port: u16,
    other_port: u16,
}

impl Llm {
    async fn start() -> Self {
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().expect("CA key");
        let ca_cert = ca.self_signed(&ca_key).expect("CA");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("key");
        let leaf = CertificateParams::new(vec!["api.mistral.ai".into(), "example.com".into()])
            .expect("names")
            .signed_by(&key, &issuer)
            .expect("leaf");
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).expect("root");
        let chain = vec![leaf.der().clone()];
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).expect("key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let mut ports = Vec::new();
        for _ in 0..2 {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            ports.push(listener.local_addr().expect("addr").port());
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                while let Ok((stream, _)) = listener.accept().await {
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let mut request = vec![0; 4096];
                        let _ = tls.read(&mut request).await;
                        let body = r#"{"choices":[{"message":{"content":"ok"}}]}"#;
                        let response = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = tls.write_all(response.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    });
                }
            });
        }
        Self {
            roots: Arc::new(roots),
            port: ports[0],
            other_port: ports[1],
        }
    }

    /// Opens a CONNECT tunnel to `target` through the proxy, then runs a TLS handshake with
    /// `sni` (none when `None`) inside it and one request. Ok(body) when the LLM answered.
    async fn call(&self, proxy: SocketAddr, target: &str, sni: Option<&str>) -> io::Result<String> {
        let tunnel = connect_tunnel(proxy, target).await?;
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_root_certificates(Arc::clone(&self.roots))
        .with_no_client_auth();
        // Without SNI the client still verifies the certificate against api.mistral.ai.
        config.enable_sni = sni.is_some();
        let name = ServerName::try_from(sni.unwrap_or("api.mistral.ai").to_string())
            .map_err(io::Error::other)?;
        let connector = TlsConnector::from(Arc::new(config));
        let mut tls = tokio::time::timeout(PATIENCE, connector.connect(name, tunnel))
            .await
            .map_err(|_| io::Error::other("handshake timed out"))??;
        tls.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: api.mistral.ai\r\ncontent-length: 0\r\n\r\n")
            .await?;
        let mut response = Vec::new();
        tokio::time::timeout(PATIENCE, tls.read_to_end(&mut response))
            .await
            .map_err(|_| io::Error::other("response timed out"))??;
        let text = String::from_utf8_lossy(&response).into_owned();
        match text.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
            _ => Err(io::Error::other(format!("unexpected response {text:?}"))),
        }
    }
}

/// `CONNECT target` on a new connection to the proxy; the stream once the proxy said 200.
async fn connect_tunnel(proxy: SocketAddr, target: &str) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect(proxy).await?;
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n\r\n").as_bytes())
        .await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut byte))
            .await
            .map_err(|_| io::Error::other("CONNECT answer timed out"))??;
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.push(byte[0]);
    }
    if head.starts_with(b"HTTP/1.1 200") {
        Ok(stream)
    } else {
        Err(io::Error::other(
            String::from_utf8_lossy(&head).into_owned(),
        ))
    }
}

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
    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("host")) {
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
    let llm = Llm::start().await;
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
