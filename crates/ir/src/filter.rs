//! Filters as data: what a rule does to a request and its response besides routing it.

use http::{HeaderName, HeaderValue};
use serde::{Serialize, Serializer};

use crate::backend::Backend;
use std::sync::Arc;

/// The rule-level filters of an HTTPRoute rule, in the form the data plane applies them.
///
/// The spec allows each of these at most once per rule, except `RequestMirror`, so a struct
/// of options says exactly that. `RequestRedirect` is not here: a redirect replaces
/// forwarding, so it is an [`crate::Action`].
#[derive(Clone, Debug, Default, Serialize)]
pub struct RequestFilters {
    /// `RequestHeaderModifier`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<Box<HeaderModifier>>,
    /// `ResponseHeaderModifier`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<Box<HeaderModifier>>,
    /// `URLRewrite`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Box<UrlRewrite>>,
    /// `RequestMirror`, any number of them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
    /// `CORS`: preflights answered by the gateway, actual responses decorated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cors: Option<Box<Cors>>,
    /// `ExternalAuth` (GEP-1494): an authorization service decides before forwarding.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_auth: Option<Arc<ExternalAuth>>,
}

/// `ExternalAuth`: the request's details go to an authorization service first; only its
/// approval lets the request on, and any failure to get an answer denies it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalAuth {
    /// The authorization service (spoken to over h2c for `GRPC`).
    pub backend: Arc<Backend>,
    /// How it is asked.
    pub protocol: AuthProtocol,
    /// `forwardBody.maxSize`: up to this many bytes of the body go along; 0 sends none.
    pub forward_body: usize,
}

/// `ExternalAuth.protocol` with its settings.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum AuthProtocol {
    /// The request is replayed to the service (without body unless forwarded); a 200 allows.
    #[serde(rename_all = "camelCase")]
    Http {
        /// `http.path`: prepended to the request path.
        path_prefix: String,
        /// `http.allowedHeaders`: sent besides Host, Content-Length and Authorization.
        #[serde(serialize_with = "serialize_names")]
        allowed_headers: Vec<HeaderName>,
        /// `http.allowedResponseHeaders`: copied from an approval into the request; empty
        /// copies every header but Host and framing ones.
        #[serde(serialize_with = "serialize_names")]
        allowed_response_headers: Vec<HeaderName>,
    },
    /// Envoy's `envoy.service.auth.v3.Authorization/Check`.
    #[serde(rename_all = "camelCase")]
    Grpc {
        /// `grpc.allowedHeaders`: the request headers sent; empty sends all.
        #[serde(serialize_with = "serialize_names")]
        allowed_headers: Vec<HeaderName>,
    },
}

/// Set, add and remove headers; applied in that order, as Envoy and the conformance tests do.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HeaderModifier {
    /// Replace any existing values.
    #[serde(serialize_with = "serialize_pairs")]
    pub set: Vec<(HeaderName, HeaderValue)>,
    /// Append a value (after existing ones).
    #[serde(serialize_with = "serialize_pairs")]
    pub add: Vec<(HeaderName, HeaderValue)>,
    /// Remove all values.
    #[serde(serialize_with = "serialize_names")]
    pub remove: Vec<HeaderName>,
}

/// `RequestRedirect`: answer with a redirect instead of forwarding.
#[derive(Clone, Debug, Serialize)]
pub struct Redirect {
    /// New scheme; `None` keeps the request's.
    pub scheme: Option<RedirectScheme>,
    /// New host; `None` keeps the request's.
    pub hostname: Option<String>,
    /// New path; `None` keeps the request's.
    pub path: Option<PathModifier>,
    /// New port; `None` derives it as the spec says (see the data plane).
    pub port: Option<u16>,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

/// A URL scheme a redirect can name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedirectScheme {
    /// `http`, default port 80.
    Http,
    /// `https`, default port 443.
    Https,
}

/// `URLRewrite`: change host and/or path before forwarding.
#[derive(Clone, Debug, Default, Serialize)]
pub struct UrlRewrite {
    /// Replaces the Host header.
    pub hostname: Option<String>,
    /// Replaces the path.
    pub path: Option<PathModifier>,
}

/// How a redirect or rewrite changes the path.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum PathModifier {
    /// `ReplaceFullPath`: the whole path becomes this.
    Full(String),
    /// `ReplacePrefixMatch`: the part matched by the rule's `PathPrefix` becomes this.
    PrefixMatch(String),
}

