use std::path::Path;

use super::*;

fn errors(text: &str) -> Vec<String> {
    match decode_file(Path::new("m.yaml"), text) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn unknown_field_names_file_line_and_path() {
    let text = "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: r
spec:
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /
      heders: []
";
    assert_eq!(
        errors(text),
        vec![
            "m.yaml:11: spec.rules[0].matches[0].heders: unknown field (not in the resource's schema)"
        ]
    );
}

#[test]
fn wrong_enum_value_says_what_is_allowed() {
    let text = "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  rules:
  - matches:
    - path: {type: Prefix, value: /}
";
    let errors = errors(text);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0]
            .starts_with("m.yaml:7: spec.rules[0].matches[0].path.type: unknown variant `Prefix`"),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("PathPrefix"), "{}", errors[0]);
}

#[test]
fn cel_rules_are_enforced() {
    let text = "\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: g}
spec:
  gatewayClassName: c
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - {name: http, port: 70000, protocol: HTTP, hostname: 'Bad_Host'}
";
    let errors = errors(text);
    assert!(
        errors.iter().any(|e| e
            == "m.yaml:8: spec.listeners[1].name: Listener name must be unique within the Gateway"),
        "{errors:?}"
    );
    assert!(errors.iter().any(|e| e.starts_with("m.yaml:8: spec.listeners[1].port: must be between 1 and 65535")), "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("m.yaml:8: spec.listeners[1].hostname:")),
        "{errors:?}"
    );
}

#[test]
fn unknown_kinds_are_skipped_with_a_warning_and_namespace_defaults() {
    let text = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
---
apiVersion: v1
kind: Service
metadata: {name: s}
spec:
  ports: [{port: 80}]
";
    let contents = decode_file(Path::new("m.yaml"), text).expect("valid");
    assert_eq!(contents.warnings.len(), 1);
    assert_eq!(contents.warnings[0].line, 1);
    assert_eq!(contents.objects.len(), 1);
    assert_eq!(
        contents.objects[0].0.meta().namespace.as_deref(),
        Some("default")
    );
    assert_eq!(contents.objects[0].1, 5);
}

#[test]
fn filter_type_needs_its_field() {
    let text = "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  rules:
  - filters:
    - type: RequestRedirect
      urlRewrite: {hostname: a.com}
";
    let errors = errors(text);
    assert!(
        errors.iter().any(|e| e.contains(
            "spec.rules[0].filters[0].requestRedirect: filter.requestRedirect must be specified"
        )),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("filters[0].urlRewrite: filter.urlRewrite must be nil")),
        "{errors:?}"
    );
}

#[test]
fn every_shared_conformance_manifest_decodes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/conformance/manifests");
    let Ok(entries) = walk(&root) else { return };
    let mut failures = Vec::new();
    for path in entries {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        // Placeholders are substituted by the runner before portcullis sees the files.
        let text = text.replace("{GATEWAY_CLASS_NAME}", "portcullis").replace(
            "{GATEWAY_CONTROLLER_NAME}",
            "portcullis.dev/gateway-controller",
        );
        if text.contains("PLACEHOLDER_") {
            continue;
        }
        if let Err(errors) = decode_file(&path, &text) {
            failures.extend(errors.iter().map(ToString::to_string));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

fn walk(dir: &Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            out.extend(walk(&path)?);
        } else if path.extension().is_some_and(|e| e == "yaml") {
            out.push(path);
        }
    }
    Ok(out)
}

/// The egress allowlist as it is often first written: a TLSRoute with an HTTPRoute-style
/// `matches`, no backendRefs and an empty hostname. Every mistake is named, and `matches`
/// gets an explanation instead of the generic unknown-field message.
#[test]
fn tls_route_with_path_matches_is_explained() {
    let text = "\
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata:
  name: allow-mistral-ai-access
  namespace: apps
spec:
  hostnames:
  - \"\"
  parentRefs:
  - group: policy.linkerd.io
    kind: EgressNetwork
    name: deny-all
    port: 443
  rules:
  - matches:
    - path:
        value: /v1/chat/completions
";
    let errors = errors(text);
    assert!(
        errors.iter().any(|e| e
            .starts_with("m.yaml:15: spec.rules[0].matches: TLSRoute rules have no `matches`")
            && e.contains("use an HTTPRoute on plaintext or TLS-terminated traffic")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("m.yaml:8: spec.hostnames[0]:")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("m.yaml:15: spec.rules[0]: a TLSRoute rule needs backendRefs")),
        "{errors:#?}"
    );
}

