//! The case file format of `shared/conformance/README.md` ("Case file format"), as serde types.
//!
//! Top-level keys, phases, actions and status checks are typed here. A case's `request`,
//! `expect` and `distribution` blocks differ per case `type`, so they stay JSON values until
//! the traffic runner knows the type and converts them with [`HttpRequest::from_value`] and
//! friends. That way a file with a case type we do not run yet still loads, and that one case
//! fails with "unsupported case type" instead of the whole file. The blocks of the
//! connection-level case types are typed next to their runner, in `stream_cases`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context as _;
use serde::Deserialize;
use serde_json::Value;

/// One case file: one translated upstream conformance test.
#[derive(Debug, Clone, Deserialize)]
pub struct CaseFile {
    /// The upstream ShortName, also the file name.
    pub name: String,
    /// SupportedFeatures the test requires; all must be supported to run it.
    #[serde(default)]
    pub features: Vec<String>,
    /// Upstream passes the test silently when the implementation supports one of these.
    #[serde(default)]
    pub skip_if_supported: Vec<String>,
    /// `gateway` or `mesh`.
    pub base_manifests: BaseManifests,
    /// Per-test manifest files relative to the manifests folder, applied in order.
    #[serde(default)]
    pub manifests: Vec<String>,
    /// One-off preparation after startup.
    #[serde(default)]
    pub setup_actions: Vec<Action>,
    /// Ordered phases; a file without phases is one phase.
    #[serde(default)]
    pub phases: Vec<Phase>,
    /// Status assertions.
    #[serde(default)]
    pub status: Vec<StatusEntry>,
    /// Traffic cases.
    #[serde(default)]
    pub cases: Vec<Case>,
}

/// Which shared manifest file a test builds on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BaseManifests {
    /// `manifests/base/manifests.yaml`
    Gateway,
    /// `manifests/mesh/manifests.yaml`
    Mesh,
}

/// One phase: actions that edit the manifests, then its status entries and cases.
#[derive(Debug, Clone, Deserialize)]
pub struct Phase {
    /// 1-based phase number, referenced by `phase:` of status entries and cases.
    pub phase: u32,
    /// What the phase is about.
    #[serde(default)]
    pub title: String,
    /// Edits performed before the phase's checks.
    #[serde(default)]
    pub actions: Vec<Action>,
    /// Cleanup edits performed after the phase, with nothing to assert.
    #[serde(default)]
    pub after: Vec<Action>,
}

/// An edit of the manifest directory, described partly in words (`change`).
#[derive(Debug, Clone, Deserialize)]
pub struct Action {
    /// `update`, `create`, `delete` or `fill-endpointslices`.
    pub action: String,
    /// Kind of the edited object.
    #[serde(default)]
    pub kind: String,
    /// `namespace/name` (or `name` for cluster-scoped objects).
    #[serde(default)]
    pub name: String,
    /// The edit, in words; see `actions::Edit::parse`.
    #[serde(default)]
    pub change: String,
    /// The listener object for "append to spec.listeners".
    #[serde(default)]
    pub append_listener: Option<Value>,
    /// EndpointSlices named by `fill-endpointslices`.
    #[serde(default)]
    pub endpointslices: Vec<String>,
}

/// A status assertion together with the phase it belongs to.
#[derive(Debug, Clone, Deserialize)]
pub struct StatusEntry {
    /// Phase number, present only when the file has phases.
    #[serde(default)]
    pub phase: Option<u32>,
    /// What to check.
    #[serde(flatten)]
    pub check: StatusCheck,
}

/// A condition as written in case files; `any` matches every status or reason.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ExpectedCondition {
    /// Condition type, e.g. `Accepted`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False`, `Unknown` or `any`.
    pub status: String,
    /// Reason or `any`.
    pub reason: String,
}

/// Expected listener entry of `gateway-listeners` / `listenerset-listeners`.
#[derive(Debug, Clone, Deserialize)]
pub struct ExpectedListener {
    /// Listener name.
    pub name: String,
    /// Kinds that must be listed (group `gateway.networking.k8s.io`); empty means none at all.
    #[serde(default)]
    pub supported_kinds: Vec<String>,
    /// Exact `attachedRoutes`.
    pub attached_routes: i64,
    /// Conditions the listener must carry.
    #[serde(default)]
    pub conditions: Vec<ExpectedCondition>,
}

/// Expected parent entry of `route-parents`.
#[derive(Debug, Clone, Deserialize)]
pub struct ExpectedParent {
    /// `namespace/name` of the parent Gateway.
    pub gateway: String,
    /// Conditions the parent entry must carry.
    #[serde(default)]
    pub conditions: Vec<ExpectedCondition>,
}

