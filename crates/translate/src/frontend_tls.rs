//! Frontend client certificate validation (Gateway `spec.tls.frontend`): the CA bundle and
//! mode that apply to an HTTPS listener's port (`perPort` overrides `default`).

use std::sync::Arc;

use ir::{ClientValidation, ClientValidationMode};
use model::gw::gateways::{
    Gateway, GatewayTlsFrontendDefaultValidationMode, GatewayTlsFrontendPerPortTlsValidationMode,
};
use model::status::Reason;
use model::{GATEWAY_GROUP, ObjectName, Snapshot};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::grants;

/// The validation settings of one port, independent of where they were written.
struct Settings<'a> {
    refs: Vec<(&'a str, &'a str, &'a str, Option<&'a str>)>,
    insecure: bool,
}

/// The settings for `port`: the `perPort` entry naming it, else `default`; `None` when the
/// port has no validation.
fn settings(gateway: &Gateway, port: u16) -> Option<Settings<'_>> {
    let frontend = gateway.spec.tls.as_ref()?.frontend.as_ref()?;
    if let Some(per_port) = frontend
        .per_port
        .iter()
        .flatten()
        .find(|p| p.port == i32::from(port))
    {
        let validation = per_port.tls.validation.as_ref()?;
        return Some(Settings {
            refs: validation
                .ca_certificate_refs
                .iter()
                .map(|r| {
                    (
                        r.group.as_str(),
                        r.kind.as_str(),
                        r.name.as_str(),
                        r.namespace.as_deref(),
                    )
                })
                .collect(),
            insecure: matches!(
                validation.mode,
                Some(GatewayTlsFrontendPerPortTlsValidationMode::AllowInsecureFallback)
            ),
        });
    }
    let validation = frontend.default.validation.as_ref()?;
    Some(Settings {
        refs: validation
            .ca_certificate_refs
            .iter()
            .map(|r| {
                (
                    r.group.as_str(),
                    r.kind.as_str(),
                    r.name.as_str(),
                    r.namespace.as_deref(),
                )
            })
            .collect(),
        insecure: matches!(
            validation.mode,
            Some(GatewayTlsFrontendDefaultValidationMode::AllowInsecureFallback)
        ),
    })
}

/// Whether any validation setting of the Gateway uses `AllowInsecureFallback`.
pub(crate) fn insecure(gateway: &Gateway) -> bool {
    let Some(frontend) = gateway.spec.tls.as_ref().and_then(|t| t.frontend.as_ref()) else {
        return false;
    };
    let default = frontend.default.validation.as_ref().is_some_and(|v| {
        matches!(
            v.mode,
            Some(GatewayTlsFrontendDefaultValidationMode::AllowInsecureFallback)
        )
    });
    default
        || frontend.per_port.iter().flatten().any(|p| {
            p.tls.validation.as_ref().is_some_and(|v| {
                matches!(
                    v.mode,
                    Some(GatewayTlsFrontendPerPortTlsValidationMode::AllowInsecureFallback)
                )
            })
        })
}

/// Resolves the client validation of an HTTPS listener on `port` of `gateway`
/// (`name`). `Ok(None)` when the port has none; `Err` carries the `ResolvedRefs` reason.
pub(crate) fn resolve(
    snapshot: &Snapshot,
    name: &ObjectName,
    gateway: &Gateway,
    port: u16,
) -> Result<Option<Arc<ClientValidation>>, (Reason, String)> {
    let Some(settings) = settings(gateway, port) else {
        return Ok(None);
    };
    let mut ca_pem = Vec::new();
    let mut sources = Vec::new();
    for (group, kind, ref_name, namespace) in settings.refs {
        if !matches!(group, "" | "core") || kind != "ConfigMap" {
            return Err((
                Reason::InvalidCACertificateKind,
                format!(
                    "caCertificateRef kind {kind} (group {group:?}) is not supported; supported: core ConfigMap"
                ),
            ));
        }
        let namespace = namespace.unwrap_or(&name.namespace);
        let permitted = grants::permitted(
            snapshot,
            &grants::From {
                group: GATEWAY_GROUP,
                kind: "Gateway",
                namespace: &name.namespace,
            },
            &grants::To {
                group: "",
                kind: "ConfigMap",
                namespace,
                name: ref_name,
            },
        );
        let object = ObjectName::new(namespace, ref_name);
        if !permitted {
            return Err((
                Reason::RefNotPermitted,
                format!(
                    "caCertificateRef to ConfigMap {object} is not permitted by any ReferenceGrant"
                ),
            ));
        }
        let ca = ca_certificates(snapshot, &object)?;
        ca_pem.extend_from_slice(ca);
        ca_pem.push(b'\n');
        sources.push(object.to_string());
    }
    if sources.is_empty() {
        return Err((
            Reason::InvalidCACertificateRef,
            "caCertificateRefs is empty".into(),
        ));
    }
    Ok(Some(Arc::new(ClientValidation {
        source: sources.join(","),
        ca_pem,
        mode: if settings.insecure {
            ClientValidationMode::AllowInsecureFallback
        } else {
            ClientValidationMode::AllowValidOnly
        },
    })))
}

/// The `ca.crt` of a ConfigMap, checked to hold at least one PEM certificate; shared by
/// frontend client validation and BackendTLSPolicy. `InvalidCACertificateRef` otherwise.
pub(crate) fn ca_certificates<'s>(
    snapshot: &'s Snapshot,
    object: &ObjectName,
) -> Result<&'s [u8], (Reason, String)> {
    let invalid = |message: String| (Reason::InvalidCACertificateRef, message);
    let config_map = snapshot
        .config_maps
        .get(object)
        .ok_or_else(|| invalid(format!("ConfigMap {object} does not exist")))?;
    let ca = config_map
        .data
        .as_ref()
        .and_then(|d| d.get("ca.crt"))
        .ok_or_else(|| invalid(format!("ConfigMap {object} has no ca.crt")))?;
    let certificates: Vec<_> = CertificateDer::pem_slice_iter(ca.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(format!("ConfigMap {object}: ca.crt is not valid PEM: {e}")))?;
    if certificates.is_empty() {
        return Err(invalid(format!(
            "ConfigMap {object}: ca.crt holds no certificate"
        )));
    }
    Ok(ca.as_bytes())
}
