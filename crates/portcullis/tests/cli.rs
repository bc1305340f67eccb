//! `check` and `run` on a broken manifest: `check` names file, line and field path and
//! fails; `run` keeps serving the last good version and reports the error in `/status`.

mod support;

use std::process::Command;

use support::{Gateway, Upstream, free_port, get, sample};

fn manifests(port: u16, upstream: u16, field: &str) -> String {
    format!(
        "{gateway}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - matches:
    - path: {{type: PathPrefix, value: /}}
      {field}: []
    backendRefs: [{{name: up, port: 80}}]
{service}",
        gateway = support::gateway_yaml(port),
        service = support::service_yaml("up", upstream),
    )
}

#[test]
fn check_reports_an_unknown_field_with_file_line_and_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("all.yaml"), manifests(8080, 9, "heders")).expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config"])
        .arg(dir.path())
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    let expected = format!(
        "error: {}:22: spec.rules[0].matches[0].heders: unknown field",
        dir.path().join("all.yaml").display()
    );
    assert!(
        stdout.contains(&expected),
        "missing {expected:?} in:\n{stdout}"
    );
}

#[test]
fn check_passes_on_valid_manifests() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("all.yaml"), manifests(8080, 9, "headers")).expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config"])
        .arg(dir.path())
        .output()
        .expect("run check");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// The gateway on [`manifests`] with a valid route, once it answers 200: its upstream (kept
/// alive by the caller), config directory, process and listener port.
async fn serving_web() -> (Upstream, tempfile::TempDir, Gateway, u16) {
    let upstream = Upstream::start("up").await;
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    support::replace(
        dir.path(),
        "all.yaml",
        &manifests(port, upstream.port, "headers"),
    );
    let gateway = Gateway::start(dir.path()).await;
    let url = format!("http://127.0.0.1:{port}/");
    gateway
        .wait_until(|| async { get(&url, &[]).await.is_ok_and(|(s, _)| s == 200) })
        .await;
    (upstream, dir, gateway, port)
}

#[tokio::test(flavor = "multi_thread")]
async fn run_keeps_the_last_good_config_when_a_file_breaks() {
    let (upstream, dir, gateway, port) = serving_web().await;
    let url = format!("http://127.0.0.1:{port}/");

    support::replace(
        dir.path(),
        "all.yaml",
        &manifests(port, upstream.port, "heders"),
    );
    gateway
        .wait_until(|| async {
            let (_, status) = gateway.admin("/status").await;
            status.contains("spec.rules[0].matches[0].heders")
        })
        .await;
    let (status, body) = get(&url, &[]).await.expect("gateway answers");
    assert_eq!(
        (status, body.as_str()),
        (200, "up"),
        "the last good config still serves"
    );
}

/// The egress allowlist as the Cal-LLM seed wrote it: a TLSRoute with an HTTPRoute-style
/// path match, no backendRefs and an empty hostname.
const SEED_TLS_ROUTE: &str = "\
apiVersion: policy.linkerd.io/v1alpha1
kind: EgressNetwork
metadata: {name: deny-all, namespace: apps}
spec:
  trafficPolicy: Deny
---
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

/// The same allowlist corrected: the hostname named, the EgressNetwork as the backend.
const CORRECTED_TLS_ROUTE: &str = "\
apiVersion: policy.linkerd.io/v1alpha1
kind: EgressNetwork
metadata: {name: deny-all, namespace: apps}
spec:
  trafficPolicy: Deny
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata:
  name: allow-mistral-ai-access
  namespace: apps
spec:
  hostnames:
  - api.mistral.ai
  parentRefs:
  - group: policy.linkerd.io
    kind: EgressNetwork
    name: deny-all
    port: 443
  rules:
  - backendRefs:
    - group: policy.linkerd.io
      kind: EgressNetwork
      name: deny-all
";

