//! Distributed tracing: W3C Trace Context (`traceparent`) and spans exported over OTLP.
//!
//! Off by default. When a collector is configured (`--otlp-endpoint`), every request gets a
//! server span: its trace and parent come from the request's `traceparent` when that is valid
//! (a new trace otherwise), and the request goes on to the backend with a `traceparent`
//! naming this span as the parent, so the backend's spans join the client's trace.
//! `tracestate` passes through untouched. The caller's sampling decision (the `sampled`
//! flag) is followed; new traces are sampled at `--otlp-sample-ratio`. An unsampled request
//! is still propagated (with a fresh span id) but nothing is exported for it.
//!
//! Ended spans go through a bounded queue to one exporter task that sends them in batches
//! (`opentelemetry.proto.collector.trace.v1.TraceService/Export` over gRPC). When the
//! collector is slow or down, spans beyond the queue are dropped and counted: tracing never
//! holds up a request.
//!
//! Without a collector, the access log still shows the trace id of a request that carried a
//! valid `traceparent`, which ties log lines to traces made elsewhere.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use http::header::HeaderValue;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span, status};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::mpsc;

/// The request header of W3C Trace Context.
pub(crate) const TRACEPARENT: &str = "traceparent";

/// Spans waiting for the exporter; more are dropped.
const QUEUE: usize = 4096;
/// Spans sent in one export request at most.
const BATCH: usize = 512;
/// How long an ended span waits for its batch to fill.
const FLUSH: Duration = Duration::from_secs(1);
/// Time allowed for one export request.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and how spans are exported.
#[derive(Clone, Debug)]
pub struct TracingOptions {
    /// The OTLP/gRPC collector, `http://host:port`.
    pub endpoint: String,
    /// The share of new traces (requests without a sampling decision) that are sampled.
    pub sample_ratio: f64,
    /// `service.name` of the exported resource.
    pub service_name: String,
}

/// A parsed `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub sampled: bool,
}

/// Parses a `traceparent` value (W3C Trace Context, section 3.2). Version `00` must be
/// exactly 55 characters; a later version may carry more after a `-`. Hex must be lowercase,
/// and all-zero ids, version `ff` and malformed values are invalid (the caller then starts a
/// new trace, as the spec requires).
pub(crate) fn parse_traceparent(value: &[u8]) -> Option<TraceParent> {
    if value.len() < 55 {
        return None;
    }
    let version = hex_array::<1>(&value[0..2])?[0];
    if version == 0xff || (version == 0 && value.len() != 55) {
        return None;
    }
    if value.len() > 55 && value[55] != b'-' {
        return None;
    }
    if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let trace_id = hex_array::<16>(&value[3..35])?;
    let parent_id = hex_array::<8>(&value[36..52])?;
    let flags = hex_array::<1>(&value[53..55])?[0];
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        sampled: flags & 1 == 1,
    })
}

/// Decodes lowercase hex into exactly `N` bytes.
fn hex_array<const N: usize>(hex: &[u8]) -> Option<[u8; N]> {
    if hex.len() != N * 2 {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in hex.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn to_hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        // Writing to a String cannot fail.
        let _ = write!(text, "{byte:02x}");
    }
    text
}

/// The trace id of a request's valid `traceparent`, in hex, for the access log.
pub(crate) fn trace_id_of(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(TRACEPARENT)?;
    parse_traceparent(value.as_bytes()).map(|parent| to_hex(&parent.trace_id))
}

/// Starts spans and hands ended ones to the exporter.
pub(crate) struct Tracer {
    queue: mpsc::Sender<Span>,
    sample_ratio: f64,
    dropped: Counter,
}

/// The span of one request, from [`Tracer::start`] until [`ActiveSpan::end`].
pub(crate) struct ActiveSpan {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent_id: Option<[u8; 8]>,
    sampled: bool,
    started: SystemTime,
    /// Attributes set as the request moves on.
    attributes: Vec<KeyValue>,
}

