//! Attaching routes to Gateway listeners through `parentRefs`, shared by every route kind.
//!
//! For each parentRef the spec asks, in order: does a parent exist that this reference
//! selects (`sectionName`, `port`)? Does one of those listeners allow the route
//! (`allowedRoutes.namespaces` and `.kinds`)? Do the route's hostnames intersect the
//! listener's? The first question answered "no" decides the `Accepted=False` reason:
//! `NoMatchingParent`, `NotAllowedByListeners`, `NoMatchingListenerHostname`.

use std::collections::BTreeMap;

use ir::HostnameMatch;
use model::status::{Condition, ConditionType, ParentReference, Reason, RouteParentStatus};
use model::{GATEWAY_GROUP, ObjectName, Snapshot};

use crate::Options;

use crate::gateways::{AllowedNamespaces, GatewayState};

/// A parentRef in kind-independent form (every route kind's generated type differs),
/// borrowed from the route.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ParentRef<'a> {
    pub group: &'a str,
    pub kind: &'a str,
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub section_name: Option<&'a str>,
    pub port: Option<i32>,
}

/// What went wrong while compiling a route's rules, for its status.
#[derive(Default)]
pub(crate) struct RuleProblems {
    /// The first unresolvable reference (ResolvedRefs=False).
    pub unresolved: Option<(Reason, String)>,
    /// The first unsupported value (that rule is answered with 500).
    pub unsupported: Option<(Reason, String)>,
}

impl RuleProblems {
    pub(crate) fn unresolved(&mut self, reason: Reason, message: String) {
        self.unresolved.get_or_insert((reason, message));
    }

    pub(crate) fn unsupported(&mut self, message: String) {
        self.unsupported
            .get_or_insert((Reason::UnsupportedValue, message));
    }
}

/// The route being attached.
pub(crate) struct RouteInfo<'a> {
    pub kind: &'a str,
    pub name: &'a ObjectName,
    pub hostnames: &'a [HostnameMatch],
}

/// A listener a route attached to, with the hostnames it serves there (`None` = any host
/// the listener accepts).
#[derive(Clone, Debug)]
pub(crate) struct Attachment {
    pub gateway: ObjectName,
    pub listener: String,
    pub hostnames: Vec<Option<HostnameMatch>>,
}

/// The outcome for one parentRef.
pub(crate) enum ParentOutcome {
    /// Not a Gateway of ours: no status entry.
    NotOurs,
    /// Attached to these listeners.
    Attached(Vec<Attachment>),
    /// Rejected with a reason.
    Rejected(Reason, String),
}

// === impl ParentRef ===

impl<'a> ParentRef<'a> {
    /// Builds a parentRef, applying the API defaults (group gateway.networking.k8s.io, kind
    /// Gateway).
    pub(crate) fn new(
        group: Option<&'a str>,
        kind: Option<&'a str>,
        namespace: Option<&'a str>,
        name: &'a str,
        section_name: Option<&'a str>,
        port: Option<i32>,
    ) -> Self {
        Self {
            group: group.unwrap_or(GATEWAY_GROUP),
            kind: kind.unwrap_or("Gateway"),
            namespace,
            name,
            section_name,
            port,
        }
    }
}

