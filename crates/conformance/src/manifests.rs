//! The manifest set of one case file: loading, the README's substitutions ("Preparing the
//! manifests"), and writing one YAML file per object into portcullis' config directory.
//!
//! Objects stay `serde_json::Value`s: the runner never interprets more of a resource than a
//! substitution or an action needs, and must not depend on the library crates' types.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Deserialize as _;
use serde_json::{Value, json};

use crate::case::BaseManifests;

/// The GatewayClass every Gateway is pointed at.
pub const GATEWAY_CLASS_NAME: &str = "portcullis";
/// portcullis' controller name, written into GatewayClasses and expected in route status.
pub const CONTROLLER_NAME: &str = "portcullis.dev/gateway-controller";
/// Annotation that excludes a Gateway from `namespaces-ready`.
pub const SKIP_READINESS_ANNOTATION: &str = "gateway-api/skip-this-for-readiness";

const USABLE_PLACEHOLDER: &str = "PLACEHOLDER_USABLE_ADDRS";
const UNUSABLE_PLACEHOLDER: &str = "PLACEHOLDER_UNUSABLE_ADDRS";
const FAKE_ADDRESS_TYPE: &str = "test/fake-invalid-type";

/// The runner's static address pools for `GatewayStaticAddresses`.
#[derive(Debug, Clone)]
pub struct AddressPools {
    /// Addresses portcullis can bind (inside 127.0.0.0/8, outside its `--address-pool`).
    pub usable: Vec<String>,
    /// Addresses that cannot be bound locally; traffic is never sent to them.
    pub unusable: Vec<String>,
}

/// Identity of an object: kind, namespace (empty when cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// `kind`, e.g. `HTTPRoute`.
    pub kind: String,
    /// `metadata.namespace`, empty for cluster-scoped objects.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

/// All objects of one case file, in apply order, plus each object's first version.
#[derive(Debug, Clone, Default)]
pub struct Manifests {
    objects: Vec<Value>,
    originals: HashMap<ObjectKey, Value>,
}

impl AddressPools {
    /// The pools the runner uses: usable `127.0.101.10`, unusable `198.51.100.7`
    /// (TEST-NET-2, never bound, never sent traffic).
    pub fn standard() -> Self {
        Self {
            usable: vec!["127.0.101.10".to_owned()],
            unusable: vec!["198.51.100.7".to_owned()],
        }
    }
}

