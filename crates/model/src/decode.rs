//! Decoding manifests: YAML text to validated [`Object`]s, or errors that say exactly what is
//! wrong and where.
//!
//! A file decodes as a whole: if any document has an error the file yields no objects, so a
//! caller can keep the file's last good version ("nothing is half-applied"). Documents of a
//! kind portcullis does not know are reported as [`Warning`]s and skipped.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::egress::{EgressNetwork, POLICY_GROUP};
use crate::validate::{self, FieldErrors};
use crate::yaml::{self, Document};
use crate::{Kind, Object, gw, k8s, policy};

/// A problem that makes a file unusable.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct DecodeError {
    /// The file.
    pub file: PathBuf,
    /// 1-based line of the offending field (or of the document).
    pub line: usize,
    /// Field path inside the document, such as `spec.listeners[0].port`; empty for errors
    /// about the whole document.
    pub path: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

/// Something worth telling the user that does not stop the file from loading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// The file.
    pub file: PathBuf,
    /// 1-based line of the document.
    pub line: usize,
    /// What was skipped and why.
    pub message: String,
}

/// The objects of one file, with the line each document starts on.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FileContents {
    /// Decoded objects and their document's line.
    pub objects: Vec<(Object, usize)>,
    /// Skipped documents.
    pub warnings: Vec<Warning>,
}

/// Decodes every document of a file. `file` is only used in messages.
pub fn decode_file(file: &Path, text: &str) -> Result<FileContents, Vec<DecodeError>> {
    let mut contents = FileContents::default();
    let mut errors = Vec::new();
    // Each document is decoded as soon as it is parsed, and its tree dropped: a file with
    // thousands of routes never holds all their trees at once.
    yaml::for_each_document(text, |document| {
        let mut fields = FieldErrors::default();
        match decode_document(&document, &mut fields) {
            Ok(Some(object)) if fields.is_empty() => contents.objects.push((object, document.line)),
            Ok(Some(_)) => {}
            Ok(None) => {}
            Err(skipped) => contents.warnings.push(Warning {
                file: file.to_path_buf(),
                line: document.line,
                message: skipped,
            }),
        }
        errors.extend(fields.into_iter().map(|(path, message)| DecodeError {
            file: file.to_path_buf(),
            line: document.line_of(&path),
            path,
            message,
        }));
    })
    // A syntax error is the file's only error: what was decoded before it is dropped.
    .map_err(|error| {
        vec![DecodeError {
            file: file.to_path_buf(),
            line: error.line,
            path: String::new(),
            message: format!("invalid YAML at column {}: {}", error.column, error.message),
        }]
    })?;
    if errors.is_empty() {
        Ok(contents)
    } else {
        Err(errors)
    }
}

