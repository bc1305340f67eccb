//! Our AuthenticationPolicy and RateLimitPolicy: compiled, attached to their targets as
//! GEP-713 describes, and given status.
//!
//! Targets, from least to most specific: a Gateway, one of its listeners (`sectionName`), a
//! route (HTTPRoute or GRPCRoute), one of its rules (`sectionName` = the rule's `name`). For
//! each kind of policy separately, the most specific attachment that reaches a rule is the
//! one in effect, as a whole: policies are not merged field by field, so what a route owner
//! writes is exactly what applies to the route. Two policies of one kind on the same target
//! conflict; the older (creation time, then namespace/name) wins and the other is reported
//! `Accepted: False, reason: Conflicted` for that target.
//!
//! A policy that cannot be compiled (a missing Secret, a JWKS that does not parse) gets
//! `Accepted: False, reason: Invalid`. An invalid AuthenticationPolicy still attaches and
//! makes its targets answer 500: failing open would let unauthenticated requests through.
//! An invalid RateLimitPolicy does not attach.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use http::HeaderName;
use ir::{
    ApiKeys, Applied, Authentication, BasicAuth, ClientKey, Jwt, JwtKey, JwtKeys, JwtProvider,
    KeySource, Limit, LimitScope, PasswordHash, RateLimit, RouteKind, RulePolicies,
};
use model::policy::{
    AuthenticationPolicySpec, ClientKeyType, LimitScope as SpecScope, RateLimitPolicySpec,
    TargetRef,
};
use model::status::{
    Condition, ConditionType, ParentReference, PolicyAncestorStatus, Reason, ResourceStatus,
    StatusSet,
};
use model::{GATEWAY_GROUP, Kind, ObjectName, ResourceKey, Snapshot, k8s};

use crate::Options;

/// A place a policy attaches to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Gateway(ObjectName),
    Listener(ObjectName, String),
    /// `HTTPRoute` or `GRPCRoute`, and the route.
    Route(&'static str, ObjectName),
    Rule(&'static str, ObjectName, String),
}

/// The attached policies of both kinds.
#[derive(Default)]
pub(crate) struct Policies {
    authentication: BTreeMap<Target, Arc<Authentication>>,
    rate_limits: BTreeMap<Target, Arc<RateLimit>>,
}

// === impl Target ===

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Gateway(name) => write!(f, "Gateway {name}"),
            Self::Listener(name, listener) => write!(f, "Gateway {name} listener {listener}"),
            Self::Route(kind, name) => write!(f, "{kind} {name}"),
            Self::Rule(kind, name, rule) => write!(f, "{kind} {name} rule {rule}"),
        }
    }
}

// === impl Policies ===

impl Policies {
    /// Compiles every policy, attaches it, and writes its status.
    pub(crate) fn resolve(snapshot: &Snapshot, options: &Options, status: &mut StatusSet) -> Self {
        let mut policies = Self::default();
        let mut ordered: Vec<_> = snapshot.authentication_policies.iter().collect();
        ordered.sort_by(|(a_name, a), (b_name, b)| {
            crate::oldest_first((&a.metadata, a_name), (&b.metadata, b_name))
        });
        for (name, policy) in ordered {
            let compiled = compile_authentication(snapshot, name, &policy.spec);
            let (compiled, problem) = match compiled {
                Ok(compiled) => (compiled, None),
                Err(message) => (
                    Authentication {
                        policy: name.to_string(),
                        invalid: Some(message.clone()),
                        jwt: None,
                        basic: None,
                        api_key: None,
                    },
                    Some(message),
                ),
            };
            let ancestors = attach(
                snapshot,
                name,
                &policy.spec.target_refs,
                &mut policies.authentication,
                Arc::new(compiled),
                problem.as_deref(),
                true,
            );
            let generation = policy.metadata.generation.unwrap_or(1);
            write(
                options,
                status,
                Kind::AuthenticationPolicy,
                name,
                ancestors,
                generation,
            );
        }
        let mut ordered: Vec<_> = snapshot.rate_limit_policies.iter().collect();
        ordered.sort_by(|(a_name, a), (b_name, b)| {
            crate::oldest_first((&a.metadata, a_name), (&b.metadata, b_name))
        });
        for (name, policy) in ordered {
            let (compiled, problem) = match compile_rate_limit(name, &policy.spec) {
                Ok(compiled) => (compiled, None),
                Err(message) => (
                    RateLimit {
                        policy: name.to_string(),
                        limits: Vec::new(),
                    },
                    Some(message),
                ),
            };
            let ancestors = attach(
                snapshot,
                name,
                &policy.spec.target_refs,
                &mut policies.rate_limits,
                Arc::new(compiled),
                problem.as_deref(),
                false,
            );
            let generation = policy.metadata.generation.unwrap_or(1);
            write(
                options,
                status,
                Kind::RateLimitPolicy,
                name,
                ancestors,
                generation,
            );
        }
        policies
    }

