//! The TCP echo backend (README "What the TCP echo backend answers"), standing in for
//! upstream's echo image with `TCP_ECHO_SERVER=1`: plain TCP on 3000 and, when the
//! Deployment mounts a certificate (`TLS_SERVER_CERT` and `TLS_SERVER_PRIV_KEY`), TLS on 8443.
//!
//! On connect, after the handshake for TLS, it sends the welcome line
//! `Gateway API Test TCP Server`, then answers line by line: `PING` → `PONG`, `IS_TLS` →
//! `true`/`false`, `TEST` → one line of JSON ([`TcpAssertions`]). Any other line gets no
//! answer, as upstream's does. [`reply`] is that protocol as a pure function; the runner's
//! `tcp-echo` cases parse the `TEST` line with the same [`TcpAssertions`] type.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite};
use tokio::io::{AsyncWriteExt as _, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::echo::accept_loop;
use crate::tls::server::TlsFacts;

/// The first line the backend sends on every connection.
pub const WELCOME_LINE: &str = "Gateway API Test TCP Server";

/// Longest line the backend reads. Upstream reads with Go's `bufio.Scanner`, whose default
/// limit is 64 KiB; a longer line ends its loop and so the connection.
const MAX_LINE: u64 = 64 * 1024;

/// How long a TLS client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the backend process would learn from its environment.
#[derive(Debug, Clone)]
pub struct TcpEchoIdentity {
    /// `NAMESPACE`.
    pub namespace: String,
    /// `POD_NAME`.
    pub pod: String,
    /// `TCP_PORT` (default 3000).
    pub tcp_port: u16,
    /// `TLS_PORT` (default 8443); reported even when no TLS listener runs, as upstream does.
    pub tls_port: u16,
}

/// The `TEST` answer: the pod's context and, on TLS connections, the handshake. Field names
/// and order are upstream's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpAssertions {
    /// `NAMESPACE`.
    #[serde(default)]
    pub namespace: String,
    /// `INGRESS_NAME` (always empty here).
    #[serde(default)]
    pub ingress: String,
    /// `SERVICE_NAME` (always empty here).
    #[serde(default)]
    pub service: String,
    /// `POD_NAME`.
    #[serde(default)]
    pub pod: String,
    /// The plain TCP port, as text.
    #[serde(default)]
    pub tcpport: String,
    /// The TLS port, as text; omitted when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tlsport: String,
    /// Whether this connection came in over TLS.
    #[serde(rename = "isTLS", default)]
    pub is_tls: bool,
    /// The handshake, on TLS connections only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TcpTlsAssertions>,
}

/// The `tls` block of the `TEST` answer, named as Go's `crypto/tls` names things.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpTlsAssertions {
    /// `TLS 1.3` or `TLS 1.2`.
    #[serde(default)]
    pub version: String,
    /// The SNI the backend saw.
    #[serde(default)]
    pub server_name: String,
    /// The ALPN protocol; omitted when none was agreed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub negotiated_protocol: String,
    /// The key exchange group, e.g. `X25519`; omitted when unknown.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub curves: String,
    /// IANA name of the cipher suite, e.g. `TLS_AES_128_GCM_SHA256`.
    #[serde(default)]
    pub cipher_suite: String,
}

impl TcpAssertions {
    /// The answer for one connection; `tls` is `None` on the plain port.
    pub fn new(identity: &TcpEchoIdentity, tls: Option<&TlsFacts>) -> Self {
        Self {
            namespace: identity.namespace.clone(),
            ingress: String::new(),
            service: String::new(),
            pod: identity.pod.clone(),
            tcpport: identity.tcp_port.to_string(),
            tlsport: identity.tls_port.to_string(),
            is_tls: tls.is_some(),
            tls: tls.map(|facts| TcpTlsAssertions {
                version: facts.go_version_name(),
                server_name: facts.server_name.clone().unwrap_or_default(),
                negotiated_protocol: facts.negotiated_protocol(),
                curves: facts.go_curve_name(),
                cipher_suite: facts.go_cipher_suite_name(),
            }),
        }
    }
}

/// The answer to one received line (without or with its `\n`; a trailing `\r` is dropped as
/// Go's line scanner does), newline included; `None` for lines the backend ignores.
pub fn reply(line: &[u8], assertions: &TcpAssertions) -> Option<String> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    match line {
        b"PING" => Some("PONG\n".to_owned()),
        b"IS_TLS" => Some(format!("{}\n", assertions.is_tls)),
        b"TEST" => {
            let json = serde_json::to_string(assertions)
                .expect("a struct of strings and booleans always serialises");
            Some(format!("{json}\n"))
        }
        _ => None,
    }
}

/// Serves the line protocol on `listener` (over TLS when `tls` is given) until the task is
/// aborted. Dropping the task aborts every connection it started.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    identity: Arc<TcpEchoIdentity>,
) {
    accept_loop(listener, move |stream, _| {
        serve_connection(stream, tls.clone(), identity.clone())
    })
    .await;
}

async fn serve_connection(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    identity: Arc<TcpEchoIdentity>,
) {
    let Some(acceptor) = tls else {
        return converse(stream, &TcpAssertions::new(&identity, None)).await;
    };
    // A failed handshake just ends the connection, as with Go's `tls.Listen`.
    if let Ok(Ok(stream)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        let facts = TlsFacts::of(stream.get_ref().1);
        converse(stream, &TcpAssertions::new(&identity, Some(&facts))).await;
    }
}

