//! Writing status back to the cluster: server-side apply on the status subresource, only
//! for objects whose status changed, only while this replica leads. The same task applies
//! the objects provisioned for Gateways (`translate::provision`), which are owned by
//! their Gateway and simply applied.
//!
//! The input is the binary's status document (one JSON object per resource, with
//! `apiVersion`, `kind`, `metadata` and the `status` translate computed). For each object
//! the writer reads the current status, merges (see [`patch_body`]) and applies with field
//! manager `portcullis`. Desired statuses travel through a `watch` channel: a bounded
//! queue of one that always holds the newest set, so a slow API server delays status but
//! never makes it stale; superseded sets are counted.
//!
//! Route `status.parents` is an atomic list in the Gateway API CRDs
//! (`x-kubernetes-list-type: atomic`), so server-side apply cannot keep other controllers'
//! entries by field ownership: whoever applies owns the whole list. The writer therefore
//! copies the entries of other controllers from the object it just read, and sends the
//! read `resourceVersion` with the apply, so a concurrent change makes the API server
//! answer 409 and the write is retried on fresh data instead of erasing it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use ::kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use model::Kind;
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use super::Watched;

/// Field manager of every status write.
pub const FIELD_MANAGER: &str = "portcullis";

/// How long to wait before retrying failed writes.
const RETRY: Duration = Duration::from_secs(5);

/// How often everything is compared with the cluster again.
const RESYNC: Duration = Duration::from_secs(600);

/// Counters of the status writer.
#[derive(Debug, Default)]
pub struct StatusMetrics {
    /// Status applies sent and accepted.
    pub writes: AtomicU64,
    /// Objects whose cluster status already matched.
    pub unchanged: AtomicU64,
    /// Reads or writes that failed (retried later).
    pub failures: AtomicU64,
    /// Desired sets replaced by a newer one before the writer took them.
    pub superseded: AtomicU64,
    /// Provisioned objects applied.
    pub provisioned: AtomicU64,
    /// A submitted set waits for the writer.
    pending: AtomicBool,
}

/// The handle that the control loop submits desired status through.
#[derive(Clone, Debug)]
pub struct StatusWriter {
    desired: watch::Sender<Desired>,
    metrics: Arc<StatusMetrics>,
}

/// What the writer brings the cluster to.
#[derive(Clone, Debug, Default)]
struct Desired {
    /// Status document objects.
    status: Arc<Vec<Value>>,
    /// Provisioned objects (apply bodies).
    provisioned: Arc<Vec<Value>>,
}

