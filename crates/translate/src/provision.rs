//! Provisioning: the Deployment and `LoadBalancer` Service that Kubernetes mode creates for
//! every accepted Gateway of ours, rendered as server-side apply bodies (JSON), and the
//! addresses a Gateway reports from its Service's load balancer.
//!
//! Pure like the rest of translate: the Kubernetes source applies what this renders.
//!
//! GEP-1762 (in-cluster Gateway deployments) and `spec.infrastructure` (GEP-1867):
//! "Labels that SHOULD be applied to any resources created in response to this Gateway"
//! and likewise for annotations. Cloud load balancers are configured through annotations
//! on the Service (an AWS NLB by `service.beta.kubernetes.io/aws-load-balancer-type`), so
//! `service.beta.kubernetes.io/*` annotations written on the Gateway itself are copied to
//! its Service too. Every object is owned by its Gateway, so deleting the Gateway deletes
//! them; the label `gateway.networking.k8s.io/gateway-name` (GEP-1762) ties pods to it.

use std::collections::BTreeMap;

use model::status::{ConditionType, GatewayAddress, ResourceStatus, StatusSet};
use model::{Kind, ObjectName, ResourceKey, Snapshot, gw};
use serde_json::{Value, json};

/// Label naming the Gateway on everything provisioned for it (GEP-1762).
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// Gateway annotations with this prefix are copied to its Service.
const SERVICE_ANNOTATION_PREFIX: &str = "service.beta.kubernetes.io/";

/// What the provisioned data plane runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvisionOptions {
    /// Container image.
    pub image: String,
    /// Container arguments; `--gateway=NAMESPACE/NAME` is appended for each Gateway.
    pub args: Vec<String>,
    /// Service account of the pods, if not the namespace's default.
    pub service_account: Option<String>,
    /// Admin port inside the pod (probes).
    pub admin_port: u16,
}

/// The objects of one Gateway, as server-side apply bodies.
#[derive(Clone, Debug, PartialEq)]
pub struct Provisioned {
    /// The Gateway.
    pub gateway: ObjectName,
    /// An `apps/v1` Deployment.
    pub deployment: Value,
    /// A `v1` Service of type `LoadBalancer`.
    pub service: Value,
}

/// The name of the Deployment and Service of a Gateway: `<gateway>-<class>`, cut to the
/// 63 characters of a DNS label.
pub fn object_name(gateway: &gw::gateways::Gateway) -> String {
    let name = gateway.metadata.name.as_deref().unwrap_or_default();
    let mut full = format!("{name}-{}", gateway.spec.gateway_class_name);
    full.truncate(63);
    full.trim_end_matches('-').to_string()
}

/// Renders the objects of every Gateway that `status` reports accepted (translate reports
/// status only for Gateways of our classes). Gateways without a `uid` (not read from a
/// cluster) are skipped: their objects could not be owned.
pub fn provision(
    snapshot: &Snapshot,
    status: &StatusSet,
    options: &ProvisionOptions,
) -> Vec<Provisioned> {
    snapshot
        .gateways
        .iter()
        .filter(|(name, _)| accepted(status, name))
        .filter_map(|(name, gateway)| render(snapshot, name, gateway, options))
        .collect()
}

/// `status.addresses` of a Gateway served through its provisioned Service: the Service's
/// load-balancer ingress IPs and hostnames, once the cloud has assigned them.
pub fn load_balancer_addresses(
    snapshot: &Snapshot,
    gateway: &gw::gateways::Gateway,
) -> Vec<GatewayAddress> {
    let namespace = gateway.metadata.namespace.as_deref().unwrap_or_default();
    let key = ObjectName::new(namespace, &object_name(gateway));
    let Some(service) = snapshot.services.get(&key) else {
        return Vec::new();
    };
    let ingress = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref());
    ingress
        .into_iter()
        .flatten()
        .filter_map(|entry| match (&entry.ip, &entry.hostname) {
            (Some(ip), _) => Some(GatewayAddress {
                kind: "IPAddress".into(),
                value: ip.clone(),
            }),
            (None, Some(hostname)) => Some(GatewayAddress {
                kind: "Hostname".into(),
                value: hostname.clone(),
            }),
            (None, None) => None,
        })
        .collect()
}

fn accepted(status: &StatusSet, name: &ObjectName) -> bool {
    let key = ResourceKey::new(Kind::Gateway, &name.namespace, &name.name);
    match status.0.get(&key) {
        Some(ResourceStatus::Gateway { conditions, .. }) => conditions
            .iter()
            .any(|c| c.kind == ConditionType::Accepted && c.holds()),
        _ => false,
    }
}

