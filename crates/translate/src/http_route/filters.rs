//! HTTPRoute filters and backendRefs to IR.
//!
//! Rule-level and backendRef-level filters have distinct generated Rust types of the same
//! shape; both are read through one small local view (via their JSON form), so each filter
//! is compiled by one piece of code.

use http::{HeaderName, HeaderValue};
use std::sync::Arc;

use ir::{
    AuthProtocol, Backend, BackendProtocol, BackendTarget, Cors, CorsList, ExternalAuth,
    HeaderModifier, InvalidBackend, InvalidCorsValue, Mirror, OriginPattern, PathModifier,
    Redirect, RedirectScheme, RequestFilters, UrlRewrite, WeightedBackend,
};
use model::Snapshot;
use model::gw::httproutes::HttpRouteRulesBackendRefs;
use serde::Deserialize;
use serde::Serialize;

use super::RuleProblems;
use crate::backends::{BackendRef, Referrer, Resolver};

/// Rule filters plus the redirect, if any. `Err` means the rule cannot be served (an
/// unsupported filter): the spec requires such rules to answer 500.
pub(crate) fn rule_filters<F: Serialize>(
    snapshot: &Snapshot,
    resolver: &mut Resolver,
    referrer: Referrer<'_>,
    filters: &[F],
    problems: &mut RuleProblems,
) -> Result<(RequestFilters, Option<Redirect>), String> {
    let mut out = RequestFilters::default();
    let mut redirect = None;
    for filter in filters {
        let spec = view(filter)?;
        match spec.kind.as_str() {
            "RequestHeaderModifier" => {
                out.request_headers = spec
                    .request_header_modifier
                    .map(header_modifier)
                    .transpose()?
                    .map(Box::new)
            }
            "ResponseHeaderModifier" => {
                out.response_headers = spec
                    .response_header_modifier
                    .map(header_modifier)
                    .transpose()?
                    .map(Box::new)
            }
            "RequestRedirect" => redirect = spec.request_redirect.map(redirect_filter),
            "URLRewrite" => {
                out.rewrite = spec.url_rewrite.map(|r| {
                    Box::new(UrlRewrite {
                        hostname: r.hostname,
                        path: r.path.and_then(path_modifier),
                    })
                });
            }
            "RequestMirror" => {
                let Some(mirror) = spec.request_mirror else {
                    continue;
                };
                let reference = mirror.backend_ref.as_ref();
                match resolver.resolve(snapshot, referrer, &reference) {
                    Ok(backend) => {
                        let (numerator, denominator) = match (mirror.percent, mirror.fraction) {
                            (Some(percent), _) => (percent, 100),
                            (None, Some(f)) => (f.numerator, f.denominator.unwrap_or(100)),
                            (None, None) => (1, 1),
                        };
                        out.mirrors.push(Mirror {
                            backend,
                            numerator: u32::try_from(numerator).unwrap_or(0),
                            denominator: u32::try_from(denominator).unwrap_or(1).max(1),
                        });
                    }
                    Err((reason, message)) => problems.unresolved(reason, message),
                }
            }
            "ExternalAuth" => {
                let Some(auth) = spec.external_auth else {
                    continue;
                };
                if out.external_auth.is_some() {
                    let message = "only one ExternalAuth filter per rule is supported".to_string();
                    problems.unsupported(message.clone());
                    return Err(message);
                }
                let reference = auth.backend_ref.as_ref();
                match resolver.resolve(snapshot, referrer, &reference) {
                    Ok(backend) => match external_auth(auth, backend) {
                        Ok(auth) => out.external_auth = Some(Arc::new(auth)),
                        Err(message) => {
                            let message = format!("ExternalAuth filter: {message}");
                            problems.unsupported(message.clone());
                            return Err(message);
                        }
                    },
                    // The filter "MUST fail closed": without its service, the rule cannot
                    // be served at all.
                    Err((reason, message)) => {
                        problems.unresolved(reason, message.clone());
                        return Err(format!("ExternalAuth filter: {message}"));
                    }
                }
            }
            "CORS" => {
                let Some(cors) = spec.cors else { continue };
                match cors_filter(cors) {
                    Ok(cors) => out.cors = Some(Box::new(cors)),
                    Err(error) => {
                        let message = format!("CORS filter: {error}");
                        problems.unsupported(message.clone());
                        return Err(message);
                    }
                }
            }
            other => {
                let message = format!("filter type {other} is not supported yet");
                problems.unsupported(message.clone());
                return Err(message);
            }
        }
    }
    Ok((out, redirect))
}

