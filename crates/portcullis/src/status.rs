//! Publishing status: the document served at `/status` and printed by `check`.
//!
//! Translate has no clock, so `lastTransitionTime` is stamped here: a condition keeps its
//! time while its status stays the same, as the API server's convention requires.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use model::decode::{DecodeError, Warning};
use model::status::{ConditionStatus, ResourceStatus, StatusSet};
use model::{Kind, ResourceKey, Snapshot};
use serde::Serialize;
use serde_json::{Value, json};

/// The status document: every Gateway API object with its status, plus manifest problems.
#[derive(Debug, Clone, Serialize, Default)]
pub struct StatusDocument {
    /// Objects with `apiVersion`, `kind`, `metadata` and `status`.
    pub objects: Vec<Value>,
    /// Files that do not decode (their last good version is in use).
    pub errors: Vec<ErrorView>,
    /// Skipped documents.
    pub warnings: Vec<String>,
}

/// One manifest error.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorView {
    /// The file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// Field path.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Remembers when each condition last changed.
#[derive(Debug, Default)]
pub struct Stamper {
    /// Each resource's conditions, by index: status and time of the last change, and the
    /// round that last saw the resource. Updated in place: a reload of thousands of
    /// resources allocates only for new ones. Hashed with foldhash rather than SipHash (the
    /// keys are the config's names): SipHash was a quarter of stamping 5,000 routes.
    seen: HashMap<ResourceKey, Seen, foldhash::fast::RandomState>,
    round: u64,
}

#[derive(Debug, Default)]
struct Seen {
    round: u64,
    times: Vec<(ConditionStatus, Arc<str>)>,
}

impl Stamper {
    /// Sets `lastTransitionTime` on every condition, keeping the previous time of conditions
    /// whose status did not change.
    pub fn stamp(&mut self, status: &mut StatusSet, now: &str) {
        let now: Arc<str> = Arc::from(now);
        self.round += 1;
        for (key, resource) in &mut status.0 {
            // One search for a key seen before; the key is cloned only for a new one.
            let seen = match self.seen.get_mut(key) {
                Some(seen) => seen,
                None => self.seen.entry(key.clone()).or_default(),
            };
            seen.round = self.round;
            let conditions = resource.conditions_mut();
            seen.times.truncate(conditions.len());
            for (index, condition) in conditions.into_iter().enumerate() {
                match seen.times.get_mut(index) {
                    Some((status, _)) if *status == condition.status => {}
                    Some(slot) => *slot = (condition.status, now.clone()),
                    None => seen.times.push((condition.status, now.clone())),
                }
                condition.last_transition_time = seen.times.get(index).map(|(_, t)| t.clone());
            }
        }
        let round = self.round;
        self.seen.retain(|_, seen| seen.round == round);
    }

    /// Sets `lastTransitionTime` on every condition of a status translated again from the
    /// last stamped round's inputs: the same conditions, so each gets its remembered time.
    /// The admin server runs on the control loop's thread, so no reload stamps a newer
    /// round between a reload's stamping and its admin state, or during a render.
    pub fn fill(&self, status: &mut StatusSet) {
        for (key, resource) in &mut status.0 {
            let times = self.seen.get(key).map(|seen| &seen.times[..]);
            for (index, condition) in resource.conditions_mut().into_iter().enumerate() {
                condition.last_transition_time = times
                    .and_then(|times| times.get(index))
                    .map(|(_, time)| time.clone());
            }
        }
    }
}

/// What the status document is built from, kept so that `/status` renders it on request:
/// the snapshot and the options it was translated with, since translating is a pure
/// function and cheaper to repeat on request than the status of every resource is to keep.
#[derive(Debug, Default)]
pub struct StatusInputs {
    /// The translated resources (shared with the store that made them).
    pub snapshot: Arc<Snapshot>,
    /// The options they were translated with.
    pub options: translate::Options,
    /// When each condition last changed (shared with the reconciler).
    pub times: Arc<Mutex<Stamper>>,
    /// Manifest errors.
    pub errors: Vec<DecodeError>,
    /// Skipped documents.
    pub warnings: Vec<Warning>,
}

impl StatusInputs {
    /// The status document.
    pub fn document(&self) -> StatusDocument {
        let mut status = translate::translate(&self.snapshot, &self.options).status;
        let times = self.times.lock().unwrap_or_else(PoisonError::into_inner);
        times.fill(&mut status);
        drop(times);
        document(&self.snapshot, &status, &self.errors, &self.warnings)
    }
}

