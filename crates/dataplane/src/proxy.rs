//! The HTTP request path, from a request on an accepted connection to its response.
//!
//! [`handle`] reads top to bottom: take the config snapshot, find the listener (and on TLS
//! connections check that it is the one the SNI chose), select the route, answer a CORS
//! preflight, then either redirect or forward (request filters, mirrors, backend by weight,
//! endpoint pool, response filters, CORS headers), and log. Every step returns
//! `Result<_, ProxyError>`; the error becomes a response in exactly one place: its HTTP status
//! ([`ProxyError::status`]), or for a gRPC call a Trailers-Only answer with its gRPC code
//! (`grpc.rs`). Redirects stay HTTP redirects for gRPC calls too.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::Either;
use http::header::{self, HeaderValue};
use http::request::Parts;
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use hyper::body::Incoming;
use ir::{
    Action, Backend, BackendProtocol, Hostname, HttpListener, RedirectScheme, Rule, Selected,
    TlsCertificate, WeightedBackend,
};

use crate::Shared;
use crate::body::{self, ProxyBody};
use crate::cors::{self, Inspection};
use crate::egress::{self, EgressContext, Selection};
use crate::error::{BoxError, Fault, ProxyError};
use crate::ext_auth;
use crate::filters;
use crate::forward;
use crate::grpc;
use crate::outlier;
use crate::rate_limit;
use crate::redirect::{self, RedirectRequest};
use crate::tls::{self, Session};
use crate::trace::{self, ActiveSpan};
use crate::upgrade::{self, Requested, Tunnel};

/// What the accept loop knows about a connection.
#[derive(Clone, Debug)]
pub struct Connection {
    /// The `ir::Config::binds` key of the socket that accepted it.
    pub bind: SocketAddr,
    /// The client's address.
    pub client: SocketAddr,
    /// The client's IP as `X-Forwarded-For` names it ([`filters::client_address`]).
    pub forwarded_for: HeaderValue,
    /// The TLS session, when the connection was accepted on a TLS socket.
    pub tls: Option<Arc<Session>>,
    /// Where a WebSocket handshake the backend accepted is left for the connection's task,
    /// which relays it once hyper has switched the connection over.
    pub tunnel: upgrade::Slot,
    /// For egress traffic (the outbound proxy): its destination and network. Requests are
    /// then routed by the network's routes for the destination port, not by a listener.
    pub egress: Option<Arc<EgressContext>>,
    /// The client's namespace, when the outbound proxy knows it (its workload's): mesh
    /// requests then get that namespace's consumer routes.
    pub namespace: Option<Arc<str>>,
}

/// Serves one request. Never fails: errors become responses here.
pub async fn handle(
    shared: Arc<Shared>,
    connection: Connection,
    mut request: Request<Incoming>,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let _in_flight = shared.requests.in_flight();
    // One snapshot for the whole request: a reload while it is in flight does not affect it.
    let config = shared.config.load_full();
    let mut span = shared
        .tracer
        .as_ref()
        .map(|tracer| tracer.begin(request.headers_mut()));
    let logging = tracing::enabled!(target: ACCESS_LOG, tracing::Level::INFO);
    // The request's target and authority are copied only for a line or a span.
    let mut log = AccessLog::new(&connection, &request, logging || span.is_some());
    log.trace_id = match &span {
        Some(span) => Some(span.trace_id()),
        None => trace::trace_id_of(request.headers()),
    };
    // Decided before any step can fail, so that every error ends a gRPC call in gRPC's terms.
    let grpc = grpc::is_grpc_request(request.headers());
    // Most requests have no body (a GET, or a length of 0): nothing to watch, nothing to box.
    let watched = (!request.body().is_end_stream()).then(|| Arc::new(body::Watched::default()));
    let request = request.map(|b| match &watched {
        Some(watched) => body::watched(body::boxed(b), Arc::clone(watched)),
        None => body::empty(),
    });
    let response = match proxy(&shared, &config, &connection, &mut log, request).await {
        Ok(response) => response,
        Err(error) => {
            let body_failed = watched
                .as_ref()
                .is_some_and(|w| w.failed.load(Ordering::Relaxed));
            let error = if body_failed && error.fault() == Fault::Upstream {
                // The upstream attempt failed because the client's body did.
                ProxyError::RequestBody(Box::new(error))
            } else {
                error
            };
            log.error = Some(error.to_string());
            log.fault = Some(error.fault());
            if grpc {
                error.into_grpc_response()
            } else {
                error.into_response()
            }
        }
    };
    let to_headers = started.elapsed();
    shared.requests.record(
        log.route.as_ref().map(|rule| &rule.id),
        log.backend.as_ref(),
        response.status().as_u16(),
        to_headers,
    );
    if !logging && span.is_none() {
        return response;
    }
    log.answered(&response, to_headers);
    if let Some(span) = &mut span {
        log.describe(span);
    }
    // The line and the span are finished once the response body has been sent.
    response.map(|body| {
        body::on_end(body, move |sent| {
            let elapsed = started.elapsed();
            if logging {
                let received = watched
                    .as_ref()
                    .map_or(0, |w| w.received.load(Ordering::Relaxed));
                log.record(received, sent, elapsed);
            }
            if let (Some(span), Some(tracer)) = (span, shared.tracer.as_ref()) {
                span.end(tracer, log.span_name(), log.status, sent);
            }
        })
    })
}

