//! `RequestRedirect`: answering with a `Location` instead of forwarding.
//!
//! The spec (`HTTPRequestRedirectFilter`) decides every part of the location:
//!
//! - scheme: `scheme`, else the one the client used (the listener's);
//! - host: `hostname`, else the request's host without its port;
//! - port: `port`; else, "if redirect scheme is not-empty, the redirect port MUST be the
//!   well-known port associated with the redirect scheme"; else "the redirect port MUST be
//!   the Gateway Listener port". "Implementations SHOULD NOT add the port number in the
//!   'Location' header" when it is 80 for http or 443 for https;
//! - path: `path` (`ReplaceFullPath` or `ReplacePrefixMatch`), else unchanged; the query
//!   string is kept.

use http::uri::PathAndQuery;
use http::{HeaderValue, Response, StatusCode, header};
use ir::{HttpListener, Redirect, RedirectScheme};

use crate::body::{self, ProxyBody};
use crate::error::ProxyError;

/// What a redirect needs to know about the request it answers.
#[derive(Clone, Copy, Debug)]
pub struct RedirectRequest<'a> {
    /// The normalised request host, without port.
    pub host: &'a str,
    /// The request target (path and query).
    pub target: Option<&'a PathAndQuery>,
    /// The `PathPrefix` of the match that selected the rule, for `ReplacePrefixMatch`.
    pub matched_prefix: Option<&'a str>,
}

/// Builds the redirect response for `request` received on `listener`.
pub fn respond(
    redirect: &Redirect,
    listener: &HttpListener,
    request: RedirectRequest<'_>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let location = location(redirect, listener.scheme, listener.port, request);
    let value = HeaderValue::from_str(&location).map_err(|_| ProxyError::InvalidFilterResult {
        what: "location",
        value: location.clone(),
    })?;
    let status = StatusCode::from_u16(redirect.status)
        .ok()
        .filter(StatusCode::is_redirection)
        .ok_or_else(|| ProxyError::InvalidFilterResult {
            what: "redirect status",
            value: redirect.status.to_string(),
        })?;
    let mut response = Response::new(body::empty());
    *response.status_mut() = status;
    response.headers_mut().insert(header::LOCATION, value);
    Ok(response)
}

/// The `Location` value, as an absolute URI.
pub fn location(
    redirect: &Redirect,
    listener_scheme: RedirectScheme,
    listener_port: u16,
    request: RedirectRequest<'_>,
) -> String {
    let scheme = redirect.scheme.unwrap_or(listener_scheme);
    let host = redirect.hostname.as_deref().unwrap_or(request.host);
    let port = match (redirect.port, redirect.scheme) {
        (Some(port), _) => port,
        (None, Some(scheme)) => scheme.default_port(),
        (None, None) => listener_port,
    };
    let path = request.target.map_or("/", PathAndQuery::path);
    let path = match &redirect.path {
        Some(modifier) => modifier.apply(path, request.matched_prefix),
        None => path.to_string(),
    };
    let mut location = format!("{}://{host}", scheme.as_str());
    if port != scheme.default_port() {
        location.push(':');
        location.push_str(&port.to_string());
    }
    location.push_str(&path);
    if let Some(query) = request.target.and_then(PathAndQuery::query) {
        location.push('?');
        location.push_str(query);
    }
    location
}

#[cfg(test)]
mod tests {
    use super::*;
    use ir::PathModifier;

    fn plain() -> Redirect {
        Redirect {
            scheme: None,
            hostname: None,
            path: None,
            port: None,
            status: 302,
        }
    }

    fn at(redirect: &Redirect, scheme: RedirectScheme, port: u16, target: &'static str) -> String {
        let target = PathAndQuery::from_static(target);
        let request = RedirectRequest {
            host: "example.com",
            target: Some(&target),
            matched_prefix: Some("/old"),
        };
        location(redirect, scheme, port, request)
    }

    #[test]
    fn port_follows_the_spec_rules() {
        use RedirectScheme::{Http, Https};
        // (redirect scheme, redirect port, listener scheme, listener port, location)
        let cases = [
            // No scheme, no port: the listener's port, omitted when it is the default.
            (None, None, Http, 80, "http://example.com/a?q=1"),
            (None, None, Http, 8080, "http://example.com:8080/a?q=1"),
            (None, None, Https, 443, "https://example.com/a?q=1"),
            (None, None, Https, 8443, "https://example.com:8443/a?q=1"),
            // A scheme without a port: the scheme's well-known port, never written.
            (Some(Https), None, Http, 8080, "https://example.com/a?q=1"),
            (Some(Http), None, Https, 8443, "http://example.com/a?q=1"),
            // An explicit port is written unless it is the scheme's default.
            (
                Some(Https),
                Some(8443),
                Http,
                80,
                "https://example.com:8443/a?q=1",
            ),
            (None, Some(80), Http, 8080, "http://example.com/a?q=1"),
        ];
        for (scheme, port, listener_scheme, listener_port, expected) in cases {
            let redirect = Redirect {
                scheme,
                port,
                ..plain()
            };
            assert_eq!(
                at(&redirect, listener_scheme, listener_port, "/a?q=1"),
                expected,
                "scheme {scheme:?} port {port:?} listener {listener_scheme:?}:{listener_port}"
            );
        }
    }

    #[test]
    fn hostname_and_path_are_replaced() {
        let redirect = Redirect {
            hostname: Some("other.example".into()),
            path: Some(PathModifier::PrefixMatch("/new".into())),
            ..plain()
        };
        assert_eq!(
            at(&redirect, RedirectScheme::Http, 80, "/old/rest?x=y"),
            "http://other.example/new/rest?x=y"
        );
        let full = Redirect {
            path: Some(PathModifier::Full("/full".into())),
            ..plain()
        };
        assert_eq!(
            at(&full, RedirectScheme::Http, 80, "/old/rest"),
            "http://example.com/full"
        );
    }
}
