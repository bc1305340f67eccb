//! The status vocabulary: condition types, reasons and the status shapes of each kind.
//!
//! `translate` produces a [`StatusSet`]; the binary serves it (`/status`, `check`) and the
//! Kubernetes source will write it through the status subresource. Serialization follows the
//! Kubernetes field names exactly, so the JSON is what `kubectl get -o json` would show.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::ResourceKey;

/// Condition types used by the Gateway API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum ConditionType {
    /// The resource is valid and accepted by the controller.
    Accepted,
    /// The configuration has been sent to the data plane.
    Programmed,
    /// Every reference resolved.
    ResolvedRefs,
    /// A listener conflicts with another.
    Conflicted,
    /// The GatewayClass's CRD version is supported.
    SupportedVersion,
    /// Some rules of a route were dropped.
    PartiallyInvalid,
    /// A Gateway's frontend client validation lets clients without a valid certificate in.
    InsecureFrontendValidationMode,
}

/// Condition reasons, as the Gateway API spells them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Reason {
    /// Positive reason of `Accepted`.
    Accepted,
    /// Positive reason of `Programmed`.
    Programmed,
    /// Positive reason of `ResolvedRefs`.
    ResolvedRefs,
    /// Positive reason of `SupportedVersion`.
    SupportedVersion,
    /// Negative reason of `Conflicted`.
    NoConflicts,
    /// A GatewayClass's parametersRef is invalid.
    InvalidParameters,
    /// The Gateway's class is not accepted or does not exist.
    NoResources,
    /// Some listeners are invalid.
    ListenersNotValid,
    /// Generic invalid configuration.
    Invalid,
    /// An address type is not supported.
    UnsupportedAddress,
    /// An address cannot be used (for example it cannot be bound).
    AddressNotUsable,
    /// No address could be assigned.
    AddressNotAssigned,
    /// The listener's protocol is not supported.
    UnsupportedProtocol,
    /// The port cannot be used.
    PortUnavailable,
    /// Two listeners share a port and hostname.
    HostnameConflict,
    /// Two listeners share a port with incompatible protocols.
    ProtocolConflict,
    /// A listener's allowedRoutes.kinds names an unsupported kind.
    InvalidRouteKinds,
    /// A certificate reference is invalid.
    InvalidCertificateRef,
    /// A cross-namespace reference lacks a ReferenceGrant.
    RefNotPermitted,
    /// No listener allows the route.
    NotAllowedByListeners,
    /// No listener hostname intersects the route's hostnames.
    NoMatchingListenerHostname,
    /// The parentRef names no matching parent (or listener/port).
    NoMatchingParent,
    /// A field has a value this implementation does not support.
    UnsupportedValue,
    /// Filters in a rule cannot be combined.
    IncompatibleFilters,
    /// A backendRef names a kind that is not supported.
    InvalidKind,
    /// A backendRef names an object that does not exist.
    BackendNotFound,
    /// Waiting for the controller.
    Pending,
    /// The parent Gateway does not allow this ListenerSet (`allowedListeners`).
    NotAllowed,
    /// A client-validation CA reference does not resolve to a usable CA certificate.
    InvalidCACertificateRef,
    /// A client-validation CA reference names an unsupported kind.
    InvalidCACertificateKind,
    /// A listener has no valid CA certificate for client validation.
    NoValidCACertificate,
    /// Positive reason of `InsecureFrontendValidationMode`.
    ConfigurationChanged,
    /// An EgressNetwork's networks overlap the cluster networks (Linkerd's reason).
    EgressReasonNetworkOverlap,
    /// A route lost to a route of another kind on the same EgressNetwork port (Linkerd's
    /// reason).
    RouteReasonConflicted,
    /// A policy lost conflict resolution to an older one with the same target.
    Conflicted,
    /// A policy's target does not exist (GEP-713).
    TargetNotFound,
    /// A Gateway's `spec.tls.backend.clientCertificateRef` does not resolve to a usable
    /// certificate and key.
    InvalidClientCertificateRef,
}

/// `True`, `False` or `Unknown`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// It does not.
    False,
    /// Not known yet.
    Unknown,
}

/// A `metav1.Condition`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Type.
    #[serde(rename = "type")]
    pub kind: ConditionType,
    /// Status.
    pub status: ConditionStatus,
    /// Reason.
    pub reason: Reason,
    /// Human-readable detail (most are fixed texts, which are not copied).
    pub message: Cow<'static, str>,
    /// The generation of the object this condition was computed from.
    pub observed_generation: i64,
    /// RFC 3339 time the status last changed; filled in by whoever publishes the status
    /// (translate has no clock).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Arc<str>>,
}

/// `status.addresses[]` of a Gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GatewayAddress {
    /// `IPAddress` or `Hostname`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The address.
    pub value: String,
}

/// A route group and kind (`supportedKinds`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RouteGroupKind {
    /// API group.
    pub group: String,
    /// Kind.
    pub kind: String,
}

/// `status.listeners[]` of a Gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    /// Listener name.
    pub name: String,
    /// Kinds of routes this listener accepts.
    pub supported_kinds: Vec<RouteGroupKind>,
    /// Number of accepted routes attached.
    pub attached_routes: i32,
    /// Conditions.
    pub conditions: Vec<Condition>,
}

