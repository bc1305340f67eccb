//! The decoded contents of every watched kind, fed by watcher events.
//!
//! kube-rs's `reflector::Store` keeps raw objects of one type; portcullis needs decoded
//! `model::Object`s of many kinds, the decode errors of the ones that failed, and one
//! readiness flag across all kinds. That is this small map, driven by the same
//! `Init`/`InitApply`/`InitDone` protocol a reflector follows.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ::kube::api::DynamicObject;
use ::kube::runtime::watcher;
use model::decode::{DecodeError, Warning};
use model::{Kind, Object, ObjectName, Snapshot};
use serde_json::Value;

use super::{ClusterState, Source, WatchItem, Watched};

/// Annotation that repeats the whole object; never read, so never kept.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// `namespace/name` (namespace empty for cluster-scoped kinds).
type Name = (String, String);

/// Objects of every watched kind.
#[derive(Debug)]
pub(super) struct ClusterStore {
    kinds: BTreeMap<Kind, KindState>,
    /// Objects watched one by one because something names them (see
    /// `Watched::referenced`), with the generation of the watch that feeds each.
    refs: BTreeMap<(Kind, ObjectName), (u64, KindState)>,
}

/// One kind's objects and its sync state.
#[derive(Debug)]
struct KindState {
    api_version: String,
    /// The initial list finished (or the kind is not served).
    synced: bool,
    /// The API server answered 404: the CRD is not installed.
    missing: bool,
    current: Entries,
    /// Objects of a (re)list in progress; they replace `current` at `InitDone`.
    relist: Option<Entries>,
}

#[derive(Debug, Default)]
struct Entries {
    objects: BTreeMap<Name, Object>,
    errors: BTreeMap<Name, Vec<DecodeError>>,
}

// === impl ClusterStore ===

impl ClusterStore {
    /// An empty store for these kinds; none is synced yet.
    pub(super) fn new(kinds: &[Watched]) -> Self {
        let kinds = kinds
            .iter()
            .map(|w| {
                let mut state = KindState::new(w.api_version());
                // Nothing to list for a kind read only by reference.
                state.synced = !w.blanket;
                (w.kind, state)
            })
            .collect();
        Self {
            kinds,
            refs: BTreeMap::new(),
        }
    }

    /// Applies one watcher item; returns whether the published state changes.
    pub(super) fn apply(&mut self, source: Source, item: WatchItem) -> bool {
        let kind = match source {
            Source::Kind(kind) => kind,
            Source::Ref(key, generation) => {
                return match self.refs.get_mut(&key) {
                    Some((current, state)) if *current == generation => {
                        state.referenced_event(&key, item)
                    }
                    // A watch that was replaced or dropped: its events are stale.
                    _ => false,
                };
            }
        };
        let Some(state) = self.kinds.get_mut(&kind) else {
            return false;
        };
        match item {
            Ok(event) => state.event(kind, event),
            Err(error) if not_found(&error) => {
                if state.synced {
                    tracing::debug!(%kind, "kind is still not served");
                    return false;
                }
                tracing::warn!(
                    %kind,
                    api_version = %state.api_version,
                    "the API server does not serve this kind (CRD not installed?); treating it \
                     as empty"
                );
                state.synced = true;
                state.missing = true;
                true
            }
            Err(error) => {
                tracing::warn!(%kind, %error, "watch failed; retrying with backoff");
                false
            }
        }
    }

    /// Whether every kind finished its initial list (objects read by reference aside).
    pub(super) fn kinds_ready(&self) -> bool {
        self.kinds.values().all(|k| k.synced)
    }

    /// Whether every kind and every referenced object finished its initial list.
    pub(super) fn ready(&self) -> bool {
        self.kinds_ready() && self.refs.values().all(|(_, r)| r.synced)
    }

    /// Whether a kind's own watch holds this object (then no watch of its own is needed).
    pub(super) fn holds(&self, kind: Kind, name: &ObjectName) -> bool {
        self.kinds.get(&kind).is_some_and(|k| {
            k.current
                .objects
                .contains_key(&(name.namespace.to_string(), name.name.to_string()))
        })
    }

