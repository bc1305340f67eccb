//! The checks a Kubernetes API server would apply before accepting an object: the CRD's
//! OpenAPI constraints (patterns, lengths, ranges) and the CEL rules that matter for routing.
//! Enum values are already enforced by the typed decoding. Each check cites the rule it
//! mirrors so that a rejected manifest here is one a cluster would reject too.

use std::collections::HashSet;
use std::sync::LazyLock;

use regex::Regex;

use crate::{Object, gw};

/// Errors found in one document: field path and message.
#[derive(Debug, Default)]
pub(crate) struct FieldErrors(Vec<(String, String)>);

impl FieldErrors {
    pub(crate) fn push(&mut self, path: &str, message: &str) {
        self.0.push((path.to_string(), message.to_string()));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Replaces the message of every error whose path `applies` to with `message`, for
    /// mistakes common enough to deserve more than the generic one.
    pub(crate) fn explain(&mut self, applies: impl Fn(&str, &str) -> bool, message: &str) {
        for (path, text) in &mut self.0 {
            if applies(path, text) {
                *text = message.to_string();
            }
        }
    }
}

impl IntoIterator for FieldErrors {
    type Item = (String, String);
    type IntoIter = std::vec::IntoIter<(String, String)>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// RFC 1123 subdomain: the `metadata.name` rule of most kinds.
static DNS_SUBDOMAIN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
        .expect("static pattern compiles")
});

/// Gateway API `Hostname` (wildcard allowed as the first label).
static HOSTNAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
        .expect("static pattern compiles")
});

/// Gateway API `PreciseHostname` (no wildcard).
static PRECISE_HOSTNAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
        .expect("static pattern compiles")
});

/// Gateway API `SectionName` (listener names).
static SECTION_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$").expect("static pattern compiles")
});

/// Gateway API `HTTPHeaderName`.
static HEADER_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$").expect("static pattern compiles")
});

/// Gateway API `Duration` (GEP-2257).
static DURATION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^([0-9]{1,5}(h|m|s|ms)){1,4}$").expect("static pattern compiles")
});

/// Gateway API `ProtocolType`.
static PROTOCOL: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^[a-zA-Z0-9]([-a-zA-Z0-9]*[a-zA-Z0-9])?$|[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/[A-Za-z0-9]+$")
        .expect("static pattern compiles")
});

