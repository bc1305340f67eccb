//! HealthCheckPolicy: which policy applies to each Service port, what it compiles to
//! ([`ir::HealthCheck`]), and its status.
//!
//! Precedence follows BackendTLSPolicy's rules, the Gateway API's own for policies that
//! target Services: a policy naming the port (`sectionName`) wins over one for the whole
//! Service, and between policies for the same target the oldest (then the first by
//! `namespace/name`) wins; the others get `Accepted: False` with reason `Conflicted`.
//!
//! The policy is about Services, used from any Gateway or mesh route, so its status has one
//! ancestor entry per targeted Service: `Accepted`, or `TargetNotFound` for a Service that
//! does not exist, or `Conflicted`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ir::{HealthCheck, Probe};
use model::policy::{HealthCheckPolicy, TargetRef};
use model::status::{
    Condition, ConditionType, ParentReference, PolicyAncestorStatus, Reason, ResourceStatus,
    StatusSet,
};
use model::{Kind, ObjectName, ResourceKey, Snapshot};

use crate::Options;

/// Probe settings a policy leaves out.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_UNHEALTHY_THRESHOLD: u32 = 3;
const DEFAULT_HEALTHY_THRESHOLD: u32 = 1;

/// Every HealthCheckPolicy, compiled, with the winner for each target.
#[derive(Debug, Default)]
pub(crate) struct HealthPolicies {
    /// The winning policy per Service and `sectionName` (`None`: the whole Service).
    winners: BTreeMap<(ObjectName, Option<String>), ObjectName>,
    checks: BTreeMap<ObjectName, Arc<HealthCheck>>,
    /// Per policy and target: the reason it does not apply there, if it does not.
    outcomes: BTreeMap<ObjectName, Vec<(TargetRef, Outcome)>>,
}

/// Whether a policy applies to one of its targets, or why not.
type Outcome = Result<(), (Reason, String)>;

impl HealthPolicies {
    pub(crate) fn resolve(snapshot: &Snapshot) -> Self {
        let mut ordered: Vec<_> = snapshot.health_check_policies.iter().collect();
        ordered.sort_by(|(a_name, a), (b_name, b)| {
            crate::oldest_first((&a.metadata, a_name), (&b.metadata, b_name))
        });
        let mut policies = Self::default();
        for (name, policy) in ordered {
            policies
                .checks
                .insert(name.clone(), Arc::new(compile(name, policy)));
            let mut outcomes = Vec::new();
            for target in &policy.spec.target_refs {
                let service = ObjectName::new(&name.namespace, &target.name);
                let key = (service.clone(), target.section_name.clone());
                let outcome = if !snapshot.services.contains_key(&service) {
                    Err((
                        Reason::TargetNotFound,
                        format!("Service {service} does not exist"),
                    ))
                } else if let Some(winner) = policies.winners.get(&key) {
                    Err((
                        Reason::Conflicted,
                        format!(
                            "HealthCheckPolicy {winner} already applies to Service {service}{}; the older policy (then the first by namespace/name) takes precedence",
                            target
                                .section_name
                                .as_deref()
                                .map(|port| format!(" port {port}"))
                                .unwrap_or_default()
                        ),
                    ))
                } else {
                    policies.winners.insert(key, name.clone());
                    Ok(())
                };
                outcomes.push((target.clone(), outcome));
            }
            policies.outcomes.insert(name.clone(), outcomes);
        }
        policies
    }

    /// The health check of a Service port: a policy naming the port before one for the
    /// whole Service.
    pub(crate) fn for_port(
        &self,
        service: &ObjectName,
        port_name: Option<&str>,
    ) -> Option<Arc<HealthCheck>> {
        let specific = port_name
            .filter(|n| !n.is_empty())
            .and_then(|n| self.winners.get(&(service.clone(), Some(n.to_string()))));
        let winner = specific.or_else(|| self.winners.get(&(service.clone(), None)))?;
        self.checks.get(winner).cloned()
    }

    pub(crate) fn write_status(
        &self,
        snapshot: &Snapshot,
        options: &Options,
        status: &mut StatusSet,
    ) {
        for (name, outcomes) in &self.outcomes {
            let generation = snapshot
                .health_check_policies
                .get(name)
                .and_then(|p| p.metadata.generation)
                .unwrap_or_default();
            let ancestors = outcomes
                .iter()
                .take(16)
                .map(|(target, outcome)| {
                    let accepted = match outcome {
                        Ok(()) => Condition::new(
                            ConditionType::Accepted,
                            true,
                            Reason::Accepted,
                            "the Service's endpoints are health checked",
                            generation,
                        ),
                        Err((reason, message)) => Condition::new(
                            ConditionType::Accepted,
                            false,
                            *reason,
                            message,
                            generation,
                        ),
                    };
                    PolicyAncestorStatus {
                        ancestor_ref: ParentReference {
                            group: String::new(),
                            kind: "Service".to_string(),
                            namespace: Some(name.namespace.to_string()),
                            name: target.name.clone(),
                            section_name: target.section_name.clone(),
                            port: None,
                        },
                        controller_name: options.controller_name.clone(),
                        conditions: vec![accepted],
                    }
                })
                .collect();
            status.0.insert(
                ResourceKey::new(Kind::HealthCheckPolicy, &name.namespace, &name.name),
                ResourceStatus::Policy { ancestors },
            );
        }
    }
}

/// The policy's settings with defaults filled in. Validation has checked the durations,
/// thresholds and that exactly one probe is set; a policy that still lacks one probes TCP.
fn compile(name: &ObjectName, policy: &HealthCheckPolicy) -> HealthCheck {
    let spec = &policy.spec;
    let duration = |value: &Option<String>, default| {
        value
            .as_deref()
            .and_then(model::parse_duration)
            .filter(|d| !d.is_zero())
            .unwrap_or(default)
    };
    let probe = match &spec.http {
        Some(http) => Probe::Http {
            path: http.path.clone(),
            host: http.hostname.clone().unwrap_or_else(|| {
                // The Service's own name, as a client in the cluster would address it.
                spec.target_refs
                    .first()
                    .map(|target| format!("{}.{}", target.name, name.namespace))
                    .unwrap_or_default()
            }),
            statuses: http.expected_statuses.clone().unwrap_or_default(),
        },
        None => Probe::Tcp,
    };
    HealthCheck {
        policy: name.to_string(),
        interval: duration(&spec.interval, DEFAULT_INTERVAL),
        timeout: duration(&spec.timeout, DEFAULT_TIMEOUT),
        unhealthy_threshold: spec
            .unhealthy_threshold
            .unwrap_or(DEFAULT_UNHEALTHY_THRESHOLD)
            .max(1),
        healthy_threshold: spec
            .healthy_threshold
            .unwrap_or(DEFAULT_HEALTHY_THRESHOLD)
            .max(1),
        probe,
    }
}
