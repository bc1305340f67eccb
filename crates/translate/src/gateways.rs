//! Gateways: addresses, listeners, listener validity and conflicts, and Gateway status.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use ir::{HostnameMatch, RedirectScheme};
use model::gw::gateways::{
    Gateway, GatewayListeners, GatewayListenersAllowedRoutesNamespacesFrom as From,
    GatewayListenersTlsMode,
};
use model::status::{
    Condition, ConditionType, GatewayAddress, ListenerStatus, Reason, ResourceStatus,
    RouteGroupKind,
};
use model::{GATEWAY_GROUP, Kind, ObjectName, ResourceKey, Snapshot};

use crate::Options;

/// A Gateway of ours after resolving its addresses and listeners.
#[derive(Debug)]
pub(crate) struct GatewayState {
    pub name: ObjectName,
    pub generation: i64,
    /// The address listeners bind to; `None` binds every interface.
    pub bind_ip: Option<IpAddr>,
    /// The pool address this Gateway holds, if any.
    pub allocated: Option<IpAddr>,
    addresses: Vec<GatewayAddress>,
    accepted: Verdict,
    /// Set when some (not all) listeners are invalid: Accepted stays True with reason
    /// ListenersNotValid.
    some_listeners_invalid: Option<String>,
    programmed: Verdict,
    pub listeners: Vec<ListenerState>,
    /// ListenerSets whose parentRef is this Gateway, oldest first.
    pub listener_sets: Vec<crate::listener_sets::ListenerSetState>,
    /// Some frontend validation setting uses `AllowInsecureFallback`.
    insecure_frontend: bool,
    /// `spec.tls.backend.clientCertificateRef`, when set: the certificate, or why it does not
    /// resolve.
    backend_client_certificate: Option<Result<Arc<ir::TlsCertificate>, (Reason, String)>>,
}

/// One listener of a Gateway.
#[derive(Debug)]
pub(crate) struct ListenerState {
    pub name: String,
    pub port: u16,
    pub protocol: String,
    pub hostname: Option<HostnameMatch>,
    pub allowed: AllowedNamespaces,
    pub supported_kinds: Vec<RouteGroupKind>,
    accepted: Verdict,
    conflicted: Option<(Reason, String)>,
    resolved_refs: Verdict,
    pub attached_routes: i32,
    /// The certificate of an HTTPS listener or a TLS listener in Terminate mode.
    pub tls: Option<Arc<ir::TlsCertificate>>,
    /// A TLS listener in Passthrough mode.
    pub passthrough: bool,
    /// Frontend client certificate validation of an HTTPS listener.
    pub client_validation: Option<Arc<ir::ClientValidation>>,
}

/// Which namespaces may attach routes to a listener.
#[derive(Debug, Clone)]
pub(crate) enum AllowedNamespaces {
    Same,
    All,
    Selector(model::k8s::LabelSelector),
}

/// `Ok` or the reason and message of a negative condition.
pub(crate) type Verdict = Result<(), (Reason, String)>;

/// Route kinds each supported listener protocol accepts.
const HTTP_KINDS: [&str; 2] = ["HTTPRoute", "GRPCRoute"];

/// Resolves every Gateway whose class is one of ours, keyed by name.
pub(crate) fn resolve(
    snapshot: &Snapshot,
    classes: &BTreeSet<String>,
    options: &Options,
) -> BTreeMap<ObjectName, GatewayState> {
    let ours: Vec<_> = snapshot
        .gateways
        .iter()
        .filter(|(_, gateway)| classes.contains(&gateway.spec.gateway_class_name))
        .collect();
    // Earlier allocations are reserved first, so adding a Gateway never moves another.
    let mut taken: BTreeSet<IpAddr> = ours
        .iter()
        .filter_map(|(name, _)| options.allocations.get(*name).copied())
        .collect();
    ours.into_iter()
        .map(|(name, gateway)| {
            let state = resolve_one(snapshot, name, gateway, options, &mut taken);
            (name.clone(), state)
        })
        .collect()
}