/// Validates an object after decoding.
pub(crate) fn object(object: &Object, errors: &mut FieldErrors) {
    let meta = object.meta();
    match meta.name.as_deref() {
        None | Some("") => errors.push("metadata.name", "required field is missing"),
        Some(name) if name.len() > 253 || !DNS_SUBDOMAIN.is_match(name) => errors.push(
            "metadata.name",
            "must be a lowercase RFC 1123 subdomain ([a-z0-9] and '-', '.'; at most 253 characters)",
        ),
        Some(_) => {}
    }
    match object {
        Object::GatewayClass(class) => {
            let controller = &class.spec.controller_name;
            if controller.is_empty() || !controller.contains('/') {
                errors.push(
                    "spec.controllerName",
                    "must be a domain-prefixed path such as example.com/controller",
                );
            }
        }
        Object::Gateway(gateway) => validate_gateway(&gateway.spec, errors),
        Object::HttpRoute(route) => validate_http_route(&route.spec, errors),
        Object::GrpcRoute(route) => validate_grpc_route(&route.spec, errors),
        Object::ListenerSet(set) => {
            // The listeners have the Gateway's listener shape; check them with the same rules.
            let listeners: Vec<gw::gateways::GatewayListeners> =
                serde_json::to_value(&set.spec.listeners)
                    .and_then(serde_json::from_value)
                    .unwrap_or_default();
            validate_listeners(&listeners, errors);
        }
        Object::TlsRoute(route) => {
            for (i, hostname) in route.spec.hostnames.iter().enumerate() {
                check_hostname(hostname, &format!("spec.hostnames[{i}]"), errors);
            }
            if route.spec.hostnames.len() > 16 {
                errors.push("spec.hostnames", "must have at most 16 hostnames");
            }
            check_rules_backends(
                route.spec.rules.iter().map(|r| {
                    r.backend_refs
                        .iter()
                        .map(|b| (b.group.as_deref(), b.kind.as_deref(), b.port, b.weight))
                        .collect()
                }),
                errors,
            );
        }
        Object::TcpRoute(route) => check_rules_backends(
            route.spec.rules.iter().map(|r| {
                r.backend_refs
                    .iter()
                    .map(|b| (b.group.as_deref(), b.kind.as_deref(), b.port, b.weight))
                    .collect()
            }),
            errors,
        ),
        Object::ReferenceGrant(grant) => {
            if grant.spec.from.is_empty() || grant.spec.from.len() > 16 {
                errors.push("spec.from", "must have between 1 and 16 entries");
            }
            if grant.spec.to.is_empty() || grant.spec.to.len() > 16 {
                errors.push("spec.to", "must have between 1 and 16 entries");
            }
        }
        Object::EgressNetwork(network) => validate_egress_network(&network.spec, errors),
        Object::BackendTlsPolicy(policy) => validate_backend_tls_policy(&policy.spec, errors),
        Object::AuthenticationPolicy(policy) => policies::authentication(&policy.spec, errors),
        Object::RateLimitPolicy(policy) => policies::rate_limit(&policy.spec, errors),
        Object::HealthCheckPolicy(policy) => policies::health_check(&policy.spec, errors),
        Object::Namespace(_)
        | Object::Service(_)
        | Object::EndpointSlice(_)
        | Object::Secret(_)
        | Object::ConfigMap(_) => {}
    }
}

/// `spec.networks` of an EgressNetwork: when present, at least one network; every `cidr` and
/// `except` a CIDR or an address; every `except` inside its `cidr`.
fn validate_egress_network(spec: &crate::egress::EgressNetworkSpec, errors: &mut FieldErrors) {
    use crate::egress::parse_network;
    let Some(networks) = &spec.networks else {
        return;
    };
    if networks.is_empty() {
        errors.push(
            "spec.networks",
            "must list at least one network when present; omit it to cover every address outside the cluster networks",
        );
    }
    for (i, network) in networks.iter().enumerate() {
        let path = format!("spec.networks[{i}]");
        let Some(cidr) = parse_network(&network.cidr) else {
            errors.push(
                &format!("{path}.cidr"),
                "must be a CIDR such as 203.0.113.0/24 or 2001:db8::/32, or a single address",
            );
            continue;
        };
        for (e, except) in network.except.iter().flatten().enumerate() {
            let epath = format!("{path}.except[{e}]");
            match parse_network(except) {
                None => errors.push(&epath, "must be a CIDR or a single address"),
                Some(except) if !cidr.contains(&except) => errors.push(
                    &epath,
                    &format!("{except} is not inside the network's cidr {cidr}"),
                ),
                Some(_) => {}
            }
        }
    }
}