    /// What a route's own policies (on the rule, else on the route) put on one of its rules.
    pub(crate) fn for_rule(
        &self,
        kind: RouteKind,
        route: &ObjectName,
        rule_name: Option<&str>,
    ) -> RulePolicies {
        let kind = route_kind(kind);
        let rule = rule_name.map(|n| Target::Rule(kind, route.clone(), n.to_string()));
        let whole = Target::Route(kind, route.clone());
        RulePolicies {
            authentication: pick(&self.authentication, rule.as_ref(), &whole),
            rate_limit: pick(&self.rate_limits, rule.as_ref(), &whole),
        }
    }

    /// What a Gateway's policies (on the listener, else on the Gateway) put on the rules
    /// served by that listener, where the route has none of its own.
    pub(crate) fn for_listener(&self, gateway: &ObjectName, listener: &str) -> RulePolicies {
        let one = Target::Listener(gateway.clone(), listener.to_string());
        let whole = Target::Gateway(gateway.clone());
        RulePolicies {
            authentication: pick(&self.authentication, Some(&one), &whole),
            rate_limit: pick(&self.rate_limits, Some(&one), &whole),
        }
    }

    /// Whether any policy targets a Gateway or listener (only then do rules need a copy per
    /// listener).
    pub(crate) fn any_on_gateways(&self) -> bool {
        let on_gateway = |t: &Target| matches!(t, Target::Gateway(_) | Target::Listener(..));
        self.authentication.keys().any(on_gateway) || self.rate_limits.keys().any(on_gateway)
    }
}

/// The policy on the more specific target, else the one on the whole.
fn pick<T>(
    map: &BTreeMap<Target, Arc<T>>,
    specific: Option<&Target>,
    whole: &Target,
) -> Option<Applied<T>> {
    specific
        .and_then(|t| map.get(t).map(|p| (t, p)))
        .or_else(|| map.get(whole).map(|p| (whole, p)))
        .map(|(target, policy)| Applied {
            policy: Arc::clone(policy),
            via: target.to_string().into(),
        })
}

/// A rule's policies with the listener's filled in where the rule has none of a kind.
pub(crate) fn inherit(own: &RulePolicies, listener: &RulePolicies) -> Option<RulePolicies> {
    let authentication = own
        .authentication
        .clone()
        .or_else(|| listener.authentication.clone());
    let rate_limit = own
        .rate_limit
        .clone()
        .or_else(|| listener.rate_limit.clone());
    let changed = authentication.is_some() != own.authentication.is_some()
        || rate_limit.is_some() != own.rate_limit.is_some();
    changed.then_some(RulePolicies {
        authentication,
        rate_limit,
    })
}

/// GRPCRoutes and HTTPRoutes are told apart; the other kinds are not targets.
fn route_kind(kind: RouteKind) -> &'static str {
    match kind {
        RouteKind::Grpc => "GRPCRoute",
        _ => "HTTPRoute",
    }
}

