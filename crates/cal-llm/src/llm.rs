//! A local stand-in for the Mistral chat-completions API (HTTPS with a certificate for
//! `api.mistral.ai` from a CA generated at start; a canned completion), and the client
//! calendar-v2 uses to reach it through the egress proxy. Nothing contacts the real host:
//! portcullis resolves the name to this server (`--resolve`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const PATIENCE: Duration = Duration::from_secs(5);

/// A CA and a server certificate signed by it.
pub struct Pki {
    pub roots: Arc<rustls::RootCertStore>,
    acceptor: TlsAcceptor,
}

impl Pki {
    /// A fresh CA and a certificate for `names`.
    pub fn new(names: &[&str]) -> anyhow::Result<Self> {
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate()?;
        let names: Vec<String> = names.iter().map(ToString::to_string).collect();
        let leaf = CertificateParams::new(names)?.signed_by(&key, &issuer)?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone())?;
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)?;
        Ok(Self {
            roots: Arc::new(roots),
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Serves the chat-completions stand-in on `addr` with this certificate.
    pub async fn serve(&self, addr: SocketAddr, answer: &'static str) -> anyhow::Result<()> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding {addr}"))?;
        let acceptor = self.acceptor.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let mut request = vec![0; 8192];
                    let _ = tls.read(&mut request).await;
                    let body = format!(
                        r#"{{"object":"chat.completion","model":"mistral-small-latest","choices":[{{"index":0,"message":{{"role":"assistant","content":"{answer}"}}}}]}}"#
                    );
                    let response = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(response.as_bytes()).await;
                    let _ = tls.shutdown().await;
                });
            }
        });
        Ok(())
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// How a workload reaches an HTTPS API.
pub struct LlmClient {
    pub route: Route,
    pub roots: Arc<rustls::RootCertStore>,
    pub host: String,
    pub port: u16,
}

/// How a workload's connections leave it.
pub enum Route {
    /// Through the explicit egress proxy (HTTP CONNECT).
    Proxy(SocketAddr),
    /// Straight to the host's address, as a pod does; a sidecar intercepts the connection.
    /// Names resolve through this table (no DNS here), as `/etc/hosts` would.
    Direct(BTreeMap<String, IpAddr>),
}

impl LlmClient {
    /// Asks the chat-completions API to summarize `text`; the completion's content.
    pub async fn summarize(&self, text: &str) -> anyhow::Result<String> {
        let prompt = serde_json::json!({
            "model": "mistral-small-latest",
            "messages": [{"role": "user", "content": format!("Summarize: {text}")}],
        })
        .to_string();
        let body = self
            .post(&self.host, "/v1/chat/completions", &prompt)
            .await?;
        let reply: serde_json::Value = serde_json::from_str(&body).context("completion JSON")?;
        reply
            .pointer("/choices/0/message/content")
            .and_then(serde_json::Value::as_str)
            .map(str::to_string)
            .context("no completion content")
    }

    /// POSTs `body` to `https://host:port/path` through the proxy; the response body.
    pub async fn post(&self, host: &str, path: &str, body: &str) -> anyhow::Result<String> {
        let tunnel = match &self.route {
            Route::Proxy(proxy) => connect(*proxy, &format!("{host}:{}", self.port)).await?,
            Route::Direct(hosts) => {
                let ip = hosts
                    .get(host)
                    .with_context(|| format!("{host} does not resolve"))?;
                tokio::time::timeout(PATIENCE, TcpStream::connect((*ip, self.port)))
                    .await
                    .context("connect timed out")?
                    .with_context(|| format!("connecting to {host} ({ip})"))?
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(Arc::clone(&self.roots))
            .with_no_client_auth();
        let name = ServerName::try_from(host.to_string())?;
        let mut tls = tokio::time::timeout(
            PATIENCE,
            TlsConnector::from(Arc::new(config)).connect(name, tunnel),
        )
        .await
        .context("TLS handshake timed out")?
        .context("TLS handshake (refused by the egress proxy?)")?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        tls.write_all(request.as_bytes()).await?;
        let mut response = Vec::new();
        tokio::time::timeout(PATIENCE, tls.read_to_end(&mut response))
            .await
            .context("response timed out")??;
        let text = String::from_utf8_lossy(&response);
        match text.split_once("\r\n\r\n") {
            Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
            _ => bail!("unexpected response: {text:?}"),
        }
    }
}

/// `CONNECT target` through `proxy`; the tunnel once the proxy said 200.
async fn connect(proxy: SocketAddr, target: &str) -> anyhow::Result<TcpStream> {
    let mut stream = TcpStream::connect(proxy)
        .await
        .with_context(|| format!("connecting to the egress proxy {proxy}"))?;
    stream
        .write_all(format!("CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n\r\n").as_bytes())
        .await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(PATIENCE, stream.read(&mut byte))
            .await
            .context("CONNECT answer timed out")??;
        if read == 0 {
            bail!("the proxy closed the connection");
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        bail!("CONNECT refused: {}", String::from_utf8_lossy(&head).trim());
    }
    Ok(stream)
}
