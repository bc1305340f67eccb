//! TLS throughput on one core: full handshakes per second (no session resumption), HTTPS
//! requests on a new connection each, HTTPS requests on one keep-alive connection, and
//! requests to a backend reached over TLS (BackendTLSPolicy origination, pooled).
//!
//! Client, gateway and upstream all run on one current-thread runtime, so the numbers are
//! what one core does for both ends of the gateway's connections. Everything is on
//! 127.0.0.1. Run with `cargo bench -p dataplane --bench tls`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dataplane::{Dataplane, Options};
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use ir::{
    Action, Backend, BackendProtocol, BackendTarget, BackendTls, BackendTrust, Candidate, Endpoint,
    HttpListener, HttpMatch, PathMatch, RedirectScheme, RequestFilters, RouteId, RouteKind,
    RouteTable, Rule, Timeouts, TlsCertificate, WeightedBackend,
};
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::client::Resumption;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::{TcpListener, TcpStream};

const HOST: &str = "bench.example.com";

/// The CA and a leaf for [`HOST`].
struct Pki {
    ca_pem: Vec<u8>,
    roots: Arc<RootCertStore>,
    leaf: Arc<TlsCertificate>,
}

fn pki() -> Pki {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let key = KeyPair::generate().expect("CA key");
    let ca = params.self_signed(&key).expect("CA");
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).expect("anchor");
    let issuer = Issuer::new(params, key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec![HOST.to_string()])
        .expect("names")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf");
    Pki {
        ca_pem: ca.pem().into_bytes(),
        roots: Arc::new(roots),
        leaf: Arc::new(TlsCertificate {
            source: "bench/leaf".into(),
            chain_pem: leaf.pem().into_bytes(),
            key_pem: leaf_key.serialize_pem().into_bytes(),
        }),
    }
}

/// A plain HTTP/1.1 upstream answering `ok`; with `tls`, it serves that certificate.
async fn upstream(tls: Option<&TlsCertificate>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let acceptor = tls.map(|certificate| {
        let chain = CertificateDer::pem_slice_iter(&certificate.chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .expect("chain");
        let key = PrivateKeyDer::from_pem_slice(&certificate.key_pem).expect("key");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    });
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let service = service_fn(|_request: Request<hyper::body::Incoming>| async {
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let builder = hyper::server::conn::http1::Builder::new();
                match acceptor {
                    Some(acceptor) => {
                        if let Ok(stream) = acceptor.accept(stream).await {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                    None => {
                        let _ = builder
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    }
                }
            });
        }
    });
    addr
}

/// A gateway with an HTTPS listener (serving `pki.leaf`) forwarding to `backend`.
async fn gateway(pki: &Pki, backend: Arc<Backend>) -> (Dataplane, SocketAddr) {
    let key: SocketAddr = ([127, 0, 0, 1], 0).into();
    let rule = Rule {
        id: RouteId {
            kind: RouteKind::Http,
            namespace: "bench".into(),
            name: "all".into(),
            rule: 0,
            rule_name: None,
        },
        filters: RequestFilters::default(),
        action: Action::Forward(vec![WeightedBackend {
            weight: 1,
            target: BackendTarget::Service(backend),
            request_headers: None,
            response_headers: None,
        }]),
        timeouts: Timeouts::default(),
        retry: None,
        policies: Default::default(),
    };
    let candidate = Candidate {
        hostname: None,
        matcher: HttpMatch {
            path: PathMatch::prefix("/"),
            ..HttpMatch::default()
        },
        rule: Arc::new(rule),
        route_rank: 0,
        match_index: 0,
    };
    let listener = Arc::new(HttpListener {
        gateway: "bench/gateway".into(),
        name: "https".into(),
        hostname: None,
        port: 443,
        scheme: RedirectScheme::Https,
        routes: RouteTable::new(vec![candidate]),
        tls: Some(pki.leaf.clone()),
        client_validation: None,
        backend_client_certificate: None,
    });
    let config = ir::Config {
        binds: BTreeMap::from([(
            key,
            ir::Bind {
                http: vec![listener],
                ..ir::Bind::default()
            },
        )]),
        ..ir::Config::default()
    };
    let dataplane = Dataplane::new(Options::default());
    let failures = dataplane.apply(Arc::new(config)).await;
    assert!(failures.is_empty(), "{failures:?}");
    let addr = dataplane.local_addr(key).expect("listening");
    (dataplane, addr)
}

fn backend(addr: SocketAddr, tls: Option<BackendTls>) -> Arc<Backend> {
    Arc::new(Backend {
        name: "bench/upstream:80".into(),
        protocol: BackendProtocol::Http1,
        endpoints: vec![Endpoint { addr }],
        tls: tls.map(Arc::new),
        health: None,
    })
}

/// A client that never resumes sessions, so every handshake is a full one.
fn client(pki: &Pki) -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(pki.roots.clone())
        .with_no_client_auth();
    config.resumption = Resumption::disabled();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn handshake(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from(HOST).expect("server name");
    connector.connect(name, tcp).await.expect("handshake")
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn open(connector: &tokio_rustls::TlsConnector, addr: SocketAddr) -> Sender {
    let stream = handshake(connector, addr).await;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http handshake");
    tokio::spawn(connection);
    sender
}

async fn get(sender: &mut Sender) {
    sender.ready().await.expect("ready");
    let request = Request::get("/")
        .header("host", HOST)
        .body(Empty::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("response");
    assert!(response.status().is_success(), "{}", response.status());
    let _ = response.into_body().collect().await;
}

fn tls(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let pki = pki();
    let connector = client(&pki);
    let plain_upstream = runtime.block_on(upstream(None));
    let (_plain_gateway, plain) = runtime.block_on(gateway(&pki, backend(plain_upstream, None)));
    let tls_upstream = runtime.block_on(upstream(Some(&pki.leaf)));
    let origination = BackendTls {
        policy: "bench/policy".into(),
        server_name: HOST.into(),
        trust: BackendTrust::Certificates {
            source: "bench/ca".into(),
            ca_pem: pki.ca_pem.clone(),
        },
        subject_alt_names: Vec::new(),
    };
    let (_tls_gateway, reencrypt) =
        runtime.block_on(gateway(&pki, backend(tls_upstream, Some(origination))));

    let mut group = c.benchmark_group("tls");
    group.throughput(Throughput::Elements(1));
    group.bench_function("full_handshake", |b| {
        b.iter(|| runtime.block_on(async { drop(handshake(&connector, plain).await) }))
    });
    group.bench_function("https_request_new_connection", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let mut sender = open(&connector, plain).await;
                get(&mut sender).await;
            })
        })
    });
    let mut kept = runtime.block_on(open(&connector, plain));
    group.bench_function("https_request_keepalive", |b| {
        b.iter(|| runtime.block_on(get(&mut kept)))
    });
    let mut kept = runtime.block_on(open(&connector, reencrypt));
    group.bench_function("https_request_keepalive_backend_tls", |b| {
        b.iter(|| runtime.block_on(get(&mut kept)))
    });
    group.finish();
}

criterion_group!(benches, tls);
criterion_main!(benches);
