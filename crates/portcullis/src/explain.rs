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

    let method = Method::from_bytes(args.method.as_bytes()).context("invalid --method")?;
    let mut headers = HeaderMap::new();
    for header in &args.headers {
        let Some((name, value)) = header.split_once('=') else {
            bail!("--header must be NAME=VALUE, got {header:?}");
        };
        headers.append(
            HeaderName::from_bytes(name.as_bytes()).context("invalid header name")?,
            HeaderValue::from_str(value).context("invalid header value")?,
        );
    }
    let Some(host) = Hostname::from_request_host(&args.host) else {
        bail!("--host is empty")
    };
    let (path, query) = match args.path.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (args.path.as_str(), None),
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
        let ours = |label: &str| {
            label == args.gateway || label.starts_with(&format!("{} (", args.gateway))
        };
        if !bind.http.iter().any(|l| ours(&l.gateway)) {
            continue;
        }
        found_any = true;
        let Some(listener) = bind
            .listener_for(host.as_str())
            .filter(|l| ours(&l.gateway))
        else {
            println!(
                "{addr}: no listener of {} accepts host {}",
                args.gateway, host
            );
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
        println!(
            "  route HTTPRoute {}/{} rule {}{}",
            id.namespace, id.name, id.rule, rule_name
        );
        println!("  match {}", serde_json::to_string(selected.matcher)?);
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
        println!(
            "Gateway {} has no programmed HTTP listener (see `portcullis check`)",
            args.gateway
        );
    }
    Ok(if matched {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