/// The BackendTLSPolicy CRD's schema limits and CEL rules (Gateway API v1.5.1).
fn validate_backend_tls_policy(
    spec: &gw::backendtlspolicies::BackendTlsPolicySpec,
    errors: &mut FieldErrors,
) {
    use gw::backendtlspolicies::BackendTlsPolicyValidationSubjectAltNamesType as SanType;
    if spec.target_refs.is_empty() || spec.target_refs.len() > 16 {
        errors.push("spec.targetRefs", "must have between 1 and 16 entries");
    }
    // CEL rules: "sectionName must be specified when targetRefs includes 2 or more references
    // to the same target" and "sectionName must be unique when targetRefs includes 2 or more
    // references to the same target".
    for (i, target) in spec.target_refs.iter().enumerate() {
        let same: Vec<_> = spec
            .target_refs
            .iter()
            .filter(|t| t.group == target.group && t.kind == target.kind && t.name == target.name)
            .collect();
        if same.len() < 2 {
            continue;
        }
        let path = format!("spec.targetRefs[{i}].sectionName");
        match &target.section_name {
            None => errors.push(
                &path,
                "sectionName must be specified when targetRefs includes 2 or more references to the same target",
            ),
            Some(section) if same.iter().filter(|t| t.section_name.as_ref() == Some(section)).count() > 1 => {
                errors.push(
                    &path,
                    "sectionName must be unique when targetRefs includes 2 or more references to the same target",
                )
            }
            Some(_) => {}
        }
    }
    let validation = &spec.validation;
    let hostname = &validation.hostname;
    if hostname.is_empty() || hostname.len() > 253 || !PRECISE_HOSTNAME.is_match(hostname) {
        errors.push(
            "spec.validation.hostname",
            "must be a lowercase DNS name without wildcard (e.g. backend.example.com)",
        );
    }
    let refs = validation
        .ca_certificate_refs
        .as_deref()
        .unwrap_or_default();
    let well_known = validation
        .well_known_ca_certificates
        .as_deref()
        .is_some_and(|w| !w.is_empty());
    if refs.len() > 8 {
        errors.push(
            "spec.validation.caCertificateRefs",
            "must have at most 8 entries",
        );
    }
    match (refs.is_empty(), well_known) {
        (false, true) => errors.push(
            "spec.validation",
            "must not contain both CACertificateRefs and WellKnownCACertificates",
        ),
        (true, false) => errors.push(
            "spec.validation",
            "must specify either CACertificateRefs or WellKnownCACertificates",
        ),
        _ => {}
    }
    let names = validation.subject_alt_names.as_deref().unwrap_or_default();
    if names.len() > 5 {
        errors.push(
            "spec.validation.subjectAltNames",
            "must have at most 5 entries",
        );
    }
    for (i, name) in names.iter().enumerate() {
        let path = format!("spec.validation.subjectAltNames[{i}]");
        let has_hostname = name.hostname.as_deref().is_some_and(|h| !h.is_empty());
        let has_uri = name.uri.as_deref().is_some_and(|u| !u.is_empty());
        match name.r#type {
            SanType::Hostname if !has_hostname || has_uri => errors.push(
                &path,
                "SubjectAltName element must contain Hostname, and not URI, if Type is set to Hostname",
            ),
            SanType::Uri if !has_uri || has_hostname => errors.push(
                &path,
                "SubjectAltName element must contain URI, and not Hostname, if Type is set to URI",
            ),
            _ => {}
        }
        if let Some(uri) = name.uri.as_deref().filter(|_| has_uri)
            && !uri.split_once(':').is_some_and(|(scheme, rest)| {
                !scheme.is_empty()
                    && scheme
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                    && !rest.is_empty()
            })
        {
            errors.push(
                &format!("{path}.uri"),
                "must be an absolute URI with a scheme and a scheme-specific part",
            );
        }
    }
}

fn validate_gateway(spec: &gw::gateways::GatewaySpec, errors: &mut FieldErrors) {
    if spec.gateway_class_name.is_empty() {
        errors.push("spec.gatewayClassName", "required field is missing");
    }
    validate_listeners(&spec.listeners, errors);
    for (i, address) in spec.addresses.iter().flatten().enumerate() {
        let path = format!("spec.addresses[{i}]");
        let kind = address.r#type.as_deref().unwrap_or("IPAddress");
        if let Some(value) = &address.value {
            if kind == "IPAddress" && value.parse::<std::net::IpAddr>().is_err() {
                errors.push(
                    &format!("{path}.value"),
                    "IPAddress values must be an IP address",
                );
            }
            if kind == "Hostname" && !PRECISE_HOSTNAME.is_match(value) {
                errors.push(
                    &format!("{path}.value"),
                    "Hostname values must be a hostname",
                );
            }
        }
    }
}