fn resolve_one(
    snapshot: &Snapshot,
    name: &ObjectName,
    gateway: &Gateway,
    options: &Options,
    taken: &mut BTreeSet<IpAddr>,
) -> GatewayState {
    let mut listeners: Vec<_> = gateway
        .spec
        .listeners
        .iter()
        .map(|l| listener(snapshot, name, "Gateway", l))
        .collect();
    for listener in listeners.iter_mut().filter(|l| l.protocol == "HTTPS") {
        match crate::frontend_tls::resolve(snapshot, name, gateway, listener.port) {
            Ok(validation) => listener.client_validation = validation,
            Err(verdict) => {
                let message = verdict.1.clone();
                listener.resolved_refs = Err(verdict);
                if listener.accepted.is_ok() {
                    listener.accepted = Err((Reason::NoValidCACertificate, message));
                }
            }
        }
    }
    mark_conflicts(&mut listeners);
    let listener_sets = crate::listener_sets::resolve(snapshot, name, gateway, &listeners);
    let mut state = GatewayState {
        name: name.clone(),
        generation: gateway.metadata.generation.unwrap_or(1),
        bind_ip: None,
        allocated: None,
        addresses: Vec::new(),
        accepted: Ok(()),
        some_listeners_invalid: None,
        programmed: Ok(()),
        listeners,
        listener_sets,
        insecure_frontend: crate::frontend_tls::insecure(gateway),
        backend_client_certificate: crate::backend_tls::client_certificate(snapshot, name, gateway),
    };
    assign_addresses(&mut state, gateway, options, taken);
    let requested = gateway.spec.addresses.as_deref().unwrap_or_default();
    if options.load_balancer_addresses && requested.is_empty() && options.address_pool.is_none() {
        // Served by the pods behind the Gateway's provisioned LoadBalancer Service: the
        // address clients use is the load balancer's (empty until the cloud assigns it).
        state.addresses = crate::provision::load_balancer_addresses(snapshot, gateway);
    }
    let total = state.listeners.len();
    let invalid = state.listeners.iter().filter(|l| !l.is_valid()).count();
    if state.accepted.is_ok() && invalid > 0 {
        let message = format!("{invalid} of {total} listeners are invalid");
        if invalid == total {
            state.accepted = Err((Reason::ListenersNotValid, message));
        } else {
            state.some_listeners_invalid = Some(message);
        }
    }
    if let Err((_, message)) = &state.accepted
        && state.programmed.is_ok()
    {
        state.programmed = Err((Reason::Invalid, message.clone()));
    }
    state
}

/// Resolves one listener of a Gateway, or of a ListenerSet (`owner_kind`), whose
/// certificate references are checked as coming from that owner.
pub(crate) fn listener(
    snapshot: &Snapshot,
    gateway: &ObjectName,
    owner_kind: &str,
    spec: &GatewayListeners,
) -> ListenerState {
    let port = u16::try_from(spec.port).unwrap_or_default();
    let protocol = spec.protocol.clone();
    let passthrough = matches!(
        spec.tls.as_ref().and_then(|t| t.mode.clone()),
        Some(GatewayListenersTlsMode::Passthrough)
    );
    let accepted = match protocol.as_str() {
        "HTTP" | "HTTPS" | "TLS" | "TCP" => Ok(()),
        _ => Err((
            Reason::UnsupportedProtocol,
            format!("protocol {protocol} is not supported yet; supported: HTTP, HTTPS, TLS, TCP"),
        )),
    };
    let allowed_routes = spec.allowed_routes.as_ref();
    let namespaces = allowed_routes.and_then(|a| a.namespaces.as_ref());
    let allowed = match namespaces.and_then(|n| n.from.clone()) {
        None | Some(From::Same) => AllowedNamespaces::Same,
        Some(From::All) => AllowedNamespaces::All,
        Some(From::Selector) => AllowedNamespaces::Selector(model::k8s::LabelSelector {
            match_labels: namespaces
                .and_then(|n| n.selector.as_ref())
                .and_then(|s| s.match_labels.clone()),
            match_expressions: namespaces
                .and_then(|n| n.selector.as_ref())
                .and_then(|s| s.match_expressions.as_ref())
                .map(|exprs| {
                    exprs
                        .iter()
                        .map(|e| model::k8s::LabelSelectorRequirement {
                            key: e.key.clone(),
                            operator: e.operator.clone(),
                            values: e.values.clone(),
                        })
                        .collect()
                }),
        }),
    };
    let (supported_kinds, mut resolved_refs) = if accepted.is_ok() {
        route_kinds(spec)
    } else {
        (Vec::new(), Ok(()))
    };
    let mut tls = None;
    // HTTPS, and TLS in Terminate mode (its default), serve the listener's certificate.
    if protocol == "HTTPS" || (protocol == "TLS" && !passthrough) {
        let certificate = crate::tls::resolve(snapshot, gateway, owner_kind, spec);
        if resolved_refs.is_ok() {
            resolved_refs = crate::tls::verdict(&certificate);
        }
        tls = certificate.ok();
    }
    ListenerState {
        name: spec.name.clone(),
        port,
        protocol,
        hostname: spec.hostname.as_deref().map(HostnameMatch::parse),
        allowed,
        supported_kinds,
        accepted,
        conflicted: None,
        resolved_refs,
        attached_routes: 0,
        tls,
        passthrough,
        client_validation: None,
    }
}

