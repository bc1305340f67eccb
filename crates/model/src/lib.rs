//! Resource types, manifest decoding and the snapshot that `translate` reads.
//!
//! Stage: between *sources* and *translate*. Sources hand this crate YAML text (or, in
//! Kubernetes mode, typed objects); it decodes and validates them into [`Object`]s with
//! precise errors ([`decode::DecodeError`]: file, line, field path, what is allowed), keeps
//! them in a [`Store`] that tracks `metadata.generation`, and produces an immutable
//! [`Snapshot`] for `translate`. It also owns the status vocabulary ([`status`]) that
//! `translate` writes and the binary publishes.
//!
//! Gateway API types come from the `gateway-api` crate behind the [`gw`] alias (its
//! experimental channel, a superset of the standard one); core kinds from `k8s-openapi`
//! behind [`k8s`].
//!
//! Must not depend on: tokio, hyper, the kube client, `ir`, `translate`.

pub mod decode;
pub mod egress;
pub mod policy;
mod snapshot;
pub mod status;
mod validate;
pub use validate::parse_duration;
pub mod yaml;

use std::fmt;
use std::sync::Arc;

/// Gateway API types: the experimental channel (a superset of the standard one), plus the
/// standard channel's BackendTLSPolicy, which the crate only generates there.
pub mod gw {
    pub use gateway_api::apis::standard::backendtlspolicies;
    pub use gateway_api::experimental::*;
}
pub use snapshot::{ObjectName, Snapshot, Store};

/// Core Kubernetes kinds used by portcullis.
pub mod k8s {
    pub use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServicePort};
    pub use k8s_openapi::api::discovery::v1::EndpointSlice;
    pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
        LabelSelector, LabelSelectorRequirement, ObjectMeta,
    };
    pub use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
}

/// The API group of the Gateway API.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// The kinds portcullis understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `gateway.networking.k8s.io` GatewayClass (cluster-scoped).
    GatewayClass,
    /// `gateway.networking.k8s.io` Gateway.
    Gateway,
    /// `gateway.networking.k8s.io` ListenerSet.
    ListenerSet,
    /// `gateway.networking.k8s.io` HTTPRoute.
    HttpRoute,
    /// `gateway.networking.k8s.io` GRPCRoute.
    GrpcRoute,
    /// `gateway.networking.k8s.io` TLSRoute.
    TlsRoute,
    /// `gateway.networking.k8s.io` TCPRoute.
    TcpRoute,
    /// `gateway.networking.k8s.io` ReferenceGrant.
    ReferenceGrant,
    /// `gateway.networking.k8s.io` BackendTLSPolicy.
    BackendTlsPolicy,
    /// Core Namespace (cluster-scoped).
    Namespace,
    /// Core Service.
    Service,
    /// `discovery.k8s.io` EndpointSlice.
    EndpointSlice,
    /// Core Secret.
    Secret,
    /// Core ConfigMap.
    ConfigMap,
    /// `policy.linkerd.io` EgressNetwork.
    EgressNetwork,
    /// `portcullis.dev` AuthenticationPolicy.
    AuthenticationPolicy,
    /// `portcullis.dev` RateLimitPolicy.
    RateLimitPolicy,
    /// `portcullis.dev` HealthCheckPolicy.
    HealthCheckPolicy,
}

/// Identifies one object: kind, namespace (empty for cluster-scoped kinds) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceKey {
    /// The kind.
    pub kind: Kind,
    /// Namespace, or empty for cluster-scoped objects.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// A decoded, validated object.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    /// A GatewayClass.
    GatewayClass(Arc<gw::gatewayclasses::GatewayClass>),
    /// A Gateway.
    Gateway(Arc<gw::gateways::Gateway>),
    /// A ListenerSet.
    ListenerSet(Arc<gw::listenersets::ListenerSet>),
    /// An HTTPRoute.
    HttpRoute(Arc<gw::httproutes::HttpRoute>),
    /// A GRPCRoute.
    GrpcRoute(Arc<gw::grpcroutes::GrpcRoute>),
    /// A TLSRoute.
    TlsRoute(Arc<gw::tlsroutes::TlsRoute>),
    /// A TCPRoute.
    TcpRoute(Arc<gw::tcproutes::TcpRoute>),
    /// A ReferenceGrant.
    ReferenceGrant(Arc<gw::referencegrants::ReferenceGrant>),
    /// A BackendTLSPolicy.
    BackendTlsPolicy(Arc<gw::backendtlspolicies::BackendTlsPolicy>),
    /// A Namespace.
    Namespace(Arc<k8s::Namespace>),
    /// A Service.
    Service(Arc<k8s::Service>),
    /// An EndpointSlice.
    EndpointSlice(Arc<k8s::EndpointSlice>),
    /// A Secret.
    Secret(Arc<k8s::Secret>),
    /// A ConfigMap.
    ConfigMap(Arc<k8s::ConfigMap>),
    /// An EgressNetwork.
    EgressNetwork(Arc<egress::EgressNetwork>),
    /// An AuthenticationPolicy.
    AuthenticationPolicy(Arc<policy::AuthenticationPolicy>),
    /// A RateLimitPolicy.
    RateLimitPolicy(Arc<policy::RateLimitPolicy>),
    /// A HealthCheckPolicy.
    HealthCheckPolicy(Arc<policy::HealthCheckPolicy>),
}

// === impl Kind ===