fn validate_listeners(listeners: &[gw::gateways::GatewayListeners], errors: &mut FieldErrors) {
    if listeners.is_empty() || listeners.len() > 64 {
        errors.push("spec.listeners", "must have between 1 and 64 listeners");
    }
    let mut names = HashSet::new();
    let mut combinations = HashSet::new();
    for (i, listener) in listeners.iter().enumerate() {
        let path = format!("spec.listeners[{i}]");
        if !SECTION_NAME.is_match(&listener.name) || listener.name.len() > 253 {
            errors.push(
                &format!("{path}.name"),
                "must match ^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
            );
        }
        if !names.insert(listener.name.as_str()) {
            errors.push(
                &format!("{path}.name"),
                "Listener name must be unique within the Gateway",
            );
        }
        if !(1..=65535).contains(&listener.port) {
            errors.push(&format!("{path}.port"), "must be between 1 and 65535");
        }
        if !PROTOCOL.is_match(&listener.protocol) {
            errors.push(
                &format!("{path}.protocol"),
                "must be HTTP, HTTPS, TLS, TCP, UDP or a domain-prefixed protocol",
            );
        }
        if let Some(hostname) = &listener.hostname {
            check_hostname(hostname, &format!("{path}.hostname"), errors);
            if matches!(listener.protocol.as_str(), "TCP" | "UDP") {
                errors.push(
                    &format!("{path}.hostname"),
                    "hostname must not be specified for protocols ['TCP', 'UDP']",
                );
            }
        }
        if listener.tls.is_some() && matches!(listener.protocol.as_str(), "HTTP" | "TCP" | "UDP") {
            errors.push(
                &format!("{path}.tls"),
                "tls must not be specified for protocols ['HTTP', 'TCP', 'UDP']",
            );
        }
        if listener.tls.is_none() && listener.protocol == "HTTPS" {
            errors.push(
                &format!("{path}.tls"),
                "tls must be specified for protocols ['HTTPS']",
            );
        }
        let key = (
            listener.port,
            listener.protocol.as_str(),
            listener.hostname.as_deref(),
        );
        if !combinations.insert(key) {
            errors.push(
                &path,
                "Combination of port, protocol and hostname must be unique for each listener",
            );
        }
    }
}

/// `HTTPRouteRule.retry`: the CRD's limits (codes 400 to 599, attempts not negative, backoff
/// a Gateway API duration).
fn validate_retry(
    retry: &gw::httproutes::HttpRouteRulesRetry,
    path: &str,
    errors: &mut FieldErrors,
) {
    if retry.attempts.is_some_and(|a| a < 0) {
        errors.push(&format!("{path}.attempts"), "must be 0 or more");
    }
    for (i, code) in retry.codes.iter().flatten().enumerate() {
        if !(400..=599).contains(code) {
            errors.push(
                &format!("{path}.codes[{i}]"),
                "must be an HTTP status from 400 to 599",
            );
        }
    }
    if let Some(backoff) = &retry.backoff
        && crate::parse_duration(backoff).is_none()
    {
        errors.push(
            &format!("{path}.backoff"),
            "must be a Gateway API duration such as 100ms, 1s or 1m (digits and h, m, s, ms units)",
        );
    }
}

