//! The [`Store`] of decoded files and the immutable [`Snapshot`] it produces for translate.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::decode::{DecodeError, FileContents, Warning};
use crate::{Kind, Object, ResourceKey, gw, k8s};

/// `namespace/name` of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectName {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// A complete, consistent set of resources: the only input of `translate`.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// GatewayClasses by name.
    pub gateway_classes: BTreeMap<String, Arc<gw::gatewayclasses::GatewayClass>>,
    /// Gateways.
    pub gateways: BTreeMap<ObjectName, Arc<gw::gateways::Gateway>>,
    /// ListenerSets.
    pub listener_sets: BTreeMap<ObjectName, Arc<gw::listenersets::ListenerSet>>,
    /// HTTPRoutes.
    pub http_routes: BTreeMap<ObjectName, Arc<gw::httproutes::HttpRoute>>,
    /// GRPCRoutes.
    pub grpc_routes: BTreeMap<ObjectName, Arc<gw::grpcroutes::GrpcRoute>>,
    /// TLSRoutes.
    pub tls_routes: BTreeMap<ObjectName, Arc<gw::tlsroutes::TlsRoute>>,
    /// TCPRoutes.
    pub tcp_routes: BTreeMap<ObjectName, Arc<gw::tcproutes::TcpRoute>>,
    /// ReferenceGrants.
    pub reference_grants: BTreeMap<ObjectName, Arc<gw::referencegrants::ReferenceGrant>>,
    /// BackendTLSPolicies.
    pub backend_tls_policies: BTreeMap<ObjectName, Arc<gw::backendtlspolicies::BackendTlsPolicy>>,
    /// Namespaces by name.
    pub namespaces: BTreeMap<String, Arc<k8s::Namespace>>,
    /// Services.
    pub services: BTreeMap<ObjectName, Arc<k8s::Service>>,
    /// EndpointSlices (keyed by the slice's own name).
    pub endpoint_slices: BTreeMap<ObjectName, Arc<k8s::EndpointSlice>>,
    /// Secrets.
    pub secrets: BTreeMap<ObjectName, Arc<k8s::Secret>>,
    /// ConfigMaps.
    pub config_maps: BTreeMap<ObjectName, Arc<k8s::ConfigMap>>,
    /// EgressNetworks by namespace/name.
    pub egress_networks: BTreeMap<ObjectName, Arc<crate::egress::EgressNetwork>>,
    /// AuthenticationPolicies.
    pub authentication_policies: BTreeMap<ObjectName, Arc<crate::policy::AuthenticationPolicy>>,
    /// RateLimitPolicies.
    pub rate_limit_policies: BTreeMap<ObjectName, Arc<crate::policy::RateLimitPolicy>>,
    /// HealthCheckPolicies.
    pub health_check_policies: BTreeMap<ObjectName, Arc<crate::policy::HealthCheckPolicy>>,
}

/// The decoded contents of a set of files, with the bookkeeping a standalone control plane
/// needs: the last good version of each file, its current errors, and `metadata.generation`
/// of every object (bumped when its spec changes, as the API server does).
#[derive(Debug, Default)]
pub struct Store {
    /// The last good contents of each file. Its objects are stamped with their generation
    /// in place when a snapshot is built, so the snapshot shares them without a copy.
    files: BTreeMap<PathBuf, FileContents>,
    errors: BTreeMap<PathBuf, Vec<DecodeError>>,
    generations: HashMap<ResourceKey, Seen>,
}

/// An object as the last snapshot held it.
#[derive(Debug)]
struct Seen {
    generation: i64,
    /// The object with `metadata.generation` set, as that snapshot holds it (the same
    /// allocation as its file's object while the file is not read again).
    object: Object,
}

// === impl ObjectName ===

