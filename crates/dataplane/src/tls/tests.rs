//! Certificates by listener and SNI, loaded once per config and reused while unchanged; the
//! acceptors of terminate-and-relay listeners.

use std::collections::BTreeMap;

use ir::{HostnameMatch, RedirectScheme, RouteTable};

use super::*;

const BIND: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 443);

fn certificate(names: &[&str]) -> Arc<TlsCertificate> {
    let names: Vec<String> = names.iter().map(ToString::to_string).collect();
    let key = rcgen::KeyPair::generate().expect("generate a key");
    let params = rcgen::CertificateParams::new(names.clone()).expect("valid names");
    let cert = params.self_signed(&key).expect("self-sign");
    Arc::new(TlsCertificate {
        source: format!("default/{}", names.join("+")),
        chain_pem: cert.pem().into_bytes(),
        key_pem: key.serialize_pem().into_bytes(),
    })
}

fn listener(
    name: &str,
    hostname: Option<&str>,
    tls: Option<Arc<TlsCertificate>>,
) -> Arc<HttpListener> {
    Arc::new(HttpListener {
        gateway: "default/gateway".into(),
        name: name.into(),
        hostname: hostname.map(HostnameMatch::parse),
        port: 443,
        scheme: RedirectScheme::Https,
        routes: RouteTable::new(Vec::new()),
        tls,
        client_validation: None,
    })
}

fn bind(listeners: Vec<Arc<HttpListener>>) -> ir::Bind {
    let mut bind = ir::Bind {
        http: listeners,
        ..ir::Bind::default()
    };
    bind.sort_listeners();
    bind
}

fn config(listeners: Vec<Arc<HttpListener>>) -> Arc<ir::Config> {
    Arc::new(ir::Config {
        binds: BTreeMap::from([(BIND, bind(listeners))]),
        ..ir::Config::default()
    })
}

fn name_of(selected: Option<&Arc<HttpListener>>) -> Option<&str> {
    selected.map(|listener| listener.name.as_str())
}

fn served(key: Option<Arc<CertifiedKey>>) -> Option<CertificateDer<'static>> {
    key.and_then(|key| {
        key.end_entity_cert()
            .ok()
            .map(|cert| cert.clone().into_owned())
    })
}

fn leaf(certificate: &TlsCertificate) -> Option<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(&certificate.chain_pem)
        .next()
        .and_then(Result::ok)
}

#[test]
fn server_name_selects_like_the_host() {
    let bind = bind(vec![
        listener("any", None, None),
        listener("wildcard", Some("*.example.com"), None),
        listener("exact", Some("a.example.com"), None),
    ]);
    for (sni, expected) in [
        ("a.example.com", "exact"),
        ("b.example.com", "wildcard"),
        ("other.test", "any"),
    ] {
        let sni = Hostname::from_request_host(sni);
        let selected = listener_for_server_name(&bind, sni.as_ref());
        assert_eq!(name_of(selected), Some(expected));
    }
    assert_eq!(name_of(listener_for_server_name(&bind, None)), Some("any"));
}

#[test]
fn without_server_name_the_most_specific_listener_is_the_fallback() {
    let bind = bind(vec![
        listener("wildcard", Some("*.example.com"), None),
        listener("exact", Some("a.example.com"), None),
    ]);
    assert_eq!(
        name_of(listener_for_server_name(&bind, None)),
        Some("exact")
    );
    let unmatched = Hostname::from_request_host("other.test");
    assert_eq!(
        name_of(listener_for_server_name(&bind, unmatched.as_ref())),
        None
    );
}

#[test]
fn without_server_name_ties_break_as_listener_for_does() {
    let bind = bind(vec![
        listener("first", None, None),
        listener("second", None, None),
    ]);
    let by_host = bind.listener_for("anything.test");
    let by_default = listener_for_server_name(&bind, None);
    assert_eq!(name_of(by_default), name_of(by_host));
}

#[test]
fn certificates_follow_the_server_name() {
    let exact = certificate(&["a.example.com"]);
    let wildcard = certificate(&["*.example.com"]);
    let config = config(vec![
        listener(
            "wildcard",
            Some("*.example.com"),
            Some(Arc::clone(&wildcard)),
        ),
        listener("exact", Some("a.example.com"), Some(Arc::clone(&exact))),
    ]);
    let certificates = Certificates::load(config, &Certificates::empty());
    assert!(certificates.terminates(BIND));
    let resolve = |sni| served(certificates.resolve(BIND, sni));
    assert_eq!(resolve(Some("A.Example.com")), leaf(&exact));
    assert_eq!(resolve(Some("b.example.com")), leaf(&wildcard));
    // Without SNI, the most specific listener (there is none without hostname).
    assert_eq!(resolve(None), leaf(&exact));
    assert_eq!(resolve(Some("other.test")), None);
    let other_bind = SocketAddr::from(([127, 0, 0, 1], 8443));
    assert!(
        certificates
            .resolve(other_bind, Some("a.example.com"))
            .is_none()
    );
    assert!(!certificates.terminates(other_bind));
}

