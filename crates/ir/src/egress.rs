//! Egress: which `EgressNetwork` a connection to an outside address belongs to, and what its
//! routes allow.
//!
//! A connection leaving a workload is classified by its destination address and the
//! workload's namespace ([`Egress::classify`]); the network's routes for the destination
//! port then decide, as on a Gateway listener, with the network's `trafficPolicy` for what
//! no route describes.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde::Serialize;

use crate::stream::{StreamRoute, select_by_sni};
use crate::{HttpListener, RouteKind};

/// Every accepted EgressNetwork, with its routes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Egress {
    /// The namespace whose networks apply to clients of every namespace (after their own).
    pub global_namespace: String,
    /// Networks in precedence order for equally specific matches: oldest first, then by
    /// namespace/name.
    pub networks: Vec<Arc<EgressNetwork>>,
}

/// One EgressNetwork, compiled.
#[derive(Clone, Debug, Serialize)]
pub struct EgressNetwork {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// What happens to traffic no route describes.
    pub policy: TrafficPolicy,
    /// The destination networks it covers.
    pub ranges: Vec<NetworkRange>,
    /// Routes by destination port. Ports without routes get the traffic policy.
    pub ports: BTreeMap<u16, EgressPort>,
}

/// `spec.trafficPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum TrafficPolicy {
    /// Unmatched traffic goes to its original destination.
    Allow,
    /// Unmatched traffic is refused.
    Deny,
}

/// A CIDR minus some sub-networks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetworkRange {
    /// The network.
    pub cidr: IpNet,
    /// Sub-networks excluded from it.
    pub except: Vec<IpNet>,
}

/// The routes of one port of an EgressNetwork. Only one route kind serves a port: when
/// several kinds attach, translate keeps GRPCRoute over HTTPRoute over TLSRoute over
/// TCPRoute, as Linkerd does, and HTTPRoutes and GRPCRoutes share one table.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum EgressPort {
    /// HTTP traffic routed by Host, path, headers (and gRPC method).
    Http(Arc<HttpListener>),
    /// TLS traffic routed by the ClientHello's SNI.
    Tls(Vec<Arc<StreamRoute>>),
    /// Any traffic: the first (oldest) TCPRoute.
    Tcp(Vec<Arc<StreamRoute>>),
}

/// Which implicit route a decision came from, named as Linkerd's metrics name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// Plain HTTP (and gRPC).
    Http,
    /// TLS, by SNI.
    Tls,
    /// Anything else.
    Tcp,
}

// === impl Egress ===

impl Egress {
    /// Whether no network is configured.
    pub fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    /// The network a connection from a workload in `namespace` to `destination` belongs to:
    /// the networks of the workload's namespace first, else those of the global namespace;
    /// among the networks that contain the address, the smallest (longest prefix) wins, then
    /// the oldest, then namespace/name (the order of `networks`). `None`: not egress traffic
    /// that any network describes, so it is allowed unclassified.
    pub fn classify(&self, namespace: &str, destination: IpAddr) -> Option<&Arc<EgressNetwork>> {
        self.best_in(namespace, destination)
            .or_else(|| self.best_in(&self.global_namespace, destination))
    }

    fn best_in(&self, namespace: &str, destination: IpAddr) -> Option<&Arc<EgressNetwork>> {
        let mut best: Option<(u8, &Arc<EgressNetwork>)> = None;
        for network in self.networks.iter().filter(|n| n.namespace == namespace) {
            let Some(prefix) = network.longest_match(destination) else {
                continue;
            };
            // Strictly longer only: on a tie the earlier (older) network stays.
            if best.is_none_or(|(current, _)| prefix > current) {
                best = Some((prefix, network));
            }
        }
        best.map(|(_, network)| network)
    }
}

// === impl EgressNetwork ===

impl EgressNetwork {
    /// The prefix length of the most specific range containing `address`, if any.
    pub fn longest_match(&self, address: IpAddr) -> Option<u8> {
        self.ranges
            .iter()
            .filter(|range| range.contains(address))
            .map(|range| range.cidr.prefix_len())
            .max()
    }

    /// `namespace/name`.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

// === impl NetworkRange ===

impl NetworkRange {
    /// Whether `address` is in the CIDR and in none of its exceptions.
    pub fn contains(&self, address: IpAddr) -> bool {
        self.cidr.contains(&address) && !self.except.iter().any(|e| e.contains(&address))
    }
}

// === impl EgressPort ===

impl EgressPort {
    /// The TLSRoute rule for a ClientHello's SNI, by the same precedence as a Gateway's TLS
    /// listeners. No SNI matches only a route without hostnames.
    pub fn tls_route(&self, sni: Option<&str>) -> Option<&Arc<StreamRoute>> {
        match self {
            Self::Tls(routes) => select_by_sni(routes, sni),
            Self::Http(_) | Self::Tcp(_) => None,
        }
    }