/// The welcome line, then one answer per line until the peer closes, a read fails or a line
/// is too long.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(stream: S, assertions: &TcpAssertions) {
    let mut stream = BufReader::new(stream);
    if send(&mut stream, &format!("{WELCOME_LINE}\n"))
        .await
        .is_err()
    {
        return;
    }
    let mut line = Vec::new();
    loop {
        line.clear();
        match (&mut stream)
            .take(MAX_LINE + 1)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => break,
            Ok(read) if read as u64 > MAX_LINE => break,
            Ok(_) => {}
        }
        if let Some(answer) = reply(&line, assertions)
            && send(&mut stream, &answer).await.is_err()
        {
            return;
        }
    }
    // Closes politely (a TLS close_notify); the peer may already be gone.
    let _ = stream.shutdown().await;
}

async fn send<S: AsyncWrite + Unpin>(stream: &mut S, text: &str) -> std::io::Result<()> {
    stream.write_all(text.as_bytes()).await?;
    stream.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{CipherSuite, NamedGroup, ProtocolVersion};

    fn identity() -> TcpEchoIdentity {
        TcpEchoIdentity {
            namespace: "gateway-conformance-infra".to_owned(),
            pod: "tcp-backend-0123456789-abcde".to_owned(),
            tcp_port: 3000,
            tls_port: 8443,
        }
    }

    fn tls_facts() -> TlsFacts {
        TlsFacts {
            version: Some(ProtocolVersion::TLSv1_3),
            server_name: Some("abc.example.com".to_owned()),
            alpn: None,
            cipher_suite: Some(CipherSuite::TLS13_AES_256_GCM_SHA384),
            key_exchange: Some(NamedGroup::X25519),
            peer_certificates: Vec::new(),
        }
    }

    #[test]
    fn lines_get_upstreams_answers() {
        let plain = TcpAssertions::new(&identity(), None);
        assert_eq!(reply(b"PING\n", &plain).as_deref(), Some("PONG\n"));
        assert_eq!(reply(b"PING\r\n", &plain).as_deref(), Some("PONG\n"));
        assert_eq!(reply(b"PING", &plain).as_deref(), Some("PONG\n"));
        assert_eq!(reply(b"IS_TLS\n", &plain).as_deref(), Some("false\n"));
        let tls = TcpAssertions::new(&identity(), Some(&tls_facts()));
        assert_eq!(reply(b"IS_TLS\n", &tls).as_deref(), Some("true\n"));
        for ignored in [&b"ping\n"[..], b" PING\n", b"\n", b"HELLO\n", b"\xff\n"] {
            assert_eq!(reply(ignored, &plain), None, "{ignored:?}");
        }
    }

    #[tokio::test]
    async fn conversation_ends_at_a_line_longer_than_upstreams_limit() {
        let (client, server) = tokio::io::duplex(1 << 20);
        let backend = tokio::spawn(async move {
            converse(server, &TcpAssertions::new(&identity(), None)).await;
        });
        let mut client = BufReader::new(client);
        client.write_all(b"HELLO\nPING\r\n").await.expect("written");
        let mut text = String::new();
        for want in [format!("{WELCOME_LINE}\n"), "PONG\n".to_owned()] {
            text.clear();
            client.read_line(&mut text).await.expect("a line");
            assert_eq!(text, want, "HELLO gets no answer");
        }
        let long = vec![b'x'; usize::try_from(MAX_LINE).expect("small") + 1];
        client.write_all(&long).await.expect("written");
        text.clear();
        assert_eq!(client.read_line(&mut text).await.ok(), Some(0), "closed");
        backend.await.expect("the backend task ends");
    }

    #[test]
    fn plain_test_answer_has_no_tls_block() {
        let answer = reply(b"TEST\n", &TcpAssertions::new(&identity(), None)).expect("answer");
        assert_eq!(
            answer,
            concat!(
                r#"{"namespace":"gateway-conformance-infra","ingress":"","service":"","#,
                r#""pod":"tcp-backend-0123456789-abcde","tcpport":"3000","tlsport":"8443","#,
                r#""isTLS":false}"#,
                "\n"
            )
        );
    }

    #[test]
    fn tls_test_answer_reports_the_handshake() {
        let answer = reply(
            b"TEST\n",
            &TcpAssertions::new(&identity(), Some(&tls_facts())),
        )
        .expect("answer");
        let json: serde_json::Value = serde_json::from_str(&answer).expect("one JSON line");
        assert_eq!(json["isTLS"], true);
        assert_eq!(
            json["tls"],
            serde_json::json!({
                "version": "TLS 1.3",
                "serverName": "abc.example.com",
                "curves": "X25519",
                "cipherSuite": "TLS_AES_256_GCM_SHA384",
            }),
            "negotiatedProtocol is omitted when empty"
        );
        let parsed: TcpAssertions = serde_json::from_str(&answer).expect("round trip");
        assert_eq!(
            parsed.tls.map(|t| t.server_name).as_deref(),
            Some("abc.example.com")
        );
    }
}