/// Decodes one document. `Ok(None)` when it had errors (recorded in `fields`), `Err` with a
/// message when its kind is unknown and it is skipped.
fn decode_document(doc: &Document, fields: &mut FieldErrors) -> Result<Option<Object>, String> {
    let Some(map) = doc.value.as_object() else {
        fields.push(
            "",
            "a manifest must be a mapping with apiVersion, kind and metadata",
        );
        return Ok(None);
    };
    let (Some(api_version), Some(kind)) = (
        map.get("apiVersion").and_then(Value::as_str),
        map.get("kind").and_then(Value::as_str),
    ) else {
        fields.push("", "apiVersion and kind are required strings");
        return Ok(None);
    };
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let Some(kind) = known_kind(group, version, kind) else {
        return Err(format!(
            "skipped {api_version} {kind}: not a kind portcullis reads"
        ));
    };
    let object = match kind {
        Kind::GatewayClass => custom(doc, fields, |metadata, spec| {
            let mut object = gw::gatewayclasses::GatewayClass::new("", spec);
            object.metadata = metadata;
            Object::GatewayClass(Arc::new(object))
        }),
        Kind::Gateway => custom(doc, fields, |metadata, spec| {
            let mut object = gw::gateways::Gateway::new("", spec);
            object.metadata = metadata;
            Object::Gateway(Arc::new(object))
        }),
        Kind::ListenerSet => custom(doc, fields, |metadata, spec| {
            let mut object = gw::listenersets::ListenerSet::new("", spec);
            object.metadata = metadata;
            Object::ListenerSet(Arc::new(object))
        }),
        Kind::HttpRoute => custom(doc, fields, |metadata, spec| {
            let mut object = gw::httproutes::HttpRoute::new("", spec);
            object.metadata = metadata;
            Object::HttpRoute(Arc::new(object))
        }),
        Kind::GrpcRoute => custom(doc, fields, |metadata, spec| {
            let mut object = gw::grpcroutes::GrpcRoute::new("", spec);
            object.metadata = metadata;
            Object::GrpcRoute(Arc::new(object))
        }),
        Kind::TlsRoute => {
            // TLSRoute v1 requires hostnames; v1alpha2/v1alpha3 made them optional.
            let mut doc = doc.clone();
            if version != "v1"
                && let Some(spec) = doc.value.get_mut("spec").and_then(Value::as_object_mut)
            {
                spec.entry("hostnames")
                    .or_insert_with(|| Value::Array(Vec::new()));
            }
            let decoded = custom(&doc, fields, |metadata, spec| {
                let mut object = gw::tlsroutes::TlsRoute::new("", spec);
                object.metadata = metadata;
                Object::TlsRoute(Arc::new(object))
            });
            fields.explain(is_tls_route_match, TLS_ROUTE_HAS_NO_MATCHES);
            fields.explain(is_missing_backend_refs, TLS_ROUTE_NEEDS_BACKENDS);
            if decoded.is_none() {
                // Validation only runs on what decoded; hostnames are worth reporting anyway,
                // since an empty one is part of the same common mistake.
                let hostnames = doc
                    .value
                    .pointer("/spec/hostnames")
                    .and_then(Value::as_array);
                for (i, hostname) in hostnames.into_iter().flatten().enumerate() {
                    if let Some(hostname) = hostname.as_str() {
                        validate::check_hostname(hostname, &format!("spec.hostnames[{i}]"), fields);
                    }
                }
            }
            decoded
        }
        Kind::TcpRoute => custom(doc, fields, |metadata, spec| {
            let mut object = gw::tcproutes::TcpRoute::new("", spec);
            object.metadata = metadata;
            Object::TcpRoute(Arc::new(object))
        }),
        Kind::ReferenceGrant => custom(doc, fields, |metadata, spec| {
            let mut object = gw::referencegrants::ReferenceGrant::new("", spec);
            object.metadata = metadata;
            Object::ReferenceGrant(Arc::new(object))
        }),
        Kind::BackendTlsPolicy => custom(doc, fields, |metadata, spec| {
            let mut object = gw::backendtlspolicies::BackendTlsPolicy::new("", spec);
            object.metadata = metadata;
            Object::BackendTlsPolicy(Arc::new(object))
        }),
        Kind::Namespace => {
            core::<k8s::Namespace>(doc, fields).map(|o| Object::Namespace(Arc::new(o)))
        }
        Kind::Service => core::<k8s::Service>(doc, fields).map(|o| Object::Service(Arc::new(o))),
        Kind::EndpointSlice => {
            core::<k8s::EndpointSlice>(doc, fields).map(|o| Object::EndpointSlice(Arc::new(o)))
        }
        Kind::Secret => core::<k8s::Secret>(doc, fields).map(|o| Object::Secret(Arc::new(o))),
        Kind::ConfigMap => {
            core::<k8s::ConfigMap>(doc, fields).map(|o| Object::ConfigMap(Arc::new(o)))
        }
        Kind::EgressNetwork => custom(doc, fields, |metadata, spec| {
            Object::EgressNetwork(Arc::new(EgressNetwork { metadata, spec }))
        }),
        Kind::AuthenticationPolicy => custom(doc, fields, |metadata, spec| {
            let mut object = policy::AuthenticationPolicy::new("", spec);
            object.metadata = metadata;
            Object::AuthenticationPolicy(Arc::new(object))
        }),
        Kind::RateLimitPolicy => custom(doc, fields, |metadata, spec| {
            let mut object = policy::RateLimitPolicy::new("", spec);
            object.metadata = metadata;
            Object::RateLimitPolicy(Arc::new(object))
        }),
        Kind::HealthCheckPolicy => custom(doc, fields, |metadata, spec| {
            let mut object = policy::HealthCheckPolicy::new("", spec);
            object.metadata = metadata;
            Object::HealthCheckPolicy(Arc::new(object))
        }),
    };
    let Some(object) = object else {
        return Ok(None);
    };
    let object = with_default_namespace(object);
    validate::object(&object, fields);
    Ok(Some(object))
}

/// Written for `spec.rules[].matches` on a TLSRoute, a common mistake when an egress allowlist
/// is meant to restrict paths.
const TLS_ROUTE_HAS_NO_MATCHES: &str = "TLSRoute rules have no `matches`: a TLS connection is routed by the SNI of its ClientHello alone (spec.hostnames), since its paths and headers are encrypted; to restrict paths, use an HTTPRoute on plaintext or TLS-terminated traffic. Allowed in a TLSRoute rule: name, backendRefs";