fn render(
    snapshot: &Snapshot,
    name: &ObjectName,
    gateway: &gw::gateways::Gateway,
    options: &ProvisionOptions,
) -> Option<Provisioned> {
    let uid = gateway.metadata.uid.as_deref()?;
    let object = object_name(gateway);
    let infrastructure = gateway.spec.infrastructure.as_ref();
    let mut labels: BTreeMap<String, String> = infrastructure
        .and_then(|i| i.labels.clone())
        .unwrap_or_default();
    labels.insert(GATEWAY_NAME_LABEL.into(), name.name.to_string());
    labels.insert("app.kubernetes.io/managed-by".into(), "portcullis".into());
    let annotations: BTreeMap<String, String> = infrastructure
        .and_then(|i| i.annotations.clone())
        .unwrap_or_default();
    let mut service_annotations = annotations.clone();
    for (key, value) in gateway.metadata.annotations.iter().flatten() {
        if key.starts_with(SERVICE_ANNOTATION_PREFIX) {
            service_annotations
                .entry(key.clone())
                .or_insert_with(|| value.clone());
        }
    }
    let owner = json!([{
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "name": name.name,
        "uid": uid,
        "controller": true,
        "blockOwnerDeletion": true,
    }]);
    let metadata = |annotations: &BTreeMap<String, String>| {
        let mut metadata = json!({
            "name": object,
            "namespace": name.namespace,
            "labels": labels,
            "ownerReferences": owner,
        });
        if !annotations.is_empty() {
            metadata["annotations"] = json!(annotations);
        }
        metadata
    };
    let selector = json!({ GATEWAY_NAME_LABEL: name.name });
    let ports: Vec<Value> = listener_ports(snapshot, name, gateway)
        .into_iter()
        .map(|port| {
            json!({
                "name": format!("port-{port}"),
                "port": port,
                "targetPort": port,
                "protocol": "TCP",
            })
        })
        .collect();
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(&service_annotations),
        "spec": {
            "type": "LoadBalancer",
            "selector": selector,
            "ports": ports,
        },
    });
    let mut pod_metadata = json!({ "labels": labels });
    if !annotations.is_empty() {
        pod_metadata["annotations"] = json!(annotations);
    }
    let probe = |path: &str| json!({"httpGet": {"path": path, "port": "admin"}});
    let mut args = options.args.clone();
    args.push(format!("--gateway={name}"));
    let mut pod = json!({
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "seccompProfile": {"type": "RuntimeDefault"},
            "sysctls": [{"name": "net.ipv4.ip_unprivileged_port_start", "value": "0"}],
        },
        "containers": [{
            "name": "portcullis",
            "image": options.image,
            "args": args,
            "ports": [{"name": "admin", "containerPort": options.admin_port, "protocol": "TCP"}],
            "livenessProbe": probe("/live"),
            "readinessProbe": probe("/ready"),
            "securityContext": {
                "allowPrivilegeEscalation": false,
                "readOnlyRootFilesystem": true,
                "capabilities": {"drop": ["ALL"]},
            },
        }],
    });
    if let Some(account) = &options.service_account {
        pod["serviceAccountName"] = json!(account);
    }
    let deployment = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(&annotations),
        "spec": {
            "selector": {"matchLabels": selector},
            "template": {"metadata": pod_metadata, "spec": pod},
        },
    });
    Some(Provisioned {
        gateway: name.clone(),
        deployment,
        service,
    })
}

/// The distinct ports of the Gateway's listeners and of the ListenerSets attached to it,
/// in ascending order.
fn listener_ports(
    snapshot: &Snapshot,
    name: &ObjectName,
    gateway: &gw::gateways::Gateway,
) -> Vec<i32> {
    let mut ports: Vec<i32> = gateway.spec.listeners.iter().map(|l| l.port).collect();
    for set in snapshot.listener_sets.values() {
        let parent = &set.spec.parent_ref;
        let set_namespace = set.metadata.namespace.as_deref().unwrap_or_default();
        let parent_namespace = parent.namespace.as_deref().unwrap_or(set_namespace);
        if *parent.name == *name.name && *parent_namespace == *name.namespace {
            ports.extend(set.spec.listeners.iter().map(|l| l.port));
        }
    }
    ports.sort_unstable();
    ports.dedup();
    ports
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::Options;

    const GATEWAY: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portcullis}