/// Resolves a rule's backendRefs with their weights and own filters.
pub(crate) fn backends(
    snapshot: &Snapshot,
    resolver: &mut Resolver,
    referrer: Referrer<'_>,
    refs: &[HttpRouteRulesBackendRefs],
    problems: &mut RuleProblems,
) -> Vec<WeightedBackend> {
    refs.iter()
        .map(|spec| {
            let reference = BackendRef {
                group: spec.group.as_deref(),
                kind: spec.kind.as_deref(),
                name: &spec.name,
                namespace: spec.namespace.as_deref(),
                port: spec.port,
            };
            // Only an invalid backendRef needs its description.
            let described = || {
                format!(
                    "{}/{}:{}",
                    spec.namespace.as_deref().unwrap_or(referrer.namespace),
                    spec.name,
                    spec.port.unwrap_or_default()
                )
            };
            let target = match resolver.target(snapshot, referrer, &reference) {
                Ok(target) => target,
                Err((reason, message)) => {
                    problems.unresolved(reason, message);
                    BackendTarget::Invalid(InvalidBackend {
                        reference: described(),
                        reason: format!("{reason:?}"),
                    })
                }
            };
            let mut weighted = WeightedBackend {
                weight: u32::try_from(spec.weight.unwrap_or(1)).unwrap_or(0),
                target,
                request_headers: None,
                response_headers: None,
            };
            for filter in spec.filters.iter().flatten() {
                let compiled = view(filter).and_then(|view| match view.kind.as_str() {
                    "RequestHeaderModifier" => {
                        weighted.request_headers = view
                            .request_header_modifier
                            .map(header_modifier)
                            .transpose()?
                            .map(Box::new);
                        Ok(())
                    }
                    "ResponseHeaderModifier" => {
                        weighted.response_headers = view
                            .response_header_modifier
                            .map(header_modifier)
                            .transpose()?
                            .map(Box::new);
                        Ok(())
                    }
                    other => Err(format!(
                        "backendRef filter type {other} is not supported yet"
                    )),
                });
                if let Err(message) = compiled {
                    problems.unsupported(message.clone());
                    weighted.target = BackendTarget::Invalid(InvalidBackend {
                        reference: described(),
                        reason: message,
                    });
                }
            }
            weighted
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FilterView {
    #[serde(rename = "type")]
    kind: String,
    request_header_modifier: Option<HeaderModifierView>,
    response_header_modifier: Option<HeaderModifierView>,
    request_redirect: Option<RedirectView>,
    url_rewrite: Option<RewriteView>,
    request_mirror: Option<MirrorView>,
    cors: Option<CorsView>,
    external_auth: Option<ExternalAuthView>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExternalAuthView {
    backend_ref: RefView,
    protocol: String,
    forward_body: Option<ForwardBodyView>,
    grpc: Option<AuthHeadersView>,
    http: Option<AuthHeadersView>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ForwardBodyView {
    max_size: Option<i64>,
}

/// `grpc` and `http` of ExternalAuth (`grpc` only has `allowedHeaders`).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuthHeadersView {
    allowed_headers: Option<Vec<String>>,
    allowed_response_headers: Option<Vec<String>>,
    path: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CorsView {
    allow_origins: Option<Vec<String>>,
    allow_methods: Option<Vec<String>>,
    allow_headers: Option<Vec<String>>,
    expose_headers: Option<Vec<String>>,
    max_age: Option<i32>,
    allow_credentials: Option<bool>,
}

#[derive(Deserialize)]
struct HeaderModifierView {
    set: Option<Vec<NameValue>>,
    add: Option<Vec<NameValue>>,
    remove: Option<Vec<String>>,
}

#[derive(Deserialize)]
struct NameValue {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RedirectView {
    scheme: Option<String>,
    hostname: Option<String>,
    path: Option<PathModifierView>,
    port: Option<i32>,
    status_code: Option<u16>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PathModifierView {
    #[serde(rename = "type")]
    kind: String,
    replace_full_path: Option<String>,
    replace_prefix_match: Option<String>,
}

#[derive(Deserialize)]
struct RewriteView {
    hostname: Option<String>,
    path: Option<PathModifierView>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MirrorView {
    backend_ref: RefView,
    percent: Option<i32>,
    fraction: Option<FractionView>,
}

#[derive(Deserialize)]
struct RefView {
    group: Option<String>,
    kind: Option<String>,
    name: String,
    namespace: Option<String>,
    port: Option<i32>,
}

#[derive(Deserialize)]
struct FractionView {
    numerator: i32,
    denominator: Option<i32>,
}

impl RefView {
    fn as_ref(&self) -> BackendRef<'_> {
        BackendRef {
            group: self.group.as_deref(),
            kind: self.kind.as_deref(),
            name: &self.name,
            namespace: self.namespace.as_deref(),
            port: self.port,
        }
    }
}

/// Compiles an ExternalAuth filter whose service resolved to `backend`.
fn external_auth(view: ExternalAuthView, backend: Arc<Backend>) -> Result<ExternalAuth, String> {
    let names = |list: Option<Vec<String>>| -> Result<Vec<HeaderName>, String> {
        list.into_iter()
            .flatten()
            .map(|name| {
                HeaderName::try_from(name.as_str())
                    .map_err(|_| format!("{name:?} is not a valid header name"))
            })
            .collect()
    };
    let forward_body = view
        .forward_body
        .and_then(|f| f.max_size)
        .map_or(Ok(0), usize::try_from)
        .map_err(|_| "forwardBody.maxSize must not be negative".to_string())?;
    let protocol = match view.protocol.as_str() {
        "HTTP" => {
            let http = view.http.unwrap_or(AuthHeadersView {
                allowed_headers: None,
                allowed_response_headers: None,
                path: None,
            });
            let path_prefix = http.path.unwrap_or_default();
            if !path_prefix.is_empty() && !path_prefix.starts_with('/') {
                return Err(format!("http.path {path_prefix:?} must start with '/'"));
            }
            if path_prefix.contains(['?', '#']) || path_prefix.contains("/../") {
                return Err(format!("http.path {path_prefix:?} is not a plain path"));
            }
            AuthProtocol::Http {
                path_prefix: path_prefix.trim_end_matches('/').to_string(),
                allowed_headers: names(http.allowed_headers)?,
                allowed_response_headers: names(http.allowed_response_headers)?,
            }
        }
        "GRPC" => AuthProtocol::Grpc {
            allowed_headers: names(view.grpc.and_then(|g| g.allowed_headers))?,
        },
        other => return Err(format!("protocol {other:?} is not one of HTTP, GRPC")),
    };
    let backend = match protocol {
        // The ext_authz service speaks gRPC, which needs HTTP/2 whatever the Service says.
        AuthProtocol::Grpc { .. } if backend.protocol != BackendProtocol::H2c => {
            let mut h2 = Backend::clone(&backend);
            h2.protocol = BackendProtocol::H2c;
            Arc::new(h2)
        }
        _ => backend,
    };
    Ok(ExternalAuth {
        backend,
        protocol,
        forward_body,
    })
}

fn view<F: Serialize>(filter: &F) -> Result<FilterView, String> {
    serde_json::to_value(filter)
        .and_then(serde_json::from_value)
        .map_err(|error| format!("filter cannot be read: {error}"))
}

fn header_modifier(view: HeaderModifierView) -> Result<HeaderModifier, String> {
    let pairs = |list: Option<Vec<NameValue>>| -> Result<Vec<(HeaderName, HeaderValue)>, String> {
        list.into_iter()
            .flatten()
            .map(|nv| {
                let name = HeaderName::from_bytes(nv.name.as_bytes())
                    .map_err(|_| format!("invalid header name {:?}", nv.name))?;
                let value = HeaderValue::from_str(&nv.value)
                    .map_err(|_| format!("invalid header value for {}", nv.name))?;
                Ok((name, value))
            })
            .collect()
    };
    let remove = view
        .remove
        .into_iter()
        .flatten()
        .map(|name| {
            HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("invalid header name {name:?}"))
        })
        .collect::<Result<_, _>>()?;
    Ok(HeaderModifier {
        set: pairs(view.set)?,
        add: pairs(view.add)?,
        remove,
    })
}

/// `CORS`: origins and lists compiled once. "When the `MaxAge` field is unspecified, the
/// gateway sets the response header `Access-Control-Max-Age: 5` by default"; a negative value
/// cannot pass the CRD and gets the same default rather than wrapping.
const DEFAULT_MAX_AGE: u32 = 5;

fn cors_filter(view: CorsView) -> Result<Cors, InvalidCorsValue> {
    let list = |names: Option<Vec<String>>| CorsList::new(&names.unwrap_or_default());
    Ok(Cors {
        allow_origins: view
            .allow_origins
            .iter()
            .flatten()
            .map(|origin| OriginPattern::parse(origin))
            .collect::<Result<_, _>>()?,
        allow_methods: list(view.allow_methods)?,
        allow_headers: list(view.allow_headers)?,
        expose_headers: list(view.expose_headers)?,
        max_age: view
            .max_age
            .and_then(|seconds| u32::try_from(seconds).ok())
            .unwrap_or(DEFAULT_MAX_AGE),
        allow_credentials: view.allow_credentials.unwrap_or(false),
    })
}

fn redirect_filter(view: RedirectView) -> Redirect {
    Redirect {
        scheme: view.scheme.as_deref().map(|s| {
            if s == "https" {
                RedirectScheme::Https
            } else {
                RedirectScheme::Http
            }
        }),
        hostname: view.hostname,
        path: view.path.and_then(path_modifier),
        port: view.port.and_then(|p| u16::try_from(p).ok()),
        status: view.status_code.unwrap_or(302),
    }
}

fn path_modifier(view: PathModifierView) -> Option<PathModifier> {
    match view.kind.as_str() {
        "ReplaceFullPath" => view.replace_full_path.map(PathModifier::Full),
        "ReplacePrefixMatch" => view.replace_prefix_match.map(PathModifier::PrefixMatch),
        _ => None,
    }
}