async fn proxy(
    shared: &Shared,
    config: &ir::Config,
    connection: &Connection,
    log: &mut AccessLog,
    request: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    if request.method() == Method::CONNECT {
        // Tunnels are not HTTPRoute traffic; the egress CONNECT proxy is a separate listener.
        return Err(ProxyError::ConnectMethod);
    }
    let host = request_host(&request)?;
    let (listener, selected) = match &connection.egress {
        None => {
            let namespace = connection.namespace.as_deref();
            let (bind, listener) = find_listener(config, connection.bind, &host, namespace)?;
            reject_misdirected(bind, listener, connection.tls.as_deref(), &host)?;
            (&**listener, select_route(listener, &host, &request)?)
        }
        Some(context) => match egress::select(shared, context, &host, &request)? {
            Selection::Route(listener, selected) => (listener, selected),
            Selection::Original => {
                // Boxed, as every rare step: the common request's state stays small.
                return Box::pin(forward_original(shared, connection, context, log, request)).await;
            }
        },
    };
    let rule = selected.rule;
    log.route = Some(Arc::clone(rule));
    let cors = match cors::inspect(rule.filters.cors.as_deref(), &request) {
        Inspection::Preflight(answer) => return Ok(answer),
        Inspection::Forward(decoration) => decoration,
    };
    let admission = if rule.policies.is_empty() && rule.filters.external_auth.is_none() {
        Admission::Admitted(request, Box::default())
    } else {
        Box::pin(admit(shared, connection, rule, &host, request)).await?
    };
    let (request, admitted) = match admission {
        Admission::Admitted(request, admitted) => (request, admitted),
        Admission::Refused(mut answer) => {
            if let Some(cors) = cors {
                cors.apply(answer.headers_mut());
            }
            return Ok(answer);
        }
    };
    let mut response = match &rule.action {
        Action::Invalid(reason) => return Err(ProxyError::InvalidRule(reason.clone())),
        Action::Redirect(redirect) => {
            let target = request.uri().path_and_query();
            let matched_prefix = selected.matcher.matched_prefix();
            let request = RedirectRequest {
                host: host.as_str(),
                target,
                matched_prefix,
            };
            redirect::respond(redirect, listener, request)?
        }
        Action::Forward(backends) => {
            let client_certificate = listener.backend_client_certificate.as_ref();
            // Boxed, like each attempt below: wrapping a future in `deadline` and awaiting it
            // moves it, and these are the largest futures of the request.
            let forwarding = Box::pin(forward(
                shared,
                connection,
                selected,
                backends,
                client_certificate,
                log,
                request,
            ));
            deadline(rule.timeouts.request, forwarding, || {
                ProxyError::RequestTimeout
            })
            .await?
        }
    };
    filters::modify_headers(
        rule.filters.response_headers.as_deref(),
        response.headers_mut(),
    );
    if let Some(cors) = cors {
        cors.apply(response.headers_mut());
    }
    if let Some(approval) = admitted.approval {
        approval.apply_to_response(response.headers_mut());
    }
    if let Some(quota) = admitted.quota {
        quota.apply(response.headers_mut());
    }
    Ok(response)
}

