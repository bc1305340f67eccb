//! The HTTP echo backend, behaving like upstream's `echo-basic` image as the README's "What
//! the HTTP echo backend answers" describes it: an indented JSON description of the request,
//! `/health`, `/status/NNN`, `?delay=`, `X-Echo-Set-Header`, and one log line per request,
//! kept in memory per deployment for the mirror checks. Deployments that mount a certificate
//! also get the HTTPS listener ([`serve_https`]), whose answers carry the `tls` block.
//!
//! `/ws` is the WebSocket echo of `ws_echo`: HTTP/1.1 connections are served with upgrades
//! enabled, and a connection whose request was switched to WebSocket runs the frame echo in
//! its own task once hyper hands the connection over.
//!
//! Not yet: h2c *upgrade* on the h2c port (only prior-knowledge HTTP/2 is served there; an
//! HTTP/1 request gets the upstream 400).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;

use crate::tls::server::TlsFacts;
use crate::ws_echo;

/// Largest request body the echo reads (and discards).
const MAX_BODY: usize = 1 << 20;

/// How long an HTTPS client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a backend process would learn from its environment.
#[derive(Debug, Clone)]
pub struct EchoIdentity {
    /// `NAMESPACE`.
    pub namespace: String,
    /// `POD_NAME`.
    pub pod: String,
    /// `HTTP_PORT`, reported as `httpPort` whichever listener took the request.
    pub http_port: u16,
}

/// Which protocol a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoMode {
    /// HTTP/1.1 (port 3000).
    Http1,
    /// Cleartext HTTP/2 with prior knowledge (port 3001).
    H2c,
    /// HTTP/1.1 or HTTP/2 over TLS, as ALPN decides (port 8443).
    Https,
}

/// One echoed request, as the backend's stdout line would report it.
#[derive(Debug, Clone)]
pub struct LogEntry {
    /// When the request arrived.
    pub at: Instant,
    /// Raw request target, as in the JSON `path`.
    pub path: String,
    /// Pod that answered.
    pub pod: String,
    /// `Echoing back request made to <path> to client (<remote>)`.
    pub line: String,
}

/// The request log of one deployment (all its pods), shared with the checks.
#[derive(Debug, Default)]
pub struct RequestLog {
    entries: Mutex<Vec<LogEntry>>,
}

impl RequestLog {
    /// Appends one entry.
    pub fn record(&self, entry: LogEntry) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.push(entry);
        }
    }

    /// The last `count` log lines, each prefixed with the pod that wrote it.
    pub fn recent_lines(&self, count: usize) -> Vec<String> {
        self.entries
            .lock()
            .map(|entries| {
                let skip = entries.len().saturating_sub(count);
                entries
                    .iter()
                    .skip(skip)
                    .map(|e| format!("{}: {}", e.pod, e.line))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// How many requests for exactly `path` arrived at or after `since`.
    pub fn count_since(&self, path: &str, since: Instant) -> usize {
        self.entries
            .lock()
            .map(|entries| {
                entries
                    .iter()
                    .filter(|e| e.at >= since && e.path == path)
                    .count()
            })
            .unwrap_or(0)
    }
}

/// Serves cleartext echo requests on `listener` until the task is aborted. Dropping the task
/// aborts every connection it started.
pub async fn serve(
    listener: TcpListener,
    mode: EchoMode,
    identity: Arc<EchoIdentity>,
    log: Arc<RequestLog>,
) {
    accept_loop(listener, move |stream, remote| {
        serve_connection(stream, remote, mode, None, identity.clone(), log.clone())
    })
    .await;
}

/// Serves HTTPS echo requests on `listener` ([`EchoMode::Https`]) until the task is aborted.
/// A failed handshake just ends its connection.
pub async fn serve_https(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    identity: Arc<EchoIdentity>,
    log: Arc<RequestLog>,
) {
    accept_loop(listener, move |stream, remote| {
        let (acceptor, identity, log) = (acceptor.clone(), identity.clone(), log.clone());
        async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
            if let Ok(Ok(stream)) = handshake.await {
                let facts = Arc::new(TlsFacts::of(stream.get_ref().1));
                serve_connection(stream, remote, EchoMode::Https, Some(facts), identity, log).await;
            }
        }
    })
    .await;
}

/// Parses a Go `time.Duration` string such as `1s`, `500ms` or `1h2m3.5s`.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let text = text.strip_prefix('+').unwrap_or(text);
    if text == "0" {
        return Some(Duration::ZERO);
    }
    if text.is_empty() || text.starts_with('-') {
        return None;
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let number_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let number: f64 = rest[..number_len].parse().ok()?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += number * seconds_per_unit;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Go's `CanonicalMIMEHeaderKey`: `x-header-set` becomes `X-Header-Set`. Names with bytes
/// that are not token characters are returned unchanged, as Go does.
pub fn canonical_header_name(name: &str) -> String {
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if !name.chars().all(token) {
        return name.to_owned();
    }
    let mut upper = true;
    name.chars()
        .map(|c| {
            let out = if upper {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            };
            upper = c == '-';
            out
        })
        .collect()
}

/// Parses `X-Echo-Set-Header: Name1:value1,Name2:value2`; a name given twice gets its
/// values joined with `,`. Names are compared case-insensitively (HTTP names are).
pub fn parse_echo_set_header(value: &str) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = Vec::new();
    for pair in value.split(',') {
        let Some((name, value)) = pair.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim(), value.trim());
        if name.is_empty() {
            continue;
        }
        match headers
            .iter_mut()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
        {
            Some((_, existing)) => {
                existing.push(',');
                existing.push_str(value);
            }
            None => headers.push((name.to_owned(), value.to_owned())),
        }
    }
    headers
}

