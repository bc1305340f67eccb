//! The two cluster services every mesh test silently assumes (README "Mesh tests"):
//! ClusterIPs and cluster DNS. Each Service of a mesh case file gets a distinct ClusterIP in
//! 127.0.210.0/24, written into `spec.clusterIP` before the manifests reach portcullis, which
//! then serves (or relays) the Service at `clusterIP:port`. The runner plays the client pod:
//! [`MeshDirectory::resolve`] turns a URL host such as `echo`, `echo-v1:8080` or
//! `echo-v1.gateway-conformance-mesh` (relative to the client's namespace) into that address.

use std::net::{Ipv4Addr, SocketAddr};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::backends::Pod;
use crate::manifests::Manifests;

/// First ClusterIP handed out; the rest follow in Service order up to `.254`.
const FIRST_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 210, 1);

/// One Service reachable at its ClusterIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshService {
    /// Namespace of the Service.
    pub namespace: String,
    /// Name of the Service.
    pub name: String,
    /// The assigned ClusterIP.
    pub cluster_ip: Ipv4Addr,
}

/// Every Service with its ClusterIP: the client pod's view of cluster DNS.
#[derive(Debug, Clone, Default)]
pub struct MeshDirectory {
    services: Vec<MeshService>,
}

/// A parsed request URL of a mesh case: `scheme://authority/path?query`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeshUrl {
    /// `http` or `grpc`.
    pub scheme: String,
    /// The authority as written (`echo`, `echo-v1:8080`); the client's Host header.
    pub authority: String,
    /// Path and query; `/` when the URL has none.
    pub target: String,
}

impl MeshDirectory {
    /// Writes a distinct ClusterIP into every Service (in manifest order) and returns the
    /// resulting directory; any `clusterIP` the file had (such as `None`) is replaced.
    pub fn assign(manifests: &mut Manifests) -> anyhow::Result<Self> {
        let originals: Vec<Value> = manifests.of_kind("Service").cloned().collect();
        let mut services = Vec::new();
        for (next, mut service) in (u32::from(FIRST_CLUSTER_IP)..).zip(originals) {
            let name = service
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .context("Service without name")?
                .to_owned();
            let namespace = service
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or("default")
                .to_owned();
            let ip = Ipv4Addr::from(next);
            if ip.octets()[3] == 255 {
                bail!("out of ClusterIPs in 127.0.210.0/24");
            }
            match service.get_mut("spec").and_then(Value::as_object_mut) {
                Some(spec) => {
                    spec.insert("clusterIP".to_owned(), json!(ip.to_string()));
                }
                None => service["spec"] = json!({"clusterIP": ip.to_string()}),
            }
            manifests.upsert(service)?;
            services.push(MeshService {
                namespace,
                name,
                cluster_ip: ip,
            });
        }
        Ok(Self { services })
    }

    /// A directory of the given Services (tests).
    pub fn new(services: Vec<MeshService>) -> Self {
        Self { services }
    }

    /// Every known Service.
    pub fn services(&self) -> &[MeshService] {
        &self.services
    }

    /// Cluster DNS plus the scheme's port: `name[.namespace[.svc[.cluster.local]]][:port]`
    /// relative to `client_namespace`, or a literal IPv4 address. The port defaults to 80.
    pub fn resolve(&self, authority: &str, client_namespace: &str) -> Result<SocketAddr, String> {
        let (host, port) = split_authority(authority)?;
        if let Ok(ip) = host.parse::<Ipv4Addr>() {
            return Ok(SocketAddr::from((ip, port)));
        }
        let host = host.trim_end_matches('.');
        let host = host
            .strip_suffix(".svc.cluster.local")
            .or_else(|| host.strip_suffix(".svc"))
            .unwrap_or(host);
        let (name, namespace) = match host.split_once('.') {
            Some((name, namespace)) => (name, namespace),
            None => (host, client_namespace),
        };
        self.services
            .iter()
            .find(|s| s.name == name && s.namespace == namespace)
            .map(|s| SocketAddr::from((s.cluster_ip, port)))
            .ok_or_else(|| format!("cluster DNS: no Service {namespace}/{name} for {authority:?}"))
    }
}

impl MeshUrl {
    /// Parses `scheme://authority[/path][?query]`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("URL without scheme: {url:?}"))?;
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, target) = rest.split_at(end);
        if authority.is_empty() {
            return Err(format!("URL without host: {url:?}"));
        }
        let target = match target {
            "" => "/".to_owned(),
            t if t.starts_with('?') => format!("/{t}"),
            t => t.to_owned(),
        };
        Ok(Self {
            scheme: scheme.to_ascii_lowercase(),
            authority: authority.to_owned(),
            target,
        })
    }
}

