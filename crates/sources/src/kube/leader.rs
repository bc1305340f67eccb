//! Leader election over a `coordination.k8s.io` Lease, through `kube-lease-manager` (its
//! 0.12 line is the one built on kube 4 and k8s-openapi 0.28, the versions the
//! `gateway-api` crate requires).
//!
//! Every replica serves traffic; only the one holding the Lease writes status. The result
//! is a `watch::Receiver<bool>` that the status writer reads, so the writer can be tested
//! with a plain channel.

use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

/// Where the Lease lives and who we are.
#[derive(Clone, Debug)]
pub struct LeaderOptions {
    /// Namespace of the Lease (the controller's own namespace).
    pub namespace: String,
    /// Name of the Lease.
    pub lease: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    /// Seconds a lock is valid after its last renewal.
    pub duration_seconds: u64,
    /// Seconds before expiry at which the holder renews.
    pub grace_seconds: u64,
}

/// Starts competing for the Lease. The receiver holds `true` while this replica leads.
pub async fn elect(
    client: ::kube::Client,
    options: &LeaderOptions,
) -> Result<watch::Receiver<bool>, kube_lease_manager::LeaseManagerError> {
    let manager = LeaseManagerBuilder::new(client, &options.lease)
        .with_namespace(&options.namespace)
        .with_identity(&options.identity)
        .with_duration(options.duration_seconds)
        .with_grace(options.grace_seconds)
        .with_field_manager(format!("portcullis-lease/{}", options.identity))
        .build()
        .await?;
    let (leader, task) = manager.watch().await;
    tokio::spawn(async move {
        match task.await {
            Ok(Ok(_)) => tracing::info!("leader election stopped"),
            Ok(Err(error)) => tracing::error!(%error, "leader election failed"),
            Err(error) => tracing::error!(%error, "leader election task panicked"),
        }
    });
    Ok(leader)
}