#[test]
fn unchanged_certificates_are_not_parsed_again() {
    let kept = certificate(&["kept.example.com"]);
    let first = Certificates::load(
        config(vec![listener("kept", None, Some(Arc::clone(&kept)))]),
        &Certificates::empty(),
    );
    // An equal certificate in a new `Arc`, as the next translation produces it.
    let again = Arc::new(TlsCertificate::clone(&kept));
    let second = Certificates::load(config(vec![listener("kept", None, Some(again))]), &first);
    let before = first.resolve(BIND, None).expect("loaded");
    let after = second.resolve(BIND, None).expect("reused");
    assert!(Arc::ptr_eq(&before, &after));
}

#[test]
fn unusable_certificates_fail_only_their_listener() {
    let good = certificate(&["good.example.com"]);
    let other = certificate(&["other.example.com"]);
    let mismatched = Arc::new(TlsCertificate {
        source: "default/mismatched".into(),
        chain_pem: good.chain_pem.clone(),
        key_pem: other.key_pem.clone(),
    });
    let garbage = Arc::new(TlsCertificate {
        source: "default/garbage".into(),
        chain_pem: b"not pem".to_vec(),
        key_pem: b"not pem either".to_vec(),
    });
    let config = config(vec![
        listener("good", Some("good.example.com"), Some(Arc::clone(&good))),
        listener("mismatched", Some("bad.example.com"), Some(mismatched)),
        listener("garbage", Some("garbage.example.com"), Some(garbage)),
    ]);
    let certificates = Certificates::load(config, &Certificates::empty());
    assert!(
        certificates
            .resolve(BIND, Some("bad.example.com"))
            .is_none()
    );
    assert!(
        certificates
            .resolve(BIND, Some("garbage.example.com"))
            .is_none()
    );
    assert_eq!(
        served(certificates.resolve(BIND, Some("good.example.com"))),
        leaf(&good)
    );
}

#[test]
fn pem_errors_are_told_apart() {
    let provider = provider();
    let good = certificate(&["good.example.com"]);
    let with = |chain: &[u8], key: &[u8]| {
        certified_key(
            &TlsCertificate {
                source: "default/test".into(),
                chain_pem: chain.to_vec(),
                key_pem: key.to_vec(),
            },
            &provider,
        )
    };
    assert!(with(&good.chain_pem, &good.key_pem).is_ok());
    assert!(matches!(
        with(b"", &good.key_pem),
        Err(CertificateError::NoCertificate)
    ));
    assert!(matches!(
        with(&good.chain_pem, b""),
        Err(CertificateError::Key(_))
    ));
    let other = certificate(&["other.example.com"]);
    assert!(matches!(
        with(&good.chain_pem, &other.key_pem),
        Err(CertificateError::Rejected(_))
    ));
}

fn terminate_config(certificates: &[(&str, Arc<TlsCertificate>)]) -> Arc<ir::Config> {
    let tls_terminate = certificates
        .iter()
        .map(|(name, certificate)| {
            Arc::new(TlsTerminateListener {
                gateway: "default/gateway".into(),
                name: (*name).into(),
                hostname: Some(HostnameMatch::parse(name)),
                tls: Arc::clone(certificate),
                routes: Vec::new(),
            })
        })
        .collect();
    let bind = ir::Bind {
        tls_terminate,
        ..ir::Bind::default()
    };
    Arc::new(ir::Config {
        binds: BTreeMap::from([(BIND, bind)]),
        ..ir::Config::default()
    })
}

#[test]
fn terminate_listeners_get_acceptors_of_their_own_certificate() {
    let good = certificate(&["good.example.com"]);
    let garbage = Arc::new(TlsCertificate {
        source: "default/garbage".into(),
        chain_pem: b"not pem".to_vec(),
        key_pem: b"not pem either".to_vec(),
    });
    let config = terminate_config(&[
        ("good.example.com", Arc::clone(&good)),
        ("bad.example.com", garbage),
    ]);
    let certificates = Certificates::load(Arc::clone(&config), &Certificates::empty());
    // Terminate-and-relay listeners do not make the socket an HTTPS socket.
    assert!(!certificates.terminates(BIND));
    let listeners = &config.binds[&BIND].tls_terminate;
    assert!(certificates.acceptor_for(BIND, &listeners[0]).is_some());
    assert!(certificates.acceptor_for(BIND, &listeners[1]).is_none());
    // A listener of another config (even an equal one) is not this snapshot's.
    let stranger = Arc::new(TlsTerminateListener::clone(&listeners[0]));
    assert!(certificates.acceptor_for(BIND, &stranger).is_none());
    let other_bind = SocketAddr::from(([127, 0, 0, 1], 8443));
    assert!(
        certificates
            .acceptor_for(other_bind, &listeners[0])
            .is_none()
    );

    // The next config with the same certificate reuses what was loaded, acceptor included.
    let again = terminate_config(&[("good.example.com", Arc::new(TlsCertificate::clone(&good)))]);
    let next = Certificates::load(Arc::clone(&again), &certificates);
    let reused = next.acceptor_for(BIND, &again.binds[&BIND].tls_terminate[0]);
    let first = certificates.acceptor_for(BIND, &listeners[0]);
    assert!(matches!((first, reused), (Some(a), Some(b)) if Arc::ptr_eq(a.config(), b.config())));
}