/// A route's parentRef as echoed in status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    /// Group, written out even when it is the default.
    pub group: String,
    /// Kind, written out even when it is the default.
    pub kind: String,
    /// Namespace, when the parentRef set it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// Section name, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
    /// Port, when set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

/// `status.parents[]` of a route.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    /// The parentRef this entry is about.
    pub parent_ref: ParentReference,
    /// Our controller name.
    pub controller_name: String,
    /// Conditions.
    pub conditions: Vec<Condition>,
}

/// `status.ancestors[]` of a policy: how it applies on behalf of one ancestor (for a
/// BackendTLSPolicy, a Gateway whose routes reach the targeted Service).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAncestorStatus {
    /// The ancestor.
    pub ancestor_ref: ParentReference,
    /// Our controller name.
    pub controller_name: String,
    /// Conditions.
    pub conditions: Vec<Condition>,
}

/// The status of one object.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ResourceStatus {
    /// GatewayClass status.
    GatewayClass {
        /// Conditions.
        conditions: Vec<Condition>,
    },
    /// Gateway status.
    #[serde(rename_all = "camelCase")]
    Gateway {
        /// Assigned addresses.
        addresses: Vec<GatewayAddress>,
        /// Conditions.
        conditions: Vec<Condition>,
        /// Per-listener status.
        listeners: Vec<ListenerStatus>,
        /// Number of ListenerSets attached to the Gateway.
        attached_listener_sets: i32,
    },
    /// ListenerSet status.
    ListenerSet {
        /// Conditions.
        conditions: Vec<Condition>,
        /// Per-listener status.
        listeners: Vec<ListenerStatus>,
    },
    /// Status of kinds that only have conditions (EgressNetwork).
    Conditions {
        /// Conditions.
        conditions: Vec<Condition>,
    },
    /// Route status.
    Route {
        /// One entry per parentRef handled by this controller.
        parents: Vec<RouteParentStatus>,
    },
    /// Policy status.
    Policy {
        /// One entry per ancestor the policy is relevant to.
        ancestors: Vec<PolicyAncestorStatus>,
    },
}

/// Status of every resource that translate has an opinion about.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusSet(pub BTreeMap<ResourceKey, ResourceStatus>);

/// A condition message: a fixed text is kept as a reference, anything else is owned.
pub trait Message {
    /// The message as a condition holds it.
    fn into_message(self) -> Cow<'static, str>;
}

impl Message for &'static str {
    fn into_message(self) -> Cow<'static, str> {
        Cow::Borrowed(self)
    }
}

impl Message for String {
    fn into_message(self) -> Cow<'static, str> {
        Cow::Owned(self)
    }
}

impl Message for &String {
    fn into_message(self) -> Cow<'static, str> {
        Cow::Owned(self.clone())
    }
}

// === impl Condition ===

impl Condition {
    /// Builds a condition.
    pub fn new(
        kind: ConditionType,
        holds: bool,
        reason: Reason,
        message: impl Message,
        observed_generation: i64,
    ) -> Self {
        Self {
            kind,
            status: if holds {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            },
            reason,
            message: message.into_message(),
            observed_generation,
            last_transition_time: None,
        }
    }

    /// Whether the status is `True`.
    pub fn holds(&self) -> bool {
        self.status == ConditionStatus::True
    }
}

// === impl ResourceStatus ===

impl ResourceStatus {
    /// Every condition of the resource (for routes, of every parent; for Gateways, the
    /// Gateway's own and every listener's).
    pub fn conditions(&self) -> Vec<&Condition> {
        match self {
            Self::GatewayClass { conditions } | Self::Conditions { conditions } => {
                conditions.iter().collect()
            }
            Self::Gateway {
                conditions,
                listeners,
                ..
            }
            | Self::ListenerSet {
                conditions,
                listeners,
            } => conditions
                .iter()
                .chain(listeners.iter().flat_map(|l| l.conditions.iter()))
                .collect(),
            Self::Route { parents } => parents.iter().flat_map(|p| p.conditions.iter()).collect(),
            Self::Policy { ancestors } => {
                ancestors.iter().flat_map(|a| a.conditions.iter()).collect()
            }
        }
    }

    /// Mutable access to every condition, for stamping transition times.
    pub fn conditions_mut(&mut self) -> Vec<&mut Condition> {
        match self {
            Self::GatewayClass { conditions } | Self::Conditions { conditions } => {
                conditions.iter_mut().collect()
            }
            Self::Gateway {
                conditions,
                listeners,
                ..
            }
            | Self::ListenerSet {
                conditions,
                listeners,
            } => conditions
                .iter_mut()
                .chain(listeners.iter_mut().flat_map(|l| l.conditions.iter_mut()))
                .collect(),
            Self::Route { parents } => parents
                .iter_mut()
                .flat_map(|p| p.conditions.iter_mut())
                .collect(),
            Self::Policy { ancestors } => ancestors
                .iter_mut()
                .flat_map(|a| a.conditions.iter_mut())
                .collect(),
        }
    }
}
