//! `portcullis explain`: which listener, rule and backends a request would get.

use std::process::ExitCode;

use anyhow::{Context, bail};
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use ir::{Action, BackendTarget, Hostname, HttpRequestParts};
use sources::Directory;

use crate::ExplainArgs;

pub fn explain(args: &ExplainArgs) -> anyhow::Result<ExitCode> {
    let root = &args.config.config;
    let mut directory = Directory::new(root);
    directory
        .rescan()
        .with_context(|| format!("cannot read {}", root.display()))?;
    let snapshot = directory.store().snapshot();
    let translation = translate::translate(&snapshot, &args.config.translate_options());

    let mut method = Method::from_bytes(args.method.as_bytes()).context("invalid --method")?;
    let mut headers = HeaderMap::new();
    let mut target = args.path.clone();
    if let Some(grpc) = &args.grpc_method {
        let Some((service, rpc)) = grpc.split_once('/') else {
            bail!("--grpc-method must be package.Service/Method, got {grpc:?}");
        };
        if service.is_empty() || rpc.is_empty() || rpc.contains('/') {
            bail!("--grpc-method must be package.Service/Method, got {grpc:?}");
        }
        target = format!("/{service}/{rpc}");
        method = Method::POST;
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
    }
    for header in &args.headers {
        let Some((name, value)) = header.split_once('=') else {
            bail!("--header must be NAME=VALUE, got {header:?}");
        };
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).context("invalid header name")?,
            HeaderValue::from_str(value).context("invalid header value")?,
        );
    }
    // The listener label translate gives a Gateway's listeners, or a Service's mesh ones.
    let parent = match (&args.gateway, &args.service) {
        (Some(gateway), _) => gateway.clone(),
        (None, Some(service)) => format!("Service {service}"),
        (None, None) => bail!("--gateway or --service is required"),
    };
    let default_host = args
        .service
        .as_deref()
        .map(|s| s.rsplit('/').next().unwrap_or(s).to_string());
    let Some(host) = args
        .host
        .as_deref()
        .or(default_host.as_deref())
        .and_then(Hostname::from_request_host)
    else {
        bail!("--host is empty")
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target.as_str(), None),
    };
    let request = HttpRequestParts {
        host: host.as_str(),
        path,
        query,
        method: &method,
        headers: &headers,
    };

    let mut found_any = false;
    let mut matched = false;
    for (addr, bind) in &translation.config.binds {
        if args.port.is_some_and(|p| p != addr.port()) {
            continue;
        }
        // ListenerSet listeners are labelled "GATEWAY (ListenerSet NS/NAME)".
        let ours = |label: &str| label == parent || label.starts_with(&format!("{parent} ("));
        if !bind.http.iter().any(|l| ours(&l.gateway)) {
            continue;
        }
        found_any = true;
        let Some(listener) = bind
            .listener_for(host.as_str())
            .filter(|l| ours(&l.gateway))
        else {
            println!("{addr}: no listener of {parent} accepts host {host}");
            continue;
        };
        println!(
            "{addr}: listener {}/{} ({} routes)",
            listener.gateway,
            listener.name,
            listener.routes.len()
        );
        let Some(selected) = listener.routes.select(&request) else {
            println!("  no rule matches: the gateway answers 404");
            continue;
        };
        matched = true;
        let id = &selected.rule.id;
        let rule_name = id
            .rule_name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default();
        let kind = match id.kind {
            ir::RouteKind::Grpc => "GRPCRoute",
            ir::RouteKind::Tls => "TLSRoute",
            ir::RouteKind::Tcp => "TCPRoute",
            ir::RouteKind::Http => "HTTPRoute",
        };
        println!(
            "  route {kind} {}/{} rule {}{}",
            id.namespace, id.name, id.rule, rule_name
        );
        println!("  match {}", serde_json::to_string(selected.matcher)?);
        explain_admission(selected.rule);
        match &selected.rule.action {
            Action::Redirect(redirect) => {
                println!("  redirect {}", serde_json::to_string(redirect)?)
            }
            Action::Invalid(reason) => {
                println!("  invalid rule, the gateway answers 500: {reason}")
            }
            Action::Forward(backends) => {
                let total: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
                for backend in backends {
                    let share = if total == 0 {
                        0.0
                    } else {
                        f64::from(backend.weight) * 100.0 / total as f64
                    };
                    match &backend.target {
                        BackendTarget::Service(service) => println!(
                            "  backend {} weight {} ({share:.1}%) endpoints {:?}",
                            service.name,
                            backend.weight,
                            service
                                .endpoints
                                .iter()
                                .map(|e| e.addr.to_string())
                                .collect::<Vec<_>>()
                        ),
                        BackendTarget::OriginalDestination => println!(
                            "  backend: the original destination (egress) weight {} ({share:.1}%)",
                            backend.weight
                        ),
                        BackendTarget::Invalid(invalid) => println!(
                            "  backend {} weight {} ({share:.1}%) invalid ({}), answered with 500",
                            invalid.reference, backend.weight, invalid.reason
                        ),
                    }
                }
            }
        }
    }
    if !found_any {
        match &args.gateway {
            Some(gateway) => println!(
                "Gateway {gateway} has no programmed HTTP listener (see `portcullis check`)"
            ),
            None => println!(
                "{parent} has no HTTPRoute or GRPCRoute attached{} (see `portcullis check`)",
                args.port
                    .map(|p| format!(" on port {p}"))
                    .unwrap_or_default()
            ),
        }
    }
    Ok(if matched {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The steps a request passes before it is forwarded, and where each comes from.
fn explain_admission(rule: &ir::Rule) {
    if let Some(applied) = &rule.policies.authentication {
        let policy = &applied.policy;
        let mut methods = Vec::new();
        if let Some(jwt) = &policy.jwt {
            let providers: Vec<&str> = jwt.providers.iter().map(|p| p.name.as_str()).collect();
            methods.push(format!("JWT (providers {})", providers.join(", ")));
        }
        if let Some(basic) = &policy.basic {
            methods.push(format!(
                "basic auth (realm {:?}, {} users)",
                basic.realm,
                basic.users.len()
            ));
        }
        if let Some(keys) = &policy.api_key {
            methods.push(format!("API key ({} clients)", keys.keys.len()));
        }
        if methods.is_empty() {
            methods.push("nothing compiled".to_string());
        }
        println!(
            "  authentication: AuthenticationPolicy {} via {}: {}",
            policy.policy,
            applied.via,
            methods.join(" and ")
        );
        if let Some(reason) = &policy.invalid {
            println!("    invalid, every request gets 500: {reason}");
        }
    }
    if let Some(auth) = &rule.filters.external_auth {
        let protocol = match auth.protocol {
            ir::AuthProtocol::Http { .. } => "HTTP",
            ir::AuthProtocol::Grpc { .. } => "GRPC (ext_authz)",
        };
        println!(
            "  external auth: {protocol} service {} (the rule's filter; fails closed)",
            auth.backend.name
        );
    }
    if let Some(applied) = &rule.policies.rate_limit {
        let policy = &applied.policy;
        for limit in &policy.limits {
            let key = match &limit.key {
                ir::ClientKey::Everyone => "all clients together".to_string(),
                ir::ClientKey::ClientIp => "per client IP".to_string(),
                ir::ClientKey::Header(name) => format!("per header {name}"),
                ir::ClientKey::JwtClaim(claim) => format!("per JWT claim {claim}"),
            };
            println!(
                "  rate limit: RateLimitPolicy {} via {}: {} requests per {:?}, {key} ({:?})",
                policy.policy, applied.via, limit.requests, limit.window, limit.scope
            );
        }
    }
}