#[test]
fn corrected_egress_tls_route_and_network_decode() {
    let text = "\
apiVersion: policy.linkerd.io/v1alpha1
kind: EgressNetwork
metadata: {name: deny-all, namespace: apps}
spec:
  trafficPolicy: Deny
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: allow-mistral-ai-access, namespace: apps}
spec:
  hostnames: [api.mistral.ai]
  parentRefs:
  - {group: policy.linkerd.io, kind: EgressNetwork, name: deny-all, port: 443}
  rules:
  - backendRefs:
    - {group: policy.linkerd.io, kind: EgressNetwork, name: deny-all}
";
    assert_eq!(errors(text), Vec::<String>::new());
}

#[test]
fn egress_network_fields_are_checked() {
    let text = "\
apiVersion: policy.linkerd.io/v1alpha1
kind: EgressNetwork
metadata: {name: n}
spec:
  trafficPolicy: Block
---
apiVersion: policy.linkerd.io/v1alpha1
kind: EgressNetwork
metadata: {name: m}
spec:
  trafficPolicy: Allow
  networks:
  - cidr: 203.0.113.0/24
    except: [198.51.100.1, not-an-ip]
  - cidr: 300.1.1.1/8
---
apiVersion: policy.linkerd.io/v1alpha1
kind: EgressNetwork
metadata: {name: e}
spec:
  trafficPolicy: Allow
  networks: []
";
    let errors = errors(text);
    let expected = [
        "m.yaml:5: spec.trafficPolicy: unknown variant `Block`",
        "m.yaml:14: spec.networks[0].except[0]: 198.51.100.1/32 is not inside the network's cidr 203.0.113.0/24",
        "m.yaml:14: spec.networks[0].except[1]: must be a CIDR or a single address",
        "m.yaml:15: spec.networks[1].cidr: must be a CIDR",
        "m.yaml:22: spec.networks: must list at least one network",
    ];
    for prefix in expected {
        assert!(
            errors.iter().any(|e| e.starts_with(prefix)),
            "{prefix} not in {errors:#?}"
        );
    }
}

#[test]
fn backend_tls_policy_rules_are_enforced() {
    let valid = "\
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {name: p, namespace: apps}
spec:
  targetRefs: [{group: '', kind: Service, name: api, sectionName: https}]
  validation:
    caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}]
    hostname: api.internal
    subjectAltNames: [{type: URI, uri: 'spiffe://cluster.local/api'}]
";
    assert_eq!(errors(valid), Vec::<String>::new());
    let text = "\
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {name: p}
spec:
  targetRefs:
  - {group: '', kind: Service, name: api}
  - {group: '', kind: Service, name: api, sectionName: https}
  validation:
    caCertificateRefs: [{group: '', kind: ConfigMap, name: ca}]
    wellKnownCACertificates: System
    hostname: '*.internal'
    subjectAltNames: [{type: Hostname, uri: 'spiffe://x/y'}]
";
    let errors = errors(text);
    let messages = errors.join("\n");
    for expected in [
        "spec.targetRefs[0].sectionName: sectionName must be specified",
        "spec.validation: must not contain both CACertificateRefs and WellKnownCACertificates",
        "spec.validation.hostname: must be a lowercase DNS name without wildcard",
        "spec.validation.subjectAltNames[0]: SubjectAltName element must contain Hostname",
    ] {
        assert!(
            messages.contains(expected),
            "{expected} missing from:\n{messages}"
        );
    }
    assert_eq!(errors.len(), 4, "{messages}");
}

#[test]
fn retry_fields_are_checked() {
    let text = "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  rules:
  - backendRefs: [{name: web, port: 80}]
    retry: {attempts: -1, backoff: soon, codes: [503, 200]}
";
    let errors = errors(text);
    for expected in [
        "m.yaml:7: spec.rules[0].retry.attempts: must be 0 or more",
        "m.yaml:7: spec.rules[0].retry.codes[1]: must be an HTTP status from 400 to 599",
        "m.yaml:7: spec.rules[0].retry.backoff: must be a Gateway API duration",
    ] {
        assert!(
            errors.iter().any(|e| e.starts_with(expected)),
            "{expected} not in {errors:#?}"
        );
    }
}

