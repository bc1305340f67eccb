//! The gRPC case types (README "`grpc`" and "`grpc-weighted-distribution`"): unary calls of
//! the echo service through the Gateway in cleartext HTTP/2, judged by their status code and,
//! for `OK`, by what the echo saw.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng as _;
use serde::Deserialize;

use crate::batches::{self, check_distribution};
use crate::case::Case;
use crate::expect::backend_name;
use crate::grpc::{self, Call, Code, Connection, Outcome};
use crate::traffic::{PASSES_IN_A_ROW, REQUEST_TIMEOUT, TrafficContext, gateway_address};

/// `request` of the gRPC case types.
#[derive(Debug, Clone, Deserialize)]
pub struct GrpcRequest {
    /// Only `h2c-plaintext` exists.
    #[serde(default)]
    pub transport: Option<String>,
    /// `/service/method`.
    pub full_method: String,
    /// Overrides `:authority` (default: the gateway's `address:port`).
    #[serde(default)]
    pub authority: Option<String>,
    /// Request metadata.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// `expect` of the gRPC case types.
#[derive(Debug, Clone, Deserialize)]
pub struct GrpcExpect {
    /// `OK`, `Unimplemented`, ...
    pub code: String,
    /// For `OK`: the echo's `fully_qualified_method` must equal this.
    #[serde(default)]
    pub full_method_seen: Option<String>,
    /// For `OK`: the pod name must start with this (`''` = any).
    #[serde(default)]
    pub backend: Option<String>,
    /// For `OK`, only when given: the echo's namespace must equal this.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// A prepared gRPC case.
#[derive(Debug, Clone)]
pub struct GrpcTarget {
    /// Gateway address and listener port.
    pub address: SocketAddr,
    /// The call as sent.
    pub call: Call,
    /// The expected code, parsed.
    pub code: Code,
    /// The expectation block.
    pub expect: GrpcExpect,
}

impl GrpcTarget {
    /// Builds the target of a gRPC case.
    pub async fn prepare(case: &Case, ctx: &TrafficContext) -> Result<Self, String> {
        let request: GrpcRequest = serde_json::from_value(case.request.clone())
            .map_err(|e| format!("gRPC request block: {e}"))?;
        let expect: GrpcExpect = serde_json::from_value(case.expect.clone())
            .map_err(|e| format!("gRPC expect block: {e}"))?;
        if let Some(transport) = request
            .transport
            .as_deref()
            .filter(|t| *t != "h2c-plaintext")
        {
            return Err(format!(
                "unsupported case type: gRPC transport {transport:?}"
            ));
        }
        let code = Code::from_name(&expect.code)
            .ok_or_else(|| format!("unknown gRPC code {:?}", expect.code))?;
        let port = case.port.ok_or("a gRPC case without port")?;
        let ip = gateway_address(case, ctx).await?;
        let address = SocketAddr::new(ip, port);
        Ok(Self {
            address,
            call: Call {
                // grpc-go sends the dialled `host:port` unless the authority is overridden.
                authority: request.authority.unwrap_or_else(|| address.to_string()),
                full_method: request.full_method,
                metadata: request.metadata.into_iter().collect(),
            },
            code,
            expect,
        })
    }

    /// One call on `connection` (or a new one), no comparison.
    pub async fn send(&self, connection: Option<&Connection>) -> Result<Outcome, String> {
        grpc::unary(self.address, connection, &self.call, REQUEST_TIMEOUT)
            .await
            .map_err(|e| format!("transport error: {e:#}"))
    }

    /// One call on a new connection, compared with the expectation.
    pub async fn try_once(&self) -> Result<Outcome, String> {
        let outcome = self.send(None).await?;
        check(&self.expect, self.code, &outcome)?;
        Ok(outcome)
    }

