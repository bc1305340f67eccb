//! Mesh case types (README "Mesh tests"): `mesh-request` and `mesh-weighted-distribution`.
//! The runner itself is the client pod: the URL's host is resolved by [`MeshDirectory`]
//! relative to the client's namespace, the request goes to the Service's ClusterIP (where
//! portcullis serves or relays it) with the Host header a Kubernetes client would send (the
//! authority as written in the URL, unless the case sets `Host`), and redirects are not
//! followed. Only what upstream's mesh comparison looks at is compared: status, `backend`
//! as prefix of the answering `Hostname`, request headers the backend reports, and response
//! headers (first value, exact) present or absent.
//!
//! `grpc://` URLs make one unary call to the gRPC echo; gRPC `OK` counts as status 200.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::batches::{batch, check_distribution, distribution};
use crate::case::Case;
use crate::client::{self, Outgoing, Protocol, Reply};
use crate::expect::backend_name;
use crate::grpc::{self, Call, Code};
use crate::mesh::{MeshUrl, substitute_pod_ip};
use crate::mesh_echo::EchoLines;
use crate::traffic::{PASSES_IN_A_ROW, REQUEST_TIMEOUT, TrafficContext};

/// The gRPC method a mesh gRPC request calls.
const GRPC_METHOD: &str = "Echo";

/// `request` of a mesh case.
#[derive(Debug, Clone, Deserialize)]
pub struct MeshRequest {
    /// `http://name[:port]/path?query` or `grpc://name:port`.
    pub url: String,
    /// HTTP method (default GET).
    #[serde(default = "get")]
    pub method: String,
    /// Extra request headers; `Host` replaces the Host header.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// `expect` of a mesh case.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct MeshExpect {
    /// Accepted status codes.
    #[serde(default)]
    pub status: Vec<u16>,
    /// Prefix of the answering pod's `Hostname` (`''` = any).
    #[serde(default)]
    pub backend: String,
    /// Headers the backend must report, values joined with `,`.
    #[serde(default)]
    pub backend_request_headers: BTreeMap<String, String>,
    /// Headers the backend must not report.
    #[serde(default)]
    pub backend_request_absent_headers: Vec<String>,
    /// Response headers whose first value must equal.
    #[serde(default)]
    pub response_headers: BTreeMap<String, String>,
    /// Response headers that must be absent.
    #[serde(default)]
    pub response_absent_headers: Vec<String>,
}

/// What a mesh client reports about one request.
#[derive(Debug, Clone, Default)]
pub struct MeshAnswer {
    /// HTTP status (gRPC `OK` = 200).
    pub status: u16,
    /// Response headers, lowercase names.
    pub headers: Vec<(String, String)>,
    /// The echo's lines, when the answer came from the echo.
    pub echo: Option<EchoLines>,
}

/// A prepared mesh case.
#[derive(Debug, Clone)]
struct MeshTarget {
    address: SocketAddr,
    /// The client's outbound proxy, for clients of the namespace it serves.
    via: Option<SocketAddr>,
    grpc: bool,
    outgoing: Outgoing,
    expect: MeshExpect,
}

impl MeshTarget {
    fn prepare(case: &Case, ctx: &TrafficContext) -> Result<Self, String> {
        let request: MeshRequest = serde_json::from_value(case.request.clone())
            .map_err(|e| format!("mesh request block: {e}"))?;
        let expect: MeshExpect = serde_json::from_value(case.expect.clone())
            .map_err(|e| format!("mesh expect block: {e}"))?;
        let namespace = case
            .client
            .get("namespace")
            .and_then(|n| n.as_str())
            .ok_or("mesh case without client.namespace")?;
        let url = MeshUrl::parse(&substitute_pod_ip(&request.url, ctx.backends.pods())?)?;
        let address = ctx.mesh.resolve(&url.authority, namespace)?;
        let mut host = url.authority.clone();
        let mut headers = Vec::new();
        for (name, value) in request.headers {
            if name.eq_ignore_ascii_case("host") {
                host = value;
            } else {
                headers.push((name, value));
            }
        }
        headers.push(("User-Agent".to_owned(), "portcullis-conformance".to_owned()));
        let grpc = match url.scheme.as_str() {
            "http" => false,
            "grpc" => true,
            other => return Err(format!("unsupported mesh URL scheme {other:?}")),
        };
        let via = ctx
            .outbound
            .as_ref()
            .filter(|(_, proxied)| proxied == namespace)
            .map(|(proxy, _)| *proxy);
        Ok(Self {
            address,
            via,
            grpc,
            outgoing: Outgoing {
                protocol: Protocol::Http1,
                method: request.method,
                target: url.target,
                host,
                headers,
                tls: None,
            },
            expect,
        })
    }