/// One ancestor's outcome.
type Ancestor = (ParentReference, Result<(), (Reason, String)>);

/// Attaches a compiled policy to each of its targets, returning the status of each ancestor.
#[allow(clippy::too_many_arguments)]
fn attach<T>(
    snapshot: &Snapshot,
    name: &ObjectName,
    targets: &[TargetRef],
    attached: &mut BTreeMap<Target, Arc<T>>,
    compiled: Arc<T>,
    problem: Option<&str>,
    attach_invalid: bool,
) -> Vec<Ancestor> {
    let mut ancestors = Vec::new();
    for target in targets {
        let found = find_target(snapshot, &name.namespace, target);
        let (key, parents) = match found {
            Ok(found) => found,
            Err(message) => {
                ancestors.push((
                    ParentReference {
                        group: target.group.clone(),
                        kind: target.kind.clone(),
                        namespace: Some(name.namespace.to_string()),
                        name: target.name.clone(),
                        section_name: target.section_name.clone(),
                        port: None,
                    },
                    Err((Reason::TargetNotFound, message)),
                ));
                continue;
            }
        };
        let outcome = match attached.entry(key) {
            std::collections::btree_map::Entry::Occupied(_) => Err((
                Reason::Conflicted,
                format!(
                    "an older policy of the same kind already targets {} {}{}",
                    target.kind,
                    target.name,
                    target
                        .section_name
                        .as_deref()
                        .map(|s| format!(" section {s}"))
                        .unwrap_or_default()
                ),
            )),
            std::collections::btree_map::Entry::Vacant(slot) => {
                if problem.is_none() || attach_invalid {
                    slot.insert(Arc::clone(&compiled));
                }
                match problem {
                    Some(message) => Err((Reason::Invalid, message.to_string())),
                    None => Ok(()),
                }
            }
        };
        for parent in parents {
            ancestors.push((parent, outcome.clone()));
        }
    }
    ancestors
}

/// The target a reference names and the ancestors to report it under: the Gateway itself,
/// or the parents of a route.
fn find_target(
    snapshot: &Snapshot,
    namespace: &str,
    target: &TargetRef,
) -> Result<(Target, Vec<ParentReference>), String> {
    let name = ObjectName::new(namespace, &target.name);
    let section = target.section_name.as_deref();
    match target.kind.as_str() {
        "Gateway" => {
            let gateway = snapshot
                .gateways
                .get(&name)
                .ok_or_else(|| format!("Gateway {name} does not exist"))?;
            let parent = ParentReference {
                group: GATEWAY_GROUP.to_string(),
                kind: "Gateway".to_string(),
                namespace: Some(namespace.to_string()),
                name: target.name.clone(),
                section_name: section.map(str::to_string),
                port: None,
            };
            match section {
                None => Ok((Target::Gateway(name), vec![parent])),
                Some(listener) => {
                    if !gateway.spec.listeners.iter().any(|l| l.name == listener) {
                        return Err(format!("Gateway {name} has no listener named {listener}"));
                    }
                    Ok((Target::Listener(name, listener.to_string()), vec![parent]))
                }
            }
        }
        "HTTPRoute" | "GRPCRoute" => {
            // The two route kinds have distinct generated types of the same shape.
            macro_rules! parts {
                ($routes:expr, $kind:literal) => {{
                    let route = $routes
                        .get(&name)
                        .ok_or_else(|| format!("{} {name} does not exist", $kind))?;
                    let parents: Vec<ParentReference> = route
                        .spec
                        .parent_refs
                        .iter()
                        .flatten()
                        .map(|p| ParentReference {
                            group: p.group.clone().unwrap_or_else(|| GATEWAY_GROUP.into()),
                            kind: p.kind.clone().unwrap_or_else(|| "Gateway".into()),
                            namespace: Some(p.namespace.clone().unwrap_or(namespace.into())),
                            name: p.name.clone(),
                            section_name: p.section_name.clone(),
                            port: p.port,
                        })
                        .collect();
                    let rules: Vec<Option<String>> = route
                        .spec
                        .rules
                        .iter()
                        .flatten()
                        .map(|r| r.name.clone())
                        .collect();
                    ($kind, parents, rules)
                }};
            }
            let (kind, parents, rule_names) = if target.kind == "HTTPRoute" {
                parts!(snapshot.http_routes, "HTTPRoute")
            } else {
                parts!(snapshot.grpc_routes, "GRPCRoute")
            };
            match section {
                None => Ok((Target::Route(kind, name), parents)),
                Some(rule) => {
                    if !rule_names.iter().any(|n| n.as_deref() == Some(rule)) {
                        return Err(format!("{} {name} has no rule named {rule}", target.kind));
                    }
                    Ok((Target::Rule(kind, name, rule.to_string()), parents))
                }
            }
        }
        other => Err(format!(
            "{other} cannot be targeted; supported: Gateway, HTTPRoute, GRPCRoute"
        )),
    }
}

