//! A minimal HTTP client on hyper 1 connections, with raw control over the Host header and
//! the request target: one TCP connection per request (keep-alive off, as upstream's client),
//! HTTP/1.1 or HTTP/2 with prior knowledge in cleartext, and HTTP/1.1 or HTTP/2 (ALPN `h2`)
//! over TLS (`tls`).
//!
//! Every connection goes to 127.0.0.0/8 only; anything else is refused before connecting.
//! Redirects are followed like Go's client, except that a `Location` pointing at a name or
//! an address outside loopback ends the chain (the 3xx is returned as the answer), and that
//! HTTPS requests follow only relative `Location`s (same connection settings).
//!
//! [`exchange`] reports failures as `anyhow` errors; [`attempt`] keeps them typed
//! ([`Failure`]) for the modes that judge how a connection failed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Uri};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::failure::Failure;
use crate::tls::{ALPN_H2, TlsClient};

/// Largest response body read.
const MAX_BODY: usize = 4 << 20;
/// Go's client stops after ten redirects.
const MAX_REDIRECTS: usize = 10;

/// Wire protocol of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1 with `Connection: close`.
    Http1,
    /// Cleartext HTTP/2 without upgrade.
    H2cPriorKnowledge,
    /// HTTP/2 over TLS; the server must choose `h2` by ALPN.
    Http2,
}

/// A request as sent on the wire.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Wire protocol.
    pub protocol: Protocol,
    /// Method.
    pub method: String,
    /// Request target (path and query), sent as is.
    pub target: String,
    /// Host header, or `:authority` for HTTP/2.
    pub host: String,
    /// Extra headers, one line each.
    pub headers: Vec<(String, String)>,
    /// TLS settings for HTTPS; `None` for plain HTTP.
    pub tls: Option<TlsClient>,
}

/// A received answer.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Header lines with lowercase names, in received order.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
    /// Over TLS: whether the server asked for a client certificate; `None` for plain HTTP.
    pub client_cert_requested: Option<bool>,
}