/// An error of one write.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("status document object has no {0}")]
    Malformed(&'static str),
    #[error("{0} is not a kind whose status portcullis writes")]
    NotWatched(String),
    #[error("{0} is not a kind portcullis provisions")]
    NotProvisioned(String),
    #[error(transparent)]
    Api(#[from] ::kube::Error),
}

// === impl StatusWriter ===

impl StatusWriter {
    /// Starts the writer task. It writes only while `leader` holds `true`; `controller` is
    /// our controllerName, which marks our entries in route status.
    pub fn spawn(
        client: ::kube::Client,
        controller: String,
        leader: watch::Receiver<bool>,
    ) -> Self {
        let (desired, desired_rx) = watch::channel(Desired::default());
        let metrics = Arc::new(StatusMetrics::default());
        let task = Task {
            client,
            controller,
            leader,
            desired: desired_rx,
            metrics: metrics.clone(),
            written: HashMap::new(),
            applied: HashMap::new(),
        };
        tokio::spawn(task.run());
        Self { desired, metrics }
    }

    /// Hands over the newest status document objects; a set the writer has not taken yet
    /// is replaced (and counted as superseded).
    pub fn submit(&self, objects: Vec<Value>) {
        if self.metrics.pending.swap(true, Ordering::AcqRel) {
            self.metrics.superseded.fetch_add(1, Ordering::Relaxed);
        }
        self.desired
            .send_modify(|desired| desired.status = Arc::new(objects));
    }

    /// Hands over the newest provisioned objects (apply bodies of `translate::provision`).
    pub fn provision(&self, objects: Vec<Value>) {
        self.desired
            .send_modify(|desired| desired.provisioned = Arc::new(objects));
    }

    /// The writer's counters.
    pub fn metrics(&self) -> &Arc<StatusMetrics> {
        &self.metrics
    }
}

/// The writer task's state.
struct Task {
    client: ::kube::Client,
    controller: String,
    leader: watch::Receiver<bool>,
    desired: watch::Receiver<Desired>,
    metrics: Arc<StatusMetrics>,
    /// The desired status last written (or found already in place), per object.
    written: HashMap<(String, String, String), Value>,
    /// The provisioned objects last applied.
    applied: HashMap<(String, String, String), Value>,
}

impl Task {
    async fn run(mut self) {
        let mut retry = false;
        let mut resync = tokio::time::interval_at(tokio::time::Instant::now() + RESYNC, RESYNC);
        loop {
            let wait_retry = async {
                if retry {
                    tokio::time::sleep(RETRY).await;
                } else {
                    std::future::pending::<()>().await;
                }
            };
            tokio::select! {
                changed = self.desired.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                changed = self.leader.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    // Another replica may have written while we did not lead.
                    self.written.clear();
                    self.applied.clear();
                }
                _ = resync.tick() => {
                    // Someone else may have changed what we wrote: compare again.
                    self.written.clear();
                    self.applied.clear();
                }
                () = wait_retry => {}
            }
            retry = self.write_all().await;
        }
    }

    /// Writes every object whose desired status differs from what was last written.
    /// Returns whether some write failed.
    async fn write_all(&mut self) -> bool {
        let desired = self.desired.borrow_and_update().clone();
        self.metrics.pending.store(false, Ordering::Release);
        let mut failed = false;
        for object in desired.provisioned.iter() {
            if !*self.leader.borrow() {
                return false;
            }
            let Some(key) = key_of(object) else { continue };
            if self.applied.get(&key) == Some(object) {
                continue;
            }
            match self.apply(object).await {
                Ok(()) => {
                    self.applied.insert(key, object.clone());
                }
                Err(error) => {
                    failed = true;
                    self.metrics.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        kind = %key.0, namespace = %key.1, name = %key.2, %error,
                        "cannot apply a provisioned object; will retry"
                    );
                }
            }
        }
        for object in desired.status.iter() {
            if !*self.leader.borrow() {
                return false;
            }
            let Some(key) = key_of(object) else { continue };
            let status = object.get("status").cloned().unwrap_or(Value::Null);
            if !writable(&key.0, &status) || self.written.get(&key) == Some(&status) {
                continue;
            }
            match self.write(object).await {
                Ok(()) => {
                    self.written.insert(key, status);
                }
                Err(error) => {
                    failed = true;
                    self.metrics.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        kind = %key.0, namespace = %key.1, name = %key.2, %error,
                        "cannot write status; will retry"
                    );
                }
            }
        }
        failed
    }

    /// Applies a provisioned object as a whole.
    async fn apply(&self, object: &Value) -> Result<(), WriteError> {
        let kind = str_at(object, "kind").ok_or(WriteError::Malformed("kind"))?;
        let resource = match (str_at(object, "apiVersion"), kind) {
            (Some("apps/v1"), "Deployment") => ("apps", "deployments"),
            (Some("v1"), "Service") => ("", "services"),
            _ => return Err(WriteError::NotProvisioned(kind.to_string())),
        };
        let resource = ApiResource {
            group: resource.0.to_string(),
            version: "v1".to_string(),
            api_version: str_at(object, "apiVersion").unwrap_or_default().to_string(),
            kind: kind.to_string(),
            plural: resource.1.to_string(),
        };
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .ok_or(WriteError::Malformed("metadata.name"))?;
        let namespace = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .ok_or(WriteError::Malformed("metadata.namespace"))?;
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &resource);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(name, &params, &Patch::Apply(object)).await?;
        self.metrics.provisioned.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn write(&self, object: &Value) -> Result<(), WriteError> {
        let kind_name = str_at(object, "kind").ok_or(WriteError::Malformed("kind"))?;
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .ok_or(WriteError::Malformed("metadata.name"))?;
        let namespace = object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str);
        let watched = crate::kube::WATCHED
            .iter()
            .find(|w| w.kind.as_str() == kind_name && w.writes_status())
            .ok_or_else(|| WriteError::NotWatched(kind_name.to_string()))?;
        let api = api_for(&self.client, watched, namespace);
        let current = match api.get_status(name).await {
            Ok(current) => current,
            // Deleted since the snapshot: nothing to write.
            Err(::kube::Error::Api(status)) if status.code == 404 => return Ok(()),
            Err(error) => return Err(error.into()),
        };
        let current = serde_json::to_value(&current).unwrap_or(Value::Null);
        let Some(body) = patch_body(watched, &current, object, &self.controller) else {
            self.metrics.unchanged.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        };
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch_status(name, &params, &Patch::Apply(&body))
            .await?;
        self.metrics.writes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// The server-side apply body that brings `current` (the object as read from the API