fn write(
    options: &Options,
    status: &mut StatusSet,
    kind: Kind,
    name: &ObjectName,
    ancestors: Vec<Ancestor>,
    generation: i64,
) {
    // The policy status API holds at most 16 ancestors.
    let ancestors = ancestors
        .into_iter()
        .take(16)
        .map(|(ancestor_ref, outcome)| {
            let condition = match outcome {
                Ok(()) => Condition::new(
                    ConditionType::Accepted,
                    true,
                    Reason::Accepted,
                    "the policy applies",
                    generation,
                ),
                Err((reason, message)) => {
                    Condition::new(ConditionType::Accepted, false, reason, message, generation)
                }
            };
            PolicyAncestorStatus {
                ancestor_ref,
                controller_name: options.controller_name.clone(),
                conditions: vec![condition],
            }
        })
        .collect();
    status.0.insert(
        ResourceKey::new(kind, &name.namespace, &name.name),
        ResourceStatus::Policy { ancestors },
    );
}

// === AuthenticationPolicy ===

fn compile_authentication(
    snapshot: &Snapshot,
    name: &ObjectName,
    spec: &AuthenticationPolicySpec,
) -> Result<Authentication, String> {
    let jwt = spec
        .jwt
        .as_ref()
        .map(|jwt| -> Result<Jwt, String> {
            let providers = jwt
                .providers
                .iter()
                .map(|p| jwt_provider(snapshot, &name.namespace, p))
                .collect::<Result<_, _>>()?;
            Ok(Jwt { providers })
        })
        .transpose()?;
    let basic = spec
        .basic_auth
        .as_ref()
        .map(|basic| -> Result<BasicAuth, String> {
            let key = basic.users.key.as_deref().unwrap_or(".htpasswd");
            let secret = ObjectName::new(&name.namespace, &basic.users.name);
            let file = secret_value(snapshot, &secret, key)?;
            let text = String::from_utf8(file)
                .map_err(|_| format!("Secret {secret} key {key} is not UTF-8 text"))?;
            Ok(BasicAuth {
                realm: basic.realm.clone().unwrap_or_else(|| name.name.to_string()),
                users: htpasswd(&text).map_err(|e| format!("Secret {secret} key {key}: {e}"))?,
            })
        })
        .transpose()?;
    let api_key = spec
        .api_key
        .as_ref()
        .map(|spec| -> Result<ApiKeys, String> {
            let mut keys = HashMap::new();
            for credential in &spec.credentials {
                let secret_name = ObjectName::new(&name.namespace, &credential.name);
                for (client, key) in secret_entries(snapshot, &secret_name)? {
                    let key = String::from_utf8(key).map_err(|_| {
                        format!("Secret {secret_name}: key of {client} is not UTF-8")
                    })?;
                    let key = key.trim();
                    if key.is_empty() {
                        return Err(format!(
                            "Secret {secret_name}: the key of {client} is empty"
                        ));
                    }
                    if keys.insert(ApiKeys::digest(key), client.clone()).is_some() {
                        return Err(format!(
                            "Secret {secret_name}: the key of {client} is also another client's"
                        ));
                    }
                }
            }
            let mut sources = Vec::new();
            for source in spec.extract_from.iter().flatten() {
                match (&source.header, &source.query_parameter) {
                    (Some(header), _) => sources.push(KeySource::Header(header_name(header)?)),
                    (None, Some(parameter)) => sources.push(KeySource::Query(parameter.clone())),
                    (None, None) => {}
                }
            }
            if sources.is_empty() {
                sources.push(KeySource::Header(HeaderName::from_static("x-api-key")));
            }
            Ok(ApiKeys {
                keys,
                sources,
                client_id_header: spec
                    .forward_client_id_header
                    .as_deref()
                    .map(header_name)
                    .transpose()?,
            })
        })
        .transpose()?;
    Ok(Authentication {
        policy: name.to_string(),
        invalid: None,
        jwt,
        basic,
        api_key,
    })
}

