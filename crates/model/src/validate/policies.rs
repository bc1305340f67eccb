//! What the schemas of our policy kinds cannot say: which targets exist as kinds, names that
//! must be header names, and fields that go together.

use super::{FieldErrors, HEADER_NAME};
use crate::policy::{
    AuthenticationPolicySpec, ClientKeyType, HealthCheckPolicySpec, RateLimitPolicySpec, TargetRef,
};

/// Kinds a policy may target.
const TARGET_KINDS: &str = "Gateway, HTTPRoute, GRPCRoute (group gateway.networking.k8s.io)";

pub(crate) fn authentication(spec: &AuthenticationPolicySpec, errors: &mut FieldErrors) {
    targets(&spec.target_refs, errors);
    if spec.jwt.is_none() && spec.basic_auth.is_none() && spec.api_key.is_none() {
        errors.push(
            "spec",
            "configures no method: set at least one of jwt, basicAuth, apiKey",
        );
    }
    if let Some(jwt) = &spec.jwt {
        if jwt.providers.is_empty() {
            errors.push("spec.jwt.providers", "must list at least one provider");
        }
        for (i, provider) in jwt.providers.iter().enumerate() {
            let path = format!("spec.jwt.providers[{i}]");
            match (&provider.jwks, &provider.remote_jwks) {
                (Some(_), None) => {}
                (None, Some(remote)) => {
                    let (scheme, rest) = remote.uri.split_once("://").unwrap_or_default();
                    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
                    if !matches!(scheme, "http" | "https")
                        || authority.is_empty()
                        || remote.uri.contains(char::is_whitespace)
                    {
                        errors.push(
                            &format!("{path}.remoteJWKS.uri"),
                            "must be an absolute http:// or https:// URL",
                        );
                    }
                    if let Some(duration) = &remote.cache_duration
                        && crate::parse_duration(duration).is_none_or(|d| d.is_zero())
                    {
                        errors.push(
                            &format!("{path}.remoteJWKS.cacheDuration"),
                            "must be a positive duration such as 30s or 5m",
                        );
                    }
                }
                _ => errors.push(&path, "must set exactly one of jwks, remoteJWKS"),
            }
            if let Some(kind) = provider.jwks.as_ref().and_then(|j| j.kind.as_deref())
                && !matches!(kind, "ConfigMap" | "Secret")
            {
                errors.push(
                    &format!("{path}.jwks.kind"),
                    &format!("{kind:?} is not supported; supported: ConfigMap, Secret"),
                );
            }
            for (c, claim) in provider.claim_to_headers.iter().flatten().enumerate() {
                header_name(
                    &claim.header,
                    &format!("{path}.claimToHeaders[{c}].header"),
                    errors,
                );
            }
        }
    }
    if let Some(api_key) = &spec.api_key {
        if api_key.credentials.is_empty() {
            errors.push("spec.apiKey.credentials", "must name at least one Secret");
        }
        for (i, source) in api_key.extract_from.iter().flatten().enumerate() {
            let path = format!("spec.apiKey.extractFrom[{i}]");
            match (&source.header, &source.query_parameter) {
                (Some(header), None) => header_name(header, &format!("{path}.header"), errors),
                (None, Some(parameter)) if !parameter.is_empty() => {}
                _ => errors.push(&path, "must set exactly one of header, queryParameter"),
            }
        }
        if let Some(header) = &api_key.forward_client_id_header {
            header_name(header, "spec.apiKey.forwardClientIdHeader", errors);
        }
    }
}

pub(crate) fn rate_limit(spec: &RateLimitPolicySpec, errors: &mut FieldErrors) {
    targets(&spec.target_refs, errors);
    if spec.limits.is_empty() {
        errors.push("spec.limits", "must list at least one limit");
    }
    for (i, limit) in spec.limits.iter().enumerate() {
        let path = format!("spec.limits[{i}]");
        if limit.requests == 0 {
            errors.push(&format!("{path}.requests"), "must be at least 1");
        }
        let Some(key) = &limit.client_key else {
            continue;
        };
        match (key.kind, key.name.as_deref()) {
            (ClientKeyType::ClientIp, None) => {}
            (ClientKeyType::ClientIp, Some(_)) => errors.push(
                &format!("{path}.clientKey.name"),
                "is only for type Header or JWTClaim",
            ),
            (ClientKeyType::Header, Some(name)) => {
                header_name(name, &format!("{path}.clientKey.name"), errors)
            }
            (ClientKeyType::JwtClaim, Some(name)) if !name.is_empty() => {}
            (_, _) => errors.push(
                &format!("{path}.clientKey.name"),
                "is required for type Header or JWTClaim",
            ),
        }
    }
}

pub(crate) fn health_check(spec: &HealthCheckPolicySpec, errors: &mut FieldErrors) {
    if spec.target_refs.is_empty() || spec.target_refs.len() > 16 {
        errors.push("spec.targetRefs", "must have between 1 and 16 entries");
    }
    for (i, target) in spec.target_refs.iter().enumerate() {
        if !matches!(target.group.as_str(), "" | "core") || target.kind != "Service" {
            errors.push(
                &format!("spec.targetRefs[{i}]"),
                &format!(
                    "{}/{} cannot be targeted; supported: Service (group \"\")",
                    target.group, target.kind
                ),
            );
        }
    }
    for (field, value) in [("interval", &spec.interval), ("timeout", &spec.timeout)] {
        if let Some(value) = value
            && crate::parse_duration(value).is_none_or(|d| d.is_zero())
        {
            errors.push(
                &format!("spec.{field}"),
                "must be a positive duration such as 500ms or 5s",
            );
        }
    }
    for (field, value) in [
        ("unhealthyThreshold", spec.unhealthy_threshold),
        ("healthyThreshold", spec.healthy_threshold),
    ] {
        if value.is_some_and(|n| !(1..=100).contains(&n)) {
            errors.push(&format!("spec.{field}"), "must be from 1 to 100");
        }
    }
    if spec.http.is_some() == spec.tcp.is_some() {
        errors.push("spec", "must set exactly one of http, tcp");
    }
    if let Some(http) = &spec.http {
        if !http.path.starts_with('/') || http.path.contains(char::is_whitespace) {
            errors.push(
                "spec.http.path",
                &format!("{:?} must start with / and hold no whitespace", http.path),
            );
        }
        for (s, status) in http.expected_statuses.iter().flatten().enumerate() {
            if !(100..=599).contains(status) {
                errors.push(
                    &format!("spec.http.expectedStatuses[{s}]"),
                    &format!("{status} is not an HTTP status (100 to 599)"),
                );
            }
        }
    }
}

fn targets(targets: &[TargetRef], errors: &mut FieldErrors) {
    if targets.is_empty() || targets.len() > 16 {
        errors.push("spec.targetRefs", "must have between 1 and 16 entries");
    }
    for (i, target) in targets.iter().enumerate() {
        let supported = target.group == "gateway.networking.k8s.io"
            && matches!(target.kind.as_str(), "Gateway" | "HTTPRoute" | "GRPCRoute");
        if !supported {
            errors.push(
                &format!("spec.targetRefs[{i}]"),
                &format!(
                    "{}/{} cannot be targeted; supported: {TARGET_KINDS}",
                    target.group, target.kind
                ),
            );
        }
    }
}

fn header_name(name: &str, path: &str, errors: &mut FieldErrors) {
    if !HEADER_NAME.is_match(name) {
        errors.push(path, &format!("{name:?} is not a valid header name"));
    }
}