/// The outcome of [`admit`].
enum Admission {
    /// The request goes on, with what its answer must carry.
    Admitted(Request<ProxyBody>, Box<Admitted>),
    /// The client gets this answer instead (an authorization service's denial).
    Refused(Response<ProxyBody>),
}

/// What an admitted request's answer carries: an ExternalAuth approval's response headers
/// and the tightest rate limit's `RateLimit-*` fields.
#[derive(Default)]
struct Admitted {
    approval: Option<ext_auth::Approval>,
    quota: Option<rate_limit::Quota>,
}

/// The rule's admission steps, in order: its AuthenticationPolicy (whose verified JWT
/// claims can key rate limits), the `ExternalAuth` filter, its RateLimitPolicy. A request
/// refused by one step costs the later ones nothing.
async fn admit(
    shared: &Shared,
    connection: &Connection,
    rule: &Rule,
    host: &Hostname,
    request: Request<ProxyBody>,
) -> Result<Admission, ProxyError> {
    let policies = &rule.policies;
    let (mut parts, mut body) = request.into_parts();
    let mut admitted = Box::<Admitted>::default();
    let claims = match &policies.authentication {
        Some(policy) => {
            shared
                .authenticator
                .authenticate(&policy.policy, &mut parts)
                .await?
        }
        None => None,
    };
    if let Some(auth) = &rule.filters.external_auth {
        // The service sees the host as the client wrote it (with its port), as Envoy sends
        // it.
        let written = match parts.uri.authority() {
            Some(authority) => authority.as_str(),
            None => parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or(host.as_str()),
        };
        let asked = ext_auth::Asked {
            parts: &parts,
            host: written,
            client: connection.client,
            local: connection.bind,
            tls: connection.tls.is_some(),
        };
        let timeout = shared.options.external_auth_timeout;
        match ext_auth::authorize(&shared.upstreams, timeout, auth, asked, body).await? {
            (ext_auth::Decision::Deny(answer), _) => return Ok(Admission::Refused(answer)),
            (ext_auth::Decision::Allow(approval), rest) => {
                approval.apply_to_request(&mut parts.headers);
                admitted.approval = Some(approval);
                body = rest;
            }
        }
    }
    if let Some(limits) = &policies.rate_limit {
        let client = connection.client.ip();
        admitted.quota = shared
            .limiter
            .check(&limits.policy, client, &parts.headers, claims.as_ref())
            .await
            .inspect_err(|_| shared.requests.rate_limited(&limits.policy.policy))?;
    }
    Ok(Admission::Admitted(
        Request::from_parts(parts, body),
        admitted,
    ))
}

