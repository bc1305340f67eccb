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
    pub request_headers: Option<HeaderModifier>,
    /// `ResponseHeaderModifier`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderModifier>,
    /// `URLRewrite`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<UrlRewrite>,
    /// `RequestMirror`, any number of them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<Mirror>,
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
    use super::PathModifier;

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
