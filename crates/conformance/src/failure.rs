//! Why an exchange ended without an HTTP answer, as a value the expectations can judge
//! (README "`http`" mode `connection-error`, and "`tls-connection-rejected`").
//!
//! The transports report errors as `anyhow` chains of `std::io::Error`, `rustls::Error` and
//! `hyper::Error`; [`FailureKind::of`] reads such a chain once, here, so that the modes that
//! care *how* a connection failed never parse error messages.

use std::error::Error as StdError;
use std::fmt;
use std::io;

/// A request that got no HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// How it failed.
    pub kind: FailureKind,
    /// Whether the server asked for a client certificate; `None` when no TLS handshake ran
    /// (plain HTTP, or the TCP connection already failed).
    pub client_cert_requested: Option<bool>,
    /// The whole error chain, for the report.
    pub detail: String,
}

/// How a connection or exchange failed, from the client's point of view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// The TCP connection was refused (nothing listens there).
    Refused,
    /// The peer reset or aborted the connection.
    Reset,
    /// The peer closed the connection (EOF) before the handshake or the answer was complete.
    Closed,
    /// The peer sent a fatal TLS alert; the text names it (e.g. `CertificateRequired`).
    Alert(String),
    /// This client rejected the server's certificate: the runner refused, not the server.
    UntrustedServer,
    /// Nothing happened within the time limit.
    Timeout,
    /// The runner could not even try (bad request data, missing certificate material).
    Setup,
    /// Anything else (protocol errors, ALPN mismatch, ...).
    Other,
}

impl Failure {
    /// Classifies an error chain; `client_cert_requested` as observed by the TLS client.
    pub fn from_error(error: &anyhow::Error, client_cert_requested: Option<bool>) -> Self {
        Self {
            kind: FailureKind::of(error.chain()),
            client_cert_requested,
            detail: format!("{error:#}"),
        }
    }

    /// A failure of the runner's own preparation, not of the connection.
    pub fn setup(detail: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Setup,
            client_cert_requested: None,
            detail: detail.into(),
        }
    }

    /// No outcome within the time limit.
    pub fn timeout(detail: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Timeout,
            client_cert_requested: None,
            detail: detail.into(),
        }
    }
}

impl FailureKind {
    /// The innermost link of an error chain that says how the connection failed decides
    /// (it is the most precise: hyper's "connection closed" wraps the socket's "reset"); a
    /// chain that never says is [`FailureKind::Other`].
    pub fn of<'a>(chain: impl IntoIterator<Item = &'a (dyn StdError + 'static)>) -> Self {
        chain
            .into_iter()
            .filter_map(Self::of_link)
            .last()
            .unwrap_or(Self::Other)
    }

    /// Whether the server (or the network) ended the connection below HTTP, which is what
    /// README `connection-error` asks for: refused, reset, closed or a TLS alert.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            Self::Refused | Self::Reset | Self::Closed | Self::Alert(_)
        )
    }

    fn of_link(link: &(dyn StdError + 'static)) -> Option<Self> {
        if let Some(tls) = link.downcast_ref::<rustls::Error>() {
            return Some(Self::of_rustls(tls));
        }
        if let Some(io) = link.downcast_ref::<io::Error>() {
            // `io::Error::source` skips the wrapped error itself (it returns the wrapped
            // error's source), so a `rustls::Error` inside an `io::Error` is only reachable
            // through `get_ref`. tokio-rustls reports every TLS error that way.
            if let Some(tls) = io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
                return Some(Self::of_rustls(tls));
            }
            return match io.kind() {
                io::ErrorKind::ConnectionRefused => Some(Self::Refused),
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::BrokenPipe => Some(Self::Reset),
                io::ErrorKind::UnexpectedEof => Some(Self::Closed),
                io::ErrorKind::TimedOut => Some(Self::Timeout),
                _ => None,
            };
        }
        match link.downcast_ref::<hyper::Error>() {
            // "connection closed before message completed" and friends: the peer closed
            // without (a whole) answer.
            Some(http)
                if http.is_incomplete_message() || http.is_closed() || http.is_canceled() =>
            {
                Some(Self::Closed)
            }
            _ => None,
        }
    }

    fn of_rustls(error: &rustls::Error) -> Self {
        match error {
            rustls::Error::AlertReceived(alert) => Self::Alert(format!("{alert:?}")),
            // On a client, certificate errors come from verifying the server's chain.
            rustls::Error::InvalidCertificate(_) => Self::UntrustedServer,
            _ => Self::Other,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.detail)
    }
}

impl StdError for Failure {}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{AlertDescription, CertificateError};

    fn kind_of(error: anyhow::Error) -> FailureKind {
        Failure::from_error(&error, None).kind
    }

    #[test]
    fn tls_errors_inside_io_errors_are_found() {
        let alert = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
        );
        assert_eq!(
            kind_of(anyhow::Error::new(alert).context("HTTP/1.1 exchange")),
            FailureKind::Alert("CertificateRequired".to_owned())
        );
        let untrusted = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        assert_eq!(
            kind_of(anyhow::Error::new(untrusted).context("TLS handshake")),
            FailureKind::UntrustedServer
        );
    }

    #[test]
    fn socket_errors_map_by_kind() {
        let io_kind = |kind| kind_of(io::Error::from(kind).into());
        assert_eq!(
            io_kind(io::ErrorKind::ConnectionRefused),
            FailureKind::Refused
        );
        assert_eq!(io_kind(io::ErrorKind::ConnectionReset), FailureKind::Reset);
        assert_eq!(io_kind(io::ErrorKind::UnexpectedEof), FailureKind::Closed);
        assert_eq!(io_kind(io::ErrorKind::PermissionDenied), FailureKind::Other);
        assert_eq!(
            kind_of(anyhow::anyhow!("no answer")),
            FailureKind::Other,
            "a chain that says nothing is Other"
        );
    }

    #[test]
    fn only_server_side_endings_count_as_refusals() {
        for kind in [
            FailureKind::Refused,
            FailureKind::Reset,
            FailureKind::Closed,
            FailureKind::Alert("BadCertificate".into()),
        ] {
            assert!(kind.is_refusal(), "{kind:?}");
        }
        for kind in [
            FailureKind::UntrustedServer,
            FailureKind::Timeout,
            FailureKind::Setup,
            FailureKind::Other,
        ] {
            assert!(!kind.is_refusal(), "{kind:?}");
        }
    }
}