/// Forwards to one backend of the rule. Returns once the response headers arrived; the body
/// streams on afterwards. A WebSocket handshake returns with the backend's 101, and the
/// connection's task relays the tunnel after that, outside every request timeout.
async fn forward(
    shared: &Shared,
    connection: &Connection,
    selected: Selected<'_>,
    backends: &[WeightedBackend],
    client_certificate: Option<&Arc<TlsCertificate>>,
    log: &mut AccessLog,
    request: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let rule = selected.rule;
    let (mut parts, body) = request.into_parts();
    let websocket = Requested::take(&mut parts);
    let te_trailers = prepare_request_headers(&mut parts, connection, websocket.as_ref());
    apply_request_filters(&mut parts, rule, selected.matcher.matched_prefix())?;
    let original = connection.egress.as_ref().map(|e| e.destination);
    let (chosen, mut backend) = forward::choose_backend(backends, original)?;
    if matches!(chosen.target, ir::BackendTarget::OriginalDestination) {
        // The original destination speaks what the client spoke: HTTP/2 here means h2c.
        backend.to_mut().protocol = protocol_of(parts.version);
    }
    log.backend = Some(backend.name.clone());
    let Some(websocket) = websocket else {
        let body = if rule.filters.mirrors.is_empty() {
            body
        } else {
            Box::pin(
                shared
                    .mirrors
                    .send(&rule.filters.mirrors, client_certificate, &parts, body),
            )
            .await?
        };
        apply_backend_filters(&mut parts, chosen, backend.protocol, te_trailers);
        shared.retry_budget.deposit();
        // A retried request is replayed from memory: only bodies within the limit can be.
        let (body, replay) = match &rule.retry {
            Some(_) => match Box::pin(body::buffer_bounded(body, shared.options.mirror_body_limit))
                .await
                .map_err(ProxyError::RequestBody)?
            {
                body::Buffered::Complete {
                    data,
                    trailers: None,
                } => (body::full(data.clone()), Some(data)),
                body::Buffered::Complete { data, trailers } => (body::replay(data, trailers), None),
                body::Buffered::TooLarge(body) => (body, None),
            },
            None => (body, None),
        };
        let idempotent = is_idempotent(&parts.method);
        let mut request = Request::from_parts(parts, body);
        let mut retries_left = rule.retry.as_ref().map_or(0, |r| r.attempts);
        let mut tried = Vec::new();
        loop {
            let endpoint = shared.upstreams.endpoint_avoiding(&backend, &tried)?;
            if retries_left > 0 {
                // Only a request that may be retried remembers where it failed.
                tried.push(endpoint);
            }
            log.endpoint = Some(endpoint);
            log.attempts += 1;
            let again = match (&replay, retries_left) {
                (Some(data), 1..) => Some(copy_request(&request, data.clone())),
                _ => None,
            };
            let attempt = Box::pin(shared.upstreams.send(
                &backend,
                client_certificate,
                endpoint,
                request,
            ));
            let result = deadline(rule.timeouts.backend_request, attempt, || {
                ProxyError::BackendTimeout { endpoint }
            })
            .await;
            if let Err(ProxyError::ConnectionRefused { .. } | ProxyError::UpstreamConnect { .. }) =
                &result
            {
                shared.requests.connect_failed(&backend.name);
            }
            let outcome = match &result {
                Ok(response) => outlier::of_status(response.status().as_u16()),
                Err(error) if error.fault() == Fault::Upstream => outlier::Outcome::Failed,
                Err(_) => outlier::Outcome::Healthy,
            };
            shared.upstreams.outliers.report(endpoint, outcome);
            let retryable = match &result {
                Ok(response) => rule
                    .retry
                    .as_ref()
                    .is_some_and(|r| r.codes.contains(&response.status().as_u16())),
                // A request that may have reached the backend is retried only when repeating
                // it is harmless: its method is idempotent (RFC 9110, section 9.2.2).
                Err(error) => error.retry() || (idempotent && error.may_have_reached_backend()),
            };
            match again {
                Some(next) if retryable && shared.retry_budget.withdraw() => {
                    retries_left -= 1;
                    shared.requests.retried(&rule.id);
                    request = next;
                    if let Some(retry) = &rule.retry {
                        Box::pin(tokio::time::sleep(retry.backoff)).await;
                    }
                }
                _ => return Ok(prepare_response(result?, chosen)),
            }
        }
    };
    // A WebSocket handshake: boxed, so that ordinary requests do not carry its state.
    Box::pin(forward_upgrade(
        shared,
        connection,
        rule,
        chosen,
        &backend,
        client_certificate,
        log,
        (parts, body),
        te_trailers,
        websocket,
    ))
    .await
}

