//! Time to translate a snapshot with many HTTPRoutes (one Gateway, N routes with their own
//! hostnames, two rules each, one Service per route), and to patch its config for one added
//! route instead.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use model::Snapshot;
use model::decode::decode_file;

fn manifests(routes: usize) -> String {
    let mut text = String::from(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GatewayClass\nmetadata: {name: portcullis}\nspec: {controllerName: portcullis.dev/gateway-controller}\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: edge, namespace: bench}\nspec:\n  gatewayClassName: portcullis\n  listeners: [{name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}]\n",
    );
    for r in 0..routes {
        text.push_str(&format!(
            "---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r{r}, namespace: bench}}\nspec:\n  parentRefs: [{{name: edge}}]\n  hostnames: [host-{r}.example.com]\n  rules:\n  - matches: [{{path: {{type: Exact, value: /api/{r}}}, headers: [{{name: x-tenant, value: t{r}}}]}}]\n    backendRefs: [{{name: svc-{r}, port: 80}}]\n  - matches: [{{path: {{type: PathPrefix, value: /static}}}}]\n    filters: [{{type: ResponseHeaderModifier, responseHeaderModifier: {{add: [{{name: x-route, value: r{r}}}]}}}}]\n    backendRefs: [{{name: svc-{r}, port: 80}}]\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: svc-{r}, namespace: bench}}\nspec: {{ports: [{{port: 80}}]}}\n"
        ));
    }
    text
}

fn bench(c: &mut Criterion) {
    let text = manifests(10_000);
    let contents =
        decode_file(std::path::Path::new("bench.yaml"), &text).expect("bench manifests decode");
    let snapshot = Snapshot::from_objects(contents.objects.into_iter().map(|(o, _)| o));
    let options = translate::Options::default();
    let mut group = c.benchmark_group("translate");
    group.sample_size(10);
    group.bench_function("10000_routes", |b| {
        b.iter(|| black_box(translate::translate(black_box(&snapshot), &options)))
    });
    // One more route, as a new file would add it: the patch against a full translation of
    // the same snapshot.
    let previous = translate::translate(&snapshot, &options).config;
    let added = decode_file(
        std::path::Path::new("added.yaml"),
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: added, namespace: bench}\nspec:\n  parentRefs: [{name: edge}]\n  hostnames: [added.example.com]\n  rules: [{backendRefs: [{name: svc-0, port: 80}]}]\n",
    )
    .expect("the added route decodes");
    let mut after = snapshot.clone();
    for (object, _) in added.objects {
        if let model::Object::HttpRoute(route) = object {
            after
                .http_routes
                .insert(model::ObjectName::new("bench", "added"), route);
        }
    }
    assert_eq!(after.http_routes.len(), 10_001);
    group.bench_function("patch_10000_routes_one_added", |b| {
        b.iter(|| {
            black_box(translate::patch(
                black_box(&snapshot),
                &previous,
                black_box(&after),
                &options,
            ))
        })
    });
    group.bench_function("10001_routes", |b| {
        b.iter(|| black_box(translate::translate(black_box(&after), &options)))
    });
    group.bench_function("decode_10000_routes", |b| {
        b.iter(|| {
            black_box(
                decode_file(std::path::Path::new("bench.yaml"), black_box(&text))
                    .map(|c| c.objects.len()),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
