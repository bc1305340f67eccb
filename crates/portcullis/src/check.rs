//! `portcullis check`: translate offline and print every resource's status.

use std::process::ExitCode;

use anyhow::Context;
use model::status::{Condition, ConditionStatus, ResourceStatus};
use sources::Directory;

use crate::status;
use crate::{CheckArgs, OutputFormat};

pub fn check(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    let root = &args.config.config;
    let mut directory = Directory::new(root);
    directory
        .rescan()
        .with_context(|| format!("cannot read {}", root.display()))?;
    let store = directory.store();
    let snapshot = store.snapshot();
    let errors = store.errors();
    let warnings = store.warnings();
    let translation = translate::translate(&snapshot, &args.config.translate_options());
    let rejected: Vec<_> = translation
        .status
        .0
        .iter()
        .filter(|(_, resource)| status::rejected(resource))
        .map(|(key, _)| key.to_string())
        .collect();
    match args.output {
        OutputFormat::Json | OutputFormat::Yaml => {
            let document = status::document(&snapshot, &translation.status, &errors, &warnings);
            let text = if args.output == OutputFormat::Json {
                serde_json::to_string_pretty(&document)?
            } else {
                serde_yaml_ng::to_string(&document)?
            };
            println!("{text}");
        }
        OutputFormat::Table => {
            for error in &errors {
                println!("error: {error}");
            }
            for warning in &warnings {
                println!("warning: {warning}");
            }
            for (key, resource) in &translation.status.0 {
                print_resource(&key.to_string(), resource);
            }
        }
    }
    if !errors.is_empty() || !rejected.is_empty() {
        eprintln!(
            "check failed: {} manifest error(s), {} resource(s) not accepted{}",
            errors.len(),
            rejected.len(),
            if rejected.is_empty() {
                String::new()
            } else {
                format!(" ({})", rejected.join(", "))
            }
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_resource(name: &str, resource: &ResourceStatus) {
    match resource {
        ResourceStatus::GatewayClass { conditions } | ResourceStatus::Conditions { conditions } => {
            println!("{name}  {}", conditions_line(conditions))
        }
        ResourceStatus::Gateway {
            addresses,
            conditions,
            listeners,
            attached_listener_sets,
        } => {
            let addresses: Vec<_> = addresses.iter().map(|a| a.value.as_str()).collect();
            println!(
                "{name}  {}  addresses=[{}]  attachedListenerSets={attached_listener_sets}",
                conditions_line(conditions),
                addresses.join(",")
            );
            for listener in listeners {
                println!(
                    "  listener {}  attachedRoutes={}  {}",
                    listener.name,
                    listener.attached_routes,
                    conditions_line(&listener.conditions)
                );
            }
        }
        ResourceStatus::ListenerSet {
            conditions,
            listeners,
        } => {
            println!("{name}  {}", conditions_line(conditions));
            for listener in listeners {
                println!(
                    "  listener {}  attachedRoutes={}  {}",
                    listener.name,
                    listener.attached_routes,
                    conditions_line(&listener.conditions)
                );
            }
        }
        ResourceStatus::Route { parents } => {
            println!("{name}");
            for parent in parents {
                let p = &parent.parent_ref;
                let section = p
                    .section_name
                    .as_deref()
                    .map(|s| format!("/{s}"))
                    .unwrap_or_default();
                let port = p.port.map(|p| format!(":{p}")).unwrap_or_default();
                println!(
                    "  parent {} {}{}{}  {}",
                    p.kind,
                    p.namespace
                        .as_deref()
                        .map(|n| format!("{n}/"))
                        .unwrap_or_default()
                        + &p.name,
                    section,
                    port,
                    conditions_line(&parent.conditions)
                );
            }
        }
    }
}

fn conditions_line(conditions: &[Condition]) -> String {
    conditions
        .iter()
        .map(|c| {
            let status = match c.status {
                ConditionStatus::True => "True",
                ConditionStatus::False => "False",
                ConditionStatus::Unknown => "Unknown",
            };
            let detail = if c.status == ConditionStatus::False
                || c.kind == model::status::ConditionType::PartiallyInvalid
            {
                format!(" ({})", c.message)
            } else {
                String::new()
            };
            format!("{:?}={status}/{:?}{detail}", c.kind, c.reason)
        })
        .collect::<Vec<_>>()
        .join("  ")
}
