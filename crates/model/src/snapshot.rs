//! The [`Store`] of decoded files and the immutable [`Snapshot`] it produces for translate.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::decode::{DecodeError, FileContents, Warning};
use crate::{Kind, Object, ResourceKey, gw, k8s};

/// `namespace/name` of a namespaced object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectName {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Name.
    pub name: Arc<str>,
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
///
/// The snapshot is kept between calls and updated for the objects of the files that
/// changed, so a reload that touches one file of thousands of routes costs in proportion to
/// that file (at 5,000 routes a full rebuild took about 4 ms, most of a change's latency
/// before translation).
#[derive(Debug, Default)]
pub struct Store {
    /// The last good contents of each file. Its objects are stamped with their generation
    /// in place when a snapshot is built, so the snapshot shares them without a copy.
    files: BTreeMap<PathBuf, FileContents>,
    errors: BTreeMap<PathBuf, Vec<DecodeError>>,
    /// Every object of the current snapshot, by key.
    generations: HashMap<ResourceKey, Seen>,
    /// The last snapshot. Shared with whoever took it, and copied on the next change only
    /// while they still hold it.
    current: Arc<Snapshot>,
    /// The copies after the first of each object defined more than once, as errors.
    duplicates: HashMap<ResourceKey, Vec<DecodeError>>,
    /// Whether `current` and `duplicates` reflect the files but for the `touched` keys;
    /// when not, the next snapshot is built from scratch.
    built: bool,
    /// Keys whose definitions changed since the last snapshot.
    touched: HashSet<ResourceKey>,
}