    /// README "Eventually consistent": 3 passes in a row, 1 s pause after a failure, at most
    /// `cap`.
    pub async fn eventually(&self, cap: Duration) -> Result<(), String> {
        let started = Instant::now();
        let (mut in_a_row, mut tries) = (0, 0);
        let mut last_error = String::from("no call made");
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
                    last_error = error;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
        Err(format!(
            "no {PASSES_IN_A_ROW} passes in a row within {cap:.0?} ({tries} tries); last: {last_error}"
        ))
    }
}

/// README `grpc`: the code must match; for `OK`, `fully_qualified_method` equals
/// `full_method_seen`, the pod starts with `backend` and, when given, the namespace matches.
pub fn check(expect: &GrpcExpect, code: Code, outcome: &Outcome) -> Result<(), String> {
    if outcome.code != code {
        return Err(format!(
            "want code {}, got {} ({})",
            code.name(),
            outcome.code.name(),
            outcome.message
        ));
    }
    if code != Code::OK {
        return Ok(());
    }
    let assertions = outcome
        .response
        .as_ref()
        .and_then(|r| r.assertions.as_ref())
        .ok_or("OK reply without assertions")?;
    if let Some(want) = &expect.full_method_seen
        && assertions.fully_qualified_method != *want
    {
        return Err(format!(
            "backend saw method {:?}, want {want:?}",
            assertions.fully_qualified_method
        ));
    }
    let context = assertions.context.clone().unwrap_or_default();
    let prefix = expect.backend.as_deref().unwrap_or("");
    if !context.pod.starts_with(prefix) {
        return Err(format!(
            "answered by pod {:?}, want a name starting with {prefix:?}",
            context.pod
        ));
    }
    if let Some(want) = &expect.namespace
        && context.namespace != *want
    {
        return Err(format!(
            "backend namespace {:?}, want {want:?}",
            context.namespace
        ));
    }
    Ok(())
}

/// `grpc`.
pub async fn grpc(case: &Case, ctx: &TrafficContext) -> Result<(), String> {
    let target = GrpcTarget::prepare(case, ctx).await?;
    target.eventually(ctx.consistency_cap()).await
}

/// `grpc-weighted-distribution`: converge first, then batches of calls that must each end
/// with the expected code, counted by the answering pod's backend. Each RPC gets its own
/// connection when `each_request` says so ("a new connection per RPC"); otherwise one
/// connection per batch carries them all, like a single grpc-go `ClientConn`.
pub async fn weighted_distribution(case: &Case, ctx: &TrafficContext) -> Result<(), String> {
    let target = GrpcTarget::prepare(case, ctx).await?;
    let distribution = batches::distribution(case)?;
    target.eventually(ctx.consistency_cap()).await?;
    let per_call = distribution
        .each_request
        .as_deref()
        .is_some_and(|how| how.contains("new connection"));
    let entropy = distribution.entropy.is_some();
    let mut last = String::new();
    for attempt in 1..=distribution.max_attempts.max(1) {
        let connection = match per_call {
            true => None,
            false => match grpc::connect(target.address).await {
                Ok(connection) => Some(connection),
                Err(error) => {
                    last = format!("attempt {attempt}: connecting: {error:#}");
                    continue;
                }
            },
        };
        let shared = Arc::new((target.clone(), connection));
        let answers = batches::batch(
            &shared,
            distribution.requests,
            distribution.concurrency,
            move |shared| single(shared, entropy),
        )
        .await;
        let outcome = answers.and_then(|pods| {
            let mut counts = BTreeMap::new();
            for pod in &pods {
                *counts.entry(backend_name(pod).to_owned()).or_insert(0) += 1;
            }
            check_distribution(
                &counts,
                &distribution.weights,
                distribution.absolute_tolerance,
            )
        });
        match outcome {
            Ok(()) => return Ok(()),
            Err(error) => last = format!("attempt {attempt}: {error}"),
        }
    }
    Err(last)
}

/// One call that must end with the expected code (no other check, as upstream); yields the
/// answering pod. With `entropy`, like upstream: a random delay up to 1 s, random `x-jitter`
/// metadata, or both.
async fn single(
    shared: Arc<(GrpcTarget, Option<Connection>)>,
    entropy: bool,
) -> Result<String, String> {
    let (target, connection) = &*shared;
    let mut target = target.clone();
    if entropy {
        let (choice, delay, jitter) = {
            let mut rng = rand::rng();
            (
                rng.random_range(0..3),
                rng.random_range(0..1000),
                rng.random_range(0..10_000),
            )
        };
        if choice != 1 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        if choice != 0 {
            target
                .call
                .metadata
                .push(("x-jitter".to_owned(), jitter.to_string()));
        }
    }
    let outcome = target.send(connection.as_ref()).await?;
    if outcome.code != target.code {
        return Err(format!(
            "want code {}, got {} ({})",
            target.code.name(),
            outcome.code.name(),
            outcome.message
        ));
    }
    Ok(outcome
        .response
        .and_then(|r| r.assertions)
        .and_then(|a| a.context)
        .map(|c| c.pod)
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::{Assertions, Context, EchoResponse, SERVICE};

    fn expect(yaml: &str) -> GrpcExpect {
        serde_yaml_ng::from_str(yaml).expect("valid expect block")
    }

    fn ok_reply(method: &str, pod: &str, namespace: &str) -> Outcome {
        Outcome {
            code: Code::OK,
            message: String::new(),
            response: Some(EchoResponse {
                assertions: Some(Assertions {
                    fully_qualified_method: format!("/{SERVICE}/{method}"),
                    context: Some(Context {
                        namespace: namespace.to_owned(),
                        pod: pod.to_owned(),
                        ..Context::default()
                    }),
                    ..Assertions::default()
                }),
                request: None,
            }),
        }
    }

    const ECHO: &str = "
code: OK
full_method_seen: /gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo
backend: grpc-infra-backend-v1
namespace: gateway-conformance-infra
";

    #[test]
    fn a_matching_ok_reply_passes() {
        let reply = ok_reply(
            "Echo",
            "grpc-infra-backend-v1-x-y",
            "gateway-conformance-infra",
        );
        assert_eq!(check(&expect(ECHO), Code::OK, &reply), Ok(()));
    }

    #[test]
    fn method_pod_and_namespace_are_each_checked() {
        let e = expect(ECHO);
        let two = ok_reply(
            "EchoTwo",
            "grpc-infra-backend-v1-x-y",
            "gateway-conformance-infra",
        );
        assert!(check(&e, Code::OK, &two).is_err_and(|m| m.contains("backend saw method")));
        let v2 = ok_reply(
            "Echo",
            "grpc-infra-backend-v2-x-y",
            "gateway-conformance-infra",
        );
        assert!(check(&e, Code::OK, &v2).is_err_and(|m| m.contains("answered by pod")));
        let elsewhere = ok_reply("Echo", "grpc-infra-backend-v1-x-y", "other");
        assert!(check(&e, Code::OK, &elsewhere).is_err_and(|m| m.contains("namespace")));
    }

    #[test]
    fn namespace_is_checked_only_when_given() {
        let e = expect("{code: OK, backend: ''}");
        let reply = ok_reply("Echo", "anything-x-y", "whatever");
        assert_eq!(check(&e, Code::OK, &reply), Ok(()));
    }

    #[test]
    fn the_code_must_match() {
        let e = expect("{code: Unimplemented}");
        let unimplemented = Outcome {
            code: Code::UNIMPLEMENTED,
            message: "no route".to_owned(),
            response: None,
        };
        assert_eq!(check(&e, Code::UNIMPLEMENTED, &unimplemented), Ok(()));
        let reply = ok_reply("EchoThree", "p-x-y", "n");
        let error = check(&e, Code::UNIMPLEMENTED, &reply).expect_err("OK is not Unimplemented");
        assert!(
            error.starts_with("want code Unimplemented, got OK"),
            "{error}"
        );
    }

    #[test]
    fn an_ok_reply_without_assertions_fails() {
        let empty = Outcome {
            code: Code::OK,
            message: String::new(),
            response: Some(EchoResponse::default()),
        };
        assert!(check(&expect(ECHO), Code::OK, &empty).is_err());
    }
}