impl Reply {
    /// Every value of a header (name case-insensitive).
    pub fn values(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// Values of a header joined with `,`, or `None` when absent.
    pub fn joined(&self, name: &str) -> Option<String> {
        let values = self.values(name);
        (!values.is_empty()).then(|| values.join(","))
    }
}

/// Refuses any destination outside 127.0.0.0/8.
pub fn ensure_loopback(address: IpAddr) -> anyhow::Result<()> {
    match address {
        IpAddr::V4(v4) if v4.is_loopback() => Ok(()),
        other => bail!("refusing to send traffic to {other}: only 127.0.0.0/8 is allowed"),
    }
}

/// Sends `request` to `address`, following redirects when `follow` is set; each hop has
/// `timeout`.
pub async fn exchange(
    address: SocketAddr,
    request: &Outgoing,
    follow: bool,
    timeout: Duration,
) -> anyhow::Result<Reply> {
    let (mut address, mut request) = (address, request.clone());
    for _ in 0..MAX_REDIRECTS {
        let reply = attempt(address, &request, timeout).await?;
        if !follow || !matches!(reply.status, 301 | 302 | 303 | 307 | 308) {
            return Ok(reply);
        }
        let Some(location) = reply.values("location").first().map(|l| l.to_string()) else {
            return Ok(reply);
        };
        match next_hop(address, &request, &location) {
            Some((next_address, next_request)) => (address, request) = (next_address, next_request),
            None => return Ok(reply),
        }
        if reply.status == 303 || (matches!(reply.status, 301 | 302) && request.method == "POST") {
            request.method = "GET".to_owned();
        }
    }
    bail!("stopped after {MAX_REDIRECTS} redirects")
}

/// One request, no redirects, with the failure kept typed; `timeout` covers connecting, the
/// handshake and the whole answer.
pub async fn attempt(
    address: SocketAddr,
    request: &Outgoing,
    timeout: Duration,
) -> Result<Reply, Failure> {
    tokio::time::timeout(timeout, send_once(address, request))
        .await
        .unwrap_or_else(|_| Err(Failure::timeout(format!("no answer within {timeout:?}"))))
}

/// `GET path` on a plain HTTP/1.1 server (the admin endpoint), returning status and body.
pub async fn get(
    address: SocketAddr,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, Bytes)> {
    let request = Outgoing {
        protocol: Protocol::Http1,
        method: "GET".to_owned(),
        target: path.to_owned(),
        host: address.to_string(),
        headers: Vec::new(),
        tls: None,
    };
    let reply = exchange(address, &request, false, timeout).await?;
    Ok((reply.status, reply.body))
}

/// One plain HTTP/1.1 request to `target` through an explicit outbound proxy: a `CONNECT`
/// tunnel to `target`'s address, then the request inside it, as a pod whose outbound traffic
/// goes through its sidecar would send it.
pub async fn exchange_via_proxy(
    proxy: SocketAddr,
    target: SocketAddr,
    outgoing: &Outgoing,
    timeout: Duration,
) -> anyhow::Result<Reply> {
    let exchange = async {
        ensure_loopback(proxy.ip())?;
        ensure_loopback(target.ip())?;
        let method = Method::from_bytes(outgoing.method.as_bytes())
            .with_context(|| format!("request method {:?}", outgoing.method))?;
        let mut stream = TcpStream::connect(proxy)
            .await
            .with_context(|| format!("connecting to the outbound proxy {proxy}"))?;
        let connect = format!("CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n\r\n");
        stream.write_all(connect.as_bytes()).await?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if stream.read(&mut byte).await? == 0 {
                bail!("the outbound proxy closed the connection during CONNECT");
            }
            head.push(byte[0]);
        }
        if !head.starts_with(b"HTTP/1.1 200") {
            bail!(
                "the outbound proxy refused CONNECT: {}",
                String::from_utf8_lossy(&head).trim()
            );
        }
        send_http1(stream, method, outgoing).await
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .unwrap_or_else(|_| bail!("no answer through the outbound proxy within {timeout:?}"))
}

async fn send_once(address: SocketAddr, outgoing: &Outgoing) -> Result<Reply, Failure> {
    ensure_loopback(address.ip()).map_err(|e| Failure::setup(format!("{e:#}")))?;
    let method = Method::from_bytes(outgoing.method.as_bytes())
        .map_err(|e| Failure::setup(format!("request method {:?}: {e}", outgoing.method)))?;
    let stream = TcpStream::connect(address)
        .await
        .with_context(|| format!("connecting to {address}"))
        .map_err(|e| Failure::from_error(&e, None))?;
    let Some(tls) = &outgoing.tls else {
        let reply = match outgoing.protocol {
            Protocol::Http1 => send_http1(stream, method, outgoing).await,
            Protocol::H2cPriorKnowledge => send_http2(stream, "http", method, outgoing).await,
            Protocol::Http2 => return Err(Failure::setup("HTTP/2 over TLS without TLS settings")),
        };
        return reply.map_err(|e| Failure::from_error(&e, None));
    };
    let connection = tls
        .connection()
        .map_err(|e| Failure::setup(e.to_string()))?;
    let reply = async {
        let stream = connection
            .handshake(stream)
            .await
            .context("TLS handshake")?;
        match outgoing.protocol {
            Protocol::Http1 => send_http1(stream, method, outgoing).await,
            Protocol::Http2 => {
                let negotiated = stream.get_ref().1.alpn_protocol();
                if negotiated != Some(ALPN_H2) {
                    bail!(
                        "the server did not choose h2 by ALPN (it chose {:?})",
                        negotiated.map(String::from_utf8_lossy)
                    );
                }
                send_http2(stream, "https", method, outgoing).await
            }
            Protocol::H2cPriorKnowledge => bail!("h2c prior knowledge cannot run over TLS"),
        }
    }
    .await;
    let requested = Some(connection.client_cert_requested());
    match reply {
        Ok(reply) => Ok(Reply {
            client_cert_requested: requested,
            ..reply
        }),
        Err(error) => Err(Failure::from_error(&error, requested)),
    }
}

async fn send_http1<S>(stream: S, method: Method, outgoing: &Outgoing) -> anyhow::Result<Reply>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::Builder::new()
        .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    let driver = tokio::spawn(connection);
    let uri: Uri = outgoing
        .target
        .parse()
        .with_context(|| format!("request target {:?}", outgoing.target))?;
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Empty::new())?;
    add_header(&mut request, "host", &outgoing.host)?;
    add_headers(&mut request, outgoing)?;
    add_header(&mut request, "connection", "close")?;
    let reply = match sender.send_request(request).await {
        Ok(response) => read_reply(response).await,
        Err(error) => Err(anyhow::Error::new(error).context("HTTP/1.1 exchange")),
    };
    driver.abort();
    reply
}

