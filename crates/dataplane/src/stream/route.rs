//! Which listener of a TLS socket takes a connection, decided from its ClientHello's SNI
//! before any TLS is spoken back.
//!
//! A socket may carry all three kinds of TLS listener at once (TLSRouteModeMixed): HTTPS
//! listeners (`ir::Bind::http` with a certificate), TLS passthrough listeners and TLS
//! listeners that terminate and relay. Pure: a function of the config and the SNI.

use std::sync::Arc;

use ir::{Hostname, HostnameMatch, StreamRoute, TlsPassthroughListener, TlsTerminateListener};

use crate::error::ProxyError;

/// Where a TLS connection goes, by its SNI.
#[derive(Debug)]
pub enum TlsRoute<'b> {
    /// Pass the connection through to a backend of `route`.
    PassThrough {
        /// The listener the SNI selected.
        listener: &'b Arc<TlsPassthroughListener>,
        /// Its route for the SNI.
        route: &'b Arc<StreamRoute>,
    },
    /// Terminate TLS with `listener`'s certificate and relay the decrypted bytes to a backend
    /// of `route`.
    Terminate {
        /// The listener the SNI selected.
        listener: &'b Arc<TlsTerminateListener>,
        /// Its route for the SNI.
        route: &'b Arc<StreamRoute>,
    },
    /// Terminate TLS with the bind's HTTPS listeners and serve HTTP.
    Https,
    /// Close the connection: no listener, or no route of the selected listener, takes it.
    Refuse(ProxyError),
}

/// Decides where a TLS connection on `bind` goes by its SNI.
///
/// The most specific listener that matches the SNI serves the connection, whichever its
/// kind, just as the most specific HTTP listener serves a request (listener isolation,
/// GEP-1713): an exact hostname before the longest wildcard, before a listener without
/// hostname. So an HTTPS listener for `a.example.com` is not shadowed by a passthrough
/// listener without hostname on the same port, nor the other way round.
///
/// Ties (translate reports listeners with the same hostname on one port as conflicted, so
/// they are rare) go to passthrough, then terminate-and-relay, then HTTPS: the TLS listeners
/// claim whole connections, and passthrough winning ties is how mixed sockets behaved before
/// terminate listeners existed. Among listeners of one kind, the last of equals wins, as in
/// [`ir::Bind::listener_for`].
///
/// A TLS listener that wins but has no route for the SNI refuses the connection rather than
/// handing it to a less specific listener, as a request that its listener cannot route gets
/// 404. Without SNI, only listeners without hostname match; if none does, HTTPS listeners
/// still get the connection, and their certificate resolver decides (`tls.rs`).
pub fn route_tls<'b>(bind: &'b ir::Bind, server_name: Option<&Hostname>) -> TlsRoute<'b> {
    let sni = server_name.map(Hostname::as_str);
    let mut https_listeners = bind.http.iter().filter(|listener| listener.tls.is_some());
    let terminating = https_listeners.clone().next().is_some();
    let candidates = [
        most_specific(&mut https_listeners, |l| l.hostname.as_ref(), sni)
            .map(|(specificity, _)| (specificity, Winner::Https)),
        most_specific(bind.tls_terminate.iter(), |l| l.hostname.as_ref(), sni)
            .map(|(specificity, listener)| (specificity, Winner::Terminate(listener))),
        most_specific(bind.tls_passthrough.iter(), |l| l.hostname.as_ref(), sni)
            .map(|(specificity, listener)| (specificity, Winner::PassThrough(listener))),
    ];
    // `max_by_key` keeps the last of equals: the order of `candidates` is the tie order.
    let winner = candidates
        .into_iter()
        .flatten()
        .max_by_key(|(specificity, _)| *specificity)
        .map(|(_, winner)| winner);
    match winner {
        Some(Winner::PassThrough(listener)) => match listener.select(sni) {
            Some(route) => TlsRoute::PassThrough { listener, route },
            None => TlsRoute::Refuse(ProxyError::NoRoute),
        },
        Some(Winner::Terminate(listener)) => match listener.select(sni) {
            Some(route) => TlsRoute::Terminate { listener, route },
            None => TlsRoute::Refuse(ProxyError::NoRoute),
        },
        Some(Winner::Https) => TlsRoute::Https,
        // As on a socket with only HTTPS listeners: the certificate resolver fails the
        // handshake of an SNI that none of them takes, and serves one without SNI.
        None if terminating => TlsRoute::Https,
        None => TlsRoute::Refuse(ProxyError::NoListener {
            host: sni.unwrap_or_default().to_string(),
        }),
    }
}

// === helpers ===