/// Sends a WebSocket handshake over a connection of its own and, once the backend switches
/// protocols, hands the tunnel to the client connection's task.
#[allow(clippy::too_many_arguments)]
async fn forward_upgrade(
    shared: &Shared,
    connection: &Connection,
    rule: &Rule,
    chosen: &WeightedBackend,
    backend: &Backend,
    client_certificate: Option<&Arc<TlsCertificate>>,
    log: &mut AccessLog,
    (mut parts, body): (Parts, ProxyBody),
    te_trailers: bool,
    websocket: Requested,
) -> Result<Response<ProxyBody>, ProxyError> {
    // Handshakes are not mirrored: a mirror would open a second WebSocket that nobody reads.
    //
    // An upgrade exists only in HTTP/1.1, so the handshake goes over HTTP/1.1 even to a
    // backend whose Service port says `appProtocol: kubernetes.io/h2c`. Servers that take h2c
    // with prior knowledge commonly serve HTTP/1.1 on the same port, so this usually works;
    // where it does not, the backend's refusal becomes the 502 that refusing up front would
    // have given. Talking RFC 8441 to the backend is out of scope, as it is for clients.
    apply_backend_filters(&mut parts, chosen, BackendProtocol::Http1, te_trailers);
    let endpoint = shared.upstreams.endpoint(backend)?;
    log.endpoint = Some(endpoint);
    let connect_timeout = shared.options.connect_timeout;
    let request = Request::from_parts(parts, body);
    let attempt = async {
        let stream = shared
            .upstreams
            .connect_unpooled(backend, client_certificate, endpoint, connect_timeout)
            .await?;
        upgrade::send(stream, endpoint, request).await
    };
    let mut response = deadline(rule.timeouts.backend_request, attempt, || {
        ProxyError::BackendTimeout { endpoint }
    })
    .await?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        // The backend refused the WebSocket (or ignored the upgrade): an ordinary answer.
        return Ok(prepare_response(response, chosen));
    }
    let tunnel = Tunnel::new(websocket.client, &mut response, connection.client, endpoint);
    connection.tunnel.put(tunnel);
    Ok(prepare_switch(response, chosen))
}

/// Whether repeating a request with `method` has the same effect as sending it once.
fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A copy of `request` (method, target, version, headers) with `body`, for a retry.
fn copy_request(request: &Request<ProxyBody>, body: bytes::Bytes) -> Request<ProxyBody> {
    let mut copy = Request::new(body::full(body));
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

/// Sends an egress request on to its original destination as it is (apart from the proxy's
/// own header changes): allowed by the network's policy, or not classified at all.
async fn forward_original(
    shared: &Shared,
    connection: &Connection,
    context: &EgressContext,
    log: &mut AccessLog,
    request: Request<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (mut parts, body) = request.into_parts();
    // Upgrades are not carried to original destinations: the request goes as a plain one.
    drop(Requested::take(&mut parts));
    let te_trailers = prepare_request_headers(&mut parts, connection, None);
    let protocol = protocol_of(parts.version);
    if te_trailers && protocol == BackendProtocol::H2c {
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
    let endpoint = context.destination;
    let mut backend = forward::original_destination(endpoint);
    backend.protocol = protocol;
    log.backend = Some(backend.name.clone());
    log.endpoint = Some(endpoint);
    let response = shared
        .upstreams
        .send(&backend, None, endpoint, Request::from_parts(parts, body))
        .await?;
    let (mut parts, body) = response.into_parts();
    filters::remove_hop_by_hop(&mut parts.headers);
    parts.version = Version::HTTP_11;
    Ok(Response::from_parts(parts, body::boxed(body)))
}

/// The protocol to speak to an original destination: the client's.
fn protocol_of(version: Version) -> BackendProtocol {
    if version == Version::HTTP_2 {
        BackendProtocol::H2c
    } else {
        BackendProtocol::Http1
    }
}

// === steps ===

/// The request's host: the URI authority when there is one (HTTP/2 `:authority`, or an
/// HTTP/1.1 absolute-form target, which "MUST" override `Host` per RFC 9112 §3.2.2), else
/// the `Host` header.
fn request_host<B>(request: &Request<B>) -> Result<Hostname, ProxyError> {
    let raw = match request.uri().authority() {
        Some(authority) => authority.as_str(),
        None => request
            .headers()
            .get(header::HOST)
            .and_then(|value| value.to_str().ok())
            .ok_or(ProxyError::MissingHost)?,
    };
    Hostname::from_request_host(raw).ok_or(ProxyError::MissingHost)
}

/// The accepting socket's bind, and its listener that serves `host`: for a mesh client whose
/// namespace has consumer routes on the bind, that namespace's listener.
fn find_listener<'c>(
    config: &'c ir::Config,
    bind: SocketAddr,
    host: &Hostname,
    namespace: Option<&str>,
) -> Result<(&'c ir::Bind, &'c Arc<HttpListener>), ProxyError> {
    config
        .binds
        .get(&bind)
        .and_then(|bind| {
            let consumer = namespace.and_then(|ns| bind.consumers.get(ns));
            Some((bind, consumer.or_else(|| bind.listener_for(host.as_str()))?))
        })
        .ok_or_else(|| ProxyError::NoListener {
            host: host.to_string(),
        })
}

/// On a TLS connection, the host must select the listener that the SNI selected during the
/// handshake. Listener `hostname` docs: "If another Listener has an exact match or more
/// specific wildcard entry, the Gateway SHOULD return a 421. If the current Listener
/// (selected by SNI matching during ClientHello) does not match the Host: If another Listener
/// does match the Host, the Gateway SHOULD return a 421. If no other Listener matches the
/// Host, the Gateway MUST return a 404" (the 404 comes from [`find_listener`]).
fn reject_misdirected(
    bind: &ir::Bind,
    listener: &Arc<HttpListener>,
    tls: Option<&Session>,
    host: &Hostname,
) -> Result<(), ProxyError> {
    let Some(session) = tls else { return Ok(()) };
    let addressed = tls::listener_for_server_name(bind, session.server_name.as_ref());
    if addressed.is_some_and(|addressed| Arc::ptr_eq(addressed, listener)) {
        return Ok(());
    }
    Err(ProxyError::MisdirectedRequest {
        host: host.to_string(),
        server_name: session.server_name.as_ref().map(ToString::to_string),
    })
}

pub(crate) fn select_route<'l, B>(
    listener: &'l HttpListener,
    host: &Hostname,
    request: &Request<B>,
) -> Result<Selected<'l>, ProxyError> {
    let parts = ir::HttpRequestParts {
        host: host.as_str(),
        path: request.uri().path(),
        query: request.uri().query(),
        method: request.method(),
        headers: request.headers(),
    };
    listener.routes.select(&parts).ok_or(ProxyError::NoRoute)
}

