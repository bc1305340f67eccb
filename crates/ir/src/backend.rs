//! Backends: where a rule sends traffic, with weights and resolved endpoints.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;

use crate::filter::HeaderModifier;

/// One `backendRef` of a rule after resolution.
#[derive(Clone, Debug, Serialize)]
pub struct WeightedBackend {
    /// Relative weight; `0` means never chosen.
    pub weight: u32,
    /// A resolved backend, or why the reference is invalid.
    pub target: BackendTarget,
    /// `RequestHeaderModifier` filters on this backendRef, applied only when it is chosen.
    /// Boxed, like the other optional parts of compiled rules: most backendRefs have none,
    /// and a config holds one of these per backendRef of every rule.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<Box<HeaderModifier>>,
    /// `ResponseHeaderModifier` filters on this backendRef.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<Box<HeaderModifier>>,
}

/// A backendRef resolves to a backend or stays invalid; requests that pick an invalid one get
/// 500, as the spec requires ("requests that would have been sent to an invalid backend MUST
/// receive a 500 status code").
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum BackendTarget {
    /// A Service port with its endpoints.
    Service(Arc<Backend>),
    /// Egress: the address the client was connecting to (a backendRef to the EgressNetwork
    /// itself, or a rule of an egress route without backendRefs). Only the outbound proxy
    /// knows that address; elsewhere it is invalid.
    OriginalDestination,
    /// An unresolvable reference.
    Invalid(InvalidBackend),
}

/// Why a backendRef cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InvalidBackend {
    /// The reference as written (`namespace/name:port`), for logs and `explain`.
    pub reference: String,
    /// The status reason translate reported for it.
    pub reason: String,
}

/// A Service port and the endpoints that serve it.
#[derive(Clone, Debug, Serialize)]
pub struct Backend {
    /// `namespace/name:port`, stable for metrics and pools; requests clone it into their log
    /// and metric labels without allocating.
    pub name: Arc<str>,
    /// The protocol spoken to the endpoints.
    pub protocol: BackendProtocol,
    /// Ready endpoints; empty means the Service exists but nothing serves it (503).
    pub endpoints: Vec<Endpoint>,
    /// TLS towards the endpoints, when a BackendTLSPolicy targets this Service port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Arc<BackendTls>>,
    /// Active health checks of the endpoints, when a HealthCheckPolicy targets this Service
    /// port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health: Option<Arc<HealthCheck>>,
}

/// Active health checking, from the HealthCheckPolicy that won for a Service port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// `namespace/name` of the policy, for logs and `/config`.
    pub policy: String,
    /// Time between two probes of an endpoint.
    pub interval: std::time::Duration,
    /// Time allowed for one probe.
    pub timeout: std::time::Duration,
    /// Consecutive failures that make a healthy endpoint unhealthy.
    pub unhealthy_threshold: u32,
    /// Consecutive passes that make an unhealthy endpoint healthy.
    pub healthy_threshold: u32,
    /// How an endpoint is probed.
    pub probe: Probe,
}

/// How a [`HealthCheck`] probes an endpoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Probe {
    /// An HTTP GET of `path` with `Host: host`, over the backend's protocol (and TLS); it
    /// passes with one of `statuses` (empty: any 2xx or 3xx).
    Http {
        /// Path and query.
        path: String,
        /// The Host header.
        host: String,
        /// The statuses that pass.
        statuses: Vec<u16>,
    },
    /// A TCP connection; it passes when the endpoint accepts.
    Tcp,
}

impl Probe {
    /// Whether an HTTP probe's answer passes.
    pub fn passes(&self, status: u16) -> bool {
        match self {
            Self::Http { statuses, .. } if statuses.is_empty() => (200..400).contains(&status),
            Self::Http { statuses, .. } => statuses.contains(&status),
            Self::Tcp => true,
        }
    }
}

/// TLS origination to a backend, from the BackendTLSPolicy that won for its Service port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendTls {
    /// `namespace/name` of the policy, for logs and `/config`.
    pub policy: String,
    /// `validation.hostname`: the SNI sent, and the name the certificate must be valid for
    /// unless `subject_alt_names` is set.
    pub server_name: String,
    /// What the backend's certificate chain must lead to.
    pub trust: BackendTrust,
    /// `validation.subjectAltNames`: when not empty, the certificate must carry one of these
    /// instead of being valid for `server_name`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub subject_alt_names: Vec<SubjectAltName>,
}

/// The trust anchors of a [`BackendTls`].
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum BackendTrust {
    /// PEM CA certificates from the policy's `caCertificateRefs` (their `ca.crt` keys).
    Certificates {
        /// `namespace/name` of the ConfigMaps.
        source: String,
        /// The certificates; translate has checked that at least one parses.
        #[serde(skip)]
        ca_pem: Vec<u8>,
    },
    /// `wellKnownCACertificates: System`: the system's trust store.
    System,
    /// The policy names no usable CA: "Connections using an invalid CACertificateRef MUST
    /// fail" (BackendTLSPolicyValidation docs), so requests get a 5xx. Holds the reason.
    Invalid(String),
}

/// One `subjectAltNames` entry.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum SubjectAltName {
    /// `type: Hostname`: a DNS name the certificate must be valid for (wildcards in the
    /// certificate apply as usual).
    Hostname(String),
    /// `type: URI`: a URI SAN the certificate must carry exactly.
    Uri(String),
}

impl std::fmt::Debug for BackendTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Certificates { source, .. } => f
                .debug_struct("Certificates")
                .field("source", source)
                .finish_non_exhaustive(),
            Self::System => f.write_str("System"),
            Self::Invalid(reason) => f.debug_tuple("Invalid").field(reason).finish(),
        }
    }
}

/// The application protocol spoken to a backend, from the Service port's `appProtocol`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum BackendProtocol {
    /// HTTP/1.1 (the default).
    Http1,
    /// Cleartext HTTP/2 with prior knowledge (`appProtocol: kubernetes.io/h2c`).
    H2c,
}

/// One address serving a backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
}