/// Attaches a route through all its parentRefs and returns its `status.parents`. Every
/// listener attachment is offered to `attached`, which adds the route to that listener's
/// config, or refuses it with a message (a listener already claimed by a route of another
/// kind); a parentRef whose attachments are all refused is not accepted. Parents that are
/// not Gateways of ours get no entry.
#[allow(clippy::too_many_arguments)]
pub(crate) fn parent_statuses(
    snapshot: &Snapshot,
    gateways: &mut BTreeMap<ObjectName, GatewayState>,
    options: &Options,
    route: &RouteInfo<'_>,
    parents: &[ParentRef<'_>],
    generation: i64,
    problems: &RuleProblems,
    mut attached: impl FnMut(&Attachment) -> Result<(), String>,
) -> Vec<RouteParentStatus> {
    let mut statuses = Vec::with_capacity(parents.len());
    for parent in parents {
        let accepted = match attach(snapshot, gateways, options, route, parent) {
            ParentOutcome::NotOurs => continue,
            ParentOutcome::Rejected(reason, message) => {
                Condition::new(ConditionType::Accepted, false, reason, message, generation)
            }
            ParentOutcome::Attached(attachments) => {
                let mut refused = Vec::new();
                let kept: Vec<_> = attachments
                    .into_iter()
                    .filter(|a| attached(a).map_err(|m| refused.push(m)).is_ok())
                    .collect();
                count_attachments(gateways, &kept);
                if kept.is_empty() {
                    Condition::new(
                        ConditionType::Accepted,
                        false,
                        Reason::NotAllowedByListeners,
                        refused.join("; "),
                        generation,
                    )
                } else {
                    Condition::new(
                        ConditionType::Accepted,
                        true,
                        Reason::Accepted,
                        "accepted",
                        generation,
                    )
                }
            }
        };
        let resolved = match &problems.unresolved {
            Some((reason, message)) => Condition::new(
                ConditionType::ResolvedRefs,
                false,
                *reason,
                message,
                generation,
            ),
            None => Condition::new(
                ConditionType::ResolvedRefs,
                true,
                Reason::ResolvedRefs,
                "resolved",
                generation,
            ),
        };
        let mut conditions = vec![accepted, resolved];
        if let Some((reason, message)) = &problems.unsupported {
            conditions.push(Condition::new(
                ConditionType::PartiallyInvalid,
                true,
                *reason,
                message,
                generation,
            ));
        }
        statuses.push(RouteParentStatus {
            parent_ref: status_ref(parent),
            controller_name: options.controller_name.clone(),
            conditions,
        });
    }
    statuses
}

/// Resolves one parentRef of a route.
fn attach(
    snapshot: &Snapshot,
    gateways: &BTreeMap<ObjectName, GatewayState>,
    options: &Options,
    route: &RouteInfo<'_>,
    parent: &ParentRef<'_>,
) -> ParentOutcome {
    if matches!(parent.group, "" | "core") && parent.kind == "Service" {
        return crate::mesh::attach(snapshot, route, parent);
    }
    if crate::egress::is_egress_parent(parent.group, parent.kind) {
        return crate::egress::attach(snapshot, options, route, parent);
    }
    if parent.group != GATEWAY_GROUP || !matches!(parent.kind, "Gateway" | "ListenerSet") {
        return ParentOutcome::NotOurs;
    }
    let namespace = parent.namespace.unwrap_or(&route.name.namespace);
    let name = ObjectName::new(namespace, parent.name);
    // The listeners this parent offers, the namespace their `Same` refers to, and the key
    // prefix of their route maps.
    let (listeners, owner_namespace, key) = if parent.kind == "ListenerSet" {
        let found = gateways
            .values()
            .flat_map(|g| g.listener_sets.iter())
            .find(|set| set.name == name);
        match found {
            None => return ParentOutcome::NotOurs,
            Some(set) if !set.is_accepted() => {
                return ParentOutcome::Rejected(
                    Reason::NotAllowedByListeners,
                    format!("ListenerSet {name} is not accepted by its Gateway"),
                );
            }
            Some(set) => (
                &set.listeners,
                name.namespace.clone(),
                crate::listener_sets::KEY_PREFIX,
            ),
        }
    } else {
        let Some(gateway) = gateways.get(&name) else {
            return ParentOutcome::NotOurs;
        };
        (&gateway.listeners, gateway.name.namespace.clone(), "")
    };
    let selected: Vec<_> = listeners
        .iter()
        .filter(|l| parent.section_name.is_none_or(|s| s == l.name))
        .filter(|l| parent.port.is_none_or(|p| i32::from(l.port) == p))
        .collect();
    if selected.is_empty() {
        return ParentOutcome::Rejected(
            Reason::NoMatchingParent,
            "no listener matches the parentRef's sectionName and port".into(),
        );
    }
    // "Listener or Route status does not impact successful attachment, i.e. the
    // AttachedRoutes field count MUST be set for Listeners with condition Accepted: false"
    // (ListenerStatus.attachedRoutes). Only listeners that serve get the routes in config.
    let allowed: Vec<_> = selected
        .iter()
        .filter(|l| l.supported_kinds.iter().any(|k| k.kind == route.kind))
        .filter(|l| {
            namespace_allowed(
                snapshot,
                &l.allowed,
                &owner_namespace,
                &route.name.namespace,
            )
        })
        .collect();
    if allowed.is_empty() {
        return ParentOutcome::Rejected(
            Reason::NotAllowedByListeners,
            format!(
                "no selected listener allows {} from namespace {}",
                route.kind, route.name.namespace
            ),
        );
    }
    let attachments: Vec<_> = allowed
        .iter()
        .filter_map(|l| {
            let hostnames = intersect(l.hostname.as_ref(), route.hostnames);
            (!hostnames.is_empty()).then(|| Attachment {
                gateway: name.clone(),
                listener: if key.is_empty() {
                    l.name.clone()
                } else {
                    format!("{key}{}", l.name)
                },
                hostnames,
            })
        })
        .collect();
    if attachments.is_empty() {
        return ParentOutcome::Rejected(
            Reason::NoMatchingListenerHostname,
            "no listener hostname intersects the route's hostnames".into(),
        );
    }
    ParentOutcome::Attached(attachments)
}

/// Counts attached routes on listeners: each route counts once per listener.
fn count_attachments(
    gateways: &mut BTreeMap<ObjectName, GatewayState>,
    attachments: &[Attachment],
) {
    for (index, attachment) in attachments.iter().enumerate() {
        let (owner, listener) = (&attachment.gateway, &attachment.listener);
        // A handful per parentRef: looking back is cheaper than a set.
        let counted = attachments[..index]
            .iter()
            .any(|a| &a.gateway == owner && &a.listener == listener);
        if counted {
            continue;
        }
        let listener_state = match listener.strip_prefix(crate::listener_sets::KEY_PREFIX) {
            Some(listener) => gateways
                .values_mut()
                .flat_map(|g| g.listener_sets.iter_mut())
                .find(|set| &set.name == owner)
                .and_then(|set| set.listeners.iter_mut().find(|l| l.name == listener)),
            None => gateways
                .get_mut(owner)
                .and_then(|g| g.listeners.iter_mut().find(|l| &l.name == listener)),
        };
        if let Some(state) = listener_state {
            state.attached_routes += 1;
        }
    }
}

/// The parentRef as status echoes it: group and kind written out.
pub(crate) fn status_ref(parent: &ParentRef<'_>) -> ParentReference {
    ParentReference {
        group: parent.group.to_string(),
        kind: parent.kind.to_string(),
        namespace: parent.namespace.map(str::to_string),
        name: parent.name.to_string(),
        section_name: parent.section_name.map(str::to_string),
        port: parent.port,
    }
}

/// The hostnames a route serves on a listener: "If both the Listener and HTTPRoute have
/// specified hostnames, any HTTPRoute hostnames that do not match the Listener hostname MUST
/// be ignored", and a route without hostnames takes the listener's.
pub(crate) fn intersect(
    listener: Option<&HostnameMatch>,
    route: &[HostnameMatch],
) -> Vec<Option<HostnameMatch>> {
    match (listener, route.is_empty()) {
        (_, true) => vec![None],
        (None, false) => route.iter().cloned().map(Some).collect(),
        (Some(listener), false) => route
            .iter()
            .filter_map(|h| h.intersect(listener))
            .map(Some)
            .collect(),
    }
}

fn namespace_allowed(
    snapshot: &Snapshot,
    allowed: &AllowedNamespaces,
    gateway_namespace: &str,
    route_namespace: &str,
) -> bool {
    match allowed {
        AllowedNamespaces::Same => gateway_namespace == route_namespace,
        AllowedNamespaces::All => true,
        AllowedNamespaces::Selector(selector) => crate::backends::selector_matches(
            selector,
            &namespace_labels(snapshot, route_namespace),
        ),
    }
}

/// A namespace's labels, with `kubernetes.io/metadata.name`, which the API server sets on
/// every namespace (standalone manifests may omit the Namespace object entirely).
pub(crate) fn namespace_labels(snapshot: &Snapshot, namespace: &str) -> BTreeMap<String, String> {
    let mut labels = snapshot
        .namespaces
        .get(namespace)
        .and_then(|ns| ns.metadata.labels.clone())
        .unwrap_or_default();
    labels
        .entry("kubernetes.io/metadata.name".to_string())
        .or_insert_with(|| namespace.to_string());
    labels
}
