//! Egress: Linkerd's `EgressNetwork`, its status, routes attached to it, and the compiled
//! [`ir::Egress`] the outbound proxy enforces.
//!
//! Semantics follow Linkerd (2.17+), whose resource this is:
//! - `networks` omitted covers every address outside the cluster networks
//!   ([`crate::Options::cluster_networks`]); a network that overlaps them is not accepted
//!   (`Accepted=False`, `EgressReasonNetworkOverlap`). Linkerd compares the whole `cidr`;
//!   here a cluster network that an `except` entry removes again does not count as overlap,
//!   since no cluster address is then classified as egress.
//! - Routes attach with a parentRef `group: policy.linkerd.io, kind: EgressNetwork` and a
//!   `port` (required). When routes of several kinds attach to one network and port, only one
//!   kind can serve it: GRPCRoute over HTTPRoute over TLSRoute over TCPRoute, and the others
//!   get `Accepted=False`, `RouteReasonConflicted`.
//! - A backendRef to an EgressNetwork, or an HTTPRoute/GRPCRoute rule without backendRefs,
//!   means the original destination ([`ir::BackendTarget::OriginalDestination`]); a Service
//!   backendRef redirects the traffic into the cluster (an egress gateway).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;
use model::egress::{EgressNetwork, POLICY_GROUP, TrafficPolicy, parse_network};
use model::status::{Condition, ConditionType, Reason, ResourceStatus, StatusSet};
use model::{Kind, ObjectName, ResourceKey, Snapshot};

use crate::Options;
use crate::attach::{Attachment, ParentOutcome, ParentRef, RouteInfo};
use crate::http_route::Routes;
use crate::stream_route::StreamRoutes;

/// The listener key an EgressNetwork port uses in the route maps.
pub(crate) fn listener_key(port: u16) -> String {
    // A colon cannot appear in a listener name, so this never collides with a Gateway's.
    format!("egress:{port}")
}

/// Whether a parentRef names an EgressNetwork.
pub(crate) fn is_egress_parent(group: &str, kind: &str) -> bool {
    group == POLICY_GROUP && kind == "EgressNetwork"
}

/// An EgressNetwork's effective ranges, or why it is not accepted.
fn ranges(network: &EgressNetwork, options: &Options) -> Result<Vec<ir::NetworkRange>, String> {
    let Some(networks) = &network.spec.networks else {
        let all_v4 = IpNet::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
        let all_v6 = IpNet::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0);
        return Ok([all_v4, all_v6]
            .into_iter()
            .flatten()
            .map(|cidr| ir::NetworkRange {
                cidr,
                except: options
                    .cluster_networks
                    .iter()
                    .filter(|c| cidr.contains(*c))
                    .copied()
                    .collect(),
            })
            .collect());
    };
    // Validation has checked that every entry parses.
    let ranges: Vec<ir::NetworkRange> = networks
        .iter()
        .filter_map(|n| {
            Some(ir::NetworkRange {
                cidr: parse_network(&n.cidr)?,
                except: n
                    .except
                    .iter()
                    .flatten()
                    .filter_map(|e| parse_network(e))
                    .collect(),
            })
        })
        .collect();
    let overlaps: Vec<String> = ranges
        .iter()
        .flat_map(|range| {
            options
                .cluster_networks
                .iter()
                .filter(move |cluster| overlaps(range, cluster))
                .map(move |cluster| format!("{} overlaps cluster network {cluster}", range.cidr))
        })
        .collect();
    if overlaps.is_empty() {
        Ok(ranges)
    } else {
        Err(format!(
            "networks overlap with the cluster networks: {}",
            overlaps.join(", ")
        ))
    }
}

/// Whether some address of `cluster` is in `range` (and not excepted from it).
fn overlaps(range: &ir::NetworkRange, cluster: &IpNet) -> bool {
    let intersecting = range.cidr.contains(cluster) || cluster.contains(&range.cidr);
    if !intersecting {
        return false;
    }
    // The intersection of two CIDRs is the smaller one; it is excepted when an `except`
    // entry covers it.
    let smaller = if range.cidr.prefix_len() >= cluster.prefix_len() {
        range.cidr
    } else {
        *cluster
    };
    !range.except.iter().any(|e| e.contains(&smaller))
}

