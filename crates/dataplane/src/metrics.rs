//! Request metrics, per route and backend: counts by status class and latency histograms,
//! in the Prometheus text format `/metrics` serves.
//!
//! Labels come from the config (route kind, namespace and name, the backend's
//! `namespace/name:port`) and the status class, so their number is bounded by the config,
//! never by what clients send: no paths, hosts or client addresses. Egress requests sent to
//! their original destination are labelled `original-destination`, not with the address.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use ir::{RouteId, RouteKind};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of the request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route_kind: &'static str,
    route_namespace: String,
    route_name: String,
    backend: String,
    code_class: &'static str,
}

/// Labels of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    route_kind: &'static str,
    route_namespace: String,
    route_name: String,
}

type Latencies = Family<LatencyLabels, Histogram, fn() -> Histogram>;

/// The request metrics of a data plane.
pub struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Latencies,
    registry: Mutex<Registry>,
}

impl Default for RequestMetrics {
    fn default() -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        // 0.5 ms to about 16 s.
        let latency: Latencies =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0005, 2.0, 16)));
        let mut registry = Registry::with_prefix("portcullis");
        registry.register(
            "requests",
            "HTTP requests by route, backend and status class",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to response headers, by route",
            latency.clone(),
        );
        Self {
            requests,
            latency,
            registry: Mutex::new(registry),
        }
    }
}

impl RequestMetrics {
    /// Records one answered request.
    pub fn record(
        &self,
        route: Option<&RouteId>,
        backend: Option<&str>,
        status: u16,
        elapsed: Duration,
    ) {
        let (route_kind, route_namespace, route_name) = match route {
            Some(id) => (kind_name(id.kind), id.namespace.clone(), id.name.clone()),
            None => ("", String::new(), String::new()),
        };
        let backend = match backend {
            Some(name) if name.starts_with("original-destination") => "original-destination".into(),
            Some(name) => name.to_string(),
            None => String::new(),
        };
        self.requests
            .get_or_create(&RequestLabels {
                route_kind,
                route_namespace: route_namespace.clone(),
                route_name: route_name.clone(),
                backend,
                code_class: code_class(status),
            })
            .inc();
        self.latency
            .get_or_create(&LatencyLabels {
                route_kind,
                route_namespace,
                route_name,
            })
            .observe(elapsed.as_secs_f64());
    }

    /// The metrics in the Prometheus text format.
    pub fn encode(&self) -> String {
        let registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &registry);
        // `/metrics` goes on after these lines (Prometheus text format), so the OpenMetrics
        // end marker is left out.
        match text.strip_suffix("# EOF\n") {
            Some(body) => body.to_string(),
            None => text,
        }
    }
}

fn kind_name(kind: RouteKind) -> &'static str {
    match kind {
        RouteKind::Http => "HTTPRoute",
        RouteKind::Grpc => "GRPCRoute",
        RouteKind::Tls => "TLSRoute",
        RouteKind::Tcp => "TCPRoute",
    }
}

fn code_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_route_backend_and_class() {
        let metrics = RequestMetrics::default();
        let id = RouteId {
            kind: RouteKind::Http,
            namespace: "apps".into(),
            name: "web".into(),
            rule: 0,
            rule_name: None,
        };
        let ms = Duration::from_millis(3);
        metrics.record(Some(&id), Some("apps/web:80"), 200, ms);
        metrics.record(Some(&id), Some("apps/web:80"), 204, ms);
        metrics.record(None, None, 404, ms);
        metrics.record(
            Some(&id),
            Some("original-destination 203.0.113.9:80"),
            502,
            ms,
        );
        let text = metrics.encode();
        for expected in [
            r#"portcullis_requests_total{route_kind="HTTPRoute",route_namespace="apps",route_name="web",backend="apps/web:80",code_class="2xx"} 2"#,
            r#"portcullis_requests_total{route_kind="",route_namespace="",route_name="",backend="",code_class="4xx"} 1"#,
            r#"backend="original-destination",code_class="5xx"} 1"#,
            r#"portcullis_request_duration_seconds_count{route_kind="HTTPRoute",route_namespace="apps",route_name="web"} 3"#,
        ] {
            assert!(text.contains(expected), "{expected} not in\n{text}");
        }
    }
}
