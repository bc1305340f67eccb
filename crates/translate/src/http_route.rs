//! HTTPRoute: attaching each route to its parents and compiling its rules into IR.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ir::{Action, Candidate, HostnameMatch, RouteId, RouteKind, Rule, Timeouts};
use model::gw::httproutes::HttpRoute;
use model::status::{ResourceStatus, StatusSet};
use model::{Kind, ObjectName, ResourceKey, Snapshot};

use crate::Options;
use crate::attach::{self, Attachment, ParentRef, RouteInfo, RuleProblems};
use crate::backends::Resolver;
use crate::gateways::GatewayState;

mod filters;
mod grpc;
mod matches;

/// Compiled route matches, grouped by the listener they attached to.
#[derive(Default)]
pub(crate) struct Routes {
    by_listener: BTreeMap<(ObjectName, String), Vec<Candidate>>,
    /// Which route kinds serve which hostnames on each listener.
    claims: BTreeMap<(ObjectName, String), Vec<Claims>>,
    /// BackendTLSPolicy → the Gateways with a route whose backends it applies to.
    pub(crate) policy_ancestors: BTreeMap<ObjectName, BTreeSet<ObjectName>>,
}

/// A route kind and the hostnames of each of its routes on a listener (`None` = any
/// host). Grouped by kind, so that a route is checked against the other kind's routes only
/// (thousands of HTTPRoutes on one listener would otherwise compare pairwise).
type Claims = (RouteKind, Vec<Vec<Option<HostnameMatch>>>);

/// A rule compiled once per route, then shared by every listener it attaches to.
struct CompiledRule {
    rule: Arc<Rule>,
    matches: Vec<ir::HttpMatch>,
}

// === impl Routes ===

impl Routes {
    /// The listener keys of `owner` that have routes.
    pub(crate) fn listeners_of(&self, owner: &ObjectName) -> Vec<String> {
        self.by_listener
            .keys()
            .filter(|(o, _)| o == owner)
            .map(|(_, listener)| listener.clone())
            .collect()
    }

    /// The candidates attached to one listener, taken out: each listener is served once,
    /// and copying thousands of candidates cost more than building their route table.
    /// Every listener's candidates.
    pub(crate) fn into_listeners(self) -> BTreeMap<(ObjectName, String), Vec<Candidate>> {
        self.by_listener
    }

    pub(crate) fn take_listener(&mut self, gateway: &ObjectName, listener: &str) -> Vec<Candidate> {
        self.by_listener
            .remove(&(gateway.clone(), listener.to_string()))
            .unwrap_or_default()
    }
}

/// Compiles every HTTPRoute and GRPCRoute, attaches it, and writes its status. Both kinds
/// share one precedence order: "the oldest Route based on creation timestamp", then
/// "{namespace}/{name}".
pub(crate) fn compile_all(
    snapshot: &Snapshot,
    gateways: &mut BTreeMap<ObjectName, GatewayState>,
    options: &Options,
    (policies, health): (
        &crate::backend_tls::Policies,
        &crate::health::HealthPolicies,
    ),
    attached: &crate::policies::Policies,
    status: &mut StatusSet,
) -> Routes {
    // GRPCRoutes are compiled as the HTTPRoutes they are equivalent to; the list to sort
    // holds references only (an HTTPRoute is several hundred bytes).
    let mut converted = Vec::new();
    for (name, route) in &snapshot.grpc_routes {
        match grpc::to_http(route) {
            Ok(http) => converted.push((name, http)),
            // The generated types have the same shapes, so this only fails on a value the
            // decoder accepted and the HTTPRoute type does not; there is nothing to route.
            Err(message) => reject_unconvertible(options, status, name, route, &message),
        }
    }
    let mut ordered: Vec<(RouteKind, &ObjectName, &HttpRoute)> =
        Vec::with_capacity(snapshot.http_routes.len() + converted.len());
    ordered.extend(
        snapshot
            .http_routes
            .iter()
            .map(|(name, route)| (RouteKind::Http, name, route.as_ref())),
    );
    ordered.extend(
        converted
            .iter()
            .map(|(name, route)| (RouteKind::Grpc, *name, route)),
    );
    ordered.sort_by(|(_, a_name, a), (_, b_name, b)| {
        crate::oldest_first((&a.metadata, a_name), (&b.metadata, b_name))
    });
    // Hostname claims only matter between the two kinds.
    let both_kinds = !snapshot.http_routes.is_empty() && !converted.is_empty();
    let mut statuses = Vec::with_capacity(ordered.len());
    let routes = compile_ranked(
        snapshot,
        gateways,
        options,
        (policies, health),
        attached,
        ordered
            .iter()
            .enumerate()
            .map(|(rank, &(kind, name, route))| (rank, kind, name, route)),
        both_kinds,
        &mut statuses,
    );
    // One bulk build rather than an insert per route, each a search of a growing tree that
    // compares keys string by string (an eighth of a reload at 5,000 routes). The sort finds
    // the runs that precedence order leaves, and a later entry for a key replaces an earlier
    // one, as an insert would.
    let earlier = std::mem::take(&mut status.0);
    status.0 = earlier.into_iter().chain(statuses).collect();
    routes
}