/// `RequestMirror`: send a copy of the request to another backend and ignore its answer.
#[derive(Clone, Debug, Serialize)]
pub struct Mirror {
    /// Where the copies go.
    pub backend: Arc<Backend>,
    /// Share of requests mirrored, as numerator/denominator (`percent: 50` is `50/100`).
    pub numerator: u32,
    /// Never zero.
    pub denominator: u32,
}

/// `CORS`, compiled: origins parsed once, lists joined into the header values they produce.
///
/// The data plane answers a preflight from these fields and decorates actual responses; see
/// `dataplane/src/cors.rs` for which header is sent when.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Cors {
    /// `allowOrigins`; an origin matching none of them gets no CORS headers.
    pub allow_origins: Vec<OriginPattern>,
    /// `allowMethods`. The CORS-safelisted methods (`GET`, `HEAD`, `POST`) are always
    /// allowed, whatever this says.
    pub allow_methods: CorsList,
    /// `allowHeaders`.
    pub allow_headers: CorsList,
    /// `exposeHeaders`.
    pub expose_headers: CorsList,
    /// `maxAge` in seconds (5 when unset, as the field docs require), sent as
    /// `Access-Control-Max-Age` on preflight answers.
    pub max_age: u32,
    /// `allowCredentials`: send `Access-Control-Allow-Credentials: true`, and never a `*`.
    pub allow_credentials: bool,
}

/// One entry of `allowOrigins`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OriginPattern {
    /// `*` alone: every origin.
    Any,
    /// An origin without wildcard, normalised to `scheme://host:port` (lowercase, with the
    /// scheme's default port made explicit, since the spec says it "is assumed").
    Exact(String),
    /// A host starting with `*`: the same scheme and port, and a host that ends with
    /// `suffix` and has at least one character before it. The spec's `*` "is a greedy match to
    /// the _left_, including any number of DNS labels", so `https://*.bar.com` matches
    /// `https://a.b.bar.com` but not `https://bar.com`; a host of `*` alone has an empty
    /// suffix and matches every host.
    Wildcard {
        /// `http` or `https`.
        scheme: String,
        /// The host after the `*`, lowercase (`.bar.com`).
        suffix: String,
        /// Explicit or the scheme's default.
        port: u16,
    },
}

/// A list field of the CORS filter that may hold the wildcard `*`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CorsList {
    /// The field is unset or empty: the matching response header is not sent.
    #[default]
    Unset,
    /// The list contains `*`.
    Any,
    /// Names as configured, and their `, `-joined header value, built once.
    Listed {
        /// The configured names, in order.
        names: Vec<String>,
        /// `names` joined with `, `.
        #[serde(skip)]
        value: HeaderValue,
    },
}

/// An `allowOrigins` entry or a list entry that cannot be compiled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidCorsValue(pub String);

// === impl Cors ===

impl Cors {
    /// Whether `origin` (the request's `Origin` header) is one of `allowOrigins`.
    pub fn allows_origin(&self, origin: &str) -> bool {
        if self.allow_origins.contains(&OriginPattern::Any) {
            return true;
        }
        let Ok(origin) = Origin::parse(origin) else {
            return false;
        };
        self.allow_origins
            .iter()
            .any(|pattern| pattern.matches(&origin))
    }

    /// Whether a preflight may announce `method`: a CORS-safelisted method
    /// (<https://fetch.spec.whatwg.org/#cors-safelisted-method>) or one of `allowMethods`,
    /// compared case-sensitively as the field docs say.
    pub fn allows_method(&self, method: &str) -> bool {
        matches!(method, "GET" | "HEAD" | "POST")
            || match &self.allow_methods {
                CorsList::Unset => false,
                CorsList::Any => true,
                CorsList::Listed { names, .. } => names.iter().any(|name| name == method),
            }
    }
}

// === impl OriginPattern ===

