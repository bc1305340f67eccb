//! `portcullis init`: the iptables rules that send a workload's outbound TCP to the
//! transparent outbound listener (`run --outbound`), like Linkerd's proxy-init.
//!
//! Run inside the workload's network namespace (as root, or with `CAP_NET_ADMIN`). The rules
//! live in their own chain of the `nat` table, so removing them (`--remove`) touches nothing
//! else:
//!
//! ```text
//! iptables -t nat -N PORTCULLIS_OUTPUT
//! iptables -t nat -A PORTCULLIS_OUTPUT -m owner --uid-owner <proxy uid> -j RETURN
//! iptables -t nat -A PORTCULLIS_OUTPUT -o lo -j RETURN
//! iptables -t nat -A PORTCULLIS_OUTPUT -d <each --skip-cidr> -j RETURN
//! iptables -t nat -A PORTCULLIS_OUTPUT -p tcp --dport <each --skip-port> -j RETURN
//! iptables -t nat -A PORTCULLIS_OUTPUT -p tcp -j REDIRECT --to-ports <outbound port>
//! iptables -t nat -A OUTPUT -p tcp -j PORTCULLIS_OUTPUT
//! ```
//!
//! The proxy's own connections (its UID) are never redirected, or they would loop back into
//! it; loopback traffic stays local. The rules are applied through the `iptables` command,
//! which picks the kernel's backend (nft or legacy) the way the rest of the system does;
//! talking netlink directly would duplicate that logic.

use std::process::{Command, ExitCode};

use anyhow::{Context, bail};

use crate::InitArgs;

/// The chain holding portcullis's rules.
const CHAIN: &str = "PORTCULLIS_OUTPUT";

/// Installs (or with `--remove`, removes) the rules; `--dry-run` prints them instead.
pub fn init(args: &InitArgs) -> anyhow::Result<ExitCode> {
    let commands = if args.remove {
        removal()
    } else {
        installation(args)
    };
    for command in &commands {
        if args.dry_run {
            println!("iptables {}", command.join(" "));
            continue;
        }
        let status = Command::new("iptables")
            .args(command)
            .status()
            .context("cannot run iptables (is it installed?)")?;
        // Removing rules that are not there is not an error: the goal is their absence.
        if !status.success() && !args.remove {
            bail!("iptables {} failed with {status}", command.join(" "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn installation(args: &InitArgs) -> Vec<Vec<String>> {
    let rule = |parts: &[&str]| -> Vec<String> {
        ["-t", "nat", "-A", CHAIN]
            .iter()
            .chain(parts)
            .map(|s| s.to_string())
            .collect()
    };
    let uid = args.proxy_uid.to_string();
    let mut commands = vec![
        vec!["-t".into(), "nat".into(), "-N".into(), CHAIN.into()],
        rule(&["-m", "owner", "--uid-owner", &uid, "-j", "RETURN"]),
        rule(&["-o", "lo", "-j", "RETURN"]),
    ];
    for cidr in &args.skip_cidr {
        commands.push(rule(&["-d", &cidr.to_string(), "-j", "RETURN"]));
    }
    for port in &args.skip_port {
        commands.push(rule(&[
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
            "-j",
            "RETURN",
        ]));
    }
    let outbound = args.outbound_port.to_string();
    commands.push(rule(&[
        "-p",
        "tcp",
        "-j",
        "REDIRECT",
        "--to-ports",
        &outbound,
    ]));
    commands.push(
        ["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", CHAIN]
            .map(String::from)
            .to_vec(),
    );
    commands
}

fn removal() -> Vec<Vec<String>> {
    [
        vec!["-t", "nat", "-D", "OUTPUT", "-p", "tcp", "-j", CHAIN],
        vec!["-t", "nat", "-F", CHAIN],
        vec!["-t", "nat", "-X", CHAIN],
    ]
    .into_iter()
    .map(|c| c.into_iter().map(String::from).collect())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_exclude_the_proxy_and_loopback_before_redirecting() {
        let args = InitArgs {
            proxy_uid: 2102,
            outbound_port: 15001,
            skip_cidr: vec!["169.254.169.254/32".parse().expect("cidr")],
            skip_port: vec![22],
            remove: false,
            dry_run: true,
        };
        let lines: Vec<String> = installation(&args).iter().map(|c| c.join(" ")).collect();
        assert_eq!(
            lines,
            [
                "-t nat -N PORTCULLIS_OUTPUT",
                "-t nat -A PORTCULLIS_OUTPUT -m owner --uid-owner 2102 -j RETURN",
                "-t nat -A PORTCULLIS_OUTPUT -o lo -j RETURN",
                "-t nat -A PORTCULLIS_OUTPUT -d 169.254.169.254/32 -j RETURN",
                "-t nat -A PORTCULLIS_OUTPUT -p tcp --dport 22 -j RETURN",
                "-t nat -A PORTCULLIS_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
                "-t nat -A OUTPUT -p tcp -j PORTCULLIS_OUTPUT",
            ]
        );
        let removal: Vec<String> = removal().iter().map(|c| c.join(" ")).collect();
        assert_eq!(
            removal,
            [
                "-t nat -D OUTPUT -p tcp -j PORTCULLIS_OUTPUT",
                "-t nat -F PORTCULLIS_OUTPUT",
                "-t nat -X PORTCULLIS_OUTPUT",
            ]
        );
    }
}
