//! ListenerSet (GEP-1713): listeners that other namespaces add to a Gateway.
//!
//! A ListenerSet attaches to the Gateway in its `parentRef` when the Gateway's
//! `allowedListeners` admits its namespace (the default admits none). Its listeners are
//! served on the Gateway's addresses after the Gateway's own listeners: when two listeners
//! clash (same port and hostname, or one port with incompatible protocols), "the Gateway's
//! own listeners win; then ListenerSets ordered by creation time, then namespace/name", and
//! the loser is marked `Conflicted` and not served. A ListenerSet with no usable listener is
//! `Accepted=False ListenersNotValid`. Routes reach ListenerSet listeners only through a
//! parentRef of kind ListenerSet.

use model::gw::gateways::{
    Gateway, GatewayAllowedListenersNamespacesFrom as From, GatewayListeners,
};
use model::gw::listenersets::ListenerSet;
use model::k8s::{LabelSelector, LabelSelectorRequirement};
use model::status::{Condition, ConditionType, ListenerStatus, Reason, ResourceStatus};
use model::{GATEWAY_GROUP, Kind, ObjectName, ResourceKey, Snapshot};

use crate::gateways::{self, ListenerState, Verdict};

/// A ListenerSet attached (or trying to attach) to one of our Gateways.
#[derive(Debug)]
pub(crate) struct ListenerSetState {
    pub name: ObjectName,
    generation: i64,
    accepted: Verdict,
    pub listeners: Vec<ListenerState>,
}

/// The prefix that marks a ListenerSet listener in route-map keys; `/` cannot appear in a
/// listener name, so the keys never collide with a Gateway's listeners.
pub(crate) const KEY_PREFIX: &str = "listenerset/";

/// The ListenerSets whose parentRef is `gateway`, oldest first, resolved against it.
/// `claimed` holds the Gateway's own listeners (port, protocol, hostname), which win every
/// conflict.
pub(crate) fn resolve(
    snapshot: &Snapshot,
    gateway_name: &ObjectName,
    gateway: &Gateway,
    own: &[ListenerState],
) -> Vec<ListenerSetState> {
    let mut sets: Vec<_> = snapshot
        .listener_sets
        .iter()
        .filter(|(name, set)| parent_of(name, set) == Some(gateway_name.clone()))
        .collect();
    sets.sort_by(|(a_name, a), (b_name, b)| {
        crate::oldest_first((&a.metadata, a_name), (&b.metadata, b_name))
    });
    let mut claimed: Vec<Claim> = own.iter().map(Claim::of).collect();
    sets.into_iter()
        .map(|(name, set)| {
            let listeners: Vec<GatewayListeners> = serde_json::to_value(&set.spec.listeners)
                .and_then(serde_json::from_value)
                .unwrap_or_default();
            let mut listeners: Vec<_> = listeners
                .iter()
                .map(|l| gateways::listener(snapshot, name, "ListenerSet", l))
                .collect();
            let allowed = admits(snapshot, gateway_name, gateway, &name.namespace);
            if allowed {
                for listener in &mut listeners {
                    if let Some(conflict) = claimed.iter().find_map(|c| c.conflict(listener)) {
                        listener.set_conflict(conflict);
                    } else {
                        claimed.push(Claim::of(listener));
                    }
                }
            }
            let accepted = if !allowed {
                Err((
                    Reason::NotAllowed,
                    format!(
                        "Gateway {gateway_name} does not allow ListenerSets from namespace {}",
                        name.namespace
                    ),
                ))
            } else if listeners.iter().any(ListenerState::is_serving) {
                Ok(())
            } else {
                Err((
                    Reason::ListenersNotValid,
                    "no listener of this ListenerSet is valid".into(),
                ))
            };
            ListenerSetState {
                name: name.clone(),
                generation: set.metadata.generation.unwrap_or(1),
                accepted,
                listeners,
            }
        })
        .collect()
}

/// The Gateway a ListenerSet names, with the API defaults applied.
fn parent_of(name: &ObjectName, set: &ListenerSet) -> Option<ObjectName> {
    let parent = &set.spec.parent_ref;
    let group = parent.group.as_deref().unwrap_or(GATEWAY_GROUP);
    let kind = parent.kind.as_deref().unwrap_or("Gateway");
    (group == GATEWAY_GROUP && kind == "Gateway").then(|| {
        ObjectName::new(
            parent.namespace.as_deref().unwrap_or(&name.namespace),
            &parent.name,
        )
    })
}

