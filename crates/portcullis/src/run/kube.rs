//! `portcullis run --kube`: the cluster is the source. Every replica watches, translates
//! and serves; only the replica holding the leader Lease writes status.
//!
//! Until per-Gateway data planes are provisioned, this one process serves every Gateway of
//! our GatewayClasses itself (a Gateway without `spec.addresses` binds all interfaces).

use anyhow::Context;
use sources::kube::{LeaderOptions, StatusWriter};

use super::Control;
use crate::KubeArgs;

/// Seconds a Lease stays valid after its last renewal.
const LEASE_SECONDS: u64 = 15;
/// Seconds before expiry at which the holder renews.
const LEASE_GRACE_SECONDS: u64 = 5;

/// Watches the cluster and reconciles on every published change, until `stop` completes.
pub(super) async fn serve(
    args: &KubeArgs,
    control: &mut Control,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let client = sources::kube::connect()
        .await
        .context("cannot configure the Kubernetes client (in-cluster or kubeconfig)")?;
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let leader = LeaderOptions {
        namespace: args
            .lease_namespace
            .clone()
            .or_else(|| env("POD_NAMESPACE"))
            .unwrap_or_else(|| "default".to_string()),
        lease: args.lease_name.clone(),
        identity: env("POD_NAME")
            .or_else(|| env("HOSTNAME"))
            .unwrap_or_else(|| format!("portcullis-{}", std::process::id())),
        duration_seconds: LEASE_SECONDS,
        grace_seconds: LEASE_GRACE_SECONDS,
    };
    let leading = sources::kube::elect(client.clone(), &leader)
        .await
        .with_context(|| {
            format!(
                "cannot start leader election on Lease {}/{}",
                leader.namespace, leader.lease
            )
        })?;
    tracing::info!(identity = %leader.identity, lease = %leader.lease, "competing for the leader Lease");
    control.status_writer = Some(StatusWriter::spawn(
        client.clone(),
        control.options.controller_name.clone(),
        leading,
    ));

    let mut state = sources::kube::watch_cluster(client, sources::kube::WATCHED);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            changed = state.changed() => {
                if changed.is_err() {
                    anyhow::bail!("the Kubernetes watchers stopped");
                }
                let current = state.borrow_and_update().clone();
                if let Some(current) = current {
                    control
                        .reconcile(&current.snapshot, &current.errors, &current.warnings)
                        .await;
                }
            }
            () = &mut stop => break,
        }
    }
    Ok(())
}
