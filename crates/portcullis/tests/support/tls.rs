//! TLS pieces for egress tests: a test CA, an HTTPS server standing in for the LLM API with a
//! certificate for `api.mistral.ai`, and a client that reaches it directly or through a
//! CONNECT tunnel.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

pub const PATIENCE: Duration = Duration::from_secs(5);

/// A test CA and an HTTPS server presenting a certificate for `api.mistral.ai` (and, to
/// prove that a refusal is the proxy's doing, for `example.com` too).
pub struct Llm {
    roots: Arc<rustls::RootCertStore>,
    pub port: u16,
    pub other_port: u16,
}

impl Llm {
    /// Serves on two ports of `ip` (the second one for "another port" cases).
    pub async fn start(ip: std::net::IpAddr) -> Self {
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
            let listener = TcpListener::bind((ip, 0)).await.expect("bind");
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
    pub async fn call(
        &self,
        proxy: SocketAddr,
        target: &str,
        sni: Option<&str>,
    ) -> io::Result<String> {
        let tunnel = connect_tunnel(proxy, target).await?;
        self.call_over(tunnel, sni).await
    }

    /// A TLS handshake with `sni` (none when `None`) on `stream`, and one request.
    pub async fn call_over(&self, stream: TcpStream, sni: Option<&str>) -> io::Result<String> {
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
        let mut tls = tokio::time::timeout(PATIENCE, connector.connect(name, stream))
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
pub async fn connect_tunnel(proxy: SocketAddr, target: &str) -> io::Result<TcpStream> {
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
