//! The Kubernetes source: kube-rs watchers for every kind portcullis reads, merged into one
//! [`ClusterState`] that is published only once every kind has finished its initial list.
//!
//! Each watched object goes through `model::decode` exactly like a file would (it is
//! written out as JSON, which is YAML), so validation and defaults are identical in both
//! modes. An object that does not decode is left out and reported in
//! [`ClusterState::errors`]; a kind whose CRD is not installed (404 on the initial list)
//! counts as empty, with one warning, and is picked up if the CRD appears later.
//!
//! Memory: Secrets are watched with the field selector `type=kubernetes.io/tls` (the
//! certificates of listeners), which leaves out service-account tokens and Helm releases,
//! the bulk of most clusters' Secrets. Any other Secret, and every ConfigMap, is read only
//! when an object names it (an htpasswd file, API keys, a CA bundle, a JWKS): the caller
//! says which objects are named (`translate::referenced_objects`), and each gets a watch of
//! its own, narrowed to its name, started when the first reference appears and stopped
//! when the last one goes. A snapshot is held back until a new reference's first list
//! ends, so a policy and its Secret arrive together. The cost is one watch request per
//! referenced object; policies name a handful. Every object loses
//! `metadata.managedFields` and the `kubectl.kubernetes.io/last-applied-configuration`
//! annotation before it is kept.
//!
//! This module is plumbing: no Gateway API logic lives here (that is `translate`).

mod leader;
mod status;
mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ::kube::api::{Api, ApiResource, DynamicObject};
use ::kube::runtime::{WatchStreamExt, watcher};
use futures::StreamExt;
use model::decode::{DecodeError, Warning};
use model::{Kind, ObjectName, Snapshot};
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
    /// Whether one watch lists every object of the kind (narrowed by `field_selector`).
    pub blanket: bool,
    /// Whether objects that something names are watched one by one (those the blanket
    /// watch, if any, does not hold).
    pub referenced: bool,
}

/// Which watch an event comes from.
#[derive(Clone, Debug)]
pub(crate) enum Source {
    /// The watch of a whole kind.
    Kind(Kind),
    /// The watch of one referenced object, with that watch's generation.
    Ref((Kind, ObjectName), u64),
}

/// The objects a snapshot names and that must be read by reference (Secrets and
/// ConfigMaps); `translate::referenced_objects` in the binary.
pub type References = fn(&Snapshot) -> BTreeSet<(Kind, ObjectName)>;

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
    Watched::new(Kind::Secret, "v1", "secrets")
        .with_fields("type=kubernetes.io/tls")
        .and_referenced(),
    Watched::new(Kind::ConfigMap, "v1", "configmaps").only_referenced(),
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
            blanket: true,
            referenced: false,
        }
    }

    /// The same kind, with the objects that something names also watched one by one.
    pub const fn and_referenced(self) -> Self {
        Self {
            referenced: true,
            ..self
        }
    }

    /// The same kind, read only where something names an object.
    pub const fn only_referenced(self) -> Self {
        Self {
            blanket: false,
            referenced: true,
            ..self
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
/// `references` names the objects of `referenced` kinds to watch one by one. The tasks
/// stop when the receiver (and all its clones) are dropped.
pub fn watch_cluster(
    client: ::kube::Client,
    kinds: &[Watched],
    references: References,
) -> watch::Receiver<Option<Arc<ClusterState>>> {
    let (state_tx, state_rx) = watch::channel(None);
    // Bounded: a full channel makes the watchers wait, which only delays events.
    let (event_tx, mut event_rx) = mpsc::channel::<(Source, WatchItem)>(256);
    for watched in kinds.iter().filter(|w| w.blanket) {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &watched.api_resource());
        let mut config = watcher::Config::default();
        if let Some(selector) = watched.field_selector {
            config = config.fields(selector);
        }
        tokio::spawn(forward(
            api,
            config,
            Source::Kind(watched.kind),
            event_tx.clone(),
        ));
    }
    let mut store = ClusterStore::new(kinds);
    let mut by_reference = RefWatches {
        client,
        kinds: kinds.iter().filter(|w| w.referenced).copied().collect(),
        running: BTreeMap::new(),
        generation: 0,
        events: event_tx.downgrade(),
    };
    drop(event_tx);
    tokio::spawn(async move {
        while let Some((source, item)) = event_rx.recv().await {
            if state_tx.is_closed() {
                return;
            }
            let mut changed = store.apply(source, item);
            // Take everything already queued before publishing, so a burst (such as an
            // initial list) becomes one snapshot.
            while let Ok((source, item)) = event_rx.try_recv() {
                changed |= store.apply(source, item);
            }
            if !changed || !store.kinds_ready() {
                continue;
            }
            let mut state = store.state();
            if by_reference.reconcile(references(&state.snapshot), &mut store) {
                state = store.state();
            }
            if store.ready() {
                state_tx.send_replace(Some(Arc::new(state)));
            }
        }
    });
    state_rx
}

/// Sends a watcher's items, tagged with their source, until the receiver is gone.
async fn forward(
    api: Api<DynamicObject>,
    config: watcher::Config,
    source: Source,
    events: mpsc::Sender<(Source, WatchItem)>,
) {
    let mut items = watcher(api, config).default_backoff().boxed();
    while let Some(item) = items.next().await {
        if events.send((source.clone(), item)).await.is_err() {
            return;
        }
    }
}

/// The running watches of single referenced objects.
struct RefWatches {
    client: ::kube::Client,
    kinds: Vec<Watched>,
    running: BTreeMap<(Kind, ObjectName), (u64, tokio::task::AbortHandle)>,
    generation: u64,
    /// Weak, so that the event channel closes when every blanket watch has stopped.
    events: mpsc::WeakSender<(Source, WatchItem)>,
}

impl RefWatches {
    /// Starts watches for newly named objects and stops those no longer named (or now held
    /// by their kind's blanket watch). Returns whether the store's contents changed.
    fn reconcile(&mut self, named: BTreeSet<(Kind, ObjectName)>, store: &mut ClusterStore) -> bool {
        let wanted: BTreeSet<(Kind, ObjectName)> = named
            .into_iter()
            .filter(|(kind, name)| {
                self.kinds.iter().any(|w| w.kind == *kind) && !store.holds(*kind, name)
            })
            .collect();
        let mut changed = false;
        self.running.retain(|key, (_, task)| {
            let keep = wanted.contains(key);
            if !keep {
                task.abort();
                changed |= store.remove_ref(key);
            }
            keep
        });
        let Some(events) = self.events.upgrade() else {
            return changed;
        };
        for key in wanted {
            if self.running.contains_key(&key) {
                continue;
            }
            let Some(watched) = self.kinds.iter().find(|w| w.kind == key.0) else {
                continue;
            };
            self.generation += 1;
            let api: Api<DynamicObject> = Api::namespaced_with(
                self.client.clone(),
                &key.1.namespace,
                &watched.api_resource(),
            );
            let config =
                watcher::Config::default().fields(&format!("metadata.name={}", key.1.name));
            store.add_ref(key.clone(), self.generation);
            let source = Source::Ref(key.clone(), self.generation);
            let task = tokio::spawn(forward(api, config, source, events.clone()));
            self.running
                .insert(key, (self.generation, task.abort_handle()));
            changed = true;
        }
        changed
    }
}

/// What a watcher yields.
type WatchItem = Result<watcher::Event<DynamicObject>, watcher::Error>;

#[cfg(test)]
mod tests;