/// Compiles some HTTPRoutes, each with its rank among all routes, as [`compile_all`] would
/// (for [`crate::patch`], which declines when there are GRPCRoutes). Their status is not
/// kept.
pub(crate) fn compile_routes(
    snapshot: &Snapshot,
    gateways: &mut BTreeMap<ObjectName, GatewayState>,
    options: &Options,
    policies: (
        &crate::backend_tls::Policies,
        &crate::health::HealthPolicies,
    ),
    attached: &crate::policies::Policies,
    ranked: &[(usize, &ObjectName, &HttpRoute)],
) -> Routes {
    compile_ranked(
        snapshot,
        gateways,
        options,
        policies,
        attached,
        ranked
            .iter()
            .map(|&(rank, name, route)| (rank, RouteKind::Http, name, route)),
        false,
        &mut Vec::new(),
    )
}

/// Compiles routes given with their kind and rank, adding their status to `statuses`.
#[allow(clippy::too_many_arguments)]
fn compile_ranked<'a>(
    snapshot: &Snapshot,
    gateways: &mut BTreeMap<ObjectName, GatewayState>,
    options: &Options,
    (policies, health): (
        &crate::backend_tls::Policies,
        &crate::health::HealthPolicies,
    ),
    attached: &crate::policies::Policies,
    ranked: impl Iterator<Item = (usize, RouteKind, &'a ObjectName, &'a HttpRoute)>,
    both_kinds: bool,
    statuses: &mut Vec<(ResourceKey, ResourceStatus)>,
) -> Routes {
    let mut routes = Routes::default();
    let mut resolver = Resolver::with_policies(policies, health);
    for (rank, kind, name, route) in ranked {
        let parents = mesh_parents(name, route);
        let flavor = Flavor {
            kind,
            rank,
            name,
            egress: has_egress_parent(route),
            mesh_parents: &parents,
            both_kinds,
        };
        compile_route(
            snapshot,
            gateways,
            options,
            statuses,
            &mut routes,
            &mut resolver,
            attached,
            flavor,
            route,
        );
    }
    routes
}

/// Which kind a route is, and where it stands in precedence.
#[derive(Clone, Copy)]
struct Flavor<'a> {
    kind: RouteKind,
    rank: usize,
    name: &'a ObjectName,
    /// Whether a parentRef is an EgressNetwork: a rule without backendRefs then sends
    /// traffic to its original destination instead of failing.
    egress: bool,
    /// The Services among the parentRefs (GAMMA).
    mesh_parents: &'a [ObjectName],
    /// Whether there are both HTTPRoutes and GRPCRoutes, which may conflict.
    both_kinds: bool,
}

/// The Services a route names as parents.
fn mesh_parents(name: &ObjectName, route: &HttpRoute) -> Vec<ObjectName> {
    route
        .spec
        .parent_refs
        .iter()
        .flatten()
        .filter(|p| {
            matches!(p.group.as_deref(), Some("" | "core")) && p.kind.as_deref() == Some("Service")
        })
        .map(|p| ObjectName::new(p.namespace.as_deref().unwrap_or(&name.namespace), &p.name))
        .collect()
}

fn has_egress_parent(route: &HttpRoute) -> bool {
    route.spec.parent_refs.iter().flatten().any(|p| {
        crate::egress::is_egress_parent(
            p.group.as_deref().unwrap_or_default(),
            p.kind.as_deref().unwrap_or_default(),
        )
    })
}

impl Flavor<'_> {
    fn kind_name(self) -> &'static str {
        match self.kind {
            RouteKind::Grpc => "GRPCRoute",
            _ => "HTTPRoute",
        }
    }

    fn kind_model(self) -> Kind {
        match self.kind {
            RouteKind::Grpc => Kind::GrpcRoute,
            _ => Kind::HttpRoute,
        }
    }
}

/// Whether two attachments' hostnames intersect (`None` stands for any host).
fn overlap(a: &[Option<HostnameMatch>], b: &[Option<HostnameMatch>]) -> bool {
    a.iter().any(|x| {
        b.iter().any(|y| match (x, y) {
            (Some(x), Some(y)) => x.intersect(y).is_some(),
            _ => true,
        })
    })
}

