//! GRPCRoute as HTTP routing: a gRPC call is an HTTP/2 POST to `/{service}/{method}`, so a
//! GRPCRoute compiles into the same route table as HTTPRoutes, through the same code.
//!
//! The conversion builds the HTTPRoute a GRPCRoute means: parentRefs, hostnames, headers,
//! filters and backendRefs have the same shape in both kinds (converted through their JSON
//! form), and each `GRPCMethodMatch` becomes a path match:
//!
//! | service | method | type | path match |
//! | --- | --- | --- | --- |
//! | S | M | Exact | Exact `/S/M` |
//! | S | - | Exact | PathPrefix `/S` (element-wise, so `/S/anything`) |
//! | - | M | Exact | RegularExpression `/[^/]+/M` |
//! | S? | M? | RegularExpression | RegularExpression `/(S or [^/]+)/(M or [^/]+)` |
//!
//! Spec precedence for GRPCRoute ranks "largest number of characters in a matching service",
//! then method, then headers. Through the HTTP table a service-and-method match (Exact path)
//! ranks first, as the spec requires; a method-only match (a regular expression) ranks above
//! a service-only one (a prefix), where the spec would rank the service-only match first.
//! Both matching the same call needs overlapping rules of that exact shape; it is recorded
//! here as a known difference.

use model::gw::grpcroutes::GrpcRoute;
use model::gw::httproutes::HttpRoute;
use serde_json::{Value, json};

/// The HTTPRoute equivalent of a GRPCRoute, or why it cannot be expressed.
pub(crate) fn to_http(route: &GrpcRoute) -> Result<HttpRoute, String> {
    let mut spec = serde_json::to_value(&route.spec).map_err(|e| e.to_string())?;
    if let Some(rules) = spec.get_mut("rules").and_then(Value::as_array_mut) {
        for rule in rules {
            rule.as_object_mut().map(|r| r.remove("sessionPersistence"));
            if let Some(matches) = rule.get_mut("matches").and_then(Value::as_array_mut) {
                for matcher in matches {
                    let converted = path_match(matcher.get("method"));
                    let Some(object) = matcher.as_object_mut() else {
                        continue;
                    };
                    object.remove("method");
                    object.insert("path".into(), converted);
                }
            }
        }
    }
    spec.as_object_mut().map(|s| s.remove("useDefaultGateways"));
    let spec = serde_json::from_value(spec)
        .map_err(|e| format!("cannot express GRPCRoute as HTTP routing: {e}"))?;
    let mut http = HttpRoute::new("", spec);
    http.metadata = route.metadata.clone();
    Ok(http)
}

/// The path match for a `GRPCMethodMatch` (see the module table).
fn path_match(method: Option<&Value>) -> Value {
    let Some(method) = method else {
        return json!({"type": "PathPrefix", "value": "/"});
    };
    let service = method.get("service").and_then(Value::as_str);
    let name = method.get("method").and_then(Value::as_str);
    let regex = method.get("type").and_then(Value::as_str) == Some("RegularExpression");
    if regex {
        let service = service.unwrap_or("[^/]+");
        let name = name.unwrap_or("[^/]+");
        return json!({"type": "RegularExpression", "value": format!("/({service})/({name})")});
    }
    match (service, name) {
        (Some(service), Some(name)) => {
            json!({"type": "Exact", "value": format!("/{service}/{name}")})
        }
        (Some(service), None) => json!({"type": "PathPrefix", "value": format!("/{service}")}),
        (None, Some(name)) => {
            json!({"type": "RegularExpression", "value": format!("/[^/]+/{}", regex::escape(name))})
        }
        (None, None) => json!({"type": "PathPrefix", "value": "/"}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_matches_become_path_matches() {
        let cases = [
            (
                json!({"service": "pkg.Echo", "method": "Ping"}),
                json!({"type": "Exact", "value": "/pkg.Echo/Ping"}),
            ),
            (
                json!({"service": "pkg.Echo"}),
                json!({"type": "PathPrefix", "value": "/pkg.Echo"}),
            ),
            (
                json!({"method": "Ping"}),
                json!({"type": "RegularExpression", "value": "/[^/]+/Ping"}),
            ),
            (
                json!({"type": "RegularExpression", "service": "pkg\\..*", "method": "P.*"}),
                json!({"type": "RegularExpression", "value": "/(pkg\\..*)/(P.*)"}),
            ),
        ];
        for (method, expected) in cases {
            assert_eq!(path_match(Some(&method)), expected, "{method}");
        }
        assert_eq!(
            path_match(None),
            json!({"type": "PathPrefix", "value": "/"})
        );
    }
}
