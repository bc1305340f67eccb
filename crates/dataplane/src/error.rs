//! The one error type of the request path and its single mapping to an HTTP status.
//!
//! Every step of [`crate::proxy`] returns `Result<_, ProxyError>`. Each variant knows who is at
//! fault ([`Fault`]) and whether another attempt could succeed ([`ProxyError::retry`]), in the
//! spirit of pingora's `ErrorSource` and `RetryType`; the status a client sees is decided only
//! in [`ProxyError::status`], and for gRPC calls in `ProxyError::grpc_code` beside it.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{self, ProxyBody};
use crate::grpc;

/// The header of a response refusing egress traffic.
pub const EGRESS_ERROR_HEADER: &str = "portcullis-proxy-error";

/// A boxed error from hyper, the client pool or an IO source.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// Why a request could not be proxied.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request names no host (HTTP/1.1 without `Host`, HTTP/2 without `:authority`).
    #[error("request has no host")]
    MissingHost,
    /// `CONNECT` is not routed by HTTP listeners.
    #[error("CONNECT is not supported on this listener")]
    ConnectMethod,
    /// Reading the request body failed (while buffering it for mirrors).
    #[error("reading the request body failed")]
    RequestBody(#[source] BoxError),
    /// No listener on the accepting socket serves the request's host.
    #[error("no listener for host {host:?}")]
    NoListener {
        /// The normalised request host.
        host: String,
    },
    /// On a TLS connection, the request's host selects another listener than the SNI did, so
    /// the certificate the client checked does not vouch for this host.
    #[error("host {host:?} is not served by the listener chosen by SNI {server_name:?}")]
    MisdirectedRequest {
        /// The normalised request host.
        host: String,
        /// The SNI of the connection, if the client sent one.
        server_name: Option<String>,
    },
    /// The TLS listener chosen for a connection has no certificate that can be served (it
    /// did not load; the reason was logged when the config was applied).
    #[error("the certificate of listener {listener} cannot be served")]
    UnusableCertificate {
        /// Gateway `namespace/name` and listener name.
        listener: String,
    },
    /// A listener was found but none of its routes matches.
    #[error("no route matches")]
    NoRoute,
    /// The selected rule is invalid (`ir::Action::Invalid`).
    #[error("the matched rule is invalid: {0}")]
    InvalidRule(String),
    /// The rule forwards but has no backendRef with a non-zero weight.
    #[error("the matched rule has no backend with a non-zero weight")]
    NoBackends,
    /// The backendRef chosen by weight is invalid.
    #[error("backend {reference} is invalid: {reason}")]
    InvalidBackend {
        /// The reference as written.
        reference: String,
        /// Why translate rejected it.
        reason: String,
    },
    /// A filter produced a request target or redirect location that is not a valid URI.
    #[error("filter produced an invalid {what}: {value:?}")]
    InvalidFilterResult {
        /// `"request target"`, `"host"` or `"location"`.
        what: &'static str,
        /// The offending value.
        value: String,
    },
    /// The chosen backend has no ready endpoints.
    #[error("backend {backend} has no endpoints")]
    NoEndpoints {
        /// `namespace/name:port`.
        backend: String,
    },
    /// The endpoint refused the connection.
    #[error("endpoint {endpoint} refused the connection")]
    ConnectionRefused {
        /// Where we tried to connect.
        endpoint: SocketAddr,
        /// The client error.
        #[source]
        source: BoxError,
    },
    /// Connecting to the endpoint failed for another reason (timeout, unreachable).
    #[error("connecting to endpoint {endpoint} failed")]
    UpstreamConnect {
        /// Where we tried to connect.
        endpoint: SocketAddr,
        /// The client error.
        #[source]
        source: BoxError,
    },
    /// The request was sent but no valid response came back.
    #[error("upstream {endpoint} failed")]
    Upstream {
        /// The endpoint that failed.
        endpoint: SocketAddr,
        /// The client error.
        #[source]
        source: BoxError,
    },
    /// Egress traffic that no route of its EgressNetwork allows, under `trafficPolicy: Deny`,
    /// or whose names disagree (the CONNECT authority, the SNI, the `Host`).
    #[error("egress denied by {network}: {reason}")]
    EgressDenied {
        /// EgressNetwork `namespace/name`, or `-` for a name mismatch outside any network.
        network: String,
        /// Why.
        reason: String,
    },
    /// The egress proxy could not resolve the host a client asked for.
    #[error("cannot resolve {host}: {reason}")]
    Unresolvable {
        /// The host as the client sent it.
        host: String,
        /// The resolver's error.
        reason: String,
    },
    /// The TLS handshake with a backend under a BackendTLSPolicy failed: its certificate is
    /// not trusted, not valid for the policy's hostname or subjectAltNames, or expired.
    #[error("TLS to endpoint {endpoint} failed")]
    BackendTls {
        /// The endpoint.
        endpoint: SocketAddr,
        /// The client error, with the handshake error in its chain.
        #[source]
        source: BoxError,
    },
    /// No TLS client can be built for the backend: its BackendTLSPolicy has no usable CA
    /// certificate ("Connections using an invalid CACertificateRef MUST fail, and the client
    /// MUST receive an HTTP 5xx error response"), or the Gateway's client certificate is
    /// unusable.
    #[error(transparent)]
    BackendTlsSettings(crate::forward::SettingsError),
    /// The ExternalAuth service could not be asked, or gave no usable answer: the filter
    /// "MUST fail closed".
    #[error("external authorization via {service} failed: {reason}")]
    AuthUnavailable {
        /// The authorization backend, `namespace/name:port`.
        service: String,
        /// What went wrong.
        reason: String,
    },
    /// The body that ExternalAuth forwards is over `forwardBody.maxSize`.
    #[error("request body over the {limit}-byte limit of external authorization")]
    AuthBodyTooLarge {
        /// `forwardBody.maxSize`.
        limit: usize,
    },
    /// An AuthenticationPolicy found no valid credentials in the request.
    #[error("unauthenticated by {policy}: {reason}")]
    Unauthenticated {
        /// The policy, `namespace/name`.
        policy: String,
        /// What was missing or wrong.
        reason: String,
        /// The `WWW-Authenticate` challenge for the client.
        challenge: HeaderValue,
    },
    /// Valid credentials that this route does not accept (a JWT for another audience).
    #[error("forbidden by {policy}: {reason}")]
    Forbidden {
        /// The policy, `namespace/name`.
        policy: String,
        /// Why.
        reason: String,
    },
    /// A limit of a RateLimitPolicy is used up.
    #[error("rate limited by {policy}")]
    RateLimited {
        /// The policy, `namespace/name`.
        policy: String,
        /// The limit's request count per window.
        limit: u64,
        /// When the client may try again.
        retry_after: Duration,
    },
    /// `timeouts.request` expired before the response headers arrived.
    #[error("request timeout expired")]
    RequestTimeout,
    /// `timeouts.backendRequest` expired for one upstream attempt.
    #[error("backend request timeout expired for {endpoint}")]
    BackendTimeout {
        /// The endpoint that was too slow.
        endpoint: SocketAddr,
    },
}