fn jwt_provider(
    snapshot: &Snapshot,
    namespace: &str,
    spec: &model::policy::JwtProvider,
) -> Result<JwtProvider, String> {
    let keys = match (&spec.jwks, &spec.remote_jwks) {
        (Some(jwks), _) => {
            let source = ObjectName::new(namespace, &jwks.name);
            let key = jwks.key.as_deref().unwrap_or("jwks.json");
            let document = match jwks.kind.as_deref().unwrap_or("ConfigMap") {
                "Secret" => secret_value(snapshot, &source, key)?,
                _ => {
                    let map = snapshot
                        .config_maps
                        .get(&source)
                        .ok_or_else(|| format!("ConfigMap {source} does not exist"))?;
                    map.data
                        .as_ref()
                        .and_then(|d| d.get(key))
                        .map(|v| v.clone().into_bytes())
                        .ok_or_else(|| format!("ConfigMap {source} has no key {key}"))?
                }
            };
            let keys = JwtKey::parse_set(&document)
                .map_err(|e| format!("provider {}: {source} key {key}: {e}", spec.name))?;
            JwtKeys::Static(Arc::new(keys))
        }
        (None, Some(remote)) => JwtKeys::Remote {
            uri: remote.uri.clone(),
            refresh: remote
                .cache_duration
                .as_deref()
                .and_then(model::parse_duration)
                .filter(|d| !d.is_zero())
                .unwrap_or(Duration::from_secs(300)),
        },
        (None, None) => return Err(format!("provider {} has no keys", spec.name)),
    };
    let claim_to_headers = spec
        .claim_to_headers
        .iter()
        .flatten()
        .map(|c| Ok((c.claim.clone(), header_name(&c.header)?)))
        .collect::<Result<_, String>>()?;
    Ok(JwtProvider {
        name: spec.name.clone(),
        issuer: spec.issuer.clone(),
        audiences: spec.audiences.clone().unwrap_or_default(),
        keys,
        claim_to_headers,
    })
}

/// Parses an htpasswd file: `user:hash` lines; `#` comments and blank lines are skipped.
fn htpasswd(text: &str) -> Result<HashMap<String, PasswordHash>, String> {
    let mut users = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line_no = number + 1;
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| format!("line {line_no}: expected user:hash"))?;
        let hash = if hash.starts_with("$2a$")
            || hash.starts_with("$2b$")
            || hash.starts_with("$2y$")
        {
            PasswordHash::Bcrypt(hash.to_string())
        } else if let Some(encoded) = hash.strip_prefix("{SHA}") {
            let digest = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
                .and_then(|d| <[u8; 20]>::try_from(d).ok())
                .ok_or_else(|| format!("line {line_no}: {{SHA}} needs a base64 SHA-1 digest"))?;
            PasswordHash::Sha1(digest)
        } else {
            return Err(format!(
                "line {line_no}: user {user}: unsupported hash; supported: bcrypt ($2y$, $2a$, $2b$), {{SHA}}"
            ));
        };
        if users.insert(user.to_string(), hash).is_some() {
            return Err(format!("line {line_no}: user {user} appears twice"));
        }
    }
    Ok(users)
}

