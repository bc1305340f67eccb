//! The Kubernetes source: kube-rs watchers for every kind portcullis reads, merged into one
//! [`ClusterState`] that is published only once every kind has finished its initial list.
//!
//! Each watched object goes through `model::decode` exactly like a file would (it is
//! written out as JSON, which is YAML), so validation and defaults are identical in both
//! modes. An object that does not decode is left out and reported in
//! [`ClusterState::errors`]; a kind whose CRD is not installed (404 on the initial list)
//! counts as empty, with one warning, and is picked up if the CRD appears later.
//!
//! Memory: Secrets are watched with the field selector `type=kubernetes.io/tls` (the only
//! Secrets a Gateway reads), which leaves out service-account tokens and Helm releases, the
//! bulk of most clusters' Secrets. Every object loses `metadata.managedFields` and the
//! `kubectl.kubernetes.io/last-applied-configuration` annotation before it is kept.
//!
//! This module is plumbing: no Gateway API logic lives here (that is `translate`).

mod leader;
mod status;
mod store;

use std::sync::Arc;

use ::kube::api::{Api, ApiResource, DynamicObject};
use ::kube::runtime::{WatchStreamExt, watcher};
use futures::StreamExt;
use model::decode::{DecodeError, Warning};
use model::{Kind, Snapshot};
use tokio::sync::{mpsc, watch};

pub use ::kube::Client;
pub use leader::{LeaderOptions, elect};
pub use status::{StatusMetrics, StatusWriter, patch_body};
use store::ClusterStore;

/// One watched kind: where the API server serves it and how its list is narrowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watched {
    /// The model kind (also gives the API group and whether it is namespaced).
    pub kind: Kind,
    /// The API version watched (without the group).
    pub version: &'static str,
    /// The resource's plural name in URLs.
    pub plural: &'static str,
    /// A field selector for the list and watch, if any.
    pub field_selector: Option<&'static str>,
}

/// Every kind the Kubernetes source watches. Adding a kind is one line here (plus its
/// `model::Kind`); the Helm chart's RBAC rules are checked against this list by a test.
pub const WATCHED: &[Watched] = &[
    Watched::new(Kind::GatewayClass, "v1", "gatewayclasses"),
    Watched::new(Kind::Gateway, "v1", "gateways"),
    Watched::new(Kind::ListenerSet, "v1", "listenersets"),
    Watched::new(Kind::HttpRoute, "v1", "httproutes"),
    Watched::new(Kind::GrpcRoute, "v1", "grpcroutes"),
    Watched::new(Kind::TlsRoute, "v1", "tlsroutes"),
    Watched::new(Kind::TcpRoute, "v1alpha2", "tcproutes"),
    Watched::new(Kind::ReferenceGrant, "v1beta1", "referencegrants"),
    Watched::new(Kind::Namespace, "v1", "namespaces"),
    Watched::new(Kind::Service, "v1", "services"),
    Watched::new(Kind::EndpointSlice, "v1", "endpointslices"),
    Watched::new(Kind::Secret, "v1", "secrets").with_fields("type=kubernetes.io/tls"),
    Watched::new(Kind::ConfigMap, "v1", "configmaps"),
    Watched::new(Kind::EgressNetwork, "v1alpha1", "egressnetworks"),
    Watched::new(Kind::BackendTlsPolicy, "v1", "backendtlspolicies"),
    Watched::new(
        Kind::AuthenticationPolicy,
        "v1alpha1",
        "authenticationpolicies",
    ),
    Watched::new(Kind::RateLimitPolicy, "v1alpha1", "ratelimitpolicies"),
    Watched::new(Kind::HealthCheckPolicy, "v1alpha1", "healthcheckpolicies"),
];

/// What the cluster holds, as translate's input plus the problems found on the way.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    /// Every decoded object.
    pub snapshot: Snapshot,
    /// Objects left out because they do not decode (file is `Kind namespace/name`).
    pub errors: Vec<DecodeError>,
    /// Kinds that are not served (CRD not installed), as warnings.
    pub warnings: Vec<Warning>,
}

// === impl Watched ===

impl Watched {
    /// A kind watched without selectors.
    pub const fn new(kind: Kind, version: &'static str, plural: &'static str) -> Self {
        Self {
            kind,
            version,
            plural,
            field_selector: None,
        }
    }

    /// The same kind, narrowed by a field selector.
    pub const fn with_fields(self, selector: &'static str) -> Self {
        Self {
            field_selector: Some(selector),
            ..self
        }
    }

    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        match self.kind.group() {
            "" => self.version.to_string(),
            group => format!("{group}/{}", self.version),
        }
    }

    /// The kube-rs description of the resource, for dynamic `Api`s.
    pub fn api_resource(&self) -> ApiResource {
        ApiResource {
            group: self.kind.group().to_string(),
            version: self.version.to_string(),
            api_version: self.api_version(),
            kind: self.kind.as_str().to_string(),
            plural: self.plural.to_string(),
        }
    }

    /// Whether the controller writes this kind's status subresource (the kinds translate
    /// reports status for).
    pub fn writes_status(&self) -> bool {
        matches!(
            self.kind,
            Kind::GatewayClass
                | Kind::Gateway
                | Kind::ListenerSet
                | Kind::HttpRoute
                | Kind::GrpcRoute
                | Kind::TlsRoute
                | Kind::TcpRoute
                | Kind::EgressNetwork
                | Kind::BackendTlsPolicy
                | Kind::AuthenticationPolicy
                | Kind::RateLimitPolicy
                | Kind::HealthCheckPolicy
        )
    }

    /// The watched entry of a kind, if it is watched.
    pub fn of(kind: Kind) -> Option<&'static Watched> {
        WATCHED.iter().find(|w| w.kind == kind)
    }
}

/// A client with in-cluster credentials, or the local kubeconfig's.
pub async fn connect() -> Result<Client, ::kube::Error> {
    Client::try_default().await
}

/// Starts one watcher per kind in `kinds` and returns the published state: `None` until
/// every kind has finished its initial list, then the latest state after every change.
/// The tasks stop when the receiver (and all its clones) are dropped.
pub fn watch_cluster(
    client: ::kube::Client,
    kinds: &[Watched],
) -> watch::Receiver<Option<Arc<ClusterState>>> {
    let (state_tx, state_rx) = watch::channel(None);
    // Bounded: a full channel makes the watchers wait, which only delays events.
    let (event_tx, mut event_rx) = mpsc::channel::<(Kind, WatchItem)>(256);
    for watched in kinds {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &watched.api_resource());
        let mut config = watcher::Config::default();
        if let Some(selector) = watched.field_selector {
            config = config.fields(selector);
        }
        let kind = watched.kind;
        let event_tx = event_tx.clone();
        tokio::spawn(async move {
            let mut events = watcher(api, config).default_backoff().boxed();
            while let Some(item) = events.next().await {
                if event_tx.send((kind, item)).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(event_tx);
    let mut store = ClusterStore::new(kinds);
    tokio::spawn(async move {
        while let Some((kind, item)) = event_rx.recv().await {
            let mut changed = store.apply(kind, item);
            // Take everything already queued before publishing, so a burst (such as an
            // initial list) becomes one snapshot.
            while let Ok((kind, item)) = event_rx.try_recv() {
                changed |= store.apply(kind, item);
            }
            if changed && store.ready() {
                state_tx.send_replace(Some(Arc::new(store.state())));
            }
            if state_tx.is_closed() {
                return;
            }
        }
    });
    state_rx
}

/// What a watcher yields.
type WatchItem = Result<watcher::Event<DynamicObject>, watcher::Error>;

#[cfg(test)]
mod tests;
