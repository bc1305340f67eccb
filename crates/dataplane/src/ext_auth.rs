//! The `ExternalAuth` filter (GEP-1494): before a request goes on, an authorization service
//! decides about it, and nothing reaches a backend without its approval.
//!
//! Two protocols, as the spec defines them:
//! - `HTTP`: the request's method and target (after `http.path`) go to the service with Host,
//!   Authorization, Content-Length and the allowed headers; a 200 approves, and its headers
//!   (all but Host and framing ones, or the allowed ones) are set on the request. Any other
//!   answer is the client's answer, as the service wrote it.
//! - `GRPC`: Envoy's `envoy.service.auth.v3.Authorization/Check`, so existing ext_authz
//!   services work unchanged. The messages come from the `envoy-types` crate and the call
//!   goes through tonic's client over this data plane's own upstream pools (so the service's
//!   endpoints, BackendTLSPolicy and pooling work as for any backend).
//!
//! The filter "MUST fail closed": a service that cannot be reached, answers late (after
//! [`crate::Options::external_auth_timeout`]) or answers nonsense denies the request with 403,
//! as Envoy's ext_authz does by default. A body to forward that is larger than
//! `forwardBody.maxSize` is refused with 413, as the spec's `ForwardBody` docs ask ("Bodies
//! over that size must be rejected with a 4xx series error"); the `maxSize` field docs
//! instead speak of truncating, which would let the service approve a body it never saw, so
//! the safer reading is implemented.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::{
    Address, HeaderValueOption, SocketAddress, address, header_value_option, socket_address,
};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
    attribute_context, check_response,
};
use envoy_types::pb::google::protobuf::Timestamp;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::request::Parts;
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use ir::{AuthProtocol, Backend, ExternalAuth};

use crate::body::{self, Buffered, ProxyBody};
use crate::error::ProxyError;
use crate::filters;
use crate::forward::{UpstreamBody, Upstreams};

/// Largest approval body read (and thrown away) so that its connection can be pooled again.
const APPROVAL_BODY_LIMIT: usize = 64 * 1024;

/// What the service decided.
pub(crate) enum Decision {
    /// Go on, with these changes.
    Allow(Approval),
    /// The client gets this answer instead.
    Deny(Response<ProxyBody>),
}

/// The header changes an approval asks for.
#[derive(Default)]
pub(crate) struct Approval {
    request: Vec<(Edit, HeaderName, HeaderValue)>,
    remove: Vec<HeaderName>,
    response: Vec<(Edit, HeaderName, HeaderValue)>,
}

/// How one header of an approval is applied (ext_authz's `HeaderAppendAction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Edit {
    /// Add a value after the existing ones.
    Append,
    /// Add only when the header is absent.
    AddIfAbsent,
    /// Replace the existing values, or add.
    Set,
    /// Replace the existing values; add nothing when absent.
    OverwriteIfExists,
}

/// The request as the filter sees it.
pub(crate) struct Asked<'a> {
    /// Method, target, headers.
    pub parts: &'a Parts,
    /// The request's host, as routed.
    pub host: &'a str,
    /// The client's address.
    pub client: SocketAddr,
    /// The address that accepted the connection.
    pub local: SocketAddr,
    /// Whether the client connected over TLS.
    pub tls: bool,
}

/// Asks `auth`'s service about the request. Returns the decision and the body to forward
/// (the same bytes, replayed, when part of it was sent to the service).
pub(crate) async fn authorize(
    upstreams: &Upstreams,
    timeout: Duration,
    auth: &ExternalAuth,
    asked: Asked<'_>,
    body: ProxyBody,
) -> Result<(Decision, ProxyBody), ProxyError> {
    let (sent, body) = take_body(auth.forward_body, body).await?;
    let unavailable = |reason: String| ProxyError::AuthUnavailable {
        service: auth.backend.name.to_string(),
        reason,
    };
    let endpoint = upstreams
        .endpoint(&auth.backend)
        .map_err(|error| unavailable(error.to_string()))?;
    let ask = async {
        match &auth.protocol {
            AuthProtocol::Http {
                path_prefix,
                allowed_headers,
                allowed_response_headers,
            } => {
                let request = http_request(&asked, path_prefix, allowed_headers, sent)?;
                let response = upstreams
                    .send(&auth.backend, None, endpoint, request)
                    .await
                    .map_err(|error| error.to_string())?;
                Ok(http_decision(response, allowed_response_headers).await)
            }
            AuthProtocol::Grpc { allowed_headers } => {
                let channel = Channel {
                    upstreams: upstreams.clone(),
                    backend: Arc::clone(&auth.backend),
                    endpoint,
                };
                let request = check_request(&asked, allowed_headers, sent);
                let response = AuthorizationClient::new(channel)
                    .check(request)
                    .await
                    .map_err(|status| format!("Check failed: {status}"))?;
                grpc_decision(response.into_inner())
            }
        }
    };
    let decision = tokio::time::timeout(timeout, ask)
        .await
        .map_err(|_| unavailable(format!("no answer within {timeout:?}")))?
        .map_err(unavailable)?;
    Ok((decision, body))
}

