//! The status portcullis publishes on `GET /status` of its admin server, as typed views.
//!
//! Assumed shape: `{"objects": [{apiVersion, kind, metadata: {namespace, name, generation},
//! status}], "errors": [{file, line, path, message}]}`, where each `status` is shaped like
//! the Kubernetes status of that kind (camelCase). Missing lists and `null`s read as empty,
//! so a partially filled status is "not yet" rather than a parse failure.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::case::{ExpectedCondition, split_name};
use crate::client;

/// The whole `/status` document.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StatusDocument {
    /// Every object portcullis knows, with its computed status.
    #[serde(default, deserialize_with = "null_default")]
    pub objects: Vec<StatusObject>,
    /// Files or objects portcullis could not use.
    #[serde(default, deserialize_with = "null_default")]
    pub errors: Vec<Value>,
}

/// One object of the status document.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct StatusObject {
    /// `kind`.
    #[serde(default)]
    pub kind: String,
    /// Identity and generation.
    #[serde(default)]
    pub metadata: Metadata,
    /// The Kubernetes-shaped status.
    #[serde(default, deserialize_with = "null_default")]
    pub status: ObjectStatus,
}

/// `metadata` of a status object.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Metadata {
    /// Absent or empty for cluster-scoped objects.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Object name.
    #[serde(default)]
    pub name: String,
    /// Bumped by portcullis when the spec changes.
    #[serde(default)]
    pub generation: Option<i64>,
}

/// The union of the status fields the checks read, for every kind.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectStatus {
    /// Gateway, GatewayClass, ListenerSet conditions.
    #[serde(default, deserialize_with = "null_default")]
    pub conditions: Vec<Condition>,
    /// Gateway addresses.
    #[serde(default, deserialize_with = "null_default")]
    pub addresses: Vec<Address>,
    /// Gateway / ListenerSet listeners.
    #[serde(default, deserialize_with = "null_default")]
    pub listeners: Vec<ListenerStatus>,
    /// Route parents.
    #[serde(default, deserialize_with = "null_default")]
    pub parents: Vec<ParentStatus>,
    /// Policy ancestors.
    #[serde(default, deserialize_with = "null_default")]
    pub ancestors: Vec<AncestorStatus>,
    /// Gateway `attachedListenerSets`.
    #[serde(default)]
    pub attached_listener_sets: Option<i64>,
}

/// A `metav1.Condition`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// Condition type.
    #[serde(rename = "type", default)]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    #[serde(default)]
    pub status: String,
    /// Reason.
    #[serde(default)]
    pub reason: String,
    /// Generation the condition was computed for.
    #[serde(default)]
    pub observed_generation: Option<i64>,
}

/// A Gateway status address.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Address {
    /// Address type, e.g. `IPAddress`.
    #[serde(rename = "type", default)]
    pub type_: Option<String>,
    /// The address.
    #[serde(default)]
    pub value: String,
}

/// A listener status entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    /// Listener name.
    #[serde(default)]
    pub name: String,
    /// Route kinds the listener accepts.
    #[serde(default, deserialize_with = "null_default")]
    pub supported_kinds: Vec<GroupKind>,
    /// Routes attached to the listener.
    #[serde(default)]
    pub attached_routes: i64,
    /// Listener conditions.
    #[serde(default, deserialize_with = "null_default")]
    pub conditions: Vec<Condition>,
}

/// A `RouteGroupKind`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GroupKind {
    /// API group; absent means `gateway.networking.k8s.io`.
    #[serde(default)]
    pub group: Option<String>,
    /// Kind.
    #[serde(default)]
    pub kind: String,
}

/// A route's `status.parents` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentStatus {
    /// The parent reference as portcullis wrote it.
    #[serde(default)]
    pub parent_ref: ObjectRef,
    /// Controller that wrote the entry.
    #[serde(default)]
    pub controller_name: String,
    /// Conditions for this parent.
    #[serde(default, deserialize_with = "null_default")]
    pub conditions: Vec<Condition>,
}

/// A policy's `status.ancestors` entry.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AncestorStatus {
    /// The ancestor reference.
    #[serde(default)]
    pub ancestor_ref: ObjectRef,
    /// Conditions for this ancestor.
    #[serde(default, deserialize_with = "null_default")]
    pub conditions: Vec<Condition>,
}

/// A parent or ancestor reference.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectRef {
    /// Group as written (may be absent).
    #[serde(default)]
    pub group: Option<String>,
    /// Kind as written (may be absent).
    #[serde(default)]
    pub kind: Option<String>,
    /// Namespace, absent meaning the referrer's.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Name.
    #[serde(default)]
    pub name: String,
}

impl StatusDocument {
    /// Fetches and parses `GET http://ADMIN/status`.
    pub async fn fetch(admin: SocketAddr) -> anyhow::Result<Self> {
        let (status, body) = client::get(admin, "/status", Duration::from_secs(5)).await?;
        if status != 200 {
            bail!("GET /status answered {status}");
        }
        serde_json::from_slice(&body).context("parsing /status")
    }

    /// The object of `kind` named `namespace/name` (or a bare cluster-scoped name).
    pub fn find(&self, kind: &str, full_name: &str) -> Option<&StatusObject> {
        let (namespace, name) = split_name(full_name);
        self.objects.iter().find(|o| {
            o.kind == kind
                && o.metadata.name == name
                && o.metadata.namespace.as_deref().unwrap_or("") == namespace
        })
    }