/// Every `check` of the README's status table. Field meanings follow that table.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "check", rename_all = "kebab-case")]
pub enum StatusCheck {
    /// Gateways of these namespaces are Accepted and Programmed.
    NamespacesReady {
        /// Namespaces whose Gateways must be ready.
        namespaces: Vec<String>,
    },
    /// Gateway has an address, routes are accepted by it, listeners are healthy.
    GatewayRoutesAccepted {
        /// `namespace/name` of the Gateway.
        gateway: String,
        /// Kind of the route(s) (default `HTTPRoute`).
        #[serde(default = "http_route")]
        route_kind: String,
        /// `namespace/name` of every route that must be accepted.
        #[serde(default)]
        routes: Vec<String>,
        /// Whether every listener must be healthy too (default true).
        #[serde(default = "yes")]
        check_listeners: bool,
    },
    /// The route has a parent entry for `parent` with the condition.
    RouteCondition {
        /// Kind of the route(s) (default `HTTPRoute`).
        #[serde(default = "http_route")]
        route_kind: String,
        /// `namespace/name` of the route.
        route: String,
        /// `namespace/name` of the parent Gateway.
        parent: String,
        /// The condition that must be present.
        condition: ExpectedCondition,
    },
    /// Like `gateway-routes-accepted` (2) with explicit parents and conditions.
    RouteParents {
        /// Kind of the route(s) (default `HTTPRoute`).
        #[serde(default = "http_route")]
        route_kind: String,
        /// `namespace/name` of the route.
        route: String,
        /// The parent entries that must be present.
        parents: Vec<ExpectedParent>,
        /// Whether `parentRef.namespace` must be written out.
        #[serde(default)]
        namespace_required: bool,
    },
    /// No parent accepted the route.
    RouteNoAcceptedParents {
        /// Kind of the route(s) (default `HTTPRoute`).
        #[serde(default = "http_route")]
        route_kind: String,
        /// `namespace/name` of the route.
        route: String,
    },
    /// No routes attached to the Gateway.
    GatewayZeroRoutes {
        /// `namespace/name` of the Gateway.
        gateway: String,
    },
    /// The Gateway has the condition.
    GatewayCondition {
        /// `namespace/name` of the Gateway.
        gateway: String,
        /// The condition that must be present.
        condition: ExpectedCondition,
    },
    /// The Gateway has a typed address.
    GatewayAddress {
        /// `namespace/name` of the Gateway.
        gateway: String,
    },
    /// The Gateway's listeners are exactly these.
    GatewayListeners {
        /// `namespace/name` of the Gateway.
        gateway: String,
        /// The expected listeners, exactly this many.
        listeners: Vec<ExpectedListener>,
    },
    /// The named listener (or every listener) has these conditions.
    ListenerConditions {
        /// `namespace/name` of the Gateway.
        gateway: String,
        /// Listener name; every listener when absent.
        #[serde(default)]
        listener: Option<String>,
        /// Conditions that must all be present.
        conditions: Vec<ExpectedCondition>,
    },
    /// The policy has an ancestor entry for the Gateway with the condition.
    PolicyCondition {
        /// Kind of the policy (default `BackendTLSPolicy`).
        #[serde(default = "backend_tls_policy")]
        policy_kind: String,
        /// `namespace/name` of the policy.
        policy: String,
        /// `namespace/name` of the ancestor Gateway.
        ancestor: String,
        /// The condition that must be present.
        condition: ExpectedCondition,
    },
    /// Every condition of the object carries the current generation.
    LatestObservedGeneration {
        /// Kind of the object.
        kind: String,
        /// `namespace/name` (bare name when cluster-scoped) of the object.
        name: String,
    },
    /// The phase's update changed `metadata.generation`.
    GenerationChanged {
        /// Kind of the object.
        kind: String,
        /// `namespace/name` (bare name when cluster-scoped) of the object.
        name: String,
    },
    /// The GatewayClass has an Accepted condition with the current generation.
    GatewayclassAccepted {
        /// Name of the GatewayClass.
        gatewayclass: String,
        /// The condition that must be present.
        condition: ExpectedCondition,
    },
    /// Static address bookkeeping of `GatewayStaticAddresses`.
    GatewayStatusAddresses {
        /// `namespace/name` of the Gateway.
        gateway: String,
        /// How many `spec.addresses` entries the Gateway must have kept.
        #[serde(default)]
        spec_addresses_count: Option<usize>,
    },
    /// `status.attachedListenerSets` equals `count`.
    GatewayAttachedListenersets {
        /// `namespace/name` of the Gateway.
        gateway: String,
        /// Expected `attachedListenerSets`.
        count: i64,
    },
    /// The ListenerSet has the condition.
    ListenersetCondition {
        /// `namespace/name` of the ListenerSet.
        listenerset: String,
        /// The condition that must be present.
        condition: ExpectedCondition,
    },
    /// The ListenerSet's listener has these conditions.
    ListenersetListenerConditions {
        /// `namespace/name` of the ListenerSet.
        listenerset: String,
        /// Listener name.
        listener: String,
        /// Conditions that must all be present.
        conditions: Vec<ExpectedCondition>,
    },
    /// The ListenerSet's listeners are exactly these.
    ListenersetListeners {
        /// `namespace/name` of the ListenerSet.
        listenerset: String,
        /// The expected listeners, exactly this many.
        listeners: Vec<ExpectedListener>,
    },
    /// Routes accepted by the ListenerSet, whose listeners are healthy.
    ListenersetRoutesAccepted {
        /// `namespace/name` of the ListenerSet.
        listenerset: String,
        /// Kind of the route(s) (default `HTTPRoute`).
        #[serde(default = "http_route")]
        route_kind: String,
        /// `namespace/name` of every route that must be accepted.
        #[serde(default)]
        routes: Vec<String>,
    },
}

