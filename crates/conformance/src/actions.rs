//! Phase actions: edits of the manifest directory that portcullis hot-reloads.
//!
//! Case files describe an update's `change` in words ("set spec.description to \"new\"").
//! [`Edit::parse`] recognises the handful of phrasings the cases use and rejects anything
//! else, so a new phrasing fails loudly instead of being half-applied. Every edit becomes a
//! JSON merge patch (RFC 7386) on the object, as upstream applies them: lists are replaced as
//! a whole.

use std::sync::LazyLock;

use anyhow::{Context as _, anyhow, bail};
use regex::Regex;
use serde_json::{Map, Value, json};

use crate::backends::{self, Pod};
use crate::case::{Action, split_name};
use crate::manifests::{AddressPools, Manifests, ObjectKey};

/// One step of a path such as `spec.rules[0].backendRefs[0].name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// An object field.
    Key(String),
    /// A list element.
    Index(usize),
}

/// A recognised `change`.
#[derive(Debug, Clone, PartialEq)]
pub enum Edit {
    /// `set PATH to VALUE`.
    Set {
        /// The field to set.
        path: Vec<Segment>,
        /// Its new value (the YAML after `to`).
        value: Value,
    },
    /// `restore the original PATH` / `set PATH back to the original ...`.
    Restore {
        /// The field to restore from the object's first version.
        path: Vec<Segment>,
    },
    /// `append to spec.listeners` with `append_listener`.
    AppendListener(Value),
    /// `keep only the listener named NAME in spec.listeners`.
    KeepOnlyListener(String),
    /// `remove the first entry ... from PATH`.
    RemoveFirst {
        /// The list to shorten.
        path: Vec<Segment>,
    },
    /// `remove the unusable address from spec.addresses`.
    RemoveUnusableAddresses,
    /// `data.KEY = the KEY of ConfigMap NS/NAME`.
    CopyConfigMapKey {
        /// The field to fill (`data.KEY`).
        path: Vec<Segment>,
        /// The ConfigMap to copy from.
        source: ObjectKey,
        /// The key of `source.data` to copy.
        source_key: String,
    },
}

static RESTORE_SET: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^set (?P<path>\S+) back to the original\b").expect("valid regex")
});
static RESTORE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^restore the original (?P<path>\S+)").expect("valid regex"));
static SET: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^set (?P<path>\S+) to (?P<value>.+?)(?: \([^()]*\))?$").expect("valid regex")
});
static KEEP_ONLY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^keep only the listener named (?P<name>\S+) in spec\.listeners$")
        .expect("valid regex")
});
static REMOVE_FIRST: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^remove the first entry\b.* from (?P<path>\S+)$").expect("valid regex")
});
static COPY_KEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?P<path>\S+) = the (?P<key>\S+) of ConfigMap (?P<source>\S+)$")
        .expect("valid regex")
});
static FILL_POD: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"per (?P<deployment>[a-z0-9-]+) pod address").expect("valid regex")
});

impl Edit {
    /// Recognises the `change` of an update or create action.
    pub fn parse(action: &Action) -> anyhow::Result<Self> {
        let change = action.change.trim();
        let path = |captures: &regex::Captures<'_>| parse_path(&action.kind, &captures["path"]);
        if let Some(c) = RESTORE_SET
            .captures(change)
            .or_else(|| RESTORE.captures(change))
        {
            return Ok(Self::Restore { path: path(&c)? });
        }
        if change == "append to spec.listeners" {
            let listener = action
                .append_listener
                .clone()
                .context("append without append_listener")?;
            return Ok(Self::AppendListener(listener));
        }
        if let Some(c) = KEEP_ONLY.captures(change) {
            return Ok(Self::KeepOnlyListener(c["name"].to_owned()));
        }
        if let Some(c) = REMOVE_FIRST.captures(change) {
            return Ok(Self::RemoveFirst { path: path(&c)? });
        }
        if change.starts_with("remove the unusable address from spec.addresses") {
            return Ok(Self::RemoveUnusableAddresses);
        }
        if let Some(c) = COPY_KEY.captures(change) {
            return Ok(Self::CopyConfigMapKey {
                path: path(&c)?,
                source: ObjectKey::new("ConfigMap", &c["source"]),
                source_key: c["key"].to_owned(),
            });
        }
        if let Some(c) = SET.captures(change) {
            let value: Value = serde_yaml_ng::from_str(&c["value"])
                .with_context(|| format!("value of {change:?}"))?;
            return Ok(Self::Set {
                path: path(&c)?,
                value,
            });
        }
        bail!(
            "unrecognised change {change:?} ({} {})",
            action.action,
            action.kind
        )
    }

