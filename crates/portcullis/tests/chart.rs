//! The Helm chart's RBAC against what the controller does: list and watch every watched
//! kind, get and patch the status of the kinds it writes status for, create and patch the
//! provisioned Deployments and Services, and the Lease verbs of leader election; nothing
//! more. (Helm is not installable on our machines, so the
//! rules are kept template-free and read as YAML here.)

use std::collections::BTreeSet;
use std::path::Path;

use serde_yaml_ng::Value;
use sources::kube::WATCHED;

/// (API group, resource, verb).
type Grant = (String, String, String);

fn chart_file(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy/chart")
        .join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) => panic!("{}: {error}", path.display()),
    }
}

/// The documents of a template, with every line holding a template action removed (the
/// rules themselves hold none).
fn documents(name: &str) -> Vec<Value> {
    let text: String = chart_file(name)
        .lines()
        .filter(|line| !line.contains("{{"))
        .map(|line| format!("{line}\n"))
        .collect();
    text.split("\n---\n")
        .map(|doc| match serde_yaml_ng::from_str(doc) {
            Ok(value) => value,
            Err(error) => panic!("{name}: {error}"),
        })
        .collect()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn grants(kind: &str, file: &str) -> BTreeSet<Grant> {
    let mut grants = BTreeSet::new();
    for doc in documents(file)
        .iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
    {
        for rule in doc["rules"].as_sequence().into_iter().flatten() {
            for group in strings(&rule["apiGroups"]) {
                for resource in strings(&rule["resources"]) {
                    for verb in strings(&rule["verbs"]) {
                        grants.insert((group.clone(), resource.clone(), verb));
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

#[test]
fn cluster_roles_grant_exactly_what_the_watchers_status_writer_and_provisioning_use() {
    let mut expected = BTreeSet::new();
    for watched in WATCHED {
        for verb in ["list", "watch"] {
            expected.insert(grant(watched.kind.group(), watched.plural, verb));
        }
    }
    // Provisioned pods only read.
    assert_eq!(
        grants("ClusterRole", "templates/dataplane-rbac.yaml"),
        expected
    );
    for watched in WATCHED.iter().filter(|w| w.writes_status()) {
        let status = format!("{}/status", watched.plural);
        for verb in ["get", "patch"] {
            expected.insert(grant(watched.kind.group(), &status, verb));
        }
    }
    // Provisioning (when enabled) applies a Deployment and a Service per Gateway.
    for (group, resource) in [("apps", "deployments"), ("", "services")] {
        for verb in ["create", "patch"] {
            expected.insert(grant(group, resource, verb));
        }
    }
    assert_eq!(
        grants("ClusterRole", "templates/clusterrole.yaml"),
        expected
    );
}

#[test]
fn role_grants_only_the_lease_verbs_of_leader_election() {
    let expected = BTreeSet::from([
        grant("coordination.k8s.io", "leases", "create"),
        grant("coordination.k8s.io", "leases", "get"),
        grant("coordination.k8s.io", "leases", "patch"),
    ]);
    assert_eq!(grants("Role", "templates/role.yaml"), expected);
}

#[test]
fn deployment_probes_the_admin_port_and_runs_in_kubernetes_mode() {
    let text = chart_file("templates/deployment.yaml");
    for needle in [
        "httpGet: {path: /live, port: admin}",
        "httpGet: {path: /ready, port: admin}",
        "- --kube",
        "runAsNonRoot: true",
        "readOnlyRootFilesystem: true",
    ] {
        assert!(text.contains(needle), "deployment.yaml lacks {needle:?}");
    }
}
