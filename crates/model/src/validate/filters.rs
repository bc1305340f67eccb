//! CEL rules of HTTPRoute filters, for rule-level and backendRef-level filters alike.
//!
//! The generated types give rule filters and backendRef filters distinct (but identically
//! shaped) Rust types, so the checks run on their JSON form to state each rule once.

use serde::Serialize;
use serde_json::Value;

use super::{FieldErrors, HEADER_NAME, PRECISE_HOSTNAME};
use crate::gw::httproutes::{HttpRouteRulesMatches, HttpRouteRulesMatchesPathType};

/// Filter `type` values and the field each one requires.
const TYPES: [(&str, &str); 8] = [
    ("RequestHeaderModifier", "requestHeaderModifier"),
    ("ResponseHeaderModifier", "responseHeaderModifier"),
    ("RequestRedirect", "requestRedirect"),
    ("URLRewrite", "urlRewrite"),
    ("RequestMirror", "requestMirror"),
    ("ExtensionRef", "extensionRef"),
    ("CORS", "cors"),
    ("ExternalAuth", "externalAuth"),
];

/// Rule-level filters; `matches` is needed for the ReplacePrefixMatch rule.
pub(crate) fn rule_filters<F: Serialize>(
    filters: &[F],
    matches: &[HttpRouteRulesMatches],
    path: &str,
    errors: &mut FieldErrors,
) {
    let values = to_values(filters);
    common(&values, path, errors);
    let count = |kind: &str| values.iter().filter(|f| type_of(f) == kind).count();
    for once in [
        "RequestHeaderModifier",
        "ResponseHeaderModifier",
        "RequestRedirect",
        "URLRewrite",
        "CORS",
    ] {
        if count(once) > 1 {
            errors.push(path, &format!("{once} filter cannot be repeated"));
        }
    }
    if count("RequestRedirect") > 0 && count("URLRewrite") > 0 {
        errors.push(
            path,
            "May specify either httpRouteFilterRequestRedirect or httpRouteFilterRequestRewrite, but not both",
        );
    }
    let uses_prefix_replace = values.iter().any(|filter| {
        ["requestRedirect", "urlRewrite"]
            .iter()
            .any(|field| filter[*field]["path"]["type"].as_str() == Some("ReplacePrefixMatch"))
    });
    if uses_prefix_replace {
        let one_prefix = matches.len() == 1
            && matches[0].path.as_ref().is_none_or(|p| {
                matches!(
                    p.r#type,
                    None | Some(HttpRouteRulesMatchesPathType::PathPrefix)
                )
            });
        if !one_prefix {
            errors.push(
                path,
                "When using a filter with path.type ReplacePrefixMatch, exactly one PathPrefix match must be specified",
            );
        }
    }
}

/// BackendRef-level filters.
pub(crate) fn backend_filters<F: Serialize>(filters: &[F], path: &str, errors: &mut FieldErrors) {
    let values = to_values(filters);
    common(&values, path, errors);
}

fn to_values<F: Serialize>(filters: &[F]) -> Vec<Value> {
    filters
        .iter()
        .map(|f| serde_json::to_value(f).unwrap_or(Value::Null))
        .collect()
}

fn type_of(filter: &Value) -> &str {
    filter["type"].as_str().unwrap_or_default()
}

