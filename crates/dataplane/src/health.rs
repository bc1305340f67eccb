//! Active health checks (HealthCheckPolicy): each endpoint of a backend with a
//! [`ir::HealthCheck`] is probed on its interval by a task of its own, and an endpoint that
//! fails `unhealthy_threshold` probes in a row is left out of load balancing until it passes
//! `healthy_threshold` in a row. Endpoints start healthy, so a reload never takes a backend
//! out of service before it was probed.
//!
//! HTTP probes go through the same pools as requests ([`Upstreams::send`]), so they speak
//! the backend's protocol (HTTP/1.1 or h2c) and its BackendTLSPolicy's TLS; TCP probes only
//! connect. When every endpoint of a backend is unhealthy, load balancing uses them all
//! again (Envoy's "panic mode"): health checks may be wrong, and refusing everything would
//! turn a bad probe into an outage.
//!
//! Each apply reconciles the probe tasks with the new config: probes whose endpoint,
//! backend and settings are unchanged keep running (and keep their state); the others stop.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use arc_swap::ArcSwap;
use http::{Request, header};
use ir::{Backend, BackendProtocol, BackendTarget, HealthCheck, Probe};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::net::TcpStream;
use tokio::task::AbortHandle;

use crate::body;
use crate::forward::Upstreams;

/// What one probe task checks.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ProbeKey {
    backend: String,
    endpoint: SocketAddr,
    protocol: BackendProtocol,
    /// The BackendTLSPolicy, if any: a different policy means different TLS.
    tls: Option<String>,
    check: HealthCheck,
}

/// Health state shared by the probe tasks and load balancing.
#[derive(Default)]
pub(crate) struct HealthChecks {
    /// Unhealthy endpoints per backend name; replaced whole on every change, read on every
    /// choice of an endpoint.
    down: ArcSwap<HashMap<String, HashSet<SocketAddr>>>,
    /// Serialises changes to `down`.
    changing: Mutex<()>,
    probes: Mutex<HashMap<ProbeKey, AbortHandle>>,
    /// Failed probes.
    pub(crate) failures: Counter,
    /// Endpoints currently unhealthy.
    pub(crate) unhealthy: Gauge,
}

impl HealthChecks {
    /// Whether `endpoint` of `backend` failed its health checks.
    pub(crate) fn is_down(&self, backend: &str, endpoint: SocketAddr) -> bool {
        let down = self.down.load();
        // Without unhealthy endpoints (the usual case) no name is hashed.
        !down.is_empty()
            && down
                .get(backend)
                .is_some_and(|down| down.contains(&endpoint))
    }

    /// Starts probes for the health-checked endpoints of `config` and stops the rest.
    pub(crate) fn reconcile(self: &Arc<Self>, config: &ir::Config, upstreams: &Upstreams) {
        let wanted = checked_endpoints(config);
        let mut probes = self.probes.lock().unwrap_or_else(PoisonError::into_inner);
        probes.retain(|key, task| {
            let keep = wanted.contains_key(key);
            if !keep {
                task.abort();
                self.set(&key.backend, key.endpoint, true);
            }
            keep
        });
        for (key, backend) in wanted {
            if probes.contains_key(&key) {
                continue;
            }
            let task = tokio::spawn(probe_loop(
                Arc::clone(self),
                upstreams.clone(),
                backend,
                key.clone(),
            ));
            probes.insert(key, task.abort_handle());
        }
    }

    /// Records an endpoint's health.
    fn set(&self, backend: &str, endpoint: SocketAddr, healthy: bool) {
        let _changing = self.changing.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.down.load();
        let is_down = current
            .get(backend)
            .is_some_and(|down| down.contains(&endpoint));
        if is_down != healthy {
            return;
        }
        let mut next = HashMap::clone(&current);
        let down = next.entry(backend.to_string()).or_default();
        if healthy {
            down.remove(&endpoint);
            if down.is_empty() {
                next.remove(backend);
            }
            self.unhealthy.dec();
        } else {
            down.insert(endpoint);
            self.unhealthy.inc();
        }
        self.down.store(Arc::new(next));
    }
}

/// Every (backend, endpoint) of the config's HTTP routes with a health check.
fn checked_endpoints(config: &ir::Config) -> HashMap<ProbeKey, Arc<Backend>> {
    let mut wanted = HashMap::new();
    let listeners = config
        .binds
        .values()
        .flat_map(|bind| bind.http.iter().chain(bind.consumers.values()));
    for listener in listeners {
        for candidate in listener.routes.candidates() {
            let ir::Action::Forward(backends) = &candidate.rule.action else {
                continue;
            };
            for weighted in backends {
                let BackendTarget::Service(backend) = &weighted.target else {
                    continue;
                };
                let Some(check) = &backend.health else {
                    continue;
                };
                for endpoint in &backend.endpoints {
                    let key = ProbeKey {
                        backend: backend.name.to_string(),
                        endpoint: endpoint.addr,
                        protocol: backend.protocol,
                        tls: backend.tls.as_ref().map(|tls| tls.policy.clone()),
                        check: HealthCheck::clone(check),
                    };
                    wanted.entry(key).or_insert_with(|| Arc::clone(backend));
                }
            }
        }
    }
    wanted
}

/// Probes one endpoint every interval, forever (until aborted by a reconcile).
async fn probe_loop(
    checks: Arc<HealthChecks>,
    upstreams: Upstreams,
    backend: Arc<Backend>,
    key: ProbeKey,
) {
    let check = &key.check;
    let mut passes = 0u32;
    let mut failures = 0u32;
    let mut healthy = true;
    let mut ticks = tokio::time::interval(check.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let passed = tokio::time::timeout(check.timeout, probe(&upstreams, &backend, &key))
            .await
            .unwrap_or(false);
        if passed {
            passes += 1;
            failures = 0;
        } else {
            checks.failures.inc();
            failures += 1;
            passes = 0;
        }
        if healthy && failures >= check.unhealthy_threshold {
            healthy = false;
            tracing::warn!(
                backend = %key.backend,
                endpoint = %key.endpoint,
                policy = %check.policy,
                failures,
                "endpoint failed its health checks"
            );
            checks.set(&key.backend, key.endpoint, false);
        } else if !healthy && passes >= check.healthy_threshold {
            healthy = true;
            tracing::info!(
                backend = %key.backend,
                endpoint = %key.endpoint,
                "endpoint passed its health checks again"
            );
            checks.set(&key.backend, key.endpoint, true);
        }
    }
}

/// One probe; `true` when it passes.
async fn probe(upstreams: &Upstreams, backend: &Backend, key: &ProbeKey) -> bool {
    match &key.check.probe {
        Probe::Tcp => TcpStream::connect(key.endpoint).await.is_ok(),
        Probe::Http { path, host, .. } => {
            let request = Request::get(path.as_str())
                .header(header::HOST, host.as_str())
                .header(header::USER_AGENT, "portcullis-health-check")
                .body(body::empty());
            let Ok(request) = request else {
                return false;
            };
            match upstreams.send(backend, None, key.endpoint, request).await {
                Ok(response) => {
                    let status = response.status().as_u16();
                    // Read the body so that the connection can go back to the pool.
                    let _ = http_body_util::BodyExt::collect(response.into_body()).await;
                    key.check.probe.passes(status)
                }
                Err(_) => false,
            }
        }
    }
}
