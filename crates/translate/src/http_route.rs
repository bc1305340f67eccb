//! HTTPRoute: attaching each route to its parents and compiling its rules into IR.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use ir::{Action, Candidate, HostnameMatch, RouteId, RouteKind, Rule, Timeouts};
use model::gw::grpcroutes::GrpcRoute;
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

/// A route's rules, compiled: what depends on the route and on the objects that are not
/// routes (Services, grants, policies), and not on where the route attaches or on other
/// routes.
struct RouteRules {
    /// The route these rules are of (a GRPCRoute's HTTPRoute equivalent): reused only for
    /// this very object.
    source: Arc<HttpRoute>,
    rules: Vec<CompiledRule>,
    problems: RuleProblems,
    /// The BackendTLSPolicies its backends use.
    used_policies: BTreeSet<ObjectName>,
    /// Where it attached, kept only from a translation without routes of both kinds.
    attached: Option<Attached>,
}

/// Where a route attached and what its status said. With routes of one kind only, that
/// depends on the route and on objects that are not routes, as its rules do: a route is
/// refused a listener for the sake of another route only between HTTPRoutes and GRPCRoutes.
struct Attached {
    /// Its status entry, if it has a parent of ours.
    status: Option<(ResourceKey, Vec<model::status::RouteParentStatus>)>,
    /// What each listener it attached to serves from it.
    served: Vec<Served>,
    /// The listeners its attachments were counted on.
    counted: Vec<(ObjectName, String)>,
    /// The Gateways it attached to (for its BackendTLSPolicies' ancestors).
    gateways: BTreeSet<ObjectName>,
}

/// A route's rules on one listener.
struct Served {
    listener: (ObjectName, String),
    hostnames: Vec<Option<HostnameMatch>>,
    /// Its rules as that listener serves them (with the listener's policies where they have
    /// none of their own), in the order of [`RouteRules::rules`].
    rules: Vec<Arc<Rule>>,
}

type Hasher = foldhash::fast::RandomState;

/// Rules compiled by one translation, for the next to reuse where a route has not changed;
/// [`crate::Reuse`] keeps them only while nothing but routes changes.
///
/// Keyed by the address of the route object they were compiled from, which each entry holds
/// (so no other object can have it): a route the store replaced, because it changed, is not
/// found. Hashing an address rather than a name was a third of the cost of these maps.
#[derive(Default)]
pub(crate) struct Reused {
    http: HashMap<usize, RouteRules, Hasher>,
    /// With the GRPCRoute they were converted from.
    grpc: HashMap<usize, (Arc<GrpcRoute>, RouteRules), Hasher>,
    /// Backends by Service port, shared by the rules above.
    backends: crate::backends::Resolved,
    /// Whether to keep anything: a translation that is not followed by another keeps
    /// nothing.
    keep: bool,
}