fn validate_http_route(spec: &gw::httproutes::HttpRouteSpec, errors: &mut FieldErrors) {
    for (i, hostname) in spec.hostnames.iter().flatten().enumerate() {
        check_hostname(hostname, &format!("spec.hostnames[{i}]"), errors);
    }
    if spec
        .parent_refs
        .as_ref()
        .is_some_and(|refs| refs.len() > 32)
    {
        errors.push("spec.parentRefs", "must have at most 32 entries");
    }
    let rules = spec.rules.as_deref().unwrap_or_default();
    if rules.len() > 16 {
        errors.push("spec.rules", "must have at most 16 rules");
    }
    let mut rule_names = HashSet::new();
    for (r, rule) in rules.iter().enumerate() {
        let path = format!("spec.rules[{r}]");
        if let Some(retry) = &rule.retry {
            validate_retry(retry, &format!("{path}.retry"), errors);
        }
        if let Some(name) = &rule.name
            && !rule_names.insert(name.as_str())
        {
            errors.push(
                &format!("{path}.name"),
                "Rule name must be unique within the route",
            );
        }
        let matches = rule.matches.as_deref().unwrap_or_default();
        if matches.len() > 64 {
            errors.push(&format!("{path}.matches"), "must have at most 64 matches");
        }
        for (m, matcher) in matches.iter().enumerate() {
            validate_match(matcher, &format!("{path}.matches[{m}]"), errors);
        }
        let filters = rule.filters.as_deref().unwrap_or_default();
        crate::validate::filters::rule_filters(
            filters,
            matches,
            &format!("{path}.filters"),
            errors,
        );
        for (b, backend) in rule.backend_refs.iter().flatten().enumerate() {
            let bpath = format!("{path}.backendRefs[{b}]");
            if backend
                .weight
                .is_some_and(|w| !(0..=1_000_000).contains(&w))
            {
                errors.push(&format!("{bpath}.weight"), "must be between 0 and 1000000");
            }
            if backend.port.is_some_and(|p| !(1..=65535).contains(&p)) {
                errors.push(&format!("{bpath}.port"), "must be between 1 and 65535");
            }
            let is_service = backend.kind.as_deref().unwrap_or("Service") == "Service"
                && backend.group.as_deref().unwrap_or_default().is_empty();
            if is_service && backend.port.is_none() {
                errors.push(
                    &format!("{bpath}.port"),
                    "Must have port for Service reference",
                );
            }
            let filters = backend.filters.as_deref().unwrap_or_default();
            crate::validate::filters::backend_filters(filters, &format!("{bpath}.filters"), errors);
        }
        if let Some(timeouts) = &rule.timeouts {
            check_timeouts(timeouts, &format!("{path}.timeouts"), errors);
        }
    }
}

/// gRPC service names (`GRPCMethodMatch.service`, type Exact).
static GRPC_SERVICE: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^(?i)\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$").expect("static pattern compiles")
});

/// gRPC method names (`GRPCMethodMatch.method`, type Exact).
static GRPC_METHOD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^[A-Za-z_][A-Za-z_0-9]*$").expect("static pattern compiles"));

