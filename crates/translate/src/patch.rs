//! Patching the previous config for a change that touches only HTTPRoutes: what a GitOps
//! repository of thousands of routes does most of the time (add a route, edit one, remove
//! one).
//!
//! [`patch`] returns exactly the config [`crate::translate`] would return for the new
//! snapshot (the same listeners, candidates, ranks and rules), but it compiles only the
//! changed routes and rebuilds only the route tables they touch, keeping every other rule
//! and listener of the previous config shared. At 5,000 routes a full translation took
//! 13-20 ms on the CI machine, most of a change's time to be served; a patch is a route's
//! compilation plus one table build.
//!
//! It declines (returns `None`, and the caller translates in full) whenever the change could
//! reach beyond the changed routes' own candidates:
//! - anything but HTTPRoutes changed;
//! - a changed route has (or had) a parent other than a Gateway: mesh Services, egress
//!   networks and ListenerSets each add listeners or routing of their own;
//! - there are GRPCRoutes, which share precedence with HTTPRoutes and claim hostnames
//!   against them;
//! - there are policies (authentication, rate limit, health check, BackendTLSPolicy),
//!   whose attachment and inheritance span routes;
//! - more than [`MAX_CHANGED`] routes changed (a full translation is then about as cheap).
//!
//! Still a pure function: the previous snapshot and config are inputs.

use std::sync::Arc;

use ir::Candidate;
use model::gw::httproutes::HttpRoute;
use model::status::StatusSet;
use model::{GATEWAY_GROUP, ObjectName, Snapshot};

use crate::Options;

/// Above this many added, changed or removed routes, [`patch`] declines.
pub const MAX_CHANGED: usize = 64;

/// The config for `after`, given `previous`, the config translated (or patched) from
/// `before` with the same `options`; `None` when the change needs a full translation (see
/// the module docs).
pub fn patch(
    before: &Snapshot,
    previous: &ir::Config,
    after: &Snapshot,
    options: &Options,
) -> Option<ir::Config> {
    if !only_routes_differ(before, after) || has_unpatchable_kinds(before, after) {
        return None;
    }
    let (removed, inserted) = changed_routes(before, after)?;
    if removed.is_empty() && inserted.is_empty() {
        return Some(previous.clone());
    }
    // Ranks: a route's position in precedence order among all routes. Removed routes free
    // theirs (in `before`'s numbering), inserted ones take theirs (in `after`'s).
    let mut removed_ranks: Vec<usize> = removed.iter().map(|&r| rank_in(before, r)).collect();
    removed_ranks.sort_unstable();
    let mut inserted: Vec<(usize, &ObjectName, &HttpRoute)> = inserted
        .into_iter()
        .map(|(name, route)| (rank_in(after, (name, route)), name, route))
        .collect();
    inserted.sort_unstable_by_key(|(rank, _, _)| *rank);
    let inserted_ranks: Vec<usize> = inserted.iter().map(|(rank, _, _)| *rank).collect();
    let renumber = Renumber {
        removed: &removed_ranks,
        inserted: &inserted_ranks,
    };

    let mut scratch = StatusSet::default();
    let classes = crate::classes::accepted(after, options, &mut scratch);
    let mut gateways = crate::gateways::resolve(after, &classes, options);
    let policies = crate::backend_tls::Policies::resolve(after);
    let health = crate::health::HealthPolicies::resolve(after);
    let attached = crate::policies::Policies::resolve(after, options, &mut scratch);
    let mut added = crate::http_route::compile_routes(
        after,
        &mut gateways,
        options,
        (&policies, &health),
        &attached,
        &inserted,
    )
    .into_listeners();

    let mut binds = previous.binds.clone();
    for bind in binds.values_mut() {
        for listener in &mut bind.http {
            let key = added.keys().find(|(gateway, name)| {
                *name == listener.name && listener.gateway == gateway.to_string()
            });
            let new = key
                .cloned()
                .and_then(|key| added.remove(&key))
                .unwrap_or_default();
            if let Some(patched) = renumber.listener(listener, new) {
                *listener = Arc::new(patched);
            }
        }
        for listener in bind.consumers.values_mut() {
            if let Some(patched) = renumber.listener(listener, Vec::new()) {
                *listener = Arc::new(patched);
            }
        }
    }
    // Candidates left in `added` are for listeners that do not serve (a Gateway that is not
    // programmed, a listener with errors, another Gateway's pod): the full translation
    // drops them too.
    Some(ir::Config {
        binds,
        egress: previous.egress.clone(),
    })
}