fn secret_value(snapshot: &Snapshot, name: &ObjectName, key: &str) -> Result<Vec<u8>, String> {
    secret_entries(snapshot, name)?
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
        .ok_or_else(|| format!("Secret {name} has no key {key}"))
}

/// Every `data` and `stringData` entry of a Secret.
fn secret_entries(
    snapshot: &Snapshot,
    name: &ObjectName,
) -> Result<Vec<(String, Vec<u8>)>, String> {
    let secret: &k8s::Secret = snapshot
        .secrets
        .get(name)
        .ok_or_else(|| format!("Secret {name} does not exist"))?;
    let mut entries: Vec<(String, Vec<u8>)> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    for (k, v) in secret.string_data.iter().flatten() {
        entries.retain(|(existing, _)| existing != k);
        entries.push((k.clone(), v.clone().into_bytes()));
    }
    Ok(entries)
}

fn header_name(name: &str) -> Result<HeaderName, String> {
    HeaderName::try_from(name).map_err(|_| format!("{name:?} is not a valid header name"))
}

// === RateLimitPolicy ===

fn compile_rate_limit(name: &ObjectName, spec: &RateLimitPolicySpec) -> Result<RateLimit, String> {
    let limits = spec
        .limits
        .iter()
        .enumerate()
        .map(|(index, limit)| {
            let label = limit.name.clone().unwrap_or_else(|| index.to_string());
            if limit.requests == 0 {
                return Err(format!("limit {label}: requests must be at least 1"));
            }
            let key = match (
                &limit.client_key,
                limit.client_key.as_ref().and_then(|k| k.name.as_deref()),
            ) {
                (None, _) => ClientKey::Everyone,
                (Some(k), _) if k.kind == ClientKeyType::ClientIp => ClientKey::ClientIp,
                (Some(k), Some(header)) if k.kind == ClientKeyType::Header => {
                    ClientKey::Header(header_name(header)?)
                }
                (Some(k), Some(claim)) if k.kind == ClientKeyType::JwtClaim => {
                    ClientKey::JwtClaim(claim.to_string())
                }
                (Some(_), _) => {
                    return Err(format!("limit {label}: clientKey needs a name"));
                }
            };
            Ok(Limit {
                id: format!("{name}/{label}"),
                scope: match limit.scope {
                    SpecScope::Local => LimitScope::Local,
                    SpecScope::Global => LimitScope::Global,
                },
                requests: limit.requests,
                window: Duration::from_secs(limit.unit.seconds()),
                key,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(RateLimit {
        policy: name.to_string(),
        limits,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htpasswd_reads_bcrypt_and_sha_and_refuses_the_rest() {
        let file = "# users\nalice:$2y$05$abcdefghijklmnopqrstuuWfZ7W6FkHR9a2nQ3o1rCjCj8yDkr8Vu\nbob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n\n";
        let users = htpasswd(file).expect("parses");
        assert!(matches!(users["alice"], PasswordHash::Bcrypt(_)));
        assert!(matches!(users["bob"], PasswordHash::Sha1(_)));
        let error = htpasswd("carol:$apr1$salt$hash").err().unwrap_or_default();
        assert!(
            error.contains("line 1") && error.contains("unsupported"),
            "{error}"
        );
        assert!(htpasswd("dave").is_err());
        assert!(htpasswd("a:{SHA}x\n").is_err());
    }
}
