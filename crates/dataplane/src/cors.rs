//! The HTTPRoute `CORS` filter: preflights answered by the gateway, actual responses decorated.
//!
//! A preflight is an `OPTIONS` request with `Origin` and `Access-Control-Request-Method`
//! (<https://fetch.spec.whatwg.org/#cors-preflight-request>). On a rule with the filter it never
//! reaches the backend: the gateway answers `204 No Content`. The field docs allow either 204/200
//! without CORS headers or 403 for a refused preflight; we send 204 without them, the first
//! option, which is also what lets the browser report the failure in its own terms.
//!
//! Every `Access-Control-Allow-*` value that could be `*` is instead the request's own value
//! (the origin, the requested method, the requested headers). The field docs allow this
//! without credentials and require it with them, and the conformance cases accept it for every
//! route, so one rule covers both. `Vary: Origin` goes on every answer that echoes the origin,
//! so caches keep one copy per origin.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use ir::CorsList;

use crate::body::{self, ProxyBody};

/// What the filter does with one request.
pub(crate) enum Inspection {
    /// A preflight: answer it with this instead of forwarding.
    Preflight(Response<ProxyBody>),
    /// Forward the request; decorate its response when there is a [`Decoration`].
    Forward(Option<Decoration>),
}

/// The CORS headers an actual response gets: the origin was allowed.
pub(crate) struct Decoration {
    origin: HeaderValue,
    allow_credentials: bool,
    expose_headers: CorsList,
}

/// Looks at a request on a rule whose filters are `cors`.
pub(crate) fn inspect<B>(cors: Option<&ir::Cors>, request: &Request<B>) -> Inspection {
    let Some(cors) = cors else {
        return Inspection::Forward(None);
    };
    let headers = request.headers();
    let origin = headers.get(header::ORIGIN);
    let requested_method = headers.get(header::ACCESS_CONTROL_REQUEST_METHOD);
    match (origin, requested_method) {
        (Some(origin), Some(method)) if request.method() == Method::OPTIONS => {
            Inspection::Preflight(preflight(cors, origin, method, headers))
        }
        (Some(origin), _) if allows_origin(cors, origin) => Inspection::Forward(Some(Decoration {
            origin: origin.clone(),
            allow_credentials: cors.allow_credentials,
            expose_headers: cors.expose_headers.clone(),
        })),
        _ => Inspection::Forward(None),
    }
}

// === impl Decoration ===

impl Decoration {
    /// Adds the CORS headers to an actual response, replacing any the backend sent.
    pub(crate) fn apply(self, response: &mut HeaderMap) {
        response.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, self.origin);
        if self.allow_credentials {
            response.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        let expose = match &self.expose_headers {
            CorsList::Unset => None,
            CorsList::Listed { value, .. } => Some(value.clone()),
            // "The `Access-Control-Expose-Headers` response header can only use `*` wildcard
            // as value when the request is not credentialed": with credentials, name the
            // headers this response actually has.
            CorsList::Any if self.allow_credentials => response_header_names(response),
            CorsList::Any => Some(HeaderValue::from_static("*")),
        };
        if let Some(expose) = expose {
            response.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, expose);
        }
        vary_on_origin(response);
    }
}

/// The answer to a preflight. Without an allowed origin and method it carries no CORS
/// headers, so the browser refuses the actual request.
fn preflight(
    cors: &ir::Cors,
    origin: &HeaderValue,
    requested_method: &HeaderValue,
    request: &HeaderMap,
) -> Response<ProxyBody> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let method = requested_method.to_str().unwrap_or_default();
    if !allows_origin(cors, origin) || !cors.allows_method(method) {
        return response;
    }
    let headers = response.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if cors.allow_credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    // `*` becomes the requested method: "the gateway must specify one HTTP method ... the same
    // as the `Access-Control-Request-Method` header provided by the client".
    let methods = listed_or(&cors.allow_methods, Some(requested_method));
    insert(headers, header::ACCESS_CONTROL_ALLOW_METHODS, methods);
    // `*` becomes the requested headers; "If the header `Access-Control-Request-Headers` is
    // not included in the request, the gateway will omit the `Access-Control-Allow-Headers`
    // response header".
    let requested_headers = request.get(header::ACCESS_CONTROL_REQUEST_HEADERS);
    let allowed_headers = listed_or(&cors.allow_headers, requested_headers);
    insert(
        headers,
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        allowed_headers,
    );
    // Preflight answers have no response headers of interest to expose, so `*` is only sent
    // when it is allowed as such (without credentials).
    let expose = match &cors.expose_headers {
        CorsList::Any if !cors.allow_credentials => Some(HeaderValue::from_static("*")),
        other => listed_or(other, None),
    };
    insert(headers, header::ACCESS_CONTROL_EXPOSE_HEADERS, expose);
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from(cors.max_age),
    );
    vary_on_origin(headers);
    response
}