/// Beyond this many changed keys a snapshot is rebuilt rather than updated: each changed
/// key costs a pass over every object (a comparison of kinds, mostly), the rebuild one pass
/// that hashes and copies keys.
const MOST_TOUCHED: usize = 64;

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
            namespace: namespace.into(),
            name: name.into(),
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
            snapshot.place(object, false);
        }
        snapshot
    }

    /// Adds `object`; an object already under its key is replaced when `replace`, kept when
    /// not.
    fn place(&mut self, object: Object, replace: bool) {
        fn put<K: Ord, V>(map: &mut BTreeMap<K, V>, key: K, value: V, replace: bool) {
            if replace {
                map.insert(key, value);
            } else {
                map.entry(key).or_insert(value);
            }
        }
        let meta = object.meta();
        let name = meta.name.clone().unwrap_or_default();
        let namespaced = || ObjectName::new(meta.namespace.as_deref().unwrap_or_default(), &name);
        let r = replace;
        match &object {
            Object::GatewayClass(o) => put(&mut self.gateway_classes, name, o.clone(), r),
            Object::Gateway(o) => put(&mut self.gateways, namespaced(), o.clone(), r),
            Object::ListenerSet(o) => put(&mut self.listener_sets, namespaced(), o.clone(), r),
            Object::HttpRoute(o) => put(&mut self.http_routes, namespaced(), o.clone(), r),
            Object::GrpcRoute(o) => put(&mut self.grpc_routes, namespaced(), o.clone(), r),
            Object::TlsRoute(o) => put(&mut self.tls_routes, namespaced(), o.clone(), r),
            Object::TcpRoute(o) => put(&mut self.tcp_routes, namespaced(), o.clone(), r),
            Object::ReferenceGrant(o) => {
                put(&mut self.reference_grants, namespaced(), o.clone(), r)
            }
            Object::BackendTlsPolicy(o) => {
                put(&mut self.backend_tls_policies, namespaced(), o.clone(), r)
            }
            Object::Namespace(o) => put(&mut self.namespaces, name, o.clone(), r),
            Object::Service(o) => put(&mut self.services, namespaced(), o.clone(), r),
            Object::EndpointSlice(o) => put(&mut self.endpoint_slices, namespaced(), o.clone(), r),
            Object::Secret(o) => put(&mut self.secrets, namespaced(), o.clone(), r),
            Object::ConfigMap(o) => put(&mut self.config_maps, namespaced(), o.clone(), r),
            Object::EgressNetwork(o) => put(&mut self.egress_networks, namespaced(), o.clone(), r),
            Object::AuthenticationPolicy(o) => put(
                &mut self.authentication_policies,
                namespaced(),
                o.clone(),
                r,
            ),
            Object::RateLimitPolicy(o) => {
                put(&mut self.rate_limit_policies, namespaced(), o.clone(), r)
            }
            Object::HealthCheckPolicy(o) => {
                put(&mut self.health_check_policies, namespaced(), o.clone(), r)
            }
        }
    }

    /// Removes the object under `key`, if any.
    fn remove(&mut self, key: &ResourceKey) {
        let name = || ObjectName::new(&key.namespace, &key.name);
        match key.kind {
            Kind::GatewayClass => drop(self.gateway_classes.remove(&key.name)),
            Kind::Gateway => drop(self.gateways.remove(&name())),
            Kind::ListenerSet => drop(self.listener_sets.remove(&name())),
            Kind::HttpRoute => drop(self.http_routes.remove(&name())),
            Kind::GrpcRoute => drop(self.grpc_routes.remove(&name())),
            Kind::TlsRoute => drop(self.tls_routes.remove(&name())),
            Kind::TcpRoute => drop(self.tcp_routes.remove(&name())),
            Kind::ReferenceGrant => drop(self.reference_grants.remove(&name())),
            Kind::BackendTlsPolicy => drop(self.backend_tls_policies.remove(&name())),
            Kind::Namespace => drop(self.namespaces.remove(&key.name)),
            Kind::Service => drop(self.services.remove(&name())),
            Kind::EndpointSlice => drop(self.endpoint_slices.remove(&name())),
            Kind::Secret => drop(self.secrets.remove(&name())),
            Kind::ConfigMap => drop(self.config_maps.remove(&name())),
            Kind::EgressNetwork => drop(self.egress_networks.remove(&name())),
            Kind::AuthenticationPolicy => drop(self.authentication_policies.remove(&name())),
            Kind::RateLimitPolicy => drop(self.rate_limit_policies.remove(&name())),
            Kind::HealthCheckPolicy => drop(self.health_check_policies.remove(&name())),
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
                self.touch(&contents);
                if let Some(old) = self.files.insert(path.to_path_buf(), contents) {
                    self.touch(&old);
                }
            }
            Err(errors) => {
                self.errors.insert(path.to_path_buf(), errors);
            }
        }
    }

    /// Forgets a deleted file.
    pub fn remove_file(&mut self, path: &Path) {
        if let Some(old) = self.files.remove(path) {
            self.touch(&old);
        }
        self.errors.remove(path);
    }

    /// Notes that the definitions of the objects in `contents` changed.
    fn touch(&mut self, contents: &FileContents) {
        if !self.built {
            return;
        }
        if self.touched.len() + contents.objects.len() > MOST_TOUCHED {
            self.built = false;
            self.touched.clear();
            return;
        }
        for (object, _) in &contents.objects {
            self.touched.insert(object.key());
        }
    }

    /// Current errors of every file, plus objects defined twice, in file and line order.
    pub fn errors(&mut self) -> Vec<DecodeError> {
        self.refresh();
        let mut duplicates: Vec<_> = self.duplicates.values().flatten().cloned().collect();
        duplicates.sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
        let mut errors: Vec<_> = self.errors.values().flatten().cloned().collect();
        errors.extend(duplicates);
        errors
    }

    /// Skipped documents of every file.
    pub fn warnings(&self) -> Vec<Warning> {
        self.files
            .values()
            .flat_map(|c| c.warnings.iter().cloned())
            .collect()
    }

    /// The snapshot of the current contents, with generations assigned: an object keeps its
    /// generation while its spec is unchanged and gets the next one when the spec changes.
    /// Of an object defined more than once, the first definition in file order counts.
    pub fn snapshot(&mut self) -> Arc<Snapshot> {
        self.refresh();
        Arc::clone(&self.current)
    }

    /// Brings the snapshot and the duplicates up to date with the files.
    fn refresh(&mut self) {
        if self.built {
            let touched: Vec<_> = self.touched.drain().collect();
            for key in touched {
                self.update(key);
            }
        } else {
            self.rebuild();
        }
    }

    /// Builds the snapshot and the duplicates from every file.
    fn rebuild(&mut self) {
        self.duplicates = self.find_duplicates();
        let mut snapshot = Snapshot::default();
        let mut present: HashMap<ResourceKey, Seen> = HashMap::new();
        for contents in self.files.values_mut() {
            for (object, _) in &mut contents.objects {
                let key = object.key();
                if present.contains_key(&key) {
                    continue;
                }
                let generation = next_generation(self.generations.remove(&key), object);
                // A freshly read object is held by its file alone: stamped without a copy.
                stamp(object, generation);
                snapshot.place(object.clone(), true);
                let object = object.clone();
                present.insert(key, Seen { generation, object });
            }
        }
        self.generations = present;
        self.current = Arc::new(snapshot);
        self.touched.clear();
        self.built = true;
    }

    /// Every object defined more than once, with an error for each copy after the first.
    fn find_duplicates(&self) -> HashMap<ResourceKey, Vec<DecodeError>> {
        let mut duplicates: HashMap<ResourceKey, Vec<DecodeError>> = HashMap::new();
        // Keyed by borrowed names: a key is only built for a duplicate.
        let mut seen: HashMap<(Kind, &str, &str), (&Path, usize)> = HashMap::new();
        for (path, contents) in &self.files {
            for (object, line) in &contents.objects {
                let meta = object.meta();
                let id = (
                    object.kind(),
                    meta.namespace.as_deref().unwrap_or_default(),
                    meta.name.as_deref().unwrap_or_default(),
                );
                match seen.get(&id) {
                    Some(&first) => {
                        let key = object.key();
                        let error = duplicate_error(&key, first, path, *line);
                        duplicates.entry(key).or_default().push(error);
                    }
                    None => {
                        seen.insert(id, (path, *line));
                    }
                }
            }
        }
        duplicates
    }

    /// Brings the snapshot up to date for one key whose definitions changed.
    fn update(&mut self, key: ResourceKey) {
        // Every definition of the key, in file order: (file, line, index in the file).
        let mut definitions: Vec<(&PathBuf, usize, usize)> = Vec::new();
        for (path, contents) in &self.files {
            for (index, (object, line)) in contents.objects.iter().enumerate() {
                if is(object, &key) {
                    definitions.push((path, *line, index));
                }
            }
        }
        let copies: Vec<_> = match definitions.split_first() {
            Some((&(first, first_line, _), rest)) => rest
                .iter()
                .map(|&(path, line, _)| duplicate_error(&key, (first, first_line), path, line))
                .collect(),
            None => Vec::new(),
        };
        let winner = definitions
            .first()
            .map(|&(path, _, index)| (path.clone(), index));
        if copies.is_empty() {
            self.duplicates.remove(&key);
        } else {
            self.duplicates.insert(key.clone(), copies);
        }
        let previous = self.generations.remove(&key);
        let snapshot = Arc::make_mut(&mut self.current);
        let object = winner.and_then(|(path, index)| {
            let contents = self.files.get_mut(&path)?;
            contents.objects.get_mut(index).map(|(object, _)| object)
        });
        let Some(object) = object else {
            snapshot.remove(&key);
            return;
        };
        let generation = next_generation(previous, object);
        stamp(object, generation);
        snapshot.place(object.clone(), true);
        let object = object.clone();
        self.generations.insert(key, Seen { generation, object });
    }
}