/// `supportedKinds` and the ResolvedRefs verdict for `allowedRoutes.kinds`.
fn route_kinds(spec: &GatewayListeners) -> (Vec<RouteGroupKind>, Verdict) {
    let valid: &[&str] = match spec.protocol.as_str() {
        "HTTP" | "HTTPS" => &HTTP_KINDS,
        "TLS" => &["TLSRoute"],
        "TCP" => &["TCPRoute"],
        _ => &[],
    };
    let requested = spec.allowed_routes.as_ref().and_then(|a| a.kinds.as_ref());
    let Some(requested) = requested else {
        let kinds = valid.iter().map(|k| group_kind(k)).collect();
        return (kinds, Ok(()));
    };
    let mut kinds = Vec::new();
    let mut invalid = Vec::new();
    for kind in requested {
        let group = kind.group.as_deref().unwrap_or(GATEWAY_GROUP);
        if group == GATEWAY_GROUP && valid.contains(&kind.kind.as_str()) {
            kinds.push(group_kind(&kind.kind));
        } else {
            invalid.push(format!("{group}/{}", kind.kind));
        }
    }
    let verdict = if invalid.is_empty() {
        Ok(())
    } else {
        Err((
            Reason::InvalidRouteKinds,
            format!(
                "unsupported route kinds {}; supported: {}",
                invalid.join(", "),
                valid.join(", ")
            ),
        ))
    };
    (kinds, verdict)
}

fn group_kind(kind: &str) -> RouteGroupKind {
    RouteGroupKind {
        group: GATEWAY_GROUP.to_string(),
        kind: kind.to_string(),
    }
}

/// Listeners that share a port must speak compatible protocols ("ProtocolConflict"); ones
/// that also share a hostname conflict on it ("HostnameConflict"). Both sides are marked,
/// as no listener has precedence within one Gateway.
fn mark_conflicts(listeners: &mut [ListenerState]) {
    let mut by_port: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for (i, listener) in listeners.iter().enumerate() {
        by_port.entry(listener.port).or_default().push(i);
    }
    for indexes in by_port.values() {
        let protocols: BTreeSet<_> = indexes
            .iter()
            .map(|&i| listeners[i].protocol.clone())
            .collect();
        let compatible = protocols.len() == 1 || protocols.iter().all(|p| compatible(p, "TLS"));
        for &i in indexes {
            if !compatible {
                listeners[i].conflicted = Some((
                    Reason::ProtocolConflict,
                    format!(
                        "port {} is used with protocols {:?}",
                        listeners[i].port, protocols
                    ),
                ));
                continue;
            }
            let duplicate = indexes.iter().any(|&j| {
                j != i
                    && listeners[j].hostname == listeners[i].hostname
                    && listeners[j].protocol == listeners[i].protocol
            });
            if duplicate {
                listeners[i].conflicted = Some((
                    Reason::HostnameConflict,
                    format!(
                        "another listener on port {} has the same hostname",
                        listeners[i].port
                    ),
                ));
            }
        }
    }
}

/// Whether two listener protocols can share a port: equal, or both TLS-based (HTTPS and TLS
/// are told apart by SNI).
pub(crate) fn compatible(a: &str, b: &str) -> bool {
    a == b || (matches!(a, "HTTPS" | "TLS") && matches!(b, "HTTPS" | "TLS"))
}

