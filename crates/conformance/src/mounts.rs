//! Which files a backend container would find where its environment says (README "Mapping
//! Deployments to local processes": "Volumes map Secret items to files").
//!
//! The echo image reads its certificate and key from paths named by environment variables,
//! e.g. `TLS_SERVER_CERT=/etc/secret-volume/crt`. In a cluster the kubelet puts the Secret's
//! `tls.crt` there because the container mounts volume `secret-volume` at
//! `/etc/secret-volume` and the volume maps item `tls.crt` to path `crt`. This module follows
//! the same chain backwards, from a path to the Secret or ConfigMap key, so that the runner
//! can hand the in-process backend the right bytes. It is pure: Deployment in, references out.

use serde_json::Value;

/// Whether a volume projects a Secret or a ConfigMap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolumeSource {
    /// `volumes[].secret`.
    Secret,
    /// `volumes[].configMap`.
    ConfigMap,
}

/// One data key of a Secret or ConfigMap, as a mounted file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountedFile {
    /// Secret or ConfigMap.
    pub source: VolumeSource,
    /// `namespace/name` of the object (the Deployment's namespace).
    pub object: String,
    /// The data key, e.g. `tls.crt`.
    pub key: String,
}

/// The certificate files a TLS-serving echo container reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    /// Server certificate (chain) PEM.
    pub cert: MountedFile,
    /// Server private key PEM.
    pub key: MountedFile,
    /// CA certificates a presented client certificate must chain to (`TLS_CLIENT_CACERTS`).
    pub client_ca: Option<MountedFile>,
}

/// Why a path named by the environment maps to no Secret or ConfigMap key. In a cluster the
/// container would fail to read the file and never become ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MountError {
    /// No volumeMount covers the path.
    #[error("no volumeMount of the first container covers {0}")]
    NotMounted(String),
    /// The mount names a volume the pod does not have.
    #[error("volumeMount names volume {0:?}, which the pod template does not define")]
    NoVolume(String),
    /// The volume is neither a Secret nor a ConfigMap.
    #[error("volume {0:?} is neither a secret nor a configMap volume")]
    UnsupportedVolume(String),
    /// The volume has `items`, and none of them is projected to this path.
    #[error("volume {volume:?} projects no item to {path:?}")]
    NoItem {
        /// Volume name.
        volume: String,
        /// Path inside the volume.
        path: String,
    },
}

impl ServerTlsFiles {
    /// The files named by `cert_var` and `key_var` (and `TLS_CLIENT_CACERTS`, if set) in the
    /// first container's environment; `None` unless both variables are set and not empty, as
    /// upstream's echo starts its TLS listener only then.
    pub fn of(
        deployment: &Value,
        cert_var: &str,
        key_var: &str,
    ) -> Result<Option<Self>, MountError> {
        let (Some(cert), Some(key)) = (
            env_value(deployment, cert_var),
            env_value(deployment, key_var),
        ) else {
            return Ok(None);
        };
        let client_ca = env_value(deployment, "TLS_CLIENT_CACERTS")
            .map(|path| mounted_file(deployment, path))
            .transpose()?;
        Ok(Some(Self {
            cert: mounted_file(deployment, cert)?,
            key: mounted_file(deployment, key)?,
            client_ca,
        }))
    }
}

/// The literal `value` of an environment variable of the first container; `None` when absent,
/// empty, or set through `valueFrom`.
pub fn env_value<'a>(deployment: &'a Value, name: &str) -> Option<&'a str> {
    container(deployment)?
        .get("env")?
        .as_array()?
        .iter()
        .find(|e| e.get("name").and_then(Value::as_str) == Some(name))?
        .get("value")?
        .as_str()
        .filter(|v| !v.is_empty())
}