    /// The merge patch that performs this edit on `current`.
    pub fn merge_patch(
        &self,
        current: &Value,
        original: Option<&Value>,
        manifests: &Manifests,
        pools: &AddressPools,
    ) -> anyhow::Result<Value> {
        let listeners = [
            Segment::Key("spec".into()),
            Segment::Key("listeners".into()),
        ];
        let addresses = [
            Segment::Key("spec".into()),
            Segment::Key("addresses".into()),
        ];
        match self {
            Self::Set { path, value } => patch_setting(current, path, value.clone()),
            Self::Restore { path } => {
                let old = original
                    .and_then(|o| lookup(o, path))
                    .cloned()
                    .unwrap_or(Value::Null);
                patch_setting(current, path, old)
            }
            Self::AppendListener(listener) => {
                let mut list = list_at(current, &listeners)?;
                list.push(listener.clone());
                patch_setting(current, &listeners, Value::Array(list))
            }
            Self::KeepOnlyListener(name) => {
                let mut list = list_at(current, &listeners)?;
                list.retain(|l| l.get("name").and_then(Value::as_str) == Some(name));
                patch_setting(current, &listeners, Value::Array(list))
            }
            Self::RemoveFirst { path } => {
                let mut list = list_at(current, path)?;
                if list.is_empty() {
                    bail!("nothing to remove: the list is empty");
                }
                list.remove(0);
                patch_setting(current, path, Value::Array(list))
            }
            Self::RemoveUnusableAddresses => {
                let mut list = list_at(current, &addresses)?;
                list.retain(|a| {
                    let value = a.get("value").and_then(Value::as_str).unwrap_or("");
                    !pools.unusable.iter().any(|u| u == value)
                });
                patch_setting(current, &addresses, Value::Array(list))
            }
            Self::CopyConfigMapKey {
                path,
                source,
                source_key,
            } => {
                let value = manifests
                    .get(source)
                    .and_then(|s| s.get("data")?.get(source_key))
                    .cloned()
                    .ok_or_else(|| anyhow!("{source} has no data key {source_key}"))?;
                patch_setting(current, path, value)
            }
        }
    }
}

/// Applies one action to the manifest set; returns the objects whose files must be rewritten.
pub fn apply(
    action: &Action,
    manifests: &mut Manifests,
    pools: &AddressPools,
    pods: &[Pod],
) -> anyhow::Result<Vec<ObjectKey>> {
    match action.action.as_str() {
        "update" | "create" => {
            let key = ObjectKey::new(&action.kind, &action.name);
            let edit = Edit::parse(action)?;
            let current = match (manifests.get(&key), action.action.as_str()) {
                (Some(current), _) => current.clone(),
                (None, "create") => skeleton(&key),
                (None, _) => bail!("cannot update {key}: no such object"),
            };
            let patch = edit.merge_patch(&current, manifests.original(&key), manifests, pools)?;
            let mut updated = current;
            merge_patch(&mut updated, &patch);
            manifests.upsert(updated)?;
            Ok(vec![key])
        }
        "delete" => {
            let key = ObjectKey::new(&action.kind, &action.name);
            if !manifests.remove(&key) {
                bail!("cannot delete {key}: no such object");
            }
            Ok(vec![key])
        }
        "fill-endpointslices" => fill_endpoint_slices(action, manifests, pods),
        other => bail!("unsupported action {other:?}"),
    }
}

/// RFC 7386 JSON merge patch: objects merge recursively, `null` deletes, anything else
/// (lists included) replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

/// Parses `a.b[0].c`. For ConfigMap/Secret `data.KEY`, the key may contain dots (`ca.crt`).
pub fn parse_path(kind: &str, text: &str) -> anyhow::Result<Vec<Segment>> {
    if matches!(kind, "ConfigMap" | "Secret")
        && let Some(key) = text.strip_prefix("data.")
    {
        return Ok(vec![
            Segment::Key("data".to_owned()),
            Segment::Key(key.to_owned()),
        ]);
    }
    let mut segments = Vec::new();
    for part in text.split('.') {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if name.is_empty() {
            bail!("empty field name in path {text:?}");
        }
        segments.push(Segment::Key(name.to_owned()));
        while !rest.is_empty() {
            let (index, after) = rest.split_once(']').context("unclosed [ in path")?;
            segments.push(Segment::Index(index.parse().context("list index in path")?));
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    Ok(segments)
}

/// A merge patch that leaves `current` equal except that `path` holds `value`. Lists on the
/// way are copied whole, since a merge patch cannot address one element.
fn patch_setting(current: &Value, path: &[Segment], value: Value) -> anyhow::Result<Value> {
    match path {
        [] => Ok(value),
        [Segment::Key(key), rest @ ..] if matches!(rest.first(), Some(Segment::Index(_))) => {
            let mut list = current.get(key).cloned().unwrap_or(Value::Null);
            set_in_place(&mut list, rest, value)?;
            Ok(json!({ key: list }))
        }
        [Segment::Key(key), rest @ ..] => {
            let inner = current.get(key).unwrap_or(&Value::Null);
            Ok(json!({ key: patch_setting(inner, rest, value)? }))
        }
        [Segment::Index(_), ..] => bail!("a path cannot start with a list index"),
    }
}

fn set_in_place(target: &mut Value, path: &[Segment], value: Value) -> anyhow::Result<()> {
    let Some((first, rest)) = path.split_first() else {
        *target = value;
        return Ok(());
    };
    let next = match first {
        Segment::Key(key) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            target
                .as_object_mut()
                .map(|m| m.entry(key.clone()).or_insert(Value::Null))
        }
        Segment::Index(index) => target.as_array_mut().and_then(|list| list.get_mut(*index)),
    };
    set_in_place(
        next.ok_or_else(|| anyhow!("no element {first:?} to edit"))?,
        rest,
        value,
    )
}

fn lookup<'a>(value: &'a Value, path: &[Segment]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, segment| match segment {
        Segment::Key(key) => v.get(key),
        Segment::Index(index) => v.get(index),
    })
}