spec: {controllerName: portcullis.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: eg
  namespace: apps
  uid: 6f1c0a5e-0000-4000-8000-000000000001
  annotations:
    service.beta.kubernetes.io/aws-load-balancer-type: external
    example.com/not-for-the-service: x
spec:
  gatewayClassName: portcullis
  infrastructure:
    labels: {team: web}
    annotations: {service.beta.kubernetes.io/aws-load-balancer-scheme: internet-facing}
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - {name: http-alt, port: 80, protocol: HTTP, hostname: alt.example.com}
  - {name: grpc, port: 8080, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other-class, namespace: apps, uid: 6f1c0a5e-0000-4000-8000-000000000002}
spec:
  gatewayClassName: someone-else
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: v1
kind: Service
metadata: {name: eg-portcullis, namespace: apps}
spec: {type: LoadBalancer, ports: [{port: 80}]}
status:
  loadBalancer:
    ingress:
    - {hostname: eg-1234.elb.us-east-1.amazonaws.com}
    - {ip: 203.0.113.10}
";

    fn snapshot() -> Snapshot {
        let decoded = model::decode::decode_file(Path::new("fixture.yaml"), GATEWAY);
        let Ok(contents) = decoded else {
            panic!("fixture: {decoded:?}")
        };
        Snapshot::from_objects(contents.objects.into_iter().map(|(o, _)| o))
    }

    fn options() -> ProvisionOptions {
        ProvisionOptions {
            image: "portcullis:test".into(),
            args: vec!["run".into(), "--kube".into()],
            service_account: Some("portcullis".into()),
            admin_port: 9901,
        }
    }

    #[test]
    fn an_accepted_gateway_gets_a_deployment_and_a_load_balancer_service() {
        let snapshot = snapshot();
        let status = crate::translate(&snapshot, &Options::default()).status;
        let provisioned = provision(&snapshot, &status, &options());
        assert_eq!(provisioned.len(), 1, "only the Gateway of our class");
        let labels = json!({
            "app.kubernetes.io/managed-by": "portcullis",
            "gateway.networking.k8s.io/gateway-name": "eg",
            "team": "web",
        });
        let owner = json!([{
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": "eg",
            "uid": "6f1c0a5e-0000-4000-8000-000000000001",
            "controller": true, "blockOwnerDeletion": true,
        }]);
        assert_eq!(
            provisioned[0].service,
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {
                    "name": "eg-portcullis", "namespace": "apps", "labels": labels,
                    "ownerReferences": owner,
                    "annotations": {
                        "service.beta.kubernetes.io/aws-load-balancer-scheme": "internet-facing",
                        "service.beta.kubernetes.io/aws-load-balancer-type": "external",
                    },
                },
                "spec": {
                    "type": "LoadBalancer",
                    "selector": {"gateway.networking.k8s.io/gateway-name": "eg"},
                    "ports": [
                        {"name": "port-80", "port": 80, "targetPort": 80, "protocol": "TCP"},
                        {"name": "port-8080", "port": 8080, "targetPort": 8080, "protocol": "TCP"},
                    ],
                },
            })
        );
        let deployment = &provisioned[0].deployment;
        assert_eq!(
            deployment["metadata"],
            json!({
                "name": "eg-portcullis", "namespace": "apps", "labels": labels,
                "ownerReferences": owner,
                "annotations": {
                    "service.beta.kubernetes.io/aws-load-balancer-scheme": "internet-facing",
                },
            })
        );
        assert_eq!(
            deployment["spec"]["selector"],
            json!({"matchLabels": {"gateway.networking.k8s.io/gateway-name": "eg"}})
        );
        let template = &deployment["spec"]["template"];
        assert_eq!(template["metadata"]["labels"], labels);
        assert_eq!(template["spec"]["serviceAccountName"], "portcullis");
        let container = &template["spec"]["containers"][0];
        assert_eq!(container["image"], "portcullis:test");
        assert_eq!(
            container["args"],
            json!(["run", "--kube", format!("--gateway={}", "apps/eg")])
        );
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/ready");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/live");
        assert_eq!(template["spec"]["securityContext"]["runAsNonRoot"], true);
    }

    #[test]
    fn a_gateway_without_a_uid_is_not_provisioned() {
        let mut snapshot = snapshot();
        for gateway in snapshot.gateways.values_mut() {
            std::sync::Arc::make_mut(gateway).metadata.uid = None;
        }
        let status = crate::translate(&snapshot, &Options::default()).status;
        assert!(provision(&snapshot, &status, &options()).is_empty());
    }

    #[test]
    fn gateway_status_reports_the_load_balancer_addresses() {
        let options = Options {
            load_balancer_addresses: true,
            ..Options::default()
        };
        let status = crate::translate(&snapshot(), &options).status;
        let key = ResourceKey::new(Kind::Gateway, "apps", "eg");
        let Some(ResourceStatus::Gateway { addresses, .. }) = status.0.get(&key) else {
            panic!("no Gateway status");
        };
        let values: Vec<_> = addresses.iter().map(|a| a.value.as_str()).collect();
        assert_eq!(
            values,
            ["eg-1234.elb.us-east-1.amazonaws.com", "203.0.113.10"]
        );
    }

    #[test]
    fn addresses_come_from_the_load_balancer_ingress() {
        let snapshot = snapshot();
        let gateway = &snapshot.gateways[&ObjectName::new("apps", "eg")];
        let addresses = load_balancer_addresses(&snapshot, gateway);
        let addresses: Vec<_> = addresses
            .iter()
            .map(|a| (a.kind.as_str(), a.value.as_str()))
            .collect();
        assert_eq!(
            addresses,
            [
                ("Hostname", "eg-1234.elb.us-east-1.amazonaws.com"),
                ("IPAddress", "203.0.113.10")
            ]
        );
    }
}
