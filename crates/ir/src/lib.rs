//! The compiled routing config: the contract between `translate` and the data plane.
//!
//! Stage: the output of *translate* and the only input of the *data plane*. `translate` builds
//! an [`Config`] from a snapshot of resources; the data plane serves whatever `Config` it is
//! handed, one `Arc<Config>` per request or connection. Nothing here knows about YAML, Gateway
//! API structs or Kubernetes: matchers are compiled, hostnames normalised, invalid rules are
//! explicit values ([`Action::Invalid`]) that the data plane answers with the spec's error.
//!
//! Route selection ([`HttpListener::select`]) is pure: it takes the parts of a request that
//! routing looks at and returns the rule to apply, implementing the Gateway API precedence.
//!
//! Must not depend on: `model`, `translate`, tokio, hyper, kube.

mod backend;
mod egress;
mod filter;
mod hostname;
mod policy;
mod route;
mod stream;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;

pub use backend::{
    Backend, BackendProtocol, BackendTarget, BackendTls, BackendTrust, Endpoint, HealthCheck,
    InvalidBackend, Probe, SubjectAltName, WeightedBackend,
};
pub use egress::{Egress, EgressNetwork, EgressPort, NetworkRange, Protocol, TrafficPolicy};
pub use filter::{
    AuthProtocol, Cors, CorsList, ExternalAuth, HeaderModifier, InvalidCorsValue, Mirror,
    OriginPattern, PathModifier, Redirect, RedirectScheme, RequestFilters, UrlRewrite,
};
pub use hostname::{Hostname, HostnameMatch};
pub use policy::{
    ApiKeys, Applied, Authentication, BasicAuth, ClientKey, Jwt, JwtKey, JwtKeys, JwtProvider,
    KeySource, Limit, LimitScope, PasswordHash, RateLimit, RulePolicies,
};
pub use route::{
    Action, Candidate, HeaderMatch, HttpMatch, HttpRequestParts, PathMatch, QueryMatch, Retry,
    RouteId, RouteKind, RouteTable, Rule, Selected, StringMatch, Timeouts,
};
pub use stream::{StreamRoute, TcpListener, TlsPassthroughListener, TlsTerminateListener};

/// A complete routing configuration, replaced as a whole on every reload.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Config {
    /// Every socket the data plane must listen on, keyed by bind address. Listeners of one or
    /// several Gateways that share an address and port share one socket.
    pub binds: BTreeMap<SocketAddr, Bind>,
    /// EgressNetworks and their routes, for the outbound proxy.
    #[serde(skip_serializing_if = "Egress::is_empty")]
    pub egress: Egress,
}

/// One listening socket and the Gateway listeners served on it.
///
/// A socket carries HTTP listeners (plain or, when they have certificates, TLS-terminated),
/// TLS listeners (passthrough, or terminate-and-relay), or one TCP listener. The TLS kinds
/// may share a socket: the ClientHello's SNI picks the most specific listener of any kind
/// (TLSRouteModeMixed).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Bind {
    /// HTTP listeners on this socket, most specific hostname first (see [`Bind::listener_for`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http: Vec<Arc<HttpListener>>,
    /// TLS passthrough listeners, most specific hostname first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls_passthrough: Vec<Arc<TlsPassthroughListener>>,
    /// TLS listeners that terminate and relay bytes (TLSRoute with `tls.mode: Terminate`),
    /// most specific hostname first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls_terminate: Vec<Arc<TlsTerminateListener>>,
    /// The TCP listener, when the socket serves one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp: Option<Arc<TcpListener>>,
    /// Mesh (a Service's `clusterIP:port`): the consumer routes of each client namespace
    /// (routes in that namespace with the Service as parent). Clients of a namespace listed
    /// here are served by its listener instead of the producer routes in `http`.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub consumers: BTreeMap<String, Arc<HttpListener>>,
}

