//! The mesh backends' `echo-advanced` (Istio-style) echo, HTTP part (README "Mesh tests"):
//! every request is answered with a plain-text body of `key=value` lines, which is also what
//! the Istio client prints and what mesh cases compare. The lines written here:
//!
//! ```text
//! ServiceVersion=
//! ServicePort=8080
//! StatusCode=200
//! URL=/path?query
//! Host=echo
//! Method=GET
//! Proto=HTTP/1.1
//! IP=127.0.0.1
//! RequestHeader=Name:value      (one line per received header value, canonical names)
//! Hostname=echo-v1-abcdef0123-xyz12
//! ```
//!
//! `?status=NNN` makes the echo answer with that status (no mesh case uses it yet).
//! [`EchoLines::parse`] reads such a body back.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::echo::{accept_loop, canonical_header_name};

/// The HTTP port of the mesh echo (`--port=8080`).
pub const MESH_HTTP_PORT: u16 = 8080;
/// The gRPC port of the mesh echo (`--grpc=7070`).
pub const MESH_GRPC_PORT: u16 = 7070;

/// Who answers: the pod name is reported as `Hostname`.
#[derive(Debug, Clone)]
pub struct MeshEchoIdentity {
    /// Pod name.
    pub pod: String,
    /// The port the listener serves, reported as `ServicePort`.
    pub port: u16,
}

/// What one received request looks like, before it is written as lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EchoLines {
    /// `StatusCode`.
    pub status: u16,
    /// `Hostname`: the answering pod.
    pub hostname: String,
    /// `URL`: path and query as received.
    pub url: String,
    /// `Host`.
    pub host: String,
    /// `Method`.
    pub method: String,
    /// `RequestHeader` lines: canonical name to values, in received order.
    pub request_headers: BTreeMap<String, Vec<String>>,
}

impl EchoLines {
    /// Writes the `key=value` body.
    pub fn render(&self, port: u16, remote: &SocketAddr, proto: &str) -> String {
        let mut out = String::new();
        let mut line = |key: &str, value: &str| {
            out.push_str(key);
            out.push('=');
            out.push_str(value);
            out.push('\n');
        };
        line("ServiceVersion", "");
        line("ServicePort", &port.to_string());
        line("StatusCode", &self.status.to_string());
        line("URL", &self.url);
        line("Host", &self.host);
        line("Method", &self.method);
        line("Proto", proto);
        line("IP", &remote.ip().to_string());
        for (name, values) in &self.request_headers {
            for value in values {
                line("RequestHeader", &format!("{name}:{value}"));
            }
        }
        line("Hostname", &self.hostname);
        out
    }

    /// Reads a `key=value` body; unknown keys and lines without `=` are ignored. Fails
    /// when there is no `Hostname` line (the answer did not come from the echo).
    pub fn parse(body: &str) -> Result<Self, String> {
        let mut lines = Self::default();
        let mut saw_hostname = false;
        for raw in body.lines() {
            let Some((key, value)) = raw.split_once('=') else {
                continue;
            };
            match key {
                "StatusCode" => lines.status = value.trim().parse().unwrap_or(0),
                "Hostname" => {
                    saw_hostname = true;
                    lines.hostname = value.to_owned();
                }
                "URL" => lines.url = value.to_owned(),
                "Host" => lines.host = value.to_owned(),
                "Method" => lines.method = value.to_owned(),
                "RequestHeader" => {
                    if let Some((name, value)) = value.split_once(':') {
                        lines
                            .request_headers
                            .entry(canonical_header_name(name))
                            .or_default()
                            .push(value.to_owned());
                    }
                }
                _ => {}
            }
        }
        if !saw_hostname {
            let start: String = body.chars().take(80).collect();
            return Err(format!("not an echo answer (no Hostname line): {start:?}"));
        }
        Ok(lines)
    }

    /// The received values of a header (name case-insensitive), joined with `,`.
    pub fn header(&self, name: &str) -> Option<String> {
        self.request_headers
            .get(&canonical_header_name(name))
            .map(|values| values.join(","))
    }
}

/// Serves the HTTP/1.1 and h2c echo on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, identity: Arc<MeshEchoIdentity>) {
    accept_loop(listener, move |stream, remote| {
        let identity = identity.clone();
        async move {
            let service = service_fn(move |request| {
                let identity = identity.clone();
                async move { Ok::<_, Infallible>(answer(&request, &remote, &identity)) }
            });
            // Errors are the peer's doing; the echo just moves on.
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    })
    .await;
}

fn answer(
    request: &Request<Incoming>,
    remote: &SocketAddr,
    identity: &MeshEchoIdentity,
) -> Response<Full<Bytes>> {
    let url = request
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned());
    let status = query_status(&url).unwrap_or(200);
    let host = request
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let mut request_headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in request.headers() {
        if name == http::header::HOST {
            continue;
        }
        request_headers
            .entry(canonical_header_name(name.as_str()))
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let lines = EchoLines {
        status,
        hostname: identity.pod.clone(),
        url,
        host,
        method: request.method().to_string(),
        request_headers,
    };
    let proto = format!("{:?}", request.version());
    let body = lines.render(identity.port, remote, &proto);
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    response
}

/// `?status=NNN` (first occurrence), when NNN is a valid status code.
fn query_status(url: &str) -> Option<u16> {
    let (_, query) = url.split_once('?')?;
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == "status")
        .and_then(|(_, v)| v.parse().ok())
        .filter(|s| (100..=999).contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EchoLines {
        let mut request_headers = BTreeMap::new();
        request_headers.insert(
            "X-Header-Add".to_owned(),
            vec!["a".to_owned(), "b:c".to_owned()],
        );
        EchoLines {
            status: 200,
            hostname: "echo-v1-0123456789-abcde".to_owned(),
            url: "/x?y=1".to_owned(),
            host: "echo".to_owned(),
            method: "GET".to_owned(),
            request_headers,
        }
    }

    #[test]
    fn rendered_lines_parse_back() {
        let remote: SocketAddr = "127.0.0.1:5000".parse().expect("address");
        let body = sample().render(8080, &remote, "HTTP/1.1");
        assert!(body.contains("RequestHeader=X-Header-Add:b:c\n"));
        assert!(body.ends_with("Hostname=echo-v1-0123456789-abcde\n"));
        assert_eq!(EchoLines::parse(&body), Ok(sample()));
    }

    #[test]
    fn headers_are_case_insensitive_and_joined() {
        let lines = sample();
        assert_eq!(lines.header("x-header-add").as_deref(), Some("a,b:c"));
        assert_eq!(lines.header("X-Other"), None);
    }

    #[test]
    fn a_body_without_hostname_is_not_an_echo() {
        assert!(EchoLines::parse("404 page not found").is_err());
        assert!(EchoLines::parse("").is_err());
    }

    #[test]
    fn status_comes_from_the_query() {
        assert_eq!(query_status("/?status=418"), Some(418));
        assert_eq!(query_status("/?a=b&status=x"), None);
        assert_eq!(query_status("/status"), None);
    }
}