/// `spec.allowedListeners.namespaces` of the Gateway: None (the default), Same, All, or
/// Selector.
fn admits(
    snapshot: &Snapshot,
    gateway_name: &ObjectName,
    gateway: &Gateway,
    namespace: &str,
) -> bool {
    let namespaces = gateway
        .spec
        .allowed_listeners
        .as_ref()
        .and_then(|a| a.namespaces.as_ref());
    match namespaces.and_then(|n| n.from.clone()) {
        None | Some(From::None) => false,
        Some(From::Same) => *gateway_name.namespace == *namespace,
        Some(From::All) => true,
        Some(From::Selector) => {
            let Some(selector) = namespaces.and_then(|n| n.selector.as_ref()) else {
                return false;
            };
            let selector = LabelSelector {
                match_labels: selector.match_labels.clone(),
                match_expressions: selector.match_expressions.as_ref().map(|exprs| {
                    exprs
                        .iter()
                        .map(|e| LabelSelectorRequirement {
                            key: e.key.clone(),
                            operator: e.operator.clone(),
                            values: e.values.clone(),
                        })
                        .collect()
                }),
            };
            crate::backends::selector_matches(
                &selector,
                &crate::attach::namespace_labels(snapshot, namespace),
            )
        }
    }
}

/// A listener that holds its port (and hostname) on the Gateway.
struct Claim {
    port: u16,
    protocol: String,
    hostname: Option<ir::HostnameMatch>,
}

impl Claim {
    fn of(listener: &ListenerState) -> Self {
        Self {
            port: listener.port,
            protocol: listener.protocol.clone(),
            hostname: listener.hostname.clone(),
        }
    }

    /// Why `listener` cannot have its port, if it cannot.
    fn conflict(&self, listener: &ListenerState) -> Option<(Reason, String)> {
        if self.port != listener.port {
            return None;
        }
        if !gateways::compatible(&self.protocol, &listener.protocol) {
            return Some((
                Reason::ProtocolConflict,
                format!(
                    "port {} is already used with protocol {}",
                    self.port, self.protocol
                ),
            ));
        }
        (self.hostname == listener.hostname && self.protocol == listener.protocol).then(|| {
            (
                Reason::HostnameConflict,
                format!(
                    "port {} and this hostname are already used by another listener",
                    self.port
                ),
            )
        })
    }
}

// === impl ListenerSetState ===

impl ListenerSetState {
    /// Whether the ListenerSet counts as attached to its Gateway.
    pub(crate) fn is_accepted(&self) -> bool {
        self.accepted.is_ok()
    }

    /// The ListenerSet's status.
    pub(crate) fn status(&self, gateway_programmed: bool) -> (ResourceKey, ResourceStatus) {
        let generation = self.generation;
        let (accepted, programmed) = match &self.accepted {
            Ok(()) => (
                Condition::new(
                    ConditionType::Accepted,
                    true,
                    Reason::Accepted,
                    "accepted",
                    generation,
                ),
                if gateway_programmed {
                    Condition::new(
                        ConditionType::Programmed,
                        true,
                        Reason::Programmed,
                        "programmed",
                        generation,
                    )
                } else {
                    Condition::new(
                        ConditionType::Programmed,
                        false,
                        Reason::Invalid,
                        "the parent Gateway is not programmed",
                        generation,
                    )
                },
            ),
            Err((reason, message)) => (
                Condition::new(ConditionType::Accepted, false, *reason, message, generation),
                Condition::new(
                    ConditionType::Programmed,
                    false,
                    *reason,
                    message,
                    generation,
                ),
            ),
        };
        let serving = gateway_programmed && self.is_accepted();
        let listeners: Vec<ListenerStatus> = self
            .listeners
            .iter()
            .map(|l| l.status(generation, serving))
            .collect();
        (
            ResourceKey::new(Kind::ListenerSet, &self.name.namespace, &self.name.name),
            ResourceStatus::ListenerSet {
                conditions: vec![accepted, programmed],
                listeners,
            },
        )
    }
}