/// Written when a TLSRoute rule has no `backendRefs`.
const TLS_ROUTE_NEEDS_BACKENDS: &str = "a TLSRoute rule needs backendRefs (1 to 16); on an EgressNetwork, name the EgressNetwork itself (group: policy.linkerd.io, kind: EgressNetwork) to send allowed connections to their original destination";

fn is_missing_backend_refs(path: &str, message: &str) -> bool {
    path.starts_with("spec.rules[") && message.starts_with("missing field `backendRefs`")
}

fn is_tls_route_match(path: &str, _message: &str) -> bool {
    path.strip_prefix("spec.rules[")
        .and_then(|rest| rest.split_once(']'))
        .is_some_and(|(index, rest)| {
            index.bytes().all(|b| b.is_ascii_digit()) && rest.starts_with(".matches")
        })
}

/// Maps a group, version and kind to a known kind; Gateway API kinds are accepted in the
/// versions a cluster serves them (`v1`, and `v1beta1` for the kinds that had it).
fn known_kind(group: &str, version: &str, kind: &str) -> Option<Kind> {
    match (group, version, kind) {
        ("gateway.networking.k8s.io", "v1" | "v1beta1", "GatewayClass") => Some(Kind::GatewayClass),
        ("gateway.networking.k8s.io", "v1" | "v1beta1", "Gateway") => Some(Kind::Gateway),
        ("gateway.networking.k8s.io", "v1" | "v1beta1", "HTTPRoute") => Some(Kind::HttpRoute),
        ("gateway.networking.k8s.io", "v1", "ListenerSet") => Some(Kind::ListenerSet),
        ("gateway.networking.k8s.io", "v1" | "v1alpha2", "GRPCRoute") => Some(Kind::GrpcRoute),
        ("gateway.networking.k8s.io", "v1" | "v1alpha2" | "v1alpha3", "TLSRoute") => {
            Some(Kind::TlsRoute)
        }
        ("gateway.networking.k8s.io", "v1alpha2", "TCPRoute") => Some(Kind::TcpRoute),
        ("gateway.networking.k8s.io", "v1" | "v1beta1", "ReferenceGrant") => {
            Some(Kind::ReferenceGrant)
        }
        ("gateway.networking.k8s.io", "v1" | "v1alpha3", "BackendTLSPolicy") => {
            Some(Kind::BackendTlsPolicy)
        }
        ("", "v1", "Namespace") => Some(Kind::Namespace),
        ("", "v1", "Service") => Some(Kind::Service),
        ("", "v1", "Secret") => Some(Kind::Secret),
        ("", "v1", "ConfigMap") => Some(Kind::ConfigMap),
        ("discovery.k8s.io", "v1", "EndpointSlice") => Some(Kind::EndpointSlice),
        (POLICY_GROUP, "v1alpha1", "EgressNetwork") => Some(Kind::EgressNetwork),
        (policy::GROUP, "v1alpha1", "AuthenticationPolicy") => Some(Kind::AuthenticationPolicy),
        (policy::GROUP, "v1alpha1", "RateLimitPolicy") => Some(Kind::RateLimitPolicy),
        (policy::GROUP, "v1alpha1", "HealthCheckPolicy") => Some(Kind::HealthCheckPolicy),
        _ => None,
    }
}

/// Decodes a Gateway API object: `metadata` and `spec` separately (so `apiVersion` may be
/// any served version), rejecting unknown top-level fields. `status` is accepted and ignored:
/// status is computed, never read.
fn custom<S: DeserializeOwned>(
    doc: &Document,
    fields: &mut FieldErrors,
    build: impl FnOnce(k8s::ObjectMeta, S) -> Object,
) -> Option<Object> {
    let map = doc.value.as_object()?;
    for key in map.keys() {
        if !matches!(
            key.as_str(),
            "apiVersion" | "kind" | "metadata" | "spec" | "status"
        ) {
            fields.push(
                key,
                "unknown field; allowed: apiVersion, kind, metadata, spec, status",
            );
        }
    }
    let metadata = typed::<k8s::ObjectMeta>(map.get("metadata"), "metadata", fields);
    let spec = match map.get("spec") {
        Some(spec) => typed::<S>(Some(spec), "spec", fields),
        None => {
            fields.push("spec", "required field is missing");
            None
        }
    };
    Some(build(metadata?, spec?))
}

