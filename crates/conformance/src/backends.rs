//! Deployments become local backend "pods" (README "Backends"): each replica gets a pod name
//! `<deployment>-<10 alnum>-<5 alnum>`, its own loopback address in 127.0.200.0/22 and the
//! listeners its image would open. Services with a selector get an EndpointSlice listing the
//! matching pods.
//!
//! Running today: the `echo-basic` HTTP echo (ports 3000 and 3001, plus HTTPS on 8443 when
//! the Deployment mounts a certificate), the gRPC echo (3000, plus TLS on 8443) and the TCP
//! echo (3000, plus TLS on 8443). The files a container reads come from the Secrets and
//! ConfigMaps its volumes mount (see `mounts`). Mesh `echo-advanced` pods serve the
//! `mesh_echo` HTTP echo on 8080 and the gRPC echo on 7070. DNS backends get addresses and
//! endpoints but no listener yet; the cases that need them are in the skip list.

use std::collections::{BTreeMap, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context as _, bail};
use rand::Rng;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::echo::{self, EchoIdentity, EchoMode, RequestLog};
use crate::grpc_echo::{self, GrpcEchoIdentity};
use crate::manifests::Manifests;
use crate::mesh_echo::{self, MESH_GRPC_PORT, MESH_HTTP_PORT, MeshEchoIdentity};
use crate::mounts::ServerTlsFiles;
use crate::tcp_echo::{self, TcpEchoIdentity};
use crate::tls::{ALPN_H2, ALPN_HTTP1, Keyring};

/// Port of the plain HTTP/1.1 echo.
pub const HTTP_PORT: u16 = 3000;
/// Port of the h2c echo.
pub const H2C_PORT: u16 = 3001;
/// Port of the HTTPS echo and of the TCP echo's TLS listener.
pub const TLS_PORT: u16 = 8443;
/// Port of the TCP echo's plain listener.
pub const TCP_PORT: u16 = 3000;
/// Port of the gRPC echo's cleartext listener.
pub const GRPC_PORT: u16 = 3000;

/// What a Deployment's container does, keyed by its environment (README table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// `echo-basic`: HTTP echo.
    HttpEcho {
        /// It would also serve HTTPS on 8443 (`TLS_SERVER_CERT` is set).
        tls: bool,
    },
    /// `GRPC_ECHO_SERVER=1`.
    GrpcEcho,
    /// `TCP_ECHO_SERVER=1`.
    TcpEcho,
    /// The `coredns` image.
    Dns,
    /// The mesh `echo-advanced` image.
    MeshEcho,
}

/// One local backend process standing in for a pod.
#[derive(Debug, Clone)]
pub struct Pod {
    /// `<deployment>-<10 alnum>-<5 alnum>`.
    pub name: String,
    /// Namespace of the Deployment.
    pub namespace: String,
    /// Deployment name.
    pub deployment: String,
    /// Pod template labels, for Service selectors.
    pub labels: BTreeMap<String, String>,
    /// The pod's own loopback address.
    pub address: Ipv4Addr,
    /// What it runs.
    pub kind: BackendKind,
    /// Named container ports, to resolve named `targetPort`s.
    pub named_ports: BTreeMap<String, u16>,
    /// The certificate files its environment names, when it serves TLS on 8443.
    pub tls_files: Option<ServerTlsFiles>,
}

/// Hands out distinct backend addresses from 127.0.200.1 to 127.0.203.254.
#[derive(Debug, Clone)]
pub struct AddressAllocator {
    next: u32,
}

/// The running backends of one case file. Dropping it stops every listener and connection.
pub struct Backends {
    pods: Vec<Pod>,
    logs: HashMap<(String, String), Arc<RequestLog>>,
    tasks: JoinSet<()>,
}

