//! Comparing one HTTP answer with a case's `expect` block (README "`http`", table of `expect`
//! keys), and judging the outcomes that must *not* be an answer (mode `connection-error`,
//! case type `tls-connection-rejected`). Pure: an outcome in, the first failing assertion out.

use std::collections::BTreeMap;

use http::Uri;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;

use crate::case::{BackendRequestExpect, HttpExpect, RedirectExpect};
use crate::client::Reply;
use crate::failure::{Failure, FailureKind};

/// The echo backend's JSON answer (the fields the checks read).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct EchoReply {
    /// Raw request target as the backend received it.
    #[serde(default)]
    pub path: String,
    /// Host header (or `:authority`) the backend received.
    #[serde(default)]
    pub host: String,
    /// Method the backend received.
    #[serde(default)]
    pub method: String,
    /// Canonical header name to received values.
    #[serde(default)]
    pub headers: BTreeMap<String, Vec<String>>,
    /// Backend namespace.
    #[serde(default)]
    pub namespace: String,
    /// Answering pod.
    #[serde(default)]
    pub pod: String,
    /// TLS details when the backend terminated TLS.
    #[serde(default)]
    pub tls: Option<EchoTls>,
}

/// `tls` of the echo answer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EchoTls {
    /// SNI the backend saw.
    #[serde(default)]
    pub server_name: String,
    /// Client certificates (PEM) the backend received.
    #[serde(default)]
    pub peer_certificates: Vec<String>,
}

/// Where the request went, to resolve a relative `Location`.
#[derive(Debug, Clone)]
pub struct RequestUrl {
    /// `http` or `https`.
    pub scheme: String,
    /// Host part of the URL (the gateway address).
    pub host: String,
    /// Port, `None` when it is the scheme default.
    pub port: Option<u16>,
}

impl EchoReply {
    /// README: when the reply's `Content-Type` is not exactly `application/json`, upstream
    /// treats path/host/namespace/pod as empty and the method as the one sent.
    pub fn from_reply(reply: &Reply, sent_method: &str) -> Result<Self, String> {
        if reply.joined("content-type").as_deref() != Some("application/json") {
            return Ok(Self {
                method: sent_method.to_owned(),
                ..Self::default()
            });
        }
        serde_json::from_slice(&reply.body).map_err(|e| format!("answer is not echo JSON: {e}"))
    }

    /// Values of a header the backend received (name case-insensitive).
    pub fn header(&self, name: &str) -> Option<&Vec<String>> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }
}

/// The deployment of a pod: its name without the last two dash-separated parts.
pub fn backend_name(pod: &str) -> &str {
    let mut end = pod.len();
    for _ in 0..2 {
        match pod[..end].rfind('-') {
            Some(dash) => end = dash,
            None => return pod,
        }
    }
    &pod[..end]
}

/// README: 408 and 504 are interchangeable; an answer of either passes, with no further
/// check, when the accepted list contains either.
pub fn timeout_equivalent(accepted: &[u16], actual: u16) -> bool {
    let timeout = |code: &u16| matches!(code, 408 | 504);
    timeout(&actual) && accepted.iter().any(timeout)
}

