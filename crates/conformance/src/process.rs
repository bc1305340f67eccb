//! The portcullis process of one case file: started on the manifest directory with a free
//! admin port, awaited on `GET /ready`, and killed by its PID at the end.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

use crate::client;

/// The address pool portcullis hands Gateways addresses from.
pub const ADDRESS_POOL: &str = "127.0.100.0/24";

/// A running `portcullis run`.
pub struct Portcullis {
    child: Child,
    /// `--admin` address.
    pub admin: SocketAddr,
    log: PathBuf,
}

impl Portcullis {
    /// Starts `BINARY run --config DIR --admin 127.0.0.1:PORT --address-pool 127.0.100.0/24
    /// --verify-patches`, with stdout and stderr going to `log`.
    pub fn start(
        binary: &Path,
        config: &Path,
        log: &Path,
        outbound: Option<&(SocketAddr, String)>,
    ) -> anyhow::Result<Self> {
        let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let output =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let errors = output.try_clone().context("duplicating the log handle")?;
        let mut command = Command::new(binary);
        command.arg("run");
        if let Some((proxy, namespace)) = outbound {
            command
                .arg("--egress-proxy")
                .arg(proxy.to_string())
                .arg("--workload-namespace")
                .arg(namespace);
        }
        let child = command
            .arg("--config")
            .arg(config)
            .arg("--admin")
            .arg(admin.to_string())
            .arg("--address-pool")
            .arg(ADDRESS_POOL)
            // A reload served by patching the previous config is checked against a full
            // translation; a difference stops portcullis, which fails the case.
            .arg("--verify-patches")
            // Plain log lines: they end up in failure messages.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::from(output))
            .stderr(Stdio::from(errors))
            // A safety net only: `stop` is the normal way out.
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        Ok(Self {
            child,
            admin,
            log: log.to_owned(),
        })
    }

    /// Waits until `GET /ready` answers 200, failing early if the process exits.
    pub async fn wait_ready(&mut self, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut last = String::from("not asked yet");
        while started.elapsed() < limit {
            if let Some(exit) = self.child.try_wait().context("polling portcullis")? {
                bail!(
                    "portcullis exited with {exit} before /ready: {}",
                    self.log_tail(8)
                );
            }
            match client::get(self.admin, "/ready", Duration::from_secs(2)).await {
                Ok((200, _)) => return Ok(()),
                Ok((status, _)) => last = format!("/ready answered {status}"),
                Err(error) => last = format!("{error:#}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bail!(
            "portcullis not ready within {limit:?} ({last}): {}",
            self.log_tail(8)
        )
    }

    /// `Some(description)` when the process has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.try_wait() {
            Ok(Some(exit)) => Some(format!(
                "portcullis exited with {exit}: {}",
                self.log_tail(8)
            )),
            _ => None,
        }
    }

    /// Kills the process by its PID and reaps it.
    pub async fn stop(mut self) {
        // Errors mean it is already gone, which is the goal.
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.child.wait()).await;
    }

    /// The last `lines` lines of portcullis' output, joined with ` | `.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(lines).collect();
        if tail.is_empty() {
            return "(no output)".to_owned();
        }
        tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }
}

/// A port that was free a moment ago (the kernel picks it; a tiny race is acceptable).
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener
        .local_addr()
        .context("reading the free port")?
        .port())
}

/// `portcullis` next to the runner's own executable.
pub fn default_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe().context("locating the runner executable")?;
    let dir = me
        .parent()
        .context("runner executable without a directory")?;
    // Unit-test binaries live in target/<profile>/deps; the binary is one level up.
    let dir = if dir.ends_with("deps") {
        dir.parent().unwrap_or(dir)
    } else {
        dir
    };
    Ok(dir.join("portcullis"))
}