fn check(contents: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("egress.yaml"), contents).expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config"])
        .arg(dir.path())
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    (
        output.status.code(),
        stdout.replace(&dir.path().display().to_string(), "DIR"),
    )
}

#[test]
fn check_explains_the_seed_tls_route_and_accepts_the_corrected_one() {
    let (code, stdout) = check(SEED_TLS_ROUTE);
    assert_eq!(code, Some(1), "{stdout}");
    for expected in [
        "DIR/egress.yaml:14: spec.hostnames[0]: must be a lowercase DNS name",
        "DIR/egress.yaml:21: spec.rules[0].matches: TLSRoute rules have no `matches`: a TLS connection is routed by the SNI of its ClientHello alone",
        "use an HTTPRoute on plaintext or TLS-terminated traffic",
        "DIR/egress.yaml:21: spec.rules[0]: a TLSRoute rule needs backendRefs",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }

    let (code, stdout) = check(CORRECTED_TLS_ROUTE);
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("EgressNetwork/apps/deny-all")
            && stdout.contains("TLSRoute/apps/allow-mistral-ai-access"),
        "{stdout}"
    );
}

fn explain(manifests: &str, args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("all.yaml"), manifests).expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["explain", "--config"])
        .arg(dir.path())
        .args(args)
        .output()
        .expect("run explain");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// The Cal-LLM calendar canary: a GRPCRoute on Service `calendar` port 8080 sending 40% of
/// calls to `calendar` and 60% to `calendar-v2`, next to the web app's Gateway route.
fn calendar_manifests() -> String {
    format!(
        "{gateway}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: web}}
spec:
  parentRefs: [{{name: edge}}]
  hostnames: [www.cal-llm.com]
  rules:
  - matches: [{{path: {{type: PathPrefix, value: /app}}}}]
    backendRefs: [{{name: up, port: 80}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{name: calendar}}
spec:
  parentRefs: [{{group: core, kind: Service, name: calendar, port: 8080}}]
  rules:
  - matches: [{{method: {{service: calendar.Calendar, method: ListSessions}}}}]
    backendRefs:
    - {{name: calendar, port: 8080, weight: 40}}
    - {{name: calendar-v2, port: 8080, weight: 60}}
---
apiVersion: v1
kind: Service
metadata: {{name: calendar}}
spec: {{clusterIP: 127.0.2.40, ports: [{{port: 8080}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: calendar-v2}}
spec: {{clusterIP: 127.0.2.41, ports: [{{port: 8080}}]}}
{up}",
        gateway = support::gateway_yaml(8080),
        up = support::service_yaml("up", 9),
    )
}

#[test]
fn explain_shows_the_rule_and_backends_of_a_gateway_request() {
    let (code, stdout) = explain(
        &calendar_manifests(),
        &[
            "--gateway",
            "default/edge",
            "--host",
            "www.cal-llm.com",
            "--path",
            "/app/sessions",
        ],
    );
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("route HTTPRoute default/web rule 0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("backend default/up:80 weight 1 (100.0%)"),
        "{stdout}"
    );

    let (code, stdout) = explain(
        &calendar_manifests(),
        &[
            "--gateway",
            "default/edge",
            "--host",
            "other.example",
            "--path",
            "/app",
        ],
    );
    assert_eq!(code, Some(1), "{stdout}");
}

#[test]
fn explain_shows_a_grpc_call_on_a_service_parent() {
    let (code, stdout) = explain(
        &calendar_manifests(),
        &[
            "--service",
            "default/calendar",
            "--port",
            "8080",
            "--grpc-method",
            "calendar.Calendar/ListSessions",
        ],
    );
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("127.0.2.40:8080: listener Service default/calendar/port 8080"),
        "{stdout}"
    );
    assert!(
        stdout.contains("route GRPCRoute default/calendar rule 0"),
        "{stdout}"
    );
    assert!(
        stdout.contains("backend default/calendar:8080 weight 40 (40.0%)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("backend default/calendar-v2:8080 weight 60 (60.0%)"),
        "{stdout}"
    );

    let (code, stdout) = explain(
        &calendar_manifests(),
        &[
            "--service",
            "default/calendar",
            "--grpc-method",
            "calendar.Calendar/Delete",
        ],
    );
    assert_eq!(code, Some(1), "{stdout}");
    assert!(stdout.contains("no rule matches"), "{stdout}");
}

#[test]
fn run_needs_a_config_directory_or_kube_and_not_both() {
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("run")
            .args(args)
            .output()
            .expect("run portcullis")
    };
    let neither = run(&[]);
    assert_eq!(neither.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&neither.stderr).contains("--config <DIR>"));
    let both = run(&["--kube", "--config", "."]);
    assert_eq!(both.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&both.stderr).contains("cannot be used with"));
}