impl ObjectName {
    /// Builds a name.
    pub fn new(namespace: &str, name: &str) -> Self {
        Self {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl std::fmt::Display for ObjectName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

// === impl Snapshot ===

impl Snapshot {
    /// Builds a snapshot from objects; later duplicates of a key are ignored.
    pub fn from_objects(objects: impl IntoIterator<Item = Object>) -> Self {
        let mut snapshot = Self::default();
        for object in objects {
            snapshot.insert(object);
        }
        snapshot
    }

    fn insert(&mut self, object: Object) {
        fn first<K: Ord, V>(map: &mut BTreeMap<K, V>, key: K, value: V) {
            map.entry(key).or_insert(value);
        }
        let meta = object.meta();
        let name = meta.name.clone().unwrap_or_default();
        let namespaced = || ObjectName {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: name.clone(),
        };
        // The first object with a key is kept; a later duplicate is ignored.
        match &object {
            Object::GatewayClass(o) => first(&mut self.gateway_classes, name, o.clone()),
            Object::Gateway(o) => first(&mut self.gateways, namespaced(), o.clone()),
            Object::ListenerSet(o) => first(&mut self.listener_sets, namespaced(), o.clone()),
            Object::HttpRoute(o) => first(&mut self.http_routes, namespaced(), o.clone()),
            Object::GrpcRoute(o) => first(&mut self.grpc_routes, namespaced(), o.clone()),
            Object::TlsRoute(o) => first(&mut self.tls_routes, namespaced(), o.clone()),
            Object::TcpRoute(o) => first(&mut self.tcp_routes, namespaced(), o.clone()),
            Object::ReferenceGrant(o) => first(&mut self.reference_grants, namespaced(), o.clone()),
            Object::BackendTlsPolicy(o) => {
                first(&mut self.backend_tls_policies, namespaced(), o.clone())
            }
            Object::Namespace(o) => first(&mut self.namespaces, name, o.clone()),
            Object::Service(o) => first(&mut self.services, namespaced(), o.clone()),
            Object::EndpointSlice(o) => first(&mut self.endpoint_slices, namespaced(), o.clone()),
            Object::Secret(o) => first(&mut self.secrets, namespaced(), o.clone()),
            Object::ConfigMap(o) => first(&mut self.config_maps, namespaced(), o.clone()),
            Object::EgressNetwork(o) => first(&mut self.egress_networks, namespaced(), o.clone()),
            Object::AuthenticationPolicy(o) => {
                first(&mut self.authentication_policies, namespaced(), o.clone())
            }
            Object::RateLimitPolicy(o) => {
                first(&mut self.rate_limit_policies, namespaced(), o.clone())
            }
            Object::HealthCheckPolicy(o) => {
                first(&mut self.health_check_policies, namespaced(), o.clone())
            }
        }
    }
}

// === impl Store ===

impl Store {
    /// Records the result of decoding a file. On error the file's last good contents stay in
    /// place and the errors are kept for reporting.
    pub fn set_file(&mut self, path: &Path, decoded: Result<FileContents, Vec<DecodeError>>) {
        match decoded {
            Ok(contents) => {
                self.errors.remove(path);
                self.files.insert(path.to_path_buf(), contents);
            }
            Err(errors) => {
                self.errors.insert(path.to_path_buf(), errors);
            }
        }
    }

    /// Forgets a deleted file.
    pub fn remove_file(&mut self, path: &Path) {
        self.files.remove(path);
        self.errors.remove(path);
    }

    /// Current errors of every file, plus objects defined twice.
    pub fn errors(&self) -> Vec<DecodeError> {
        let mut errors: Vec<_> = self.errors.values().flatten().cloned().collect();
        // Keyed by borrowed names: a key is only built for a duplicate's message.
        let mut seen: HashMap<(Kind, &str, &str), (&Path, usize)> = HashMap::new();
        for (path, contents) in &self.files {
            for (object, line) in &contents.objects {
                let meta = object.meta();
                let id = (
                    object.kind(),
                    meta.namespace.as_deref().unwrap_or_default(),
                    meta.name.as_deref().unwrap_or_default(),
                );
                if let Some((first, first_line)) = seen.get(&id) {
                    let key = object.key();
                    errors.push(DecodeError {
                        file: path.clone(),
                        line: *line,
                        path: String::new(),
                        message: format!(
                            "{key} is already defined at {}:{first_line}; this copy is ignored",
                            first.display()
                        ),
                    });
                } else {
                    seen.insert(id, (path, *line));
                }
            }
        }
        errors
    }

    /// Skipped documents of every file.
    pub fn warnings(&self) -> Vec<Warning> {
        self.files
            .values()
            .flat_map(|c| c.warnings.iter().cloned())
            .collect()
    }

    /// Builds a snapshot of the current contents, assigning generations: an object keeps its
    /// generation while its spec is unchanged and gets the next one when the spec changes.
    pub fn snapshot(&mut self) -> Snapshot {
        let mut objects = Vec::new();
        let mut present: HashMap<ResourceKey, Seen> = HashMap::new();
        for contents in self.files.values_mut() {
            for (object, _) in &mut contents.objects {
                let key = object.key();
                if present.contains_key(&key) {
                    continue;
                }
                let generation = match self.generations.remove(&key) {
                    // The very object of last time (metadata lives inside its allocation).
                    Some(seen) if std::ptr::eq(seen.object.meta(), object.meta()) => {
                        seen.generation
                    }
                    Some(seen) => seen.generation + i64::from(!same_spec(&seen.object, object)),
                    None => object.meta().generation.unwrap_or(1),
                };
                // A freshly read object is held by its file alone: stamped without a copy.
                stamp(object, generation);
                objects.push(object.clone());
                present.insert(
                    key,
                    Seen {
                        generation,
                        object: object.clone(),
                    },
                );
            }
        }
        self.generations = present;
        Snapshot::from_objects(objects)
    }
}

/// Whether two versions of an object have the same spec: everything but metadata and
/// status, what the API server compares to bump `metadata.generation`. Objects of different
/// kinds never compare equal.
fn same_spec(a: &Object, b: &Object) -> bool {
    match (a, b) {
        (Object::GatewayClass(a), Object::GatewayClass(b)) => a.spec == b.spec,
        (Object::Gateway(a), Object::Gateway(b)) => a.spec == b.spec,
        (Object::ListenerSet(a), Object::ListenerSet(b)) => a.spec == b.spec,
        (Object::HttpRoute(a), Object::HttpRoute(b)) => a.spec == b.spec,
        (Object::GrpcRoute(a), Object::GrpcRoute(b)) => a.spec == b.spec,
        (Object::TlsRoute(a), Object::TlsRoute(b)) => a.spec == b.spec,
        (Object::TcpRoute(a), Object::TcpRoute(b)) => a.spec == b.spec,
        (Object::ReferenceGrant(a), Object::ReferenceGrant(b)) => a.spec == b.spec,
        (Object::BackendTlsPolicy(a), Object::BackendTlsPolicy(b)) => a.spec == b.spec,
        (Object::Namespace(a), Object::Namespace(b)) => a.spec == b.spec,
        (Object::Service(a), Object::Service(b)) => a.spec == b.spec,
        (Object::EndpointSlice(a), Object::EndpointSlice(b)) => {
            a.endpoints == b.endpoints && a.ports == b.ports && a.address_type == b.address_type
        }
        (Object::Secret(a), Object::Secret(b)) => {
            a.data == b.data && a.string_data == b.string_data && a.type_ == b.type_
        }
        (Object::ConfigMap(a), Object::ConfigMap(b)) => {
            a.data == b.data && a.binary_data == b.binary_data
        }
        (Object::EgressNetwork(a), Object::EgressNetwork(b)) => a.spec == b.spec,
        (Object::AuthenticationPolicy(a), Object::AuthenticationPolicy(b)) => a.spec == b.spec,
        (Object::RateLimitPolicy(a), Object::RateLimitPolicy(b)) => a.spec == b.spec,
        (Object::HealthCheckPolicy(a), Object::HealthCheckPolicy(b)) => a.spec == b.spec,
        _ => false,
    }
}

/// Sets `metadata.generation` of a Gateway API or policy object (core objects carry none
/// here). Copies the object only when a previous snapshot still shares it.
fn stamp(object: &mut Object, generation: i64) {
    fn set<T: Clone>(
        arc: &mut Arc<T>,
        meta: impl FnOnce(&mut T) -> &mut k8s::ObjectMeta,
        generation: i64,
    ) {
        meta(Arc::make_mut(arc)).generation = Some(generation);
    }
    if object.meta().generation == Some(generation) {
        return;
    }
    match object {
        Object::GatewayClass(o) => set(o, |o| &mut o.metadata, generation),
        Object::Gateway(o) => set(o, |o| &mut o.metadata, generation),
        Object::ListenerSet(o) => set(o, |o| &mut o.metadata, generation),
        Object::HttpRoute(o) => set(o, |o| &mut o.metadata, generation),
        Object::GrpcRoute(o) => set(o, |o| &mut o.metadata, generation),
        Object::TlsRoute(o) => set(o, |o| &mut o.metadata, generation),
        Object::TcpRoute(o) => set(o, |o| &mut o.metadata, generation),
        Object::ReferenceGrant(o) => set(o, |o| &mut o.metadata, generation),
        Object::BackendTlsPolicy(o) => set(o, |o| &mut o.metadata, generation),
        Object::EgressNetwork(o) => set(o, |o| &mut o.metadata, generation),
        Object::AuthenticationPolicy(o) => set(o, |o| &mut o.metadata, generation),
        Object::RateLimitPolicy(o) => set(o, |o| &mut o.metadata, generation),
        Object::HealthCheckPolicy(o) => set(o, |o| &mut o.metadata, generation),
        Object::Namespace(_)
        | Object::Service(_)
        | Object::EndpointSlice(_)
        | Object::Secret(_)
        | Object::ConfigMap(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: default, labels: {team: LABEL}}
spec:
  parentRefs: [{name: web}]
  hostnames: [HOST]
";

    fn load(store: &mut Store, label: &str, host: &str) -> Arc<gw::httproutes::HttpRoute> {
        let text = ROUTE.replace("LABEL", label).replace("HOST", host);
        let path = Path::new("routes.yaml");
        store.set_file(path, crate::decode::decode_file(path, &text));
        let snapshot = store.snapshot();
        match snapshot.http_routes.get(&ObjectName::new("default", "r")) {
            Some(route) => route.clone(),
            None => panic!("no route in the snapshot"),
        }
    }

    #[test]
    fn generation_advances_with_the_spec_only_and_unchanged_objects_are_not_copied() {
        let mut store = Store::default();
        let first = load(&mut store, "a", "a.example.com");
        assert_eq!(first.metadata.generation, Some(1));

        // The file read again with the same text: a new decoded object, same generation.
        let again = load(&mut store, "a", "a.example.com");
        assert_eq!(again.metadata.generation, Some(1));

        // Nothing read: the snapshot shares the object of the previous one.
        let shared = store.snapshot();
        let key = ObjectName::new("default", "r");
        assert!(
            shared
                .http_routes
                .get(&key)
                .is_some_and(|r| Arc::ptr_eq(r, &again))
        );

        // Metadata only: same generation, new labels.
        let relabelled = load(&mut store, "b", "a.example.com");
        assert_eq!(relabelled.metadata.generation, Some(1));
        let labels = relabelled.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("team").map(String::as_str), Some("b"));

        // The spec changes: the next generation, kept while the spec stays.
        let changed = load(&mut store, "b", "b.example.com");
        assert_eq!(changed.metadata.generation, Some(2));
        assert_eq!(
            load(&mut store, "c", "b.example.com").metadata.generation,
            Some(2)
        );
    }

    #[test]
    fn a_second_definition_of_an_object_is_an_error_and_the_first_is_kept() {
        let mut store = Store::default();
        let first = ROUTE.replace("LABEL", "a").replace("HOST", "first.example");
        let second = ROUTE
            .replace("LABEL", "a")
            .replace("HOST", "second.example");
        // Same name in another namespace, and another kind of the same name: no conflict.
        let elsewhere = first.replace("namespace: default", "namespace: other");
        let grpc = first.replace("kind: HTTPRoute", "kind: GRPCRoute");
        for (file, text) in [
            ("a.yaml", first),
            ("b.yaml", format!("{elsewhere}---\n{grpc}---\n{second}")),
        ] {
            let path = Path::new(file);
            store.set_file(path, crate::decode::decode_file(path, &text));
        }
        let errors = store.errors();
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].file, Path::new("b.yaml"));
        assert!(
            errors[0].message.contains("is already defined at a.yaml:1"),
            "{}",
            errors[0].message
        );
        let snapshot = store.snapshot();
        let kept = &snapshot.http_routes[&ObjectName::new("default", "r")];
        assert_eq!(
            kept.spec.hostnames.as_deref(),
            Some(&["first.example".to_string()][..])
        );
    }
}