/// Replaces `{POD_IP:<namespace>/<label selector>}` with the address of the first pod in
/// that namespace whose labels match every `key=value` of the selector.
pub fn substitute_pod_ip(url: &str, pods: &[Pod]) -> Result<String, String> {
    let Some(start) = url.find("{POD_IP:") else {
        return Ok(url.to_owned());
    };
    let end = url[start..]
        .find('}')
        .map(|e| start + e)
        .ok_or_else(|| format!("unterminated POD_IP placeholder in {url:?}"))?;
    let spec = &url[start + "{POD_IP:".len()..end];
    let (namespace, selector) = spec
        .split_once('/')
        .ok_or_else(|| format!("POD_IP placeholder without namespace: {spec:?}"))?;
    let wanted: Vec<(&str, &str)> = selector
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .collect();
    let pod = pods
        .iter()
        .filter(|p| p.namespace == namespace)
        .find(|p| {
            wanted
                .iter()
                .all(|(k, v)| p.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .ok_or_else(|| format!("no pod matches {spec:?}"))?;
    Ok(format!(
        "{}{}{}",
        &url[..start],
        pod.address,
        &url[end + 1..]
    ))
}

fn split_authority(authority: &str) -> Result<(&str, u16), String> {
    match authority.rsplit_once(':') {
        Some((host, port)) => port
            .parse()
            .map(|port| (host, port))
            .map_err(|_| format!("bad port in {authority:?}")),
        None => Ok((authority, 80)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifests::parse_documents;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("socket address")
    }

    fn directory() -> MeshDirectory {
        MeshDirectory::new(vec![
            MeshService {
                namespace: "mesh".into(),
                name: "echo".into(),
                cluster_ip: Ipv4Addr::new(127, 0, 210, 1),
            },
            MeshService {
                namespace: "mesh".into(),
                name: "echo-v1".into(),
                cluster_ip: Ipv4Addr::new(127, 0, 210, 2),
            },
            MeshService {
                namespace: "consumer".into(),
                name: "echo-v1".into(),
                cluster_ip: Ipv4Addr::new(127, 0, 210, 3),
            },
        ])
    }

    #[test]
    fn short_names_resolve_in_the_client_namespace() {
        let d = directory();
        assert_eq!(d.resolve("echo", "mesh"), Ok(addr("127.0.210.1:80")));
        assert_eq!(
            d.resolve("echo-v1:8080", "mesh"),
            Ok(addr("127.0.210.2:8080"))
        );
        assert_eq!(d.resolve("echo-v1", "consumer"), Ok(addr("127.0.210.3:80")));
        assert!(d.resolve("echo", "consumer").is_err());
    }

    #[test]
    fn qualified_names_and_addresses_resolve() {
        let d = directory();
        let v1 = Ok(addr("127.0.210.2:80"));
        assert_eq!(d.resolve("echo-v1.mesh", "consumer"), v1);
        assert_eq!(d.resolve("echo-v1.mesh.svc", "consumer"), v1);
        assert_eq!(d.resolve("echo-v1.mesh.svc.cluster.local", "x"), v1);
        assert_eq!(
            d.resolve("127.0.200.2:8080", "x"),
            Ok(addr("127.0.200.2:8080"))
        );
        assert!(d.resolve("echo:http", "mesh").is_err());
    }

    #[test]
    fn urls_split_into_authority_and_target() {
        let url = MeshUrl::parse("http://echo/?animal=whale").expect("test data");
        assert_eq!(
            (url.authority.as_str(), url.target.as_str()),
            ("echo", "/?animal=whale")
        );
        let url = MeshUrl::parse("http://echo-v1:8080").expect("test data");
        assert_eq!(
            (url.authority.as_str(), url.target.as_str()),
            ("echo-v1:8080", "/")
        );
        assert_eq!(
            MeshUrl::parse("http://echo?a=b").expect("test data").target,
            "/?a=b"
        );
        assert_eq!(
            MeshUrl::parse("grpc://echo:7070")
                .expect("test data")
                .scheme,
            "grpc"
        );
        assert!(MeshUrl::parse("echo").is_err());
    }

    #[test]
    fn every_service_gets_a_distinct_cluster_ip() {
        let mut manifests = Manifests::default();
        let text = "kind: Service\nmetadata: {name: a, namespace: n}\nspec: {ports: [{port: 80}]}\n---\nkind: Service\nmetadata: {name: b, namespace: n}\n";
        for doc in parse_documents(text).expect("test data") {
            manifests.upsert(doc).expect("test data");
        }
        let d = MeshDirectory::assign(&mut manifests).expect("test data");
        let ips: Vec<Option<&str>> = manifests
            .of_kind("Service")
            .map(|s| s.pointer("/spec/clusterIP").and_then(Value::as_str))
            .collect();
        assert_eq!(ips, vec![Some("127.0.210.1"), Some("127.0.210.2")]);
        assert_eq!(d.services()[1].cluster_ip, Ipv4Addr::new(127, 0, 210, 2));
    }
}
