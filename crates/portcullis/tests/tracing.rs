//! Distributed tracing: with `--otlp-endpoint`, each request continues the caller's W3C
//! trace (or starts one), the backend gets a `traceparent` naming the gateway's span as its
//! parent, and the span reaches an OTLP collector (here a tonic TraceService in the test).

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio::net::TcpListener;

use support::{Gateway, Upstream, free_port, get};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// Collects exported spans with their resource's `service.name`.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("lock");
        for resource in request.into_inner().resource_spans {
            let service = resource
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(Value::StringValue(name)) => Some(name.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    /// The first exported span (with its service name) that `matches`, waiting up to 5 s
    /// (the exporter sends within 1 s).
    async fn wait_for(&self, matches: impl Fn(&Span) -> bool) -> Option<(String, Span)> {
        for _ in 0..100 {
            let found = self
                .spans
                .lock()
                .expect("lock")
                .iter()
                .find(|(_, span)| matches(span))
                .cloned();
            if found.is_some() {
                return found;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }
}

async fn collector() -> (u16, Collector) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let collector = Collector::default();
    let server = TraceServiceServer::new(collector.clone());
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(server)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await;
    });
    (port, collector)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| v.value.clone())
}

/// The `traceparent` line the header-echo upstream saw.
fn traceparent_seen(body: &str) -> String {
    body.lines()
        .find_map(|line| line.strip_prefix("traceparent: "))
        .unwrap_or_else(|| panic!("the backend got no traceparent:\n{body}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn spans_continue_the_callers_trace_and_reach_the_collector() {
    let upstream = Upstream::echo_headers().await;
    let (collector_port, collector) = collector().await;
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    support::replace(
        dir.path(),
        "all.yaml",
        &support::one_route_yaml(port, "up", upstream.port),
    );
    let endpoint = format!("http://127.0.0.1:{collector_port}");
    let gateway = Gateway::start_with(
        dir.path(),
        &[
            "--otlp-endpoint",
            &endpoint,
            "--otlp-service-name",
            "edge-gw",
        ],
    )
    .await;
    let url = format!("http://127.0.0.1:{port}/items?id=7");
    gateway
        .wait_until(|| async { get(&url, &[]).await.is_ok_and(|(s, _)| s == 200) })
        .await;

    // A caller with a sampled trace context.
    let caller = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let (status, body) = get(
        &url,
        &[("traceparent", &caller), ("tracestate", "vendor=x")],
    )
    .await
    .expect("traced request");
    assert_eq!(status, 200);
    let forwarded = traceparent_seen(&body);
    let parts: Vec<&str> = forwarded.split('-').collect();
    assert_eq!(parts.len(), 4, "{forwarded}");
    assert_eq!(
        (parts[0], parts[1], parts[3]),
        ("00", TRACE_ID, "01"),
        "{forwarded}"
    );
    assert_ne!(
        parts[2], CALLER_SPAN,
        "the backend's parent is the gateway's span"
    );
    assert!(body.contains("tracestate: vendor=x"), "{body}");
    let gateway_span = parts[2].to_string();

    // The span arrives within the exporter's flush interval.
    let (service, span) = collector
        .wait_for(|span| hex(&span.span_id) == gateway_span)
        .await
        .expect("the span was exported");
    assert_eq!(service, "edge-gw");
    assert_eq!(hex(&span.trace_id), TRACE_ID);
    assert_eq!(hex(&span.parent_span_id), CALLER_SPAN);
    assert_eq!(span.name, "GET default/up#0");
    assert_eq!(span.kind, 2, "a server span");
    assert!(span.end_time_unix_nano >= span.start_time_unix_nano);
    assert_eq!(
        attribute(&span, "http.response.status_code"),
        Some(Value::IntValue(200))
    );
    assert_eq!(
        attribute(&span, "url.path"),
        Some(Value::StringValue("/items".into())),
        "the query is not recorded"
    );
    assert_eq!(
        attribute(&span, "portcullis.backend"),
        Some(Value::StringValue("default/up:80".into()))
    );

    // A request without a trace context starts a trace, sampled at the default ratio of 1.
    let (_, body) = get(&url, &[]).await.expect("untraced request");
    let forwarded = traceparent_seen(&body);
    let new_trace = forwarded.split('-').nth(1).expect("trace id").to_string();
    assert_ne!(new_trace, TRACE_ID);
    let (_, root) = collector
        .wait_for(|span| hex(&span.trace_id) == new_trace)
        .await
        .expect("the new trace's span was exported");
    assert!(root.parent_span_id.is_empty(), "a root span has no parent");

    // A caller that decided not to sample: propagated, not exported.
    let unsampled = format!("00-{}-{CALLER_SPAN}-00", "1".repeat(32));
    let (_, body) = get(&url, &[("traceparent", &unsampled)])
        .await
        .expect("unsampled request");
    assert!(traceparent_seen(&body).ends_with("-00"));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !collector
            .spans
            .lock()
            .expect("lock")
            .iter()
            .any(|(_, span)| hex(&span.trace_id) == "1".repeat(32)),
        "an unsampled span was exported"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_collector_the_traceparent_passes_through_unchanged() {
    let upstream = Upstream::echo_headers().await;
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    support::replace(
        dir.path(),
        "all.yaml",
        &support::one_route_yaml(port, "up", upstream.port),
    );
    let gateway = Gateway::start(dir.path()).await;
    let url = format!("http://127.0.0.1:{port}/");
    gateway
        .wait_until(|| async { get(&url, &[]).await.is_ok_and(|(s, _)| s == 200) })
        .await;
    let caller = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let (_, body) = get(&url, &[("traceparent", &caller)])
        .await
        .expect("request");
    assert_eq!(traceparent_seen(&body), caller);
    let (_, body) = get(&url, &[]).await.expect("request");
    assert!(!body.contains("traceparent"), "{body}");
}