/// A Gateway listener of protocol HTTP, with the routes attached to it.
#[derive(Clone, Debug, Serialize)]
pub struct HttpListener {
    /// Gateway namespace/name and listener name, for logs, metrics and `explain`.
    pub gateway: String,
    /// The listener's `name`.
    pub name: String,
    /// The listener's `hostname`; `None` matches every host.
    pub hostname: Option<HostnameMatch>,
    /// The port as declared in the Gateway spec (used for redirects), which may differ from
    /// the bound port.
    pub port: u16,
    /// The scheme clients use to reach this listener (`http` or `https`).
    pub scheme: RedirectScheme,
    /// The compiled routes.
    pub routes: RouteTable,
    /// For `HTTPS` listeners: the certificate served to clients whose SNI selects this
    /// listener. `None` for plain HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<Arc<TlsCertificate>>,
    /// For `HTTPS` listeners with frontend client certificate validation (Gateway
    /// `spec.tls.frontend`, resolved for the listener's port): the CA bundle client
    /// certificates are verified against, and what to do with clients that fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_validation: Option<Arc<ClientValidation>>,
    /// The Gateway's `spec.tls.backend.clientCertificateRef`: presented to backends that this
    /// listener's routes reach over TLS (BackendTLSPolicy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend_client_certificate: Option<Arc<TlsCertificate>>,
}

/// Frontend client certificate validation of an HTTPS listener.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct ClientValidation {
    /// `namespace/name` of the CA ConfigMaps, for logs and `/config`.
    pub source: String,
    /// PEM-encoded CA certificates (the `ca.crt` keys of the referenced ConfigMaps).
    #[serde(skip)]
    pub ca_pem: Vec<u8>,
    /// What happens to clients without a valid certificate.
    pub mode: ClientValidationMode,
}

impl std::fmt::Debug for ClientValidation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientValidation")
            .field("source", &self.source)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// Gateway `spec.tls.frontend...validation.mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ClientValidationMode {
    /// A client certificate is required and must chain to the CA.
    AllowValidOnly,
    /// A client certificate is requested; connections go ahead whatever the client presents.
    AllowInsecureFallback,
}

/// A server certificate chain and its private key, PEM-encoded as in a `kubernetes.io/tls`
/// Secret. `translate` has checked that both parse (at least one certificate, one key).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TlsCertificate {
    /// `namespace/name` of the Secret, for logs and `/config`.
    pub source: String,
    /// `tls.crt`: the leaf first, then intermediates.
    pub chain_pem: Vec<u8>,
    /// `tls.key`: PKCS#1, PKCS#8 or SEC1.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for TlsCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("TlsCertificate")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Serialize for TlsCertificate {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

// === impl Bind ===

impl Bind {
    /// Picks the listener for a request's host. Listener isolation (GEP-1713 and the
    /// `GatewayHTTPListenerIsolation` feature): a request is served only by the listener whose
    /// hostname matches it most specifically, an exact hostname before the longest wildcard,
    /// and a listener without a hostname last.
    pub fn listener_for(&self, host: &str) -> Option<&Arc<HttpListener>> {
        self.http
            .iter()
            .filter(|listener| match &listener.hostname {
                None => true,
                Some(pattern) => pattern.matches(host),
            })
            .max_by_key(|listener| {
                listener
                    .hostname
                    .as_ref()
                    .map_or((0, 0), HostnameMatch::specificity)
            })
    }

    /// The listener for a mesh client of `namespace`: its namespace's consumer routes if it
    /// has any, else the producer routes.
    pub fn mesh_listener_for(&self, namespace: Option<&str>) -> Option<&Arc<HttpListener>> {
        namespace
            .and_then(|ns| self.consumers.get(ns))
            .or_else(|| self.http.first())
    }

    /// Picks the passthrough listener for a ClientHello's SNI, with the same hostname
    /// precedence as [`Bind::listener_for`]. Without SNI only a listener without hostname
    /// can match.
    pub fn passthrough_for(&self, sni: Option<&str>) -> Option<&Arc<TlsPassthroughListener>> {
        self.tls_passthrough
            .iter()
            .filter(|listener| match (&listener.hostname, sni) {
                (None, _) => true,
                (Some(pattern), Some(sni)) => pattern.matches(sni),
                (Some(_), None) => false,
            })
            .max_by_key(|listener| {
                listener
                    .hostname
                    .as_ref()
                    .map_or((0, 0), HostnameMatch::specificity)
            })
    }

    /// Sorts listeners so that the most specific hostname comes first; ties keep their order.
    pub fn sort_listeners(&mut self) {
        let key = |hostname: &Option<HostnameMatch>| {
            std::cmp::Reverse(hostname.as_ref().map_or((0, 0), HostnameMatch::specificity))
        };
        self.http.sort_by_key(|listener| key(&listener.hostname));
        self.tls_passthrough
            .sort_by_key(|listener| key(&listener.hostname));
        self.tls_terminate
            .sort_by_key(|listener| key(&listener.hostname));
    }
}