    /// Like [`Self::find`], but "not yet" with a message when the object is missing.
    pub fn require(&self, kind: &str, full_name: &str) -> Result<&StatusObject, String> {
        self.find(kind, full_name)
            .ok_or_else(|| format!("{kind} {full_name} not in /status"))
    }
}

impl StatusObject {
    /// Every condition of the object: its own, its parents' and its ancestors'.
    pub fn all_conditions(&self) -> impl Iterator<Item = &Condition> {
        let status = &self.status;
        status
            .conditions
            .iter()
            .chain(status.parents.iter().flat_map(|p| &p.conditions))
            .chain(status.ancestors.iter().flat_map(|a| &a.conditions))
    }

    /// README: wherever upstream looks at conditions it insists that every condition of the
    /// object has `observedGeneration` equal to `metadata.generation`.
    pub fn conditions_current(&self) -> Result<(), String> {
        let Some(generation) = self.metadata.generation else {
            return Err(format!(
                "{} {} has no metadata.generation",
                self.kind, self.metadata.name
            ));
        };
        match self
            .all_conditions()
            .find(|c| c.observed_generation != Some(generation))
        {
            None => Ok(()),
            Some(stale) => Err(format!(
                "{} {}: condition {} has observedGeneration {:?}, metadata.generation is {generation}",
                self.kind, self.metadata.name, stale.type_, stale.observed_generation
            )),
        }
    }

    /// Gateway listener by name.
    pub fn listener(&self, name: &str) -> Option<&ListenerStatus> {
        self.status.listeners.iter().find(|l| l.name == name)
    }
}

impl ExpectedCondition {
    /// Whether `actual` has this type and matching status and reason (`any` matches all).
    pub fn matches(&self, actual: &Condition) -> bool {
        actual.type_ == self.type_
            && (self.status == "any" || actual.status == self.status)
            && (self.reason == "any" || actual.reason == self.reason)
    }
}

/// Ok when `conditions` hold a condition matching `expected`, else a precise mismatch.
pub fn expect_condition(
    conditions: &[Condition],
    expected: &ExpectedCondition,
) -> Result<(), String> {
    if conditions.iter().any(|c| expected.matches(c)) {
        return Ok(());
    }
    let want = format!(
        "{}={} ({})",
        expected.type_, expected.status, expected.reason
    );
    match conditions.iter().find(|c| c.type_ == expected.type_) {
        Some(c) => Err(format!(
            "want {want}, got {}={} ({})",
            c.type_, c.status, c.reason
        )),
        None => {
            let have: Vec<&str> = conditions.iter().map(|c| c.type_.as_str()).collect();
            Err(format!("want {want}, no such condition (have {have:?})"))
        }
    }
}

fn null_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_with_nulls_and_missing_fields_parse() {
        let doc: StatusDocument = serde_json::from_str(
            r#"{"objects":[{"apiVersion":"gateway.networking.k8s.io/v1","kind":"Gateway",
                "metadata":{"namespace":"ns","name":"g","generation":2},
                "status":{"conditions":[{"type":"Accepted","status":"True","reason":"Accepted",
                "observedGeneration":2}],"addresses":null,"listeners":[{"name":"http",
                "supportedKinds":[{"kind":"HTTPRoute"}],"attachedRoutes":1,"conditions":[]}]}},
                {"kind":"GatewayClass","metadata":{"name":"c"},"status":null}],"errors":[]}"#,
        )
        .expect("valid document");
        let gateway = doc.find("Gateway", "ns/g").expect("gateway");
        assert!(gateway.status.addresses.is_empty());
        assert_eq!(gateway.listener("http").map(|l| l.attached_routes), Some(1));
        assert!(gateway.conditions_current().is_ok());
        assert!(doc.find("GatewayClass", "c").is_some());
        assert!(doc.find("Gateway", "other/g").is_none());
    }

    #[test]
    fn stale_conditions_are_reported() {
        let object = StatusObject {
            kind: "HTTPRoute".into(),
            metadata: Metadata {
                namespace: None,
                name: "r".into(),
                generation: Some(3),
            },
            status: ObjectStatus {
                parents: vec![ParentStatus {
                    conditions: vec![Condition {
                        type_: "Accepted".into(),
                        observed_generation: Some(2),
                        ..Condition::default()
                    }],
                    ..ParentStatus::default()
                }],
                ..ObjectStatus::default()
            },
        };
        let error = object.conditions_current().expect_err("stale");
        assert!(error.contains("observedGeneration Some(2)"), "{error}");
    }

    #[test]
    fn condition_matching_honours_any() {
        let actual = vec![Condition {
            type_: "Accepted".into(),
            status: "False".into(),
            reason: "NotAllowed".into(),
            observed_generation: Some(1),
        }];
        let want = |status: &str, reason: &str| ExpectedCondition {
            type_: "Accepted".into(),
            status: status.into(),
            reason: reason.into(),
        };
        assert!(expect_condition(&actual, &want("False", "any")).is_ok());
        assert!(expect_condition(&actual, &want("any", "NotAllowed")).is_ok());
        let error = expect_condition(&actual, &want("True", "Accepted")).expect_err("mismatch");
        assert_eq!(
            error,
            "want Accepted=True (Accepted), got Accepted=False (NotAllowed)"
        );
    }
}