/// The listener kind that won, before its route is selected.
enum Winner<'b> {
    Https,
    Terminate(&'b Arc<TlsTerminateListener>),
    PassThrough(&'b Arc<TlsPassthroughListener>),
}

/// The most specific of `listeners` whose hostname matches `sni` (the last of equals), with
/// its specificity; a listener without hostname matches anything, least specifically.
fn most_specific<'b, L: 'b>(
    listeners: impl Iterator<Item = &'b Arc<L>>,
    hostname: impl Fn(&L) -> Option<&HostnameMatch>,
    sni: Option<&str>,
) -> Option<((u8, usize), &'b Arc<L>)> {
    listeners
        .filter_map(|listener| match (hostname(listener), sni) {
            (None, _) => Some(((0, 0), listener)),
            (Some(pattern), Some(sni)) if pattern.matches(sni) => {
                Some((pattern.specificity(), listener))
            }
            _ => None,
        })
        .max_by_key(|(specificity, _)| *specificity)
}

#[cfg(test)]
mod tests {
    use ir::{HttpListener, RedirectScheme, RouteId, RouteKind, RouteTable, TlsCertificate};

    use super::*;

    fn https(hostname: Option<&str>) -> Arc<HttpListener> {
        Arc::new(HttpListener {
            gateway: "ns/gateway".into(),
            name: hostname.unwrap_or("https").into(),
            hostname: hostname.map(HostnameMatch::parse),
            port: 443,
            scheme: RedirectScheme::Https,
            routes: RouteTable::new(Vec::new()),
            tls: Some(certificate()),
            client_validation: None,
            backend_client_certificate: None,
        })
    }

    fn certificate() -> Arc<TlsCertificate> {
        Arc::new(TlsCertificate {
            source: "ns/cert".into(),
            chain_pem: Vec::new(),
            key_pem: Vec::new(),
        })
    }

    fn routes(routes: &[&[&str]]) -> Vec<Arc<StreamRoute>> {
        routes
            .iter()
            .enumerate()
            .map(|(index, hostnames)| {
                Arc::new(StreamRoute {
                    id: RouteId {
                        kind: RouteKind::Tls,
                        namespace: "ns".into(),
                        name: format!("route-{index}").into(),
                        rule: 0,
                        rule_name: None,
                    },
                    hostnames: hostnames.iter().map(|h| HostnameMatch::parse(h)).collect(),
                    backends: Vec::new(),
                })
            })
            .collect()
    }

    fn passthrough(hostname: Option<&str>, routes: &[&[&str]]) -> Arc<TlsPassthroughListener> {
        let routes = self::routes(routes);
        Arc::new(TlsPassthroughListener {
            gateway: "ns/gateway".into(),
            name: hostname.unwrap_or("passthrough").into(),
            hostname: hostname.map(HostnameMatch::parse),
            routes,
        })
    }

    fn terminate(hostname: Option<&str>, routes: &[&[&str]]) -> Arc<TlsTerminateListener> {
        Arc::new(TlsTerminateListener {
            gateway: "ns/gateway".into(),
            name: hostname.unwrap_or("terminate").into(),
            hostname: hostname.map(HostnameMatch::parse),
            tls: certificate(),
            routes: self::routes(routes),
        })
    }

    /// What `route_tls` decides, as text: `pass <listener> <route>`, `relay <listener>
    /// <route>`, `https`, or the refusal.
    fn decide(bind: &ir::Bind, sni: Option<&str>) -> String {
        let sni = sni.and_then(Hostname::from_request_host);
        match route_tls(bind, sni.as_ref()) {
            TlsRoute::PassThrough { listener, route } => {
                format!("pass {} {}", listener.name, route.id.name)
            }
            TlsRoute::Terminate { listener, route } => {
                format!("relay {} {}", listener.name, route.id.name)
            }
            TlsRoute::Https => "https".into(),
            TlsRoute::Refuse(error) => format!("refuse: {error}"),
        }
    }

    #[test]
    fn passthrough_only_sockets_route_or_refuse() {
        let bind = ir::Bind {
            tls_passthrough: vec![passthrough(
                Some("*.example.com"),
                &[&["a.example.com"], &["b.example.com"]],
            )],
            ..ir::Bind::default()
        };
        assert_eq!(
            decide(&bind, Some("a.example.com")),
            "pass *.example.com route-0"
        );
        assert_eq!(
            decide(&bind, Some("B.example.com")),
            "pass *.example.com route-1"
        );
        assert_eq!(
            decide(&bind, Some("c.example.com")),
            "refuse: no route matches"
        );
        assert_eq!(
            decide(&bind, Some("other.test")),
            "refuse: no listener for host \"other.test\""
        );
        assert_eq!(decide(&bind, None), "refuse: no listener for host \"\"");
    }

    #[test]
    fn the_most_specific_listener_of_either_kind_wins() {
        let bind = ir::Bind {
            http: vec![
                https(Some("term.example.com")),
                https(Some("*.example.com")),
            ],
            tls_passthrough: vec![
                passthrough(Some("pass.example.com"), &[&[]]),
                passthrough(None, &[&["any.example.com", "other.test"]]),
            ],
            ..ir::Bind::default()
        };
        assert_eq!(
            decide(&bind, Some("pass.example.com")),
            "pass pass.example.com route-0"
        );
        // An exact HTTPS listener beats the passthrough listener without hostname...
        assert_eq!(decide(&bind, Some("term.example.com")), "https");
        // ...and so does a wildcard one, even where the passthrough route would match.
        assert_eq!(decide(&bind, Some("any.example.com")), "https");
        assert_eq!(
            decide(&bind, Some("other.test")),
            "pass passthrough route-0"
        );
        // The passthrough listener without hostname takes every other SNI, and refuses those
        // its routes do not.
        assert_eq!(decide(&bind, Some("else.test")), "refuse: no route matches");
        assert_eq!(decide(&bind, None), "refuse: no route matches");
    }

    #[test]
    fn without_a_passthrough_match_https_listeners_decide() {
        let bind = ir::Bind {
            http: vec![https(Some("term.example.com"))],
            tls_passthrough: vec![passthrough(Some("pass.example.com"), &[&[]])],
            ..ir::Bind::default()
        };
        assert_eq!(decide(&bind, Some("unknown.test")), "https");
        assert_eq!(decide(&bind, None), "https");
        let tie = ir::Bind {
            http: vec![https(None)],
            tls_passthrough: vec![passthrough(None, &[&[]])],
            ..ir::Bind::default()
        };
        assert_eq!(decide(&tie, Some("x.test")), "pass passthrough route-0");
    }

    #[test]
    fn terminate_listeners_route_by_sni_or_refuse() {
        let bind = ir::Bind {
            tls_terminate: vec![terminate(
                Some("*.example.com"),
                &[&["a.example.com"], &["*.b.example.com"]],
            )],
            ..ir::Bind::default()
        };
        assert_eq!(
            decide(&bind, Some("A.example.com")),
            "relay *.example.com route-0"
        );
        assert_eq!(
            decide(&bind, Some("x.b.example.com")),
            "relay *.example.com route-1"
        );
        assert_eq!(
            decide(&bind, Some("c.example.com")),
            "refuse: no route matches"
        );
        assert_eq!(
            decide(&bind, Some("other.test")),
            "refuse: no listener for host \"other.test\""
        );
        assert_eq!(decide(&bind, None), "refuse: no listener for host \"\"");
    }

    #[test]
    fn all_three_kinds_share_a_socket_by_specificity() {
        let bind = ir::Bind {
            http: vec![https(Some("web.example.com"))],
            tls_passthrough: vec![passthrough(Some("*.pass.example.com"), &[&[]])],
            tls_terminate: vec![
                terminate(Some("*.example.com"), &[&[]]),
                terminate(Some("relay.pass.example.com"), &[&[]]),
            ],
            ..ir::Bind::default()
        };
        assert_eq!(decide(&bind, Some("web.example.com")), "https");
        assert_eq!(
            decide(&bind, Some("x.pass.example.com")),
            "pass *.pass.example.com route-0"
        );
        // An exact terminate listener inside the passthrough listener's wildcard.
        assert_eq!(
            decide(&bind, Some("relay.pass.example.com")),
            "relay relay.pass.example.com route-0"
        );
        assert_eq!(
            decide(&bind, Some("other.example.com")),
            "relay *.example.com route-0"
        );
        // Nothing matches: the HTTPS listener's resolver decides (and fails the handshake).
        assert_eq!(decide(&bind, Some("else.test")), "https");
    }

    #[test]
    fn ties_go_to_passthrough_then_terminate_then_https() {
        let all = ir::Bind {
            http: vec![https(None)],
            tls_passthrough: vec![passthrough(None, &[&[]])],
            tls_terminate: vec![terminate(None, &[&[]])],
            ..ir::Bind::default()
        };
        assert_eq!(decide(&all, Some("x.test")), "pass passthrough route-0");
        let without_passthrough = ir::Bind {
            tls_passthrough: Vec::new(),
            ..all.clone()
        };
        assert_eq!(
            decide(&without_passthrough, Some("x.test")),
            "relay terminate route-0"
        );
        assert_eq!(
            decide(&without_passthrough, None),
            "relay terminate route-0"
        );
        // Among listeners of one kind, the last of equals, as `ir::Bind::listener_for`.
        let two = ir::Bind {
            tls_terminate: vec![
                terminate(None, &[&[]]),
                Arc::new(TlsTerminateListener {
                    name: "second".into(),
                    ..TlsTerminateListener::clone(&terminate(None, &[&[]]))
                }),
            ],
            ..ir::Bind::default()
        };
        assert_eq!(decide(&two, Some("x.test")), "relay second route-0");
    }

    #[test]
    fn a_winning_terminate_listener_without_a_route_refuses() {
        let bind = ir::Bind {
            http: vec![https(None)],
            tls_terminate: vec![terminate(Some("t.example.com"), &[&["other.example.com"]])],
            ..ir::Bind::default()
        };
        assert_eq!(
            decide(&bind, Some("t.example.com")),
            "refuse: no route matches"
        );
        assert_eq!(decide(&bind, Some("u.example.com")), "https");
    }
}