impl OriginPattern {
    /// Compiles one `allowOrigins` entry: `*`, or `<scheme>://<host>(:<port>)` whose host may
    /// start with `*`.
    pub fn parse(text: &str) -> Result<Self, InvalidCorsValue> {
        if text == "*" {
            return Ok(Self::Any);
        }
        let origin = Origin::parse(text)?;
        match origin.host.strip_prefix('*') {
            None => Ok(Self::Exact(origin.to_string())),
            Some(suffix) if !suffix.contains('*') => Ok(Self::Wildcard {
                scheme: origin.scheme,
                suffix: suffix.to_string(),
                port: origin.port,
            }),
            Some(_) => Err(InvalidCorsValue(format!(
                "origin {text:?} has more than one wildcard"
            ))),
        }
    }

    fn matches(&self, origin: &Origin) -> bool {
        match self {
            Self::Any => true,
            Self::Exact(exact) => *exact == origin.to_string(),
            Self::Wildcard {
                scheme,
                suffix,
                port,
            } => {
                *scheme == origin.scheme
                    && *port == origin.port
                    && origin.host.len() > suffix.len()
                    && origin.host.ends_with(suffix.as_str())
            }
        }
    }
}

// === impl CorsList ===

impl CorsList {
    /// Compiles a list field: `*` anywhere makes it [`CorsList::Any`]; otherwise every name
    /// must be usable in a header value.
    pub fn new(names: &[String]) -> Result<Self, InvalidCorsValue> {
        if names.is_empty() {
            return Ok(Self::Unset);
        }
        if names.iter().any(|name| name == "*") {
            return Ok(Self::Any);
        }
        let joined = names.join(", ");
        let value = HeaderValue::from_str(&joined)
            .map_err(|_| InvalidCorsValue(format!("list {joined:?} is not a header value")))?;
        Ok(Self::Listed {
            names: names.to_vec(),
            value,
        })
    }
}

impl std::fmt::Display for InvalidCorsValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidCorsValue {}

// === impl RedirectScheme ===

impl RedirectScheme {
    /// The scheme's string form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Http => "http",
            Self::Https => "https",
        }
    }

    /// The well-known port of the scheme.
    pub fn default_port(self) -> u16 {
        match self {
            Self::Http => 80,
            Self::Https => 443,
        }
    }
}

// === impl PathModifier ===

impl PathModifier {
    /// Applies the modifier to `path` (without query). `matched_prefix` is the `PathPrefix`
    /// value of the match that selected the rule.
    ///
    /// For `ReplacePrefixMatch` the spec says the prefix is matched element by element, so
    /// `/foo` replaced by `/bar` turns `/foo/x` into `/bar/x`, and replacing with `/` must not
    /// produce `//x`.
    pub fn apply(&self, path: &str, matched_prefix: Option<&str>) -> String {
        match self {
            Self::Full(full) => full.clone(),
            Self::PrefixMatch(replacement) => {
                let prefix = matched_prefix.unwrap_or("/").trim_end_matches('/');
                let rest = path.get(prefix.len()..).unwrap_or("");
                let replacement = replacement.trim_end_matches('/');
                let joined = match (replacement.is_empty(), rest.is_empty()) {
                    (true, true) => "/".to_string(),
                    (true, false) => rest.to_string(),
                    (false, _) => format!("{replacement}{rest}"),
                };
                if joined.starts_with('/') {
                    joined
                } else {
                    format!("/{joined}")
                }
            }
        }
    }
}

/// A serialized origin split into its parts: scheme and host lowercase, port explicit.
struct Origin {
    scheme: String,
    host: String,
    port: u16,
}

