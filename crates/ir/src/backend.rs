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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderModifier>,
    /// `ResponseHeaderModifier` filters on this backendRef.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderModifier>,
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
    /// `namespace/name:port`, stable for metrics and pools.
    pub name: String,
    /// The protocol spoken to the endpoints.
    pub protocol: BackendProtocol,
    /// Ready endpoints; empty means the Service exists but nothing serves it (503).
    pub endpoints: Vec<Endpoint>,
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