/// Whether `object` has `key`, without building its key.
fn is(object: &Object, key: &ResourceKey) -> bool {
    let meta = object.meta();
    object.kind() == key.kind
        && meta.name.as_deref().unwrap_or_default() == key.name
        && meta.namespace.as_deref().unwrap_or_default() == key.namespace
}

/// The generation of `object`, given what the last snapshot held under its key.
fn next_generation(previous: Option<Seen>, object: &Object) -> i64 {
    match previous {
        // The very object of last time (metadata lives inside its allocation).
        Some(seen) if std::ptr::eq(seen.object.meta(), object.meta()) => seen.generation,
        Some(seen) => seen.generation + i64::from(!same_spec(&seen.object, object)),
        None => object.meta().generation.unwrap_or(1),
    }
}

/// The error for a second definition of `key` at `path:line`.
fn duplicate_error(
    key: &ResourceKey,
    (first, first_line): (&Path, usize),
    path: &Path,
    line: usize,
) -> DecodeError {
    DecodeError {
        file: path.to_path_buf(),
        line,
        path: String::new(),
        message: format!(
            "{key} is already defined at {}:{first_line}; this copy is ignored",
            first.display()
        ),
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

    /// The snapshot kept up to date file by file equals the one built from scratch, after
    /// every step of a long sequence of edits, removals and broken files whose objects
    /// overlap across files.
    #[test]
    fn updating_the_snapshot_agrees_with_rebuilding_it() {
        let route = |host: &str| ROUTE.replace("LABEL", "x").replace("HOST", host);
        let service = |port: u16| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: default}}\nspec: {{ports: [{{port: {port}}}]}}\n"
            )
        };
        let variants = [
            route("one.example"),
            route("two.example"),
            service(80),
            format!("{}---\n{}", service(81), route("three.example")),
            format!("{}---\n{}", route("four.example"), route("five.example")),
            route("one.example").replace("name: r,", "name: q,"),
            "kind: [not yaml".to_string(),
        ];
        let files = ["a.yaml", "b.yaml", "c.yaml"];
        let mut store = Store::default();
        let mut seed = 7u32;
        let mut next = |bound: usize| {
            seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (seed >> 16) as usize % bound
        };
        for step in 0..300 {
            let path = Path::new(files[next(files.len())]);
            match next(variants.len() + 1) {
                0 => store.remove_file(path),
                n => store.set_file(path, crate::decode::decode_file(path, &variants[n - 1])),
            }
            let updated = store.snapshot();
            let updated_errors = store.errors();
            store.built = false;
            let rebuilt = store.snapshot();
            assert_eq!(
                format!("{updated:?}"),
                format!("{rebuilt:?}"),
                "step {step}"
            );
            assert_eq!(updated_errors, store.errors(), "step {step}");
        }
    }
}