/// HTTP/2 with prior knowledge (`scheme` `http`) or after ALPN `h2` (`https`).
async fn send_http2<S>(
    stream: S,
    scheme: &str,
    method: Method,
    outgoing: &Outgoing,
) -> anyhow::Result<Reply>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
        .await
        .context("HTTP/2 handshake")?;
    let driver = tokio::spawn(connection);
    // HTTP/2 carries the Host as :authority, which hyper takes from the URI.
    let uri: Uri = format!("{scheme}://{}{}", outgoing.host, outgoing.target)
        .parse()
        .with_context(|| {
            format!(
                "authority {:?} and target {:?}",
                outgoing.host, outgoing.target
            )
        })?;
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Empty::new())?;
    add_headers(&mut request, outgoing)?;
    let reply = match sender.send_request(request).await {
        Ok(response) => read_reply(response).await,
        Err(error) => Err(anyhow::Error::new(error).context("HTTP/2 exchange")),
    };
    driver.abort();
    reply
}

async fn read_reply(response: http::Response<hyper::body::Incoming>) -> anyhow::Result<Reply> {
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the response body: {e}"))?
        .to_bytes();
    let headers = parts
        .headers
        .iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    Ok(Reply {
        status: parts.status.as_u16(),
        headers,
        body,
        client_cert_requested: None,
    })
}

fn add_headers<B>(request: &mut Request<B>, outgoing: &Outgoing) -> anyhow::Result<()> {
    for (name, value) in &outgoing.headers {
        add_header(request, name, value)?;
    }
    Ok(())
}

fn add_header<B>(request: &mut Request<B>, name: &str, value: &str) -> anyhow::Result<()> {
    let name =
        HeaderName::from_bytes(name.as_bytes()).with_context(|| format!("header name {name:?}"))?;
    let value = HeaderValue::from_str(value).with_context(|| format!("value of {name}"))?;
    request.headers_mut().append(name, value);
    Ok(())
}

/// Where a redirect leads, if it stays on loopback and plain HTTP (or, for HTTPS, is
/// relative).
fn next_hop(
    address: SocketAddr,
    request: &Outgoing,
    location: &str,
) -> Option<(SocketAddr, Outgoing)> {
    let mut next = request.clone();
    if location.starts_with('/') && !location.starts_with("//") {
        next.target = location.to_owned();
        return Some((address, next));
    }
    let uri: Uri = location.parse().ok()?;
    if request.tls.is_some() || uri.scheme_str() != Some("http") {
        return None;
    }
    let authority = uri.authority()?;
    let ip: Ipv4Addr = authority.host().parse().ok()?;
    if !ip.is_loopback() {
        return None;
    }
    next.host = authority.as_str().to_owned();
    next.target = uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    Some((
        SocketAddr::from((ip, authority.port_u16().unwrap_or(80))),
        next,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> Outgoing {
        Outgoing {
            protocol: Protocol::Http1,
            method: "GET".into(),
            target: "/a".into(),
            host: "example.com".into(),
            headers: Vec::new(),
            tls: None,
        }
    }

    #[test]
    fn only_loopback_is_allowed() {
        assert!(ensure_loopback("127.0.100.1".parse().expect("ip")).is_ok());
        assert!(ensure_loopback("198.51.100.7".parse().expect("ip")).is_err());
        assert!(ensure_loopback("::1".parse().expect("ip")).is_err());
    }

    #[test]
    fn redirects_stay_on_loopback() {
        let here: SocketAddr = "127.0.100.1:80".parse().expect("addr");
        let (address, next) = next_hop(here, &request(), "/b?x=1").expect("relative");
        assert_eq!(
            (address, next.target.as_str(), next.host.as_str()),
            (here, "/b?x=1", "example.com")
        );
        let (address, next) =
            next_hop(here, &request(), "http://127.0.100.2:8080/c").expect("loopback");
        assert_eq!(address, "127.0.100.2:8080".parse().expect("addr"));
        assert_eq!(next.host, "127.0.100.2:8080");
        assert!(next_hop(here, &request(), "http://example.org/").is_none());
        assert!(next_hop(here, &request(), "https://127.0.0.1/").is_none());
    }

    #[test]
    fn replies_join_repeated_headers() {
        let reply = Reply {
            status: 200,
            headers: vec![("x-a".into(), "1".into()), ("x-a".into(), "2".into())],
            body: Bytes::new(),
            client_cert_requested: None,
        };
        assert_eq!(reply.joined("X-A").as_deref(), Some("1,2"));
        assert_eq!(reply.joined("x-b"), None);
    }
}