/// Reports a GRPCRoute that cannot be expressed as HTTP routing on each of its parents.
fn reject_unconvertible(
    options: &Options,
    status: &mut StatusSet,
    name: &ObjectName,
    route: &model::gw::grpcroutes::GrpcRoute,
    message: &str,
) {
    let generation = route.metadata.generation.unwrap_or(1);
    let parents = route
        .spec
        .parent_refs
        .iter()
        .flatten()
        .map(|p| {
            let parent = ParentRef::new(
                p.group.as_deref(),
                p.kind.as_deref(),
                p.namespace.as_deref(),
                &p.name,
                p.section_name.as_deref(),
                p.port,
            );
            model::status::RouteParentStatus {
                parent_ref: attach::status_ref(&parent),
                controller_name: options.controller_name.clone(),
                conditions: vec![model::status::Condition::new(
                    model::status::ConditionType::Accepted,
                    false,
                    model::status::Reason::UnsupportedValue,
                    message.to_owned(),
                    generation,
                )],
            }
        })
        .collect();
    status.0.insert(
        ResourceKey::new(Kind::GrpcRoute, &name.namespace, &name.name),
        ResourceStatus::Route { parents },
    );
}

#[allow(clippy::too_many_arguments)]
fn compile_route(
    snapshot: &Snapshot,
    gateways: &mut BTreeMap<ObjectName, GatewayState>,
    options: &Options,
    statuses: &mut Vec<(ResourceKey, ResourceStatus)>,
    routes: &mut Routes,
    resolver: &mut Resolver,
    attached: &crate::policies::Policies,
    flavor: Flavor<'_>,
    route: &HttpRoute,
) {
    let (rank, name) = (flavor.rank, flavor.name);
    let generation = route.metadata.generation.unwrap_or(1);
    let hostnames: Vec<_> = route
        .spec
        .hostnames
        .iter()
        .flatten()
        .map(|h| HostnameMatch::parse(h))
        .collect();
    let mut problems = RuleProblems::default();
    let rules: Vec<_> = route
        .spec
        .rules
        .iter()
        .flatten()
        .enumerate()
        .map(|(index, rule)| {
            let mut compiled = compile_rule(snapshot, resolver, flavor, index, rule, &mut problems);
            if let Some(rule) = Arc::get_mut(&mut compiled.rule) {
                rule.policies = attached.for_rule(flavor.kind, name, rule.id.rule_name.as_deref());
            }
            compiled
        })
        .collect();
    let used_policies = resolver.take_used_policies();
    let mut attached_gateways = BTreeSet::new();
    let info = RouteInfo {
        kind: flavor.kind_name(),
        name,
        hostnames: &hostnames,
    };
    let parents: Vec<_> = route
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
        .collect();
    let parents = attach::parent_statuses(
        snapshot,
        gateways,
        options,
        &info,
        &parents,
        generation,
        &problems,
        |attachment| {
            let key = (attachment.gateway.clone(), attachment.listener.clone());
            if flavor.both_kinds {
                claim(routes, flavor, &key, attachment)?;
            }
            let gateway_listener = is_gateway_listener(&attachment.listener);
            if gateway_listener {
                attached_gateways.insert(attachment.gateway.clone());
            }
            // A Gateway's (or listener's) policies reach the rules it serves that have none
            // of their own: those rules get a copy per listener.
            let inherited = (gateway_listener && attached.any_on_gateways())
                .then(|| attached.for_listener(&attachment.gateway, &attachment.listener));
            let served: Vec<Arc<Rule>> = rules
                .iter()
                .map(|compiled| {
                    let policies = inherited.as_ref().and_then(|inherited| {
                        crate::policies::inherit(&compiled.rule.policies, inherited)
                    });
                    match policies {
                        Some(policies) => Arc::new(Rule {
                            policies,
                            ..Rule::clone(&compiled.rule)
                        }),
                        None => compiled.rule.clone(),
                    }
                })
                .collect();
            let bucket = routes.by_listener.entry(key).or_default();
            for hostname in &attachment.hostnames {
                for (compiled, rule) in rules.iter().zip(&served) {
                    for (match_index, matcher) in compiled.matches.iter().enumerate() {
                        bucket.push(Candidate {
                            hostname: hostname.clone(),
                            matcher: matcher.clone(),
                            rule: rule.clone(),
                            route_rank: rank,
                            match_index,
                        });
                    }
                }
            }
            Ok(())
        },
    );
    for policy in used_policies {
        routes
            .policy_ancestors
            .entry(policy)
            .or_default()
            .extend(attached_gateways.iter().cloned());
    }
    if !parents.is_empty() {
        statuses.push((
            ResourceKey::new(flavor.kind_model(), &name.namespace, &name.name),
            ResourceStatus::Route { parents },
        ));
    }
}

