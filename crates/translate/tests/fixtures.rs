//! YAML fixtures in, `{config, status}` snapshots out.
//!
//! Each file under `tests/fixtures` is a set of manifests; the snapshot shows the compiled
//! config (what the data plane would serve) next to every resource's status, so a change in
//! either is visible in review.

use std::path::Path;

use model::Snapshot;
use model::decode::decode_file;
use serde_json::json;

fn translate_fixture(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).expect("fixture is readable");
    let contents = decode_file(path, &text)
        .unwrap_or_else(|errors| panic!("fixture {} does not decode: {errors:#?}", path.display()));
    let snapshot = Snapshot::from_objects(contents.objects.into_iter().map(|(object, _)| object));
    let options = translate::Options {
        address_pool: Some("127.0.100.0/30".parse().expect("cidr")),
        ..translate::Options::default()
    };
    let translation = translate::translate(&snapshot, &options);
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
    json!({"config": translation.config, "status": status})
}

#[test]
fn fixtures() {
    insta::glob!("fixtures/*.yaml", |path| {
        insta::assert_yaml_snapshot!(translate_fixture(path));
    });
}

#[test]
fn translation_is_deterministic() {
    insta::glob!("fixtures/*.yaml", |path| {
        assert_eq!(translate_fixture(path), translate_fixture(path));
    });
}
