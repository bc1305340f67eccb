//! Connection-level backends and clients: TCP and TLS servers that greet every connection
//! with their name, echo what they receive and say `bye` once the client has half-closed;
//! builders for TLS passthrough, TLS terminate and TCP listeners; and client steps for such
//! conversations.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ir::{
    Backend, BackendProtocol, RouteId, RouteKind, StreamRoute, TcpListener, TlsPassthroughListener,
    TlsTerminateListener, WeightedBackend,
};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::tls::Leaf;
use super::{BIND, PATIENCE, backend};

/// What a backend sends after the client half-closed, before closing itself.
pub const BYE: &[u8] = b"bye\n";

/// A TCP or TLS backend for connection-level routes.
pub struct StreamBackend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The name it greets connections with.
    pub name: String,
}

impl StreamBackend {
    /// A plain TCP backend.
    pub async fn tcp(name: &str) -> Self {
        Self::start(name, None).await
    }

    /// A TLS backend serving `leaf` (TLS 1.2 and 1.3, no ALPN).
    pub async fn tls(name: &str, leaf: &Leaf) -> Self {
        Self::start(name, Some(TlsAcceptor::from(server_config(leaf)))).await
    }

    async fn start(name: &str, tls: Option<TlsAcceptor>) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("backend address");
        let greeting = format!("{name}\n");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let greeting = greeting.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => converse(&greeting, stream).await,
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(stream).await {
                                converse(&greeting, stream).await;
                            }
                        }
                    }
                });
            }
        });
        Self {
            addr,
            name: name.to_string(),
        }
    }

    /// A backend whose only endpoint is this server.
    pub fn backend(&self) -> Arc<Backend> {
        backend(&self.name, BackendProtocol::Http1, &[self.addr])
    }
}

/// Greets, echoes until the client's end of stream, then says bye and closes.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(greeting: &str, mut stream: S) {
    if stream.write_all(greeting.as_bytes()).await.is_err() {
        return;
    }
    let mut buffer = [0; 4096];
    loop {
        match stream.read(&mut buffer).await {
            Ok(0) => break,
            Ok(read) => {
                if stream.write_all(&buffer[..read]).await.is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
    let _ = stream.write_all(BYE).await;
    let _ = stream.shutdown().await;
}

fn server_config(leaf: &Leaf) -> Arc<ServerConfig> {
    let chain = CertificateDer::pem_slice_iter(&leaf.certificate.chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .expect("leaf chain");
    let key = PrivateKeyDer::from_pem_slice(&leaf.certificate.key_pem).expect("leaf key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("usable certificate");
    Arc::new(config)
}

// === client steps ===

/// Reads the backend's greeting: its name.
pub async fn greeting<S: AsyncRead + Unpin>(stream: &mut S) -> String {
    let mut line = Vec::new();
    let reading = async {
        loop {
            let byte = stream.read_u8().await.expect("greeting");
            if byte == b'\n' {
                break;
            }
            line.push(byte);
        }
    };
    tokio::time::timeout(PATIENCE, reading)
        .await
        .expect("greeted in time");
    String::from_utf8(line).expect("greeting is text")
}

/// Sends `message` and expects it back.
pub async fn echo<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, message: &str) {
    stream.write_all(message.as_bytes()).await.expect("send");
    let mut back = vec![0; message.len()];
    tokio::time::timeout(PATIENCE, stream.read_exact(&mut back))
        .await
        .expect("echoed in time")
        .expect("echoed");
    assert_eq!(back, message.as_bytes());
}

/// Half-closes, then expects the backend's `bye` and the end of the connection: the backend
/// saw our end of stream through the gateway, and its answer still came back.
pub async fn finish<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S) {
    stream.shutdown().await.expect("half-close");
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, stream.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .expect("clean close");
    assert_eq!(rest, BYE);
}

/// Connects, sends `bytes`, and returns what comes back before the gateway closes the
/// connection, which it must do within [`PATIENCE`]. A reset counts as a close.
pub async fn closed_after(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The gateway may close before everything is written; that is what is being tested.
    let _ = stream.write_all(bytes).await;
    let mut received = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut received)).await;
    assert!(read.is_ok(), "the gateway kept the connection open");
    received
}

/// Whether the peer closed `stream` (end of stream or reset) within [`PATIENCE`], without
/// sending anything.
pub async fn is_closed<S: AsyncRead + Unpin>(stream: &mut S) -> bool {
    let mut buffer = [0; 64];
    matches!(
        tokio::time::timeout(PATIENCE, stream.read(&mut buffer)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// The first flight of a rustls client for `server_name`: a real ClientHello, for tests that
/// only need the gateway to route a connection, not a backend to complete the handshake.
pub fn client_hello(server_name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = ServerName::try_from(server_name.to_string()).expect("valid server name");
    let mut client = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut hello = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut hello).expect("writing to a Vec");
    }
    hello
}

/// A short pause, for the few tests that must make TCP deliver bytes in separate segments.
pub const SEGMENT_GAP: Duration = Duration::from_millis(20);

// === config builders ===

/// A TLSRoute or TCPRoute rule named `name`.
pub fn stream_route(
    name: &str,
    kind: RouteKind,
    hostnames: &[&str],
    backends: Vec<WeightedBackend>,
) -> Arc<StreamRoute> {
    Arc::new(StreamRoute {
        id: RouteId {
            kind,
            namespace: "default".into(),
            name: name.into(),
            rule: 0,
            rule_name: None,
        },
        hostnames: hostnames
            .iter()
            .map(|h| ir::HostnameMatch::parse(h))
            .collect(),
        backends,
    })
}

/// A TLS passthrough listener with `hostname`.
pub fn passthrough_listener(
    hostname: Option<&str>,
    routes: Vec<Arc<StreamRoute>>,
) -> Arc<TlsPassthroughListener> {
    Arc::new(TlsPassthroughListener {
        gateway: "default/gateway".into(),
        name: hostname.unwrap_or("tls").into(),
        hostname: hostname.map(ir::HostnameMatch::parse),
        routes,
    })
}

/// A TLS listener with `hostname` that terminates with `leaf` and relays to its routes.
pub fn terminate_listener(
    hostname: Option<&str>,
    leaf: &Leaf,
    routes: Vec<Arc<StreamRoute>>,
) -> Arc<TlsTerminateListener> {
    Arc::new(TlsTerminateListener {
        gateway: "default/gateway".into(),
        name: hostname.unwrap_or("terminate").into(),
        hostname: hostname.map(ir::HostnameMatch::parse),
        tls: Arc::clone(&leaf.certificate),
        routes,
    })
}

/// A TCP listener.
pub fn tcp_listener(routes: Vec<Arc<StreamRoute>>) -> Arc<TcpListener> {
    Arc::new(TcpListener {
        gateway: "default/gateway".into(),
        name: "tcp".into(),
        routes,
    })
}

/// A config binding [`BIND`] as `bind` says.
pub fn bind_config(bind: ir::Bind) -> ir::Config {
    ir::Config {
        binds: [(BIND, bind)].into(),
        ..ir::Config::default()
    }
}

/// A config whose [`BIND`] serves one TCP listener with one route to `backends`.
pub fn tcp_config(backends: Vec<WeightedBackend>) -> ir::Config {
    let route = stream_route("tcp", RouteKind::Tcp, &[], backends);
    bind_config(ir::Bind {
        tcp: Some(tcp_listener(vec![route])),
        ..ir::Bind::default()
    })
}
