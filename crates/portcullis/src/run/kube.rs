//! `portcullis run --kube`: the cluster is the source. Every replica watches, translates
//! and serves; only the replica holding the leader Lease writes status.
//!
//! This process serves every Gateway of our GatewayClasses itself (a Gateway without
//! `spec.addresses` binds all interfaces). With `--provision-image`, the leader also
//! creates a Deployment and a LoadBalancer Service per accepted Gateway; those pods run
//! `--serve-only --gateway NS/NAME` and serve that Gateway alone.

use std::sync::Arc;

use anyhow::Context;
use sources::kube::{LeaderOptions, StatusWriter};
use translate::provision::ProvisionOptions;

use super::Control;
use crate::KubeArgs;

/// Seconds a Lease stays valid after its last renewal.
const LEASE_SECONDS: u64 = 15;
/// Seconds before expiry at which the holder renews.
const LEASE_GRACE_SECONDS: u64 = 5;
/// Admin port of provisioned pods (their probes).
const PROVISIONED_ADMIN_PORT: u16 = 9901;

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
    if args.serve_only {
        tracing::info!("serve-only: no leader election, status writes or provisioning");
        if let Some(gateway) = &args.gateway {
            tracing::info!(%gateway, "serving this Gateway only");
            control.options.only_gateway = Some(gateway.clone());
        }
        return watch(client, control, stop).await;
    }
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
    if let Some(image) = &args.provision_image {
        control.options.load_balancer_addresses = true;
        control.provisioning = Some(ProvisionOptions {
            image: image.clone(),
            args: vec![
                "run".into(),
                "--kube".into(),
                "--serve-only".into(),
                format!("--controller-name={}", control.options.controller_name),
                format!("--admin=0.0.0.0:{PROVISIONED_ADMIN_PORT}"),
            ],
            service_account: args.provision_service_account.clone(),
            admin_port: PROVISIONED_ADMIN_PORT,
        });
    }
    watch(client, control, stop).await
}

/// Reconciles on every state the cluster watchers publish, until `stop` completes.
async fn watch(
    client: sources::kube::Client,
    control: &mut Control,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let mut state = sources::kube::watch_cluster(
        client,
        sources::kube::WATCHED,
        translate::referenced_objects,
    );
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
                        .reconcile(
                            &Arc::new(current.snapshot.clone()),
                            &current.errors,
                            &current.warnings,
                        )
                        .await?;
                }
            }
            () = super::settle_timer(control.settle_at()) => control.settle(),
            translation = super::settled(&mut control.settling) => control.settled(translation),
            () = &mut stop => break,
        }
    }
    Ok(())
}
