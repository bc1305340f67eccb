//! Status checks: the README's status table, evaluated against `/status` snapshots.
//!
//! [`evaluate`] is pure: one snapshot in, a [`Verdict`] out. [`wait_for`] polls every 100 ms
//! until the check passes or its README timeout runs out (60 s, 180 s for Gateway and
//! ListenerSet conditions, 300 s for `namespaces-ready`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::Value;

mod entries;

use crate::case::{ExpectedCondition, StatusCheck, split_name};
use crate::manifests::{AddressPools, Manifests, ObjectKey, SKIP_READINESS_ANNOTATION};
use crate::status::{Condition, ListenerStatus, StatusDocument, expect_condition};
use entries::{
    all_listeners_healthy, current, find_parent, gateway_has_address, listeners_match,
    parent_conditions, route_accepted_by, summarize_listeners,
};
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// The outcome of one evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The check holds.
    Pass,
    /// The check holds only if it still holds one second later (an empty parent list).
    PassIfStable,
    /// Not (yet) true, with the precise reason.
    NotYet(String),
}

/// What the checks need besides the snapshot.
pub struct CheckContext<'a> {
    /// The manifests as currently written.
    pub manifests: &'a Manifests,
    /// The runner's static address pools.
    pub pools: &'a AddressPools,
    /// `metadata.generation` of objects before the current phase's actions.
    pub generations_before: &'a HashMap<ObjectKey, Option<i64>>,
}

/// Evaluates one check against one snapshot.
pub fn evaluate(check: &StatusCheck, doc: &StatusDocument, ctx: &CheckContext<'_>) -> Verdict {
    match verdict(check, doc, ctx) {
        Ok(verdict) => verdict,
        Err(reason) => Verdict::NotYet(reason),
    }
}

/// How long upstream waits for a check.
pub fn timeout(check: &StatusCheck) -> Duration {
    use StatusCheck::*;
    match check {
        NamespacesReady { .. } => Duration::from_secs(300),
        GatewayRoutesAccepted { .. }
        | GatewayCondition { .. }
        | GatewayListeners { .. }
        | ListenerConditions { .. }
        | GatewayAddress { .. }
        | GatewayStatusAddresses { .. }
        | ListenersetCondition { .. }
        | ListenersetListenerConditions { .. }
        | ListenersetListeners { .. }
        | ListenersetRoutesAccepted { .. } => Duration::from_secs(180),
        _ => Duration::from_secs(60),
    }
}

/// Whether a failure stops the test (upstream: all but `gateway-attached-listenersets`).
pub fn is_fatal(check: &StatusCheck) -> bool {
    !matches!(check, StatusCheck::GatewayAttachedListenersets { .. })
}

/// The objects whose generation `generation-changed` compares, to snapshot before a phase.
pub fn generation_key(check: &StatusCheck) -> Option<ObjectKey> {
    match check {
        StatusCheck::GenerationChanged { kind, name } => Some(ObjectKey::new(kind, name)),
        _ => None,
    }
}

/// Short description for messages: `gateway-condition ns/name`.
pub fn describe(check: &StatusCheck) -> String {
    use StatusCheck::*;
    let (name, subject): (&str, String) = match check {
        NamespacesReady { namespaces } => ("namespaces-ready", namespaces.join(",")),
        GatewayRoutesAccepted { gateway, .. } => ("gateway-routes-accepted", gateway.clone()),
        RouteCondition {
            route, condition, ..
        } => ("route-condition", format!("{route} {}", condition.type_)),
        RouteParents { route, .. } => ("route-parents", route.clone()),
        RouteNoAcceptedParents { route, .. } => ("route-no-accepted-parents", route.clone()),
        GatewayZeroRoutes { gateway } => ("gateway-zero-routes", gateway.clone()),
        GatewayCondition { gateway, condition } => (
            "gateway-condition",
            format!("{gateway} {}", condition.type_),
        ),
        GatewayAddress { gateway } => ("gateway-address", gateway.clone()),
        GatewayListeners { gateway, .. } => ("gateway-listeners", gateway.clone()),
        ListenerConditions { gateway, .. } => ("listener-conditions", gateway.clone()),
        PolicyCondition {
            policy, condition, ..
        } => ("policy-condition", format!("{policy} {}", condition.type_)),
        LatestObservedGeneration { kind, name } => {
            ("latest-observed-generation", format!("{kind} {name}"))
        }
        GenerationChanged { kind, name } => ("generation-changed", format!("{kind} {name}")),
        GatewayclassAccepted { gatewayclass, .. } => {
            ("gatewayclass-accepted", gatewayclass.clone())
        }
        GatewayStatusAddresses { gateway, .. } => ("gateway-status-addresses", gateway.clone()),
        GatewayAttachedListenersets { gateway, .. } => {
            ("gateway-attached-listenersets", gateway.clone())
        }
        ListenersetCondition {
            listenerset,
            condition,
        } => (
            "listenerset-condition",
            format!("{listenerset} {}", condition.type_),
        ),
        ListenersetListenerConditions { listenerset, .. } => {
            ("listenerset-listener-conditions", listenerset.clone())
        }
        ListenersetListeners { listenerset, .. } => ("listenerset-listeners", listenerset.clone()),
        ListenersetRoutesAccepted { listenerset, .. } => {
            ("listenerset-routes-accepted", listenerset.clone())
        }
    };
    format!("{name} {subject}")
}

