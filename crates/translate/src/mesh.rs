//! GAMMA: routes whose parentRef is a Service apply to traffic addressed to that Service.
//!
//! In standalone mode the outbound proxy listens on the Service's `clusterIP:port` (a local
//! address, e.g. 127.0.2.x), so a route attached to a Service becomes an HTTP listener at
//! that address whose table holds the Service's routes; a request that matches none of
//! them gets 404, as GEP-1426 requires for a Service with routes. Route `hostnames` are not
//! used to pick a listener here: the Service address already says where the request goes.
//!
//! Producer routes (in the Service's namespace) apply to every client. Consumer routes (in
//! another namespace) apply only to clients of their own namespace, and for them replace the
//! producer routes (GEP-1426). They are compiled into per-namespace tables
//! (`ir::Bind::consumers`); an outbound proxy that knows its workload's namespace (a sidecar,
//! or the explicit proxy of `run --egress-proxy --workload-namespace`) serves them. A client
//! that reaches the ClusterIP directly has no known namespace and gets the producer routes.

use std::net::IpAddr;
use std::sync::Arc;

use ir::{BackendTarget, RouteId, RouteKind, StreamRoute, TcpListener, WeightedBackend};
use model::status::Reason;
use model::{ObjectName, Snapshot};

use crate::attach::{Attachment, ParentOutcome, ParentRef, RouteInfo};
use crate::backends::{BackendRef, Referrer, Resolver};

/// The listener key a Service port uses in the route maps.
pub(crate) fn listener_key(port: u16) -> String {
    // A colon cannot appear in a listener name, so this never collides with a Gateway's.
    format!("{LISTENER_KEY_PREFIX}{port}")
}

/// The listener key of the consumer routes from `namespace` on a Service port.
pub(crate) fn consumer_key(port: u16, namespace: &str) -> String {
    format!("service:{port}:consumer:{namespace}")
}
/// What every mesh listener key starts with.
pub(crate) const LISTENER_KEY_PREFIX: &str = "service:";

/// The ClusterIP of a Service, when it has one portcullis can listen on.
pub(crate) fn cluster_ip(snapshot: &Snapshot, service: &ObjectName) -> Option<IpAddr> {
    let spec = snapshot.services.get(service)?.spec.as_ref()?;
    spec.cluster_ip.as_deref()?.parse().ok()
}

/// Attaches a route to a Service parent.
pub(crate) fn attach(
    snapshot: &Snapshot,
    route: &RouteInfo<'_>,
    parent: &ParentRef<'_>,
) -> ParentOutcome {
    let namespace = parent.namespace.unwrap_or(&route.name.namespace);
    let name = ObjectName::new(namespace, parent.name);
    let Some(service) = snapshot.services.get(&name) else {
        return ParentOutcome::Rejected(
            Reason::NoMatchingParent,
            format!("Service {name} does not exist"),
        );
    };
    let ports: Vec<u16> = service
        .spec
        .iter()
        .flat_map(|spec| spec.ports.iter().flatten())
        .filter(|p| parent.port.is_none_or(|wanted| wanted == p.port))
        .filter_map(|p| u16::try_from(p.port).ok())
        .collect();
    if ports.is_empty() {
        return ParentOutcome::Rejected(
            Reason::NoMatchingParent,
            format!(
                "Service {name} has no port {}",
                parent.port.unwrap_or_default()
            ),
        );
    }
    let consumer = (*namespace != *route.name.namespace).then_some(&*route.name.namespace);
    if cluster_ip(snapshot, &name).is_none() {
        return ParentOutcome::Rejected(
            Reason::UnsupportedValue,
            format!("Service {name} has no clusterIP to serve its routes on"),
        );
    }
    ParentOutcome::Attached(
        ports
            .into_iter()
            .map(|port| Attachment {
                gateway: name.clone(),
                listener: match consumer {
                    None => listener_key(port),
                    Some(client_namespace) => consumer_key(port, client_namespace),
                },
                hostnames: vec![None],
            })
            .collect(),
    )
}

/// The listener for a Service port without routes: a TCP relay to the Service's own
/// endpoints. The route it carries is synthetic (named after the Service) and has no status.
pub(crate) fn passthrough(
    snapshot: &Snapshot,
    service: &ObjectName,
    port: u16,
) -> Option<Arc<TcpListener>> {
    let reference = BackendRef {
        group: None,
        kind: None,
        name: &service.name,
        namespace: None,
        port: Some(i32::from(port)),
    };
    let referrer = Referrer {
        mesh_parents: &[],
        kind: "Service",
        namespace: &service.namespace,
    };
    let backend = Resolver::default()
        .resolve(snapshot, referrer, &reference)
        .ok()?;
    let route = StreamRoute {
        id: RouteId {
            kind: RouteKind::Tcp,
            namespace: service.namespace.clone(),
            name: service.name.clone(),
            rule: 0,
            rule_name: Some("passthrough".to_string()),
        },
        hostnames: Vec::new(),
        backends: vec![WeightedBackend {
            weight: 1,
            target: BackendTarget::Service(backend),
            request_headers: None,
            response_headers: None,
        }],
    };
    Some(Arc::new(TcpListener {
        gateway: format!("Service {service}"),
        name: format!("port {port}"),
        routes: vec![Arc::new(route)],
    }))
}