fn list_at(value: &Value, path: &[Segment]) -> anyhow::Result<Vec<Value>> {
    match lookup(value, path) {
        Some(Value::Array(list)) => Ok(list.clone()),
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(other) => bail!("expected a list at {path:?}, found {other}"),
    }
}

fn skeleton(key: &ObjectKey) -> Value {
    let api_version = match key.kind.as_str() {
        "ConfigMap" | "Secret" | "Service" | "Namespace" => "v1",
        "EndpointSlice" => "discovery.k8s.io/v1",
        _ => "gateway.networking.k8s.io/v1",
    };
    let mut metadata = json!({"name": key.name});
    if !key.namespace.is_empty() {
        metadata["namespace"] = json!(key.namespace);
    }
    json!({"apiVersion": api_version, "kind": key.kind, "metadata": metadata})
}

/// `HTTPRouteServiceTypes`: give each listed slice one endpoint per pod of the named
/// deployment in the slice's address family; slices that would stay empty are untouched.
fn fill_endpoint_slices(
    action: &Action,
    manifests: &mut Manifests,
    pods: &[Pod],
) -> anyhow::Result<Vec<ObjectKey>> {
    let deployment = FILL_POD
        .captures(&action.change)
        .map(|c| c["deployment"].to_owned())
        .context("fill-endpointslices: which deployment's pods?")?;
    let mut touched = Vec::new();
    for name in &action.endpointslices {
        let key = ObjectKey::new("EndpointSlice", name);
        let mut slice = manifests
            .get(&key)
            .cloned()
            .with_context(|| format!("no {key}"))?;
        let (namespace, _) = split_name(name);
        // Every local pod address is IPv4, so only IPv4 slices can be filled.
        if slice.get("addressType").and_then(Value::as_str) != Some("IPv4") {
            continue;
        }
        let members: Vec<&Pod> = pods
            .iter()
            .filter(|p| p.namespace == namespace && p.deployment == deployment)
            .collect();
        if members.is_empty() {
            continue;
        }
        merge_patch(
            &mut slice,
            &json!({"endpoints": backends::endpoints(&members)}),
        );
        manifests.upsert(slice)?;
        touched.push(key);
    }
    Ok(touched)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn action(kind: &str, change: &str) -> Action {
        Action {
            action: "update".into(),
            kind: kind.into(),
            name: "ns/x".into(),
            change: change.into(),
            append_listener: None,
            endpointslices: Vec::new(),
        }
    }

    fn edit(kind: &str, change: &str) -> Edit {
        Edit::parse(&action(kind, change)).expect("recognised change")
    }

    fn patched(current: Value, edit: &Edit, original: Option<&Value>) -> Value {
        let patch = edit
            .merge_patch(
                &current,
                original,
                &Manifests::default(),
                &AddressPools::standard(),
            )
            .expect("patch");
        let mut out = current;
        merge_patch(&mut out, &patch);
        out
    }

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(&mut target, &json!({"a": "z", "c": {"f": null}, "l": [3]}));
        assert_eq!(target, json!({"a": "z", "c": {"d": "e"}, "l": [3]}));
        let mut scalar = json!("x");
        merge_patch(&mut scalar, &json!({"a": 1}));
        assert_eq!(scalar, json!({"a": 1}));
    }

    #[test]
    fn paths_with_indices_and_dotted_data_keys_parse() {
        use Segment::{Index, Key};
        assert_eq!(
            parse_path("HTTPRoute", "spec.rules[0].backendRefs[1].name").expect("path"),
            vec![
                Key("spec".into()),
                Key("rules".into()),
                Index(0),
                Key("backendRefs".into()),
                Index(1),
                Key("name".into())
            ]
        );
        assert_eq!(
            parse_path("ConfigMap", "data.ca.crt").expect("path"),
            vec![Key("data".into()), Key("ca.crt".into())]
        );
    }

    #[test]
    fn set_values_are_yaml_and_trailing_remarks_are_dropped() {
        let e = edit(
            "HTTPRoute",
            "set spec.rules[0].backendRefs[0].name to infra-backend-v2 (everything else unchanged)",
        );
        let route =
            json!({"spec": {"rules": [{"backendRefs": [{"name": "v1", "port": 8080}]}, {"x": 1}]}});
        let out = patched(route, &e, None);
        assert_eq!(
            out,
            json!({"spec": {"rules": [{"backendRefs": [{"name": "infra-backend-v2", "port": 8080}]}, {"x": 1}]}})
        );
        assert_eq!(
            edit("GatewayClass", "set spec.description to \"new\""),
            Edit::Set {
                path: parse_path("", "spec.description").expect("path"),
                value: json!("new")
            }
        );
        let refs = edit(
            "BackendTLSPolicy",
            "set spec.validation.caCertificateRefs to [{group: \"\", kind: ConfigMap, name: n}]",
        );
        assert!(
            matches!(refs, Edit::Set { value, .. } if value == json!([{"group": "", "kind": "ConfigMap", "name": "n"}]))
        );
        let empty = edit("ConfigMap", "set data.ca.crt to \"\"");
        assert_eq!(
            patched(json!({"data": {"ca.crt": "pem"}}), &empty, None),
            json!({"data": {"ca.crt": ""}})
        );
    }

    #[test]
    fn restore_takes_the_original_value() {
        let original = json!({"data": {"ca.crt": "pem"}});
        let e = edit("ConfigMap", "set data.ca.crt back to the original CA");
        assert_eq!(
            patched(json!({"data": {"ca.crt": ""}}), &e, Some(&original)),
            original
        );
        let e = edit(
            "BackendTLSPolicy",
            "restore the original spec.validation.caCertificateRefs (cleanup, nothing asserted)",
        );
        assert!(matches!(e, Edit::Restore { .. }));
    }

    #[test]
    fn listener_and_address_list_edits() {
        let gateway = json!({"spec": {
            "listeners": [{"name": "https"}, {"name": "http"}],
            "addresses": [
                {"type": "test/fake-invalid-type", "value": "fake"},
                {"type": "IPAddress", "value": "198.51.100.7"},
                {"type": "IPAddress", "value": "127.0.101.10"},
            ],
        }});
        let keep = edit(
            "Gateway",
            "keep only the listener named http in spec.listeners",
        );
        assert_eq!(
            patched(gateway.clone(), &keep, None)["spec"]["listeners"],
            json!([{"name": "http"}])
        );
        let first = edit(
            "Gateway",
            "remove the first entry (type test/fake-invalid-type) from spec.addresses",
        );
        assert_eq!(
            patched(gateway.clone(), &first, None)["spec"]["addresses"]
                .as_array()
                .map(Vec::len),
            Some(2)
        );
        let unusable = edit(
            "Gateway",
            "remove the unusable address from spec.addresses, leaving only the usable one",
        );
        assert_eq!(
            patched(gateway.clone(), &unusable, None)["spec"]["addresses"],
            json!([{"type": "test/fake-invalid-type", "value": "fake"}, {"type": "IPAddress", "value": "127.0.101.10"}])
        );
        let mut append = action("Gateway", "append to spec.listeners");
        append.append_listener = Some(json!({"name": "new"}));
        let e = Edit::parse(&append).expect("append");
        assert_eq!(
            patched(gateway, &e, None)["spec"]["listeners"]
                .as_array()
                .map(Vec::len),
            Some(3)
        );
    }

    #[test]
    fn create_copies_a_key_from_another_config_map() {
        let mut manifests = Manifests::default();
        manifests
            .upsert(json!({"kind": "ConfigMap", "metadata": {"namespace": "ns", "name": "src"}, "data": {"ca.crt": "PEM"}}))
            .expect("upsert");
        let mut create = action("ConfigMap", "data.ca.crt = the ca.crt of ConfigMap ns/src");
        create.action = "create".into();
        let keys = apply(&create, &mut manifests, &AddressPools::standard(), &[]).expect("applied");
        let created = manifests.get(&keys[0]).expect("created");
        assert_eq!(created.pointer("/data/ca.crt"), Some(&json!("PEM")));
        assert_eq!(created["apiVersion"], "v1");
    }

    #[test]
    fn unknown_phrasings_are_rejected() {
        assert!(Edit::parse(&action("Gateway", "rotate the listeners")).is_err());
    }
}
