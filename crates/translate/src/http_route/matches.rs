//! HTTPRouteMatch to `ir::HttpMatch`.

use http::{HeaderName, Method};
use ir::{HeaderMatch, HttpMatch, PathMatch, QueryMatch, StringMatch};
use model::gw::httproutes::{
    HttpRouteRulesMatches, HttpRouteRulesMatchesHeadersType as HeaderType,
    HttpRouteRulesMatchesMethod as GwMethod, HttpRouteRulesMatchesPathType as PathType,
    HttpRouteRulesMatchesQueryParamsType as QueryType,
};
use regex::Regex;

/// Compiles a rule's matches; no matches means "PathPrefix /". An error names the value
/// that cannot be compiled (an invalid regular expression), which makes the rule invalid.
pub(crate) fn compile(matches: &[HttpRouteRulesMatches]) -> Result<Vec<HttpMatch>, String> {
    if matches.is_empty() {
        return Ok(vec![HttpMatch::default()]);
    }
    matches.iter().map(compile_one).collect()
}

fn compile_one(spec: &HttpRouteRulesMatches) -> Result<HttpMatch, String> {
    let path = match &spec.path {
        None => PathMatch::default(),
        Some(path) => {
            let value = path.value.as_deref().unwrap_or("/");
            match path.r#type.clone().unwrap_or(PathType::PathPrefix) {
                PathType::Exact => PathMatch::Exact(value.to_string()),
                PathType::PathPrefix => PathMatch::prefix(value),
                PathType::RegularExpression => PathMatch::Regex(anchored(value)?),
            }
        }
    };
    // "If multiple entries specify equivalent header names, only the first entry with an
    // equivalent name MUST be considered."
    let mut headers: Vec<HeaderMatch> = Vec::new();
    for header in spec.headers.iter().flatten() {
        let name = HeaderName::from_bytes(header.name.as_bytes())
            .map_err(|_| format!("invalid header name {:?}", header.name))?;
        if headers.iter().any(|h| h.name == name) {
            continue;
        }
        let value = match header.r#type.clone().unwrap_or(HeaderType::Exact) {
            HeaderType::Exact => StringMatch::Exact(header.value.clone()),
            HeaderType::RegularExpression => StringMatch::Regex(anchored(&header.value)?),
        };
        headers.push(HeaderMatch { name, value });
    }
    let mut query_params: Vec<QueryMatch> = Vec::new();
    for query in spec.query_params.iter().flatten() {
        if query_params.iter().any(|q| q.name == query.name) {
            continue;
        }
        let value = match query.r#type.clone().unwrap_or(QueryType::Exact) {
            QueryType::Exact => StringMatch::Exact(query.value.clone()),
            QueryType::RegularExpression => StringMatch::Regex(anchored(&query.value)?),
        };
        query_params.push(QueryMatch {
            name: query.name.clone(),
            value,
        });
    }
    Ok(HttpMatch {
        path,
        method: spec.method.as_ref().map(method),
        headers,
        query_params,
    })
}

/// Regular expressions match the whole value, as in Envoy and the conformance tests.
fn anchored(pattern: &str) -> Result<Regex, String> {
    Regex::new(&format!("^(?:{pattern})$"))
        .map_err(|error| format!("invalid regular expression {pattern:?}: {error}"))
}

fn method(method: &GwMethod) -> Method {
    match method {
        GwMethod::Get => Method::GET,
        GwMethod::Head => Method::HEAD,
        GwMethod::Post => Method::POST,
        GwMethod::Put => Method::PUT,
        GwMethod::Delete => Method::DELETE,
        GwMethod::Connect => Method::CONNECT,
        GwMethod::Options => Method::OPTIONS,
        GwMethod::Trace => Method::TRACE,
        GwMethod::Patch => Method::PATCH,
    }
}