impl BackendKind {
    /// Classifies a Deployment by its first container's image and environment.
    pub fn of(deployment: &Value) -> Self {
        let container = deployment.pointer("/spec/template/spec/containers/0");
        let image = container
            .and_then(|c| c.get("image"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let env: Vec<&str> = container
            .and_then(|c| c.get("env"))
            .and_then(Value::as_array)
            .map(|env| env.iter().filter_map(|e| e.get("name")?.as_str()).collect())
            .unwrap_or_default();
        if env.contains(&"GRPC_ECHO_SERVER") {
            Self::GrpcEcho
        } else if env.contains(&"TCP_ECHO_SERVER") {
            Self::TcpEcho
        } else if image.contains("coredns") {
            Self::Dns
        } else if image.contains("echo-advanced") {
            Self::MeshEcho
        } else {
            Self::HttpEcho {
                tls: env.contains(&"TLS_SERVER_CERT"),
            }
        }
    }

    /// The files the container's TLS listener would read. The variable naming the key differs:
    /// `TLS_SERVER_PRIVKEY` for the HTTP echo, `TLS_SERVER_PRIV_KEY` for the gRPC and TCP
    /// echoes (README table).
    pub fn tls_files(&self, deployment: &Value) -> anyhow::Result<Option<ServerTlsFiles>> {
        let key_var = match self {
            Self::HttpEcho { .. } => "TLS_SERVER_PRIVKEY",
            Self::GrpcEcho | Self::TcpEcho => "TLS_SERVER_PRIV_KEY",
            Self::Dns | Self::MeshEcho => return Ok(None),
        };
        Ok(ServerTlsFiles::of(deployment, "TLS_SERVER_CERT", key_var)?)
    }
}

impl Pod {
    /// Plans the pods of every Deployment, in manifest order.
    pub fn plan_all(
        manifests: &Manifests,
        addresses: &mut AddressAllocator,
        rng: &mut impl Rng,
    ) -> anyhow::Result<Vec<Pod>> {
        let mut pods = Vec::new();
        for deployment in manifests.of_kind("Deployment") {
            let name = str_at(deployment, "/metadata/name").context("Deployment without name")?;
            let namespace = str_at(deployment, "/metadata/namespace").unwrap_or("default");
            let replicas = deployment
                .pointer("/spec/replicas")
                .and_then(Value::as_u64)
                .unwrap_or(1);
            let labels = string_map(deployment.pointer("/spec/template/metadata/labels"));
            let named_ports = named_container_ports(deployment);
            let kind = BackendKind::of(deployment);
            let tls_files = kind
                .tls_files(deployment)
                .with_context(|| format!("Deployment {namespace}/{name}"))?;
            for _ in 0..replicas.min(16) {
                pods.push(Pod {
                    name: format!("{name}-{}-{}", random_alnum(rng, 10), random_alnum(rng, 5)),
                    namespace: namespace.to_owned(),
                    deployment: name.to_owned(),
                    labels: labels.clone(),
                    address: addresses.allocate()?,
                    kind,
                    named_ports: named_ports.clone(),
                    tls_files: tls_files.clone(),
                });
            }
        }
        Ok(pods)
    }
}

impl AddressAllocator {
    /// Starts at 127.0.200.1.
    pub fn new() -> Self {
        Self::starting_at(Ipv4Addr::new(127, 0, 200, 1))
    }

    /// Starts at `first` (which must lie in 127.0.200.0/22 to be handed out at all); lets a
    /// test use addresses a concurrent run does not.
    pub fn starting_at(first: Ipv4Addr) -> Self {
        Self {
            next: u32::from(first),
        }
    }

    /// The next free address, skipping `.0` and `.255`.
    pub fn allocate(&mut self) -> anyhow::Result<Ipv4Addr> {
        let last = u32::from(Ipv4Addr::new(127, 0, 203, 254));
        while self.next <= last {
            let address = Ipv4Addr::from(self.next);
            self.next += 1;
            if !matches!(address.octets()[3], 0 | 255) {
                return Ok(address);
            }
        }
        bail!("out of backend addresses in 127.0.200.0/22")
    }
}

impl Default for AddressAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl Backends {
    /// Binds and starts the listeners of every pod that has an implementation; `keyring`
    /// holds the Secrets and ConfigMaps their volumes mount.
    pub async fn start(pods: Vec<Pod>, keyring: &Keyring) -> anyhow::Result<Self> {
        let mut tasks = JoinSet::new();
        let mut logs: HashMap<(String, String), Arc<RequestLog>> = HashMap::new();
        for pod in &pods {
            let log = logs
                .entry((pod.namespace.clone(), pod.deployment.clone()))
                .or_default()
                .clone();
            let acceptor = match (&pod.tls_files, pod.kind) {
                (None, _) => None,
                (Some(files), kind) => {
                    // The HTTP echo is a Go HTTPS server, which offers h2 and HTTP/1.1;
                    // gRPC speaks h2 only.
                    let alpn: &[&[u8]] = match kind {
                        BackendKind::HttpEcho { .. } => &[ALPN_H2, ALPN_HTTP1],
                        BackendKind::GrpcEcho => &[ALPN_H2],
                        _ => &[],
                    };
                    let config = keyring
                        .server_config(files, alpn)
                        .with_context(|| format!("TLS files of backend {}", pod.name))?;
                    Some(TlsAcceptor::from(config))
                }
            };
            match pod.kind {
                BackendKind::HttpEcho { .. } => {
                    start_http_echo(pod, acceptor, log, &mut tasks).await?
                }
                BackendKind::TcpEcho => start_tcp_echo(pod, acceptor, &mut tasks).await?,
                BackendKind::GrpcEcho => start_grpc_echo(pod, acceptor, &mut tasks).await?,
                BackendKind::MeshEcho => start_mesh_echo(pod, &mut tasks).await?,
                BackendKind::Dns => {}
            }
        }
        Ok(Self { pods, logs, tasks })
    }

    /// Stops every listener and connection and waits until they are gone, so the next case
    /// file can bind the same addresses.
    pub async fn shutdown(mut self) {
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Every planned pod.
    pub fn pods(&self) -> &[Pod] {
        &self.pods
    }

    /// The request log of a deployment.
    pub fn log(&self, namespace: &str, deployment: &str) -> Option<Arc<RequestLog>> {
        self.logs
            .get(&(namespace.to_owned(), deployment.to_owned()))
            .cloned()
    }
}

/// The HTTP echo: HTTP/1.1 on 3000, h2c on 3001 and, with `acceptor`, HTTPS on 8443.
async fn start_http_echo(
    pod: &Pod,
    acceptor: Option<TlsAcceptor>,
    log: Arc<RequestLog>,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let identity = Arc::new(EchoIdentity {
        namespace: pod.namespace.clone(),
        pod: pod.name.clone(),
        http_port: HTTP_PORT,
    });
    for (port, mode) in [(HTTP_PORT, EchoMode::Http1), (H2C_PORT, EchoMode::H2c)] {
        let listener = bind(pod, port).await?;
        tasks.spawn(echo::serve(listener, mode, identity.clone(), log.clone()));
    }
    if let Some(acceptor) = acceptor {
        let listener = bind(pod, TLS_PORT).await?;
        tasks.spawn(echo::serve_https(listener, acceptor, identity, log));
    }
    Ok(())
}

/// The TCP echo: plain on 3000 and, with `acceptor`, TLS on 8443.
async fn start_tcp_echo(
    pod: &Pod,
    acceptor: Option<TlsAcceptor>,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let identity = Arc::new(TcpEchoIdentity {
        namespace: pod.namespace.clone(),
        pod: pod.name.clone(),
        tcp_port: TCP_PORT,
        tls_port: TLS_PORT,
    });
    let listener = bind(pod, TCP_PORT).await?;
    tasks.spawn(tcp_echo::serve(listener, None, identity.clone()));
    if let Some(acceptor) = acceptor {
        let listener = bind(pod, TLS_PORT).await?;
        tasks.spawn(tcp_echo::serve(listener, Some(acceptor), identity));
    }
    Ok(())
}

/// The gRPC echo: cleartext HTTP/2 on 3000 and, with `acceptor`, TLS on 8443.
async fn start_grpc_echo(
    pod: &Pod,
    acceptor: Option<TlsAcceptor>,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let identity = Arc::new(GrpcEchoIdentity {
        namespace: pod.namespace.clone(),
        pod: pod.name.clone(),
    });
    let listener = bind(pod, GRPC_PORT).await?;
    tasks.spawn(grpc_echo::serve(listener, identity.clone()));
    if let Some(acceptor) = acceptor {
        let listener = bind(pod, TLS_PORT).await?;
        tasks.spawn(grpc_echo::serve_tls(listener, acceptor, identity));
    }
    Ok(())
}

/// The mesh `echo-advanced`: HTTP (and h2c) on 8080, gRPC on 7070.
async fn start_mesh_echo(pod: &Pod, tasks: &mut JoinSet<()>) -> anyhow::Result<()> {
    let identity = Arc::new(MeshEchoIdentity {
        pod: pod.name.clone(),
        port: MESH_HTTP_PORT,
    });
    tasks.spawn(mesh_echo::serve(bind(pod, MESH_HTTP_PORT).await?, identity));
    let identity = Arc::new(GrpcEchoIdentity {
        namespace: pod.namespace.clone(),
        pod: pod.name.clone(),
    });
    tasks.spawn(grpc_echo::serve(bind(pod, MESH_GRPC_PORT).await?, identity));
    Ok(())
}

async fn bind(pod: &Pod, port: u16) -> anyhow::Result<TcpListener> {
    let address = SocketAddr::from((pod.address, port));
    TcpListener::bind(address)
        .await
        .with_context(|| format!("binding backend {} on {address}", pod.name))
}

/// One EndpointSlice per Service with a selector, listing the matching pods.
pub fn endpoint_slices(manifests: &Manifests, pods: &[Pod]) -> Vec<Value> {
    let mut slices = Vec::new();
    for service in manifests.of_kind("Service") {
        let selector = string_map(service.pointer("/spec/selector"));
        let (Some(name), false) = (str_at(service, "/metadata/name"), selector.is_empty()) else {
            continue;
        };
        let namespace = str_at(service, "/metadata/namespace").unwrap_or("default");
        let members: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.namespace == namespace)
            .filter(|p| selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
            .collect();
        let ports: Vec<Value> = service
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .map(|ports| {
                ports
                    .iter()
                    .map(|port| slice_port(port, members.first().copied()))
                    .collect()
            })
            .unwrap_or_default();
        slices.push(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{name}-conformance"),
                "namespace": namespace,
                "labels": {"kubernetes.io/service-name": name},
            },
            "addressType": "IPv4",
            "endpoints": endpoints(&members),
            "ports": ports,
        }));
    }
    slices
}