/// The proxy's own header changes: `Host` from the authority, hop-by-hop headers out (except
/// the ones asking for a WebSocket, when `websocket` is a handshake the connection can
/// carry), `X-Forwarded-For` and `X-Forwarded-Proto` in. Returns whether the client sent
/// `TE: trailers`.
fn prepare_request_headers(
    parts: &mut Parts,
    connection: &Connection,
    websocket: Option<&Requested>,
) -> bool {
    if let Some(authority) = parts.uri.authority()
        && let Ok(host) = HeaderValue::from_str(authority.as_str())
    {
        parts.headers.insert(header::HOST, host);
    }
    let te_trailers = filters::accepts_trailers(&parts.headers);
    filters::remove_hop_by_hop(&mut parts.headers);
    if let Some(websocket) = websocket {
        upgrade::keep_upgrade_headers(&mut parts.headers, websocket.protocol.clone());
    }
    // The scheme the client really used: `https` exactly when this connection is TLS.
    let scheme = match connection.tls {
        Some(_) => RedirectScheme::Https,
        None => RedirectScheme::Http,
    };
    filters::set_forwarded(&mut parts.headers, &connection.forwarded_for, scheme);
    te_trailers
}

/// The rule's `RequestHeaderModifier` and `URLRewrite`.
fn apply_request_filters(
    parts: &mut Parts,
    rule: &Rule,
    matched_prefix: Option<&str>,
) -> Result<(), ProxyError> {
    filters::modify_headers(rule.filters.request_headers.as_deref(), &mut parts.headers);
    let Some(rewrite) = &rule.filters.rewrite else {
        return Ok(());
    };
    if let Some(hostname) = &rewrite.hostname {
        parts
            .headers
            .insert(header::HOST, filters::rewrite_host(hostname)?);
    }
    if let Some(path) = &rewrite.path {
        let target = filters::rewrite_target(parts.uri.path_and_query(), path, matched_prefix)?;
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        uri.path_and_query = Some(target);
        parts.uri =
            http::Uri::from_parts(uri).map_err(|error| ProxyError::InvalidFilterResult {
                what: "request target",
                value: error.to_string(),
            })?;
    }
    Ok(())
}

