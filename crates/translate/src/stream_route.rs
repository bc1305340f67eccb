//! TLSRoute and TCPRoute: routes for whole connections, attached through the same parentRef
//! logic as HTTPRoute and compiled into `ir::StreamRoute`s.

use std::collections::BTreeMap;
use std::sync::Arc;

use ir::{
    BackendTarget, HostnameMatch, InvalidBackend, RouteId, RouteKind, StreamRoute, WeightedBackend,
};
use model::k8s::ObjectMeta;
use model::status::{ResourceStatus, StatusSet};
use model::{Kind, ObjectName, ResourceKey, Snapshot};

use serde::{Deserialize, Serialize};

use crate::Options;
use crate::attach::{self, ParentRef, RouteInfo, RuleProblems};
use crate::backends::{BackendRef, Referrer, Resolver};
use crate::gateways::GatewayState;

/// Compiled stream routes, grouped by listener, in route order.
#[derive(Default)]
pub(crate) struct StreamRoutes {
    by_listener: BTreeMap<(ObjectName, String), Vec<Arc<StreamRoute>>>,
}

impl StreamRoutes {
    /// The routes attached to one listener, oldest first.
    pub(crate) fn for_listener(
        &self,
        gateway: &ObjectName,
        listener: &str,
    ) -> Vec<Arc<StreamRoute>> {
        self.by_listener
            .get(&(gateway.clone(), listener.to_string()))
            .cloned()
            .unwrap_or_default()
    }
}

/// One route of either kind, in kind-independent form.
struct RouteView<'a> {
    kind: RouteKind,
    name: &'a ObjectName,
    meta: &'a ObjectMeta,
    spec: SpecView,
}