/// Compares one answer with the expectation; the error names the first failed assertion.
pub fn compare(
    expect: &HttpExpect,
    sent_method: &str,
    url: &RequestUrl,
    reply: &Reply,
) -> Result<(), String> {
    if timeout_equivalent(&expect.status, reply.status) {
        return Ok(());
    }
    if !expect.status.contains(&reply.status) {
        return Err(format!(
            "status {}, want one of {:?}{}",
            reply.status,
            expect.status,
            body_hint(reply)
        ));
    }
    client_cert_requested(expect.client_cert_requested, reply.client_cert_requested)?;
    match reply.status {
        200 | 204 => compare_success(expect, sent_method, reply),
        300..=399 => match &expect.redirect {
            Some(redirect) => compare_redirect(redirect, url, reply),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

/// README `connection-error`: "a single attempt that must fail below HTTP (TLS handshake
/// refused/aborted, connection closed); any HTTP response fails it". A refused TCP
/// connection, a reset, an EOF and a TLS alert count; the runner distrusting the server's
/// certificate does not (the gateway did not refuse anything), nor does a timeout or a
/// runner error. `client_cert_requested` is checked as for answers.
pub fn connection_error(
    outcome: &Result<Reply, Failure>,
    want_cert_request: Option<bool>,
) -> Result<(), String> {
    let failure = match outcome {
        Ok(reply) => {
            return Err(format!(
                "got HTTP {}, want a failure below HTTP{}",
                reply.status,
                body_hint(reply)
            ));
        }
        Err(failure) => failure,
    };
    if !failure.kind.is_refusal() {
        let why = match failure.kind {
            FailureKind::UntrustedServer => "the runner distrusted the server's certificate",
            FailureKind::Timeout => "neither an answer nor a refusal",
            FailureKind::Setup => "the runner could not send the request",
            _ => "not a refusal",
        };
        return Err(format!("{why}: {}", failure.detail));
    }
    client_cert_requested(want_cert_request, failure.client_cert_requested)
        .map_err(|why| format!("{why} (the connection failed: {})", failure.detail))
}

/// README `tls-connection-rejected`: "passes when the handshake ends with EOF or connection
/// reset"; a completed handshake or any other error (an alert, an untrusted certificate)
/// does not count. `handshake` is the outcome of the handshake alone.
pub fn tls_connection_rejected(handshake: &Result<(), Failure>) -> Result<(), String> {
    match handshake {
        Ok(()) => Err("the TLS handshake completed".to_owned()),
        Err(failure) if matches!(failure.kind, FailureKind::Closed | FailureKind::Reset) => Ok(()),
        Err(failure) => Err(format!(
            "the handshake failed, but not with EOF or a reset: {}",
            failure.detail
        )),
    }
}

/// README `client_cert_requested`: when the case says, the server must (or must not) have
/// asked for a client certificate during the handshake; `seen` is `None` without TLS.
fn client_cert_requested(want: Option<bool>, seen: Option<bool>) -> Result<(), String> {
    match (want, seen) {
        (None, _) => Ok(()),
        (Some(want), Some(seen)) if want == seen => Ok(()),
        (Some(true), Some(_)) => Err("the server did not ask for a client certificate".into()),
        (Some(false), Some(_)) => Err("the server asked for a client certificate".into()),
        (Some(_), None) => Err("client_cert_requested needs a TLS handshake".into()),
    }
}

fn compare_success(expect: &HttpExpect, sent_method: &str, reply: &Reply) -> Result<(), String> {
    let echo = EchoReply::from_reply(reply, sent_method)?;
    if let Some(prefix) = expect.backend.as_deref().filter(|b| !b.is_empty())
        && !echo.pod.starts_with(prefix)
    {
        return Err(format!(
            "answered by pod {:?}, want a pod of {prefix}",
            echo.pod
        ));
    }
    if let Some(namespace) = &expect.namespace
        && &echo.namespace != namespace
    {
        return Err(format!(
            "backend namespace {:?}, want {namespace:?}",
            echo.namespace
        ));
    }
    if let Some(request) = &expect.backend_request {
        compare_backend_request(request, &echo)?;
    }
    let squash = |s: &str| -> String {
        if expect.ignore_whitespace_in_response_headers {
            s.replace(' ', "")
        } else {
            s.to_owned()
        }
    };
    for (name, want) in &expect.response_headers {
        let have = reply
            .joined(name)
            .ok_or_else(|| format!("response header {name} missing"))?;
        if squash(&have) != squash(want) {
            return Err(format!("response header {name}: {have:?}, want {want:?}"));
        }
    }
    for (name, options) in &expect.response_headers_one_of {
        let have = reply
            .joined(name)
            .ok_or_else(|| format!("response header {name} missing"))?;
        if !options.iter().any(|o| squash(o) == squash(&have)) {
            return Err(format!(
                "response header {name}: {have:?}, want one of {options:?}"
            ));
        }
    }
    if let Some(name) = expect
        .response_absent_headers
        .iter()
        .find(|n| reply.joined(n).is_some())
    {
        return Err(format!("response header {name} present, must be absent"));
    }
    Ok(())
}

fn compare_backend_request(want: &BackendRequestExpect, echo: &EchoReply) -> Result<(), String> {
    let fields = [
        ("method", &want.method, &echo.method),
        ("path", &want.path, &echo.path),
        ("host", &want.host, &echo.host),
    ];
    for (field, want, have) in fields {
        if let Some(want) = want
            && want != have
        {
            return Err(format!("backend received {field} {have:?}, want {want:?}"));
        }
    }
    for (name, value) in &want.headers {
        let have = echo
            .header(name)
            .ok_or_else(|| format!("backend did not receive header {name}"))?;
        let joined = have.join(",");
        if &joined != value {
            return Err(format!("backend header {name}: {joined:?}, want {value:?}"));
        }
    }
    if let Some(name) = want
        .absent_headers
        .iter()
        .find(|n| echo.header(n).is_some())
    {
        return Err(format!("backend received header {name}, must be absent"));
    }
    if let Some(sni) = &want.sni {
        let seen = echo.tls.as_ref().map(|t| t.server_name.as_str());
        if seen != Some(sni.as_str()) {
            return Err(format!("backend TLS server name {seen:?}, want {sni:?}"));
        }
    }
    if let Some(client_cert) = &want.client_cert {
        let Some(der) = &want.client_cert_der else {
            return Err(format!(
                "backend_request.client_cert {client_cert} was not resolved to a certificate"
            ));
        };
        let presented = echo
            .tls
            .iter()
            .flat_map(|t| t.peer_certificates.iter())
            .any(|pem| {
                rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
                    .filter_map(Result::ok)
                    .any(|cert| cert.as_ref() == der.as_slice())
            });
        if !presented {
            return Err(format!(
                "backend did not receive the client certificate of {client_cert}"
            ));
        }
    }
    Ok(())
}

/// README `redirect`: scheme equal, host equal when given, port one of `port_one_of` (`''` =
/// no port), path equal (query ignored). A relative `Location` resolves against the URL.
fn compare_redirect(want: &RedirectExpect, url: &RequestUrl, reply: &Reply) -> Result<(), String> {
    let location = reply
        .joined("location")
        .ok_or("redirect without Location")?;
    let (scheme, host, port, path) = if location.starts_with('/') && !location.starts_with("//") {
        let uri: Uri = location
            .parse()
            .map_err(|e| format!("Location {location:?}: {e}"))?;
        (
            url.scheme.clone(),
            url.host.clone(),
            url.port.map(|p| p.to_string()).unwrap_or_default(),
            uri.path().to_owned(),
        )
    } else {
        let uri: Uri = location
            .parse()
            .map_err(|e| format!("Location {location:?}: {e}"))?;
        let host = uri.host().unwrap_or_default().to_owned();
        let port = uri
            .port()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default();
        (
            uri.scheme_str().unwrap_or_default().to_owned(),
            host,
            port,
            uri.path().to_owned(),
        )
    };
    if scheme != want.scheme {
        return Err(format!(
            "Location {location:?}: scheme {scheme:?}, want {:?}",
            want.scheme
        ));
    }
    if let Some(want_host) = &want.host
        && &host != want_host
    {
        return Err(format!(
            "Location {location:?}: host {host:?}, want {want_host:?}"
        ));
    }
    if !want.port_one_of.is_empty() && !want.port_one_of.contains(&port) {
        return Err(format!(
            "Location {location:?}: port {port:?}, want one of {:?}",
            want.port_one_of
        ));
    }
    if let Some(want_path) = &want.path
        && &path != want_path
    {
        return Err(format!(
            "Location {location:?}: path {path:?}, want {want_path:?}"
        ));
    }
    Ok(())
}

fn body_hint(reply: &Reply) -> String {
    let text = String::from_utf8_lossy(&reply.body);
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        let short: String = text.chars().take(120).collect();
        format!(" (body: {short:?})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn echo_reply(status: u16, body: serde_json::Value, extra: &[(&str, &str)]) -> Reply {
        let mut headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        headers.extend(extra.iter().map(|(n, v)| (n.to_string(), v.to_string())));
        Reply {
            status,
            headers,
            body: Bytes::from(body.to_string()),
            client_cert_requested: None,
        }
    }

    fn expect(yaml: &str) -> HttpExpect {
        serde_yaml_ng::from_str(yaml).expect("valid expect")
    }

    fn url() -> RequestUrl {
        RequestUrl {
            scheme: "http".into(),
            host: "127.0.100.1".into(),
            port: None,
        }
    }

    const ECHO: &str = r#"{"path": "/v2?x=1", "host": "example.com", "method": "GET", "namespace": "infra",
        "pod": "infra-backend-v1-abcdefghij-klmno", "headers": {"X-Header-Add": ["a", "b"], "User-Agent": ["x"]}}"#;

    fn echo() -> serde_json::Value {
        serde_json::from_str(ECHO).expect("json")
    }

    #[test]
    fn a_matching_echo_answer_passes() {
        let e = expect(
            "status: [200]\nbackend: infra-backend-v1\nnamespace: infra\nbackend_request: {method: GET, path: '/v2?x=1', host: example.com, headers: {x-header-add: 'a,b'}, absent_headers: [X-Gone]}\n",
        );
        assert_eq!(
            compare(&e, "GET", &url(), &echo_reply(200, echo(), &[])),
            Ok(())
        );
    }

    #[test]
    fn the_first_failing_assertion_is_reported() {
        let e = expect("status: [200]\nbackend: infra-backend-v2\nnamespace: infra\n");
        let error =
            compare(&e, "GET", &url(), &echo_reply(200, echo(), &[])).expect_err("wrong pod");
        assert!(error.contains("want a pod of infra-backend-v2"), "{error}");
        let e = expect("status: [404]\n");
        let error =
            compare(&e, "GET", &url(), &echo_reply(200, echo(), &[])).expect_err("wrong status");
        assert!(
            error.starts_with("status 200, want one of [404]"),
            "{error}"
        );
        let e = expect(
            "status: [200]\nbackend_request: {method: GET, path: /v2, absent_headers: [user-agent]}\n",
        );
        let error = compare(&e, "GET", &url(), &echo_reply(200, echo(), &[])).expect_err("path");
        assert_eq!(error, "backend received path \"/v2?x=1\", want \"/v2\"");
    }

    #[test]
    fn timeouts_408_and_504_are_interchangeable() {
        let e = expect("status: [504, 408]\n");
        let reply = Reply {
            status: 408,
            ..Reply::default()
        };
        assert_eq!(compare(&e, "GET", &url(), &reply), Ok(()));
        assert!(!timeout_equivalent(&[200], 504));
    }

    #[test]
    fn non_json_answers_have_an_empty_namespace() {
        let e = expect(
            "status: [200, 204]\nbackend: ''\nnamespace: ''\nbackend_request: {method: OPTIONS, path: ''}\n",
        );
        let reply = Reply {
            status: 204,
            headers: vec![("access-control-allow-origin".into(), "*".into())],
            body: Bytes::new(),
            client_cert_requested: None,
        };
        assert_eq!(compare(&e, "OPTIONS", &url(), &reply), Ok(()));
        let error =
            compare(&e, "OPTIONS", &url(), &echo_reply(200, echo(), &[])).expect_err("echo json");
        assert!(error.contains("namespace"), "{error}");
    }

    #[test]
    fn response_headers_compare_joined_values_case_insensitively() {
        let e = expect(
            "status: [200]\nresponse_headers: {X-A: '1,2'}\nresponse_headers_one_of: {x-b: ['p, q', 'q, p']}\nignore_whitespace_in_response_headers: true\nresponse_absent_headers: [X-C]\n",
        );
        let reply = echo_reply(200, echo(), &[("x-a", "1"), ("x-a", "2"), ("x-b", "q,p")]);
        assert_eq!(compare(&e, "GET", &url(), &reply), Ok(()));
        let reply = echo_reply(
            200,
            echo(),
            &[("x-a", "1"), ("x-a", "2"), ("x-b", "q,p"), ("x-c", "")],
        );
        assert_eq!(
            compare(&e, "GET", &url(), &reply),
            Err("response header X-C present, must be absent".into())
        );
    }

    #[test]
    fn redirects_compare_scheme_host_port_and_path() {
        let e = expect(
            "status: [302]\nredirect: {scheme: https, host: example.org, port_one_of: ['', '443'], path: /p}\n",
        );
        let redirect = |location: &str| Reply {
            status: 302,
            headers: vec![("location".into(), location.into())],
            ..Reply::default()
        };
        assert_eq!(
            compare(&e, "GET", &url(), &redirect("https://example.org/p?q=1")),
            Ok(())
        );
        assert_eq!(
            compare(&e, "GET", &url(), &redirect("https://example.org:443/p")),
            Ok(())
        );
        let error =
            compare(&e, "GET", &url(), &redirect("https://example.org:8443/p")).expect_err("port");
        assert!(error.contains("port \"8443\""), "{error}");
        let relative = expect(
            "status: [302]\nredirect: {scheme: http, host: 127.0.100.1, port_one_of: [''], path: /x}\n",
        );
        assert_eq!(compare(&relative, "GET", &url(), &redirect("/x")), Ok(()));
    }

    fn failed(kind: FailureKind, requested: Option<bool>) -> Result<Reply, Failure> {
        Err(Failure {
            kind,
            client_cert_requested: requested,
            detail: "detail".into(),
        })
    }

    #[test]
    fn connection_errors_pass_only_when_the_server_refused() {
        for kind in [
            FailureKind::Refused,
            FailureKind::Reset,
            FailureKind::Closed,
            FailureKind::Alert("CertificateRequired".into()),
        ] {
            assert_eq!(connection_error(&failed(kind, None), None), Ok(()));
        }
        let error = connection_error(&failed(FailureKind::UntrustedServer, Some(false)), None)
            .expect_err("the runner refused, not the gateway");
        assert!(error.starts_with("the runner distrusted"), "{error}");
        assert!(connection_error(&failed(FailureKind::Timeout, None), None).is_err());
        assert!(connection_error(&failed(FailureKind::Other, None), None).is_err());
        let answered = Ok(Reply {
            status: 403,
            ..Reply::default()
        });
        assert_eq!(
            connection_error(&answered, None),
            Err("got HTTP 403, want a failure below HTTP".into())
        );
    }

    #[test]
    fn connection_errors_check_the_certificate_request() {
        let alert = FailureKind::Alert("UnknownCA".into());
        assert_eq!(
            connection_error(&failed(alert.clone(), Some(true)), Some(true)),
            Ok(())
        );
        let error = connection_error(&failed(alert, Some(false)), Some(true))
            .expect_err("refused before asking");
        assert!(error.starts_with("the server did not ask"), "{error}");
        let error = connection_error(&failed(FailureKind::Refused, None), Some(true))
            .expect_err("no handshake at all");
        assert!(error.contains("needs a TLS handshake"), "{error}");
    }

    #[test]
    fn answers_check_the_certificate_request() {
        let e = expect("status: [200]\nclient_cert_requested: true\n");
        let mut reply = echo_reply(200, echo(), &[]);
        reply.client_cert_requested = Some(true);
        assert_eq!(compare(&e, "GET", &url(), &reply), Ok(()));
        reply.client_cert_requested = Some(false);
        assert!(compare(&e, "GET", &url(), &reply).is_err());
        reply.client_cert_requested = None;
        assert!(compare(&e, "GET", &url(), &reply).is_err());
    }

    #[test]
    fn tls_rejection_means_eof_or_reset_during_the_handshake() {
        let ended = |kind| -> Result<(), Failure> { failed(kind, Some(false)).map(|_| ()) };
        assert_eq!(tls_connection_rejected(&ended(FailureKind::Closed)), Ok(()));
        assert_eq!(tls_connection_rejected(&ended(FailureKind::Reset)), Ok(()));
        for kind in [
            FailureKind::Alert("UnrecognizedName".into()),
            FailureKind::UntrustedServer,
            FailureKind::Refused,
            FailureKind::Timeout,
        ] {
            assert!(
                tls_connection_rejected(&ended(kind.clone())).is_err(),
                "{kind:?}"
            );
        }
        assert!(tls_connection_rejected(&Ok(())).is_err());
    }

    #[test]
    fn backend_names_drop_the_two_pod_suffixes() {
        assert_eq!(
            backend_name("infra-backend-v1-7b9d6c5f8d-x2k9q"),
            "infra-backend-v1"
        );
        assert_eq!(backend_name("solo"), "solo");
        assert_eq!(backend_name("a-b"), "a-b");
    }
}
