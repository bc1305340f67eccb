//! Resolving backendRefs to Services and their endpoints.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ir::{Backend, BackendProtocol, BackendTarget, Endpoint};
use model::k8s::{IntOrString, LabelSelector};
use model::status::Reason;
use model::{GATEWAY_GROUP, ObjectName, Snapshot};

use crate::backend_tls::Policies;
use crate::grants;
use crate::health::HealthPolicies;

/// A backendRef in kind-independent form.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BackendRef<'a> {
    pub group: Option<&'a str>,
    pub kind: Option<&'a str>,
    pub name: &'a str,
    pub namespace: Option<&'a str>,
    pub port: Option<i32>,
}

/// The route doing the referring.
#[derive(Clone, Copy)]
pub(crate) struct Referrer<'a> {
    pub kind: &'a str,
    pub namespace: &'a str,
    /// The Services the route has as parents (mesh). GAMMA consumer routes send traffic on
    /// to the Service they attach to, in another namespace; that reference needs no
    /// ReferenceGrant, since the route could only ever reach what its parent already is.
    pub mesh_parents: &'a [ObjectName],
}

/// A resolved backend and the BackendTLSPolicy applied to it.
type Cached = (Arc<Backend>, Option<ObjectName>);

/// Resolves backendRefs, sharing one `Arc<Backend>` per Service port.
#[derive(Default)]
pub(crate) struct Resolver<'p> {
    cache: BTreeMap<(ObjectName, i32, bool), Cached>,
    /// BackendTLSPolicies; without them no backend speaks TLS.
    policies: Option<&'p Policies>,
    /// HealthCheckPolicies; without them no endpoint is probed.
    health: Option<&'p HealthPolicies>,
    /// The BackendTLSPolicies applied since the last [`Resolver::take_used_policies`].
    used: BTreeSet<ObjectName>,
}

// === impl Resolver ===

impl<'p> Resolver<'p> {
    /// A resolver whose backends speak TLS where a BackendTLSPolicy says so, and are
    /// health checked where a HealthCheckPolicy says so.
    pub(crate) fn with_policies(policies: &'p Policies, health: &'p HealthPolicies) -> Self {
        Self {
            policies: Some(policies),
            health: Some(health),
            ..Self::default()
        }
    }

    /// The BackendTLSPolicies applied to the backends resolved since the last call.
    pub(crate) fn take_used_policies(&mut self) -> BTreeSet<ObjectName> {
        std::mem::take(&mut self.used)
    }

    /// Resolves a route rule's backendRef: a Service, or for egress routes an EgressNetwork,
    /// which stands for the original destination of the traffic.
    pub(crate) fn target(
        &mut self,
        snapshot: &Snapshot,
        referrer: Referrer<'_>,
        reference: &BackendRef<'_>,
    ) -> Result<BackendTarget, (Reason, String)> {
        let group = reference.group.unwrap_or_default();
        let kind = reference.kind.unwrap_or("Service");
        if !crate::egress::is_egress_parent(group, kind) {
            return self
                .resolve(snapshot, referrer, reference)
                .map(BackendTarget::Service);
        }
        if reference
            .namespace
            .is_some_and(|namespace| namespace != referrer.namespace)
        {
            return Err((
                Reason::RefNotPermitted,
                "a backendRef to an EgressNetwork must be in the route's namespace".into(),
            ));
        }
        let name = ObjectName::new(referrer.namespace, reference.name);
        if snapshot.egress_networks.contains_key(&name) {
            Ok(BackendTarget::OriginalDestination)
        } else {
            Err((
                Reason::BackendNotFound,
                format!("EgressNetwork {name} does not exist"),
            ))
        }
    }