impl Reused {
    /// An empty one that keeps what the translation compiles.
    pub(crate) fn kept() -> Self {
        Self {
            keep: true,
            ..Self::default()
        }
    }
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
    reused: &mut Reused,
) -> Routes {
    let mut earlier = std::mem::take(reused);
    let keep = earlier.keep;
    // GRPCRoutes are compiled as the HTTPRoutes they are equivalent to; the conversion goes
    // through JSON, so a converted route is kept with its rules while the GRPCRoute stays.
    let mut converted = Vec::new();
    for (name, route) in &snapshot.grpc_routes {
        match earlier.grpc.remove(&Arc::as_ptr(route).addr()) {
            Some((source, rules)) => {
                converted.push((name, Arc::clone(&rules.source), source, Some(rules)));
            }
            None => match grpc::to_http(route) {
                Ok(http) => converted.push((name, Arc::new(http), Arc::clone(route), None)),
                // The generated types have the same shapes, so this only fails on a value
                // the decoder accepted and the HTTPRoute type does not; there is nothing to
                // route.
                Err(message) => reject_unconvertible(options, status, name, route, &message),
            },
        }
    }
    // What is compiled, in precedence order, with its rules from the last translation if
    // they can be reused.
    type Ordered<'s> = (
        RouteKind,
        &'s ObjectName,
        Arc<HttpRoute>,
        Option<Arc<GrpcRoute>>,
        Option<RouteRules>,
    );
    let mut ordered: Vec<Ordered<'_>> =
        Vec::with_capacity(snapshot.http_routes.len() + converted.len());
    ordered.extend(snapshot.http_routes.iter().map(|(name, route)| {
        let rules = earlier.http.remove(&Arc::as_ptr(route).addr());
        (RouteKind::Http, name, Arc::clone(route), None, rules)
    }));
    let both_kinds = !snapshot.http_routes.is_empty() && !converted.is_empty();
    ordered.extend(
        converted.into_iter().map(|(name, route, source, rules)| {
            (RouteKind::Grpc, name, route, Some(source), rules)
        }),
    );
    ordered.sort_by(|(_, a_name, a, ..), (_, b_name, b, ..)| {
        crate::oldest_first((&a.metadata, a_name), (&b.metadata, b_name))
    });
    let mut routes = Routes::default();
    let mut resolver = Resolver::with_policies(policies, health)
        .with_resolved(std::mem::take(&mut earlier.backends));
    // Dropped out of the way of the rest: the rules of routes that are gone.
    drop(earlier);
    let mut next = Reused {
        keep,
        ..Reused::default()
    };
    let mut statuses = Vec::with_capacity(ordered.len());
    for (rank, (kind, name, route, grpc_source, rules)) in ordered.into_iter().enumerate() {
        let parents = mesh_parents(name, &route);
        let flavor = Flavor {
            kind,
            rank,
            name,
            egress: has_egress_parent(&route),
            mesh_parents: &parents,
            both_kinds,
            record: keep && !both_kinds,
        };
        let mut rules = rules
            .unwrap_or_else(|| compile_rules(snapshot, &mut resolver, attached, flavor, route));
        rules.attached = match rules.attached.take().filter(|_| !both_kinds) {
            Some(earlier) => {
                attach_again(gateways, &mut statuses, &mut routes, rank, &rules, &earlier);
                Some(earlier)
            }
            None => attach_route(
                snapshot,
                gateways,
                options,
                &mut statuses,
                &mut routes,
                attached,
                flavor,
                &rules,
            ),
        };
        if !keep {
            continue;
        }
        if let Some(source) = grpc_source {
            next.grpc
                .insert(Arc::as_ptr(&source).addr(), (source, rules));
        } else {
            next.http.insert(Arc::as_ptr(&rules.source).addr(), rules);
        }
    }
    next.backends = resolver.into_resolved();
    *reused = next;
    // One bulk build rather than an insert per route, each a search of a growing tree that
    // compares keys string by string (an eighth of a reload at 5,000 routes). The sort finds
    // the runs that precedence order leaves, and a later entry for a key replaces an earlier
    // one, as an insert would.
    let earlier = std::mem::take(&mut status.0);
    status.0 = earlier.into_iter().chain(statuses).collect();
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
    /// Whether to keep where it attaches for the next translation.
    record: bool,
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

/// Compiles a route's rules.
fn compile_rules(
    snapshot: &Snapshot,
    resolver: &mut Resolver,
    attached: &crate::policies::Policies,
    flavor: Flavor<'_>,
    route: Arc<HttpRoute>,
) -> RouteRules {
    let name = flavor.name;
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
    RouteRules {
        source: route,
        rules,
        problems,
        used_policies: resolver.take_used_policies(),
        attached: None,
    }
}

