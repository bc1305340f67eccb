//! Comparisons of status entries shared by several checks: freshness of an object's
//! conditions, route `status.parents` entries, and listener lists.

use crate::case::{ExpectedCondition, ExpectedListener, split_name};
use crate::manifests::CONTROLLER_NAME;
use crate::status::{
    Condition, ListenerStatus, ParentStatus, StatusDocument, StatusObject, expect_condition,
};

const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";

/// The object, if every one of its conditions carries the current generation.
pub fn current(object: &StatusObject) -> Result<&StatusObject, String> {
    object.conditions_current().map(|()| object)
}

/// Ok when the Gateway reports at least one typed address.
pub fn gateway_has_address(gw: &StatusObject) -> Result<(), String> {
    if gw
        .status
        .addresses
        .iter()
        .any(|a| a.type_.as_deref().is_some_and(|t| !t.is_empty()))
    {
        Ok(())
    } else {
        Err(format!(
            "Gateway {} has no typed status.addresses entry",
            gw.metadata.name
        ))
    }
}

/// README `gateway-routes-accepted` (2): a parent entry written out in full, by our
/// controller, `Accepted=True` with reason `Accepted`.
pub fn route_accepted_by(
    doc: &StatusDocument,
    route_kind: &str,
    route: &str,
    parent_kind: &str,
    parent: &str,
) -> Result<(), String> {
    let object = current(doc.require(route_kind, route)?)?;
    let entry = find_parent(object, route, parent_kind, parent, false)?;
    let accepted = ExpectedCondition {
        type_: "Accepted".into(),
        status: "True".into(),
        reason: "Accepted".into(),
    };
    expect_condition(&entry.conditions, &accepted)
        .map_err(|e| format!("{route_kind} {route} parent {parent}: {e}"))
}

/// The parent entry for `parent` written out in full by our controller.
pub fn find_parent<'a>(
    object: &'a StatusObject,
    route: &str,
    parent_kind: &str,
    parent: &str,
    namespace_required: bool,
) -> Result<&'a ParentStatus, String> {
    let (route_namespace, _) = split_name(route);
    let (namespace, name) = split_name(parent);
    let namespace_ok = |written: Option<&str>| match written {
        Some(written) => written == namespace,
        None => !namespace_required && route_namespace == namespace,
    };
    object
        .status
        .parents
        .iter()
        .find(|p| {
            p.controller_name == CONTROLLER_NAME
                && p.parent_ref.group.as_deref() == Some(GATEWAY_GROUP)
                && p.parent_ref.kind.as_deref() == Some(parent_kind)
                && p.parent_ref.name == name
                && namespace_ok(p.parent_ref.namespace.as_deref())
        })
        .ok_or_else(|| {
            let seen: Vec<String> = object
                .status
                .parents
                .iter()
                .map(|p| {
                    let r = &p.parent_ref;
                    format!("{}/{}:{:?}/{:?}/{} by {:?}", r.group.as_deref().unwrap_or("-"), r.kind.as_deref().unwrap_or("-"), r.namespace, r.name, p.conditions.len(), p.controller_name)
                })
                .collect();
            format!("{route}: no status.parents entry for {parent_kind} {parent} with group, kind and controller {CONTROLLER_NAME} written out (have {seen:?})")
        })
}

/// Conditions of every parent entry naming `parent` (namespace unset or equal).
pub fn parent_conditions(object: &StatusObject, parent: &str) -> Vec<Condition> {
    let (namespace, name) = split_name(parent);
    object
        .status
        .parents
        .iter()
        .filter(|p| {
            p.parent_ref.name == name
                && p.parent_ref
                    .namespace
                    .as_deref()
                    .is_none_or(|n| n == namespace)
        })
        .flat_map(|p| p.conditions.iter().cloned())
        .collect()
}

/// Every listener has `ResolvedRefs`, `Accepted` and `Programmed` = True.
pub fn all_listeners_healthy(
    owner: &StatusObject,
    listeners: &[ListenerStatus],
) -> Result<(), String> {
    if listeners.is_empty() {
        return Err(format!(
            "{} {} has no listeners in status",
            owner.kind, owner.metadata.name
        ));
    }
    for listener in listeners {
        for type_ in ["ResolvedRefs", "Accepted", "Programmed"] {
            let want = ExpectedCondition {
                type_: type_.into(),
                status: "True".into(),
                reason: "any".into(),
            };
            expect_condition(&listener.conditions, &want)
                .map_err(|e| format!("listener {}: {e}", listener.name))?;
        }
    }
    Ok(())
}

/// README `gateway-listeners`: same count, and each listed listener matches.
pub fn listeners_match(
    expected: &[ExpectedListener],
    actual: &[ListenerStatus],
) -> Result<(), String> {
    if expected.len() != actual.len() {
        return Err(format!(
            "want {} listeners, status has {}: {}",
            expected.len(),
            actual.len(),
            summarize_listeners(actual)
        ));
    }
    for want in expected {
        let have = actual
            .iter()
            .find(|l| l.name == want.name)
            .ok_or_else(|| format!("no listener {}", want.name))?;
        if have.attached_routes != want.attached_routes {
            return Err(format!(
                "listener {}: attachedRoutes {}, want {}",
                want.name, have.attached_routes, want.attached_routes
            ));
        }
        for condition in &want.conditions {
            expect_condition(&have.conditions, condition)
                .map_err(|e| format!("listener {}: {e}", want.name))?;
        }
        let kinds: Vec<&str> = have
            .supported_kinds
            .iter()
            .filter(|k| k.group.as_deref().is_none_or(|g| g == GATEWAY_GROUP))
            .map(|k| k.kind.as_str())
            .collect();
        if want.supported_kinds.is_empty() && !have.supported_kinds.is_empty() {
            return Err(format!(
                "listener {}: supportedKinds must be empty, got {kinds:?}",
                want.name
            ));
        }
        if let Some(missing) = want
            .supported_kinds
            .iter()
            .find(|k| !kinds.contains(&k.as_str()))
        {
            return Err(format!(
                "listener {}: supportedKinds {kinds:?} lacks {missing}",
                want.name
            ));
        }
    }
    Ok(())
}

/// `[name(attachedRoutes N), ...]` for messages.
pub fn summarize_listeners(listeners: &[ListenerStatus]) -> String {
    let parts: Vec<String> = listeners
        .iter()
        .map(|l| format!("{}(attachedRoutes {})", l.name, l.attached_routes))
        .collect();
    format!("[{}]", parts.join(", "))
}
