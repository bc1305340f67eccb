//! BackendTLSPolicy: which policy applies to each Service port, what it compiles to
//! ([`ir::BackendTls`]), and its status; and the Gateway's own side of backend TLS, the
//! client certificate of `spec.tls.backend`.
//!
//! A policy's status is reported per ancestor: every Gateway with a route whose backendRef
//! reaches a Service port the policy applies to ("the relevant object for status is the
//! Gateway", PolicyAncestorStatus docs).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ir::{BackendTls, BackendTrust, SubjectAltName};
use model::gw::backendtlspolicies::{
    BackendTlsPolicy, BackendTlsPolicyValidationSubjectAltNamesType as SanType,
};
use model::gw::gateways::Gateway;
use model::status::{
    Condition, ConditionType, ParentReference, PolicyAncestorStatus, Reason, ResourceStatus,
    StatusSet,
};
use model::{GATEWAY_GROUP, Kind, ObjectName, ResourceKey, Snapshot};

use crate::Options;
use crate::gateways::Verdict;
use crate::grants;

/// The one value of `wellKnownCACertificates` the API defines.
const SYSTEM_CERTIFICATES: &str = "System";

/// Every BackendTLSPolicy, resolved, with the winner for each target.
#[derive(Debug, Default)]
pub(crate) struct Policies {
    /// The winning policy per Service and `sectionName` (`None`: the whole Service).
    winners: BTreeMap<(ObjectName, Option<String>), ObjectName>,
    states: BTreeMap<ObjectName, PolicyState>,
}

/// One policy after resolution.
#[derive(Debug)]
struct PolicyState {
    generation: i64,
    /// `Accepted`: `Conflicted`, `NoValidCACertificate` or `Invalid` when false.
    accepted: Verdict,
    /// `ResolvedRefs`: `InvalidCACertificateRef` or `InvalidKind` when false.
    resolved_refs: Verdict,
    /// What the data plane does for Service ports this policy applies to.
    tls: Arc<BackendTls>,
}

// === impl Policies ===

impl Policies {
    /// Resolves every policy and settles conflicts: "When more than one BackendTLSPolicy
    /// selects the same target and sectionName, implementations MUST determine precedence
    /// ...: The older policy by creation timestamp takes precedence ... The policy appearing
    /// first in alphabetical order by {namespace}/{name}. For any BackendTLSPolicy that does
    /// not take precedence, the implementation MUST ensure the `Accepted` Condition is set to
    /// `status: False`, with Reason `Conflicted`" (BackendTLSPolicySpec.targetRefs).
    pub(crate) fn resolve(snapshot: &Snapshot) -> Self {
        let mut ordered: Vec<_> = snapshot.backend_tls_policies.iter().collect();
        ordered.sort_by(|(a_name, a), (b_name, b)| {
            crate::oldest_first((&a.metadata, a_name), (&b.metadata, b_name))
        });
        let mut policies = Self::default();
        for (name, policy) in ordered {
            let mut state = resolve_one(snapshot, name, policy);
            for target in &policy.spec.target_refs {
                // Only Services are targets here; other kinds are implementation-specific and
                // simply never match a backend.
                if !matches!(target.group.as_str(), "" | "core") || target.kind != "Service" {
                    continue;
                }
                let key = (
                    ObjectName::new(&name.namespace, &target.name),
                    target.section_name.clone(),
                );
                match policies.winners.get(&key) {
                    Some(winner) => {
                        state.accepted = Err((
                            Reason::Conflicted,
                            format!(
                                "BackendTLSPolicy {winner} already applies to Service {}{}; the older policy (then the first by namespace/name) takes precedence",
                                key.0,
                                section_suffix(key.1.as_deref())
                            ),
                        ));
                    }
                    None => {
                        policies.winners.insert(key, name.clone());
                    }
                }
            }
            policies.states.insert(name.clone(), state);
        }
        policies
    }

    /// The TLS settings for a Service port, and the policy they come from: a policy naming
    /// the port in `sectionName` before one for the whole Service.
    pub(crate) fn for_port(
        &self,
        service: &ObjectName,
        port_name: Option<&str>,
    ) -> Option<(&ObjectName, Arc<BackendTls>)> {
        let specific = port_name
            .filter(|n| !n.is_empty())
            .and_then(|n| self.winners.get(&(service.clone(), Some(n.to_string()))));
        let winner = specific.or_else(|| self.winners.get(&(service.clone(), None)))?;
        let state = self.states.get(winner)?;
        Some((winner, state.tls.clone()))
    }