/// server) to the status in `desired` (a status document object), or `None` when the
/// cluster already shows it.
///
/// - A condition keeps the cluster's `lastTransitionTime` while its status is unchanged
///   ("lastTransitionTime is the last time the condition transitioned from one status to
///   another", `metav1.Condition`), so a restart or a new leader does not reset times.
/// - Route `status.parents` (and policy `status.ancestors`): the entries whose
///   `controllerName` is not ours are copied from `current` (the list is atomic); ours are
///   replaced by the desired ones. "Implementations
///   MUST ... only add or remove entries for parents they manage" (RouteStatus.parents).
/// - `metadata.resourceVersion` of `current` is sent, making the apply conditional.
pub fn patch_body(
    watched: &Watched,
    current: &Value,
    desired: &Value,
    controller: &str,
) -> Option<Value> {
    let current_status = current.get("status").cloned().unwrap_or(json!({}));
    let mut status = desired.get("status").cloned().unwrap_or(json!({}));
    match watched.kind {
        Kind::HttpRoute | Kind::GrpcRoute | Kind::TlsRoute | Kind::TcpRoute => {
            merge_entries(
                &mut status,
                &current_status,
                controller,
                ("parents", "parentRef"),
            );
        }
        Kind::BackendTlsPolicy => {
            let list = ("ancestors", "ancestorRef");
            merge_entries(&mut status, &current_status, controller, list);
        }
        _ => {
            keep_times(
                status.get_mut("conditions"),
                current_status.get("conditions"),
            );
            keep_listener_times(&mut status, &current_status);
        }
    }
    if shown(&current_status, &status) {
        return None;
    }
    let mut metadata = Map::new();
    for field in ["name", "namespace"] {
        if let Some(value) = desired.pointer(&format!("/metadata/{field}")) {
            metadata.insert(field.into(), value.clone());
        }
    }
    if let Some(version) = current.pointer("/metadata/resourceVersion") {
        metadata.insert("resourceVersion".into(), version.clone());
    }
    Some(json!({
        "apiVersion": watched.api_version(),
        "kind": watched.kind.as_str(),
        "metadata": metadata,
        "status": status,
    }))
}

/// Only statuses this controller has an opinion on are written: routes always (their
/// entries of ours may need removing), other kinds when translate gave them conditions.
fn writable(kind: &str, status: &Value) -> bool {
    match kind {
        "HTTPRoute" | "GRPCRoute" | "TLSRoute" | "TCPRoute" => true,
        _ => status
            .get("conditions")
            .and_then(Value::as_array)
            .is_some_and(|c| !c.is_empty()),
    }
}

