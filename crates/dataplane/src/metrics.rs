//! The data plane's metrics, in the Prometheus text format `/metrics` serves: requests per
//! route and backend (counts by status class, latency histograms, in flight), retries per
//! route, upstream connection failures per backend, outlier ejections, rate-limit refusals
//! per policy, and per listening socket the connections accepted and TLS handshakes.
//!
//! Labels come from the config (route kind, namespace and name, the backend's
//! `namespace/name:port`) and the status class, so their number is bounded by the config,
//! never by what clients send: no paths, hosts or client addresses. Egress requests sent to
//! their original destination are labelled `original-destination`, not with the address.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ir::{RouteId, RouteKind};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The start of the backend name of egress requests sent to their original destination
/// (`forward::original_destination`), and their backend label.
const ORIGINAL_DESTINATION: &str = "original-destination";

/// Labels of the request counter. The names are the config's own shared strings, so that
/// labelling a request allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route_kind: &'static str,
    route_namespace: Arc<str>,
    route_name: Arc<str>,
    backend: Arc<str>,
    code_class: &'static str,
}

/// Labels of the latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LatencyLabels {
    route_kind: &'static str,
    route_namespace: Arc<str>,
    route_name: Arc<str>,
}

type Latencies = Family<LatencyLabels, Histogram, fn() -> Histogram>;

/// A backend, `namespace/name:port`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: String,
}

/// A listening socket.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BindLabels {
    bind: String,
}

/// A listening socket and how a handshake ended.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandshakeLabels {
    bind: String,
    result: &'static str,
}

/// A policy, `namespace/name`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    policy: String,
}

/// The metrics of a data plane.
pub struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    latency: Latencies,
    in_flight: Gauge,
    retries: Family<LatencyLabels, Counter>,
    connect_errors: Family<BackendLabels, Counter>,
    connections: Family<BindLabels, Counter>,
    handshakes: Family<HandshakeLabels, Counter>,
    rate_limited: Family<PolicyLabels, Counter>,
    registry: Mutex<Registry>,
    /// The label of requests without a route or backend.
    empty: Arc<str>,
    /// The backend label of egress requests sent to their original destination.
    original_destination: Arc<str>,
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
        let in_flight = Gauge::default();
        registry.register(
            "requests_in_flight",
            "Requests waiting for their response headers",
            in_flight.clone(),
        );
        let retries = Family::<LatencyLabels, Counter>::default();
        registry.register(
            "retries",
            "Retried upstream attempts, by route",
            retries.clone(),
        );
        let connect_errors = Family::<BackendLabels, Counter>::default();
        registry.register(
            "upstream_connect_errors",
            "Failed connections to endpoints (refused, unreachable, timed out), by backend",
            connect_errors.clone(),
        );
        let connections = Family::<BindLabels, Counter>::default();
        registry.register(
            "listener_connections",
            "Connections accepted, by listening socket",
            connections.clone(),
        );
        let handshakes = Family::<HandshakeLabels, Counter>::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes of clients, by listening socket and result",
            handshakes.clone(),
        );
        let rate_limited = Family::<PolicyLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused with 429, by RateLimitPolicy",
            rate_limited.clone(),
        );
        Self {
            requests,
            latency,
            in_flight,
            retries,
            connect_errors,
            connections,
            handshakes,
            rate_limited,
            registry: Mutex::new(registry),
            empty: Arc::from(""),
            original_destination: Arc::from(ORIGINAL_DESTINATION),
        }
    }
}

impl RequestMetrics {
    /// Records one answered request.
    pub fn record(
        &self,
        route: Option<&RouteId>,
        backend: Option<&Arc<str>>,
        status: u16,
        elapsed: Duration,
    ) {
        let (route_kind, route_namespace, route_name) = match route {
            Some(id) => (kind_name(id.kind), id.namespace.clone(), id.name.clone()),
            None => ("", self.empty.clone(), self.empty.clone()),
        };
        let backend = match backend {
            Some(name) if name.starts_with(ORIGINAL_DESTINATION) => {
                self.original_destination.clone()
            }
            Some(name) => name.clone(),
            None => self.empty.clone(),
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

    /// Registers a counter kept elsewhere (the outlier ejections).
    pub(crate) fn register_counter(&self, name: &str, help: &str, counter: Counter) {
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        registry.register(name, help, counter);
    }

    /// Registers a gauge kept elsewhere (open connections).
    pub(crate) fn register_gauge(&self, name: &str, help: &str, gauge: Gauge) {
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        registry.register(name, help, gauge);
    }

    /// A request started waiting for its response headers; it stops when this is dropped.
    pub(crate) fn in_flight(&self) -> InFlight {
        self.in_flight.inc();
        InFlight(self.in_flight.clone())
    }

    /// A retry of a rule's request.
    pub(crate) fn retried(&self, route: &RouteId) {
        self.retries
            .get_or_create(&LatencyLabels {
                route_kind: kind_name(route.kind),
                route_namespace: route.namespace.clone(),
                route_name: route.name.clone(),
            })
            .inc();
    }

    /// A failed connection to an endpoint of `backend`.
    pub(crate) fn connect_failed(&self, backend: &str) {
        let backend = if backend.starts_with(ORIGINAL_DESTINATION) {
            ORIGINAL_DESTINATION.to_string()
        } else {
            backend.to_string()
        };
        self.connect_errors
            .get_or_create(&BackendLabels { backend })
            .inc();
    }

    /// A connection accepted on `bind`.
    pub(crate) fn accepted(&self, bind: std::net::SocketAddr) {
        self.connections
            .get_or_create(&BindLabels {
                bind: bind.to_string(),
            })
            .inc();
    }

    /// A client's TLS handshake on `bind` ended.
    pub(crate) fn handshake(&self, bind: std::net::SocketAddr, ok: bool) {
        self.handshakes
            .get_or_create(&HandshakeLabels {
                bind: bind.to_string(),
                result: if ok { "ok" } else { "failed" },
            })
            .inc();
    }

    /// A request refused by a rate limit of `policy`.
    pub(crate) fn rate_limited(&self, policy: &str) {
        self.rate_limited
            .get_or_create(&PolicyLabels {
                policy: policy.to_string(),
            })
            .inc();
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

/// Holds one request in `portcullis_requests_in_flight`.
pub(crate) struct InFlight(Gauge);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
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
        let web: Arc<str> = "apps/web:80".into();
        metrics.record(Some(&id), Some(&web), 200, ms);
        metrics.record(Some(&id), Some(&web), 204, ms);
        metrics.record(None, None, 404, ms);
        let original: Arc<str> = "original-destination 203.0.113.9:80".into();
        metrics.record(Some(&id), Some(&original), 502, ms);
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