/// Writes every EgressNetwork's status and returns the accepted ones with their ranges, in
/// precedence order (oldest first, then namespace/name).
pub(crate) fn resolve(
    snapshot: &Snapshot,
    options: &Options,
    status: &mut StatusSet,
) -> Vec<(ObjectName, Arc<EgressNetwork>, Vec<ir::NetworkRange>)> {
    let mut accepted = Vec::new();
    for (name, network) in &snapshot.egress_networks {
        let generation = network.metadata.generation.unwrap_or(1);
        let condition = match ranges(network, options) {
            Ok(ranges) => {
                accepted.push((name.clone(), Arc::clone(network), ranges));
                Condition::new(
                    ConditionType::Accepted,
                    true,
                    Reason::Accepted,
                    "accepted",
                    generation,
                )
            }
            Err(message) => Condition::new(
                ConditionType::Accepted,
                false,
                Reason::EgressReasonNetworkOverlap,
                message,
                generation,
            ),
        };
        status.0.insert(
            ResourceKey::new(Kind::EgressNetwork, &name.namespace, &name.name),
            ResourceStatus::Conditions {
                conditions: vec![condition],
            },
        );
    }
    accepted.sort_by(|(a_name, a, _), (b_name, b, _)| {
        crate::oldest_first((&a.metadata, a_name), (&b.metadata, b_name))
    });
    accepted
}

/// Route kinds in the order they win a port: the first present kind serves it.
const KIND_PRECEDENCE: [&str; 4] = ["GRPCRoute", "HTTPRoute", "TLSRoute", "TCPRoute"];

/// For every EgressNetwork and port that routes name, the route kinds naming it.
fn kinds_by_port(snapshot: &Snapshot) -> BTreeMap<(ObjectName, u16), BTreeSet<&'static str>> {
    let mut found: BTreeMap<(ObjectName, u16), BTreeSet<&'static str>> = BTreeMap::new();
    let mut add =
        |kind: &'static str, route: &ObjectName, refs: &mut dyn Iterator<Item = RawRef<'_>>| {
            for r in refs {
                let (Some(group), Some(kind_name)) = (r.group, r.kind) else {
                    continue;
                };
                let Some(port) = r.port.and_then(|p| u16::try_from(p).ok()) else {
                    continue;
                };
                if is_egress_parent(group, kind_name) {
                    let namespace = r.namespace.unwrap_or(&route.namespace);
                    found
                        .entry((ObjectName::new(namespace, r.name), port))
                        .or_default()
                        .insert(kind);
                }
            }
        };
    for (name, route) in &snapshot.http_routes {
        let refs = route.spec.parent_refs.iter().flatten();
        add(
            "HTTPRoute",
            name,
            &mut refs.map(|p| raw(&p.group, &p.kind, &p.namespace, &p.name, p.port)),
        );
    }
    for (name, route) in &snapshot.grpc_routes {
        let refs = route.spec.parent_refs.iter().flatten();
        add(
            "GRPCRoute",
            name,
            &mut refs.map(|p| raw(&p.group, &p.kind, &p.namespace, &p.name, p.port)),
        );
    }
    for (name, route) in &snapshot.tls_routes {
        let refs = route.spec.parent_refs.iter().flatten();
        add(
            "TLSRoute",
            name,
            &mut refs.map(|p| raw(&p.group, &p.kind, &p.namespace, &p.name, p.port)),
        );
    }
    for (name, route) in &snapshot.tcp_routes {
        let refs = route.spec.parent_refs.iter().flatten();
        add(
            "TCPRoute",
            name,
            &mut refs.map(|p| raw(&p.group, &p.kind, &p.namespace, &p.name, p.port)),
        );
    }
    found
}

/// The parts of a parentRef that [`kinds_by_port`] reads, from any route kind's type.
struct RawRef<'a> {
    group: Option<&'a str>,
    kind: Option<&'a str>,
    namespace: Option<&'a str>,
    name: &'a str,
    port: Option<i32>,
}