/// Where `patched` differs from `full` (the full translation of the same snapshot), as
/// `/config` shows them or in the ranks behind each route table's order; `None` when they
/// are the same. For checking patches at run time (`portcullis run --verify-patches`).
pub fn difference(patched: &ir::Config, full: &ir::Config) -> Option<String> {
    let binds = |config: &ir::Config| config.binds.keys().copied().collect::<Vec<_>>();
    if binds(patched) != binds(full) {
        return Some("the configs bind different addresses".into());
    }
    for ((addr, a), b) in patched.binds.iter().zip(full.binds.values()) {
        let listeners = |bind: &ir::Bind| {
            bind.http
                .iter()
                .chain(bind.consumers.values())
                .cloned()
                .collect::<Vec<_>>()
        };
        let (a_listeners, b_listeners) = (listeners(a), listeners(b));
        if a_listeners.len() != b_listeners.len() {
            return Some(format!("{addr}: the configs have different HTTP listeners"));
        }
        for (a, b) in a_listeners.iter().zip(&b_listeners) {
            let ranks = |l: &ir::HttpListener| {
                l.routes
                    .candidates()
                    .iter()
                    .map(|c| (c.route_rank, c.match_index))
                    .collect::<Vec<_>>()
            };
            if ranks(a) != ranks(b) {
                return Some(format!(
                    "{addr}: listener {} {}: route ranks differ",
                    a.gateway, a.name
                ));
            }
        }
        if serde_json::to_value(a).ok() != serde_json::to_value(b).ok() {
            return Some(format!("{addr}: the listeners or their routes differ"));
        }
    }
    if serde_json::to_value(&patched.egress).ok() != serde_json::to_value(&full.egress).ok() {
        return Some("egress differs".into());
    }
    None
}

/// Whether every kind but HTTPRoute holds the same objects in both snapshots.
fn only_routes_differ(before: &Snapshot, after: &Snapshot) -> bool {
    let Snapshot {
        gateway_classes,
        gateways,
        listener_sets,
        http_routes: _,
        grpc_routes,
        tls_routes,
        tcp_routes,
        reference_grants,
        backend_tls_policies,
        namespaces,
        services,
        endpoint_slices,
        secrets,
        config_maps,
        egress_networks,
        authentication_policies,
        rate_limit_policies,
        health_check_policies,
    } = before;
    same(gateway_classes, &after.gateway_classes)
        && same(gateways, &after.gateways)
        && same(listener_sets, &after.listener_sets)
        && same(grpc_routes, &after.grpc_routes)
        && same(tls_routes, &after.tls_routes)
        && same(tcp_routes, &after.tcp_routes)
        && same(reference_grants, &after.reference_grants)
        && same(backend_tls_policies, &after.backend_tls_policies)
        && same(namespaces, &after.namespaces)
        && same(services, &after.services)
        && same(endpoint_slices, &after.endpoint_slices)
        && same(secrets, &after.secrets)
        && same(config_maps, &after.config_maps)
        && same(egress_networks, &after.egress_networks)
        && same(authentication_policies, &after.authentication_policies)
        && same(rate_limit_policies, &after.rate_limit_policies)
        && same(health_check_policies, &after.health_check_policies)
}

/// Kinds whose presence makes routes depend on each other beyond precedence.
fn has_unpatchable_kinds(before: &Snapshot, after: &Snapshot) -> bool {
    [before, after].into_iter().any(|s| {
        !s.grpc_routes.is_empty()
            || !s.listener_sets.is_empty()
            || !s.backend_tls_policies.is_empty()
            || !s.authentication_policies.is_empty()
            || !s.rate_limit_policies.is_empty()
            || !s.health_check_policies.is_empty()
    })
}

/// Whether two maps hold equal objects: the same allocations (the store shares unchanged
/// objects between snapshots), or equal values (a file rewritten with the same content).
fn same<K: Eq, V: PartialEq>(
    a: &std::collections::BTreeMap<K, Arc<V>>,
    b: &std::collections::BTreeMap<K, Arc<V>>,
) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|((ka, va), (kb, vb))| ka == kb && (Arc::ptr_eq(va, vb) || va == vb))
}

type Named<'a> = (&'a ObjectName, &'a HttpRoute);

