//! Header and URL changes: the rule and backendRef filters, and the proxy's own headers.
//!
//! Everything here is a plain function over `http` types, so the behaviour is tested without
//! sockets.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use ir::{HeaderModifier, PathModifier};

use crate::error::ProxyError;

/// `X-Forwarded-For`.
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `X-Forwarded-Proto`.
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Applies a `RequestHeaderModifier` or `ResponseHeaderModifier`: set, then add, then remove,
/// so a header named in both `set` and `remove` ends up removed.
pub fn modify_headers(modifier: Option<&HeaderModifier>, headers: &mut HeaderMap) {
    let Some(modifier) = modifier else { return };
    for (name, value) in &modifier.set {
        headers.insert(name.clone(), value.clone());
    }
    for (name, value) in &modifier.add {
        headers.append(name.clone(), value.clone());
    }
    for name in &modifier.remove {
        headers.remove(name);
    }
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and every header it names,
/// `Keep-Alive`, `Proxy-*`, `TE`, `Trailer`, `Transfer-Encoding` and `Upgrade`. Applied to
/// requests before forwarding and to responses before answering.
///
/// A WebSocket handshake is recognised before this runs, and its `Connection: upgrade` and
/// `Upgrade` are put back afterwards (`upgrade.rs`); every other upgrade is removed here.
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none of these: one pass over the names says so.
    let hop_by_hop = |name: &HeaderName| {
        matches!(
            *name,
            header::CONNECTION
                | header::TE
                | header::TRAILER
                | header::TRANSFER_ENCODING
                | header::UPGRADE
        ) || name.as_str() == "keep-alive"
            || name.as_str().starts_with("proxy-")
    };
    if !headers.keys().any(hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

/// Whether `TE` lists `trailers` (the client accepts trailer fields).
pub fn accepts_trailers(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|coding| coding.split(';').next())
        .any(|coding| coding.trim().eq_ignore_ascii_case("trailers"))
}

/// The client's IP as a header value (IPv4-mapped addresses as IPv4), computed once per
/// connection for [`set_forwarded`].
pub fn client_address(client: IpAddr) -> HeaderValue {
    let text = client.to_canonical().to_string();
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Appends the client's IP (from [`client_address`]) to `X-Forwarded-For` (one
/// comma-separated value, as most proxies write it) and sets `X-Forwarded-Proto` to the
/// scheme the client used.
pub fn set_forwarded(headers: &mut HeaderMap, client: &HeaderValue, scheme: ir::RedirectScheme) {
    let mut existing = headers.get_all(&X_FORWARDED_FOR).iter().peekable();
    let value = if existing.peek().is_none() {
        client.clone()
    } else {
        let mut value: Vec<u8> = Vec::new();
        for earlier in existing {
            value.extend_from_slice(earlier.as_bytes());
            value.extend_from_slice(b", ");
        }
        value.extend_from_slice(client.as_bytes());
        HeaderValue::from_bytes(&value).unwrap_or_else(|_| client.clone())
    };
    headers.insert(X_FORWARDED_FOR.clone(), value);
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(scheme.as_str()),
    );
}

/// The request target after a `URLRewrite` path change: the rewritten path, followed by the
/// original query string, unchanged.
pub fn rewrite_target(
    target: Option<&PathAndQuery>,
    modifier: &PathModifier,
    matched_prefix: Option<&str>,
) -> Result<PathAndQuery, ProxyError> {
    let path = target.map_or("/", PathAndQuery::path);
    let mut rewritten = modifier.apply(path, matched_prefix);
    if let Some(query) = target.and_then(PathAndQuery::query) {
        rewritten.push('?');
        rewritten.push_str(query);
    }
    PathAndQuery::try_from(rewritten.as_str()).map_err(|_| ProxyError::InvalidFilterResult {
        what: "request target",
        value: rewritten,
    })
}

/// The `Host` value for a `URLRewrite` hostname.
pub fn rewrite_host(hostname: &str) -> Result<HeaderValue, ProxyError> {
    HeaderValue::from_str(hostname).map_err(|_| ProxyError::InvalidFilterResult {
        what: "host",
        value: hostname.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn modifier_sets_then_adds_then_removes() {
        let modifier = HeaderModifier {
            set: vec![
                (
                    HeaderName::from_static("a"),
                    HeaderValue::from_static("set"),
                ),
                (
                    HeaderName::from_static("c"),
                    HeaderValue::from_static("set"),
                ),
            ],
            add: vec![(
                HeaderName::from_static("a"),
                HeaderValue::from_static("added"),
            )],
            remove: vec![HeaderName::from_static("c"), HeaderName::from_static("d")],
        };
        let mut map = headers(&[("a", "old"), ("a", "older"), ("d", "gone"), ("e", "kept")]);
        modify_headers(Some(&modifier), &mut map);
        let a: Vec<_> = map.get_all("a").iter().collect();
        assert_eq!(a, ["set", "added"]);
        assert!(!map.contains_key("c"));
        assert!(!map.contains_key("d"));
        assert_eq!(map.get("e").map(HeaderValue::as_bytes), Some(&b"kept"[..]));
    }

    #[test]
    fn hop_by_hop_headers_and_the_ones_connection_names_are_removed() {
        let mut map = headers(&[
            ("connection", "keep-alive, X-Custom-Hop"),
            ("x-custom-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "secret"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-end-to-end", "1"),
        ]);
        remove_hop_by_hop(&mut map);
        let left: Vec<_> = map.keys().map(HeaderName::as_str).collect();
        assert_eq!(left, ["x-end-to-end"]);
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed() {
        // The check that skips messages without any must know every one of them.
        for name in [
            "connection",
            "keep-alive",
            "proxy-authenticate",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
        ] {
            let mut map = headers(&[(name, "x"), ("x-end-to-end", "1")]);
            remove_hop_by_hop(&mut map);
            let left: Vec<_> = map.keys().map(HeaderName::as_str).collect();
            assert_eq!(left, ["x-end-to-end"], "{name}");
        }
    }

    #[test]
    fn trailers_are_found_among_transfer_codings() {
        assert!(accepts_trailers(&headers(&[(
            "te",
            "gzip;q=0.5, Trailers"
        )])));
        assert!(!accepts_trailers(&headers(&[("te", "gzip")])));
        assert!(!accepts_trailers(&HeaderMap::new()));
    }

    #[test]
    fn forwarded_for_is_appended_and_proto_is_set() {
        let mut map = headers(&[("x-forwarded-for", "10.0.0.1"), ("x-forwarded-proto", "x")]);
        set_forwarded(
            &mut map,
            &client_address([127, 0, 0, 1].into()),
            ir::RedirectScheme::Http,
        );
        assert_eq!(
            map.get("x-forwarded-for").map(HeaderValue::as_bytes),
            Some(&b"10.0.0.1, 127.0.0.1"[..])
        );
        assert_eq!(
            map.get("x-forwarded-proto").map(HeaderValue::as_bytes),
            Some(&b"http"[..])
        );
        let mut fresh = HeaderMap::new();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().expect("valid literal");
        set_forwarded(
            &mut fresh,
            &client_address(mapped),
            ir::RedirectScheme::Https,
        );
        assert_eq!(
            fresh.get("x-forwarded-for").map(HeaderValue::as_bytes),
            Some(&b"192.0.2.7"[..])
        );
    }

    #[test]
    fn rewrite_keeps_the_query() {
        let target = PathAndQuery::from_static("/prefix/one/two?a=1&b");
        let modifier = PathModifier::PrefixMatch("/new".into());
        let rewritten = rewrite_target(Some(&target), &modifier, Some("/prefix/one"));
        assert_eq!(
            rewritten.ok().as_ref().map(PathAndQuery::as_str),
            Some("/new/two?a=1&b")
        );
        let full = rewrite_target(Some(&target), &PathModifier::Full("/x".into()), None);
        assert_eq!(
            full.ok().as_ref().map(PathAndQuery::as_str),
            Some("/x?a=1&b")
        );
    }
}