fn key_of(object: &Value) -> Option<(String, String, String)> {
    Some((
        str_at(object, "kind")?.to_string(),
        object
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        object.pointer("/metadata/name")?.as_str()?.to_string(),
    ))
}

fn str_at<'a>(value: &'a Value, field: &str) -> Option<&'a str> {
    value.get(field).and_then(Value::as_str)
}

fn api_for(
    client: &::kube::Client,
    watched: &Watched,
    namespace: Option<&str>,
) -> Api<DynamicObject> {
    let resource = watched.api_resource();
    match namespace {
        Some(namespace) if watched.kind.namespaced() => {
            Api::namespaced_with(client.clone(), namespace, &resource)
        }
        _ => Api::all_with(client.clone(), &resource),
    }
}

/// Our entries of an atomic per-controller list (route `status.parents` keyed by
/// `parentRef`, policy `status.ancestors` keyed by `ancestorRef`) replace our old ones; other
/// controllers' entries stay, first, as they were.
fn merge_entries(status: &mut Value, current: &Value, controller: &str, (list, key): (&str, &str)) {
    let ours = |entry: &Value| str_at(entry, "controllerName") == Some(controller);
    let current_entries: Vec<&Value> = current
        .get(list)
        .and_then(Value::as_array)
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    let mut desired = status
        .get(list)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for entry in &mut desired {
        let previous = current_entries
            .iter()
            .find(|p| ours(p) && p.get(key) == entry.get(key));
        keep_times(
            entry.get_mut("conditions"),
            previous.and_then(|p| p.get("conditions")),
        );
    }
    let mut entries: Vec<Value> = current_entries
        .iter()
        .filter(|p| !ours(p))
        .map(|p| (*p).clone())
        .collect();
    entries.extend(desired);
    status[list] = Value::Array(entries);
}

fn keep_listener_times(status: &mut Value, current: &Value) {
    let Some(listeners) = status.get_mut("listeners").and_then(Value::as_array_mut) else {
        return;
    };
    for listener in listeners {
        let previous = current
            .get("listeners")
            .and_then(Value::as_array)
            .and_then(|l| l.iter().find(|p| p.get("name") == listener.get("name")));
        keep_times(
            listener.get_mut("conditions"),
            previous.and_then(|p| p.get("conditions")),
        );
    }
}

/// Copies `lastTransitionTime` from the current condition of the same type when the
/// status is the same.
fn keep_times(desired: Option<&mut Value>, current: Option<&Value>) {
    let (Some(desired), Some(current)) = (
        desired.and_then(Value::as_array_mut),
        current.and_then(Value::as_array),
    ) else {
        return;
    };
    for condition in desired {
        let previous = current
            .iter()
            .find(|c| c.get("type") == condition.get("type"));
        if let Some(previous) = previous
            && previous.get("status") == condition.get("status")
            && let Some(time) = previous.get("lastTransitionTime")
        {
            condition["lastTransitionTime"] = time.clone();
        }
    }
}

/// Whether the cluster's status already shows every field of `desired`. Conditions are a
/// map keyed by type in the CRDs, so other managers may hold more of them.
fn shown(current: &Value, desired: &Value) -> bool {
    match (current, desired) {
        (Value::Object(current), Value::Object(desired)) => desired.iter().all(|(key, value)| {
            current.get(key).is_some_and(|c| {
                if key == "conditions" {
                    conditions_shown(c, value)
                } else {
                    shown(c, value)
                }
            })
        }),
        (Value::Array(current), Value::Array(desired)) => {
            current.len() == desired.len() && current.iter().zip(desired).all(|(c, d)| shown(c, d))
        }
        _ => current == desired,
    }
}

fn conditions_shown(current: &Value, desired: &Value) -> bool {
    let (Some(current), Some(desired)) = (current.as_array(), desired.as_array()) else {
        return current == desired;
    };
    desired.iter().all(|d| {
        current
            .iter()
            .any(|c| c.get("type") == d.get("type") && shown(c, d))
    })
}
