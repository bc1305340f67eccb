//! Connection-level routing: TLS passthrough (by the ClientHello's SNI) and TCP.
//!
//! These listeners route whole connections, not requests: the backend is chosen once per
//! connection, by weight, and bytes are copied both ways without being interpreted.

use std::sync::Arc;

use serde::Serialize;

use crate::backend::WeightedBackend;
use crate::hostname::HostnameMatch;
use crate::route::RouteId;

/// A Gateway listener of protocol `TLS` with `tls.mode: Passthrough`.
#[derive(Clone, Debug, Serialize)]
pub struct TlsPassthroughListener {
    /// Gateway `namespace/name`.
    pub gateway: String,
    /// Listener name.
    pub name: String,
    /// The listener's hostname; `None` accepts any SNI.
    pub hostname: Option<HostnameMatch>,
    /// TLSRoutes attached to this listener, in precedence order (see [`Self::select`]).
    pub routes: Vec<Arc<StreamRoute>>,
}

/// A Gateway listener of protocol `TLS` with `tls.mode: Terminate`: the gateway completes
/// the TLS handshake with the listener's certificate, then relays the decrypted bytes to a
/// backend chosen by the SNI's TLSRoute.
#[derive(Clone, Debug, Serialize)]
pub struct TlsTerminateListener {
    /// Gateway `namespace/name`.
    pub gateway: String,
    /// Listener name.
    pub name: String,
    /// The listener's hostname; `None` accepts any SNI.
    pub hostname: Option<HostnameMatch>,
    /// The certificate presented to clients.
    pub tls: Arc<crate::TlsCertificate>,
    /// TLSRoutes attached, chosen by SNI as for passthrough.
    pub routes: Vec<Arc<StreamRoute>>,
}

/// A Gateway listener of protocol `TCP`.
#[derive(Clone, Debug, Serialize)]
pub struct TcpListener {
    /// Gateway `namespace/name`.
    pub gateway: String,
    /// Listener name.
    pub name: String,
    /// TCPRoutes attached, oldest first; the first one serves the listener.
    pub routes: Vec<Arc<StreamRoute>>,
}

/// A TLSRoute or TCPRoute rule, compiled.
#[derive(Clone, Debug, Serialize)]
pub struct StreamRoute {
    /// Where it came from.
    pub id: RouteId,
    /// SNI hostnames (intersected with the listener's); empty means any. Unused for TCP.
    pub hostnames: Vec<HostnameMatch>,
    /// Backends, chosen once per connection by weight. Empty, all invalid, or all of weight
    /// zero: the connection is closed.
    pub backends: Vec<WeightedBackend>,
}

// === impl TlsPassthroughListener ===

impl TlsPassthroughListener {
    /// The route for a ClientHello's SNI: the route with the most specific matching hostname
    /// (exact before wildcard, longer before shorter), ties broken by route order. A route
    /// without hostnames matches any SNI, after every route with a matching hostname.
    pub fn select(&self, sni: Option<&str>) -> Option<&Arc<StreamRoute>> {
        select_by_sni(&self.routes, sni)
    }
}

// === impl TlsTerminateListener ===

impl TlsTerminateListener {
    /// The route for the SNI, as [`TlsPassthroughListener::select`] chooses it.
    pub fn select(&self, sni: Option<&str>) -> Option<&Arc<StreamRoute>> {
        select_by_sni(&self.routes, sni)
    }
}

pub(crate) fn select_by_sni<'a>(
    routes: &'a [Arc<StreamRoute>],
    sni: Option<&str>,
) -> Option<&'a Arc<StreamRoute>> {
    let mut best: Option<((u8, usize), &Arc<StreamRoute>)> = None;
    for route in routes {
        let score = if route.hostnames.is_empty() {
            Some((0, 0))
        } else {
            sni.and_then(|sni| {
                route
                    .hostnames
                    .iter()
                    .filter(|h| h.matches(sni))
                    .map(HostnameMatch::specificity)
                    .max()
            })
        };
        if let Some(score) = score
            && best.as_ref().is_none_or(|(b, _)| score > *b)
        {
            best = Some((score, route));
        }
    }
    best.map(|(_, route)| route)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::RouteKind;

    fn route(name: &str, hostnames: &[&str]) -> Arc<StreamRoute> {
        Arc::new(StreamRoute {
            id: RouteId {
                kind: RouteKind::Tls,
                namespace: "ns".into(),
                name: name.into(),
                rule: 0,
                rule_name: None,
            },
            hostnames: hostnames.iter().map(|h| HostnameMatch::parse(h)).collect(),
            backends: Vec::new(),
        })
    }

    #[test]
    fn most_specific_sni_route_wins_then_route_order() {
        let listener = TlsPassthroughListener {
            gateway: "ns/g".into(),
            name: "tls".into(),
            hostname: None,
            routes: vec![
                route("any", &[]),
                route("wild", &["*.example.com"]),
                route("exact", &["abc.example.com"]),
                route("exact-later", &["abc.example.com"]),
            ],
        };
        let name = |sni| listener.select(sni).map(|r| &*r.id.name);
        assert_eq!(name(Some("abc.example.com")), Some("exact"));
        assert_eq!(name(Some("x.example.com")), Some("wild"));
        assert_eq!(name(Some("other.org")), Some("any"));
        assert_eq!(name(None), Some("any"));
    }
}