impl Tracer {
    /// Starts the exporter task (on the current runtime) and returns its tracer. `dropped`
    /// counts spans lost to a full queue or a failed export.
    pub(crate) fn start(options: &TracingOptions, dropped: Counter) -> Result<Self, String> {
        let channel = tonic::transport::Endpoint::from_shared(options.endpoint.clone())
            .map_err(|error| format!("OTLP endpoint {:?}: {error}", options.endpoint))?
            .timeout(EXPORT_TIMEOUT)
            .connect_lazy();
        let (queue, spans) = mpsc::channel(QUEUE);
        let resource = Resource {
            attributes: vec![string("service.name", &options.service_name)],
            ..Resource::default()
        };
        tokio::spawn(export(
            TraceServiceClient::new(channel),
            resource,
            spans,
            dropped.clone(),
        ));
        Ok(Self {
            queue,
            sample_ratio: options.sample_ratio.clamp(0.0, 1.0),
            dropped,
        })
    }

    /// Starts the span of a request with `headers`, and sets the request's `traceparent` to
    /// name it as the parent of whatever the backend does.
    pub(crate) fn begin(&self, headers: &mut HeaderMap) -> ActiveSpan {
        let parent = headers
            .get(TRACEPARENT)
            .and_then(|value| parse_traceparent(value.as_bytes()));
        let (trace_id, parent_id, sampled) = match parent {
            Some(parent) => (parent.trace_id, Some(parent.parent_id), parent.sampled),
            None => (
                nonzero_random(),
                None,
                rand::random::<f64>() < self.sample_ratio,
            ),
        };
        let span = ActiveSpan {
            trace_id,
            span_id: nonzero_random(),
            parent_id,
            sampled,
            started: SystemTime::now(),
            attributes: Vec::new(),
        };
        if let Ok(value) = HeaderValue::from_str(&span.traceparent()) {
            headers.insert(TRACEPARENT, value);
        }
        span
    }

    /// Queues an ended span for export; a full queue drops it.
    fn submit(&self, span: Span) {
        if self.queue.try_send(span).is_err() {
            self.dropped.inc();
        }
    }
}

/// Random bytes that are not all zero (all-zero ids are invalid).
fn nonzero_random<const N: usize>() -> [u8; N] {
    loop {
        let bytes: [u8; N] = rand::random();
        if bytes != [0; N] {
            return bytes;
        }
    }
}

impl ActiveSpan {
    /// The trace id in hex, for the access log.
    pub(crate) fn trace_id(&self) -> String {
        to_hex(&self.trace_id)
    }

    /// The `traceparent` that names this span as the parent.
    fn traceparent(&self) -> String {
        let flags = if self.sampled { "01" } else { "00" };
        format!(
            "00-{}-{}-{flags}",
            to_hex(&self.trace_id),
            to_hex(&self.span_id)
        )
    }

    /// Sets a string attribute.
    pub(crate) fn set(&mut self, key: &str, value: &str) {
        if self.sampled {
            self.attributes.push(string(key, value));
        }
    }

    /// Ends the span: named `name`, with the response `status` (an HTTP status; 5xx marks
    /// the span as an error), and queues it if it was sampled.
    pub(crate) fn end(mut self, tracer: &Tracer, name: String, status: u16, sent_bytes: u64) {
        if !self.sampled {
            return;
        }
        let ended = SystemTime::now();
        self.attributes
            .push(int("http.response.status_code", status.into()));
        self.attributes.push(int(
            "http.response.body.size",
            i64::try_from(sent_bytes).unwrap_or(i64::MAX),
        ));
        let code = if status >= 500 {
            status::StatusCode::Error
        } else {
            status::StatusCode::Unset
        };
        tracer.submit(Span {
            trace_id: self.trace_id.to_vec(),
            span_id: self.span_id.to_vec(),
            parent_span_id: self.parent_id.map(|id| id.to_vec()).unwrap_or_default(),
            flags: 1,
            name,
            kind: span::SpanKind::Server.into(),
            start_time_unix_nano: unix_nanos(self.started),
            end_time_unix_nano: unix_nanos(ended),
            attributes: self.attributes,
            status: Some(opentelemetry_proto::tonic::trace::v1::Status {
                code: code.into(),
                ..Default::default()
            }),
            ..Span::default()
        });
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_nanos()).unwrap_or(u64::MAX)
    })
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..KeyValue::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..KeyValue::default()
    }
}