/// Decodes a core Kubernetes object as a whole.
fn core<T: DeserializeOwned>(doc: &Document, fields: &mut FieldErrors) -> Option<T> {
    typed::<T>(Some(&doc.value), "", fields)
}

/// Deserializes a value, recording type errors and unknown fields with their paths.
fn typed<T: DeserializeOwned>(
    value: Option<&Value>,
    prefix: &str,
    fields: &mut FieldErrors,
) -> Option<T> {
    let null = Value::Null;
    let value = value.unwrap_or(&null);
    let mut unknown = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| {
        unknown.push(join(prefix, &ignored_path(&path)));
    };
    let deserializer = serde_ignored::Deserializer::new(value, &mut record);
    let result: Result<T, _> = serde_path_to_error::deserialize(deserializer);
    for path in unknown {
        fields.push(&path, "unknown field (not in the resource's schema)");
    }
    match result {
        Ok(decoded) => Some(decoded),
        Err(error) => {
            let path = error.path().to_string();
            let path = if path == "." { String::new() } else { path };
            fields.push(&join(prefix, &path), &error.into_inner().to_string());
            None
        }
    }
}

fn join(prefix: &str, path: &str) -> String {
    match (prefix.is_empty(), path.is_empty()) {
        (true, _) => path.to_string(),
        (false, true) => prefix.to_string(),
        (false, false) if path.starts_with('[') => format!("{prefix}{path}"),
        (false, false) => format!("{prefix}.{path}"),
    }
}

/// Formats a `serde_ignored` path as `a.b[0].c`.
fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => join(&ignored_path(parent), key),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

/// Namespaced objects without a namespace go to `default`, as `kubectl apply` does.
fn with_default_namespace(object: Object) -> Object {
    fn set(meta: &mut k8s::ObjectMeta) {
        if meta.namespace.is_none() {
            meta.namespace = Some("default".to_string());
        }
    }
    if !object.kind().namespaced() || object.meta().namespace.is_some() {
        return object;
    }
    match object {
        Object::Gateway(mut o) => {
            set(&mut Arc::make_mut(&mut o).metadata);
            Object::Gateway(o)
        }
        Object::ListenerSet(mut o) => {
            set(&mut Arc::make_mut(&mut o).metadata);
            Object::ListenerSet(o)
        }
        Object::HttpRoute(mut o) => {
            set(&mut Arc::make_mut(&mut o).metadata);
            Object::HttpRoute(o)
        }
        Object::GrpcRoute(mut o) => {
            set(&mut Arc::make_mut(&mut o).metadata);
            Object::GrpcRoute(o)
        }
        Object::TlsRoute(mut o) => {
            set(&mut Arc::make_mut(&mut o).metadata);
            Object::TlsRoute(o)
        }
        Object::TcpRoute(mut o) => {
            set(&mut Arc::make_mut(&mut o).metadata);
            Object::TcpRoute(o)
        }
        Object::ReferenceGrant(mut o) => {
            set(&mut Arc::make_mut(&mut o).metadata);
            Object::ReferenceGrant(o)
        }
        Object::BackendTlsPolicy(mut o) => {
            set(&mut Arc::make_mut(&mut o).metadata);
            Object::BackendTlsPolicy(o)
        }
        Object::Service(mut o) => {
            set(&mut Arc::make_mut(&mut o).metadata);
            Object::Service(o)
        }
        Object::EndpointSlice(mut o) => {
            set(&mut Arc::make_mut(&mut o).metadata);
            Object::EndpointSlice(o)
        }
        Object::Secret(mut o) => {
            set(&mut Arc::make_mut(&mut o).metadata);
            Object::Secret(o)
        }
        Object::ConfigMap(mut o) => {
            set(&mut Arc::make_mut(&mut o).metadata);
            Object::ConfigMap(o)
        }
        Object::EgressNetwork(mut o) => {
            set(&mut Arc::make_mut(&mut o).metadata);
            Object::EgressNetwork(o)
        }
        Object::AuthenticationPolicy(mut o) => {
            set(&mut Arc::make_mut(&mut o).metadata);
            Object::AuthenticationPolicy(o)
        }
        Object::RateLimitPolicy(mut o) => {
            set(&mut Arc::make_mut(&mut o).metadata);
            Object::RateLimitPolicy(o)
        }
        Object::HealthCheckPolicy(mut o) => {
            set(&mut Arc::make_mut(&mut o).metadata);
            Object::HealthCheckPolicy(o)
        }
        other @ (Object::GatewayClass(_) | Object::Namespace(_)) => other,
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.line)?;
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

#[cfg(test)]
mod tests;