    /// Starts tracking a referenced object fed by the watch of this generation; it is not
    /// synced until that watch's first list ends.
    pub(super) fn add_ref(&mut self, key: (Kind, ObjectName), generation: u64) {
        let api_version = self
            .kinds
            .get(&key.0)
            .map(|k| k.api_version.clone())
            .unwrap_or_default();
        self.refs
            .insert(key, (generation, KindState::new(api_version)));
    }

    /// Forgets a referenced object; returns whether it held anything.
    pub(super) fn remove_ref(&mut self, key: &(Kind, ObjectName)) -> bool {
        self.refs.remove(key).is_some_and(|(_, state)| {
            !state.current.objects.is_empty() || !state.current.errors.is_empty()
        })
    }

    /// The current objects as a snapshot, with decode errors and warnings.
    pub(super) fn state(&self) -> ClusterState {
        let states = || {
            self.kinds
                .values()
                .chain(self.refs.values().map(|(_, state)| state))
        };
        let objects = states().flat_map(|k| k.current.objects.values().cloned());
        let errors = states()
            .flat_map(|k| k.current.errors.values().flatten().cloned())
            .collect();
        let warnings = self
            .kinds
            .iter()
            .filter(|(_, k)| k.missing)
            .map(|(kind, k)| Warning {
                file: PathBuf::from(format!("{kind}")),
                line: 0,
                message: format!(
                    "{} {kind} is not served by the API server (CRD not installed?); no \
                     {kind} objects are read",
                    k.api_version
                ),
            })
            .collect();
        ClusterState {
            snapshot: Snapshot::from_objects(objects),
            errors,
            warnings,
        }
    }
}

// === impl KindState ===

impl KindState {
    fn new(api_version: String) -> Self {
        Self {
            api_version,
            synced: false,
            missing: false,
            current: Entries::default(),
            relist: None,
        }
    }

    /// An item of the watch of one referenced object. A failing first list (the namespace
    /// is forbidden, say) counts as an empty list, so that one bad reference does not hold
    /// back every later snapshot; the watch keeps retrying.
    fn referenced_event(&mut self, key: &(Kind, ObjectName), item: WatchItem) -> bool {
        let (kind, name) = key;
        match item {
            Ok(event) => self.event(*kind, event),
            Err(error) => {
                tracing::warn!(%kind, object = %name, %error, "watch of a referenced object failed; retrying with backoff");
                let first = !self.synced;
                self.synced = true;
                first
            }
        }
    }

    fn event(&mut self, kind: Kind, event: watcher::Event<DynamicObject>) -> bool {
        match event {
            watcher::Event::Init => {
                self.relist = Some(Entries::default());
                false
            }
            watcher::Event::InitApply(object) => {
                let (name, decoded) = decode(kind, &self.api_version, object);
                self.relist.get_or_insert_default().insert(name, decoded);
                false
            }
            watcher::Event::InitDone => {
                self.current = self.relist.take().unwrap_or_default();
                self.synced = true;
                self.missing = false;
                true
            }
            watcher::Event::Apply(object) => {
                let (name, decoded) = decode(kind, &self.api_version, object);
                self.current.insert(name, decoded);
                self.synced
            }
            watcher::Event::Delete(object) => {
                let name = name_of(&object);
                let removed = self.current.objects.remove(&name).is_some();
                let had_errors = self.current.errors.remove(&name).is_some();
                self.synced && (removed || had_errors)
            }
        }
    }
}

// === impl Entries ===

impl Entries {
    fn insert(&mut self, name: Name, decoded: Result<Option<Object>, Vec<DecodeError>>) {
        match decoded {
            Ok(Some(object)) => {
                self.errors.remove(&name);
                self.objects.insert(name, object);
            }
            Ok(None) => {
                self.errors.remove(&name);
                self.objects.remove(&name);
            }
            Err(errors) => {
                for error in &errors {
                    tracing::warn!(%error, "object does not decode; it is left out");
                }
                self.objects.remove(&name);
                self.errors.insert(name, errors);
            }
        }
    }
}