/// The exporter task: collects spans into batches of up to [`BATCH`], sends a batch when it
/// is full or [`FLUSH`] after its first span, and stops when every tracer is gone.
async fn export(
    mut client: TraceServiceClient<tonic::transport::Channel>,
    resource: Resource,
    mut spans: mpsc::Receiver<Span>,
    dropped: Counter,
) {
    let scope = InstrumentationScope {
        name: "portcullis".to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        ..InstrumentationScope::default()
    };
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        let Some(first) = spans.recv().await else {
            return;
        };
        batch.push(first);
        let deadline = tokio::time::Instant::now() + FLUSH;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(deadline, spans.recv()).await {
                Ok(Some(span)) => batch.push(span),
                Ok(None) | Err(_) => break,
            }
        }
        let count = batch.len();
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(scope.clone()),
                    spans: std::mem::take(&mut batch),
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            }],
        };
        if let Err(error) = client.export(request).await {
            dropped.inc_by(count as u64);
            tracing::warn!(%error, spans = count, "exporting spans failed; dropped them");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_valid_traceparents() {
        let parent = parse_traceparent(VALID.as_bytes()).expect("valid");
        assert_eq!(to_hex(&parent.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(to_hex(&parent.parent_id), "00f067aa0ba902b7");
        assert!(parent.sampled);
        let unsampled = VALID.replace("-01", "-00");
        assert!(
            !parse_traceparent(unsampled.as_bytes())
                .expect("valid")
                .sampled
        );
        // A later version may append fields after a dash.
        let future = VALID.replacen("00-", "01-", 1) + "-extra";
        assert!(parse_traceparent(future.as_bytes()).is_some());
    }

    #[test]
    fn refuses_invalid_traceparents() {
        let invalid = [
            String::new(),
            VALID.to_uppercase(),
            VALID.replacen("00-", "ff-", 1),
            format!("{VALID}-extra"),
            VALID.replace("4bf92f3577b34da6a3ce929d0e0e4736", &"0".repeat(32)),
            VALID.replace("00f067aa0ba902b7", &"0".repeat(16)),
            VALID.replace('-', "_"),
            VALID.replace("a3ce", "a3cg"),
            VALID[..54].to_string(),
        ];
        for value in invalid {
            assert!(parse_traceparent(value.as_bytes()).is_none(), "{value:?}");
        }
    }

    #[tokio::test]
    async fn a_request_continues_its_trace_with_a_new_span() {
        let tracer = Tracer::start(
            &TracingOptions {
                endpoint: "http://127.0.0.1:1".to_string(),
                sample_ratio: 0.0,
                service_name: "test".to_string(),
            },
            Counter::default(),
        )
        .expect("tracer");
        let mut headers = HeaderMap::new();
        headers.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        let span = tracer.begin(&mut headers);
        let sent = headers[TRACEPARENT].to_str().expect("ascii").to_string();
        let forwarded = parse_traceparent(sent.as_bytes()).expect("valid");
        assert_eq!(
            to_hex(&forwarded.trace_id),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_ne!(to_hex(&forwarded.parent_id), "00f067aa0ba902b7");
        assert_eq!(forwarded.parent_id, span.span_id);
        assert!(forwarded.sampled, "the caller's decision is kept");
        // No traceparent and a ratio of 0: a new trace, not sampled, still propagated.
        let mut fresh = HeaderMap::new();
        let span = tracer.begin(&mut fresh);
        let forwarded = parse_traceparent(fresh[TRACEPARENT].as_bytes()).expect("valid");
        assert!(!forwarded.sampled);
        assert_eq!(forwarded.trace_id, span.trace_id);
        assert_eq!(span.parent_id, None);
    }
}