    async fn send(&self) -> Result<MeshAnswer, String> {
        if self.grpc {
            if self.via.is_some() {
                return Err(
                    "gRPC through the outbound proxy is not supported by the runner".into(),
                );
            }
            return self.send_grpc().await;
        }
        let reply: Reply = match self.via {
            None => client::exchange(self.address, &self.outgoing, false, REQUEST_TIMEOUT).await,
            Some(proxy) => {
                client::exchange_via_proxy(proxy, self.address, &self.outgoing, REQUEST_TIMEOUT)
                    .await
            }
        }
        .map_err(|e| format!("transport error: {e:#}"))?;
        let echo = EchoLines::parse(&String::from_utf8_lossy(&reply.body)).ok();
        Ok(MeshAnswer {
            status: reply.status,
            headers: reply.headers,
            echo,
        })
    }

    async fn send_grpc(&self) -> Result<MeshAnswer, String> {
        let call = Call {
            authority: self.outgoing.host.clone(),
            full_method: format!("/{}/{GRPC_METHOD}", grpc::SERVICE),
            metadata: Vec::new(),
        };
        let outcome = grpc::unary(self.address, None, &call, REQUEST_TIMEOUT)
            .await
            .map_err(|e| format!("transport error: {e:#}"))?;
        if outcome.code != Code::OK {
            return Err(format!(
                "gRPC status {} ({})",
                outcome.code.name(),
                outcome.message
            ));
        }
        let hostname = outcome
            .response
            .and_then(|r| r.assertions)
            .and_then(|a| a.context)
            .map(|c| c.pod)
            .unwrap_or_default();
        Ok(MeshAnswer {
            status: 200,
            headers: Vec::new(),
            echo: Some(EchoLines {
                status: 200,
                hostname,
                ..EchoLines::default()
            }),
        })
    }

    async fn try_once(&self) -> Result<MeshAnswer, String> {
        let answer = self.send().await?;
        compare(&self.expect, &answer)?;
        Ok(answer)
    }

