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
    hostnames: Vec<HostnameMatch>,
    parents: Vec<ParentRef>,
    rules: Vec<RuleView<'a>>,
}

/// A rule's name and its backendRefs with their weights.
struct RuleView<'a> {
    name: Option<&'a str>,
    backends: Vec<(BackendRef<'a>, Option<i32>)>,
}

/// Compiles every TLSRoute and TCPRoute, attaches them, and writes their status.
pub(crate) fn compile_all(
    snapshot: &Snapshot,
    gateways: &mut BTreeMap<ObjectName, GatewayState>,
    options: &Options,
    status: &mut StatusSet,
) -> StreamRoutes {
    let mut views: Vec<RouteView<'_>> = Vec::new();
    for (name, route) in &snapshot.tls_routes {
        views.push(RouteView {
            kind: RouteKind::Tls,
            name,
            meta: &route.metadata,
            hostnames: route
                .spec
                .hostnames
                .iter()
                .map(|h| HostnameMatch::parse(h))
                .collect(),
            parents: route
                .spec
                .parent_refs
                .iter()
                .flatten()
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
                .collect(),
            rules: route
                .spec
                .rules
                .iter()
                .map(|rule| {
                    let refs = rule
                        .backend_refs
                        .iter()
                        .map(|b| {
                            (
                                backend_ref(
                                    b.group.as_deref(),
                                    b.kind.as_deref(),
                                    &b.name,
                                    b.namespace.as_deref(),
                                    b.port,
                                ),
                                b.weight,
                            )
                        })
                        .collect();
                    RuleView {
                        name: rule.name.as_deref(),
                        backends: refs,
                    }
                })
                .collect(),
        });
    }
    for (name, route) in &snapshot.tcp_routes {
        views.push(RouteView {
            kind: RouteKind::Tcp,
            name,
            meta: &route.metadata,
            hostnames: Vec::new(),
            parents: route
                .spec
                .parent_refs
                .iter()
                .flatten()
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
                .collect(),
            rules: route
                .spec
                .rules
                .iter()
                .map(|rule| {
                    let refs = rule
                        .backend_refs
                        .iter()
                        .map(|b| {
                            (
                                backend_ref(
                                    b.group.as_deref(),
                                    b.kind.as_deref(),
                                    &b.name,
                                    b.namespace.as_deref(),
                                    b.port,
                                ),
                                b.weight,
                            )
                        })
                        .collect();
                    RuleView {
                        name: rule.name.as_deref(),
                        backends: refs,
                    }
                })
                .collect(),
        });
    }
    // Oldest first, then namespace/name, as for HTTPRoutes.
    views.sort_by(|a, b| {
        let time = |v: &RouteView<'_>| v.meta.creation_timestamp.as_ref().map(|t| t.0);
        time(a).cmp(&time(b)).then_with(|| a.name.cmp(b.name))
    });
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

fn backend_ref<'a>(
    group: Option<&'a str>,
    kind: Option<&'a str>,
    name: &'a str,
    namespace: Option<&'a str>,
    port: Option<i32>,
) -> BackendRef<'a> {
    BackendRef {
        group,
        kind,
        name,
        namespace,
        port,
    }
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
        kind: kind_name,
        namespace: &view.name.namespace,
    };
    let mut problems = RuleProblems::default();
    // The spec allows several rules but defines no way to choose between them for a
    // connection; like other implementations we serve the first and compile the rest for
    // status (their references are still resolved and reported).
    let compiled: Vec<_> = view
        .rules
        .iter()
        .enumerate()
        .map(|(index, rule)| {
            let backends: Vec<WeightedBackend> = rule
                .backends
                .iter()
                .map(|(reference, weight)| {
                    let target = match resolver.resolve(snapshot, referrer, reference) {
                        Ok(backend) => BackendTarget::Service(backend),
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
            (index, rule.name.map(str::to_string), backends)
        })
        .collect();
    let info = RouteInfo {
        kind: kind_name,
        name: view.name,
        hostnames: &view.hostnames,
    };
    let generation = view.meta.generation.unwrap_or(1);
    let parents = attach::parent_statuses(
        snapshot,
        gateways,
        options,
        &info,
        &view.parents,
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