#[test]
fn policies_are_checked_like_any_kind() {
    let text = "\
apiVersion: portcullis.dev/v1alpha1
kind: AuthenticationPolicy
metadata: {name: empty}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: TCPRoute, name: db}]
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthenticationPolicy
metadata: {name: keys}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app}]
  apiKey:
    credentials: [{name: keys}]
    extractFrom: [{header: x-key, queryParameter: key}]
    forwardClientIdHeader: \"bad header\"
---
apiVersion: portcullis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: limits}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: edge}]
  limits:
  - {scope: Local, requests: 10, unit: Day}
---
apiVersion: portcullis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: keyed}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: edge}]
  limits:
  - {scope: Local, requests: 10, unit: Second}
  - {scope: Global, requests: 10, unit: Second, clientKey: {type: Header}}
---
apiVersion: portcullis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {name: unknown}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: edge}]
  limits: [{scope: Local, requests: 10, unit: Second, burst: 5}]
";
    let errors = errors(text);
    let expect = |prefix: &str, text: &str| {
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(prefix) && e.contains(text)),
            "{prefix} … {text}: {errors:#?}"
        );
    };
    expect("m.yaml:4: spec:", "configures no method");
    expect(
        "m.yaml:5: spec.targetRefs[0]:",
        "gateway.networking.k8s.io/TCPRoute cannot be targeted",
    );
    expect(
        "m.yaml:14: spec.apiKey.extractFrom[0]:",
        "exactly one of header, queryParameter",
    );
    expect(
        "m.yaml:15: spec.apiKey.forwardClientIdHeader:",
        "not a valid header name",
    );
    expect(
        "m.yaml:23: spec.limits[0].unit:",
        "`Second`, `Minute`, `Hour`",
    );
    expect(
        "m.yaml:32: spec.limits[1].clientKey.name:",
        "required for type Header",
    );
    expect("m.yaml:39: spec.limits[0]", "burst");
}

#[test]
fn health_check_policies_are_checked() {
    let text = "\
apiVersion: portcullis.dev/v1alpha1
kind: HealthCheckPolicy
metadata: {name: both}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: edge}]
  interval: soon
  unhealthyThreshold: 0
  http: {path: healthz, expectedStatuses: [200, 700]}
  tcp: {}
---
apiVersion: portcullis.dev/v1alpha1
kind: HealthCheckPolicy
metadata: {name: neither}
spec:
  targetRefs: [{group: '', kind: Service, name: app}]
  timeout: 0s
---
apiVersion: portcullis.dev/v1alpha1
kind: HealthCheckPolicy
metadata: {name: good}
spec:
  targetRefs: [{group: '', kind: Service, name: app, sectionName: http}]
  http: {path: /healthz}
";
    let errors = errors(text);
    let expect = |prefix: &str, text: &str| {
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(prefix) && e.contains(text)),
            "{prefix} … {text}: {errors:#?}"
        );
    };
    expect(
        "m.yaml:5: spec.targetRefs[0]:",
        "gateway.networking.k8s.io/Gateway cannot be targeted; supported: Service",
    );
    expect("m.yaml:6: spec.interval:", "positive duration");
    expect("m.yaml:7: spec.unhealthyThreshold:", "from 1 to 100");
    expect("m.yaml:8: spec.http.path:", "must start with /");
    expect(
        "m.yaml:8: spec.http.expectedStatuses[1]:",
        "700 is not an HTTP status",
    );
    expect("m.yaml:4: spec:", "exactly one of http, tcp");
    expect("m.yaml:16: spec.timeout:", "positive duration");
    expect("m.yaml:14: spec:", "exactly one of http, tcp");
    assert!(
        !errors
            .iter()
            .any(|e| e.contains("good") || e.starts_with("m.yaml:2")),
        "the valid policy was refused: {errors:#?}"
    );
}

#[test]
fn a_syntax_error_after_good_documents_is_the_files_only_error() {
    // Documents are decoded as they are parsed; a later syntax error still rejects the
    // whole file, with no field error of an earlier document beside it.
    let text = "\
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: good}
spec: {hostnames: [a.example.com]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: misspelt}
spec: {hostnamez: [b.example.com]}
---
kind: [unclosed
";
    let found = errors(text);
    assert_eq!(found.len(), 1, "{found:?}");
    // The parser notices the unclosed sequence at the end of the text.
    assert!(found[0].starts_with("m.yaml:12: invalid YAML"), "{found:?}");
}