/// Builds the status document.
pub fn document(
    snapshot: &Snapshot,
    status: &StatusSet,
    errors: &[DecodeError],
    warnings: &[Warning],
) -> StatusDocument {
    let mut objects = Vec::new();
    let mut push = |kind: Kind, meta: &model::k8s::ObjectMeta| {
        let key = ResourceKey::new(
            kind,
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default(),
        );
        let status = match status.0.get(&key) {
            Some(resource) => serde_json::to_value(resource).unwrap_or(Value::Null),
            None if matches!(
                kind,
                Kind::HttpRoute | Kind::GrpcRoute | Kind::TlsRoute | Kind::TcpRoute
            ) =>
            {
                json!({"parents": []})
            }
            None if kind == Kind::BackendTlsPolicy => json!({"ancestors": []}),
            None => json!({}),
        };
        let mut metadata = json!({"name": key.name, "generation": meta.generation.unwrap_or(1)});
        if kind.namespaced() {
            metadata["namespace"] = json!(key.namespace);
        }
        objects.push(json!({
            "apiVersion": kind.api_version(),
            "kind": kind.as_str(),
            "metadata": metadata,
            "status": status,
        }));
    };
    for class in snapshot.gateway_classes.values() {
        push(Kind::GatewayClass, &class.metadata);
    }
    for gateway in snapshot.gateways.values() {
        push(Kind::Gateway, &gateway.metadata);
    }
    for set in snapshot.listener_sets.values() {
        push(Kind::ListenerSet, &set.metadata);
    }
    for route in snapshot.http_routes.values() {
        push(Kind::HttpRoute, &route.metadata);
    }
    for route in snapshot.grpc_routes.values() {
        push(Kind::GrpcRoute, &route.metadata);
    }
    for route in snapshot.tls_routes.values() {
        push(Kind::TlsRoute, &route.metadata);
    }
    for route in snapshot.tcp_routes.values() {
        push(Kind::TcpRoute, &route.metadata);
    }
    for policy in snapshot.backend_tls_policies.values() {
        push(Kind::BackendTlsPolicy, &policy.metadata);
    }
    StatusDocument {
        objects,
        errors: errors
            .iter()
            .map(|e| ErrorView {
                file: e.file.display().to_string(),
                line: e.line,
                path: e.path.clone(),
                message: e.message.clone(),
            })
            .collect(),
        warnings: warnings.iter().map(ToString::to_string).collect(),
    }
}

/// Whether a resource's status says it is not accepted (used by `check`'s exit code): its
/// own `Accepted` condition, or for routes any parent's. A Gateway or ListenerSet with some
/// invalid listeners is still accepted; those listeners show in the table.
pub fn rejected(resource: &ResourceStatus) -> bool {
    let own: Vec<&model::status::Condition> = match resource {
        ResourceStatus::GatewayClass { conditions }
        | ResourceStatus::Conditions { conditions }
        | ResourceStatus::Gateway { conditions, .. }
        | ResourceStatus::ListenerSet { conditions, .. } => conditions.iter().collect(),
        ResourceStatus::Route { parents } => parents.iter().flat_map(|p| &p.conditions).collect(),
        ResourceStatus::Policy { ancestors } => {
            ancestors.iter().flat_map(|a| &a.conditions).collect()
        }
    };
    own.iter().any(|c| {
        c.kind == model::status::ConditionType::Accepted && c.status == ConditionStatus::False
    })
}

#[cfg(test)]
mod tests {
    use model::status::{Condition, ConditionType, Reason};

    use super::*;

    fn set(holds: bool) -> StatusSet {
        let mut status = StatusSet::default();
        status.0.insert(
            ResourceKey::new(Kind::GatewayClass, "", "c"),
            ResourceStatus::GatewayClass {
                conditions: vec![Condition::new(
                    ConditionType::Accepted,
                    holds,
                    Reason::Accepted,
                    "",
                    1,
                )],
            },
        );
        status
    }

    fn time(status: &StatusSet) -> Option<String> {
        status
            .0
            .values()
            .next()?
            .conditions()
            .first()?
            .last_transition_time
            .as_deref()
            .map(str::to_owned)
    }

    #[test]
    fn transition_time_changes_only_with_the_status() {
        let mut stamper = Stamper::default();
        let mut first = set(true);
        stamper.stamp(&mut first, "t1");
        let mut same = set(true);
        stamper.stamp(&mut same, "t2");
        let mut flipped = set(false);
        stamper.stamp(&mut flipped, "t3");
        assert_eq!(time(&first).as_deref(), Some("t1"));
        assert_eq!(time(&same).as_deref(), Some("t1"));
        assert_eq!(time(&flipped).as_deref(), Some("t3"));
        // A resource that left the status is forgotten: back again, it starts anew.
        stamper.stamp(&mut StatusSet::default(), "t4");
        let mut back = set(false);
        stamper.stamp(&mut back, "t5");
        assert_eq!(time(&back).as_deref(), Some("t5"));
    }

    #[test]
    fn a_status_translated_again_gets_the_stamped_times() {
        let mut stamper = Stamper::default();
        stamper.stamp(&mut set(true), "t1");
        stamper.stamp(&mut set(false), "t2");
        let mut again = set(false);
        stamper.fill(&mut again);
        assert_eq!(time(&again).as_deref(), Some("t2"));
        // Filling remembers nothing: the next stamp still compares with the last one.
        stamper.fill(&mut set(true));
        let mut same = set(false);
        stamper.stamp(&mut same, "t3");
        assert_eq!(time(&same).as_deref(), Some("t2"));
    }
}