/// Who caused an error; decides the log level and, later, metrics labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The downstream client sent something we cannot serve.
    Client,
    /// The configuration (routes, backends) cannot serve the request.
    Config,
    /// The backend failed or was too slow.
    Upstream,
}

// === impl ProxyError ===

impl ProxyError {
    /// The status code a client receives. This is the only place that decides it.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingHost | Self::RequestBody(_) => StatusCode::BAD_REQUEST,
            Self::EgressDenied { .. } | Self::AuthUnavailable { .. } | Self::Forbidden { .. } => {
                StatusCode::FORBIDDEN
            }
            Self::AuthBodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Unresolvable { .. } => StatusCode::BAD_GATEWAY,
            Self::ConnectMethod => StatusCode::METHOD_NOT_ALLOWED,
            Self::NoListener { .. } | Self::NoRoute => StatusCode::NOT_FOUND,
            // RFC 9110 §15.5.20; the Gateway listener `hostname` docs ask for it when the host
            // and the SNI select different listeners.
            Self::MisdirectedRequest { .. } => StatusCode::MISDIRECTED_REQUEST,
            // "requests that would have been sent to an invalid backend MUST receive a 500"
            // (HTTPBackendRef docs); invalid rules get the same answer.
            Self::InvalidRule(_)
            | Self::NoBackends
            | Self::InvalidBackend { .. }
            | Self::InvalidFilterResult { .. }
            | Self::UnusableCertificate { .. }
            | Self::BackendTlsSettings(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::NoEndpoints { .. } | Self::ConnectionRefused { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            // A certificate the policy rejects is a bad answer from upstream, never a timeout.
            Self::UpstreamConnect { .. } | Self::Upstream { .. } | Self::BackendTls { .. } => {
                StatusCode::BAD_GATEWAY
            }
            Self::RequestTimeout | Self::BackendTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The gRPC status a gRPC call gets instead of [`ProxyError::status`], in a Trailers-Only
    /// response (`grpc.rs`). This is the only place that decides it.
    ///
    /// The [HTTP to gRPC status mapping] is followed where it has an entry and nothing better
    /// is known; the other choices are explained below the table.
    ///
    /// | HTTP | errors                                | gRPC                  | why            |
    /// |------|---------------------------------------|-----------------------|----------------|
    /// | 400  | `MissingHost`, `RequestBody`          | 13 `INTERNAL`         | mapping        |
    /// | 401  | `Unauthenticated`                     | 16 `UNAUTHENTICATED`  | mapping        |
    /// | 403  | `EgressDenied`, `Forbidden`,          | 7 `PERMISSION_DENIED` | mapping        |
    /// |      | `AuthUnavailable`                     |                       |                |
    /// | 413  | `AuthBodyTooLarge`                    | 8 `RESOURCE_EXHAUSTED`| note 7         |
    /// | 429  | `RateLimited`                         | 8 `RESOURCE_EXHAUSTED`| note 7         |
    /// | 404  | `NoListener`, `NoRoute`               | 12 `UNIMPLEMENTED`    | mapping        |
    /// | 405  | `ConnectMethod`                       | 12 `UNIMPLEMENTED`    | note 1         |
    /// | 421  | `MisdirectedRequest`                  | 14 `UNAVAILABLE`      | note 2         |
    /// | 500  | `NoBackends`, `InvalidBackend`        | 14 `UNAVAILABLE`      | GRPCRoute spec |
    /// | 500  | `InvalidRule`, `InvalidFilterResult`  | 13 `INTERNAL`         | note 3         |
    /// | 500  | `UnusableCertificate`                 | 13 `INTERNAL`         | note 5         |
    /// | 500  | `BackendTlsSettings`                  | 14 `UNAVAILABLE`      | note 6         |
    /// | 502  | `UpstreamConnect`, `Upstream`,        | 14 `UNAVAILABLE`      | mapping        |
    /// |      | `Unresolvable`                        |                       |                |
    /// | 502  | `BackendTls`                          | 14 `UNAVAILABLE`      | mapping        |
    /// | 503  | `NoEndpoints`, `ConnectionRefused`    | 14 `UNAVAILABLE`      | mapping        |
    /// | 504  | `RequestTimeout`, `BackendTimeout`    | 4 `DEADLINE_EXCEEDED` | note 4         |
    ///
    /// - GRPCRoute spec: "When a GRPCBackendRef is invalid, `UNAVAILABLE` statuses MUST be
    ///   returned for requests that would have otherwise been routed to an invalid backend"
    ///   (`GRPCRouteRule.backendRefs`); a rule without a backend of non-zero weight is the same
    ///   case with nothing to choose from.
    /// 1. The mapping's default would be `UNKNOWN`; a method the gateway does not route is an
    ///    operation it does not support, the same answer as a missing route.
    /// 2. RFC 9110 §15.5.20: clients "MAY retry the request -- whether or not the original
    ///    request method was idempotent -- over a different connection". The condition belongs
    ///    to the connection, not the call, and the request never reached a backend, so the
    ///    retryable `UNAVAILABLE` fits; the mapping's default `UNKNOWN` would read as a failure
    ///    of the call itself.
    /// 3. The rule cannot be served at all (an unsupported filter, a rewrite that yields no
    ///    valid target). `INTERNAL` ("some invariants expected by the underlying system have
    ///    been broken") says so and invites no retry; the mapping's default `UNKNOWN` is for
    ///    errors without "enough error information", which the gateway has.
    /// 4. The mapping says `UNAVAILABLE` for 504, but it is meant for clients that got no
    ///    `grpc-status`; the gateway knows that a deadline expired. `UNAVAILABLE` would also
    ///    invite retries of a call the backend may already be running. Envoy made the same
    ///    change in envoyproxy/envoy#44479 (fixing #10184); linkerd/linkerd2-proxy#3302 proposes
    ///    it for linkerd.
    ///
    /// 5. Only TLS connections routed by SNI meet it, and they are closed, never answered; the
    ///    row exists so that the mapping stays total.
    /// 6. A backend whose BackendTLSPolicy cannot be used is an invalid backend, answered
    ///    like one (GRPCRoute spec row).
    /// 7. The mapping says `UNAVAILABLE` for 429, which invites immediate retries; a quota
    ///    (requests per window, bytes per body) is what `RESOURCE_EXHAUSTED` names.
    ///
    /// [HTTP to gRPC status mapping]:
    ///     https://github.com/grpc/grpc/blob/master/doc/http-grpc-status-mapping.md
    pub(crate) fn grpc_code(&self) -> grpc::Code {
        match self {
            Self::MissingHost | Self::RequestBody(_) => grpc::Code::Internal,
            Self::EgressDenied { .. } | Self::AuthUnavailable { .. } | Self::Forbidden { .. } => {
                grpc::Code::PermissionDenied
            }
            Self::Unauthenticated { .. } => grpc::Code::Unauthenticated,
            Self::AuthBodyTooLarge { .. } | Self::RateLimited { .. } => {
                grpc::Code::ResourceExhausted
            }
            Self::Unresolvable { .. } => grpc::Code::Unavailable,
            Self::NoListener { .. } | Self::NoRoute | Self::ConnectMethod => {
                grpc::Code::Unimplemented
            }
            Self::MisdirectedRequest { .. } => grpc::Code::Unavailable,
            Self::NoBackends | Self::InvalidBackend { .. } | Self::BackendTlsSettings(_) => {
                grpc::Code::Unavailable
            }
            Self::InvalidRule(_)
            | Self::InvalidFilterResult { .. }
            | Self::UnusableCertificate { .. } => grpc::Code::Internal,
            Self::UpstreamConnect { .. }
            | Self::Upstream { .. }
            | Self::BackendTls { .. }
            | Self::NoEndpoints { .. }
            | Self::ConnectionRefused { .. } => grpc::Code::Unavailable,
            Self::RequestTimeout | Self::BackendTimeout { .. } => grpc::Code::DeadlineExceeded,
        }
    }

    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        match self {
            Self::MissingHost
            | Self::ConnectMethod
            | Self::RequestBody(_)
            | Self::NoListener { .. }
            | Self::MisdirectedRequest { .. }
            | Self::EgressDenied { .. }
            | Self::AuthBodyTooLarge { .. }
            | Self::Unauthenticated { .. }
            | Self::Forbidden { .. }
            | Self::RateLimited { .. }
            | Self::NoRoute => Fault::Client,
            Self::InvalidRule(_)
            | Self::NoBackends
            | Self::InvalidBackend { .. }
            | Self::InvalidFilterResult { .. }
            | Self::UnusableCertificate { .. }
            | Self::BackendTlsSettings(_)
            | Self::NoEndpoints { .. } => Fault::Config,
            Self::ConnectionRefused { .. }
            | Self::BackendTls { .. }
            | Self::UpstreamConnect { .. }
            | Self::Upstream { .. }
            | Self::Unresolvable { .. }
            | Self::AuthUnavailable { .. }
            | Self::RequestTimeout
            | Self::BackendTimeout { .. } => Fault::Upstream,
        }
    }

    /// Whether another attempt (on another endpoint) may succeed without risking a duplicate:
    /// only when the request certainly never reached a backend.
    pub fn retry(&self) -> bool {
        matches!(
            self,
            Self::NoEndpoints { .. }
                | Self::ConnectionRefused { .. }
                | Self::UpstreamConnect { .. }
        )
    }

    /// Whether the request was sent but failed before a response came (the backend closed
    /// or reset the connection): another attempt is safe only for idempotent requests.
    pub fn may_have_reached_backend(&self) -> bool {
        matches!(self, Self::Upstream { .. })
    }

    /// Classifies a client-pool error for `endpoint`: refused connections, other connect
    /// failures, and failures after the request was sent are told apart.
    pub(crate) fn from_client(
        endpoint: SocketAddr,
        error: hyper_util::client::legacy::Error,
    ) -> Self {
        if !error.is_connect() {
            return Self::Upstream {
                endpoint,
                source: error.into(),
            };
        }
        if has_source::<crate::forward::HandshakeError>(&error) {
            return Self::BackendTls {
                endpoint,
                source: error.into(),
            };
        }
        if is_connection_refused(&error) {
            Self::ConnectionRefused {
                endpoint,
                source: error.into(),
            }
        } else {
            Self::UpstreamConnect {
                endpoint,
                source: error.into(),
            }
        }
    }

    /// Classifies a failed unpooled connect (TCP, then maybe TLS) to `endpoint`.
    pub(crate) fn from_connect(endpoint: SocketAddr, error: BoxError) -> Self {
        if has_source::<crate::forward::HandshakeError>(error.as_ref()) {
            Self::BackendTls {
                endpoint,
                source: error,
            }
        } else if is_connection_refused(error.as_ref()) {
            Self::ConnectionRefused {
                endpoint,
                source: error,
            }
        } else {
            Self::UpstreamConnect {
                endpoint,
                source: error,
            }
        }
    }

    /// The response sent to an HTTP client: the status and a one-line plain-text reason.
    pub(crate) fn into_response(self) -> Response<ProxyBody> {
        if let Self::EgressDenied { .. } = self {
            // As Linkerd answers: an empty body, and a header that says what happened.
            let mut response = Response::new(body::empty());
            *response.status_mut() = self.status();
            response.headers_mut().insert(
                EGRESS_ERROR_HEADER,
                HeaderValue::from_static("traffic not allowed"),
            );
            return response;
        }
        let mut response = Response::new(body::full(format!("{}\n", self.public_text())));
        *response.status_mut() = self.status();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        self.add_headers(response.headers_mut());
        response
    }

    /// The response sent to a gRPC client: Trailers-Only with [`ProxyError::grpc_code`] and,
    /// as `grpc-message`, the same text an HTTP client gets.
    pub(crate) fn into_grpc_response(self) -> Response<ProxyBody> {
        let mut response = grpc::trailers_only(self.grpc_code(), &self.public_text());
        self.add_headers(response.headers_mut());
        response
    }

    /// Headers some answers carry: the authentication challenge, and when to come back after
    /// a rate limit (`Retry-After`, RFC 9110 §10.2.3, and the `RateLimit-*` fields of
    /// draft-ietf-httpapi-ratelimit-headers, as most gateways send them).
    fn add_headers(&self, headers: &mut http::HeaderMap) {
        match self {
            Self::Unauthenticated { challenge, .. } => {
                headers.insert(header::WWW_AUTHENTICATE, challenge.clone());
            }
            Self::RateLimited {
                limit, retry_after, ..
            } => {
                // Whole seconds, rounded up: a client that waits that long finds a token.
                let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
                headers.insert("ratelimit-limit", HeaderValue::from(*limit));
                headers.insert("ratelimit-remaining", HeaderValue::from(0));
                headers.insert("ratelimit-reset", HeaderValue::from(seconds));
            }
            _ => {}
        }
    }

    /// What a client is told: the HTTP status and its reason phrase. The error's own text names
    /// backends and endpoints, which stay in the access log.
    fn public_text(&self) -> String {
        let status = self.status();
        format!(
            "{} {}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("error")
        )
    }
}

/// Whether an error of type `E` is in the chain.
fn has_source<E: StdError + 'static>(error: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if error.is::<E>() {
            return true;
        }
        current = error.source();
    }
    false
}