impl ObjectKey {
    /// Builds a key from a kind and a `namespace/name` (or bare cluster-scoped name).
    pub fn new(kind: &str, full_name: &str) -> Self {
        let (namespace, name) = crate::case::split_name(full_name);
        Self {
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The key of a manifest document, if it has a kind and a name.
    pub fn of(doc: &Value) -> Option<Self> {
        Some(Self {
            kind: doc.get("kind")?.as_str()?.to_owned(),
            namespace: doc
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            name: doc.pointer("/metadata/name")?.as_str()?.to_owned(),
        })
    }

    /// File name of the object inside the config directory.
    pub fn file_name(&self) -> String {
        let clean = |s: &str| -> String {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .collect()
        };
        let namespace = if self.namespace.is_empty() {
            "_cluster"
        } else {
            &self.namespace
        };
        format!(
            "{}--{}--{}.yaml",
            clean(&self.kind),
            clean(namespace),
            clean(&self.name)
        )
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

impl Manifests {
    /// Loads the base manifests and then every per-test file, in order. A later document with
    /// the same key replaces the earlier one (like `kubectl apply`).
    pub fn load(dir: &Path, base: BaseManifests, files: &[String]) -> anyhow::Result<Self> {
        let base_file = match base {
            BaseManifests::Gateway => "base/manifests.yaml",
            BaseManifests::Mesh => "mesh/manifests.yaml",
        };
        let mut manifests = Self::default();
        for file in std::iter::once(base_file).chain(files.iter().map(String::as_str)) {
            let path = dir.join(file);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            for doc in parse_documents(&text).with_context(|| format!("in {}", path.display()))? {
                manifests.upsert(doc)?;
            }
        }
        Ok(manifests)
    }

    /// Applies the substitutions of "Preparing the manifests" and adds the GatewayClass.
    pub fn prepare(&mut self, pools: &AddressPools) {
        for doc in &mut self.objects {
            match doc.get("kind").and_then(Value::as_str) {
                Some("Gateway") => {
                    set_pointer(
                        doc,
                        &["spec", "gatewayClassName"],
                        json!(GATEWAY_CLASS_NAME),
                    );
                    rewrite_gateway_addresses(doc, pools);
                }
                Some("GatewayClass") => {
                    set_pointer(doc, &["spec", "controllerName"], json!(CONTROLLER_NAME));
                }
                _ => {}
            }
        }
        let class = json!({
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": GATEWAY_CLASS_NAME},
            "spec": {"controllerName": CONTROLLER_NAME},
        });
        // The key is fresh unless a test manifest already declares a class of that name.
        let _ = self.upsert(class);
        self.originals.clear();
        for doc in &self.objects {
            if let Some(key) = ObjectKey::of(doc) {
                self.originals.insert(key, doc.clone());
            }
        }
    }

    /// Adds an object, or replaces the one with the same key in place.
    pub fn upsert(&mut self, doc: Value) -> anyhow::Result<ObjectKey> {
        let Some(key) = ObjectKey::of(&doc) else {
            bail!("manifest document without kind or metadata.name: {doc}");
        };
        self.originals
            .entry(key.clone())
            .or_insert_with(|| doc.clone());
        match self
            .objects
            .iter()
            .position(|o| ObjectKey::of(o).as_ref() == Some(&key))
        {
            Some(index) => self.objects[index] = doc,
            None => self.objects.push(doc),
        }
        Ok(key)
    }

    /// Removes an object; returns whether it existed.
    pub fn remove(&mut self, key: &ObjectKey) -> bool {
        let before = self.objects.len();
        self.objects
            .retain(|o| ObjectKey::of(o).as_ref() != Some(key));
        before != self.objects.len()
    }

    /// The current version of an object.
    pub fn get(&self, key: &ObjectKey) -> Option<&Value> {
        self.objects
            .iter()
            .find(|o| ObjectKey::of(o).as_ref() == Some(key))
    }

    /// The first version of an object (after substitutions, or when it was created).
    pub fn original(&self, key: &ObjectKey) -> Option<&Value> {
        self.originals.get(key)
    }

    /// Every object of a kind, in apply order.
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .iter()
            .filter(move |o| o.get("kind").and_then(Value::as_str) == Some(kind))
    }

    /// Writes every object as its own YAML file.
    pub fn write_all(&self, dir: &Path) -> anyhow::Result<()> {
        for doc in &self.objects {
            if let Some(key) = ObjectKey::of(doc) {
                write_object(dir, &key, doc)?;
            }
        }
        Ok(())
    }

    /// Rewrites (or deletes, when it no longer exists) the file of one object.
    pub fn sync_file(&self, dir: &Path, key: &ObjectKey) -> anyhow::Result<()> {
        match self.get(key) {
            Some(doc) => write_object(dir, key, doc),
            None => {
                let path = dir.join(key.file_name());
                std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))
            }
        }
    }
}

/// Parses a multi-document YAML text into JSON values, skipping empty documents.
pub fn parse_documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut docs = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value = Value::deserialize(document).with_context(|| format!("document {index}"))?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// Sets a nested field, creating objects on the way (non-objects on the way are replaced).
pub fn set_pointer(doc: &mut Value, path: &[&str], value: Value) {
    let mut current = doc;
    for segment in path {
        if !current.is_object() {
            *current = json!({});
        }
        let Value::Object(map) = current else {
            unreachable!("made an object just above")
        };
        current = map.entry(segment.to_string()).or_insert(Value::Null);
    }
    *current = value;
}

/// README: if any `spec.addresses` entry holds a placeholder, the list becomes: the
/// `test/fake-invalid-type` entries, then the unusable pool (if its placeholder was present),
/// then the usable pool (if its placeholder was present); pool entries get type `IPAddress`.
fn rewrite_gateway_addresses(doc: &mut Value, pools: &AddressPools) {
    let Some(addresses) = doc.pointer("/spec/addresses").and_then(Value::as_array) else {
        return;
    };
    let has = |placeholder: &str| {
        addresses
            .iter()
            .any(|a| a.get("value").and_then(Value::as_str) == Some(placeholder))
    };
    let (usable, unusable) = (has(USABLE_PLACEHOLDER), has(UNUSABLE_PLACEHOLDER));
    if !usable && !unusable {
        return;
    }
    let mut rebuilt: Vec<Value> = addresses
        .iter()
        .filter(|a| a.get("type").and_then(Value::as_str) == Some(FAKE_ADDRESS_TYPE))
        .cloned()
        .collect();
    let pool_entry = |value: &String| json!({"type": "IPAddress", "value": value});
    if unusable {
        rebuilt.extend(pools.unusable.iter().map(pool_entry));
    }
    if usable {
        rebuilt.extend(pools.usable.iter().map(pool_entry));
    }
    set_pointer(doc, &["spec", "addresses"], Value::Array(rebuilt));
}

fn write_object(dir: &Path, key: &ObjectKey, doc: &Value) -> anyhow::Result<()> {
    let text = serde_yaml_ng::to_string(doc).with_context(|| format!("serialising {key}"))?;
    let path = dir.join(key.file_name());
    // Write beside the target and rename, so the watcher never reads half a file. The temporary
    // name does not end in .yaml, so portcullis ignores it.
    let temporary: PathBuf = dir.join(format!(".{}.tmp", key.file_name()));
    std::fs::write(&temporary, text).with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, &path).with_context(|| format!("renaming to {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prepared(yaml: &str) -> Manifests {
        let mut manifests = Manifests::default();
        for doc in parse_documents(yaml).expect("valid yaml") {
            manifests.upsert(doc).expect("named document");
        }
        manifests.prepare(&AddressPools::standard());
        manifests
    }

    #[test]
    fn gateways_point_at_the_portcullis_class_which_is_added() {
        let manifests = prepared(
            "kind: Gateway\nmetadata: {name: g, namespace: n}\n\
             spec: {gatewayClassName: '{GATEWAY_CLASS_NAME}'}\n---\n\
             kind: GatewayClass\nmetadata: {name: c}\nspec: {controllerName: '{GATEWAY_CONTROLLER_NAME}'}\n",
        );
        let gateway = manifests
            .get(&ObjectKey::new("Gateway", "n/g"))
            .expect("gateway");
        assert_eq!(
            gateway.pointer("/spec/gatewayClassName"),
            Some(&json!("portcullis"))
        );
        let class = manifests
            .get(&ObjectKey::new("GatewayClass", "c"))
            .expect("class");
        assert_eq!(
            class.pointer("/spec/controllerName"),
            Some(&json!(CONTROLLER_NAME))
        );
        let ours = manifests
            .get(&ObjectKey::new("GatewayClass", "portcullis"))
            .expect("added");
        assert_eq!(
            ours.pointer("/spec/controllerName"),
            Some(&json!(CONTROLLER_NAME))
        );
    }

    #[test]
    fn address_placeholders_are_replaced_by_the_pools() {
        let manifests = prepared(
            "kind: Gateway\nmetadata: {name: g, namespace: n}\nspec:\n  addresses:\n\
             \x20 - {type: test/fake-invalid-type, value: 'fake address teehee!'}\n\
             \x20 - {type: Hostname, value: dropped.example}\n\
             \x20 - value: PLACEHOLDER_UNUSABLE_ADDRS\n\
             \x20 - value: PLACEHOLDER_USABLE_ADDRS\n",
        );
        let gateway = manifests
            .get(&ObjectKey::new("Gateway", "n/g"))
            .expect("gateway");
        assert_eq!(
            gateway.pointer("/spec/addresses"),
            Some(&json!([
                {"type": "test/fake-invalid-type", "value": "fake address teehee!"},
                {"type": "IPAddress", "value": "198.51.100.7"},
                {"type": "IPAddress", "value": "127.0.101.10"},
            ]))
        );
    }

    #[test]
    fn addresses_without_placeholders_are_kept() {
        let manifests = prepared(
            "kind: Gateway\nmetadata: {name: g, namespace: n}\n\
             spec: {addresses: [{type: IPAddress, value: 127.0.0.9}]}\n",
        );
        let gateway = manifests
            .get(&ObjectKey::new("Gateway", "n/g"))
            .expect("gateway");
        assert_eq!(
            gateway.pointer("/spec/addresses"),
            Some(&json!([{"type": "IPAddress", "value": "127.0.0.9"}]))
        );
    }

    #[test]
    fn later_documents_replace_earlier_ones_with_the_same_key() {
        let manifests = prepared(
            "kind: Service\nmetadata: {name: s, namespace: n}\nspec: {a: 1}\n---\n\
             kind: Service\nmetadata: {name: s, namespace: n}\nspec: {a: 2}\n",
        );
        assert_eq!(manifests.of_kind("Service").count(), 1);
        let service = manifests
            .get(&ObjectKey::new("Service", "n/s"))
            .expect("service");
        assert_eq!(service.pointer("/spec/a"), Some(&json!(2)));
    }

    #[test]
    fn file_names_are_stable_and_safe() {
        let key = ObjectKey::new("ConfigMap", "ns/a.b");
        assert_eq!(key.file_name(), "ConfigMap--ns--a_b.yaml");
        assert_eq!(
            ObjectKey::new("GatewayClass", "x").file_name(),
            "GatewayClass--_cluster--x.yaml"
        );
    }
}
