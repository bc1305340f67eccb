//! The Helm chart, rendered by Helm itself (`HELM`, else what `scripts/helm` finds or
//! installs): every object decodes into its Kubernetes
//! type with no field the type does not know, and the RBAC grants exactly what the
//! controller does: list and watch every watched kind, get and patch the status of the kinds
//! it writes status for, create and patch the provisioned Deployments and Services, and the
//! Lease verbs of leader election; nothing more.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;
use sources::kube::WATCHED;

/// (API group, resource, verb).
type Grant = (String, String, String);

/// `helm template` of the chart with these `--set` values, CRDs included, as documents.
fn render(sets: &[&str]) -> Vec<Value> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let helm = std::env::var("HELM").unwrap_or_else(|_| {
        // scripts/helm prints helm's path, installing it first if needed.
        let found = Command::new(root.join("scripts/helm")).output();
        match found {
            Ok(output) if output.status.success() => {
                String::from_utf8_lossy(&output.stdout).trim().to_string()
            }
            _ => "helm".to_string(),
        }
    });
    let chart = root.join("deploy/chart");
    let mut command = Command::new(&helm);
    command.args(["template", "portcullis"]).arg(&chart).args([
        "--namespace",
        "portcullis",
        "--include-crds",
    ]);
    for set in sets {
        command.args(["--set", set]);
    }
    let output = match command.output() {
        Ok(output) => output,
        Err(error) => panic!(
            "cannot run {helm:?} ({error}); run scripts/helm to install Helm and set HELM to \
             the path it prints"
        ),
    };
    assert!(
        output.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    serde_yaml_ng::Deserializer::from_str(&text)
        .filter_map(|document| {
            let value = match Value::deserialize(document) {
                Ok(value) => value,
                Err(error) => panic!("rendered YAML does not parse: {error}"),
            };
            (!value.is_null()).then_some(value)
        })
        .collect()
}

use serde::Deserialize;

/// Decodes a rendered object into its type, failing on any field the type does not have
/// (the Kubernetes types, like most, would drop it silently).
fn typed<T: DeserializeOwned>(object: &Value) -> T {
    let mut unknown = Vec::new();
    let decoded = serde_ignored::deserialize(object.clone(), |path| {
        unknown.push(path.to_string());
    });
    let name = format!(
        "{} {}",
        object["kind"].as_str().unwrap_or("?"),
        object["metadata"]["name"].as_str().unwrap_or("?")
    );
    match decoded {
        Ok(value) if unknown.is_empty() => value,
        Ok(_) => panic!("{name}: fields outside the schema: {unknown:?}"),
        Err(error) => panic!("{name} is not a valid object: {error}"),
    }
}

fn validate(objects: &[Value]) {
    for object in objects {
        let kind = object["kind"].as_str().unwrap_or_default();
        assert!(
            object["metadata"]["name"]
                .as_str()
                .is_some_and(|n| !n.is_empty()),
            "a {kind} without a name"
        );
        match kind {
            "Deployment" => drop(typed::<Deployment>(object)),
            "Service" => drop(typed::<Service>(object)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(object)),
            "PodDisruptionBudget" => drop(typed::<PodDisruptionBudget>(object)),
            "ClusterRole" => drop(typed::<ClusterRole>(object)),
            "ClusterRoleBinding" => drop(typed::<ClusterRoleBinding>(object)),
            "Role" => drop(typed::<Role>(object)),
            "RoleBinding" => drop(typed::<RoleBinding>(object)),
            "CustomResourceDefinition" => drop(typed::<CustomResourceDefinition>(object)),
            "GatewayClass" => {
                let text = match serde_yaml_ng::to_string(object) {
                    Ok(text) => text,
                    Err(error) => panic!("{error}"),
                };
                let decoded = model::decode::decode_file(Path::new("gatewayclass.yaml"), &text);
                assert!(decoded.is_ok(), "GatewayClass: {decoded:?}");
            }
            other => panic!("the chart renders a {other}, which this test does not check"),
        }
    }
}

fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects
        .iter()
        .filter(|o| o["kind"].as_str() == Some(kind))
        .collect()
}

fn kinds(objects: &[Value]) -> BTreeSet<String> {
    objects
        .iter()
        .filter_map(|o| o["kind"].as_str().map(String::from))
        .collect()
}

/// Every (group, resource, verb) the rules of these objects grant.
fn grants(objects: &[&Value]) -> BTreeSet<Grant> {
    let mut grants = BTreeSet::new();
    for object in objects {
        let rules: Vec<k8s_openapi::api::rbac::v1::PolicyRule> = typed(&object["rules"]);
        for rule in rules {
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    for verb in &rule.verbs {
                        grants.insert((group.clone(), resource.clone(), verb.clone()));
                    }
                }
            }
        }
    }
    grants
}

fn grant(group: &str, resource: &str, verb: &str) -> Grant {
    (group.into(), resource.into(), verb.into())
}

