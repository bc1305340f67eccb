//! WebSocket over HTTP/1.1: recognising the opening handshake, sending it to the backend on a
//! connection of its own, and relaying bytes once both sides switched protocols.
//!
//! The flow ([RFC 6455 §4]; [RFC 9110 §7.8] for `Upgrade`): the request path routes and filters
//! a handshake like any request, but keeps `Connection: upgrade` and `Upgrade: websocket`
//! (every other hop-by-hop header is still removed) and sends it over HTTP/1.1 on a fresh,
//! never pooled connection ([`send`]): once switched, that connection belongs to one tunnel.
//! A backend that answers `101 Switching Protocols` gets a [`Tunnel`], left in the client
//! connection's [`Slot`]; the client gets the 101, and the connection's task then copies bytes
//! both ways until either side closes. Any other answer is an ordinary response.
//!
//! Only HTTP/1.1 clients can upgrade. WebSockets over HTTP/2 (extended CONNECT, [RFC 8441])
//! are out of scope: HTTP/2 listeners do not advertise `SETTINGS_ENABLE_CONNECT_PROTOCOL`,
//! and `CONNECT` stays refused (`ProxyError::ConnectMethod`). Other `Upgrade` values (h2c,
//! TLS) are not upgrades the gateway carries: they are removed as hop-by-hop headers.
//!
//! [RFC 6455 §4]: https://www.rfc-editor.org/rfc/rfc6455#section-4
//! [RFC 9110 §7.8]: https://www.rfc-editor.org/rfc/rfc9110#section-7.8
//! [RFC 8441]: https://www.rfc-editor.org/rfc/rfc8441

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::{Request, Response, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::forward;

/// A client's WebSocket handshake on a connection that can switch protocols.
pub struct Requested {
    /// The `Upgrade` token the client wrote (`websocket`, in whatever case it used).
    pub protocol: HeaderValue,
    /// Resolves to the client connection once hyper has sent our 101.
    pub client: OnUpgrade,
}

/// Where the request path leaves an accepted upgrade for the connection's task to relay
/// (cheap to clone; one per client connection).
///
/// HTTP/1.1 switches protocols at most once per connection (the connection ends as HTTP
/// there), so the slot holds at most one tunnel.
#[derive(Clone, Default)]
pub struct Slot(Arc<Mutex<Option<Tunnel>>>);

/// Both halves of a switched connection, waiting to be relayed.
pub struct Tunnel {
    client: OnUpgrade,
    upstream: OnUpgrade,
    client_addr: SocketAddr,
    endpoint: SocketAddr,
}

// === impl Requested ===

impl Requested {
    /// The WebSocket handshake in `parts`, if it is one and its connection can switch
    /// protocols: `Connection` lists `upgrade` and `Upgrade` lists `websocket`, both
    /// case-insensitively (RFC 6455 §4.2.1). hyper offers the switch ([`OnUpgrade`]) only on
    /// HTTP/1.1 connections served with upgrades, so HTTP/2 requests never qualify. Taking
    /// it out of the extensions is what decides that this request is relayed as a tunnel.
    pub fn take(parts: &mut Parts) -> Option<Self> {
        let protocol = websocket_protocol(&parts.headers)?;
        let client = parts.extensions.remove::<OnUpgrade>()?;
        Some(Self { protocol, client })
    }
}

// === impl Slot ===

impl Slot {
    /// Leaves `tunnel` for the connection's task.
    pub fn put(&self, tunnel: Tunnel) {
        let previous = self.lock().replace(tunnel);
        if previous.is_some() {
            // Cannot happen on HTTP/1.1 (see the type's docs); the older one never started.
            tracing::debug!("replaced a tunnel that was never relayed");
        }
    }

    /// The tunnel left by the request path, if any.
    pub fn take(&self) -> Option<Tunnel> {
        self.lock().take()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Tunnel>> {
        // The slot is only ever swapped whole; a panic cannot leave it half-written.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot")
            .field("occupied", &self.lock().is_some())
            .finish()
    }
}

// === impl Tunnel ===

impl Tunnel {
    /// Pairs the client's pending switch with the backend's 101 `response`, which came from
    /// `endpoint`.
    pub fn new(
        client: OnUpgrade,
        response: &mut Response<Incoming>,
        client_addr: SocketAddr,
        endpoint: SocketAddr,
    ) -> Self {
        Self {
            client,
            upstream: hyper::upgrade::on(response),
            client_addr,
            endpoint,
        }
    }

    /// Waits for both sides to switch, then copies bytes both ways until either side
    /// closes. No request timeout applies here: an open WebSocket may stay quiet for hours.
    pub async fn relay(self) {
        let Self {
            client,
            upstream,
            client_addr,
            endpoint,
        } = self;
        let (client, upstream) = match tokio::try_join!(client, upstream) {
            Ok(both) => both,
            Err(error) => {
                // The client left before reading the 101, or the backend closed at once.
                tracing::debug!(client = %client_addr, %endpoint, %error, "upgrade failed");
                return;
            }
        };
        let mut client = TokioIo::new(client);
        let mut upstream = TokioIo::new(upstream);
        match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
            Ok((received, sent)) => tracing::debug!(
                client = %client_addr, %endpoint, received, sent, "tunnel closed"
            ),
            // A reset from either side is how many WebSockets end; not a gateway error.
            Err(error) => tracing::debug!(
                client = %client_addr, %endpoint, %error, "tunnel ended"
            ),
        }
    }
}

/// Puts back the headers that ask the next hop to switch protocols, after the hop-by-hop
/// headers were removed: `Connection: upgrade` and `Upgrade: protocol`.
pub fn keep_upgrade_headers(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Sends a WebSocket handshake to `endpoint` over HTTP/1.1 on `stream`, a new connection
/// ([`forward::Upstreams::connect_unpooled`]). Returns once the response headers arrived; after a 101 the connection
/// is handed over through the response's [`OnUpgrade`].
pub async fn send(
    stream: forward::UpstreamIo,
    endpoint: SocketAddr,
    mut request: Request<ProxyBody>,
) -> Result<Response<Incoming>, ProxyError> {
    let upstream_failed = |error: hyper::Error| ProxyError::Upstream {
        endpoint,
        source: error.into(),
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(stream)
        .await
        .map_err(upstream_failed)?;
    tokio::spawn(async move {
        // Ends after a 101 (the connection moves into the tunnel), or when the answer was not
        // a switch and its body has been read.
        if let Err(error) = connection.with_upgrades().await {
            tracing::debug!(%endpoint, %error, "upgrade connection failed");
        }
    });
    // An origin-form target (RFC 9112 §3.2.1); `Host` is already among the headers.
    let target = request
        .uri()
        .path_and_query()
        .map_or("/", http::uri::PathAndQuery::as_str)
        .parse()
        .map_err(|_| ProxyError::InvalidFilterResult {
            what: "request target",
            value: request.uri().to_string(),
        })?;
    *request.uri_mut() = target;
    *request.version_mut() = Version::HTTP_11;
    sender.send_request(request).await.map_err(upstream_failed)
}

/// The `websocket` token of `Upgrade` when `Connection` also lists `upgrade`.
fn websocket_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks_upgrade = tokens(headers, &header::CONNECTION).any(|token| token == "upgrade");
    if !asks_upgrade {
        return None;
    }
    // `Upgrade` names protocols, optionally with a version (`websocket/13` is not one the
    // RFC defines, but the name before the slash is what identifies the protocol).
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .find(|token| {
            let name = token.split('/').next().unwrap_or(token);
            name.eq_ignore_ascii_case("websocket")
        })
        .and_then(|token| HeaderValue::from_str(token).ok())
}

/// The comma-separated tokens of header `name`, lowercased.
fn tokens<'h>(
    headers: &'h HeaderMap,
    name: &header::HeaderName,
) -> impl Iterator<Item = String> + 'h {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
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

    fn protocol(pairs: &[(&'static str, &'static str)]) -> Option<String> {
        websocket_protocol(&headers(pairs)).and_then(|v| v.to_str().ok().map(str::to_string))
    }

    #[test]
    fn websocket_tokens_match_case_insensitively() {
        let found = protocol(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
        ]);
        assert_eq!(found.as_deref(), Some("WebSocket"));
        let listed = protocol(&[
            ("connection", "close"),
            ("connection", "UPGRADE"),
            ("upgrade", "foo/2, websocket"),
        ]);
        assert_eq!(listed.as_deref(), Some("websocket"));
    }

    #[test]
    fn other_upgrades_and_half_handshakes_are_not_websockets() {
        assert_eq!(
            protocol(&[("connection", "upgrade"), ("upgrade", "h2c")]),
            None
        );
        assert_eq!(protocol(&[("upgrade", "websocket")]), None);
        assert_eq!(protocol(&[("connection", "upgrade")]), None);
        assert_eq!(
            protocol(&[("connection", "upgrades"), ("upgrade", "websocket")]),
            None
        );
    }

    #[test]
    fn requests_without_a_pending_switch_are_not_taken() {
        // HTTP/2 requests, and HTTP/1.1 ones on connections served without upgrades, carry
        // no `OnUpgrade`: they are forwarded as plain requests.
        let request = Request::builder()
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .body(())
            .expect("valid request");
        let (mut parts, ()) = request.into_parts();
        assert!(Requested::take(&mut parts).is_none());
    }

    #[test]
    fn upgrade_headers_are_put_back() {
        let mut map = headers(&[("connection", "keep-alive"), ("upgrade", "h2c")]);
        keep_upgrade_headers(&mut map, HeaderValue::from_static("websocket"));
        assert_eq!(
            map.get("connection").map(HeaderValue::as_bytes),
            Some(&b"upgrade"[..])
        );
        assert_eq!(map.get_all("upgrade").iter().count(), 1);
        assert_eq!(
            map.get("upgrade").map(HeaderValue::as_bytes),
            Some(&b"websocket"[..])
        );
    }
}