/// One traffic case. `request`, `expect` and `distribution` are typed by the runner.
#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    /// 1-based, stable.
    pub id: u32,
    /// Phase number, present only when the file has phases.
    #[serde(default)]
    pub phase: Option<u32>,
    /// Generated summary.
    #[serde(default)]
    pub name: String,
    /// Case type; absent means `http`.
    #[serde(rename = "type", default = "http_type")]
    pub type_: String,
    /// `namespace/name` of the Gateway to connect to.
    #[serde(default)]
    pub gateway: Option<String>,
    /// Listener port as written in the Gateway spec.
    #[serde(default)]
    pub port: Option<u16>,
    /// The request block (shape depends on `type_`).
    #[serde(default)]
    pub request: Value,
    /// The expectation block (shape depends on `type_`).
    #[serde(default)]
    pub expect: Value,
    /// The distribution block of the batch case types.
    #[serde(default)]
    pub distribution: Value,
    /// Mesh cases: the client pod (`namespace`, `pod_selector`).
    #[serde(default)]
    pub client: Value,
}

/// `request` of `http` and the HTTP batch case types.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HttpRequest {
    /// `http` or `https`.
    #[serde(default = "http_scheme")]
    pub scheme: String,
    /// `HTTP/1.1`, `HTTP/2` or `h2c-prior-knowledge`.
    #[serde(default)]
    pub protocol: Option<String>,
    /// HTTPS only: the TLS server name.
    #[serde(default)]
    pub sni: Option<String>,
    /// HTTPS only: the only trusted root (`{secret}` or `{configmap, key}`; see `tls`).
    #[serde(default)]
    pub trust: Option<Value>,
    /// HTTPS only: `{secret: ns/name}` to present when the server asks.
    #[serde(default)]
    pub client_cert: Option<Value>,
    /// Request method.
    #[serde(default = "get")]
    pub method: String,
    /// Host header; absent means derived from the URL.
    #[serde(default)]
    pub host: Option<String>,
    /// Request target, sent as is.
    #[serde(default = "slash")]
    pub path: String,
    /// Extra request headers, one line each.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// `Name:value` pairs for `X-Echo-Set-Header`.
    #[serde(default)]
    pub echo_set_response_headers: BTreeMap<String, String>,
    /// `false` means do not follow 3xx.
    #[serde(default)]
    pub follow_redirects: Option<bool>,
}

/// `expect` of `http` and the HTTP batch case types.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct HttpExpect {
    /// `eventually` (default), `consistent-failure` or `connection-error`.
    #[serde(default)]
    pub mode: Option<String>,
    /// Accepted status codes.
    #[serde(default)]
    pub status: Vec<u16>,
    /// `consistent-failure`: codes that fail the case at once (default 200).
    #[serde(default)]
    pub status_not: Vec<u16>,
    /// Prefix of the answering pod name; `''` means any.
    #[serde(default)]
    pub backend: Option<String>,
    /// Namespace of the echo answer; `''` means no echo answer.
    #[serde(default)]
    pub namespace: Option<String>,
    /// What the backend must have received.
    #[serde(default)]
    pub backend_request: Option<BackendRequestExpect>,
    /// Response headers and their joined values.
    #[serde(default)]
    pub response_headers: BTreeMap<String, String>,
    /// Response headers whose joined value must be one of the listed strings.
    #[serde(default)]
    pub response_headers_one_of: BTreeMap<String, Vec<String>>,
    /// Remove all spaces before comparing response header values.
    #[serde(default)]
    pub ignore_whitespace_in_response_headers: bool,
    /// Headers that must not be in the reply.
    #[serde(default)]
    pub response_absent_headers: Vec<String>,
    /// Checked only for 3xx answers.
    #[serde(default)]
    pub redirect: Option<RedirectExpect>,
    /// Mirror backends that must log a copy of the request.
    #[serde(default)]
    pub mirrored_to: Vec<MirrorRef>,
    /// TLS only: the server must ask for a client certificate.
    #[serde(default)]
    pub client_cert_requested: Option<bool>,
}