fn name_of(object: &DynamicObject) -> Name {
    (
        object.metadata.namespace.clone().unwrap_or_default(),
        object.metadata.name.clone().unwrap_or_default(),
    )
}

/// Decodes a watched object through `model::decode`, as a manifest file would be: the
/// object is written out as indented JSON (which is YAML), so error lines point into it.
/// Errors name the object as `Kind namespace/name` in place of a file.
pub(super) fn decode(
    kind: Kind,
    api_version: &str,
    object: DynamicObject,
) -> (Name, Result<Option<Object>, Vec<DecodeError>>) {
    let name = name_of(&object);
    let origin = PathBuf::from(match name.0.as_str() {
        "" => format!("{kind} {}", name.1),
        namespace => format!("{kind} {namespace}/{}", name.1),
    });
    let mut object = object;
    object.metadata.managed_fields = None;
    if let Some(annotations) = object.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            object.metadata.annotations = None;
        }
    }
    let mut value = match serde_json::to_value(&object) {
        Ok(value) => value,
        Err(error) => return (name, Err(vec![whole(&origin, error.to_string())])),
    };
    // List items of built-in kinds come without apiVersion and kind.
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), Value::from(api_version));
        map.insert("kind".into(), Value::from(kind.as_str()));
    }
    let mut decoded = decode_value(&origin, &value);
    // Core kinds come from an API server that may be newer than our k8s-openapi types: a
    // field we do not know is one we do not need, not an invalid object. Gateway API
    // objects keep strict decoding, as in files: an unknown field there may change routing.
    if kind.group() != model::GATEWAY_GROUP
        && let Err(errors) = &decoded
        && errors.iter().all(|e| e.message == UNKNOWN_FIELD)
    {
        for error in errors {
            tracing::debug!(%error, "ignoring a field newer than portcullis's Kubernetes types");
            remove_path(&mut value, &error.path);
        }
        decoded = decode_value(&origin, &value);
    }
    (name, decoded)
}

/// `model::decode`'s message for a field outside the schema.
const UNKNOWN_FIELD: &str = "unknown field (not in the resource's schema)";

fn decode_value(origin: &Path, value: &Value) -> Result<Option<Object>, Vec<DecodeError>> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|error| vec![whole(origin, error.to_string())])?;
    model::decode::decode_file(origin, &text).map(|contents| {
        contents
            .objects
            .into_iter()
            .next()
            .map(|(object, _)| object)
    })
}

/// Removes the field at a `model::decode` path such as `spec.ports[0].name`.
fn remove_path(value: &mut Value, path: &str) {
    let mut segments: Vec<Segment<'_>> = Vec::new();
    for part in path.split('.') {
        let (field, indexes) = part.split_once('[').unwrap_or((part, ""));
        if !field.is_empty() {
            segments.push(Segment::Field(field));
        }
        for index in indexes.split('[') {
            if let Ok(index) = index.trim_end_matches(']').parse() {
                segments.push(Segment::Index(index));
            }
        }
    }
    let Some((last, parents)) = segments.split_last() else {
        return;
    };
    let mut current = value;
    for segment in parents {
        let next = match segment {
            Segment::Field(field) => current.get_mut(*field),
            Segment::Index(index) => current.get_mut(*index),
        };
        match next {
            Some(next) => current = next,
            None => return,
        }
    }
    if let (Segment::Field(field), Some(map)) = (last, current.as_object_mut()) {
        map.remove(*field);
    }
}

/// One step of a field path.
enum Segment<'a> {
    Field(&'a str),
    Index(usize),
}

fn whole(origin: &Path, message: String) -> DecodeError {
    DecodeError {
        file: origin.to_path_buf(),
        line: 0,
        path: String::new(),
        message,
    }
}

/// Whether a watch error is the API server saying the resource does not exist.
fn not_found(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(::kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(::kube::Error::Api(status)) => status.code == 404,
        _ => false,
    }
}