/// Records that a route of `flavor`'s kind serves the attachment's hostnames on its
/// listener, unless a route of the other kind already serves an intersecting one.
/// GRPCRoute hostnames docs: when an HTTPRoute and a GRPCRoute on one listener have
/// intersecting hostnames, "the implementation MUST accept exactly one of these two routes":
/// the older, then the first by namespace/name, which is the order routes are compiled in.
fn claim(
    routes: &mut Routes,
    flavor: Flavor<'_>,
    key: &(ObjectName, String),
    attachment: &Attachment,
) -> Result<(), String> {
    let claims = routes.claims.entry(key.clone()).or_default();
    let conflict = claims
        .iter()
        .filter(|(kind, _)| *kind != flavor.kind)
        .find(|(_, routes)| {
            routes
                .iter()
                .any(|hostnames| overlap(hostnames, &attachment.hostnames))
        });
    if let Some((other, _)) = conflict {
        return Err(format!(
            "listener {} already serves a {} for an intersecting hostname; HTTPRoutes and GRPCRoutes cannot share one (the older route wins)",
            attachment.listener,
            Flavor {
                kind: *other,
                ..flavor
            }
            .kind_name()
        ));
    }
    let hostnames = attachment.hostnames.clone();
    match claims.iter_mut().find(|(kind, _)| *kind == flavor.kind) {
        Some((_, routes)) => routes.push(hostnames),
        None => claims.push((flavor.kind, vec![hostnames])),
    }
    Ok(())
}

/// Whether an attachment is to a Gateway listener (or a ListenerSet's, keyed under its
/// Gateway), as opposed to a mesh Service port.
fn is_gateway_listener(listener: &str) -> bool {
    !listener.starts_with(crate::mesh::LISTENER_KEY_PREFIX)
}

fn compile_rule(
    snapshot: &Snapshot,
    resolver: &mut Resolver,
    flavor: Flavor<'_>,
    index: usize,
    spec: &model::gw::httproutes::HttpRouteRules,
    problems: &mut RuleProblems,
) -> CompiledRule {
    let route = flavor.name;
    let id = RouteId {
        kind: flavor.kind,
        namespace: route.namespace.clone(),
        name: route.name.clone(),
        rule: index,
        rule_name: spec.name.clone(),
    };
    let mut invalid: Option<String> = None;
    let matches = match matches::compile(spec.matches.as_deref().unwrap_or_default()) {
        Ok(matches) => matches,
        Err(message) => {
            problems.unsupported(message.clone());
            invalid = Some(message);
            vec![ir::HttpMatch::default()]
        }
    };
    let referrer = crate::backends::Referrer {
        mesh_parents: flavor.mesh_parents,
        kind: flavor.kind_name(),
        namespace: &route.namespace,
    };
    let compiled = filters::rule_filters(
        snapshot,
        resolver,
        referrer,
        spec.filters.as_deref().unwrap_or_default(),
        problems,
    );
    let (filters, redirect) = match compiled {
        Ok(pair) => pair,
        Err(message) => {
            invalid.get_or_insert(message);
            Default::default()
        }
    };
    let backends = filters::backends(
        snapshot,
        resolver,
        referrer,
        spec.backend_refs.as_deref().unwrap_or_default(),
        problems,
    );
    let action = match (invalid, redirect) {
        (Some(message), _) => Action::Invalid(message),
        (None, Some(redirect)) => Action::Redirect(Box::new(redirect)),
        (None, None) if backends.is_empty() && flavor.egress => {
            Action::Forward(vec![ir::WeightedBackend {
                weight: 1,
                target: ir::BackendTarget::OriginalDestination,
                request_headers: None,
                response_headers: None,
            }])
        }
        (None, None) if backends.is_empty() => {
            Action::Invalid("the rule has no backendRefs".into())
        }
        (None, None) => Action::Forward(backends),
    };
    let timeouts = spec
        .timeouts
        .as_ref()
        .map_or_else(Timeouts::default, |t| Timeouts {
            request: t
                .request
                .as_deref()
                .and_then(model::parse_duration)
                .filter(|d| !d.is_zero()),
            backend_request: t
                .backend_request
                .as_deref()
                .and_then(model::parse_duration)
                .filter(|d| !d.is_zero()),
        });
    // GEP-1731 leaves the default backoff to implementations; 25 ms is Envoy's base interval.
    let retry = spec.retry.as_ref().map(|r| {
        Box::new(ir::Retry {
            attempts: r.attempts.and_then(|a| u32::try_from(a).ok()).unwrap_or(1),
            backoff: r
                .backoff
                .as_deref()
                .and_then(model::parse_duration)
                .unwrap_or(std::time::Duration::from_millis(25)),
            codes: r
                .codes
                .iter()
                .flatten()
                .filter_map(|c| u16::try_from(*c).ok())
                .collect(),
        })
    });
    CompiledRule {
        rule: Arc::new(Rule {
            id,
            filters,
            action,
            timeouts,
            retry,
            policies: Default::default(),
        }),
        matches,
    }
}