fn validate_grpc_route(spec: &gw::grpcroutes::GrpcRouteSpec, errors: &mut FieldErrors) {
    use gw::grpcroutes::GrpcRouteRulesMatchesMethodType as MethodType;
    for (i, hostname) in spec.hostnames.iter().flatten().enumerate() {
        check_hostname(hostname, &format!("spec.hostnames[{i}]"), errors);
    }
    let rules = spec.rules.as_deref().unwrap_or_default();
    if rules.len() > 16 {
        errors.push("spec.rules", "must have at most 16 rules");
    }
    for (r, rule) in rules.iter().enumerate() {
        let path = format!("spec.rules[{r}]");
        for (m, matcher) in rule.matches.iter().flatten().enumerate() {
            let mpath = format!("{path}.matches[{m}]");
            if let Some(method) = &matcher.method {
                let exact = matches!(method.r#type, None | Some(MethodType::Exact));
                if method.service.is_none() && method.method.is_none() {
                    errors.push(
                        &format!("{mpath}.method"),
                        "One or both of 'service' or 'method' must be specified",
                    );
                }
                if exact {
                    if let Some(service) = &method.service
                        && !GRPC_SERVICE.is_match(service)
                    {
                        errors.push(
                            &format!("{mpath}.method.service"),
                            "must be a fully qualified gRPC service name such as example.v1.Echo",
                        );
                    }
                    if let Some(name) = &method.method
                        && !GRPC_METHOD.is_match(name)
                    {
                        errors.push(
                            &format!("{mpath}.method.method"),
                            "must be a gRPC method name such as Echo",
                        );
                    }
                }
            }
            for (h, header) in matcher.headers.iter().flatten().enumerate() {
                if !HEADER_NAME.is_match(&header.name) {
                    errors.push(
                        &format!("{mpath}.headers[{h}].name"),
                        "must be a valid HTTP header name",
                    );
                }
            }
        }
        let filters = rule.filters.as_deref().unwrap_or_default();
        crate::validate::filters::rule_filters(filters, &[], &format!("{path}.filters"), errors);
        for (b, backend) in rule.backend_refs.iter().flatten().enumerate() {
            let bpath = format!("{path}.backendRefs[{b}]");
            if backend
                .weight
                .is_some_and(|w| !(0..=1_000_000).contains(&w))
            {
                errors.push(&format!("{bpath}.weight"), "must be between 0 and 1000000");
            }
            let is_service = backend.kind.as_deref().unwrap_or("Service") == "Service"
                && backend.group.as_deref().unwrap_or_default().is_empty();
            if is_service && backend.port.is_none() {
                errors.push(
                    &format!("{bpath}.port"),
                    "Must have port for Service reference",
                );
            }
            let filters = backend.filters.as_deref().unwrap_or_default();
            crate::validate::filters::backend_filters(filters, &format!("{bpath}.filters"), errors);
        }
    }
}

/// Rules of TLSRoute and TCPRoute: 1 to 16 rules, each with 1 to 16 backendRefs, weights
/// and ports in range, and a port for every Service reference.
fn check_rules_backends<'a>(
    rules: impl ExactSizeIterator<
        Item = Vec<(Option<&'a str>, Option<&'a str>, Option<i32>, Option<i32>)>,
    >,
    errors: &mut FieldErrors,
) {
    if rules.len() == 0 || rules.len() > 16 {
        errors.push("spec.rules", "must have between 1 and 16 rules");
    }
    for (r, backends) in rules.enumerate() {
        if backends.is_empty() || backends.len() > 16 {
            errors.push(
                &format!("spec.rules[{r}].backendRefs"),
                "must have between 1 and 16 backendRefs",
            );
        }
        for (b, (group, kind, port, weight)) in backends.into_iter().enumerate() {
            let path = format!("spec.rules[{r}].backendRefs[{b}]");
            if weight.is_some_and(|w| !(0..=1_000_000).contains(&w)) {
                errors.push(&format!("{path}.weight"), "must be between 0 and 1000000");
            }
            if port.is_some_and(|p| !(1..=65535).contains(&p)) {
                errors.push(&format!("{path}.port"), "must be between 1 and 65535");
            }
            let is_service =
                kind.unwrap_or("Service") == "Service" && group.unwrap_or_default().is_empty();
            if is_service && port.is_none() {
                errors.push(
                    &format!("{path}.port"),
                    "Must have port for Service reference",
                );
            }
        }
    }
}

