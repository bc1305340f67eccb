//! `RequestMirror`: fire-and-forget copies of a request.
//!
//! "Requests are sent to the specified destination, but responses from that destination are
//! ignored" (HTTPRequestMirrorFilter). A copy needs the body, so a mirrored request's body is
//! buffered up to [`Options::mirror_body_limit`]; a larger body is forwarded untouched and the
//! copies are skipped. Copies run as background tasks, at most
//! [`Options::mirror_concurrency`] at once; a copy over that bound is dropped and counted,
//! never queued, so mirrors cannot slow down or exhaust the main path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::Request;
use http::request::Parts;
use http_body_util::BodyExt;
use ir::{Backend, Mirror, TlsCertificate};
use tokio::sync::Semaphore;

use crate::Options;
use crate::body::{self, Buffered, ProxyBody};
use crate::error::ProxyError;
use crate::forward::Upstreams;

/// Sends mirror copies and counts the ones it had to drop.
pub struct Mirrors {
    upstreams: Upstreams,
    permits: Arc<Semaphore>,
    body_limit: usize,
    timeout: Duration,
    dropped: AtomicU64,
}

// === impl Mirrors ===

impl Mirrors {
    /// Creates the mirror sender; copies go through `upstreams`' pools.
    pub fn new(upstreams: Upstreams, options: &Options) -> Self {
        Self {
            upstreams,
            permits: Arc::new(Semaphore::new(options.mirror_concurrency)),
            body_limit: options.mirror_body_limit,
            timeout: options.mirror_timeout,
            dropped: AtomicU64::new(0),
        }
    }

    /// How many copies were dropped so far (body too large, no endpoint, or too many in
    /// flight).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Sends a copy of the request (`parts` and `body`) to each mirror that its probability
    /// selects, and returns the body to forward to the real backend.
    pub async fn send(
        &self,
        mirrors: &[Mirror],
        client_certificate: Option<&Arc<TlsCertificate>>,
        parts: &Parts,
        body: ProxyBody,
    ) -> Result<ProxyBody, ProxyError> {
        let chosen: Vec<&Arc<Backend>> = mirrors
            .iter()
            .filter(|mirror| roll(mirror.numerator, mirror.denominator))
            .map(|mirror| &mirror.backend)
            .collect();
        if chosen.is_empty() {
            return Ok(body);
        }
        let buffered = body::buffer_bounded(body, self.body_limit)
            .await
            .map_err(ProxyError::RequestBody)?;
        let (data, trailers) = match buffered {
            Buffered::Complete { data, trailers } => (data, trailers),
            Buffered::TooLarge(body) => {
                self.drop_copies(chosen.len(), "request body over the mirror limit");
                return Ok(body);
            }
        };
        for backend in chosen {
            let copy = copy_request(parts, body::replay(data.clone(), trailers.clone()));
            self.spawn_copy(backend, client_certificate, copy);
        }
        Ok(body::replay(data, trailers))
    }

    fn spawn_copy(
        &self,
        backend: &Arc<Backend>,
        client_certificate: Option<&Arc<TlsCertificate>>,
        request: Request<ProxyBody>,
    ) {
        let Ok(endpoint) = self.upstreams.endpoint(backend) else {
            self.drop_copies(1, "mirror backend has no endpoints");
            return;
        };
        let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
            self.drop_copies(1, "too many mirror requests in flight");
            return;
        };
        let upstreams = self.upstreams.clone();
        let backend = Arc::clone(backend);
        let client_certificate = client_certificate.cloned();
        let timeout = self.timeout;
        tokio::spawn(async move {
            let exchange = async {
                let response = upstreams
                    .send(&backend, client_certificate.as_ref(), endpoint, request)
                    .await?;
                // Read the answer to the end so the connection can go back to its pool.
                let _ = response.into_body().collect().await;
                Ok::<_, ProxyError>(())
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%endpoint, %error, "mirror request failed"),
                Err(_) => tracing::debug!(%endpoint, "mirror request timed out"),
            }
            drop(permit);
        });
    }

    fn drop_copies(&self, count: usize, reason: &'static str) {
        self.dropped.fetch_add(count as u64, Ordering::Relaxed);
        tracing::debug!(count, reason, "mirror copies dropped");
    }
}

/// Whether a request is mirrored, with probability `numerator / denominator`.
fn roll(numerator: u32, denominator: u32) -> bool {
    if numerator == 0 || denominator == 0 {
        return false;
    }
    numerator >= denominator || rand::random_range(0..denominator) < numerator
}

/// A copy of the request head with its own body. Extensions are not copied.
fn copy_request(parts: &Parts, body: ProxyBody) -> Request<ProxyBody> {
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probability_bounds_are_exact() {
        assert!((0..1000).all(|_| roll(1, 1)));
        assert!((0..1000).all(|_| roll(100, 100)));
        assert!((0..1000).all(|_| !roll(0, 100)));
        assert!((0..1000).all(|_| !roll(1, 0)));
    }

    #[test]
    fn half_is_roughly_half() {
        let hits = (0..10_000).filter(|_| roll(50, 100)).count();
        assert!((4_000..6_000).contains(&hits), "{hits}");
    }

    #[tokio::test]
    async fn oversized_body_skips_copies_and_is_forwarded_whole() {
        let options = Options {
            mirror_body_limit: 4,
            ..Options::default()
        };
        let mirrors = Mirrors::new(Upstreams::new(&options), &options);
        let backend = Arc::new(Backend {
            name: "ns/mirror:80".into(),
            protocol: ir::BackendProtocol::Http1,
            endpoints: Vec::new(),
            tls: None,
            health: None,
        });
        let mirror = Mirror {
            backend,
            numerator: 1,
            denominator: 1,
        };
        let (parts, body) = Request::new(body::full("more than four")).into_parts();
        let forwarded = mirrors.send(&[mirror], None, &parts, body).await;
        let bytes = match forwarded {
            Ok(body) => body.collect().await.map(|c| c.to_bytes()).ok(),
            Err(_) => None,
        };
        assert_eq!(bytes.as_deref(), Some(&b"more than four"[..]));
        assert_eq!(mirrors.dropped(), 1);
    }
}
