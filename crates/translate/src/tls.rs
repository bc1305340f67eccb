//! HTTPS listeners: resolving `tls.certificateRefs` to certificate material.

use std::sync::Arc;

use ir::TlsCertificate;
use model::gw::gateways::{GatewayListeners, GatewayListenersTlsMode};
use model::status::Reason;
use model::{GATEWAY_GROUP, ObjectName, Snapshot};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::gateways::Verdict;
use crate::grants;

/// Resolves the certificate of a `Terminate` listener. The first reference is served; the
/// others must still resolve, since the spec reports every invalid reference.
pub(crate) fn resolve(
    snapshot: &Snapshot,
    gateway: &ObjectName,
    owner_kind: &str,
    listener: &GatewayListeners,
) -> Result<Arc<TlsCertificate>, (Reason, String)> {
    let Some(tls) = &listener.tls else {
        return Err((
            Reason::InvalidCertificateRef,
            "HTTPS listeners need tls".into(),
        ));
    };
    if matches!(tls.mode, Some(GatewayListenersTlsMode::Passthrough)) {
        return Err((
            Reason::UnsupportedProtocol,
            "tls.mode Passthrough is only valid with protocol TLS".into(),
        ));
    }
    let refs = tls.certificate_refs.as_deref().unwrap_or_default();
    if refs.is_empty() {
        return Err((
            Reason::InvalidCertificateRef,
            "tls.certificateRefs is empty".into(),
        ));
    }
    let mut first = None;
    for reference in refs {
        let group = reference.group.as_deref().unwrap_or_default();
        let kind = reference.kind.as_deref().unwrap_or("Secret");
        if !matches!(group, "" | "core") || kind != "Secret" {
            return Err((
                Reason::InvalidCertificateRef,
                format!(
                    "certificateRef kind {group}/{kind} is not supported; supported: core Secret"
                ),
            ));
        }
        let namespace = reference.namespace.as_deref().unwrap_or(&gateway.namespace);
        let permitted = grants::permitted(
            snapshot,
            &grants::From {
                group: GATEWAY_GROUP,
                kind: owner_kind,
                namespace: &gateway.namespace,
            },
            &grants::To {
                group: "",
                kind: "Secret",
                namespace,
                name: &reference.name,
            },
        );
        let name = ObjectName::new(namespace, &reference.name);
        if !permitted {
            return Err((
                Reason::RefNotPermitted,
                format!("certificateRef to Secret {name} is not permitted by any ReferenceGrant"),
            ));
        }
        let certificate = load(snapshot, &name)?;
        first.get_or_insert(certificate);
    }
    first.ok_or_else(|| (Reason::InvalidCertificateRef, "no certificate".into()))
}

/// Reads and checks a `kubernetes.io/tls` Secret.
pub(crate) fn load(
    snapshot: &Snapshot,
    name: &ObjectName,
) -> Result<Arc<TlsCertificate>, (Reason, String)> {
    let invalid = |message: String| (Reason::InvalidCertificateRef, message);
    let secret = snapshot
        .secrets
        .get(name)
        .ok_or_else(|| invalid(format!("Secret {name} does not exist")))?;
    let data = secret.data.clone().unwrap_or_default();
    let string_data = secret.string_data.clone().unwrap_or_default();
    let field = |key: &str| -> Option<Vec<u8>> {
        data.get(key)
            .map(|b| b.0.clone())
            .or_else(|| string_data.get(key).map(|s| s.clone().into_bytes()))
    };
    let (Some(chain), Some(key)) = (field("tls.crt"), field("tls.key")) else {
        return Err(invalid(format!(
            "Secret {name} must have tls.crt and tls.key"
        )));
    };
    let certificates: Vec<_> = CertificateDer::pem_slice_iter(&chain)
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(format!("Secret {name}: tls.crt is not valid PEM: {e}")))?;
    if certificates.is_empty() {
        return Err(invalid(format!(
            "Secret {name}: tls.crt holds no certificate"
        )));
    }
    PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
        invalid(format!(
            "Secret {name}: tls.key holds no usable private key: {e}"
        ))
    })?;
    Ok(Arc::new(TlsCertificate {
        source: name.to_string(),
        chain_pem: chain,
        key_pem: key,
    }))
}

/// Helper for listener status: the verdict of certificate resolution.
pub(crate) fn verdict<T>(result: &Result<T, (Reason, String)>) -> Verdict {
    result.as_ref().map(|_| ()).map_err(Clone::clone)
}
