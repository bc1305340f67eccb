//! The Secrets and ConfigMaps a snapshot's objects name.
//!
//! A cluster holds far more Secrets and ConfigMaps than a gateway reads (service-account
//! tokens, Helm releases, `kube-root-ca.crt` in every namespace). The Kubernetes source
//! therefore watches only the ones named here, and adds or drops watches as references
//! change. The list is over-inclusive on purpose: a reference that translate will reject
//! (a missing ReferenceGrant, a wrong kind) is still listed, so that the rejection reads the
//! same in a cluster as from a directory.

use std::collections::BTreeSet;

use model::{Kind, ObjectName, Snapshot};

/// Every Secret and ConfigMap named by a Gateway, ListenerSet, BackendTLSPolicy or
/// AuthenticationPolicy, as `(Kind::Secret | Kind::ConfigMap, name)`.
pub fn referenced_objects(snapshot: &Snapshot) -> BTreeSet<(Kind, ObjectName)> {
    let mut refs = Refs::default();
    for (gateway_name, gateway) in &snapshot.gateways {
        let own = &*gateway_name.namespace;
        for listener in &gateway.spec.listeners {
            for r in listener
                .tls
                .as_ref()
                .and_then(|t| t.certificate_refs.as_deref())
                .unwrap_or_default()
            {
                refs.add_secret(&r.group, &r.kind, &r.namespace, own, &r.name);
            }
        }
        let Some(tls) = gateway.spec.tls.as_ref() else {
            continue;
        };
        if let Some(r) = tls
            .backend
            .as_ref()
            .and_then(|b| b.client_certificate_ref.as_ref())
        {
            refs.add_secret(&r.group, &r.kind, &r.namespace, own, &r.name);
        }
        if let Some(frontend) = tls.frontend.as_ref() {
            for r in frontend
                .default
                .validation
                .iter()
                .flat_map(|v| &v.ca_certificate_refs)
            {
                refs.add(
                    &r.group,
                    &r.kind,
                    r.namespace.as_deref().unwrap_or(own),
                    &r.name,
                );
            }
            for r in frontend
                .per_port
                .iter()
                .flatten()
                .filter_map(|p| p.tls.validation.as_ref())
                .flat_map(|v| &v.ca_certificate_refs)
            {
                refs.add(
                    &r.group,
                    &r.kind,
                    r.namespace.as_deref().unwrap_or(own),
                    &r.name,
                );
            }
        }
    }
    for (set_name, set) in &snapshot.listener_sets {
        for listener in &set.spec.listeners {
            for r in listener
                .tls
                .as_ref()
                .and_then(|t| t.certificate_refs.as_deref())
                .unwrap_or_default()
            {
                refs.add_secret(
                    &r.group,
                    &r.kind,
                    &r.namespace,
                    &set_name.namespace,
                    &r.name,
                );
            }
        }
    }
    for (policy_name, policy) in &snapshot.backend_tls_policies {
        for r in policy.spec.validation.ca_certificate_refs.iter().flatten() {
            refs.add(&r.group, &r.kind, &policy_name.namespace, &r.name);
        }
    }
    for (policy_name, policy) in &snapshot.authentication_policies {
        let own = &*policy_name.namespace;
        let spec = &policy.spec;
        for jwks in spec
            .jwt
            .iter()
            .flat_map(|j| &j.providers)
            .filter_map(|p| p.jwks.as_ref())
        {
            refs.add(
                "",
                jwks.kind.as_deref().unwrap_or("ConfigMap"),
                own,
                &jwks.name,
            );
        }
        if let Some(basic) = &spec.basic_auth {
            refs.add("", "Secret", own, &basic.users.name);
        }
        for credential in spec.api_key.iter().flat_map(|a| &a.credentials) {
            refs.add("", "Secret", own, &credential.name);
        }
    }
    refs.0
}

/// The references found so far.
#[derive(Default)]
struct Refs(BTreeSet<(Kind, ObjectName)>);

impl Refs {
    /// Records a reference if it names a core Secret or ConfigMap.
    fn add(&mut self, group: &str, kind: &str, namespace: &str, name: &str) {
        if !matches!(group, "" | "core") {
            return;
        }
        let kind = match kind {
            "Secret" => Kind::Secret,
            "ConfigMap" => Kind::ConfigMap,
            _ => return,
        };
        self.0.insert((kind, ObjectName::new(namespace, name)));
    }

    /// A reference whose group and kind default to core Secret, its namespace to `own`.
    fn add_secret(
        &mut self,
        group: &Option<String>,
        kind: &Option<String>,
        namespace: &Option<String>,
        own: &str,
        name: &str,
    ) {
        self.add(
            group.as_deref().unwrap_or_default(),
            kind.as_deref().unwrap_or("Secret"),
            namespace.as_deref().unwrap_or(own),
            name,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(yaml: &str) -> Snapshot {
        match model::decode::decode_file(std::path::Path::new("refs.yaml"), yaml) {
            Ok(contents) => Snapshot::from_objects(contents.objects.into_iter().map(|(o, _)| o)),
            Err(errors) => panic!("fixture: {errors:?}"),
        }
    }

    #[test]
    fn lists_every_secret_and_config_map_that_objects_name() {
        let snapshot = snapshot(
            "
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: web, namespace: edge}
spec:
  gatewayClassName: portcullis
  listeners:
  - name: https
    protocol: HTTPS
    port: 443
    tls:
      certificateRefs: [{name: site}, {name: other, namespace: certs}, {kind: Foo, name: x}]
  tls:
    backend: {clientCertificateRef: {name: client}}
    frontend:
      default:
        validation: {caCertificateRefs: [{group: '', kind: ConfigMap, name: clients}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {name: upstream, namespace: apps}
spec:
  targetRefs: [{group: '', kind: Service, name: api}]
  validation:
    hostname: api.apps
    caCertificateRefs: [{group: '', kind: ConfigMap, name: upstream-ca}]
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthenticationPolicy
metadata: {name: login, namespace: apps}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: site}]
  basicAuth: {users: {name: htpasswd}}
  apiKey: {credentials: [{name: keys}]}
  jwt:
    providers:
    - {name: a, jwks: {name: a-keys}}
    - {name: b, jwks: {kind: Secret, name: b-keys}}
",
        );
        let refs: Vec<String> = referenced_objects(&snapshot)
            .into_iter()
            .map(|(kind, name)| format!("{kind} {name}"))
            .collect();
        assert_eq!(
            refs,
            [
                "Secret apps/b-keys",
                "Secret apps/htpasswd",
                "Secret apps/keys",
                "Secret certs/other",
                "Secret edge/client",
                "Secret edge/site",
                "ConfigMap apps/a-keys",
                "ConfigMap apps/upstream-ca",
                "ConfigMap edge/clients",
            ]
        );
    }
}