/// The routes of `before` that are gone or changed, and those of `after` that are new or
/// changed; `None` when there are too many, or one of them has a parent other than a
/// Gateway.
fn changed_routes<'a>(
    before: &'a Snapshot,
    after: &'a Snapshot,
) -> Option<(Vec<Named<'a>>, Vec<Named<'a>>)> {
    let (mut removed, mut inserted) = (Vec::new(), Vec::new());
    let mut old = before.http_routes.iter().peekable();
    let mut new = after.http_routes.iter().peekable();
    loop {
        let order = match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some((a, _)), Some((b, _))) => a.cmp(b),
        };
        match order {
            std::cmp::Ordering::Less => removed.extend(old.next()),
            std::cmp::Ordering::Greater => inserted.extend(new.next()),
            std::cmp::Ordering::Equal => {
                if let (Some(a), Some(b)) = (old.next(), new.next())
                    && !(Arc::ptr_eq(a.1, b.1) || a.1 == b.1)
                {
                    removed.push(a);
                    inserted.push(b);
                }
            }
        }
        if removed.len() + inserted.len() > MAX_CHANGED {
            return None;
        }
    }
    let named = |(name, route): (&'a ObjectName, &'a Arc<HttpRoute>)| (name, route.as_ref());
    let removed: Vec<_> = removed.into_iter().map(named).collect();
    let inserted: Vec<_> = inserted.into_iter().map(named).collect();
    let gateway_parents_only = removed
        .iter()
        .chain(&inserted)
        .all(|(_, route)| has_only_gateway_parents(route));
    gateway_parents_only.then_some((removed, inserted))
}

fn has_only_gateway_parents(route: &HttpRoute) -> bool {
    route.spec.parent_refs.iter().flatten().all(|p| {
        p.group.as_deref().unwrap_or(GATEWAY_GROUP) == GATEWAY_GROUP
            && p.kind.as_deref().unwrap_or("Gateway") == "Gateway"
    })
}

/// A route's rank in a snapshot (GRPCRoutes excluded, since patching declines when there
/// are any): how many routes come before it in precedence order.
fn rank_in(snapshot: &Snapshot, (name, route): Named<'_>) -> usize {
    snapshot
        .http_routes
        .iter()
        .filter(|(other_name, other)| {
            crate::oldest_first((&other.metadata, other_name), (&route.metadata, name)).is_lt()
        })
        .count()
}

/// Moves candidates from the previous ranks to the new ones.
struct Renumber<'a> {
    /// Ranks of removed routes, in the previous numbering, ascending.
    removed: &'a [usize],
    /// Ranks of inserted routes, in the new numbering, ascending.
    inserted: &'a [usize],
}

impl Renumber<'_> {
    /// The new rank of a route that stays, `None` for a removed one.
    fn rank(&self, previous: usize) -> Option<usize> {
        if self.removed.binary_search(&previous).is_ok() {
            return None;
        }
        // Its place among the routes that stay, then the slot of that place once the
        // inserted routes have taken theirs.
        let mut rank = previous - self.removed.partition_point(|&r| r < previous);
        for &taken in self.inserted {
            if taken > rank {
                break;
            }
            rank += 1;
        }
        Some(rank)
    }

    /// The listener with removed routes taken out, ranks moved and `added` put in; `None`
    /// when none of that changes it.
    fn listener(
        &self,
        listener: &ir::HttpListener,
        added: Vec<Candidate>,
    ) -> Option<ir::HttpListener> {
        let current = listener.routes.candidates();
        let untouched = added.is_empty()
            && current
                .iter()
                .all(|c| self.rank(c.route_rank) == Some(c.route_rank));
        if untouched {
            return None;
        }
        let mut entries = Vec::with_capacity(current.len() + added.len());
        for candidate in current {
            if let Some(route_rank) = self.rank(candidate.route_rank) {
                entries.push(Candidate {
                    route_rank,
                    ..candidate.clone()
                });
            }
        }
        entries.extend(added);
        // Field by field: `..listener.clone()` would copy the old table only to drop it.
        let ir::HttpListener {
            gateway,
            name,
            hostname,
            port,
            scheme,
            routes: _,
            tls,
            client_validation,
            backend_client_certificate,
        } = listener;
        Some(ir::HttpListener {
            gateway: gateway.clone(),
            name: name.clone(),
            hostname: hostname.clone(),
            port: *port,
            scheme: *scheme,
            routes: ir::RouteTable::new(entries),
            tls: tls.clone(),
            client_validation: client_validation.clone(),
            backend_client_certificate: backend_client_certificate.clone(),
        })
    }
}
