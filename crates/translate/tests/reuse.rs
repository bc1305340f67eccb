//! `translate_reusing` gives what `translate` gives, whatever the translation before it: for
//! every fixture, with each of its routes added, changed and removed after the translation
//! that primed the reuse, and after a change to objects that are not routes.

use std::path::Path;
use std::sync::Arc;

use model::Snapshot;
use model::decode::decode_file;
use serde_json::json;
use translate::{Options, Reuse, Translation};

fn options() -> Options {
    Options {
        address_pool: Some("127.0.100.0/30".parse().expect("cidr")),
        ..Options::default()
    }
}

fn load(path: &Path) -> Snapshot {
    let text = std::fs::read_to_string(path).expect("fixture is readable");
    let contents = decode_file(path, &text)
        .unwrap_or_else(|errors| panic!("fixture {} does not decode: {errors:#?}", path.display()));
    Snapshot::from_objects(contents.objects.into_iter().map(|(object, _)| object))
}

/// Config and status, as the fixture snapshots show them.
fn shown(translation: &Translation) -> serde_json::Value {
    let status: serde_json::Map<String, serde_json::Value> = translation
        .status
        .0
        .iter()
        .map(|(key, status)| {
            (
                key.to_string(),
                serde_json::to_value(status).expect("serializes"),
            )
        })
        .collect();
    let allocations: Vec<String> = translation
        .allocations
        .iter()
        .map(|(gateway, ip)| format!("{gateway} {ip}"))
        .collect();
    json!({"config": translation.config, "status": status, "allocations": allocations})
}

/// Translates `next` after `before` through one `Reuse`, and compares with translating
/// `next` alone.
fn assert_same_after(before: &Snapshot, next: &Snapshot, what: &str) {
    let options = options();
    let mut reuse = Reuse::default();
    translate::translate_reusing(before, &options, &mut reuse);
    let reused = translate::translate_reusing(next, &options, &mut reuse);
    let fresh = translate::translate(next, &options);
    assert_eq!(shown(&reused), shown(&fresh), "{what}");
    // Once more with nothing changed: every rule reused.
    let again = translate::translate_reusing(next, &options, &mut reuse);
    assert_eq!(shown(&again), shown(&fresh), "{what}, translated again");
}

/// A changed copy of a route: its first rule moved to the end and its hostnames dropped, so
/// that both its rules and where it attaches differ.
fn changed<T: Clone>(route: &Arc<T>, change: impl FnOnce(&mut T)) -> Arc<T> {
    let mut copy = T::clone(route);
    change(&mut copy);
    Arc::new(copy)
}

#[test]
fn reusing_rules_translates_as_a_fresh_translation_does() {
    let mut routes = 0;
    insta::glob!("fixtures/*.yaml", |path| {
        let full = load(path);
        let fixture = path.display();
        for name in full.http_routes.keys() {
            routes += 1;
            let mut without = full.clone();
            without.http_routes.remove(name);
            assert_same_after(
                &without,
                &full,
                &format!("{fixture}: HTTPRoute {name} added"),
            );
            assert_same_after(
                &full,
                &without,
                &format!("{fixture}: HTTPRoute {name} removed"),
            );
            let mut other = full.clone();
            let route = &full.http_routes[name];
            other.http_routes.insert(
                name.clone(),
                changed(route, |r| {
                    r.spec.hostnames = None;
                    if let Some(rules) = r.spec.rules.as_mut() {
                        rules.rotate_left(1);
                    }
                }),
            );
            assert_same_after(
                &full,
                &other,
                &format!("{fixture}: HTTPRoute {name} changed"),
            );
        }
        for name in full.grpc_routes.keys() {
            routes += 1;
            let mut without = full.clone();
            without.grpc_routes.remove(name);
            assert_same_after(
                &without,
                &full,
                &format!("{fixture}: GRPCRoute {name} added"),
            );
            assert_same_after(
                &full,
                &without,
                &format!("{fixture}: GRPCRoute {name} removed"),
            );
            let mut other = full.clone();
            let route = &full.grpc_routes[name];
            other.grpc_routes.insert(
                name.clone(),
                changed(route, |r| {
                    r.spec.hostnames = None;
                    if let Some(rules) = r.spec.rules.as_mut() {
                        rules.rotate_left(1);
                    }
                }),
            );
            assert_same_after(
                &full,
                &other,
                &format!("{fixture}: GRPCRoute {name} changed"),
            );
        }
        // Objects that are not routes: every Service loses its ports, then every
        // ReferenceGrant goes.
        let mut portless = full.clone();
        for service in portless.services.values_mut() {
            *service = changed(service, |s| {
                if let Some(spec) = s.spec.as_mut() {
                    spec.ports = None;
                }
            });
        }
        assert_same_after(&full, &portless, &format!("{fixture}: Services changed"));
        let mut ungranted = full.clone();
        ungranted.reference_grants.clear();
        assert_same_after(
            &full,
            &ungranted,
            &format!("{fixture}: ReferenceGrants removed"),
        );
    });
    assert!(routes > 20, "the fixtures hold {routes} routes");
}

/// Options that change what rules do start the reuse over.
#[test]
fn other_options_compile_again() {
    let snapshot = load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/egress.yaml"));
    let mut reuse = Reuse::default();
    translate::translate_reusing(&snapshot, &options(), &mut reuse);
    let other = Options {
        cluster_networks: vec!["10.0.0.0/8".parse().expect("cidr")],
        global_egress_namespace: "elsewhere".into(),
        ..options()
    };
    let reused = translate::translate_reusing(&snapshot, &other, &mut reuse);
    assert_eq!(
        shown(&reused),
        shown(&translate::translate(&snapshot, &other))
    );
}