impl Origin {
    /// `<scheme>://<host>(:<port>)`, scheme `http` or `https`. The host may be a bracketed
    /// IPv6 address; a path, query or fragment is not part of an origin.
    fn parse(text: &str) -> Result<Self, InvalidCorsValue> {
        let invalid = || InvalidCorsValue(format!("{text:?} is not an origin"));
        let (scheme, authority) = text.split_once("://").ok_or_else(invalid)?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return Err(invalid()),
        };
        if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
            return Err(invalid());
        }
        // A colon after the last `]` (or anywhere, without brackets) starts the port.
        let host_end = authority.rfind(']').map_or(0, |end| end + 1);
        let (host, port) = match authority[host_end..].rfind(':') {
            Some(colon) => {
                let colon = host_end + colon;
                let port = authority[colon + 1..]
                    .parse::<u16>()
                    .ok()
                    .filter(|port| *port != 0)
                    .ok_or_else(invalid)?;
                (&authority[..colon], port)
            }
            None => (authority, default_port),
        };
        if host.is_empty() {
            return Err(invalid());
        }
        Ok(Self {
            scheme,
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

fn serialize_pairs<S: Serializer>(
    pairs: &[(HeaderName, HeaderValue)],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(
        pairs
            .iter()
            .map(|(name, value)| (name.as_str(), String::from_utf8_lossy(value.as_bytes()))),
    )
}

fn serialize_names<S: Serializer>(names: &[HeaderName], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(names.iter().map(HeaderName::as_str))
}

#[cfg(test)]
mod tests {
    use super::{Cors, CorsList, OriginPattern, PathModifier};

    fn cors(origins: &[&str], methods: &[&str]) -> Cors {
        let methods: Vec<String> = methods.iter().map(ToString::to_string).collect();
        Cors {
            allow_origins: origins
                .iter()
                .map(|origin| OriginPattern::parse(origin).expect("valid origin"))
                .collect(),
            allow_methods: CorsList::new(&methods).expect("valid methods"),
            ..Cors::default()
        }
    }

    #[test]
    fn origins_match_exactly_with_default_ports() {
        let cors = cors(&["https://www.foo.com", "http://local:8080"], &[]);
        assert!(cors.allows_origin("https://www.foo.com"));
        assert!(cors.allows_origin("HTTPS://WWW.FOO.COM:443"));
        assert!(cors.allows_origin("http://local:8080"));
        assert!(!cors.allows_origin("http://www.foo.com"));
        assert!(!cors.allows_origin("https://www.foo.com:8443"));
        assert!(!cors.allows_origin("http://local"));
        assert!(!cors.allows_origin("null"));
    }

    #[test]
    fn wildcard_host_matches_any_labels_to_its_left() {
        let cors = cors(&["https://*.bar.com"], &[]);
        assert!(cors.allows_origin("https://www.bar.com"));
        assert!(cors.allows_origin("https://xpto.www.bar.com"));
        assert!(!cors.allows_origin("https://bar.com"));
        assert!(!cors.allows_origin("https://foobar.com"));
        assert!(!cors.allows_origin("http://www.bar.com"));
        let any_host = super::Cors {
            allow_origins: vec![OriginPattern::parse("http://*").expect("valid")],
            ..Cors::default()
        };
        assert!(any_host.allows_origin("http://anything.example"));
        assert!(!any_host.allows_origin("https://anything.example"));
    }

    #[test]
    fn lone_star_allows_every_origin() {
        let cors = cors(&["*"], &[]);
        assert!(cors.allows_origin("https://foobar.com:12345"));
        assert!(cors.allows_origin("null"));
    }

    #[test]
    fn safelisted_methods_are_always_allowed() {
        let listed = cors(&["*"], &["PUT"]);
        assert!(listed.allows_method("GET") && listed.allows_method("POST"));
        assert!(listed.allows_method("PUT"));
        assert!(!listed.allows_method("put") && !listed.allows_method("DELETE"));
        assert!(cors(&["*"], &["GET", "*"]).allows_method("DELETE"));
    }

    #[test]
    fn invalid_origins_are_rejected() {
        for text in [
            "ftp://x",
            "https://",
            "https://x/path",
            "https://x:0",
            "x",
            "https://*.*",
        ] {
            assert!(OriginPattern::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn replace_prefix_match_keeps_the_rest_of_the_path() {
        let modifier = PathModifier::PrefixMatch("/prefix/two".into());
        assert_eq!(
            modifier.apply("/prefix/one/three", Some("/prefix/one")),
            "/prefix/two/three"
        );
        assert_eq!(
            modifier.apply("/prefix/one", Some("/prefix/one")),
            "/prefix/two"
        );
        let to_root = PathModifier::PrefixMatch("/".into());
        assert_eq!(
            to_root.apply("/strip-prefix/three", Some("/strip-prefix")),
            "/three"
        );
        assert_eq!(to_root.apply("/strip-prefix", Some("/strip-prefix")), "/");
        let trailing = PathModifier::PrefixMatch("/xyz/".into());
        assert_eq!(trailing.apply("/abc/1", Some("/abc/")), "/xyz/1");
    }

    #[test]
    fn replace_full_path_ignores_the_request_path() {
        let modifier = PathModifier::Full("/one".into());
        assert_eq!(modifier.apply("/full/path/original", Some("/full")), "/one");
    }
}