/// Attaches a route again where it attached before, and writes the status it had.
fn attach_again(
    gateways: &mut BTreeMap<ObjectName, GatewayState>,
    statuses: &mut Vec<(ResourceKey, ResourceStatus)>,
    routes: &mut Routes,
    rank: usize,
    compiled: &RouteRules,
    earlier: &Attached,
) {
    attach::count_again(gateways, &earlier.counted);
    for served in &earlier.served {
        if !routes.by_listener.contains_key(&served.listener) {
            routes
                .by_listener
                .insert(served.listener.clone(), Vec::new());
        }
        if let Some(bucket) = routes.by_listener.get_mut(&served.listener) {
            add_candidates(
                bucket,
                &served.hostnames,
                &compiled.rules,
                &served.rules,
                rank,
            );
        }
    }
    add_policy_ancestors(routes, &compiled.used_policies, &earlier.gateways);
    if let Some((key, parents)) = &earlier.status {
        statuses.push((
            key.clone(),
            ResourceStatus::Route {
                parents: parents.clone(),
            },
        ));
    }
}

/// One candidate per hostname, rule and match.
fn add_candidates(
    bucket: &mut Vec<Candidate>,
    hostnames: &[Option<HostnameMatch>],
    rules: &[CompiledRule],
    served: &[Arc<Rule>],
    rank: usize,
) {
    for hostname in hostnames {
        for (compiled, rule) in rules.iter().zip(served) {
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
}

/// The BackendTLSPolicies a route's backends use have the Gateways it attached to as
/// ancestors.
fn add_policy_ancestors(
    routes: &mut Routes,
    used_policies: &BTreeSet<ObjectName>,
    gateways: &BTreeSet<ObjectName>,
) {
    for policy in used_policies {
        routes
            .policy_ancestors
            .entry(policy.clone())
            .or_default()
            .extend(gateways.iter().cloned());
    }
}

/// Attaches a route to its parents with its compiled rules, and writes its status. Returns
/// where it attached, for [`attach_again`], unless there are routes of both kinds.
#[allow(clippy::too_many_arguments)]
fn attach_route(
    snapshot: &Snapshot,
    gateways: &mut BTreeMap<ObjectName, GatewayState>,
    options: &Options,
    statuses: &mut Vec<(ResourceKey, ResourceStatus)>,
    routes: &mut Routes,
    attached: &crate::policies::Policies,
    flavor: Flavor<'_>,
    compiled: &RouteRules,
) -> Option<Attached> {
    let (rank, name) = (flavor.rank, flavor.name);
    let route = &compiled.source;
    let (rules, problems) = (&compiled.rules, &compiled.problems);
    let generation = route.metadata.generation.unwrap_or(1);
    let hostnames: Vec<_> = route
        .spec
        .hostnames
        .iter()
        .flatten()
        .map(|h| HostnameMatch::parse(h))
        .collect();
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
    // What to keep for the next translation.
    let record = flavor.record;
    let (mut counted, mut kept) = (Vec::new(), Vec::new());
    let parents = attach::parent_statuses(
        snapshot,
        gateways,
        options,
        &info,
        &parents,
        generation,
        problems,
        record.then_some(&mut counted),
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
            let listener = record.then(|| key.clone());
            let bucket = routes.by_listener.entry(key).or_default();
            add_candidates(bucket, &attachment.hostnames, rules, &served, rank);
            if let Some(listener) = listener {
                kept.push(Served {
                    listener,
                    hostnames: attachment.hostnames.clone(),
                    rules: served,
                });
            }
            Ok(())
        },
    );
    add_policy_ancestors(routes, &compiled.used_policies, &attached_gateways);
    let status = (!parents.is_empty()).then(|| {
        (
            ResourceKey::new(flavor.kind_model(), &name.namespace, &name.name),
            parents,
        )
    });
    if !record {
        if let Some((key, parents)) = status {
            statuses.push((key, ResourceStatus::Route { parents }));
        }
        return None;
    }
    if let Some((key, parents)) = &status {
        statuses.push((
            key.clone(),
            ResourceStatus::Route {
                parents: parents.clone(),
            },
        ));
    }
    Some(Attached {
        status,
        served: kept,
        counted,
        gateways: attached_gateways,
    })
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
