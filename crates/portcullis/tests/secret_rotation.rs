//! A certificate Secret rewritten on disk: new TLS connections get the new certificate while a
//! connection made before the change keeps working with the old one.
//!
//! Starts the real `portcullis` binary on a temporary directory with an HTTPS listener on
//! 127.0.0.1 and an upstream in-process.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use support::{Gateway, Upstream, free_port};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

const HOST: &str = "secure.example.com";

/// A CA and leaves for [`HOST`] signed by it.
struct Pki {
    issuer: Issuer<'static, KeyPair>,
    roots: Arc<RootCertStore>,
}

/// A leaf: its PEM chain and key (as a Secret holds them) and its DER.
struct Leaf {
    chain_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA");
        let mut roots = RootCertStore::empty();
        roots.add(cert.der().clone()).expect("anchor");
        Self {
            issuer: Issuer::new(params, key),
            roots: Arc::new(roots),
        }
    }

    fn leaf(&self) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let params = CertificateParams::new(vec![HOST.to_string()]).expect("names");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf");
        Leaf {
            chain_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    /// A TLS connection to the gateway with SNI [`HOST`], ready for HTTP/1.1 requests, and
    /// the certificate the gateway presented.
    async fn connect(
        &self,
        port: u16,
    ) -> Result<
        (
            hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
            CertificateDer<'static>,
        ),
        String,
    > {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let name = ServerName::try_from(HOST).map_err(|e| e.to_string())?;
        let stream = tokio::time::timeout(
            Duration::from_secs(5),
            TlsConnector::from(Arc::new(config)).connect(name, tcp),
        )
        .await
        .map_err(|_| "handshake timed out".to_string())?
        .map_err(|e| e.to_string())?;
        let leaf = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.clone().into_owned())
            .ok_or("no certificate")?;
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        Ok((sender, leaf))
    }
}

/// `GET /` on an open connection; the status.
async fn get(sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>) -> u16 {
    sender.ready().await.expect("connection still usable");
    let request = hyper::Request::get("/")
        .header("host", HOST)
        .body(Empty::new())
        .expect("request");
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("answered in time")
        .expect("answered");
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    status
}

fn secret_yaml(leaf: &Leaf) -> String {
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    format!(
        "apiVersion: v1
kind: Secret
metadata: {{name: cert}}
type: kubernetes.io/tls
stringData:
  tls.crt: |
{}  tls.key: |
{}",
        indent(&leaf.chain_pem),
        indent(&leaf.key_pem)
    )
}

fn manifests(port: u16, upstream: u16) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {{name: portcullis}}
spec: {{controllerName: portcullis.dev/gateway-controller}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {{name: edge, namespace: default}}
spec:
  gatewayClassName: portcullis
  addresses: [{{type: IPAddress, value: 127.0.0.1}}]
  listeners:
  - {{name: https, port: {port}, protocol: HTTPS, hostname: {HOST}, tls: {{certificateRefs: [{{name: cert}}]}}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{name: web, port: 80}}]}}]
{}",
        support::service_yaml("web", upstream)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_secret_reaches_new_connections_and_old_ones_keep_working() {
    let upstream = Upstream::start("web").await;
    let pki = Pki::new();
    let (first, second) = (pki.leaf(), pki.leaf());
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("base.yaml"), manifests(port, upstream.port)).expect("write");
    support::replace(dir.path(), "secret.yaml", &secret_yaml(&first));
    let gateway = Gateway::start(dir.path()).await;
    gateway
        .wait_until(|| async { pki.connect(port).await.is_ok() })
        .await;

    let (mut before, presented) = pki.connect(port).await.expect("first connection");
    assert!(
        presented == first.der,
        "the gateway presented another certificate"
    );
    assert_eq!(get(&mut before).await, 200);

    support::replace(dir.path(), "secret.yaml", &secret_yaml(&second));
    gateway
        .wait_until(|| async {
            pki.connect(port)
                .await
                .is_ok_and(|(_, presented)| presented == second.der)
        })
        .await;
    let (mut after, _) = pki
        .connect(port)
        .await
        .expect("connection after the rotation");
    assert_eq!(get(&mut after).await, 200);

    // The connection made before the rotation is still served.
    assert_eq!(get(&mut before).await, 200);
    assert!(upstream.hits() >= 3);
}
