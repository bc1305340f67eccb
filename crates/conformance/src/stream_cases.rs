//! Connection-level traffic cases of TLS routes (README "`tcp-echo` (TLS routes)" and
//! "`tls-connection-rejected`"): a TLS connection to the Gateway that either carries the TCP
//! echo's line protocol to a backend or must be refused during its handshake.
//!
//! What a conversation must show is [`check_tcp_echo`], a pure function of the expectation
//! and the [`Transcript`]; how a refused handshake must end is `expect::tls_connection_rejected`.
//! The rest is sockets and the README's retry loop (every 1 s for up to 30 s, until one
//! connection passes).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde::Deserialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncReadExt as _, AsyncWrite};
use tokio::io::{AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

use crate::case::Case;
use crate::client;
use crate::expect;
use crate::failure::Failure;
use crate::tcp_echo::{TcpAssertions, WELCOME_LINE};
use crate::tls::{Keyring, TlsClient, TrustRef};
use crate::traffic::{REQUEST_TIMEOUT, TrafficContext, gateway_address};

/// Longest line the runner accepts from the TCP echo.
const MAX_LINE: u64 = 64 * 1024;

/// `request` of `tcp-echo`.
#[derive(Debug, Clone, Deserialize)]
pub struct TcpEchoRequest {
    /// Connect with TLS (the default; every case does).
    #[serde(default = "yes")]
    pub tls: bool,
    /// The TLS server name.
    #[serde(default)]
    pub sni: Option<String>,
    /// `1.2` or `1.3`.
    #[serde(default)]
    pub min_tls_version: Option<String>,
    /// The only trusted root (`{secret}` or `{configmap, key}`; see `tls`).
    #[serde(default)]
    pub trust: Option<Value>,
}

/// `expect` of `tcp-echo`.
#[derive(Debug, Clone, Deserialize)]
pub struct TcpEchoExpect {
    /// The first line the backend sends.
    #[serde(default = "welcome_line")]
    pub welcome_line: String,
    /// The answer to `PING`.
    #[serde(default = "pong")]
    pub ping_reply: String,
    /// The answer to `IS_TLS`: whether the backend itself terminated TLS.
    pub backend_is_tls: bool,
    /// The answering pod's name starts with this.
    #[serde(default)]
    pub backend_pod_prefix: String,
    /// The `namespace` of the `TEST` answer.
    pub namespace: String,
    /// The SNI the backend saw (`tls.serverName` of the `TEST` answer), when given.
    #[serde(default)]
    pub sni_seen: Option<String>,
}

/// `request` of `tls-connection-rejected`.
#[derive(Debug, Clone, Deserialize)]
pub struct TlsDialRequest {
    /// The TLS server name.
    pub sni: String,
    /// `1.2` or `1.3`.
    #[serde(default)]
    pub min_tls_version: Option<String>,
    /// What the client trusts; upstream uses the system roots.
    #[serde(default)]
    pub trust: Option<Value>,
}

/// The lines of one `tcp-echo` conversation, without their line endings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transcript {
    /// The line the backend sent first.
    pub welcome: String,
    /// The answer to `PING`.
    pub ping: String,
    /// The answer to `IS_TLS`.
    pub is_tls: String,
    /// The answer to `TEST`.
    pub test: String,
}

impl TcpEchoRequest {
    /// Converts a case's `request` block.
    pub fn from_value(value: &Value) -> anyhow::Result<Self> {
        serde_json::from_value(value.clone()).context("request block")
    }
}

impl TcpEchoExpect {
    /// Converts a case's `expect` block.
    pub fn from_value(value: &Value) -> anyhow::Result<Self> {
        serde_json::from_value(value.clone()).context("expect block")
    }
}

impl TlsDialRequest {
    /// Converts a case's `request` block.
    pub fn from_value(value: &Value) -> anyhow::Result<Self> {
        serde_json::from_value(value.clone()).context("request block")
    }
}