    /// Writes every policy's status: one ancestor entry per Gateway in `ancestors` (policy →
    /// Gateways whose routes reach a Service port it applies to). A policy no Gateway uses
    /// gets an empty list ("An empty list means the Policy is not relevant for any
    /// ancestors"). Policies that lost every conflict are reported on the Gateways that use
    /// the winner of their target.
    pub(crate) fn write_status(
        &self,
        snapshot: &Snapshot,
        ancestors: &BTreeMap<ObjectName, BTreeSet<ObjectName>>,
        options: &Options,
        status: &mut StatusSet,
    ) {
        for (name, state) in &self.states {
            let mut gateways: BTreeSet<&ObjectName> =
                ancestors.get(name).into_iter().flatten().collect();
            if let Some(policy) = snapshot.backend_tls_policies.get(name) {
                // A conflicted policy applies nowhere; its status goes where the winner's does.
                for target in &policy.spec.target_refs {
                    let key = (
                        ObjectName::new(&name.namespace, &target.name),
                        target.section_name.clone(),
                    );
                    if let Some(winner) = self.winners.get(&key).filter(|w| *w != name) {
                        gateways.extend(ancestors.get(winner).into_iter().flatten());
                    }
                }
            }
            let entries = gateways
                .into_iter()
                .take(16)
                .map(|gateway| PolicyAncestorStatus {
                    ancestor_ref: ParentReference {
                        group: GATEWAY_GROUP.to_string(),
                        kind: "Gateway".to_string(),
                        namespace: Some(gateway.namespace.to_string()),
                        name: gateway.name.to_string(),
                        section_name: None,
                        port: None,
                    },
                    controller_name: options.controller_name.clone(),
                    conditions: state.conditions(),
                })
                .collect();
            status.0.insert(
                ResourceKey::new(Kind::BackendTlsPolicy, &name.namespace, &name.name),
                ResourceStatus::Policy { ancestors: entries },
            );
        }
    }
}

// === impl PolicyState ===

impl PolicyState {
    fn conditions(&self) -> Vec<Condition> {
        let generation = self.generation;
        let condition = |kind, verdict: &Verdict, reason, message: &'static str| match verdict {
            Ok(()) => Condition::new(kind, true, reason, message, generation),
            Err((reason, message)) => Condition::new(kind, false, *reason, message, generation),
        };
        vec![
            condition(
                ConditionType::Accepted,
                &self.accepted,
                Reason::Accepted,
                "accepted",
            ),
            condition(
                ConditionType::ResolvedRefs,
                &self.resolved_refs,
                Reason::ResolvedRefs,
                "resolved",
            ),
        ]
    }
}

/// Resolves the validation settings of one policy, before conflicts are settled.
fn resolve_one(snapshot: &Snapshot, name: &ObjectName, policy: &BackendTlsPolicy) -> PolicyState {
    let validation = &policy.spec.validation;
    let refs = validation
        .ca_certificate_refs
        .as_deref()
        .unwrap_or_default();
    let mut accepted: Verdict = Ok(());
    let mut resolved_refs: Verdict = Ok(());
    let trust = if refs.is_empty() {
        match validation.well_known_ca_certificates.as_deref() {
            Some(SYSTEM_CERTIFICATES) => BackendTrust::System,
            other => {
                // "If an implementation does not support the WellKnownCACertificates field,
                // or the supplied value is not recognized, the implementation MUST ensure the
                // `Accepted` Condition on the BackendTLSPolicy is set to `status: False`, with
                // a Reason `Invalid`."
                let message = format!(
                    "wellKnownCACertificates {:?} is not supported; supported: System",
                    other.unwrap_or_default()
                );
                accepted = Err((Reason::Invalid, message.clone()));
                BackendTrust::Invalid(message)
            }
        }
    } else {
        let mut ca_pem = Vec::new();
        let mut sources = Vec::new();
        for reference in refs {
            match ca_certificate(
                snapshot,
                name,
                &reference.group,
                &reference.kind,
                &reference.name,
            ) {
                Ok((source, pem)) => {
                    ca_pem.extend_from_slice(pem);
                    ca_pem.push(b'\n');
                    sources.push(source);
                }
                // The first invalid reference names the reason.
                Err(problem) => {
                    if resolved_refs.is_ok() {
                        resolved_refs = Err(problem);
                    }
                }
            }
        }
        if sources.is_empty() {
            // "If ALL CACertificateRefs are invalid, the implementation MUST also ensure the
            // `Accepted` Condition on the BackendTLSPolicy is set to `status: False`, with a
            // Reason `NoValidCACertificate`."
            let message = match &resolved_refs {
                Err((_, message)) => message.clone(),
                Ok(()) => "no CA certificate".to_string(),
            };
            accepted = Err((Reason::NoValidCACertificate, message.clone()));
            BackendTrust::Invalid(message)
        } else {
            BackendTrust::Certificates {
                source: sources.join(","),
                ca_pem,
            }
        }
    };
    let subject_alt_names = validation
        .subject_alt_names
        .iter()
        .flatten()
        .filter_map(|san| match san.r#type {
            SanType::Hostname => san.hostname.clone().map(SubjectAltName::Hostname),
            SanType::Uri => san.uri.clone().map(SubjectAltName::Uri),
        })
        .collect();
    PolicyState {
        generation: policy.metadata.generation.unwrap_or(1),
        accepted,
        resolved_refs,
        tls: Arc::new(BackendTls {
            policy: name.to_string(),
            server_name: validation.hostname.clone(),
            trust,
            subject_alt_names,
        }),
    }
}

