//! The admin server: `/live`, `/ready`, `/config`, `/status`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::status::StatusInputs;

/// What the admin endpoints show; replaced as a whole after every reload.
#[derive(Debug, Default, Clone)]
pub struct AdminState {
    /// True once the first config has been applied, false again once shutdown starts (so
    /// load balancers stop sending new connections while in-flight requests drain).
    pub ready: bool,
    /// The compiled config.
    pub config: Arc<ir::Config>,
    /// What the status document is built from.
    pub status: Arc<StatusInputs>,
    /// Number of reloads applied.
    pub reloads: u64,
    /// Reloads in which a manifest was rejected (its last good version stayed in use).
    pub rejected_reloads: u64,
    /// How long the last reload took (translate, bind, apply), in seconds.
    pub last_reload_seconds: f64,
    /// How long its translation took, in seconds.
    pub last_translate_seconds: f64,
    /// How long it took until the data plane served the new config, in seconds: the
    /// translation's share, or a patch's when only HTTPRoutes changed.
    pub last_served_seconds: f64,
    /// Reloads served by patching the previous config.
    pub patched_reloads: u64,
    /// Kubernetes mode: the status writer's counters.
    pub status_writer: Option<Arc<sources::kube::StatusMetrics>>,
}

/// The log writer's count of lines it dropped because stderr did not keep up; set once
/// when logging starts (the writer is process-wide, as the tracing subscriber is).
pub static LOG_DROPS: OnceLock<tracing_appender::non_blocking::ErrorCounter> = OnceLock::new();

/// Binds the admin listener and serves it in the background; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    state: watch::Receiver<Arc<AdminState>>,
    dataplane: dataplane::Dataplane,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    continue;
                }
            };
            let state = state.clone();
            let dataplane = dataplane.clone();
            tokio::spawn(async move {
                let service = service_fn(move |request| {
                    let snapshot = state.borrow().clone();
                    let dataplane = dataplane.clone();
                    async move { Ok::<_, Infallible>(handle(&request, &snapshot, &dataplane)) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                if let Err(error) = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%error, "admin connection ended");
                }
            });
        }
    });
    Ok(local)
}

fn handle(
    request: &Request<Incoming>,
    state: &AdminState,
    dataplane: &dataplane::Dataplane,
) -> Response<Full<Bytes>> {
    if request.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported\n");
    }
    match request.uri().path() {
        "/live" => text(StatusCode::OK, "live\n"),
        "/ready" if state.ready => text(StatusCode::OK, "ready\n"),
        "/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        "/config" => json(&*state.config),
        "/status" => json(&state.status.document()),
        "/metrics" => text(StatusCode::OK, &metrics(state, dataplane)),
        _ => text(
            StatusCode::NOT_FOUND,
            "endpoints: /live /ready /config /status /metrics\n",
        ),
    }
}

/// The Prometheus text exposition of what the process counts.
fn metrics(state: &AdminState, dataplane: &dataplane::Dataplane) -> String {
    use std::fmt::Write;
    let mut out = format!(
        "# HELP portcullis_config_reloads_total Configurations applied.\n# TYPE portcullis_config_reloads_total counter\nportcullis_config_reloads_total {}\n# HELP portcullis_config_reloads_rejected_total Reloads in which a manifest was rejected and its last good version kept.\n# TYPE portcullis_config_reloads_rejected_total counter\nportcullis_config_reloads_rejected_total {}\n# HELP portcullis_config_reload_seconds How long the last reload took.\n# TYPE portcullis_config_reload_seconds gauge\nportcullis_config_reload_seconds {}\n# HELP portcullis_translate_seconds How long the last translation took.\n# TYPE portcullis_translate_seconds gauge\nportcullis_translate_seconds {}\n# HELP portcullis_config_served_seconds How long the last reload took until the data plane served it (less than the reload when a patch of the previous config served it).\n# TYPE portcullis_config_served_seconds gauge\nportcullis_config_served_seconds {}\n# HELP portcullis_config_patched_reloads_total Reloads served by patching the previous config (only HTTPRoutes changed).\n# TYPE portcullis_config_patched_reloads_total counter\nportcullis_config_patched_reloads_total {}\n# TYPE portcullis_mirror_dropped_total counter\nportcullis_mirror_dropped_total {}\n# HELP portcullis_log_lines_dropped_total Log lines (access log included) dropped because stderr did not keep up.\n# TYPE portcullis_log_lines_dropped_total counter\nportcullis_log_lines_dropped_total {}\n",
        state.reloads,
        state.rejected_reloads,
        state.last_reload_seconds,
        state.last_translate_seconds,
        state.last_served_seconds,
        state.patched_reloads,
        dataplane.mirror_drops(),
        LOG_DROPS.get().map_or(0, |c| c.dropped_lines()),
    );
    status_writer_metrics(state, &mut out);
    out.push_str(&dataplane.request_metrics());
    let decisions = dataplane.egress_decisions();
    if !decisions.is_empty() {
        out.push_str("# HELP portcullis_egress_decisions_total Egress connections and requests, by EgressNetwork, route, hostname and verdict.\n# TYPE portcullis_egress_decisions_total counter\n");
    }
    for (key, count) in decisions {
        let (namespace, name) = key.network.split_once('/').unwrap_or(("", ""));
        let verdict = match key.verdict {
            dataplane::Verdict::Allow => "allow",
            dataplane::Verdict::Deny => "deny",
        };
        let _ = writeln!(
            out,
            "portcullis_egress_decisions_total{{parent_kind=\"EgressNetwork\",parent_namespace=\"{}\",parent_name=\"{}\",protocol=\"{}\",route=\"{}\",hostname=\"{}\",decision=\"{verdict}\"}} {count}",
            label(namespace),
            label(name),
            key.protocol,
            label(&key.route),
            label(&key.hostname),
        );
    }
    out
}

/// The status writer's counters, in Kubernetes mode.
fn status_writer_metrics(state: &AdminState, out: &mut String) {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let Some(metrics) = &state.status_writer else {
        return;
    };
    for (name, value) in [
        ("writes", metrics.writes.load(Relaxed)),
        ("unchanged", metrics.unchanged.load(Relaxed)),
        ("failures", metrics.failures.load(Relaxed)),
        ("superseded", metrics.superseded.load(Relaxed)),
        ("provisioned", metrics.provisioned.load(Relaxed)),
    ] {
        let _ = write!(
            out,
            "# TYPE portcullis_status_{name}_total counter\nportcullis_status_{name}_total {value}\n"
        );
    }
}

/// Escapes a Prometheus label value.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

fn json<T: serde::Serialize>(value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(error) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{error}\n")),
    }
}
