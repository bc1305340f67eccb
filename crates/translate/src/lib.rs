//! Translation: a resource [`Snapshot`] in, the compiled [`ir::Config`] and every resource's
//! status out, from one call.
//!
//! Stage: between *model* and the *data plane*. [`translate`] is a pure, deterministic
//! function: no files, sockets, clocks, environment or randomness. Because routing config
//! and status come out of the same computation, they cannot disagree: a route is attached
//! to a listener in the config exactly when its status says `Accepted=True` for that parent.
//!
//! The steps, each in its own module:
//! 1. [`classes`]: which GatewayClasses are ours and accepted.
//! 2. [`gateways`]: Gateway addresses and listeners (validity, conflicts, allowed routes).
//! 3. [`attach`]: attaching routes to listeners through `parentRefs` (shared by every route
//!    kind: sectionName, port, allowedRoutes, hostname intersection).
//! 4. [`http_route`] with [`backends`] and [`grants`]: compiling HTTPRoute rules.
//! 5. Assembly here: listeners and their route tables grouped by bind address.
//!
//! Must not depend on: tokio, hyper, the kube client, files, network, clock, randomness.

mod attach;
mod backend_tls;
mod backends;
mod classes;
mod egress;
mod frontend_tls;
mod gateways;
mod grants;
mod health;
mod http_route;
mod listener_sets;
mod mesh;
mod patch;
mod policies;
pub mod provision;
mod references;
mod stream_route;
mod tls;

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use model::status::StatusSet;
use model::{ObjectName, Snapshot};
pub use patch::{MAX_CHANGED, difference, patch};
pub use references::referenced_objects;

/// The controller name portcullis answers to unless configured otherwise.
pub const DEFAULT_CONTROLLER_NAME: &str = "portcullis.dev/gateway-controller";

/// Inputs besides the snapshot. Everything stateful (address allocations, which addresses
/// failed to bind) is passed in, so the function stays pure.
#[derive(Clone, Debug)]
pub struct Options {
    /// GatewayClasses with this `controllerName` are ours.
    pub controller_name: String,
    /// Addresses handed to Gateways without `spec.addresses`.
    pub address_pool: Option<IpNet>,
    /// Addresses previously handed out from the pool, kept stable across reloads.
    pub allocations: BTreeMap<ObjectName, IpAddr>,
    /// Addresses the data plane could not bind; Gateways using them are not Programmed.
    pub unusable_addresses: BTreeSet<IpAddr>,
    /// Kubernetes mode with provisioning: a Gateway without `spec.addresses` (and no pool)
    /// reports its provisioned Service's load-balancer addresses ([`provision`]).
    pub load_balancer_addresses: bool,
    /// The cluster's pod and service networks: an EgressNetwork without `networks` covers
    /// every address outside them, and one whose networks overlap them is not accepted.
    pub cluster_networks: Vec<IpNet>,
    /// The namespace whose EgressNetworks apply to workloads of every namespace.
    pub global_egress_namespace: String,
    /// The data plane of one Gateway (a provisioned pod): only that Gateway's listeners
    /// (its ListenerSets' included) get sockets; other Gateways and mesh Services get none.
    /// Status is still computed for everything, as if all were served.
    pub only_gateway: Option<ObjectName>,
}

/// Linkerd's default `clusterNetworks`.
pub const DEFAULT_CLUSTER_NETWORKS: &str =
    "10.0.0.0/8,100.64.0.0/10,172.16.0.0/12,192.168.0.0/16,fd00::/8";

/// Linkerd's default global egress namespace.
pub const DEFAULT_GLOBAL_EGRESS_NAMESPACE: &str = "linkerd-egress";

/// The result of one translation.
#[derive(Clone, Debug, Default)]
pub struct Translation {
    /// What the data plane serves.
    pub config: ir::Config,
    /// Status of every resource we manage.
    pub status: StatusSet,
    /// Pool allocations after this translation (pass them back in next time).
    pub allocations: BTreeMap<ObjectName, IpAddr>,
}

// === impl Options ===