/// Reads up to `limit` bytes of the body for the service; a larger body is refused.
async fn take_body(limit: usize, body: ProxyBody) -> Result<(Bytes, ProxyBody), ProxyError> {
    if limit == 0 {
        return Ok((Bytes::new(), body));
    }
    match body::buffer_bounded(body, limit)
        .await
        .map_err(ProxyError::RequestBody)?
    {
        Buffered::Complete { data, trailers } => Ok((data.clone(), body::replay(data, trailers))),
        Buffered::TooLarge(_) => Err(ProxyError::AuthBodyTooLarge { limit }),
    }
}

// === HTTP ===

/// The request to an HTTP authorization service. The spec: "Host, Method, Path,
/// Content-Length, Authorization" always go, plus `allowedHeaders`; Content-Length is that of
/// what is sent.
fn http_request(
    asked: &Asked<'_>,
    path_prefix: &str,
    allowed: &[HeaderName],
    sent: Bytes,
) -> Result<Request<ProxyBody>, String> {
    let target = asked.parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = format!("{path_prefix}{target}")
        .parse()
        .map_err(|_| format!("{path_prefix}{target} is not a valid request target"))?;
    let length = sent.len();
    let mut request = Request::new(body::full(sent));
    *request.method_mut() = asked.parts.method.clone();
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    if let Ok(host) = HeaderValue::from_str(asked.host) {
        headers.insert(header::HOST, host);
    }
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    for name in std::iter::once(&header::AUTHORIZATION).chain(allowed) {
        if *name == header::HOST || *name == header::CONTENT_LENGTH {
            continue;
        }
        for value in asked.parts.headers.get_all(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    Ok(request)
}

/// A 200 approves, copying the allowed response headers (every header but Host and the
/// framing and hop-by-hop ones when none are listed); any other answer goes to the client.
async fn http_decision(response: Response<UpstreamBody>, allowed: &[HeaderName]) -> Decision {
    let (mut parts, body) = response.into_parts();
    if parts.status != StatusCode::OK {
        filters::remove_hop_by_hop(&mut parts.headers);
        parts.version = Version::HTTP_11;
        return Decision::Deny(Response::from_parts(parts, body::boxed(body)));
    }
    // Read the answer to the end (within reason) so the connection goes back to its pool.
    let _ = body::buffer_bounded(body::boxed(body), APPROVAL_BODY_LIMIT).await;
    filters::remove_hop_by_hop(&mut parts.headers);
    let mut approval = Approval::default();
    for (name, value) in &parts.headers {
        let copied = if allowed.is_empty() {
            !matches!(
                *name,
                header::HOST | header::CONTENT_LENGTH | header::CONTENT_TYPE | header::DATE
            )
        } else {
            allowed.contains(name)
        };
        if copied {
            approval
                .request
                .push((Edit::Set, name.clone(), value.clone()));
        }
    }
    Decision::Allow(approval)
}

// === gRPC ===

/// The ext_authz `CheckRequest` for a request, as Envoy fills it: peers, time, and the HTTP
/// request with its headers (pseudo-headers included, values of repeated headers joined
/// with a comma) and the forwarded body.
fn check_request(asked: &Asked<'_>, allowed: &[HeaderName], sent: Bytes) -> CheckRequest {
    let parts = asked.parts;
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut headers = std::collections::HashMap::new();
    headers.insert(":authority".to_string(), asked.host.to_string());
    headers.insert(":method".to_string(), parts.method.to_string());
    headers.insert(":path".to_string(), path.to_string());
    for name in parts.headers.keys() {
        if !allowed.is_empty() && !allowed.contains(name) {
            continue;
        }
        let joined = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join(",");
        headers.insert(name.as_str().to_string(), joined);
    }
    let size = i64::try_from(sent.len()).unwrap_or(i64::MAX);
    let http = attribute_context::HttpRequest {
        id: format!("{:016x}", rand::random::<u64>()),
        method: parts.method.to_string(),
        headers,
        path: path.to_string(),
        host: asked.host.to_string(),
        scheme: if asked.tls { "https" } else { "http" }.to_string(),
        protocol: match parts.version {
            Version::HTTP_2 => "HTTP/2",
            Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        }
        .to_string(),
        size: if sent.is_empty() { -1 } else { size },
        body: String::from_utf8(sent.to_vec()).unwrap_or_default(),
        raw_body: sent.to_vec(),
        ..Default::default()
    };
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(peer(asked.client)),
            destination: Some(peer(asked.local)),
            request: Some(attribute_context::Request {
                time: Some(Timestamp {
                    seconds: i64::try_from(now.as_secs()).unwrap_or(i64::MAX),
                    nanos: i32::try_from(now.subsec_nanos()).unwrap_or(0),
                }),
                http: Some(http),
            }),
            ..Default::default()
        }),
    }
}

