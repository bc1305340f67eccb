//! Our own policy kinds (`portcullis.dev/v1alpha1`), attached to Gateways, listeners, routes
//! and route rules the way GEP-713 describes ("direct policy attachment"): what the Gateway
//! API has no standard field for yet.
//!
//! - `AuthenticationPolicy`: JWT (JWKS from a ConfigMap or Secret), basic auth (an htpasswd
//!   file in a Secret), API keys (Secrets mapping client ids to keys).
//! - `RateLimitPolicy`: request limits per window, local to each process or shared by every
//!   replica through Redis, for all clients together or per client key.
//! - `HealthCheckPolicy`: active health checks (HTTP or TCP probes) of a Service's
//!   endpoints; it targets Services, like BackendTLSPolicy.
//!
//! The CRDs in `deploy/crds/` are generated from these types (`portcullis crds`), so their
//! OpenAPI schema and this decoder can never disagree. Checks a schema cannot express are in
//! `validate.rs`, and what needs other objects (a target that exists, a Secret that parses)
//! is reported in the policy's status by `translate`.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of our policy kinds.
pub const GROUP: &str = "portcullis.dev";

/// Requests must carry valid credentials of every method the policy configures.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "AuthenticationPolicy",
    plural = "authenticationpolicies",
    namespaced,
    derive = "Default",
    derive = "PartialEq",
    status = "PolicyStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct AuthenticationPolicySpec {
    /// What the policy applies to: Gateways (all listeners, or one by `sectionName`),
    /// HTTPRoutes and GRPCRoutes (all rules, or one rule by its `name`), in the policy's
    /// namespace. The most specific attachment wins.
    #[schemars(length(min = 1, max = 16))]
    pub target_refs: Vec<TargetRef>,
    /// JSON Web Tokens in `Authorization: Bearer`, valid for one of the providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuthentication>,
    /// HTTP basic authentication against an htpasswd file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuthentication>,
    /// API keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyAuthentication>,
}

/// Limits on the request rate; a request must be within every limit.
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "RateLimitPolicy",
    plural = "ratelimitpolicies",
    namespaced,
    derive = "Default",
    derive = "PartialEq",
    status = "PolicyStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitPolicySpec {
    /// What the policy applies to, as for AuthenticationPolicy.
    #[schemars(length(min = 1, max = 16))]
    pub target_refs: Vec<TargetRef>,
    /// The limits.
    #[schemars(length(min = 1, max = 16))]
    pub limits: Vec<Limit>,
}

/// Active health checking of a Service's endpoints: each data plane probes every endpoint
/// it routes to on an interval, and stops sending requests to endpoints that fail (unless
/// every endpoint of the backend fails, when it goes on using them all).
#[derive(CustomResource, Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "portcullis.dev",
    version = "v1alpha1",
    kind = "HealthCheckPolicy",
    plural = "healthcheckpolicies",
    namespaced,
    derive = "Default",
    derive = "PartialEq",
    status = "PolicyStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheckPolicySpec {
    /// Services in the policy's namespace (group `""`, kind `Service`), all their ports or
    /// one port by its name in `sectionName`. A policy for a port wins over one for the
    /// whole Service; between equals, the oldest wins.
    #[schemars(length(min = 1, max = 16))]
    pub target_refs: Vec<TargetRef>,
    /// Time between two probes of an endpoint; default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// Time allowed for one probe; default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Consecutive failed probes that make a healthy endpoint unhealthy; default 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub unhealthy_threshold: Option<u32>,
    /// Consecutive passed probes that make an unhealthy endpoint healthy again; default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub healthy_threshold: Option<u32>,
    /// Probe with an HTTP GET (over the backend's protocol and TLS); exactly one of `http`,
    /// `tcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpHealthCheck>,
    /// Probe by opening a TCP connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<TcpHealthCheck>,
}

/// `spec.http` of a HealthCheckPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HttpHealthCheck {
    /// The path (and query) requested, starting with `/`.
    pub path: String,
    /// The Host header sent; default the Service's `name.namespace` name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The statuses that pass; default any 2xx or 3xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_statuses: Option<Vec<u16>>,
}

/// `spec.tcp` of a HealthCheckPolicy: the endpoint passes when it accepts a connection.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TcpHealthCheck {}

/// GEP-713's `LocalPolicyTargetReferenceWithSectionName`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// `gateway.networking.k8s.io` (or `""` for a Service).
    pub group: String,
    /// `Gateway`, `HTTPRoute` or `GRPCRoute` (or `Service` for a HealthCheckPolicy).
    pub kind: String,
    /// The target's name, in the policy's namespace.
    pub name: String,
    /// A listener name (Gateway) or a rule name (routes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// `spec.jwt`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtAuthentication {
    /// Token issuers; a token is accepted when one of them accepts it.
    #[schemars(length(min = 1, max = 8))]
    pub providers: Vec<JwtProvider>,
}

/// One token issuer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtProvider {
    /// A name, for logs and status.
    pub name: String,
    /// The required `iss` claim; unset accepts any issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// Accepted `aud` values; unset accepts any audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audiences: Option<Vec<String>>,
    /// The JSON Web Key Set in a ConfigMap or Secret; exactly one of `jwks`, `remoteJWKS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks: Option<JwksRef>,
    /// The JSON Web Key Set at a URL, fetched by the data plane and cached.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "remoteJWKS"
    )]
    pub remote_jwks: Option<RemoteJwks>,
    /// Claims copied into request headers for the backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_to_headers: Option<Vec<ClaimToHeader>>,
}

