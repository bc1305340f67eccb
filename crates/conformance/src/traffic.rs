//! Traffic cases (README "Cases"): resolving the Gateway address, building the request (plain
//! or HTTPS, see `tls`) and the single-request modes (`eventually`, `consistent-failure`,
//! `connection-error`) plus `mirrored_to`. The batch case types live in `batches`, the
//! connection-level ones of TLS routes (`tcp-echo`, `tls-connection-rejected`) in
//! `stream_cases`.
//!
//! The gRPC case types live in `grpc_cases`, `websocket` in `websocket_cases`, the mesh ones
//! in `mesh_cases`. Case types that need UDP fail with "unsupported case type"; adding one
//! means a new arm in [`run_case`] and a transport in `client`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backends::Backends;
use crate::batches;
use crate::case::{Case, HttpExpect, HttpRequest};
use crate::client::{self, Outgoing, Protocol, Reply};
use crate::expect::{self, RequestUrl};
use crate::grpc_cases;
use crate::mesh::MeshDirectory;
use crate::mesh_cases;
use crate::status::StatusDocument;
use crate::stream_cases;
use crate::tls::{ALPN_H2, ALPN_HTTP1, Keyring, TlsClient, TrustRef};
use crate::websocket_cases;

/// Per-request timeout (upstream default).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Upstream's eventual-consistency cap.
const CONSISTENCY_CAP: Duration = Duration::from_secs(30);
/// Consecutive passes an eventually consistent case needs.
pub(crate) const PASSES_IN_A_ROW: u32 = 3;
/// Consecutive "other than 200" answers a consistent-failure case needs.
const FAILURES_IN_A_ROW: u32 = 5;

/// What traffic cases share within one case file.
pub struct TrafficContext {
    /// portcullis' admin address, to read Gateway addresses from `/status`.
    pub admin: SocketAddr,
    /// The running backends and their request logs.
    pub backends: Arc<Backends>,
    /// Multiplies the README's waiting times (1.0 = upstream).
    pub timeout_scale: f64,
    /// Certificates that `trust` and `client_cert` refer to.
    pub keyring: Arc<Keyring>,
    /// Mesh case files: Services and their ClusterIPs (empty otherwise).
    pub mesh: Arc<MeshDirectory>,
    /// Mesh case files with clients in a namespace that owns no Service (consumers): the
    /// explicit outbound proxy portcullis runs for that namespace, and the namespace.
    pub outbound: Option<(SocketAddr, String)>,
}

/// A prepared HTTP case: where to connect, what to send, what to expect.
#[derive(Debug, Clone)]
pub struct HttpTarget {
    /// Gateway address and listener port.
    pub address: SocketAddr,
    /// The URL the request is for (resolves relative redirects).
    pub url: RequestUrl,
    /// The request as sent.
    pub outgoing: Outgoing,
    /// Follow 3xx answers.
    pub follow: bool,
    /// The expectation block.
    pub expect: HttpExpect,
    /// The `request.path` as written (mirror logs are searched for it).
    pub path: String,
}

impl TrafficContext {
    /// The README's 30 s cap, scaled.
    pub fn consistency_cap(&self) -> Duration {
        CONSISTENCY_CAP.mul_f64(self.timeout_scale)
    }
}

impl HttpTarget {
    /// Builds the target of an `http` (or HTTP batch) case.
    pub async fn prepare(case: &Case, ctx: &TrafficContext) -> Result<Self, String> {
        let request = HttpRequest::from_value(&case.request).map_err(|e| format!("{e:#}"))?;
        let expect = HttpExpect::from_value(&case.expect).map_err(|e| format!("{e:#}"))?;
        let (protocol, default_port) = match (request.scheme.as_str(), request.protocol.as_deref())
        {
            ("http", None | Some("HTTP/1.1")) => (Protocol::Http1, 80),
            ("http", Some("h2c-prior-knowledge")) => (Protocol::H2cPriorKnowledge, 80),
            ("https", None | Some("HTTP/1.1")) => (Protocol::Http1, 443),
            ("https", Some("HTTP/2")) => (Protocol::Http2, 443),
            (scheme, protocol) => {
                return Err(format!(
                    "unsupported case type: {scheme} requests with protocol {protocol:?}"
                ));
            }
        };
        let port = case.port.unwrap_or(default_port);
        let ip = gateway_address(case, ctx).await?;
        let tls = match request.scheme.as_str() {
            "https" => Some(https_client(&request, protocol, ip, &ctx.keyring)?),
            _ => None,
        };
        // README "Addressing Gateways": without `request.host`, the Host is the gateway
        // address, with `:port` unless the port is the scheme's default.
        let host = request.host.clone().unwrap_or_else(|| {
            if port == default_port {
                ip.to_string()
            } else {
                format!("{ip}:{port}")
            }
        });
        let mut headers: Vec<(String, String)> = request.headers.clone().into_iter().collect();
        let echo_set: Vec<String> = request
            .echo_set_response_headers
            .iter()
            .map(|(n, v)| format!("{n}:{v}"))
            .collect();
        // Upstream's client always sends this header, empty when the case sets nothing.
        headers.push(("X-Echo-Set-Header".to_owned(), echo_set.join(",")));
        headers.push(("User-Agent".to_owned(), "portcullis-conformance".to_owned()));
        Ok(Self {
            address: SocketAddr::new(ip, port),
            url: RequestUrl {
                scheme: request.scheme.clone(),
                host: ip.to_string(),
                port: (port != default_port).then_some(port),
            },
            outgoing: Outgoing {
                protocol,
                method: request.method.clone(),
                target: request.path.clone(),
                host,
                headers,
                tls,
            },
            follow: request.follow_redirects.unwrap_or(true),
            expect,
            path: request.path,
        })
    }