impl Default for Options {
    fn default() -> Self {
        Self {
            controller_name: DEFAULT_CONTROLLER_NAME.to_string(),
            address_pool: None,
            allocations: BTreeMap::new(),
            unusable_addresses: BTreeSet::new(),
            load_balancer_addresses: false,
            cluster_networks: DEFAULT_CLUSTER_NETWORKS
                .split(',')
                .filter_map(|n| n.parse().ok())
                .collect(),
            global_egress_namespace: DEFAULT_GLOBAL_EGRESS_NAMESPACE.to_string(),
            only_gateway: None,
        }
    }
}

/// The order the spec gives routes and ListenerSets when they compete: "the oldest ...
/// based on creation timestamp", then "{namespace}/{name}" alphabetically.
pub(crate) fn oldest_first(
    (a_meta, a_name): (&model::k8s::ObjectMeta, &ObjectName),
    (b_meta, b_name): (&model::k8s::ObjectMeta, &ObjectName),
) -> Ordering {
    let time = |meta: &model::k8s::ObjectMeta| meta.creation_timestamp.as_ref().map(|t| t.0);
    time(a_meta)
        .cmp(&time(b_meta))
        .then_with(|| a_name.cmp(b_name))
}

/// Translates a snapshot.
pub fn translate(snapshot: &Snapshot, options: &Options) -> Translation {
    let mut status = StatusSet::default();
    let classes = classes::accepted(snapshot, options, &mut status);
    let mut gateways = gateways::resolve(snapshot, &classes, options);
    let egress_networks = egress::resolve(snapshot, options, &mut status);
    let policies = backend_tls::Policies::resolve(snapshot);
    let health = health::HealthPolicies::resolve(snapshot);
    health.write_status(snapshot, options, &mut status);
    let attached = policies::Policies::resolve(snapshot, options, &mut status);
    let mut routes = http_route::compile_all(
        snapshot,
        &mut gateways,
        options,
        (&policies, &health),
        &attached,
        &mut status,
    );
    policies.write_status(snapshot, &routes.policy_ancestors, options, &mut status);
    let stream_routes = stream_route::compile_all(snapshot, &mut gateways, options, &mut status);

    let mut binds: BTreeMap<SocketAddr, ir::Bind> = BTreeMap::new();
    for gateway in gateways.values() {
        status.0.insert(gateway.key(), gateway.status());
        if !gateway.programmed()
            || options
                .only_gateway
                .as_ref()
                .is_some_and(|only| *only != gateway.name)
        {
            continue;
        }
        let ip = gateway.bind_ip.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let mut compiled = Compiled {
            routes: &mut routes,
            streams: &stream_routes,
            backend_client_certificate: gateway.backend_client_certificate(),
        };
        for listener in gateway.listeners.iter().filter(|l| l.is_serving()) {
            let bind = binds.entry(SocketAddr::new(ip, listener.port)).or_default();
            compiled.add(
                bind,
                &gateway.name.to_string(),
                &gateway.name,
                &listener.name,
                listener,
            );
        }
        // ListenerSet listeners are served on the Gateway's address, after its own.
        for set in gateway.listener_sets.iter().filter(|s| s.is_accepted()) {
            for listener in set.listeners.iter().filter(|l| l.is_serving()) {
                let bind = binds.entry(SocketAddr::new(ip, listener.port)).or_default();
                let key = format!("{}{}", listener_sets::KEY_PREFIX, listener.name);
                let label = format!("{} (ListenerSet {})", gateway.name, set.name);
                compiled.add(bind, &label, &set.name, &key, listener);
            }
        }
    }
    for gateway in gateways.values() {
        for set in &gateway.listener_sets {
            let (key, set_status) = set.status(gateway.programmed());
            status.0.insert(key, set_status);
        }
    }
    // GAMMA: each Service port with a clusterIP is served there: its routes, or a relay to
    // its endpoints when it has none.
    let mesh_services = snapshot
        .services
        .iter()
        .filter(|_| options.only_gateway.is_none());
    for (name, service) in mesh_services {
        let Some(ip) = mesh::cluster_ip(snapshot, name) else {
            continue;
        };
        for port in service.spec.iter().flat_map(|s| s.ports.iter().flatten()) {
            let Ok(port) = u16::try_from(port.port) else {
                continue;
            };
            let candidates = routes.take_listener(name, &mesh::listener_key(port));
            let bind = binds.entry(SocketAddr::new(ip, port)).or_default();
            let mesh_listener = |candidates| {
                Arc::new(ir::HttpListener {
                    gateway: format!("Service {name}"),
                    name: format!("port {port}"),
                    hostname: None,
                    port,
                    scheme: ir::RedirectScheme::Http,
                    routes: ir::RouteTable::new(candidates),
                    tls: None,
                    client_validation: None,
                    backend_client_certificate: None,
                })
            };
            for key in routes.listeners_of(name) {
                let prefix = mesh::consumer_key(port, "");
                if let Some(namespace) = key.strip_prefix(&prefix) {
                    let consumer = routes.take_listener(name, &key);
                    bind.consumers
                        .insert(namespace.to_string(), mesh_listener(consumer));
                }
            }
            if candidates.is_empty() {
                // "A Service with no routes passes through to its endpoints": bytes are
                // relayed whatever the protocol, since nothing says it is HTTP.
                if bind.http.is_empty() && bind.tls_passthrough.is_empty() && bind.tcp.is_none() {
                    bind.tcp = mesh::passthrough(snapshot, name, port);
                }
                continue;
            }
            bind.http.push(mesh_listener(candidates));
        }
    }
    for bind in binds.values_mut() {
        bind.sort_listeners();
    }
    let egress = egress::compile(
        snapshot,
        options,
        egress_networks,
        &mut routes,
        &stream_routes,
    );
    let allocations = gateways
        .values()
        .filter_map(|g| g.allocated.map(|ip| (g.name.clone(), ip)))
        .collect();
    Translation {
        config: ir::Config { binds, egress },
        status,
        allocations,
    }
}