fn validate_match(
    matcher: &gw::httproutes::HttpRouteRulesMatches,
    path: &str,
    errors: &mut FieldErrors,
) {
    use gw::httproutes::HttpRouteRulesMatchesPathType as PathType;
    if let Some(p) = &matcher.path {
        let value = p.value.as_deref().unwrap_or("/");
        let kind = p.r#type.clone().unwrap_or(PathType::PathPrefix);
        if !matches!(kind, PathType::RegularExpression) {
            if !value.starts_with('/') {
                errors.push(&format!("{path}.path.value"), "value must be an absolute path and start with '/' when type one of ['Exact', 'PathPrefix']");
            }
            let bad = ["//", "/./", "/../", "%2f", "%2F", "#"];
            if bad.iter().any(|b| value.contains(b))
                || value.ends_with("/..")
                || value.ends_with("/.")
            {
                errors.push(
                    &format!("{path}.path.value"),
                    "must not contain '//', '/./', '/../', '%2f', '%2F' or '#', nor end with '/..' or '/.'",
                );
            }
        }
        if value.len() > 1024 {
            errors.push(
                &format!("{path}.path.value"),
                "must be at most 1024 characters",
            );
        }
    }
    // The CRD keys both lists by name, case-sensitively; case-insensitive duplicates are
    // allowed and translate keeps the first, as the spec says.
    check_names(
        matcher.headers.iter().flatten().map(|h| h.name.as_str()),
        &format!("{path}.headers"),
        "HTTP header name",
        errors,
    );
    check_names(
        matcher
            .query_params
            .iter()
            .flatten()
            .map(|q| q.name.as_str()),
        &format!("{path}.queryParams"),
        "query parameter name",
        errors,
    );
}

/// Names in a match list (headers, query parameters): each valid and unique.
fn check_names<'a>(
    names: impl Iterator<Item = &'a str>,
    path: &str,
    what: &str,
    errors: &mut FieldErrors,
) {
    let mut seen = HashSet::new();
    for (i, name) in names.enumerate() {
        if !HEADER_NAME.is_match(name) {
            errors.push(
                &format!("{path}[{i}].name"),
                &format!("must be a valid {what}"),
            );
        }
        if !seen.insert(name) {
            errors.push(
                &format!("{path}[{i}].name"),
                &format!("{what}s must be unique within a match"),
            );
        }
    }
}

fn check_timeouts(
    timeouts: &gw::httproutes::HttpRouteRulesTimeouts,
    path: &str,
    errors: &mut FieldErrors,
) {
    for (field, value) in [
        ("request", &timeouts.request),
        ("backendRequest", &timeouts.backend_request),
    ] {
        if let Some(value) = value
            && !DURATION.is_match(value)
        {
            errors.push(
                &format!("{path}.{field}"),
                "must be a duration like 10s, 500ms or 1h30m (units h, m, s, ms; at most 4 parts)",
            );
        }
    }
    if let (Some(request), Some(backend)) = (
        timeouts.request.as_deref().and_then(parse_duration),
        timeouts.backend_request.as_deref().and_then(parse_duration),
    ) && !request.is_zero()
        && backend > request
    {
        errors.push(
            &format!("{path}.backendRequest"),
            "backendRequest timeout cannot be longer than request timeout",
        );
    }
}

/// Parses a Gateway API duration (`1h2m3s4ms`); `None` if it does not match the pattern.
pub fn parse_duration(value: &str) -> Option<std::time::Duration> {
    if !DURATION.is_match(value) {
        return None;
    }
    let mut total = std::time::Duration::ZERO;
    let mut digits = String::new();
    let mut chars = value.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let amount: u64 = digits.parse().ok()?;
        digits.clear();
        total += match c {
            'h' => std::time::Duration::from_secs(amount * 3600),
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                std::time::Duration::from_millis(amount)
            }
            'm' => std::time::Duration::from_secs(amount * 60),
            's' => std::time::Duration::from_secs(amount),
            _ => return None,
        };
    }
    Some(total)
}

pub(crate) fn check_hostname(hostname: &str, path: &str, errors: &mut FieldErrors) {
    if hostname.len() > 253 || !HOSTNAME.is_match(hostname) {
        errors.push(
            path,
            "must be a lowercase DNS name, optionally starting with '*.' (e.g. foo.example.com or *.example.com); IP addresses are not allowed",
        );
    }
}

pub(crate) mod filters;
mod policies;

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_follow_gep_2257() {
        assert_eq!(
            parse_duration("1h2m3s4ms"),
            Some(Duration::from_millis(3_723_004))
        );
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("0s"), Some(Duration::ZERO));
        assert_eq!(parse_duration("1.5s"), None);
        assert_eq!(parse_duration("10"), None);
    }
}