/// README `tcp-echo`: the welcome line and the `PING` answer as expected, `IS_TLS` equal to
/// `backend_is_tls`, and a `TEST` answer from the expected namespace, from a pod whose name
/// starts with `backend_pod_prefix` and, when `sni_seen` is given, that saw that SNI.
pub fn check_tcp_echo(expect: &TcpEchoExpect, transcript: &Transcript) -> Result<(), String> {
    if transcript.welcome != expect.welcome_line {
        return Err(format!(
            "welcome line {:?}, want {:?}",
            transcript.welcome, expect.welcome_line
        ));
    }
    if transcript.ping != expect.ping_reply {
        return Err(format!(
            "PING answered {:?}, want {:?}",
            transcript.ping, expect.ping_reply
        ));
    }
    let want_tls = expect.backend_is_tls.to_string();
    if transcript.is_tls != want_tls {
        let meaning = if expect.backend_is_tls {
            "the backend must terminate TLS itself (passthrough)"
        } else {
            "the gateway must terminate TLS and send plain TCP to the backend"
        };
        return Err(format!(
            "IS_TLS answered {:?}, want {want_tls:?}: {meaning}",
            transcript.is_tls
        ));
    }
    let test: TcpAssertions = serde_json::from_str(&transcript.test).map_err(|e| {
        format!(
            "TEST answer {:?} is not the echo's JSON: {e}",
            transcript.test
        )
    })?;
    if test.namespace != expect.namespace {
        return Err(format!(
            "backend namespace {:?}, want {:?}",
            test.namespace, expect.namespace
        ));
    }
    if !test.pod.starts_with(&expect.backend_pod_prefix) {
        return Err(format!(
            "answered by pod {:?}, want a pod starting with {:?}",
            test.pod, expect.backend_pod_prefix
        ));
    }
    if let Some(want) = &expect.sni_seen {
        match &test.tls {
            Some(tls) if &tls.server_name == want => {}
            Some(tls) => {
                return Err(format!(
                    "the backend saw SNI {:?}, want {want:?}",
                    tls.server_name
                ));
            }
            None => return Err(format!("the backend saw no TLS, want SNI {want:?}")),
        }
    }
    Ok(())
}