    /// The route kind serving this port.
    pub fn kind(&self) -> RouteKind {
        match self {
            Self::Http(_) => RouteKind::Http,
            Self::Tls(_) => RouteKind::Tls,
            Self::Tcp(_) => RouteKind::Tcp,
        }
    }
}

// === impl TrafficPolicy ===

impl TrafficPolicy {
    /// The name of the implicit catch-all route, as Linkerd names it in metrics
    /// (`http-egress-deny`, `tls-egress-allow`, ...).
    pub fn implicit_route(self, protocol: Protocol) -> &'static str {
        match (protocol, self) {
            (Protocol::Http, Self::Allow) => "http-egress-allow",
            (Protocol::Http, Self::Deny) => "http-egress-deny",
            (Protocol::Tls, Self::Allow) => "tls-egress-allow",
            (Protocol::Tls, Self::Deny) => "tls-egress-deny",
            (Protocol::Tcp, Self::Allow) => "tcp-egress-allow",
            (Protocol::Tcp, Self::Deny) => "tcp-egress-deny",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn network(namespace: &str, name: &str, cidrs: &[(&str, &[&str])]) -> Arc<EgressNetwork> {
        let parse = |s: &str| s.parse::<IpNet>().expect("test CIDR");
        Arc::new(EgressNetwork {
            namespace: namespace.into(),
            name: name.into(),
            policy: TrafficPolicy::Deny,
            ranges: cidrs
                .iter()
                .map(|(cidr, except)| NetworkRange {
                    cidr: parse(cidr),
                    except: except.iter().copied().map(parse).collect(),
                })
                .collect(),
            ports: BTreeMap::new(),
        })
    }

    fn egress(networks: Vec<Arc<EgressNetwork>>) -> Egress {
        Egress {
            global_namespace: "linkerd-egress".into(),
            networks,
        }
    }

    fn classified(egress: &Egress, namespace: &str, ip: &str) -> Option<String> {
        let ip = ip.parse().expect("test address");
        egress.classify(namespace, ip).map(|n| n.full_name())
    }

    #[test]
    fn smallest_network_wins_then_oldest() {
        let egress = egress(vec![
            network("apps", "old-wide", &[("0.0.0.0/0", &[])]),
            network("apps", "narrow", &[("203.0.113.0/24", &[])]),
            network("apps", "narrow-too", &[("203.0.113.0/24", &[])]),
        ]);
        assert_eq!(
            classified(&egress, "apps", "203.0.113.9").as_deref(),
            Some("apps/narrow")
        );
        assert_eq!(
            classified(&egress, "apps", "198.51.100.1").as_deref(),
            Some("apps/old-wide")
        );
    }

    #[test]
    fn except_carves_out_addresses() {
        let egress = egress(vec![network(
            "apps",
            "all",
            &[("0.0.0.0/0", &["10.0.0.0/8"]), ("::/0", &["fd00::/8"])],
        )]);
        assert_eq!(classified(&egress, "apps", "10.1.2.3"), None);
        assert_eq!(classified(&egress, "apps", "fd00::1"), None);
        assert_eq!(
            classified(&egress, "apps", "2001:db8::1").as_deref(),
            Some("apps/all")
        );
    }

    #[test]
    fn own_namespace_before_global_and_other_namespaces_never() {
        let egress = egress(vec![
            network("linkerd-egress", "global", &[("0.0.0.0/0", &[])]),
            network("apps", "own", &[("203.0.113.0/24", &[])]),
            network("other", "theirs", &[("0.0.0.0/0", &[])]),
        ]);
        assert_eq!(
            classified(&egress, "apps", "203.0.113.1").as_deref(),
            Some("apps/own")
        );
        // Not in any network of `apps`: the global namespace's networks apply, even though a
        // wider one of `apps` would not have matched anyway.
        assert_eq!(
            classified(&egress, "apps", "198.51.100.1").as_deref(),
            Some("linkerd-egress/global")
        );
        assert_eq!(
            classified(&egress, "web", "203.0.113.1").as_deref(),
            Some("linkerd-egress/global")
        );
    }

    #[test]
    fn nothing_matches_without_networks() {
        assert_eq!(classified(&egress(Vec::new()), "apps", "203.0.113.1"), None);
    }
}