fn peer(addr: SocketAddr) -> attribute_context::Peer {
    attribute_context::Peer {
        address: Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: addr.ip().to_string(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(
                    addr.port(),
                ))),
                ..Default::default()
            })),
        }),
        ..Default::default()
    }
}

/// `status.code` 0 (OK) approves, with the `ok_response` changes; anything else denies with
/// the `denied_response` (403 when it names no status).
fn grpc_decision(response: CheckResponse) -> Result<Decision, String> {
    let code = response.status.as_ref().map_or(0, |s| s.code);
    if code == 0 {
        let approval = match response.http_response {
            Some(check_response::HttpResponse::OkResponse(ok)) => approval(ok)?,
            _ => Approval::default(),
        };
        return Ok(Decision::Allow(approval));
    }
    let denied = match response.http_response {
        Some(
            check_response::HttpResponse::DeniedResponse(denied)
            | check_response::HttpResponse::ErrorResponse(denied),
        ) => denied,
        _ => DeniedHttpResponse::default(),
    };
    Ok(Decision::Deny(denied_response(denied)?))
}

fn approval(ok: OkHttpResponse) -> Result<Approval, String> {
    let mut approval = Approval::default();
    for option in &ok.headers {
        approval.request.push(header_edit(option)?);
    }
    for option in &ok.response_headers_to_add {
        approval.response.push(header_edit(option)?);
    }
    for name in &ok.headers_to_remove {
        let name = HeaderName::try_from(name.as_str())
            .map_err(|_| format!("headers_to_remove: {name:?} is not a header name"))?;
        approval.remove.push(name);
    }
    Ok(approval)
}