fn raw<'a>(
    group: &'a Option<String>,
    kind: &'a Option<String>,
    namespace: &'a Option<String>,
    name: &'a str,
    port: Option<i32>,
) -> RawRef<'a> {
    RawRef {
        group: group.as_deref(),
        kind: kind.as_deref(),
        namespace: namespace.as_deref(),
        name,
        port,
    }
}

/// Attaches a route to an EgressNetwork parent.
pub(crate) fn attach(
    snapshot: &Snapshot,
    options: &Options,
    route: &RouteInfo<'_>,
    parent: &ParentRef<'_>,
) -> ParentOutcome {
    let namespace = parent.namespace.unwrap_or(&route.name.namespace);
    let name = ObjectName::new(namespace, parent.name);
    let Some(network) = snapshot.egress_networks.get(&name) else {
        return ParentOutcome::Rejected(
            Reason::NoMatchingParent,
            format!("EgressNetwork {name} does not exist"),
        );
    };
    let Some(port) = parent.port.and_then(|p| u16::try_from(p).ok()) else {
        return ParentOutcome::Rejected(
            Reason::UnsupportedValue,
            "a parentRef to an EgressNetwork needs a port: the destination port the route applies to"
                .into(),
        );
    };
    if let Err(message) = ranges(network, options) {
        return ParentOutcome::Rejected(
            Reason::NoMatchingParent,
            format!("EgressNetwork {name} is not accepted: {message}"),
        );
    }
    let kinds = kinds_by_port(snapshot);
    let winner = kinds
        .get(&(name.clone(), port))
        .and_then(|present| KIND_PRECEDENCE.iter().find(|k| present.contains(*k)));
    if let Some(winner) = winner
        && *winner != route.kind
    {
        return ParentOutcome::Rejected(
            Reason::RouteReasonConflicted,
            format!(
                "{winner}s also attach to EgressNetwork {name} port {port}: only one route kind serves a port, and {winner} takes precedence over {} (GRPCRoute > HTTPRoute > TLSRoute > TCPRoute)",
                route.kind
            ),
        );
    }
    ParentOutcome::Attached(vec![Attachment {
        gateway: name,
        listener: listener_key(port),
        hostnames: crate::attach::intersect(None, route.hostnames),
    }])
}

/// Builds the data plane's egress config from the accepted networks and the routes attached
/// to them.
pub(crate) fn compile(
    snapshot: &Snapshot,
    options: &Options,
    networks: Vec<(ObjectName, Arc<EgressNetwork>, Vec<ir::NetworkRange>)>,
    routes: &mut Routes,
    streams: &StreamRoutes,
) -> ir::Egress {
    let ports = kinds_by_port(snapshot);
    let networks = networks
        .into_iter()
        .map(|(name, network, ranges)| {
            let mut compiled = BTreeMap::new();
            for (_, port) in ports.keys().filter(|(n, _)| *n == name) {
                let key = listener_key(*port);
                let candidates = routes.take_listener(&name, &key);
                let port_routes = if candidates.is_empty() {
                    let attached = streams.for_listener(&name, &key);
                    match attached.first().map(|r| r.id.kind) {
                        None => continue,
                        Some(ir::RouteKind::Tls) => ir::EgressPort::Tls(attached),
                        Some(_) => ir::EgressPort::Tcp(attached),
                    }
                } else {
                    ir::EgressPort::Http(Arc::new(ir::HttpListener {
                        gateway: format!("EgressNetwork {name}"),
                        name: format!("port {port}"),
                        hostname: None,
                        port: *port,
                        scheme: ir::RedirectScheme::Http,
                        routes: ir::RouteTable::new(candidates),
                        tls: None,
                        client_validation: None,
                        backend_client_certificate: None,
                    }))
                };
                compiled.insert(*port, port_routes);
            }
            Arc::new(ir::EgressNetwork {
                namespace: name.namespace.to_string(),
                name: name.name.to_string(),
                policy: match network.spec.traffic_policy {
                    TrafficPolicy::Allow => ir::TrafficPolicy::Allow,
                    TrafficPolicy::Deny => ir::TrafficPolicy::Deny,
                },
                ranges,
                ports: compiled,
            })
        })
        .collect();
    ir::Egress {
        global_namespace: options.global_egress_namespace.clone(),
        networks,
    }
}