/// The parts of a TLSRoute or TCPRoute spec that routing reads. The two kinds' generated
/// types differ but have these fields in the same shape, so both are read through their
/// JSON form once, here, and compiled by one piece of code.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct SpecView {
    #[serde(default)]
    hostnames: Vec<String>,
    #[serde(default)]
    parent_refs: Vec<ParentRefView>,
    #[serde(default)]
    rules: Vec<RuleView>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ParentRefView {
    group: Option<String>,
    kind: Option<String>,
    namespace: Option<String>,
    name: String,
    section_name: Option<String>,
    port: Option<i32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuleView {
    name: Option<String>,
    #[serde(default)]
    backend_refs: Vec<BackendRefView>,
}

#[derive(Deserialize)]
struct BackendRefView {
    group: Option<String>,
    kind: Option<String>,
    name: String,
    namespace: Option<String>,
    port: Option<i32>,
    weight: Option<i32>,
}

impl SpecView {
    fn of<S: Serialize>(spec: &S) -> Self {
        serde_json::to_value(spec)
            .and_then(serde_json::from_value)
            .unwrap_or_default()
    }
}

/// Compiles every TLSRoute and TCPRoute, attaches them, and writes their status.
pub(crate) fn compile_all(
    snapshot: &Snapshot,
    gateways: &mut BTreeMap<ObjectName, GatewayState>,
    options: &Options,
    status: &mut StatusSet,
) -> StreamRoutes {
    let tls = snapshot.tls_routes.iter().map(|(name, route)| RouteView {
        kind: RouteKind::Tls,
        name,
        meta: &route.metadata,
        spec: SpecView::of(&route.spec),
    });
    let tcp = snapshot.tcp_routes.iter().map(|(name, route)| RouteView {
        kind: RouteKind::Tcp,
        name,
        meta: &route.metadata,
        spec: SpecView::of(&route.spec),
    });
    let mut views: Vec<RouteView<'_>> = tls.chain(tcp).collect();
    // Oldest first, then namespace/name, as for HTTPRoutes.
    views.sort_by(|a, b| crate::oldest_first((a.meta, a.name), (b.meta, b.name)));
    let mut routes = StreamRoutes::default();
    let mut resolver = Resolver::default();
    for view in &views {
        compile_route(
            snapshot,
            gateways,
            options,
            status,
            &mut routes,
            &mut resolver,
            view,
        );
    }
    routes
}

fn compile_route(
    snapshot: &Snapshot,
    gateways: &mut BTreeMap<ObjectName, GatewayState>,
    options: &Options,
    status: &mut StatusSet,
    routes: &mut StreamRoutes,
    resolver: &mut Resolver,
    view: &RouteView<'_>,
) {
    let kind_name = match view.kind {
        RouteKind::Tls => "TLSRoute",
        RouteKind::Tcp | RouteKind::Http | RouteKind::Grpc => "TCPRoute",
    };
    let referrer = Referrer {
        mesh_parents: &[],
        kind: kind_name,
        namespace: &view.name.namespace,
    };
    let mut problems = RuleProblems::default();
    // The spec allows several rules but defines no way to choose between them for a
    // connection; like other implementations we serve the first and compile the rest for
    // status (their references are still resolved and reported).
    let compiled: Vec<_> = view
        .spec
        .rules
        .iter()
        .enumerate()
        .map(|(index, rule)| {
            let backends: Vec<WeightedBackend> = rule
                .backend_refs
                .iter()
                .map(|spec| {
                    let reference = BackendRef {
                        group: spec.group.as_deref(),
                        kind: spec.kind.as_deref(),
                        name: &spec.name,
                        namespace: spec.namespace.as_deref(),
                        port: spec.port,
                    };
                    let weight = spec.weight;
                    let target = match resolver.target(snapshot, referrer, &reference) {
                        Ok(target) => target,
                        Err((reason, message)) => {
                            problems.unresolved(reason, message);
                            BackendTarget::Invalid(InvalidBackend {
                                reference: format!(
                                    "{}/{}:{}",
                                    reference.namespace.unwrap_or(&view.name.namespace),
                                    reference.name,
                                    reference.port.unwrap_or_default()
                                ),
                                reason: format!("{reason:?}"),
                            })
                        }
                    };
                    WeightedBackend {
                        weight: u32::try_from(weight.unwrap_or(1)).unwrap_or(0),
                        target,
                        request_headers: None,
                        response_headers: None,
                    }
                })
                .collect();
            (index, rule.name.clone(), backends)
        })
        .collect();
    let hostnames: Vec<_> = view
        .spec
        .hostnames
        .iter()
        .map(|h| HostnameMatch::parse(h))
        .collect();
    let parents: Vec<_> = view
        .spec
        .parent_refs
        .iter()
        .map(|p| {
            ParentRef::new(
                p.group.as_deref(),
                p.kind.as_deref(),
                p.namespace.as_deref(),
                &p.name,
                p.section_name.as_deref(),
                p.port,
            )
        })
        .collect();
    let info = RouteInfo {
        kind: kind_name,
        name: view.name,
        hostnames: &hostnames,
    };
    let generation = view.meta.generation.unwrap_or(1);
    let parents = attach::parent_statuses(
        snapshot,
        gateways,
        options,
        &info,
        &parents,
        generation,
        &problems,
        |attachment| {
            let Some((index, rule_name, backends)) = compiled.first() else {
                return Ok(());
            };
            let hostnames = attachment.hostnames.iter().flatten().cloned().collect();
            routes
                .by_listener
                .entry((attachment.gateway.clone(), attachment.listener.clone()))
                .or_default()
                .push(Arc::new(StreamRoute {
                    id: RouteId {
                        kind: view.kind,
                        namespace: view.name.namespace.clone(),
                        name: view.name.name.clone(),
                        rule: *index,
                        rule_name: rule_name.clone(),
                    },
                    hostnames,
                    backends: backends.clone(),
                }));
            Ok(())
        },
    );
    if !parents.is_empty() {
        let kind = if view.kind == RouteKind::Tls {
            Kind::TlsRoute
        } else {
            Kind::TcpRoute
        };
        status.0.insert(
            ResourceKey::new(kind, &view.name.namespace, &view.name.name),
            ResourceStatus::Route { parents },
        );
    }
}