/// The JSON body, field order as upstream's struct.
#[derive(Debug, Serialize)]
struct EchoBody<'a> {
    path: &'a str,
    host: &'a str,
    method: &'a str,
    proto: &'a str,
    headers: BTreeMap<String, Vec<String>>,
    namespace: &'a str,
    ingress: &'a str,
    service: &'a str,
    pod: &'a str,
    #[serde(rename = "httpPort")]
    http_port: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<EchoTls>,
}

/// The `tls` block of an answer over HTTPS, field order as upstream's struct.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct EchoTls {
    version: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    peer_certificates: Vec<String>,
    server_name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    negotiated_protocol: String,
    cipher_suite: String,
}

/// Accepts connections and hands each to `handle` on its own task, until the task running
/// the loop is aborted; that drops the `JoinSet`, which aborts every connection task too.
pub(crate) async fn accept_loop<F, Fut>(listener: TcpListener, mut handle: F)
where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    connections.spawn(handle(stream, remote));
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection<S>(
    stream: S,
    remote: SocketAddr,
    mode: EchoMode,
    tls: Option<Arc<TlsFacts>>,
    identity: Arc<EchoIdentity>,
    log: Arc<RequestLog>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A request switched to WebSocket leaves its pending upgrade here; hyper completes it
    // when the connection future below returns, and this task then runs the frame echo.
    let (upgrades, mut upgraded) = mpsc::unbounded_channel::<OnUpgrade>();
    let service = service_fn(move |request| {
        let (tls, identity, log) = (tls.clone(), identity.clone(), log.clone());
        let upgrades = upgrades.clone();
        async move {
            let reply = answer(request, remote, mode, tls.as_deref(), &identity, &log).await;
            Ok::<_, Infallible>(reply.into_response(&upgrades))
        }
    });
    let io = TokioIo::new(stream);
    // Errors here are the peer's doing (reset, malformed request); the echo just moves on.
    let _ = match mode {
        EchoMode::Http1 => hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .with_upgrades()
            .await
            .map_err(|e| e.to_string()),
        EchoMode::H2c => hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await
            .map_err(|e| e.to_string()),
        EchoMode::Https => hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection_with_upgrades(io, service)
            .await
            .map_err(|e| e.to_string()),
    };
    // At most one: HTTP/1 serves nothing else once a connection switched protocols.
    if let Ok(pending) = upgraded.try_recv()
        && let Ok(io) = pending.await
    {
        ws_echo::echo_frames(TokioIo::new(io)).await;
    }
}

/// What [`answer`] produced: a plain response, or a `101` whose connection continues as a
/// WebSocket.
enum Answer {
    /// Any response that ends the exchange.
    Plain(Response<Full<Bytes>>),
    /// The `101 Switching Protocols` answer and the upgrade it starts.
    Upgrade(Response<Full<Bytes>>, OnUpgrade),
}

impl Answer {
    /// The response to send; an upgrade is handed to the connection task first.
    fn into_response(self, upgrades: &mpsc::UnboundedSender<OnUpgrade>) -> Response<Full<Bytes>> {
        match self {
            Answer::Plain(response) => response,
            Answer::Upgrade(response, pending) => {
                // The receiver lives as long as the connection; if it is gone, so is the peer.
                let _ = upgrades.send(pending);
                response
            }
        }
    }
}

impl From<Response<Full<Bytes>>> for Answer {
    fn from(response: Response<Full<Bytes>>) -> Self {
        Answer::Plain(response)
    }
}

