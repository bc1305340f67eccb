//! Pods as network namespaces, for `cal-llm demo --netns`: one namespace per workload, all
//! on one bridge in the host's namespace (the "node"), each with a default route out of its
//! interface, as a CNI plugin would set them up. The external API lives in a namespace of
//! its own with addresses outside the cluster networks.
//!
//! No packet is forwarded between subnets: every namespace's routes are on-link, so all
//! traffic stays on the bridge and the host's sysctls are left alone. Everything is created
//! with names carrying this process's id and deleted on drop.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};

/// The bridge's own address (the node).
pub const NODE_IP: &str = "10.244.0.1";

/// One pod: its network namespace.
pub struct Pod {
    pub namespace: String,
}

/// The namespaces and the bridge; deleted on drop.
pub struct Pods {
    bridge: String,
    namespaces: Vec<String>,
}

/// Runs a command; fails with its stderr.
pub fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("running {program} (install iproute2 and iptables)"))?;
    if !output.status.success() {
        bail!(
            "{program} {} failed (the --netns demo needs root): {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

impl Pods {
    /// Creates the bridge.
    pub fn new() -> anyhow::Result<Self> {
        let bridge = format!("clbr{}", std::process::id());
        run("ip", &["link", "add", &bridge, "type", "bridge"])?;
        let pods = Self {
            bridge,
            namespaces: Vec::new(),
        };
        run(
            "ip",
            &["addr", "add", &format!("{NODE_IP}/24"), "dev", &pods.bridge],
        )?;
        run("ip", &["link", "set", &pods.bridge, "up"])?;
        Ok(pods)
    }

    /// Adds a pod named `name` with addresses `ips` (the first is its pod IP, in
    /// 10.244.0.0/24; more may follow, on any network).
    pub fn add(&mut self, name: &str, ips: &[&str]) -> anyhow::Result<Pod> {
        let id = std::process::id();
        let namespace = format!("cl-{name}-{id}");
        run("ip", &["netns", "add", &namespace])?;
        self.namespaces.push(namespace.clone());
        let index = self.namespaces.len();
        let (host_if, pod_if) = (format!("clh{index}x{id}"), format!("clp{index}x{id}"));
        run(
            "ip",
            &[
                "link", "add", &host_if, "type", "veth", "peer", "name", &pod_if,
            ],
        )?;
        run("ip", &["link", "set", &host_if, "master", &self.bridge])?;
        run("ip", &["link", "set", &host_if, "up"])?;
        run("ip", &["link", "set", &pod_if, "netns", &namespace])?;
        let ns = namespace.as_str();
        run("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        for (i, ip) in ips.iter().enumerate() {
            let prefix = if i == 0 { 24 } else { 32 };
            run(
                "ip",
                &[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{ip}/{prefix}"),
                    "dev",
                    &pod_if,
                ],
            )?;
        }
        run("ip", &["-n", ns, "link", "set", &pod_if, "up"])?;
        // Everything else is on the bridge too: ClusterIPs (for connect() to reach the
        // sidecar's iptables rules) and the external API's addresses.
        run("ip", &["-n", ns, "route", "add", "default", "dev", &pod_if])?;
        Ok(Pod { namespace })
    }
}

impl Drop for Pods {
    fn drop(&mut self) {
        for namespace in &self.namespaces {
            let _ = Command::new("ip")
                .args(["netns", "del", namespace])
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

impl Pod {
    /// Runs `work` to completion on a new thread inside the pod's namespace, on a runtime of
    /// its own: every socket its tasks open belongs to the pod. The result comes back
    /// through the join handle.
    pub fn spawn<F, Fut, T>(&self, work: F) -> std::thread::JoinHandle<anyhow::Result<T>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = anyhow::Result<T>>,
        T: Send + 'static,
    {
        let path = Path::new("/run/netns").join(&self.namespace);
        std::thread::spawn(move || {
            let file = File::open(&path).with_context(|| format!("{}", path.display()))?;
            enter(&file)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(work())
        })
    }

    /// `ip netns exec` into the pod, for starting processes there.
    pub fn command(&self, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace])
            .arg(program);
        command
    }

    /// Like [`Pod::command`], running as `uid` (the sidecar's user, which its iptables rules
    /// leave alone).
    pub fn command_as(&self, uid: u32, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command
            .args(["netns", "exec", &self.namespace, "setpriv"])
            .args([
                &format!("--reuid={uid}"),
                &format!("--regid={uid}"),
                "--clear-groups",
            ])
            .arg(program);
        command
    }
}

/// Moves the calling thread into the network namespace of `file` (setns(2)).
fn enter(file: &File) -> anyhow::Result<()> {
    nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
        .context("entering the pod's network namespace")
}