    /// Resolves a reference, or says which ResolvedRefs reason applies.
    pub(crate) fn resolve(
        &mut self,
        snapshot: &Snapshot,
        referrer: Referrer<'_>,
        reference: &BackendRef<'_>,
    ) -> Result<Arc<Backend>, (Reason, String)> {
        let group = reference.group.unwrap_or_default();
        let kind = reference.kind.unwrap_or("Service");
        if !(matches!(group, "" | "core") && kind == "Service") {
            return Err((
                Reason::InvalidKind,
                format!("backendRef kind {group}/{kind} is not supported; supported: Service"),
            ));
        }
        let namespace = reference.namespace.unwrap_or(referrer.namespace);
        let permitted = grants::permitted(
            snapshot,
            &grants::From {
                group: GATEWAY_GROUP,
                kind: referrer.kind,
                namespace: referrer.namespace,
            },
            &grants::To {
                group: "",
                kind: "Service",
                namespace,
                name: reference.name,
            },
        );
        let own_parent = referrer
            .mesh_parents
            .iter()
            .any(|p| *p.namespace == *namespace && *p.name == *reference.name);
        if !permitted && !own_parent {
            return Err((
                Reason::RefNotPermitted,
                format!(
                    "backendRef to Service {namespace}/{} is not permitted by any ReferenceGrant",
                    reference.name
                ),
            ));
        }
        let name = ObjectName::new(namespace, reference.name);
        let Some(port) = reference.port else {
            return Err((
                Reason::UnsupportedValue,
                "backendRef port is required for a Service".into(),
            ));
        };
        let grpc = referrer.kind == "GRPCRoute";
        let key = (name, port, grpc);
        if let Some((backend, policy)) = self.cache.get(&key) {
            self.used.extend(policy.clone());
            return Ok(backend.clone());
        }
        let name = &key.0;
        let Some(service) = snapshot.services.get(name) else {
            return Err((
                Reason::BackendNotFound,
                format!("Service {name} does not exist"),
            ));
        };
        let spec = service.spec.clone().unwrap_or_default();
        let Some(service_port) = spec.ports.iter().flatten().find(|p| p.port == port) else {
            return Err((
                Reason::BackendNotFound,
                format!("Service {name} has no port {port}"),
            ));
        };
        if spec.type_.as_deref() == Some("ExternalName") {
            return Err((
                Reason::UnsupportedValue,
                format!("Service {name} is of type ExternalName, which is not supported yet"),
            ));
        }
        // gRPC is HTTP/2 whatever the Service port says; otherwise `appProtocol` decides.
        let protocol = match (referrer.kind, service_port.app_protocol.as_deref()) {
            ("GRPCRoute", _) | (_, Some("kubernetes.io/h2c")) => BackendProtocol::H2c,
            _ => BackendProtocol::Http1,
        };
        let policy = self
            .policies
            .and_then(|p| p.for_port(name, service_port.name.as_deref()));
        let (policy, tls) = match policy {
            Some((policy, tls)) => (Some(policy.clone()), Some(tls)),
            None => (None, None),
        };
        let backend = Arc::new(Backend {
            name: format!("{name}:{port}").into(),
            protocol,
            endpoints: endpoints(snapshot, name, service_port),
            tls,
            health: self
                .health
                .and_then(|h| h.for_port(name, service_port.name.as_deref())),
        });
        self.used.extend(policy.clone());
        self.cache.insert(key, (backend.clone(), policy));
        Ok(backend)
    }
}

/// Ready endpoints of a Service port, from the EndpointSlices labelled with the Service's
/// name. The slice port is matched by the Service port's name, as kube-proxy does.
fn endpoints(
    snapshot: &Snapshot,
    service: &ObjectName,
    service_port: &model::k8s::ServicePort,
) -> Vec<Endpoint> {
    let port_name = service_port.name.as_deref().unwrap_or_default();
    let fallback_port = match &service_port.target_port {
        Some(IntOrString::Int(port)) => *port,
        _ => service_port.port,
    };
    let mut out = Vec::new();
    for (name, slice) in &snapshot.endpoint_slices {
        let owner = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"));
        if name.namespace != service.namespace || owner.map(String::as_str) != Some(&*service.name)
        {
            continue;
        }
        let port = match &slice.ports {
            Some(ports) => ports
                .iter()
                .find(|p| p.name.as_deref().unwrap_or_default() == port_name)
                .and_then(|p| p.port),
            None => Some(fallback_port),
        };
        let Some(port) = port.and_then(|p| u16::try_from(p).ok()) else {
            continue;
        };
        for endpoint in &slice.endpoints {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            for address in &endpoint.addresses {
                if let Ok(ip) = address.parse::<IpAddr>() {
                    out.push(Endpoint {
                        addr: SocketAddr::new(ip, port),
                    });
                }
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Evaluates a label selector: every `matchLabels` entry and every `matchExpressions`
/// requirement must hold. An unknown operator matches nothing.
pub(crate) fn selector_matches(
    selector: &LabelSelector,
    labels: &BTreeMap<String, String>,
) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(key, value)| labels.get(key) == Some(value));
    let expressions_ok = selector
        .match_expressions
        .iter()
        .flatten()
        .all(|requirement| {
            let values = requirement.values.as_deref().unwrap_or_default();
            let current = labels.get(&requirement.key);
            match requirement.operator.as_str() {
                "In" => current.is_some_and(|v| values.contains(v)),
                "NotIn" => current.is_none_or(|v| !values.contains(v)),
                "Exists" => current.is_some(),
                "DoesNotExist" => current.is_none(),
                _ => false,
            }
        });
    labels_ok && expressions_ok
}