/// Decides where the Gateway listens and what `status.addresses` says.
fn assign_addresses(
    state: &mut GatewayState,
    gateway: &Gateway,
    options: &Options,
    taken: &mut BTreeSet<IpAddr>,
) {
    let requested = gateway.spec.addresses.as_deref().unwrap_or_default();
    // An IPAddress entry without a value asks the implementation to pick one ("When a value
    // is unspecified, an implementation SHOULD automatically assign an address matching the
    // requested type if possible"): it is served from the pool below.
    let wants_pool = requested
        .iter()
        .any(|a| a.r#type.as_deref().unwrap_or("IPAddress") == "IPAddress" && a.value.is_none());
    let explicit = requested.iter().any(|a| a.value.is_some());
    if explicit || (!requested.is_empty() && !wants_pool) {
        let mut ips = Vec::new();
        for address in requested {
            let kind = address.r#type.as_deref().unwrap_or("IPAddress");
            let ip = address
                .value
                .as_deref()
                .and_then(|v| v.parse::<IpAddr>().ok());
            match (kind, ip) {
                ("IPAddress", Some(ip)) => ips.push(ip),
                ("IPAddress", None) if address.value.is_none() => {
                    state.programmed = Err((
                        Reason::AddressNotAssigned,
                        "mixing IPAddress entries with and without values is not supported".into(),
                    ));
                }
                ("IPAddress", None) => {
                    state.programmed = Err((
                        Reason::AddressNotAssigned,
                        "an IPAddress entry must hold an IP address".into(),
                    ));
                }
                (other, _) => {
                    state.accepted = Err((
                        Reason::UnsupportedAddress,
                        format!("address type {other} is not supported; supported: IPAddress"),
                    ));
                }
            }
        }
        if let Some(bad) = ips
            .iter()
            .find(|ip| options.unusable_addresses.contains(ip))
        {
            state.programmed = Err((
                Reason::AddressNotUsable,
                format!("address {bad} cannot be bound on this host"),
            ));
        }
        if ips.len() > 1 && state.programmed.is_ok() {
            state.programmed = Err((
                Reason::AddressNotUsable,
                "standalone mode binds one address per Gateway; give a single IPAddress".into(),
            ));
        }
        state.bind_ip = ips.first().copied();
        state.addresses = ips
            .iter()
            .filter(|ip| !options.unusable_addresses.contains(ip))
            .map(|ip| ip_address(*ip))
            .collect();
        return;
    }
    let Some(pool) = options.address_pool else {
        if wants_pool {
            state.programmed = Err((
                Reason::AddressNotAssigned,
                "no --address-pool to assign an address from".into(),
            ));
        }
        return;
    };
    let previous = options
        .allocations
        .get(&state.name)
        .copied()
        .filter(|ip| pool.contains(ip));
    let ip = previous.or_else(|| {
        pool.hosts()
            .find(|ip| !taken.contains(ip) && !options.unusable_addresses.contains(ip))
    });
    match ip {
        Some(ip) => {
            taken.insert(ip);
            state.allocated = Some(ip);
            state.bind_ip = Some(ip);
            if options.unusable_addresses.contains(&ip) {
                state.programmed = Err((
                    Reason::AddressNotUsable,
                    format!("address {ip} cannot be bound"),
                ));
            } else {
                state.addresses = vec![ip_address(ip)];
            }
        }
        None => {
            state.programmed = Err((
                Reason::AddressNotAssigned,
                format!("address pool {pool} is exhausted"),
            ));
        }
    }
}

fn ip_address(ip: IpAddr) -> GatewayAddress {
    GatewayAddress {
        kind: "IPAddress".to_string(),
        value: ip.to_string(),
    }
}

// === impl GatewayState ===

impl GatewayState {
    pub(crate) fn key(&self) -> ResourceKey {
        ResourceKey::new(Kind::Gateway, &self.name.namespace, &self.name.name)
    }

    /// Whether the Gateway's listeners are handed to the data plane.
    pub(crate) fn programmed(&self) -> bool {
        self.accepted.is_ok() && self.programmed.is_ok()
    }

    pub(crate) fn status(&self) -> ResourceStatus {
        let generation = self.generation;
        let accepted = match (&self.accepted, &self.some_listeners_invalid) {
            (Err((reason, message)), _) => {
                Condition::new(ConditionType::Accepted, false, *reason, message, generation)
            }
            (Ok(()), Some(message)) => Condition::new(
                ConditionType::Accepted,
                true,
                Reason::ListenersNotValid,
                message,
                generation,
            ),
            (Ok(()), None) => Condition::new(
                ConditionType::Accepted,
                true,
                Reason::Accepted,
                "accepted",
                generation,
            ),
        };
        let programmed = match &self.programmed {
            Err((reason, message)) => Condition::new(
                ConditionType::Programmed,
                false,
                *reason,
                message,
                generation,
            ),
            Ok(()) => Condition::new(
                ConditionType::Programmed,
                true,
                Reason::Programmed,
                "programmed",
                generation,
            ),
        };
        let mut conditions = vec![accepted, programmed];
        // Gateway-level ResolvedRefs is about the references the Gateway holds outside its
        // listeners; only `spec.tls.backend.clientCertificateRef` is one, so the condition
        // appears when that is set.
        match &self.backend_client_certificate {
            None => {}
            Some(Ok(_)) => conditions.push(Condition::new(
                ConditionType::ResolvedRefs,
                true,
                Reason::ResolvedRefs,
                "resolved",
                generation,
            )),
            Some(Err((reason, message))) => conditions.push(Condition::new(
                ConditionType::ResolvedRefs,
                false,
                *reason,
                message,
                generation,
            )),
        }
        if self.insecure_frontend {
            conditions.push(Condition::new(
                ConditionType::InsecureFrontendValidationMode,
                true,
                Reason::ConfigurationChanged,
                "frontend client validation allows clients without a valid certificate",
                generation,
            ));
        }
        ResourceStatus::Gateway {
            addresses: self.addresses.clone(),
            conditions,
            listeners: self
                .listeners
                .iter()
                .map(|l| l.status(generation, self.programmed()))
                .collect(),
            attached_listener_sets: i32::try_from(
                self.listener_sets
                    .iter()
                    .filter(|s| s.is_accepted())
                    .count(),
            )
            .unwrap_or(i32::MAX),
        }
    }
}

// === impl ListenerState ===

impl GatewayState {
    /// The client certificate presented to TLS backends, when one is set and resolves.
    pub(crate) fn backend_client_certificate(&self) -> Option<Arc<ir::TlsCertificate>> {
        self.backend_client_certificate
            .as_ref()
            .and_then(|c| c.as_ref().ok())
            .cloned()
    }
}

impl ListenerState {
    /// Valid listeners are accepted and conflict-free.
    pub(crate) fn is_valid(&self) -> bool {
        self.accepted.is_ok() && self.conflicted.is_none()
    }

    /// Whether routes can attach (a listener with invalid route kinds still serves the
    /// valid ones).
    pub(crate) fn is_serving(&self) -> bool {
        let needs_certificate =
            self.protocol == "HTTPS" || (self.protocol == "TLS" && !self.passthrough);
        self.is_valid() && (!needs_certificate || self.tls.is_some())
    }

    /// Marks the listener as losing a conflict to an earlier one.
    pub(crate) fn set_conflict(&mut self, conflict: (Reason, String)) {
        self.conflicted = Some(conflict);
    }

    pub(crate) fn scheme(&self) -> RedirectScheme {
        if self.protocol == "HTTPS" {
            RedirectScheme::Https
        } else {
            RedirectScheme::Http
        }
    }

    pub(crate) fn status(&self, generation: i64, gateway_programmed: bool) -> ListenerStatus {
        let condition = |kind, verdict: &Verdict, ok_reason, ok_message: &'static str| match verdict
        {
            Ok(()) => Condition::new(kind, true, ok_reason, ok_message, generation),
            Err((reason, message)) => Condition::new(kind, false, *reason, message, generation),
        };
        let conflicted = match &self.conflicted {
            Some((reason, message)) => Condition::new(
                ConditionType::Conflicted,
                true,
                *reason,
                message,
                generation,
            ),
            None => Condition::new(
                ConditionType::Conflicted,
                false,
                Reason::NoConflicts,
                "no conflicts",
                generation,
            ),
        };
        let programmed: Verdict = if let Some(conflict) = &self.conflicted {
            Err(conflict.clone())
        } else if !self.is_valid() {
            Err((Reason::Invalid, "listener is invalid".into()))
        } else if !self.is_serving() {
            Err((Reason::Invalid, "listener has no usable certificate".into()))
        } else if !gateway_programmed {
            Err((Reason::Invalid, "the Gateway is not programmed".into()))
        } else {
            Ok(())
        };
        let accepted = match (&self.accepted, &self.conflicted) {
            (Ok(()), Some((reason, message))) => Err((*reason, message.clone())),
            (other, _) => other.clone(),
        };
        ListenerStatus {
            name: self.name.clone(),
            supported_kinds: self.supported_kinds.clone(),
            attached_routes: self.attached_routes,
            conditions: vec![
                condition(
                    ConditionType::Accepted,
                    &accepted,
                    Reason::Accepted,
                    "accepted",
                ),
                conflicted,
                condition(
                    ConditionType::ResolvedRefs,
                    &self.resolved_refs,
                    Reason::ResolvedRefs,
                    "resolved",
                ),
                condition(
                    ConditionType::Programmed,
                    &programmed,
                    Reason::Programmed,
                    "programmed",
                ),
            ],
        }
    }
}