/// Changes for the chosen backendRef only: its `RequestHeaderModifier`, and `TE: trailers`
/// for HTTP/2 backends.
fn apply_backend_filters(
    parts: &mut Parts,
    chosen: &WeightedBackend,
    protocol: BackendProtocol,
    te_trailers: bool,
) {
    filters::modify_headers(chosen.request_headers.as_deref(), &mut parts.headers);
    if te_trailers && protocol == BackendProtocol::H2c {
        // `TE` is hop-by-hop, but HTTP/2 allows `TE: trailers` (RFC 9113 §8.2.2) and gRPC
        // servers require it, so a client's promise to accept trailers is passed on.
        parts
            .headers
            .insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The upstream response as the client gets it: hop-by-hop headers out, the backendRef's
/// `ResponseHeaderModifier` applied (the rule's is applied by the caller, for redirects too).
fn prepare_response<B>(response: Response<B>, chosen: &WeightedBackend) -> Response<ProxyBody>
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let (mut parts, body) = response.into_parts();
    filters::remove_hop_by_hop(&mut parts.headers);
    filters::modify_headers(chosen.response_headers.as_deref(), &mut parts.headers);
    // The client connection decides its own version; hyper frames the response for it.
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, body::boxed(body))
}

/// The backend's 101 as the client gets it: like [`prepare_response`], but `Connection` and
/// `Upgrade` stay, since they tell the client what the connection switched to; no body.
fn prepare_switch(response: Response<Incoming>, chosen: &WeightedBackend) -> Response<ProxyBody> {
    let (mut parts, _) = response.into_parts();
    let protocol = parts.headers.get(header::UPGRADE).cloned();
    filters::remove_hop_by_hop(&mut parts.headers);
    if let Some(protocol) = protocol {
        upgrade::keep_upgrade_headers(&mut parts.headers, protocol);
    }
    filters::modify_headers(chosen.response_headers.as_deref(), &mut parts.headers);
    parts.version = Version::HTTP_11;
    Response::from_parts(parts, body::empty())
}

/// Runs `future`, failing with `on_expiry()` when `limit` passes first.
///
/// Not an `async fn`: that would hold `future` twice (as its argument and inside the
/// timeout), and these futures are the bulk of the request's state (the callers on the
/// request path pass them boxed, so that wrapping them here moves a pointer).
fn deadline<T, F>(
    limit: Option<Duration>,
    future: F,
    on_expiry: impl FnOnce() -> ProxyError,
) -> impl Future<Output = Result<T, ProxyError>>
where
    F: Future<Output = Result<T, ProxyError>>,
{
    match limit {
        None => Either::Left(future),
        Some(limit) => Either::Right(
            tokio::time::timeout(limit, future)
                .map(|result| result.unwrap_or_else(|_| Err(on_expiry()))),
        ),
    }
}

// === impl AccessLog ===

/// The target of access-log events.
const ACCESS_LOG: &str = "portcullis::access";

/// One access-log line, filled in as the request moves through the steps.
struct AccessLog {
    client: SocketAddr,
    bind: SocketAddr,
    /// The SNI of a TLS connection (`-` without SNI), `None` on plain connections.
    server_name: Option<String>,
    method: Method,
    authority: Option<String>,
    target: String,
    version: Version,
    route: Option<Arc<Rule>>,
    backend: Option<Arc<str>>,
    endpoint: Option<SocketAddr>,
    /// Upstream attempts made (retries included).
    attempts: u32,
    error: Option<String>,
    fault: Option<crate::error::Fault>,
    /// The W3C trace id of the request (its own span's when tracing is on).
    trace_id: Option<String>,
    /// The response status, once answered.
    status: u16,
    /// The `grpc-status` in the response headers, if any.
    grpc_status: Option<String>,
    /// Time to the response headers.
    to_headers: Duration,
}

impl AccessLog {
    /// A line for `request`; without `detailed` the request's target and authority are
    /// left out (nothing will print them).
    fn new<B>(connection: &Connection, request: &Request<B>, detailed: bool) -> Self {
        let target = if detailed {
            request
                .uri()
                .path_and_query()
                .map_or_else(|| request.uri().path().to_string(), ToString::to_string)
        } else {
            String::new()
        };
        let server_name = connection.tls.as_ref().map(|session| {
            session
                .server_name
                .as_ref()
                .map_or_else(|| "-".to_string(), ToString::to_string)
        });
        let authority = if detailed {
            request
                .uri()
                .authority()
                .map(|authority| authority.as_str().to_string())
                .or_else(|| {
                    request
                        .headers()
                        .get(header::HOST)
                        .and_then(|host| host.to_str().ok())
                        .map(ToString::to_string)
                })
        } else {
            None
        };
        Self {
            client: connection.client,
            bind: connection.bind,
            server_name,
            method: request.method().clone(),
            authority,
            target,
            version: request.version(),
            route: None,
            backend: None,
            endpoint: None,
            attempts: 0,
            error: None,
            fault: None,
            trace_id: None,
            status: 0,
            grpc_status: None,
            to_headers: Duration::ZERO,
        }
    }