fn allows_origin(cors: &ir::Cors, origin: &HeaderValue) -> bool {
    origin
        .to_str()
        .is_ok_and(|origin| cors.allows_origin(origin))
}

/// The configured list's value; for `*`, `echoed` (the request's own value).
fn listed_or(list: &CorsList, echoed: Option<&HeaderValue>) -> Option<HeaderValue> {
    match list {
        CorsList::Unset => None,
        CorsList::Listed { value, .. } => Some(value.clone()),
        CorsList::Any => echoed.cloned(),
    }
}

fn insert(headers: &mut HeaderMap, name: HeaderName, value: Option<HeaderValue>) {
    if let Some(value) = value {
        headers.insert(name, value);
    }
}

/// The response's header names, comma-separated, for a credentialed `exposeHeaders: ["*"]`.
fn response_header_names(response: &HeaderMap) -> Option<HeaderValue> {
    let names: Vec<&str> = response.keys().map(HeaderName::as_str).collect();
    if names.is_empty() {
        return None;
    }
    HeaderValue::from_str(&names.join(", ")).ok()
}

/// Appends `Origin` to `Vary` unless it (or `*`) is already there.
fn vary_on_origin(headers: &mut HeaderMap) {
    let present = headers.get_all(header::VARY).iter().any(|value| {
        value.to_str().is_ok_and(|value| {
            value
                .split(',')
                .map(str::trim)
                .any(|token| token == "*" || token.eq_ignore_ascii_case("origin"))
        })
    });
    if !present {
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cors(origins: &[&str], methods: &[&str], credentials: bool) -> ir::Cors {
        let methods: Vec<String> = methods.iter().map(ToString::to_string).collect();
        ir::Cors {
            allow_origins: origins
                .iter()
                .map(|origin| ir::OriginPattern::parse(origin).expect("valid origin"))
                .collect(),
            allow_methods: CorsList::new(&methods).expect("valid methods"),
            allow_credentials: credentials,
            max_age: 5,
            ..ir::Cors::default()
        }
    }

    fn options(origin: &str, method: &str) -> Request<()> {
        Request::builder()
            .method(Method::OPTIONS)
            .uri("/")
            .header(header::ORIGIN, origin)
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, method)
            .body(())
            .expect("valid request")
    }

    fn answer(inspection: Inspection) -> Response<ProxyBody> {
        match inspection {
            Inspection::Preflight(response) => response,
            Inspection::Forward(_) => panic!("a preflight was forwarded"),
        }
    }

    #[test]
    fn wildcard_methods_echo_the_requested_method() {
        let cors = cors(&["*"], &["*"], true);
        let response = answer(inspect(Some(&cors), &options("https://a.example", "PATCH")));
        let headers = response.headers();
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_METHODS], "PATCH");
        assert_eq!(
            headers[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://a.example"
        );
        assert_eq!(headers[header::ACCESS_CONTROL_MAX_AGE], "5");
        assert_eq!(headers[header::VARY], "Origin");
    }

    #[test]
    fn unlisted_method_gets_no_cors_headers() {
        let cors = cors(&["*"], &["PUT"], false);
        let response = answer(inspect(
            Some(&cors),
            &options("https://a.example", "DELETE"),
        ));
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert!(response.headers().is_empty());
    }

    #[test]
    fn options_without_requested_method_is_forwarded() {
        let cors = cors(&["*"], &[], false);
        let request = Request::builder()
            .method(Method::OPTIONS)
            .header(header::ORIGIN, "https://a.example")
            .body(())
            .expect("valid request");
        assert!(matches!(
            inspect(Some(&cors), &request),
            Inspection::Forward(Some(_))
        ));
    }

    #[test]
    fn vary_is_not_repeated() {
        let mut headers = HeaderMap::new();
        headers.insert(header::VARY, HeaderValue::from_static("Accept, origin"));
        vary_on_origin(&mut headers);
        assert_eq!(headers.get_all(header::VARY).iter().count(), 1);
    }
}