fn common(filters: &[Value], path: &str, errors: &mut FieldErrors) {
    for (i, filter) in filters.iter().enumerate() {
        let path = format!("{path}[{i}]");
        let kind = type_of(filter);
        for (name, field) in TYPES {
            let present = !filter[field].is_null();
            if name == kind && !present {
                errors.push(
                    &format!("{path}.{field}"),
                    &format!("filter.{field} must be specified for {name} filter.type"),
                );
            }
            if name != kind && present {
                errors.push(
                    &format!("{path}.{field}"),
                    &format!("filter.{field} must be nil if the filter.type is not {name}"),
                );
            }
        }
        for field in ["requestHeaderModifier", "responseHeaderModifier"] {
            header_modifier(&filter[field], &format!("{path}.{field}"), errors);
        }
        let redirect = &filter["requestRedirect"];
        if let Some(code) = redirect["statusCode"].as_i64()
            && ![301, 302, 303, 307, 308].contains(&code)
        {
            errors.push(
                &format!("{path}.requestRedirect.statusCode"),
                "supported values: 301, 302, 303, 307, 308",
            );
        }
        if let Some(port) = redirect["port"].as_i64()
            && !(1..=65535).contains(&port)
        {
            errors.push(
                &format!("{path}.requestRedirect.port"),
                "must be between 1 and 65535",
            );
        }
        for field in ["requestRedirect", "urlRewrite"] {
            if let Some(host) = filter[field]["hostname"].as_str()
                && !PRECISE_HOSTNAME.is_match(host)
            {
                errors.push(
                    &format!("{path}.{field}.hostname"),
                    "must be a DNS name without wildcard",
                );
            }
            path_modifier(
                &filter[field]["path"],
                &format!("{path}.{field}.path"),
                errors,
            );
        }
        let mirror = &filter["requestMirror"];
        if !mirror["percent"].is_null() && !mirror["fraction"].is_null() {
            errors.push(
                &format!("{path}.requestMirror"),
                "Only one of percent or fraction may be specified in HTTPRequestMirrorFilter",
            );
        }
        if let Some(percent) = mirror["percent"].as_i64()
            && !(0..=100).contains(&percent)
        {
            errors.push(
                &format!("{path}.requestMirror.percent"),
                "must be between 0 and 100",
            );
        }
        let fraction = &mirror["fraction"];
        if !fraction.is_null() {
            let numerator = fraction["numerator"].as_i64().unwrap_or(0);
            let denominator = fraction["denominator"].as_i64().unwrap_or(100);
            if numerator < 0 || denominator <= 0 || numerator > denominator {
                errors.push(
                    &format!("{path}.requestMirror.fraction"),
                    "numerator must be between 0 and denominator, and denominator greater than 0",
                );
            }
        }
    }
}

fn header_modifier(modifier: &Value, path: &str, errors: &mut FieldErrors) {
    if modifier.is_null() {
        return;
    }
    for list in ["set", "add"] {
        let mut seen = std::collections::HashSet::new();
        for (i, entry) in modifier[list].as_array().into_iter().flatten().enumerate() {
            let name = entry["name"].as_str().unwrap_or_default();
            if !HEADER_NAME.is_match(name) {
                errors.push(
                    &format!("{path}.{list}[{i}].name"),
                    "must be a valid HTTP header name",
                );
            }
            if !seen.insert(name.to_string()) {
                errors.push(
                    &format!("{path}.{list}[{i}].name"),
                    "header names must be unique within the list",
                );
            }
        }
    }
    for (i, name) in modifier["remove"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if !name.as_str().is_some_and(|n| HEADER_NAME.is_match(n)) {
            errors.push(
                &format!("{path}.remove[{i}]"),
                "must be a valid HTTP header name",
            );
        }
    }
}

fn path_modifier(modifier: &Value, path: &str, errors: &mut FieldErrors) {
    if modifier.is_null() {
        return;
    }
    let kind = modifier["type"].as_str().unwrap_or_default();
    let full = !modifier["replaceFullPath"].is_null();
    let prefix = !modifier["replacePrefixMatch"].is_null();
    match kind {
        "ReplaceFullPath" if !full || prefix => errors.push(path, "replaceFullPath must be specified (and replacePrefixMatch must not) when type is set to 'ReplaceFullPath'"),
        "ReplacePrefixMatch" if !prefix || full => errors.push(path, "replacePrefixMatch must be specified (and replaceFullPath must not) when type is set to 'ReplacePrefixMatch'"),
        _ => {}
    }
    for field in ["replaceFullPath", "replacePrefixMatch"] {
        if let Some(value) = modifier[field].as_str()
            && !value.starts_with('/')
        {
            errors.push(
                &format!("{path}.{field}"),
                "must be an absolute path starting with '/'",
            );
        }
    }
}