async fn answer(
    mut request: Request<Incoming>,
    remote: SocketAddr,
    mode: EchoMode,
    tls: Option<&TlsFacts>,
    identity: &EchoIdentity,
    log: &RequestLog,
) -> Answer {
    if mode == EchoMode::H2c && request.version() != Version::HTTP_2 {
        return text(StatusCode::BAD_REQUEST, "Expected h2c request").into();
    }
    let target = request_target(&request);
    let path_only = request.uri().path().to_owned();
    if path_only == "/health" {
        return text(StatusCode::OK, "OK").into();
    }
    if let Some(code) = path_only.strip_prefix("/status/") {
        return match code
            .parse::<u16>()
            .ok()
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(status) => text(status, ""),
            None => text(StatusCode::BAD_REQUEST, "invalid status code"),
        }
        .into();
    }
    if path_only == "/ws" {
        let response = ws_echo::accept(request.method(), request.version(), request.headers());
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return response.into();
        }
        return Answer::Upgrade(response, hyper::upgrade::on(&mut request));
    }

    let line = format!("Echoing back request made to {target} to client ({remote})");
    log.record(LogEntry {
        at: Instant::now(),
        path: target.clone(),
        pod: identity.pod.clone(),
        line,
    });
    if let Some(delay) = query_value(request.uri().query(), "delay") {
        match parse_go_duration(&delay) {
            Some(duration) => tokio::time::sleep(duration.min(Duration::from_secs(60))).await,
            None => return text(StatusCode::BAD_REQUEST, "invalid delay").into(),
        }
    }

    let (parts, body) = request.into_parts();
    // Drain the body so HTTP/1 keep-alive stays in sync; its content is not echoed.
    let _ = Limited::new(body, MAX_BODY).collect().await;
    let host = match parts.version {
        Version::HTTP_2 => parts.uri.authority().map(|a| a.as_str().to_owned()),
        _ => parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned),
    }
    .unwrap_or_default();
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        if name == http::header::HOST || name == http::header::TRANSFER_ENCODING {
            continue;
        }
        headers
            .entry(canonical_header_name(name.as_str()))
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let body = EchoBody {
        path: &target,
        host: &host,
        method: parts.method.as_str(),
        proto: proto(parts.version),
        headers,
        namespace: &identity.namespace,
        ingress: "",
        service: "",
        pod: &identity.pod,
        http_port: identity.http_port.to_string(),
        tls: tls.map(|facts| EchoTls {
            version: facts.echo_version_name(),
            peer_certificates: facts.peer_certificates_pem(),
            server_name: facts.server_name.clone().unwrap_or_default(),
            negotiated_protocol: facts.negotiated_protocol(),
            cipher_suite: facts.go_cipher_suite_name(),
        }),
    };
    let mut response = Response::new(Full::new(Bytes::from(pretty_json(&body))));
    let response_headers = response.headers_mut();
    response_headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response_headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    let echo_set = parts
        .headers
        .get("x-echo-set-header")
        .and_then(|v| v.to_str().ok());
    for (name, value) in echo_set.map(parse_echo_set_header).unwrap_or_default() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            response_headers.insert(name, value);
        }
    }
    response.into()
}

/// Go's `r.RequestURI`: the raw target for HTTP/1, `:path` for HTTP/2.
fn request_target(request: &Request<Incoming>) -> String {
    match request.version() {
        Version::HTTP_2 => request
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        _ => request.uri().to_string(),
    }
}

fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == key).then(|| v.to_owned())
    })
}

fn proto(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// `json.MarshalIndent(v, "", " ")`.
fn pretty_json(body: &impl Serialize) -> Vec<u8> {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b" ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    // Serialising plain strings and maps of strings cannot fail.
    let _ = body.serialize(&mut serializer);
    out
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse() {
        assert_eq!(parse_go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("10"), None);
        assert_eq!(parse_go_duration("1x"), None);
        assert_eq!(parse_go_duration("-1s"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn header_names_are_canonicalised_like_go() {
        assert_eq!(canonical_header_name("x-header-set"), "X-Header-Set");
        assert_eq!(canonical_header_name("USER-AGENT"), "User-Agent");
        assert_eq!(canonical_header_name("bad name"), "bad name");
    }

    #[test]
    fn echo_set_header_joins_repeated_names() {
        assert_eq!(
            parse_echo_set_header("A:1, b:2,a:3,:x,novalue"),
            vec![
                ("A".to_owned(), "1,3".to_owned()),
                ("b".to_owned(), "2".to_owned())
            ]
        );
        assert!(parse_echo_set_header("").is_empty());
    }

    #[test]
    fn request_log_counts_by_path_and_time() {
        let log = RequestLog::default();
        let start = Instant::now();
        let entry = |path: &str| LogEntry {
            at: Instant::now(),
            path: path.to_owned(),
            pod: "p".to_owned(),
            line: String::new(),
        };
        log.record(entry("/a"));
        log.record(entry("/a"));
        log.record(entry("/b"));
        assert_eq!(log.count_since("/a", start), 2);
        assert_eq!(
            log.count_since("/a", Instant::now() + Duration::from_secs(1)),
            0
        );
        assert_eq!(log.recent_lines(1), vec!["p: ".to_owned()]);
    }

    #[test]
    fn query_values_are_found() {
        assert_eq!(
            query_value(Some("x=1&delay=1s"), "delay"),
            Some("1s".to_owned())
        );
        assert_eq!(query_value(Some("delay"), "delay"), Some(String::new()));
        assert_eq!(query_value(None, "delay"), None);
    }
}