/// Runs a `tcp-echo` case: one conversation per try, a try every 1 s for up to 30 s, until
/// one passes.
pub async fn tcp_echo(case: &Case, ctx: &TrafficContext) -> Result<(), String> {
    let request = TcpEchoRequest::from_value(&case.request).map_err(|e| format!("{e:#}"))?;
    let expect = TcpEchoExpect::from_value(&case.expect).map_err(|e| format!("{e:#}"))?;
    let tls = match (request.tls, &request.sni) {
        (false, _) => None,
        (true, Some(sni)) => Some(tls_client(
            sni,
            request.trust.as_ref(),
            request.min_tls_version.as_deref(),
            &ctx.keyring,
        )?),
        (true, None) => return Err("a TLS tcp-echo case without `sni`".to_owned()),
    };
    let address = SocketAddr::new(gateway_address(case, ctx).await?, case.port.unwrap_or(443));
    let cap = ctx.consistency_cap();
    let started = Instant::now();
    let (mut tries, mut last) = (0, String::from("no connection"));
    while started.elapsed() < cap {
        tries += 1;
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, conversation(address, tls.as_ref()))
            .await
            .unwrap_or_else(|_| Err(format!("no conversation within {REQUEST_TIMEOUT:?}")));
        match outcome.and_then(|transcript| check_tcp_echo(&expect, &transcript)) {
            Ok(()) => return Ok(()),
            Err(why) => last = why,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(format!(
        "no passing conversation within {cap:.0?} ({tries} tries); last: {last}"
    ))
}

/// Runs a `tls-connection-rejected` case: TLS dial with the given SNI and no custom roots;
/// passes when the handshake ends with EOF or a reset; a dial every 1 s for up to 30 s.
pub async fn tls_connection_rejected(case: &Case, ctx: &TrafficContext) -> Result<(), String> {
    let request = TlsDialRequest::from_value(&case.request).map_err(|e| format!("{e:#}"))?;
    let tls = tls_client(
        &request.sni,
        request.trust.as_ref(),
        request.min_tls_version.as_deref(),
        &ctx.keyring,
    )?;
    let address = SocketAddr::new(gateway_address(case, ctx).await?, case.port.unwrap_or(443));
    let cap = ctx.consistency_cap();
    let started = Instant::now();
    let mut last = String::from("no dial");
    while started.elapsed() < cap {
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, handshake_only(address, &tls))
            .await
            .unwrap_or_else(|_| {
                Err(Failure::timeout(format!(
                    "no handshake within {REQUEST_TIMEOUT:?}"
                )))
            });
        match expect::tls_connection_rejected(&outcome) {
            Ok(()) => return Ok(()),
            Err(why) => last = why,
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    Err(format!("not rejected within {cap:.0?}; last: {last}"))
}

/// The client settings both case types share: `sni` as server name, `trust` as the only
/// root (system roots when absent), at least `min_tls_version`.
fn tls_client(
    sni: &str,
    trust: Option<&Value>,
    min_tls_version: Option<&str>,
    keyring: &Keyring,
) -> Result<TlsClient, String> {
    let trust = match trust {
        Some(trust) => TrustRef::from_value(trust).map_err(|e| e.to_string())?,
        None => TrustRef::SystemRoots,
    };
    let tls = keyring
        .client(sni, &trust, None, &[])
        .map_err(|e| format!("TLS settings: {e}"))?;
    match min_tls_version {
        None | Some("1.2") => Ok(tls),
        Some("1.3") => Ok(tls.require_tls13()),
        Some(other) => Err(format!("unsupported min_tls_version {other:?}")),
    }
}

/// One connection to `address`: TCP, the TLS handshake when `tls` is given, then the line
/// protocol. Fails on transport errors only; [`check_tcp_echo`] judges the transcript.
pub async fn conversation(
    address: SocketAddr,
    tls: Option<&TlsClient>,
) -> Result<Transcript, String> {
    client::ensure_loopback(address.ip()).map_err(|e| format!("{e:#}"))?;
    let tcp = TcpStream::connect(address)
        .await
        .map_err(|e| format!("connecting to {address}: {e}"))?;
    let Some(tls) = tls else {
        return converse(tcp).await;
    };
    let connection = tls.connection().map_err(|e| e.to_string())?;
    let stream = connection
        .handshake(tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    converse(stream).await
}

/// Reads the welcome line, then sends `PING`, `IS_TLS` and `TEST`, reading one answer each.
async fn converse<S: AsyncRead + AsyncWrite + Unpin>(stream: S) -> Result<Transcript, String> {
    let mut stream = BufReader::new(stream);
    let mut transcript = Transcript {
        welcome: read_line(&mut stream, "the welcome line").await?,
        ..Transcript::default()
    };
    for (command, answer) in [
        ("PING", &mut transcript.ping),
        ("IS_TLS", &mut transcript.is_tls),
        ("TEST", &mut transcript.test),
    ] {
        stream
            .write_all(format!("{command}\n").as_bytes())
            .await
            .map_err(|e| format!("sending {command}: {e}"))?;
        stream
            .flush()
            .await
            .map_err(|e| format!("sending {command}: {e}"))?;
        *answer = read_line(&mut stream, &format!("the answer to {command}")).await?;
    }
    Ok(transcript)
}

/// One line without its line ending; EOF (or 64 KiB) before a newline is an error naming
/// `what`.
async fn read_line<S: AsyncRead + Unpin>(
    stream: &mut BufReader<S>,
    what: &str,
) -> Result<String, String> {
    let mut line = Vec::new();
    (&mut *stream)
        .take(MAX_LINE)
        .read_until(b'\n', &mut line)
        .await
        .map_err(|e| format!("reading {what}: {e}"))?;
    let Some(line) = line.strip_suffix(b"\n") else {
        return Err(format!(
            "no complete line for {what} before EOF or {MAX_LINE} bytes (got {:?})",
            String::from_utf8_lossy(&line)
        ));
    };
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    Ok(String::from_utf8_lossy(line).into_owned())
}

/// Connects and runs the TLS handshake, nothing more. A refused TCP connection is a failure
/// too (classified as such), so the caller can tell it from a rejected handshake.
async fn handshake_only(address: SocketAddr, tls: &TlsClient) -> Result<(), Failure> {
    client::ensure_loopback(address.ip()).map_err(|e| Failure::setup(format!("{e:#}")))?;
    let connection = tls
        .connection()
        .map_err(|e| Failure::setup(e.to_string()))?;
    let outcome = async {
        let tcp = TcpStream::connect(address).await?;
        connection.handshake(tcp).await.map(drop)
    }
    .await;
    outcome.map_err(|error| {
        Failure::from_error(
            &anyhow::Error::new(error).context("TLS handshake"),
            Some(connection.client_cert_requested()),
        )
    })
}

fn yes() -> bool {
    true
}

fn welcome_line() -> String {
    WELCOME_LINE.to_owned()
}

fn pong() -> String {
    "PONG".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tcp_echo::{TcpEchoIdentity, reply};
    use crate::tls::server::TlsFacts;
    use serde_json::json;

    fn expect(is_tls: bool, sni_seen: Option<&str>) -> TcpEchoExpect {
        TcpEchoExpect::from_value(&json!({
            "backend_is_tls": is_tls,
            "backend_pod_prefix": "tcp-backend-",
            "namespace": "gateway-conformance-infra",
            "sni_seen": sni_seen,
        }))
        .expect("valid expect block")
    }

    /// What the crate's own TCP echo answers, with or without a handshake.
    fn transcript(pod: &str, sni: Option<&str>) -> Transcript {
        let identity = TcpEchoIdentity {
            namespace: "gateway-conformance-infra".to_owned(),
            pod: pod.to_owned(),
            tcp_port: 3000,
            tls_port: 8443,
        };
        let facts = sni.map(|sni| TlsFacts {
            server_name: Some(sni.to_owned()),
            ..TlsFacts::default()
        });
        let assertions = TcpAssertions::new(&identity, facts.as_ref());
        let answer = |line: &[u8]| {
            let text = reply(line, &assertions).expect("answered");
            text.trim_end_matches('\n').to_owned()
        };
        Transcript {
            welcome: WELCOME_LINE.to_owned(),
            ping: answer(b"PING"),
            is_tls: answer(b"IS_TLS"),
            test: answer(b"TEST"),
        }
    }

    #[test]
    fn passthrough_conversation_passes() {
        let seen = transcript("tcp-backend-abcdefghij-x2k9q", Some("abc.example.com"));
        assert_eq!(
            check_tcp_echo(&expect(true, Some("abc.example.com")), &seen),
            Ok(())
        );
    }

    #[test]
    fn terminated_conversation_passes_without_sni() {
        let seen = transcript("tcp-backend-abcdefghij-x2k9q", None);
        assert_eq!(check_tcp_echo(&expect(false, None), &seen), Ok(()));
    }

    #[test]
    fn each_expectation_can_fail() {
        let passthrough = transcript("tcp-backend-abcdefghij-x2k9q", Some("abc.example.com"));
        let failure = |expect: &TcpEchoExpect, seen: &Transcript| {
            check_tcp_echo(expect, seen).expect_err("must fail")
        };
        let why = failure(&expect(false, None), &passthrough);
        assert!(why.contains("IS_TLS answered \"true\""), "{why}");
        let why = failure(&expect(true, Some("other.example.com")), &passthrough);
        assert!(why.contains("saw SNI \"abc.example.com\""), "{why}");
        let plain = transcript("tcp-backend-abcdefghij-x2k9q", None);
        let why = failure(&expect(false, Some("abc.example.com")), &plain);
        assert!(why.contains("saw no TLS"), "{why}");

        let other_pod = transcript("infra-backend-v1-abcdefghij-x2k9q", None);
        assert!(failure(&expect(false, None), &other_pod).contains("answered by pod"));
        let mut other_namespace = expect(false, None);
        other_namespace.namespace = "elsewhere".to_owned();
        assert!(failure(&other_namespace, &plain).contains("backend namespace"));

        let mut broken = plain.clone();
        broken.welcome = "HTTP/1.1 400 Bad Request".to_owned();
        assert!(failure(&expect(false, None), &broken).starts_with("welcome line"));
        let mut broken = plain.clone();
        broken.ping = String::new();
        assert!(failure(&expect(false, None), &broken).starts_with("PING answered"));
        let mut broken = plain;
        broken.test = "{".to_owned();
        assert!(failure(&expect(false, None), &broken).contains("not the echo's JSON"));
    }

    #[test]
    fn case_blocks_parse_with_defaults() {
        let request = TcpEchoRequest::from_value(&json!({
            "tls": true,
            "sni": "abc.example.com",
            "min_tls_version": "1.2",
            "trust": {"secret": "ns/s"},
        }))
        .expect("request");
        assert!(request.tls);
        assert_eq!(request.sni.as_deref(), Some("abc.example.com"));
        let expect = expect(true, None);
        assert_eq!(expect.welcome_line, WELCOME_LINE);
        assert_eq!(expect.ping_reply, "PONG");
        assert_eq!(expect.sni_seen, None);
        assert!(TcpEchoExpect::from_value(&json!({"namespace": "ns"})).is_err());
    }

    #[tokio::test]
    async fn lines_are_read_without_endings_and_eof_is_an_error() {
        let mut reader = BufReader::new(&b"first\r\nsecond\nrest"[..]);
        assert_eq!(read_line(&mut reader, "a").await.as_deref(), Ok("first"));
        assert_eq!(read_line(&mut reader, "b").await.as_deref(), Ok("second"));
        let why = read_line(&mut reader, "c").await.expect_err("no newline");
        assert!(why.contains("no complete line for c"), "{why}");
    }
}