    /// One request, no comparison.
    pub async fn send(&self) -> Result<Reply, String> {
        client::exchange(self.address, &self.outgoing, self.follow, REQUEST_TIMEOUT)
            .await
            .map_err(|e| format!("transport error: {e:#}"))
    }

    /// One request compared with the expectation.
    pub async fn try_once(&self) -> Result<Reply, String> {
        let reply = self.send().await?;
        expect::compare(&self.expect, &self.outgoing.method, &self.url, &reply)?;
        Ok(reply)
    }

    /// README "Eventually consistent": pass after 3 passes in a row, 1 s pause after a
    /// failure, fail after 30 s. Returns when the last (passing) request was sent.
    pub async fn eventually(&self, cap: Duration) -> Result<Instant, String> {
        let started = Instant::now();
        let (mut in_a_row, mut tries) = (0, 0);
        let mut last_error = String::from("no request sent");
        while started.elapsed() < cap {
            tries += 1;
            let sent_at = Instant::now();
            match self.try_once().await {
                Ok(_) => {
                    in_a_row += 1;
                    if in_a_row >= PASSES_IN_A_ROW {
                        return Ok(sent_at);
                    }
                }
                Err(error) => {
                    in_a_row = 0;
                    last_error = error;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        Err(format!(
            "no {PASSES_IN_A_ROW} passes in a row within {cap:.0?} ({tries} tries); last: {last_error}"
        ))
    }
}

/// Runs one traffic case.
pub async fn run_case(case: &Case, ctx: &TrafficContext) -> Result<(), String> {
    match case.type_.as_str() {
        "http" => run_http(case, ctx).await,
        "weighted-distribution" => batches::weighted_distribution(case, ctx).await,
        "mirror-percentage" => batches::mirror_percentage(case, ctx).await,
        "backend-header-consistency" => batches::backend_header_consistency(case, ctx).await,
        "grpc" => grpc_cases::grpc(case, ctx).await,
        "grpc-weighted-distribution" => grpc_cases::weighted_distribution(case, ctx).await,
        "tcp-echo" => stream_cases::tcp_echo(case, ctx).await,
        "tls-connection-rejected" => stream_cases::tls_connection_rejected(case, ctx).await,
        "websocket" => websocket_cases::websocket(case, ctx).await,
        "mesh-request" => mesh_cases::mesh_request(case, ctx).await,
        "mesh-weighted-distribution" => mesh_cases::weighted_distribution(case, ctx).await,
        other => Err(format!("unsupported case type {other:?}")),
    }
}

async fn run_http(case: &Case, ctx: &TrafficContext) -> Result<(), String> {
    let target = HttpTarget::prepare(case, ctx).await?;
    match target.expect.mode.as_deref() {
        None | Some("eventually") => {
            let last_sent = target.eventually(ctx.consistency_cap()).await?;
            mirrored(&target, ctx, last_sent).await
        }
        Some("consistent-failure") => consistent_failure(&target, ctx.consistency_cap()).await,
        Some("connection-error") => {
            let outcome = client::attempt(target.address, &target.outgoing, REQUEST_TIMEOUT).await;
            expect::connection_error(&outcome, target.expect.client_cert_requested)
        }
        Some(other) => Err(format!("unsupported expect.mode {other:?}")),
    }
}

/// README `consistent-failure`: transport errors and 408/504 are "not yet", a forbidden
/// status (200 unless `status_not` says otherwise) fails at once, anything else counts; pass
/// after 5 in a row.
async fn consistent_failure(target: &HttpTarget, cap: Duration) -> Result<(), String> {
    let forbidden: &[u16] = if target.expect.status_not.is_empty() {
        &[200]
    } else {
        &target.expect.status_not
    };
    let started = Instant::now();
    let mut in_a_row = 0;
    let mut last = String::from("no request sent");
    while started.elapsed() < cap {
        match target.send().await {
            Ok(reply) if forbidden.contains(&reply.status) => {
                return Err(format!(
                    "got {} although it must consistently fail",
                    reply.status
                ));
            }
            Ok(reply) if !matches!(reply.status, 408 | 504) => {
                in_a_row += 1;
                if in_a_row >= FAILURES_IN_A_ROW {
                    return Ok(());
                }
                continue;
            }
            Ok(reply) => last = format!("status {} (not yet)", reply.status),
            Err(error) => last = error,
        }
        in_a_row = 0;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(format!(
        "no {FAILURES_IN_A_ROW} failures in a row within {cap:.0?}; last: {last}"
    ))
}

/// README `mirrored_to`: each mirror must log a copy of this path that arrived no earlier
/// than about one second before the case's last request; polled every 1 s for 10 s.
async fn mirrored(
    target: &HttpTarget,
    ctx: &TrafficContext,
    last_sent: Instant,
) -> Result<(), String> {
    if target.expect.mirrored_to.is_empty() {
        return Ok(());
    }
    let since = last_sent
        .checked_sub(Duration::from_secs(1))
        .unwrap_or(last_sent);
    for _ in 0..10 {
        let missing = target.expect.mirrored_to.iter().find(|m| {
            ctx.backends
                .log(&m.namespace, &m.backend)
                .is_none_or(|log| log.count_since(&target.path, since) == 0)
        });
        let Some(missing) = missing else {
            return Ok(());
        };
        if ctx
            .backends
            .log(&missing.namespace, &missing.backend)
            .is_none()
        {
            return Err(format!(
                "mirror backend {}/{} does not exist",
                missing.namespace, missing.backend
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let missing: Vec<String> = target
        .expect
        .mirrored_to
        .iter()
        .filter_map(|m| {
            let log = ctx.backends.log(&m.namespace, &m.backend)?;
            (log.count_since(&target.path, since) == 0).then(|| {
                format!(
                    "{}/{} (recent log: {:?})",
                    m.namespace,
                    m.backend,
                    log.recent_lines(3)
                )
            })
        })
        .collect();
    Err(format!(
        "no mirrored copy of {} within 10s at {}",
        target.path,
        missing.join(", ")
    ))
}

/// TLS settings of an `https` case: `sni` (default: the gateway address) as server name,
/// `trust` as the only root, `client_cert` presented when asked, ALPN by protocol.
fn https_client(
    request: &HttpRequest,
    protocol: Protocol,
    gateway: IpAddr,
    keyring: &Keyring,
) -> Result<TlsClient, String> {
    let trust = request
        .trust
        .as_ref()
        .ok_or("an https case without `trust`")?;
    let trust = TrustRef::from_value(trust).map_err(|e| e.to_string())?;
    let client_cert = request
        .client_cert
        .as_ref()
        .map(TrustRef::from_value)
        .transpose()
        .map_err(|e| e.to_string())?;
    let alpn = match protocol {
        Protocol::Http2 => ALPN_H2,
        _ => ALPN_HTTP1,
    };
    let server_name = request.sni.clone().unwrap_or_else(|| gateway.to_string());
    keyring
        .client(&server_name, &trust, client_cert.as_ref(), &[alpn])
        .map_err(|e| format!("TLS settings: {e}"))
}

/// The Gateway's first `status.addresses` value, which must be on loopback.
pub async fn gateway_address(case: &Case, ctx: &TrafficContext) -> Result<IpAddr, String> {
    let gateway = case.gateway.as_deref().ok_or("case names no gateway")?;
    let doc = StatusDocument::fetch(ctx.admin)
        .await
        .map_err(|e| format!("{e:#}"))?;
    let object = doc.require("Gateway", gateway)?;
    let first = object
        .status
        .addresses
        .first()
        .ok_or_else(|| format!("Gateway {gateway} has no status.addresses"))?;
    let ip: IpAddr = first
        .value
        .parse()
        .map_err(|_| format!("Gateway {gateway} address {:?} is not an IP", first.value))?;
    client::ensure_loopback(ip).map_err(|e| format!("{e:#}"))?;
    Ok(ip)
}