#[test]
fn run_kube_without_credentials_fails_with_a_clear_error() {
    let output = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--kube", "--admin", "127.0.0.1:0"])
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env("PORTCULLIS_LOG", "warn")
        .output()
        .expect("run portcullis");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot configure the Kubernetes client"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_per_route_backend_and_status_class() {
    let (_upstream, _dir, gateway, port) = serving_web().await;
    let url = format!("http://127.0.0.1:{port}/");
    get(&url, &[]).await.expect("a second request");
    let (_, metrics) = gateway.admin("/metrics").await;
    let served = metrics
        .lines()
        .find(|l| {
            l.starts_with(r#"portcullis_requests_total{route_kind="HTTPRoute",route_namespace="default",route_name="web",backend="default/up:80",code_class="2xx"}"#)
        })
        .unwrap_or_else(|| panic!("no request counter for the route in\n{metrics}"));
    let count: u64 = served
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("a count");
    assert!(count >= 2, "{served}");
    assert!(
        metrics.contains(r#"portcullis_request_duration_seconds_count{route_kind="HTTPRoute",route_namespace="default",route_name="web"}"#),
        "{metrics}"
    );
    assert!(!metrics.contains("# EOF"), "{metrics}");
}

/// A W3C trace context sent by a client.
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// Starts `portcullis run` on `config` with its stderr on a pipe that the caller reads, or
/// leaves unread.
fn run_with_piped_stderr(
    config: &std::path::Path,
    admin: u16,
    args: &[&str],
) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--config"])
        .arg(config)
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start portcullis")
}

/// An upstream and a directory routing a Gateway listener to it; with the listener's and an
/// admin port.
async fn web_files() -> (Upstream, tempfile::TempDir, u16, u16) {
    let upstream = Upstream::start("up").await;
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    support::replace(
        dir.path(),
        "all.yaml",
        &manifests(port, upstream.port, "headers"),
    );
    (upstream, dir, port, free_port())
}

/// Runs the gateway with `args`, sends one request, stops it with SIGTERM and returns what it
/// wrote to stderr.
async fn logs_of_one_request(args: &[&str]) -> String {
    let (_upstream, dir, port, admin) = web_files().await;
    let child = run_with_piped_stderr(dir.path(), admin, args);
    let url = format!("http://127.0.0.1:{port}/");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while get(&url, &[]).await.map(|(s, _)| s) != Ok(200) {
        assert!(
            std::time::Instant::now() < deadline,
            "the route never answered"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // One request with a body and a trace context, for the byte counts and the trace id.
    let traced = [("traceparent", TRACEPARENT)];
    let answer = support::send("POST", &url, &traced, "hello").await;
    assert_eq!(answer.map(|a| a.status), Ok(200));
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let output = child.wait_with_output().expect("portcullis exits");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn access_log_is_one_json_line_per_request_and_can_be_turned_off() {
    let logs = logs_of_one_request(&["--log-format", "json"]).await;
    let line = logs
        .lines()
        .filter(|l| l.contains(r#""target":"portcullis::access""#))
        .find(|l| l.contains(r#""status":200"#))
        .unwrap_or_else(|| panic!("no access line in\n{logs}"));
    let entry: serde_json::Value = serde_json::from_str(line).expect("one JSON object per line");
    assert_eq!(entry["fields"]["method"], "GET", "{line}");
    assert_eq!(entry["fields"]["route"], "default/web#0", "{line}");
    assert_eq!(entry["fields"]["backend"], "default/up:80", "{line}");
    assert_eq!(entry["fields"]["bytes_sent"], 2, "{line}");
    assert_eq!(entry["fields"]["trace_id"], "-", "{line}");
    assert!(entry["fields"]["duration_ms"].as_f64().is_some(), "{line}");
    assert!(
        entry["fields"]["response_headers_ms"].as_f64().is_some(),
        "{line}"
    );
    let traced = logs
        .lines()
        .filter(|l| l.contains(r#""target":"portcullis::access""#))
        .find(|l| l.contains(r#""method":"POST""#))
        .unwrap_or_else(|| panic!("no access line for the POST in\n{logs}"));
    let entry: serde_json::Value = serde_json::from_str(traced).expect("JSON");
    assert_eq!(entry["fields"]["bytes_received"], 5, "{traced}");
    assert_eq!(
        entry["fields"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "{traced}"
    );
    assert!(
        entry["fields"]["authority"]
            .as_str()
            .is_some_and(|authority| authority.starts_with("127.0.0.1:")),
        "{traced}"
    );

    let logs = logs_of_one_request(&["--log-format", "json", "--access-log", "off"]).await;
    assert!(
        !logs.contains("portcullis::access"),
        "access lines with --access-log off:\n{logs}"
    );
}

#[test]
fn explain_shows_the_policies_of_a_request_and_where_they_attach() {
    let manifests = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../translate/tests/fixtures/policies.yaml"
    ))
    .expect("fixture");
    let request = |port: &str, host: &str, path: &str| {
        let args = [
            "--gateway",
            "default/edge",
            "--port",
            port,
            "--host",
            host,
            "--path",
            path,
        ];
        explain(&manifests, &args)
    };
    // Rule `private` has its own JWT policy; the listener's rate limit reaches it too.
    let (code, stdout) = request("80", "www.example.com", "/private/a");
    assert_eq!(code, Some(0), "{stdout}");
    assert!(stdout.contains("authentication: AuthenticationPolicy default/private-jwt via HTTPRoute default/web rule private: JWT (providers test)"), "{stdout}");
    assert!(stdout.contains("rate limit: RateLimitPolicy default/per-client via Gateway default/edge listener http: 10 requests per 1s, per client IP (Local)"), "{stdout}");
    // Rule `public` on the other listener: only the Gateway's basic auth.
    let (_, stdout) = request("8080", "www.example.com", "/x");
    assert!(stdout.contains("authentication: AuthenticationPolicy default/gateway-basic via Gateway default/edge: basic auth (realm \"edge\", 1 users)"), "{stdout}");
    assert!(!stdout.contains("rate limit"), "{stdout}");
    // ExternalAuth and an invalid policy.
    let (_, stdout) = request("80", "ext.example.com", "/grpc");
    assert!(
        stdout.contains("external auth: GRPC (ext_authz) service default/authz:9000"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "invalid, every request gets 500: Secret default/no-such-secret does not exist"
        ),
        "{stdout}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_show_connections_retries_connect_errors_ejections_and_reloads() {
    let upstream = support::Upstream::start("up").await;
    let refused = support::free_port();
    let port = support::free_port();
    let manifests = format!(
        "{}{}---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: retried}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - backendRefs: [{{name: pair, port: 80}}]
    retry: {{attempts: 1, backoff: 1ms}}
",
        support::gateway_yaml(port),
        support::pair_service_yaml(&[("pair-refused", refused), ("pair-good", upstream.port)]),
    );
    let dir = tempfile::tempdir().expect("tempdir");
    support::replace(dir.path(), "all.yaml", &manifests);
    let gateway =
        support::Gateway::start_with(dir.path(), &["--load-balancer", "round-robin"]).await;
    let url = format!("http://127.0.0.1:{port}/");
    gateway
        .wait_until(|| async { get(&url, &[]).await.is_ok_and(|(s, _)| s == 200) })
        .await;
    // Round robin: every other first attempt meets the refusing endpoint and is retried on
    // the other one; after five failures in a row the refusing endpoint is ejected.
    for _ in 0..10 {
        let (status, _) = get(&url, &[]).await.expect("answer");
        assert_eq!(status, 200);
    }
    let (_, metrics) = gateway.admin("/metrics").await;
    let bind = format!("127.0.0.1:{port}");
    assert!(
        sample(
            &metrics,
            &format!("portcullis_listener_connections_total{{bind=\"{bind}\"}}")
        ) >= 10.0
    );
    assert!(
        sample(
            &metrics,
            "portcullis_upstream_connect_errors_total{backend=\"default/pair:80\"}"
        ) >= 5.0
    );
    assert!(
        sample(
            &metrics,
            "portcullis_retries_total{route_kind=\"HTTPRoute\",route_namespace=\"default\",route_name=\"retried\"}"
        ) >= 5.0
    );
    assert_eq!(sample(&metrics, "portcullis_outlier_ejections_total"), 1.0);
    assert_eq!(sample(&metrics, "portcullis_requests_in_flight"), 0.0);
    assert!(sample(&metrics, "portcullis_config_reloads_total") >= 1.0);
    assert!(sample(&metrics, "portcullis_translate_seconds") > 0.0);

    // A broken manifest is rejected and counted; the last good config stays.
    support::replace(
        dir.path(),
        "broken.yaml",
        "kind: HTTPRoute\napiVersion: gateway.networking.k8s.io/v1\nmetadata: {name: x}\nspec: {rules: 3}\n",
    );
    gateway
        .wait_until(|| async {
            let (_, metrics) = gateway.admin("/metrics").await;
            sample(&metrics, "portcullis_config_reloads_rejected_total") >= 1.0
        })
        .await;
    assert_eq!(get(&url, &[]).await.map(|(s, _)| s), Ok(200));
}

/// Stderr that is never read while a reload logs more lines than the log queue holds: the
/// gateway neither stalls nor grows the queue; it drops what does not fit and says how many
/// on `/metrics`.
#[tokio::test(flavor = "multi_thread")]
async fn log_lines_stderr_cannot_take_are_dropped_and_counted() {
    let (_upstream, dir, port, admin) = web_files().await;
    // One warning per rejected manifest: 4,000 lines, beyond the 1,024-line queue (access
    // log off) and a pipe's buffer together.
    for i in 0..4_000 {
        std::fs::write(
            dir.path().join(format!("broken-{i}.yaml")),
            format!("kind: HTTPRoute\napiVersion: gateway.networking.k8s.io/v1\nmetadata: {{name: broken-{i}}}\nspec: {{rules: 3}}\n"),
        )
        .expect("write manifest");
    }
    // Killed when dropped; its stderr stays unread until then.
    let _gateway = Gateway::adopt(
        run_with_piped_stderr(dir.path(), admin, &["--access-log", "off"]),
        admin,
    );
    let metrics_url = format!("http://127.0.0.1:{admin}/metrics");
    let url = format!("http://127.0.0.1:{port}/");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let dropped = loop {
        let served = get(&url, &[]).await.is_ok_and(|(s, _)| s == 200);
        let dropped = match get(&metrics_url, &[]).await {
            Ok((200, metrics)) => sample(&metrics, "portcullis_log_lines_dropped_total"),
            _ => 0.0,
        };
        if served && dropped > 0.0 {
            break dropped;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "served {served}, dropped {dropped}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // At most every line but those the queue and the pipe held.
    assert!(dropped < 4_000.0, "{dropped}");
}