/// Compiled routes of every kind, to be placed on listeners.
struct Compiled<'a> {
    routes: &'a mut http_route::Routes,
    streams: &'a stream_route::StreamRoutes,
    /// The Gateway's `spec.tls.backend` client certificate.
    backend_client_certificate: Option<Arc<ir::TlsCertificate>>,
}

impl Compiled<'_> {
    /// Adds one serving listener to its socket. `owner` and `key` identify the listener in
    /// the route maps (a Gateway's listener name, or a prefixed ListenerSet one).
    fn add(
        &mut self,
        bind: &mut ir::Bind,
        label: &str,
        owner: &ObjectName,
        key: &str,
        listener: &gateways::ListenerState,
    ) {
        let gateway = label.to_string();
        let name = listener.name.clone();
        let hostname = listener.hostname.clone();
        match listener.protocol.as_str() {
            "TLS" => match &listener.tls {
                Some(certificate) if !listener.passthrough => {
                    bind.tls_terminate.push(Arc::new(ir::TlsTerminateListener {
                        gateway,
                        name,
                        hostname,
                        tls: certificate.clone(),
                        routes: self.streams.for_listener(owner, key),
                    }));
                }
                _ => bind
                    .tls_passthrough
                    .push(Arc::new(ir::TlsPassthroughListener {
                        gateway,
                        name,
                        hostname,
                        routes: self.streams.for_listener(owner, key),
                    })),
            },
            "TCP" => {
                bind.tcp = Some(Arc::new(ir::TcpListener {
                    gateway,
                    name,
                    routes: self.streams.for_listener(owner, key),
                }));
            }
            _ => bind.http.push(Arc::new(ir::HttpListener {
                gateway,
                name,
                hostname,
                port: listener.port,
                scheme: listener.scheme(),
                routes: ir::RouteTable::new(self.routes.take_listener(owner, key)),
                tls: listener.tls.clone(),
                client_validation: listener.client_validation.clone(),
                backend_client_certificate: self.backend_client_certificate.clone(),
            })),
        }
    }
}