/// One `caCertificateRefs` entry: a ConfigMap in the policy's namespace whose `ca.crt` holds
/// at least one PEM certificate. Returns its name and the PEM.
fn ca_certificate<'s>(
    snapshot: &'s Snapshot,
    policy: &ObjectName,
    group: &str,
    kind: &str,
    name: &str,
) -> Result<(String, &'s [u8]), (Reason, String)> {
    if !matches!(group, "" | "core") || kind != "ConfigMap" {
        return Err((
            Reason::InvalidKind,
            format!(
                "caCertificateRef kind {kind} (group {group:?}) is not supported; supported: core ConfigMap"
            ),
        ));
    }
    let object = ObjectName::new(&policy.namespace, name);
    let ca = crate::frontend_tls::ca_certificates(snapshot, &object)?;
    Ok((object.to_string(), ca))
}

fn section_suffix(section: Option<&str>) -> String {
    section.map(|s| format!(" port {s}")).unwrap_or_default()
}

/// The Gateway's `spec.tls.backend.clientCertificateRef`: `None` when unset, else the
/// certificate or the `ResolvedRefs` reason ("InvalidClientCertificateRef" for a reference
/// that does not resolve or is misconfigured, "RefNotPermitted" for a cross-namespace one
/// without a ReferenceGrant; GatewayBackendTLS docs).
pub(crate) fn client_certificate(
    snapshot: &Snapshot,
    name: &ObjectName,
    gateway: &Gateway,
) -> Option<Result<Arc<ir::TlsCertificate>, (Reason, String)>> {
    let reference = gateway
        .spec
        .tls
        .as_ref()?
        .backend
        .as_ref()?
        .client_certificate_ref
        .as_ref()?;
    let group = reference.group.as_deref().unwrap_or_default();
    let kind = reference.kind.as_deref().unwrap_or("Secret");
    if !matches!(group, "" | "core") || kind != "Secret" {
        return Some(Err((
            Reason::InvalidClientCertificateRef,
            format!(
                "clientCertificateRef kind {kind} (group {group:?}) is not supported; supported: core Secret"
            ),
        )));
    }
    let namespace = reference.namespace.as_deref().unwrap_or(&name.namespace);
    let permitted = grants::permitted(
        snapshot,
        &grants::From {
            group: GATEWAY_GROUP,
            kind: "Gateway",
            namespace: &name.namespace,
        },
        &grants::To {
            group: "",
            kind: "Secret",
            namespace,
            name: &reference.name,
        },
    );
    let secret = ObjectName::new(namespace, &reference.name);
    if !permitted {
        return Some(Err((
            Reason::RefNotPermitted,
            format!(
                "clientCertificateRef to Secret {secret} is not permitted by any ReferenceGrant"
            ),
        )));
    }
    Some(
        crate::tls::load(snapshot, &secret)
            .map_err(|(_, message)| (Reason::InvalidClientCertificateRef, message)),
    )
}