/// Endpoint entries (ready, serving) for the given pods.
pub fn endpoints(pods: &[&Pod]) -> Vec<Value> {
    pods.iter()
        .map(|pod| {
            json!({
                "addresses": [pod.address.to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "targetRef": {"kind": "Pod", "namespace": pod.namespace, "name": pod.name},
            })
        })
        .collect()
}

/// A slice port: the Service port's name and protocol, numbered by its `targetPort`.
fn slice_port(port: &Value, pod: Option<&Pod>) -> Value {
    let number = match port.get("targetPort") {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(name)) => match name.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => pod
                .and_then(|p| p.named_ports.get(name))
                .map(|&n| u64::from(n)),
        },
        _ => None,
    }
    .or_else(|| port.get("port").and_then(Value::as_u64));
    let mut out =
        json!({"port": number, "protocol": port.get("protocol").cloned().unwrap_or(json!("TCP"))});
    for key in ["name", "appProtocol"] {
        if let Some(value) = port.get(key) {
            out[key] = value.clone();
        }
    }
    out
}

fn named_container_ports(deployment: &Value) -> BTreeMap<String, u16> {
    let mut ports = BTreeMap::new();
    let containers = deployment
        .pointer("/spec/template/spec/containers")
        .and_then(Value::as_array);
    for port in containers
        .into_iter()
        .flatten()
        .filter_map(|c| c.get("ports")?.as_array())
        .flatten()
    {
        let name = port.get("name").and_then(Value::as_str);
        let number = port
            .get("containerPort")
            .and_then(Value::as_u64)
            .and_then(|n| u16::try_from(n).ok());
        if let (Some(name), Some(number)) = (name, number) {
            ports.insert(name.to_owned(), number);
        }
    }
    ports
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(Value::as_str)
}