    /// Upstream's eventual consistency: 3 passes in a row, 1 s pause after a failure.
    async fn eventually(&self, cap: Duration) -> Result<(), String> {
        let started = Instant::now();
        let (mut in_a_row, mut tries) = (0, 0);
        let mut last = String::from("no request sent");
        while started.elapsed() < cap {
            tries += 1;
            match self.try_once().await {
                Ok(_) => {
                    in_a_row += 1;
                    if in_a_row >= PASSES_IN_A_ROW {
                        return Ok(());
                    }
                }
                Err(error) => {
                    in_a_row = 0;
                    last = error;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        Err(format!(
            "no {PASSES_IN_A_ROW} passes in a row within {cap:.0?} ({tries} tries) to {}; last: {last}",
            self.address
        ))
    }
}

/// Upstream's mesh comparison of one answer.
pub fn compare(expect: &MeshExpect, answer: &MeshAnswer) -> Result<(), String> {
    if !expect.status.contains(&answer.status) {
        return Err(format!(
            "status {}, want one of {:?}",
            answer.status, expect.status
        ));
    }
    let first = |name: &str| {
        answer
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    };
    for (name, want) in &expect.response_headers {
        match first(name) {
            Some(value) if value == want => {}
            other => {
                return Err(format!(
                    "response header {name}: got {other:?}, want {want:?}"
                ));
            }
        }
    }
    if let Some(name) = expect
        .response_absent_headers
        .iter()
        .find(|n| first(n).is_some())
    {
        return Err(format!(
            "response header {name} must be absent, got {:?}",
            first(name)
        ));
    }
    let needs_echo = !expect.backend.is_empty()
        || !expect.backend_request_headers.is_empty()
        || !expect.backend_request_absent_headers.is_empty();
    if !needs_echo {
        return Ok(());
    }
    let echo = answer
        .echo
        .as_ref()
        .ok_or("the answer is not an echo reply (no Hostname)")?;
    if !echo.hostname.starts_with(&expect.backend) {
        return Err(format!(
            "answered by {:?}, want a pod of {:?}",
            echo.hostname, expect.backend
        ));
    }
    for (name, want) in &expect.backend_request_headers {
        match echo.header(name) {
            Some(value) if &value == want => {}
            other => {
                return Err(format!(
                    "backend request header {name}: got {other:?}, want {want:?}"
                ));
            }
        }
    }
    if let Some(name) = expect
        .backend_request_absent_headers
        .iter()
        .find(|n| echo.header(n).is_some())
    {
        return Err(format!(
            "backend request header {name} must be absent, got {:?}",
            echo.header(name)
        ));
    }
    Ok(())
}

/// `mesh-request`.
pub async fn mesh_request(case: &Case, ctx: &TrafficContext) -> Result<(), String> {
    MeshTarget::prepare(case, ctx)?
        .eventually(ctx.consistency_cap())
        .await
}

/// `mesh-weighted-distribution`: the plain request must pass first, then batches of
/// requests are mapped to backends and compared with the weights.
pub async fn weighted_distribution(case: &Case, ctx: &TrafficContext) -> Result<(), String> {
    let target = Arc::new(MeshTarget::prepare(case, ctx)?);
    let distribution = distribution(case)?;
    target.eventually(ctx.consistency_cap()).await?;
    let mut last = String::new();
    for attempt in 1..=distribution.max_attempts.max(1) {
        let answers = batch(
            &target,
            distribution.requests,
            distribution.concurrency,
            |t: Arc<MeshTarget>| async move {
                let answer = t.try_once().await?;
                Ok(answer.echo.map(|e| e.hostname).unwrap_or_default())
            },
        )
        .await;
        match answers.and_then(|pods| {
            let mut counts = BTreeMap::new();
            for pod in &pods {
                *counts.entry(backend_name(pod).to_owned()).or_insert(0) += 1;
            }
            check_distribution(
                &counts,
                &distribution.weights,
                distribution.absolute_tolerance,
            )
        }) {
            Ok(()) => return Ok(()),
            Err(error) => last = format!("attempt {attempt}: {error}"),
        }
    }
    Err(last)
}

fn get() -> String {
    "GET".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, headers: &[(&str, &str)], echo: Option<EchoLines>) -> MeshAnswer {
        MeshAnswer {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            echo,
        }
    }

    fn echo(pod: &str, headers: &[(&str, &str)]) -> Option<EchoLines> {
        let mut lines = EchoLines {
            hostname: pod.to_owned(),
            ..EchoLines::default()
        };
        for (n, v) in headers {
            lines
                .request_headers
                .entry(n.to_string())
                .or_default()
                .push(v.to_string());
        }
        Some(lines)
    }

    fn expect(yaml: &str) -> MeshExpect {
        serde_yaml_ng::from_str(yaml).expect("expect block")
    }

    #[test]
    fn status_and_backend_prefix() {
        let e = expect("{status: [200], backend: echo-v1}");
        assert!(compare(&e, &answer(200, &[], echo("echo-v1-a-b", &[]))).is_ok());
        assert!(compare(&e, &answer(200, &[], echo("echo-v2-a-b", &[]))).is_err());
        assert!(compare(&e, &answer(404, &[], echo("echo-v1-a-b", &[]))).is_err());
        assert!(compare(&e, &answer(200, &[], None)).is_err());
        let redirect = expect("{status: [302], backend: ''}");
        assert!(compare(&redirect, &answer(302, &[], None)).is_ok());
    }

    #[test]
    fn response_headers_compare_the_first_value() {
        let e = expect("{status: [200], response_headers: {X-Header-Set: v1}}");
        let ok = answer(200, &[("x-header-set", "v1"), ("x-header-set", "v2")], None);
        assert!(compare(&e, &ok).is_ok());
        assert!(compare(&e, &answer(200, &[("x-header-set", "v2")], None)).is_err());
        let absent = expect("{status: [200], response_absent_headers: [X-Header-Set]}");
        assert!(compare(&absent, &answer(200, &[], None)).is_ok());
        assert!(compare(&absent, &ok).is_err());
    }

    #[test]
    fn backend_headers_are_joined_and_case_insensitive() {
        let e = expect(
            "{status: [200], backend: echo-v1, backend_request_headers: {x-header-add: 'a,b'}, \
             backend_request_absent_headers: [X-Header-Remove]}",
        );
        let pod = "echo-v1-a-b";
        let good = echo(pod, &[("X-Header-Add", "a"), ("X-Header-Add", "b")]);
        assert!(compare(&e, &answer(200, &[], good)).is_ok());
        let removed_not = echo(pod, &[("X-Header-Add", "a,b"), ("X-Header-Remove", "x")]);
        assert!(compare(&e, &answer(200, &[], removed_not)).is_err());
        assert!(compare(&e, &answer(200, &[], echo(pod, &[]))).is_err());
    }
}