/// list and watch on every watched kind.
fn reads() -> BTreeSet<Grant> {
    let mut expected = BTreeSet::new();
    for watched in WATCHED {
        for verb in ["list", "watch"] {
            expected.insert(grant(watched.kind.group(), watched.plural, verb));
        }
    }
    expected
}

const PROVISIONING: &[&str] = &[
    "provisioning.enabled=true",
    "provisioning.namespaces={apps,edge}",
];

#[test]
fn the_chart_renders_valid_objects_with_and_without_provisioning() {
    let plain = render(&[]);
    validate(&plain);
    assert_eq!(
        kinds(&plain),
        BTreeSet::from(
            [
                "ClusterRole",
                "ClusterRoleBinding",
                "CustomResourceDefinition",
                "Deployment",
                "GatewayClass",
                "PodDisruptionBudget",
                "Role",
                "RoleBinding",
                "Service",
                "ServiceAccount",
            ]
            .map(String::from)
        )
    );
    let crds: BTreeSet<String> = of_kind(&plain, "CustomResourceDefinition")
        .iter()
        .filter_map(|c| c["spec"]["names"]["kind"].as_str().map(String::from))
        .collect();
    assert_eq!(
        crds,
        BTreeSet::from(
            [
                "AuthenticationPolicy",
                "HealthCheckPolicy",
                "RateLimitPolicy"
            ]
            .map(String::from)
        )
    );
    let provisioned = render(PROVISIONING);
    validate(&provisioned);
    // The data plane's service account and read-only access in each listed namespace.
    let accounts: BTreeSet<String> = of_kind(&provisioned, "ServiceAccount")
        .iter()
        .filter(|a| a["metadata"]["name"].as_str() == Some("portcullis-dataplane"))
        .filter_map(|a| a["metadata"]["namespace"].as_str().map(String::from))
        .collect();
    assert_eq!(accounts, BTreeSet::from(["apps".into(), "edge".into()]));
}

#[test]
fn cluster_roles_grant_exactly_what_the_watchers_status_writer_and_provisioning_use() {
    let objects = render(PROVISIONING);
    let roles = of_kind(&objects, "ClusterRole");
    let named = |suffix: &str| -> Vec<&Value> {
        roles
            .iter()
            .copied()
            .filter(|r| {
                r["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with(suffix))
            })
            .collect()
    };
    // Provisioned pods only read.
    let dataplane = named("-dataplane");
    assert_eq!(dataplane.len(), 1, "one data-plane ClusterRole");
    assert_eq!(grants(&dataplane), reads());

    let mut expected = reads();
    for watched in WATCHED.iter().filter(|w| w.writes_status()) {
        let status = format!("{}/status", watched.plural);
        for verb in ["get", "patch"] {
            expected.insert(grant(watched.kind.group(), &status, verb));
        }
    }
    for (group, resource) in [("apps", "deployments"), ("", "services")] {
        for verb in ["create", "patch"] {
            expected.insert(grant(group, resource, verb));
        }
    }
    let controller: Vec<&Value> = roles
        .iter()
        .copied()
        .filter(|r| !dataplane.contains(r))
        .collect();
    assert_eq!(controller.len(), 1, "one controller ClusterRole");
    assert_eq!(grants(&controller), expected);
}

#[test]
fn role_grants_only_the_lease_verbs_of_leader_election() {
    let objects = render(&[]);
    let expected = BTreeSet::from([
        grant("coordination.k8s.io", "leases", "create"),
        grant("coordination.k8s.io", "leases", "get"),
        grant("coordination.k8s.io", "leases", "patch"),
    ]);
    assert_eq!(grants(&of_kind(&objects, "Role")), expected);
}

#[test]
fn deployment_probes_the_admin_port_and_runs_in_kubernetes_mode() {
    let objects = render(&[
        "image.repository=registry.example/portcullis",
        "image.tag=1.2.3",
    ]);
    let deployments = of_kind(&objects, "Deployment");
    assert_eq!(deployments.len(), 1);
    let deployment: Deployment = typed(deployments[0]);
    let pod = deployment
        .spec
        .and_then(|s| s.template.spec)
        .unwrap_or_default();
    let container = &pod.containers[0];
    assert_eq!(
        container.image.as_deref(),
        Some("registry.example/portcullis:1.2.3")
    );
    let args = container.args.clone().unwrap_or_default();
    assert!(args.iter().any(|a| a == "--kube"), "{args:?}");
    let probe_path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(
        probe_path(&container.liveness_probe).as_deref(),
        Some("/live")
    );
    assert_eq!(
        probe_path(&container.readiness_probe).as_deref(),
        Some("/ready")
    );
    let security = container.security_context.clone().unwrap_or_default();
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let pod_security = pod.security_context.clone().unwrap_or_default();
    assert_eq!(pod_security.run_as_non_root, Some(true));

    let provisioned = render(PROVISIONING);
    let deployment: Deployment = typed(of_kind(&provisioned, "Deployment")[0]);
    let args = deployment
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.containers[0].args.clone().unwrap_or_default())
        .unwrap_or_default();
    assert!(
        args.iter().any(|a| a.starts_with("--provision-image")),
        "{args:?}"
    );
}