    /// Takes what the line needs from the response headers. `grpc_status` is the one in the
    /// headers: the gateway's own Trailers-Only answers, whose HTTP status is always 200, and
    /// backends' Trailers-Only ones (a status in trailers comes after the body).
    fn answered(&mut self, response: &Response<ProxyBody>, to_headers: Duration) {
        self.status = response.status().as_u16();
        self.grpc_status = response
            .headers()
            .get("grpc-status")
            .and_then(|value| value.to_str().ok())
            .map(ToString::to_string);
        self.to_headers = to_headers;
    }

    fn route_name(&self) -> Option<String> {
        self.route
            .as_ref()
            .map(|rule| format!("{}/{}#{}", rule.id.namespace, rule.id.name, rule.id.rule))
    }

    /// The span's name: the method and the route that served the request (the matched
    /// route stands for OpenTelemetry's `http.route`, which has no raw paths).
    fn span_name(&self) -> String {
        match self.route_name() {
            Some(route) => format!("{} {route}", self.method),
            None => self.method.to_string(),
        }
    }

    /// Sets the span's request attributes (OpenTelemetry's HTTP semantic conventions).
    fn describe(&self, span: &mut ActiveSpan) {
        span.set("http.request.method", self.method.as_str());
        let path = self.target.split('?').next().unwrap_or_default();
        span.set("url.path", path);
        if let Some(authority) = &self.authority {
            span.set("server.address", authority);
        }
        span.set("client.address", &self.client.ip().to_string());
        if let Some(route) = self.route_name() {
            span.set("portcullis.route", &route);
        }
        if let Some(backend) = &self.backend {
            span.set("portcullis.backend", backend);
        }
        if let Some(endpoint) = self.endpoint {
            span.set("network.peer.address", &endpoint.ip().to_string());
            span.set("network.peer.port", &endpoint.port().to_string());
        }
        if let Some(error) = &self.error {
            span.set("error.type", error);
        }
    }

    /// Writes the line, once the response body has been sent.
    fn record(&self, received: u64, sent: u64, elapsed: Duration) {
        let route = self.route_name();
        tracing::info!(
            target: ACCESS_LOG,
            client = %self.client,
            bind = %self.bind,
            tls_server_name = self.server_name.as_deref(),
            method = %self.method,
            authority = self.authority.as_deref().unwrap_or("-"),
            target = %self.target,
            version = ?self.version,
            status = self.status,
            grpc_status = self.grpc_status.as_deref(),
            route = route.as_deref().unwrap_or("-"),
            backend = self.backend.as_deref().unwrap_or("-"),
            endpoint = ?self.endpoint,
            attempts = self.attempts,
            error = self.error.as_deref().unwrap_or("-"),
            fault = ?self.fault,
            trace_id = self.trace_id.as_deref().unwrap_or("-"),
            bytes_received = received,
            bytes_sent = sent,
            response_headers_ms = self.to_headers.as_secs_f64() * 1000.0,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authority_wins_over_host_header() {
        let request = Request::builder()
            .uri("http://Example.COM:8080/x")
            .header(header::HOST, "other.example")
            .body(())
            .expect("valid request");
        assert_eq!(
            request_host(&request).ok().as_ref().map(Hostname::as_str),
            Some("example.com")
        );
        let origin_form = Request::builder()
            .uri("/x")
            .header(header::HOST, "foo.example:80")
            .body(())
            .expect("valid request");
        assert_eq!(
            request_host(&origin_form)
                .ok()
                .as_ref()
                .map(Hostname::as_str),
            Some("foo.example")
        );
        let hostless = Request::builder()
            .uri("/x")
            .body(())
            .expect("valid request");
        assert!(matches!(
            request_host(&hostless),
            Err(ProxyError::MissingHost)
        ));
    }
}