impl Kind {
    /// The Kubernetes `kind` string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GatewayClass => "GatewayClass",
            Self::Gateway => "Gateway",
            Self::ListenerSet => "ListenerSet",
            Self::HttpRoute => "HTTPRoute",
            Self::GrpcRoute => "GRPCRoute",
            Self::TlsRoute => "TLSRoute",
            Self::TcpRoute => "TCPRoute",
            Self::ReferenceGrant => "ReferenceGrant",
            Self::BackendTlsPolicy => "BackendTLSPolicy",
            Self::Namespace => "Namespace",
            Self::Service => "Service",
            Self::EndpointSlice => "EndpointSlice",
            Self::Secret => "Secret",
            Self::ConfigMap => "ConfigMap",
            Self::EgressNetwork => "EgressNetwork",
            Self::AuthenticationPolicy => "AuthenticationPolicy",
            Self::RateLimitPolicy => "RateLimitPolicy",
            Self::HealthCheckPolicy => "HealthCheckPolicy",
        }
    }

    /// The API group (`""` for core).
    pub fn group(self) -> &'static str {
        match self {
            Self::GatewayClass
            | Self::Gateway
            | Self::ListenerSet
            | Self::HttpRoute
            | Self::GrpcRoute
            | Self::TlsRoute
            | Self::TcpRoute
            | Self::ReferenceGrant
            | Self::BackendTlsPolicy => GATEWAY_GROUP,
            Self::EndpointSlice => "discovery.k8s.io",
            Self::EgressNetwork => egress::POLICY_GROUP,
            Self::AuthenticationPolicy | Self::RateLimitPolicy | Self::HealthCheckPolicy => {
                policy::GROUP
            }
            Self::Namespace | Self::Service | Self::Secret | Self::ConfigMap => "",
        }
    }

    /// The `apiVersion` written in status output.
    pub fn api_version(self) -> &'static str {
        match self {
            Self::GatewayClass
            | Self::Gateway
            | Self::ListenerSet
            | Self::HttpRoute
            | Self::GrpcRoute
            | Self::TlsRoute
            | Self::ReferenceGrant
            | Self::BackendTlsPolicy => "gateway.networking.k8s.io/v1",
            Self::TcpRoute => "gateway.networking.k8s.io/v1alpha2",
            Self::EndpointSlice => "discovery.k8s.io/v1",
            Self::EgressNetwork => "policy.linkerd.io/v1alpha1",
            Self::AuthenticationPolicy | Self::RateLimitPolicy | Self::HealthCheckPolicy => {
                "portcullis.dev/v1alpha1"
            }
            Self::Namespace | Self::Service | Self::Secret | Self::ConfigMap => "v1",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Self::GatewayClass | Self::Namespace)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl ResourceKey ===

impl ResourceKey {
    /// Builds a key.
    pub fn new(kind: Kind, namespace: &str, name: &str) -> Self {
        Self {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }
}

// === impl Object ===

impl Object {
    /// The object's metadata.
    pub fn meta(&self) -> &k8s::ObjectMeta {
        match self {
            Self::GatewayClass(o) => &o.metadata,
            Self::Gateway(o) => &o.metadata,
            Self::ListenerSet(o) => &o.metadata,
            Self::HttpRoute(o) => &o.metadata,
            Self::GrpcRoute(o) => &o.metadata,
            Self::TlsRoute(o) => &o.metadata,
            Self::TcpRoute(o) => &o.metadata,
            Self::ReferenceGrant(o) => &o.metadata,
            Self::BackendTlsPolicy(o) => &o.metadata,
            Self::Namespace(o) => &o.metadata,
            Self::Service(o) => &o.metadata,
            Self::EndpointSlice(o) => &o.metadata,
            Self::Secret(o) => &o.metadata,
            Self::ConfigMap(o) => &o.metadata,
            Self::EgressNetwork(o) => &o.metadata,
            Self::AuthenticationPolicy(o) => &o.metadata,
            Self::RateLimitPolicy(o) => &o.metadata,
            Self::HealthCheckPolicy(o) => &o.metadata,
        }
    }

    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Self::GatewayClass(_) => Kind::GatewayClass,
            Self::Gateway(_) => Kind::Gateway,
            Self::ListenerSet(_) => Kind::ListenerSet,
            Self::HttpRoute(_) => Kind::HttpRoute,
            Self::GrpcRoute(_) => Kind::GrpcRoute,
            Self::TlsRoute(_) => Kind::TlsRoute,
            Self::TcpRoute(_) => Kind::TcpRoute,
            Self::ReferenceGrant(_) => Kind::ReferenceGrant,
            Self::BackendTlsPolicy(_) => Kind::BackendTlsPolicy,
            Self::Namespace(_) => Kind::Namespace,
            Self::Service(_) => Kind::Service,
            Self::EndpointSlice(_) => Kind::EndpointSlice,
            Self::Secret(_) => Kind::Secret,
            Self::ConfigMap(_) => Kind::ConfigMap,
            Self::EgressNetwork(_) => Kind::EgressNetwork,
            Self::AuthenticationPolicy(_) => Kind::AuthenticationPolicy,
            Self::RateLimitPolicy(_) => Kind::RateLimitPolicy,
            Self::HealthCheckPolicy(_) => Kind::HealthCheckPolicy,
        }
    }

    /// The object's key.
    pub fn key(&self) -> ResourceKey {
        let meta = self.meta();
        ResourceKey::new(
            self.kind(),
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        )
    }
}
