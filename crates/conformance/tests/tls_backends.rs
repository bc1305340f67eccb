//! Self-test of the backends that serve TLS, with real sockets on loopback and no portcullis:
//! the runner talks to a backend pod directly, as if the Gateway passed connections through.
//! Deployments are shaped like upstream's `tcp-backend` and
//! `tls-backend-with-client-cert-validation`, so their certificates come from the generated
//! Secrets and ConfigMaps through their volumes, as in a real run.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use serde_json::{Value, json};

use conformance::backends::{AddressAllocator, Backends, Pod, TCP_PORT, TLS_PORT};
use conformance::client::{self, Outgoing, Protocol};
use conformance::manifests::{Manifests, parse_documents};
use conformance::stream_cases::{self, TcpEchoExpect};
use conformance::tcp_echo::TcpAssertions;
use conformance::tls::{ALPN_H2, Keyring, TrustRef};

const INFRA: &str = "gateway-conformance-infra";

const DEPLOYMENTS: &str = "
kind: Deployment
metadata: {name: tcp-backend, namespace: gateway-conformance-infra}
spec:
  template:
    metadata: {labels: {app: tcp-backend}}
    spec:
      containers:
      - name: tcp-backend
        image: echo-basic
        volumeMounts: [{name: secret-volume, mountPath: /etc/secret-volume}]
        env:
        - {name: TLS_SERVER_CERT, value: /etc/secret-volume/crt}
        - {name: TLS_SERVER_PRIV_KEY, value: /etc/secret-volume/key}
        - {name: TCP_ECHO_SERVER, value: '1'}
      volumes:
      - name: secret-volume
        secret:
          secretName: tls-passthrough-checks-certificate
          items: [{key: tls.crt, path: crt}, {key: tls.key, path: key}]
---
kind: Deployment
metadata: {name: tls-backend-with-client-cert-validation, namespace: gateway-conformance-infra}
spec:
  template:
    metadata: {labels: {app: tls-backend}}
    spec:
      containers:
      - name: tls-backend
        image: echo-basic
        volumeMounts:
        - {name: secret-volume, mountPath: /etc/secret-volume}
        - {name: configmap-volume, mountPath: /etc/configmap-volume}
        env:
        - {name: TLS_SERVER_CERT, value: /etc/secret-volume/crt}
        - {name: TLS_SERVER_PRIVKEY, value: /etc/secret-volume/key}
        - {name: TLS_CLIENT_CACERTS, value: /etc/configmap-volume/ca}
      volumes:
      - name: secret-volume
        secret:
          secretName: tls-checks-certificate
          items: [{key: tls.crt, path: crt}, {key: tls.key, path: key}]
      - name: configmap-volume
        configMap:
          name: tls-checks-ca-certificate
          items: [{key: ca.crt, path: ca}]
";

/// The two pods from `127.0.203.<first>`, away from the addresses a concurrent run hands out,
/// with the generated objects as the keyring.
async fn start(first: u8) -> (Backends, Keyring, Ipv4Addr, Ipv4Addr) {
    let generated = conformance::certs::generated_objects().expect("generated objects");
    let mut manifests = Manifests::default();
    for doc in parse_documents(DEPLOYMENTS).expect("valid yaml") {
        manifests.upsert(doc).expect("named document");
    }
    let mut addresses = AddressAllocator::starting_at(Ipv4Addr::new(127, 0, 203, first));
    let pods = Pod::plan_all(&manifests, &mut addresses, &mut rand::rng()).expect("plan");
    let (tcp, https) = (pods[0].address, pods[1].address);
    let keyring = Keyring::from_objects(&generated);
    let backends = Backends::start(pods, &keyring).await.expect("start");
    (backends, keyring, tcp, https)
}

fn expect(backend_is_tls: bool, sni_seen: Option<&str>) -> TcpEchoExpect {
    TcpEchoExpect::from_value(&json!({
        "backend_is_tls": backend_is_tls,
        "backend_pod_prefix": "tcp-backend-",
        "namespace": INFRA,
        "sni_seen": sni_seen,
    }))
    .expect("valid expect block")
}

#[tokio::test]
async fn tcp_echo_answers_in_plain_and_over_tls() {
    let (_backends, keyring, address, _) = start(180).await;

    let plain = stream_cases::conversation(SocketAddr::from((address, TCP_PORT)), None)
        .await
        .expect("plain conversation");
    assert_eq!(
        stream_cases::check_tcp_echo(&expect(false, None), &plain),
        Ok(())
    );

    let tls = keyring
        .client(
            "abc.example.com",
            &TrustRef::Secret(format!("{INFRA}/tls-passthrough-checks-certificate")),
            None,
            &[],
        )
        .expect("client settings");
    let encrypted = stream_cases::conversation(SocketAddr::from((address, TLS_PORT)), Some(&tls))
        .await
        .expect("TLS conversation");
    assert_eq!(
        stream_cases::check_tcp_echo(&expect(true, Some("abc.example.com")), &encrypted),
        Ok(())
    );
    let test: TcpAssertions = serde_json::from_str(&encrypted.test).expect("TEST json");
    let handshake = test.tls.expect("tls block");
    assert_eq!(handshake.version, "TLS 1.3");
    assert!(
        handshake.cipher_suite.starts_with("TLS_AES_"),
        "{handshake:?}"
    );
    assert_eq!(handshake.curves, "X25519");
    assert_eq!(
        (test.tcpport.as_str(), test.tlsport.as_str()),
        ("3000", "8443")
    );
}

#[tokio::test]
async fn https_echo_reports_the_handshake_and_client_certificate() {
    let (_backends, keyring, _, address) = start(190).await;
    let tls = keyring
        .client(
            "abc.example.com",
            &TrustRef::Secret(format!("{INFRA}/tls-checks-certificate")),
            Some(&TrustRef::Secret(format!(
                "{INFRA}/tls-checks-client-certificate"
            ))),
            &[ALPN_H2],
        )
        .expect("client settings");
    let outgoing = Outgoing {
        protocol: Protocol::Http2,
        method: "GET".to_owned(),
        target: "/backendTLS".to_owned(),
        host: "abc.example.com".to_owned(),
        headers: Vec::new(),
        tls: Some(tls),
    };
    let reply = client::exchange(
        SocketAddr::from((address, TLS_PORT)),
        &outgoing,
        false,
        Duration::from_secs(10),
    )
    .await
    .expect("the HTTPS echo answers");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.client_cert_requested, Some(true));
    let body: Value = serde_json::from_slice(&reply.body).expect("echo json");
    assert_eq!(body["proto"], "HTTP/2.0");
    assert_eq!(body["httpPort"], "3000");
    let handshake = &body["tls"];
    assert_eq!(handshake["version"], "TLSv1.3");
    assert_eq!(handshake["serverName"], "abc.example.com");
    assert_eq!(handshake["negotiatedProtocol"], "h2");
    let presented = handshake["peerCertificates"][0]
        .as_str()
        .unwrap_or_default();
    assert!(
        presented.starts_with("-----BEGIN CERTIFICATE-----\n"),
        "{handshake}"
    );
}