/// Polls `/status` until the check passes; the error is the last reason it did not.
pub async fn wait_for(
    check: &StatusCheck,
    admin: SocketAddr,
    ctx: &CheckContext<'_>,
    timeout_scale: f64,
) -> Result<(), String> {
    let limit = timeout(check).mul_f64(timeout_scale);
    let started = Instant::now();
    let mut stable_since: Option<Instant> = None;
    let mut last_reason = String::from("never evaluated");
    while started.elapsed() < limit {
        let verdict = match StatusDocument::fetch(admin).await {
            Ok(doc) => evaluate(check, &doc, ctx),
            Err(error) => Verdict::NotYet(format!("{error:#}")),
        };
        match verdict {
            Verdict::Pass => return Ok(()),
            Verdict::PassIfStable => match stable_since {
                Some(since) if since.elapsed() >= Duration::from_secs(1) => return Ok(()),
                Some(_) => {}
                None => stable_since = Some(Instant::now()),
            },
            Verdict::NotYet(reason) => {
                stable_since = None;
                last_reason = reason;
            }
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    Err(format!(
        "{}: after {:.0?}: {last_reason}",
        describe(check),
        limit
    ))
}

fn verdict(
    check: &StatusCheck,
    doc: &StatusDocument,
    ctx: &CheckContext<'_>,
) -> Result<Verdict, String> {
    use StatusCheck::*;
    match check {
        NamespacesReady { namespaces } => namespaces_ready(namespaces, doc, ctx),
        GatewayRoutesAccepted {
            gateway,
            route_kind,
            routes,
            check_listeners,
        } => {
            let gw = doc.require("Gateway", gateway)?;
            gateway_has_address(gw)?;
            for route in routes {
                route_accepted_by(doc, route_kind, route, "Gateway", gateway)?;
            }
            if *check_listeners {
                all_listeners_healthy(gw, &gw.status.listeners)?;
            }
            Ok(Verdict::Pass)
        }
        RouteCondition {
            route_kind,
            route,
            parent,
            condition,
        } => {
            let object = current(doc.require(route_kind, route)?)?;
            let conditions = parent_conditions(object, parent);
            if conditions.is_empty() {
                return Err(format!(
                    "{route_kind} {route} has no status.parents entry for {parent}"
                ));
            }
            expect_condition(&conditions, condition).map(|()| Verdict::Pass)
        }
        RouteParents {
            route_kind,
            route,
            parents,
            namespace_required,
        } => {
            let object = current(doc.require(route_kind, route)?)?;
            for parent in &parents[..] {
                let entry = find_parent(
                    object,
                    route,
                    "Gateway",
                    &parent.gateway,
                    *namespace_required,
                )?;
                for condition in &parent.conditions {
                    expect_condition(&entry.conditions, condition)
                        .map_err(|e| format!("{route} parent {}: {e}", parent.gateway))?;
                }
            }
            Ok(Verdict::Pass)
        }
        RouteNoAcceptedParents { route_kind, route } => {
            let parents = &doc.require(route_kind, route)?.status.parents;
            let refused = ExpectedCondition {
                type_: "Accepted".into(),
                status: "False".into(),
                reason: "any".into(),
            };
            match &parents[..] {
                [] => Ok(Verdict::PassIfStable),
                [only] if only.conditions.iter().any(|c| refused.matches(c)) => Ok(Verdict::Pass),
                _ => Err(format!(
                    "{route} has {} parent entries, not one with Accepted=False",
                    parents.len()
                )),
            }
        }
        GatewayZeroRoutes { gateway } => {
            let listeners = &doc.require("Gateway", gateway)?.status.listeners;
            match &listeners[..] {
                [] => Ok(Verdict::Pass),
                [only] if only.attached_routes == 0 => Ok(Verdict::Pass),
                _ => Err(format!(
                    "{gateway} listeners: {}",
                    summarize_listeners(listeners)
                )),
            }
        }
        GatewayCondition { gateway, condition } => {
            let gw = current(doc.require("Gateway", gateway)?)?;
            expect_condition(&gw.status.conditions, condition).map(|()| Verdict::Pass)
        }
        GatewayAddress { gateway } => {
            gateway_has_address(doc.require("Gateway", gateway)?).map(|()| Verdict::Pass)
        }
        GatewayListeners { gateway, listeners } => {
            let gw = current(doc.require("Gateway", gateway)?)?;
            listeners_match(listeners, &gw.status.listeners).map(|()| Verdict::Pass)
        }
        ListenerConditions {
            gateway,
            listener,
            conditions,
        } => {
            let gw = current(doc.require("Gateway", gateway)?)?;
            let selected: Vec<&ListenerStatus> = match listener {
                Some(name) => vec![
                    gw.listener(name)
                        .ok_or_else(|| format!("{gateway} has no listener {name}"))?,
                ],
                None => gw.status.listeners.iter().collect(),
            };
            if selected.is_empty() {
                return Err(format!("{gateway} has no listeners in status"));
            }
            for l in selected {
                for condition in conditions {
                    expect_condition(&l.conditions, condition)
                        .map_err(|e| format!("listener {}: {e}", l.name))?;
                }
            }
            Ok(Verdict::Pass)
        }
        PolicyCondition {
            policy_kind,
            policy,
            ancestor,
            condition,
        } => {
            let object = current(doc.require(policy_kind, policy)?)?;
            let (namespace, name) = split_name(ancestor);
            let conditions: Vec<Condition> = object
                .status
                .ancestors
                .iter()
                .filter(|a| {
                    a.ancestor_ref.name == name
                        && a.ancestor_ref
                            .namespace
                            .as_deref()
                            .is_none_or(|n| n == namespace)
                })
                .flat_map(|a| a.conditions.iter().cloned())
                .collect();
            if conditions.is_empty() {
                return Err(format!(
                    "{policy} has no status.ancestors entry for {ancestor}"
                ));
            }
            expect_condition(&conditions, condition).map(|()| Verdict::Pass)
        }
        LatestObservedGeneration { kind, name } => {
            let object = current(doc.require(kind, name)?)?;
            if object.all_conditions().next().is_none() {
                return Err(format!("{kind} {name} has no conditions yet"));
            }
            Ok(Verdict::Pass)
        }
        GenerationChanged { kind, name } => {
            let now = doc.require(kind, name)?.metadata.generation;
            match ctx.generations_before.get(&ObjectKey::new(kind, name)) {
                Some(before) if *before != now => Ok(Verdict::Pass),
                Some(before) => Err(format!("metadata.generation still {before:?}")),
                None => Err("no generation recorded before the phase".to_owned()),
            }
        }
        GatewayclassAccepted {
            gatewayclass,
            condition,
        } => {
            let class = current(doc.require("GatewayClass", gatewayclass)?)?;
            expect_condition(&class.status.conditions, condition).map(|()| Verdict::Pass)
        }
        GatewayStatusAddresses {
            gateway,
            spec_addresses_count,
        } => static_addresses(gateway, *spec_addresses_count, doc, ctx).map(|()| Verdict::Pass),
        GatewayAttachedListenersets { gateway, count } => {
            let gw = current(doc.require("Gateway", gateway)?)?;
            let attached = gw.status.attached_listener_sets.unwrap_or(0);
            if attached == *count {
                Ok(Verdict::Pass)
            } else {
                Err(format!("attachedListenerSets is {attached}, want {count}"))
            }
        }
        ListenersetCondition {
            listenerset,
            condition,
        } => {
            let set = current(doc.require("ListenerSet", listenerset)?)?;
            expect_condition(&set.status.conditions, condition).map(|()| Verdict::Pass)
        }
        ListenersetListenerConditions {
            listenerset,
            listener,
            conditions,
        } => {
            let set = current(doc.require("ListenerSet", listenerset)?)?;
            let l = set
                .listener(listener)
                .ok_or_else(|| format!("{listenerset} has no listener {listener}"))?;
            for condition in conditions {
                expect_condition(&l.conditions, condition)
                    .map_err(|e| format!("listener {listener}: {e}"))?;
            }
            Ok(Verdict::Pass)
        }
        ListenersetListeners {
            listenerset,
            listeners,
        } => {
            let set = current(doc.require("ListenerSet", listenerset)?)?;
            listeners_match(listeners, &set.status.listeners).map(|()| Verdict::Pass)
        }
        ListenersetRoutesAccepted {
            listenerset,
            route_kind,
            routes,
        } => {
            let set = current(doc.require("ListenerSet", listenerset)?)?;
            for route in routes {
                route_accepted_by(doc, route_kind, route, "ListenerSet", listenerset)?;
            }
            all_listeners_healthy(set, &set.status.listeners).map(|()| Verdict::Pass)
        }
    }
}

fn namespaces_ready(
    namespaces: &[String],
    doc: &StatusDocument,
    ctx: &CheckContext<'_>,
) -> Result<Verdict, String> {
    let ready = |type_: &str| ExpectedCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: "any".into(),
    };
    for gateway in ctx.manifests.of_kind("Gateway") {
        let Some(key) = ObjectKey::of(gateway) else {
            continue;
        };
        let skipped = gateway
            .pointer("/metadata/annotations")
            .and_then(|a| a.get(SKIP_READINESS_ANNOTATION))
            == Some(&Value::String("true".into()));
        if skipped || !namespaces.contains(&key.namespace) {
            continue;
        }
        let full = format!("{}/{}", key.namespace, key.name);
        let gw = current(doc.require("Gateway", &full)?)?;
        for type_ in ["Accepted", "Programmed"] {
            expect_condition(&gw.status.conditions, &ready(type_))
                .map_err(|e| format!("Gateway {full}: {e}"))?;
        }
    }
    Ok(Verdict::Pass)
}

/// `GatewayStaticAddresses` phase 3: the spec kept `count` addresses, and status reports the
/// usable address with its type but neither the unusable nor the invalid one.
fn static_addresses(
    gateway: &str,
    count: Option<usize>,
    doc: &StatusDocument,
    ctx: &CheckContext<'_>,
) -> Result<(), String> {
    let key = ObjectKey::new("Gateway", gateway);
    if let Some(count) = count {
        let spec = ctx
            .manifests
            .get(&key)
            .and_then(|g| g.pointer("/spec/addresses")?.as_array().map(Vec::len));
        if spec != Some(count) {
            return Err(format!(
                "runner bug: spec.addresses has {spec:?} entries, the case expects {count}"
            ));
        }
    }
    let addresses = &doc.require("Gateway", gateway)?.status.addresses;
    let found: Vec<String> = addresses
        .iter()
        .map(|a| format!("{:?}={}", a.type_, a.value))
        .collect();
    for usable in &ctx.pools.usable {
        if !addresses
            .iter()
            .any(|a| &a.value == usable && a.type_.as_deref() == Some("IPAddress"))
        {
            return Err(format!(
                "status.addresses {found:?} lacks IPAddress {usable}"
            ));
        }
    }
    let invalid = ctx
        .manifests
        .original(&key)
        .and_then(|g| g.pointer("/spec/addresses")?.as_array().cloned())
        .unwrap_or_default();
    let forbidden = ctx.pools.unusable.iter().cloned().chain(
        invalid
            .iter()
            .filter(|a| a.get("type") == Some(&Value::String("test/fake-invalid-type".into())))
            .filter_map(|a| Some(a.get("value")?.as_str()?.to_owned())),
    );
    for bad in forbidden {
        if addresses.iter().any(|a| a.value == bad) {
            return Err(format!("status.addresses {found:?} still contains {bad}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
