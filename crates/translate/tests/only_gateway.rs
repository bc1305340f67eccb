//! `Options::only_gateway`: a provisioned pod binds its own Gateway's sockets and no others,
//! while status stays the same as for the process that serves everything.

use std::path::Path;

use model::{ObjectName, Snapshot};

const MANIFESTS: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portcullis}
spec: {controllerName: portcullis.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: public, namespace: infra}
spec:
  gatewayClassName: portcullis
  listeners: [{name: web, port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: internal, namespace: infra}
spec:
  gatewayClassName: portcullis
  listeners: [{name: web, port: 9090, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}]
---
apiVersion: v1
kind: Service
metadata: {name: app, namespace: shop}
spec: {clusterIP: 10.96.0.20, ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: store, namespace: shop}
spec:
  parentRefs:
  - {name: public, namespace: infra}
  - {name: internal, namespace: infra}
  - {group: '', kind: Service, name: app, port: 80}
  rules: [{backendRefs: [{name: app, port: 80}]}]
";

fn snapshot() -> Snapshot {
    match model::decode::decode_file(Path::new("only.yaml"), MANIFESTS) {
        Ok(contents) => Snapshot::from_objects(contents.objects.into_iter().map(|(o, _)| o)),
        Err(errors) => panic!("fixture: {errors:?}"),
    }
}

fn ports(translation: &translate::Translation) -> Vec<String> {
    translation
        .config
        .binds
        .keys()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn one_gateways_pod_binds_only_that_gateway_with_the_same_status() {
    let snapshot = snapshot();
    let all = translate::translate(&snapshot, &translate::Options::default());
    assert_eq!(
        ports(&all),
        ["0.0.0.0:8080", "0.0.0.0:9090", "10.96.0.20:80"]
    );

    let options = translate::Options {
        only_gateway: Some(ObjectName::new("infra", "internal")),
        ..translate::Options::default()
    };
    let one = translate::translate(&snapshot, &options);
    assert_eq!(ports(&one), ["0.0.0.0:9090"]);
    let listener = &one.config.binds.values().next().map(|b| b.http.clone());
    assert_eq!(
        listener
            .iter()
            .flatten()
            .map(|l| l.gateway.as_str())
            .collect::<Vec<_>>(),
        ["infra/internal"]
    );
    assert_eq!(
        one.status, all.status,
        "status does not depend on what is served"
    );
}