fn string_map(value: Option<&Value>) -> BTreeMap<String, String> {
    value
        .and_then(Value::as_object)
        .map(|map| {
            map.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

fn random_alnum(rng: &mut impl Rng, len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::parse_documents;
    use rand::SeedableRng as _;

    const MANIFESTS: &str = "
kind: Service
metadata: {name: web, namespace: ns}
spec:
  selector: {app: web}
  ports:
  - {name: first, port: 8080, targetPort: 3000}
  - {name: second, port: 8081, targetPort: 3001, appProtocol: kubernetes.io/h2c}
  - {name: third, port: 9000}
---
kind: Service
metadata: {name: manual, namespace: ns}
spec: {ports: [{port: 8080}]}
---
kind: Deployment
metadata: {name: web, namespace: ns}
spec:
  replicas: 2
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: c, image: echo-basic}]}
---
kind: Deployment
metadata: {name: grpc, namespace: ns}
spec:
  template:
    metadata: {labels: {app: grpc}}
    spec: {containers: [{name: c, image: echo-basic, env: [{name: GRPC_ECHO_SERVER, value: '1'}]}]}
";

    fn manifests() -> Manifests {
        let mut manifests = Manifests::default();
        for doc in parse_documents(MANIFESTS).expect("yaml") {
            manifests.upsert(doc).expect("named");
        }
        manifests
    }

    fn pods() -> Vec<Pod> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        Pod::plan_all(&manifests(), &mut AddressAllocator::new(), &mut rng).expect("plan")
    }

    #[test]
    fn replicas_become_pods_with_two_suffixes_and_own_addresses() {
        let pods = pods();
        assert_eq!(pods.len(), 3);
        let parts: Vec<&str> = pods[0].name.split('-').collect();
        assert_eq!((parts[0], parts[1].len(), parts[2].len()), ("web", 10, 5));
        assert_eq!(pods[0].address, Ipv4Addr::new(127, 0, 200, 1));
        assert_eq!(pods[1].address, Ipv4Addr::new(127, 0, 200, 2));
        assert_eq!(pods[2].kind, BackendKind::GrpcEcho);
        assert_eq!(pods[0].kind, BackendKind::HttpEcho { tls: false });
    }

    #[test]
    fn services_with_selectors_get_slices_numbered_by_target_port() {
        let slices = endpoint_slices(&manifests(), &pods());
        assert_eq!(slices.len(), 1, "the selector-less Service gets none");
        let slice = &slices[0];
        assert_eq!(
            slice.pointer("/metadata/labels/kubernetes.io~1service-name"),
            Some(&json!("web"))
        );
        assert_eq!(slice["endpoints"].as_array().map(Vec::len), Some(2));
        assert_eq!(slice.pointer("/ports/0/port"), Some(&json!(3000)));
        assert_eq!(
            slice.pointer("/ports/1/appProtocol"),
            Some(&json!("kubernetes.io/h2c"))
        );
        assert_eq!(slice.pointer("/ports/2/port"), Some(&json!(9000)));
    }

    #[test]
    fn allocator_skips_network_and_broadcast_octets() {
        let mut allocator = AddressAllocator {
            next: u32::from(Ipv4Addr::new(127, 0, 200, 254)),
        };
        assert_eq!(
            allocator.allocate().ok(),
            Some(Ipv4Addr::new(127, 0, 200, 254))
        );
        assert_eq!(
            allocator.allocate().ok(),
            Some(Ipv4Addr::new(127, 0, 201, 1))
        );
    }
}