fn is_connection_refused(error: &(dyn StdError + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::ConnectionRefused
        {
            return true;
        }
        current = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_maps_to_the_issue_statuses() {
        use grpc::Code::{DeadlineExceeded, Internal, Unavailable, Unimplemented};
        let endpoint: SocketAddr = ([127, 0, 0, 1], 1).into();
        let io = || -> BoxError { Box::new(std::io::Error::other("x")) };
        let misdirected = ProxyError::MisdirectedRequest {
            host: "a".into(),
            server_name: Some("b".into()),
        };
        let invalid_backend = ProxyError::InvalidBackend {
            reference: "r".into(),
            reason: "x".into(),
        };
        let invalid_result = ProxyError::InvalidFilterResult {
            what: "location",
            value: "x".into(),
        };
        let no_endpoints = ProxyError::NoEndpoints {
            backend: "b".into(),
        };
        let refused = ProxyError::ConnectionRefused {
            endpoint,
            source: io(),
        };
        let connect = ProxyError::UpstreamConnect {
            endpoint,
            source: io(),
        };
        let upstream = ProxyError::Upstream {
            endpoint,
            source: io(),
        };
        // Error, HTTP status, gRPC code, fault, retry: the whole table in one place.
        let cases = [
            (ProxyError::MissingHost, 400, Internal, Fault::Client, false),
            (
                ProxyError::RequestBody(io()),
                400,
                Internal,
                Fault::Client,
                false,
            ),
            (
                ProxyError::ConnectMethod,
                405,
                Unimplemented,
                Fault::Client,
                false,
            ),
            (
                ProxyError::NoRoute,
                404,
                Unimplemented,
                Fault::Client,
                false,
            ),
            (
                ProxyError::NoListener { host: "a".into() },
                404,
                Unimplemented,
                Fault::Client,
                false,
            ),
            (misdirected, 421, Unavailable, Fault::Client, false),
            (
                ProxyError::InvalidRule("x".into()),
                500,
                Internal,
                Fault::Config,
                false,
            ),
            (invalid_result, 500, Internal, Fault::Config, false),
            (
                ProxyError::NoBackends,
                500,
                Unavailable,
                Fault::Config,
                false,
            ),
            (invalid_backend, 500, Unavailable, Fault::Config, false),
            (no_endpoints, 503, Unavailable, Fault::Config, true),
            (refused, 503, Unavailable, Fault::Upstream, true),
            (connect, 502, Unavailable, Fault::Upstream, true),
            (upstream, 502, Unavailable, Fault::Upstream, false),
            (
                ProxyError::RequestTimeout,
                504,
                DeadlineExceeded,
                Fault::Upstream,
                false,
            ),
            (
                ProxyError::BackendTimeout { endpoint },
                504,
                DeadlineExceeded,
                Fault::Upstream,
                false,
            ),
        ];
        for (error, status, code, fault, retry) in cases {
            assert_eq!(error.status().as_u16(), status, "{error}");
            assert_eq!(error.grpc_code(), code, "{error}");
            assert_eq!(error.fault(), fault, "{error}");
            assert_eq!(error.retry(), retry, "{error}");
        }
    }

    #[test]
    fn grpc_clients_get_trailers_only_with_the_http_text() {
        let response = ProxyError::NoRoute.into_grpc_response();
        assert_eq!(response.status(), StatusCode::OK);
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok());
        assert_eq!(header("grpc-status"), Some("12"));
        assert_eq!(header("grpc-message"), Some("404 Not Found"));
        assert_eq!(header("content-type"), Some("application/grpc"));
    }

    #[test]
    fn refused_is_found_in_the_source_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("wrapper")]
        struct Wrapper(#[source] std::io::Error);
        let refused = Wrapper(std::io::ErrorKind::ConnectionRefused.into());
        assert!(is_connection_refused(&refused));
        let other = Wrapper(std::io::ErrorKind::TimedOut.into());
        assert!(!is_connection_refused(&other));
    }
}