fn denied_response(denied: DeniedHttpResponse) -> Result<Response<ProxyBody>, String> {
    let status = denied
        .status
        .and_then(|s| u16::try_from(s.code).ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .filter(|status| status.as_u16() >= 200)
        .unwrap_or(StatusCode::FORBIDDEN);
    let mut response = Response::new(body::full(denied.body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    for option in &denied.headers {
        let edit = header_edit(option)?;
        apply(headers, std::slice::from_ref(&edit));
    }
    Ok(response)
}

/// One `HeaderValueOption`. The deprecated `append` wins when set, as in Envoy.
fn header_edit(option: &HeaderValueOption) -> Result<(Edit, HeaderName, HeaderValue), String> {
    let header = option
        .header
        .as_ref()
        .ok_or("a header option without header")?;
    let name = HeaderName::try_from(header.key.as_str())
        .map_err(|_| format!("{:?} is not a header name", header.key))?;
    let raw = if header.value.is_empty() {
        Bytes::from(header.raw_value.clone())
    } else {
        Bytes::from(header.value.clone())
    };
    let value = HeaderValue::from_maybe_shared(raw)
        .map_err(|_| format!("header {name}: the value is not a valid header value"))?;
    #[allow(deprecated)]
    let edit = match option.append.as_ref().map(|b| b.value) {
        Some(true) => Edit::Append,
        Some(false) => Edit::Set,
        None => match header_value_option::HeaderAppendAction::try_from(option.append_action) {
            Ok(header_value_option::HeaderAppendAction::AddIfAbsent) => Edit::AddIfAbsent,
            Ok(header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd) => Edit::Set,
            Ok(header_value_option::HeaderAppendAction::OverwriteIfExists) => {
                Edit::OverwriteIfExists
            }
            _ => Edit::Append,
        },
    };
    Ok((edit, name, value))
}

fn apply(headers: &mut HeaderMap, edits: &[(Edit, HeaderName, HeaderValue)]) {
    for (edit, name, value) in edits {
        match edit {
            Edit::Append => {
                headers.append(name.clone(), value.clone());
            }
            Edit::AddIfAbsent => {
                if !headers.contains_key(name) {
                    headers.insert(name.clone(), value.clone());
                }
            }
            Edit::Set => {
                headers.insert(name.clone(), value.clone());
            }
            Edit::OverwriteIfExists => {
                if headers.contains_key(name) {
                    headers.insert(name.clone(), value.clone());
                }
            }
        }
    }
}

// === impl Approval ===

impl Approval {
    /// Applies the request changes (removals first, then edits).
    pub(crate) fn apply_to_request(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        apply(headers, &self.request);
    }

    /// Applies the changes to the client's response.
    pub(crate) fn apply_to_response(&self, headers: &mut HeaderMap) {
        apply(headers, &self.response);
    }
}

// === Channel ===

/// tonic's view of one authorization endpoint: requests go through the upstream pools.
#[derive(Clone)]
struct Channel {
    upstreams: Upstreams,
    backend: Arc<Backend>,
    endpoint: SocketAddr,
}

impl tower_service::Service<Request<tonic::body::Body>> for Channel {
    type Response = Response<UpstreamBody>;
    type Error = ProxyError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<UpstreamBody>, ProxyError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<tonic::body::Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let request = request.map(|b| b.map_err(Into::into).boxed_unsync());
            this.upstreams
                .send(&this.backend, None, this.endpoint, request)
                .await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::HeaderValue as ProtoHeader;
    use envoy_types::pb::google::rpc::Status;

    fn option(key: &str, value: &str, action: i32) -> HeaderValueOption {
        HeaderValueOption {
            header: Some(ProtoHeader {
                key: key.into(),
                value: value.into(),
                raw_value: Vec::new(),
            }),
            append_action: action,
            ..Default::default()
        }
    }

    #[test]
    fn ok_response_edits_apply_in_envoys_terms() {
        let ok = OkHttpResponse {
            headers: vec![
                option("x-user", "alice", 2),
                option("x-tag", "b", 0),
                option("x-absent", "no", 3),
                option("x-kept", "new", 1),
            ],
            headers_to_remove: vec!["x-secret".into()],
            response_headers_to_add: vec![option("x-auth", "checked", 0)],
            ..Default::default()
        };
        let response = CheckResponse {
            status: Some(Status::default()),
            http_response: Some(check_response::HttpResponse::OkResponse(ok)),
            ..Default::default()
        };
        let Ok(Decision::Allow(approval)) = grpc_decision(response) else {
            panic!("an OK status approves");
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-user", HeaderValue::from_static("mallory"));
        headers.insert("x-tag", HeaderValue::from_static("a"));
        headers.insert("x-kept", HeaderValue::from_static("old"));
        headers.insert("x-secret", HeaderValue::from_static("s"));
        approval.apply_to_request(&mut headers);
        assert_eq!(headers["x-user"], "alice");
        let tags: Vec<_> = headers.get_all("x-tag").iter().collect();
        assert_eq!(tags, ["a", "b"]);
        assert!(!headers.contains_key("x-absent"));
        assert_eq!(headers["x-kept"], "old");
        assert!(!headers.contains_key("x-secret"));
        let mut response = HeaderMap::new();
        approval.apply_to_response(&mut response);
        assert_eq!(response["x-auth"], "checked");
    }

    #[test]
    fn denial_carries_the_services_status_headers_and_body() {
        let denied = DeniedHttpResponse {
            status: Some(envoy_types::pb::envoy::r#type::v3::HttpStatus { code: 401 }),
            headers: vec![option("www-authenticate", "Bearer", 2)],
            body: "go away".into(),
        };
        let response = CheckResponse {
            status: Some(Status {
                code: 7,
                ..Default::default()
            }),
            http_response: Some(check_response::HttpResponse::DeniedResponse(denied)),
            ..Default::default()
        };
        let Ok(Decision::Deny(response)) = grpc_decision(response) else {
            panic!("a non-OK status denies");
        };
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
    }

    #[test]
    fn denial_without_details_is_403() {
        let response = CheckResponse {
            status: Some(Status {
                code: 16,
                ..Default::default()
            }),
            ..Default::default()
        };
        let Ok(Decision::Deny(response)) = grpc_decision(response) else {
            panic!("a non-OK status denies");
        };
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
    }
}