/// The Secret or ConfigMap key the kubelet would place at `path` in the first container.
///
/// A mount with `subPath` places exactly that item of the volume at its `mountPath`; one
/// without places the whole volume under it. The deepest covering mount wins, as nested mounts
/// shadow their parents. A volume with `items` holds only those, each at its `path`; one
/// without holds every key under its own name.
pub fn mounted_file(deployment: &Value, path: &str) -> Result<MountedFile, MountError> {
    let mounts = container(deployment)
        .and_then(|c| c.get("volumeMounts"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    let (volume_name, inside) = mounts
        .filter_map(|mount| {
            let name = mount.get("name")?.as_str()?;
            let at = mount.get("mountPath")?.as_str()?.trim_end_matches('/');
            let sub_path = mount.get("subPath").and_then(Value::as_str);
            let inside = match sub_path.filter(|s| !s.is_empty()) {
                Some(sub_path) => (path == at).then(|| sub_path.to_owned()),
                None => path.strip_prefix(at)?.strip_prefix('/').map(str::to_owned),
            }?;
            Some((at.len(), name, inside))
        })
        .max_by_key(|(depth, _, _)| *depth)
        .map(|(_, name, inside)| (name, inside))
        .ok_or_else(|| MountError::NotMounted(path.to_owned()))?;

    let volume = deployment
        .pointer("/spec/template/spec/volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|v| v.get("name").and_then(Value::as_str) == Some(volume_name))
        .ok_or_else(|| MountError::NoVolume(volume_name.to_owned()))?;
    let (source, spec, object_field) = match (volume.get("secret"), volume.get("configMap")) {
        (Some(secret), _) => (VolumeSource::Secret, secret, "secretName"),
        (None, Some(config_map)) => (VolumeSource::ConfigMap, config_map, "name"),
        (None, None) => return Err(MountError::UnsupportedVolume(volume_name.to_owned())),
    };
    let object = spec
        .get(object_field)
        .and_then(Value::as_str)
        .ok_or_else(|| MountError::UnsupportedVolume(volume_name.to_owned()))?;
    let key = match spec.get("items").and_then(Value::as_array) {
        Some(items) => items
            .iter()
            .find(|item| item.get("path").and_then(Value::as_str) == Some(inside.as_str()))
            .and_then(|item| item.get("key")?.as_str())
            .ok_or_else(|| MountError::NoItem {
                volume: volume_name.to_owned(),
                path: inside.clone(),
            })?
            .to_owned(),
        None => inside,
    };
    let namespace = deployment
        .pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("default");
    Ok(MountedFile {
        source,
        object: format!("{namespace}/{object}"),
        key,
    })
}

fn container(deployment: &Value) -> Option<&Value> {
    deployment.pointer("/spec/template/spec/containers/0")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::parse_documents;

    /// Shaped like upstream's `tls-backend-with-client-cert-validation`.
    const DEPLOYMENT: &str = "
kind: Deployment
metadata: {name: tls-backend, namespace: infra}
spec:
  template:
    spec:
      containers:
      - name: c
        volumeMounts:
        - {name: secret-volume, mountPath: /etc/secret-volume}
        - {name: configmap-volume, mountPath: /etc/configmap-volume/}
        - {name: whole, mountPath: /etc/whole}
        - {name: whole, mountPath: /etc/single.pem, subPath: ca.crt}
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: TLS_SERVER_CERT, value: /etc/secret-volume/crt}
        - {name: TLS_SERVER_PRIVKEY, value: /etc/secret-volume/key}
        - {name: TLS_CLIENT_CACERTS, value: /etc/configmap-volume/ca}
        - {name: EMPTY, value: ''}
      volumes:
      - name: secret-volume
        secret:
          secretName: tls-checks-certificate
          items: [{key: tls.crt, path: crt}, {key: tls.key, path: key}]
      - name: configmap-volume
        configMap:
          name: tls-checks-ca-certificate
          items: [{key: ca.crt, path: ca}]
      - {name: whole, configMap: {name: bundle}}
";

    fn deployment() -> Value {
        parse_documents(DEPLOYMENT)
            .expect("yaml")
            .pop()
            .expect("one document")
    }

    fn file(source: VolumeSource, object: &str, key: &str) -> MountedFile {
        MountedFile {
            source,
            object: object.to_owned(),
            key: key.to_owned(),
        }
    }

    #[test]
    fn items_map_paths_back_to_keys() {
        let files = ServerTlsFiles::of(&deployment(), "TLS_SERVER_CERT", "TLS_SERVER_PRIVKEY")
            .expect("resolvable")
            .expect("both variables set");
        assert_eq!(
            files,
            ServerTlsFiles {
                cert: file(
                    VolumeSource::Secret,
                    "infra/tls-checks-certificate",
                    "tls.crt"
                ),
                key: file(
                    VolumeSource::Secret,
                    "infra/tls-checks-certificate",
                    "tls.key"
                ),
                client_ca: Some(file(
                    VolumeSource::ConfigMap,
                    "infra/tls-checks-ca-certificate",
                    "ca.crt"
                )),
            }
        );
    }

    #[test]
    fn tls_needs_both_variables() {
        // The TCP echo reads TLS_SERVER_PRIV_KEY, which this Deployment does not set.
        assert_eq!(
            ServerTlsFiles::of(&deployment(), "TLS_SERVER_CERT", "TLS_SERVER_PRIV_KEY"),
            Ok(None)
        );
        assert_eq!(env_value(&deployment(), "EMPTY"), None);
        assert_eq!(env_value(&deployment(), "POD_NAME"), None);
    }

    #[test]
    fn volumes_without_items_and_sub_paths_resolve() {
        let d = deployment();
        assert_eq!(
            mounted_file(&d, "/etc/whole/ca.crt"),
            Ok(file(VolumeSource::ConfigMap, "infra/bundle", "ca.crt"))
        );
        assert_eq!(
            mounted_file(&d, "/etc/single.pem"),
            Ok(file(VolumeSource::ConfigMap, "infra/bundle", "ca.crt"))
        );
    }

    #[test]
    fn unmapped_paths_are_errors() {
        let d = deployment();
        assert_eq!(
            mounted_file(&d, "/etc/other/crt"),
            Err(MountError::NotMounted("/etc/other/crt".to_owned()))
        );
        assert_eq!(
            mounted_file(&d, "/etc/secret-volume-2/crt"),
            Err(MountError::NotMounted(
                "/etc/secret-volume-2/crt".to_owned()
            )),
            "a mount path is a directory, not a string prefix"
        );
        assert_eq!(
            mounted_file(&d, "/etc/secret-volume/tls.crt"),
            Err(MountError::NoItem {
                volume: "secret-volume".to_owned(),
                path: "tls.crt".to_owned()
            })
        );
    }
}
