//! Linkerd's `EgressNetwork` (`policy.linkerd.io/v1alpha1`): a set of destination networks
//! whose traffic is classified as egress, with a policy for what no attached route allows.
//!
//! The `gateway-api` crate has no such type and Linkerd's own crate pulls in its whole
//! controller, so the schema (`../shared/linkerd-crds/egress-network.yaml`) is written out
//! here. Unknown fields are rejected by the decoder like any other kind's.

use serde::{Deserialize, Serialize};

use crate::k8s;

/// The API group of `EgressNetwork`.
pub const POLICY_GROUP: &str = "policy.linkerd.io";

/// An `EgressNetwork` object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EgressNetwork {
    /// Standard object metadata.
    pub metadata: k8s::ObjectMeta,
    /// The spec.
    pub spec: EgressNetworkSpec,
}

/// `spec` of an `EgressNetwork`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressNetworkSpec {
    /// What happens to traffic that no attached route describes.
    pub traffic_policy: TrafficPolicy,
    /// The destination networks; omitted means every address outside the cluster networks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<Network>>,
}

/// `spec.trafficPolicy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrafficPolicy {
    /// Traffic without a matching route goes to its original destination.
    Allow,
    /// Traffic without a matching route is refused.
    Deny,
}

/// One entry of `spec.networks`: a CIDR minus some sub-networks. The strings are checked by
/// validation (an address or CIDR; each `except` inside its `cidr`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Network {
    /// The network, as a CIDR (`203.0.113.0/24`) or a single address.
    pub cidr: String,
    /// Networks or addresses inside `cidr` that are not part of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<Vec<String>>,
}

/// Parses a CIDR, or a bare address as a one-address network.
pub fn parse_network(text: &str) -> Option<ipnet::IpNet> {
    text.parse::<ipnet::IpNet>().ok().or_else(|| {
        text.parse::<std::net::IpAddr>()
            .ok()
            .map(ipnet::IpNet::from)
    })
}