/// `expect.backend_request`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct BackendRequestExpect {
    /// Equals the echo `method`.
    #[serde(default)]
    pub method: Option<String>,
    /// Equals the echo `path` (path and query).
    #[serde(default)]
    pub path: Option<String>,
    /// Equals the echo `host`.
    #[serde(default)]
    pub host: Option<String>,
    /// Header name to values joined with `,`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Headers that must not reach the backend.
    #[serde(default)]
    pub absent_headers: Vec<String>,
    /// TLS backends: the SNI the gateway sent.
    #[serde(default)]
    pub sni: Option<String>,
    /// TLS backends: the client certificate the gateway presented.
    #[serde(default)]
    pub client_cert: Option<Value>,
    /// The DER of `client_cert`'s `tls.crt` leaf, filled in from the generated Secrets
    /// before comparing (see [`crate::traffic`]).
    #[serde(skip)]
    pub client_cert_der: Option<Vec<u8>>,
}

/// `expect.redirect`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RedirectExpect {
    /// Scheme of `Location`.
    pub scheme: String,
    /// Host of `Location`, when given.
    #[serde(default)]
    pub host: Option<String>,
    /// Accepted ports of `Location`; `''` means no port.
    #[serde(default)]
    pub port_one_of: Vec<String>,
    /// Path of `Location` (query ignored).
    #[serde(default)]
    pub path: Option<String>,
}

/// A backend deployment named by `mirrored_to` or a mirror distribution.
#[derive(Debug, Clone, Deserialize)]
pub struct MirrorRef {
    /// Deployment name.
    pub backend: String,
    /// Deployment namespace.
    pub namespace: String,
}

impl CaseFile {
    /// Reads and parses one case file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_yaml_ng::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// Phase numbers in order; a file without phases has the single phase 1.
    pub fn phase_numbers(&self) -> Vec<u32> {
        if self.phases.is_empty() {
            vec![1]
        } else {
            self.phases.iter().map(|p| p.phase).collect()
        }
    }
}

impl HttpRequest {
    /// Converts a case's `request` block.
    pub fn from_value(value: &Value) -> anyhow::Result<Self> {
        serde_json::from_value(value.clone()).context("request block")
    }
}

impl HttpExpect {
    /// Converts a case's `expect` block.
    pub fn from_value(value: &Value) -> anyhow::Result<Self> {
        serde_json::from_value(value.clone()).context("expect block")
    }
}

/// Splits `namespace/name`; a bare `name` is cluster-scoped (empty namespace).
pub fn split_name(full: &str) -> (&str, &str) {
    full.split_once('/').unwrap_or(("", full))
}

fn http_route() -> String {
    "HTTPRoute".to_owned()
}

fn backend_tls_policy() -> String {
    "BackendTLSPolicy".to_owned()
}

fn http_type() -> String {
    "http".to_owned()
}

fn http_scheme() -> String {
    "http".to_owned()
}

fn get() -> String {
    "GET".to_owned()
}

fn slash() -> String {
    "/".to_owned()
}

fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_entries_parse_with_phase_and_defaults() {
        let yaml = r#"
name: T
base_manifests: gateway
status:
- phase: 2
  check: gateway-routes-accepted
  gateway: ns/gw
  routes: [ns/r]
- check: route-condition
  route: ns/r
  parent: ns/gw
  condition: {type: ResolvedRefs, status: 'True', reason: ResolvedRefs}
cases:
- id: 1
  request: {path: /x}
  expect: {status: [200]}
"#;
        let file: CaseFile = serde_yaml_ng::from_str(yaml).expect("valid case file");
        assert_eq!(file.status[0].phase, Some(2));
        match &file.status[0].check {
            StatusCheck::GatewayRoutesAccepted {
                route_kind,
                check_listeners,
                ..
            } => {
                assert_eq!(route_kind, "HTTPRoute");
                assert!(check_listeners);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(file.cases[0].type_, "http");
        let request = HttpRequest::from_value(&file.cases[0].request).expect("request");
        assert_eq!(
            (request.method.as_str(), request.path.as_str()),
            ("GET", "/x")
        );
        assert_eq!(file.phase_numbers(), vec![1]);
    }

    #[test]
    fn bare_names_are_cluster_scoped() {
        assert_eq!(split_name("ns/a"), ("ns", "a"));
        assert_eq!(split_name("a"), ("", "a"));
    }
}