/// A JWKS document in a ConfigMap or Secret of the policy's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwksRef {
    /// `ConfigMap` (default) or `Secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The object's name.
    pub name: String,
    /// The data key; default `jwks.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// A JWKS fetched over HTTP(S).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteJwks {
    /// An `http://` or `https://` URL (HTTPS trusts the Mozilla root certificates).
    pub uri: String,
    /// How long fetched keys are used before they are fetched again; default 5m.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_duration: Option<String>,
}

/// One claim to copy into a header.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClaimToHeader {
    /// The claim (a top-level claim of the token).
    pub claim: String,
    /// The header it is written to (any value the client sent there is replaced).
    pub header: String,
}

/// `spec.basicAuth`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BasicAuthentication {
    /// A Secret holding an htpasswd file (bcrypt `$2y$`/`$2a$`/`$2b$`, or `{SHA}`).
    pub users: SecretKeyRef,
    /// The realm of the `WWW-Authenticate` challenge; default the policy's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
}

/// A key of a Secret in the policy's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret's name.
    pub name: String,
    /// The data key; default `.htpasswd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

/// `spec.apiKey`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyAuthentication {
    /// Secrets whose data map client ids to their keys.
    #[schemars(length(min = 1, max = 16))]
    pub credentials: Vec<SecretName>,
    /// Where the key is looked for, in order; default the `x-api-key` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extract_from: Option<Vec<KeySource>>,
    /// A header that tells the backend which client id the key belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_client_id_header: Option<String>,
}

/// A Secret in the policy's namespace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SecretName {
    /// The Secret's name.
    pub name: String,
}

/// One place an API key may be: exactly one of `header`, `queryParameter`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeySource {
    /// A request header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// A query parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_parameter: Option<String>,
}

/// One limit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limit {
    /// A name, for logs and the Redis keys; default its position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Local` (each process counts for itself) or `Global` (one count shared through
    /// Redis by every process, `run --rate-limit-redis`).
    pub scope: LimitScope,
    /// Requests allowed per `unit`.
    #[schemars(range(min = 1))]
    pub requests: u32,
    /// The window.
    pub unit: LimitUnit,
    /// Counts per client instead of for everyone together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<ClientKey>,
}

/// Where a limit is counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LimitScope {
    /// In each process (a token bucket).
    #[default]
    Local,
    /// In Redis, shared by every process (fixed windows).
    Global,
}

/// The window of a limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LimitUnit {
    /// Per second.
    #[default]
    Second,
    /// Per minute.
    Minute,
    /// Per hour.
    Hour,
}

/// What tells clients apart.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ClientKey {
    /// `ClientIP`, `Header` or `JWTClaim`.
    #[serde(rename = "type")]
    pub kind: ClientKeyType,
    /// The header or claim name (for `Header` and `JWTClaim`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The kinds of client keys.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ClientKeyType {
    /// The client's IP address (of the connection).
    #[default]
    #[serde(rename = "ClientIP")]
    ClientIp,
    /// A request header's value (requests without it share one count).
    Header,
    /// A claim of the request's JWT, as verified by an AuthenticationPolicy (requests
    /// without it share one count).
    #[serde(rename = "JWTClaim")]
    JwtClaim,
}

/// The status of our policies: GEP-713's `PolicyStatus`, one entry per ancestor. Its
/// shape is the Gateway API's own (as generated for BackendTLSPolicy, the standard policy
/// kind), so tools that read policy status read ours.
pub type PolicyStatus = crate::gw::backendtlspolicies::BackendTlsPolicyStatus;

/// The CustomResourceDefinitions of our kinds, as YAML documents (what `deploy/` ships and
/// `portcullis crds` prints).
pub fn crds_yaml() -> String {
    use kube::CustomResourceExt;
    [
        AuthenticationPolicy::crd(),
        RateLimitPolicy::crd(),
        HealthCheckPolicy::crd(),
    ]
    .iter()
    .map(|crd| serde_yaml_ng::to_string(crd).unwrap_or_default())
    .collect::<Vec<_>>()
    .join("---\n")
}

impl LimitUnit {
    /// The window's length in seconds.
    pub fn seconds(self) -> u64 {
        match self {
            Self::Second => 1,
            Self::Minute => 60,
            Self::Hour => 3600,
        }
    }
}

#[cfg(test)]
mod tests {
    /// The chart ships the CRDs generated from these types; regenerate with
    /// `PORTCULLIS_UPDATE_CRDS=1 cargo test -p model crds`.
    #[test]
    fn shipped_crds_match_the_types() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../deploy/chart/crds/portcullis.dev.yaml");
        let generated = format!(
            "# Generated from crates/model/src/policy.rs by `portcullis crds`; do not edit.\n{}",
            super::crds_yaml()
        );
        if std::env::var_os("PORTCULLIS_UPDATE_CRDS").is_some() {
            std::fs::write(&path, &generated).expect("write the CRDs");
        }
        let shipped = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            shipped == generated,
            "{} is stale; regenerate it",
            path.display()
        );
    }
}
