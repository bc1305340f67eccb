use std::collections::HashMap;

use serde_json::json;

use super::*;
use crate::manifests::{CONTROLLER_NAME, parse_documents};

fn doc(value: serde_json::Value) -> StatusDocument {
    serde_json::from_value(value).expect("valid status document")
}

fn check(yaml: &str) -> StatusCheck {
    serde_yaml_ng::from_str(yaml).expect("valid check")
}

fn manifests(yaml: &str) -> Manifests {
    let mut manifests = Manifests::default();
    for d in parse_documents(yaml).expect("yaml") {
        manifests.upsert(d).expect("named");
    }
    manifests
}

fn run(check: &StatusCheck, doc: &StatusDocument, manifests: &Manifests) -> Verdict {
    let before = HashMap::new();
    let ctx = CheckContext {
        manifests,
        pools: &AddressPools::standard(),
        generations_before: &before,
    };
    evaluate(check, doc, &ctx)
}

fn cond(type_: &str, status: &str, reason: &str, generation: i64) -> serde_json::Value {
    json!({"type": type_, "status": status, "reason": reason, "observedGeneration": generation})
}

fn healthy_gateway(generation: i64) -> serde_json::Value {
    json!({
        "kind": "Gateway",
        "metadata": {"namespace": "infra", "name": "gw", "generation": generation},
        "status": {
            "conditions": [cond("Accepted", "True", "Accepted", generation), cond("Programmed", "True", "Programmed", generation)],
            "addresses": [{"type": "IPAddress", "value": "127.0.100.1"}],
            "listeners": [{
                "name": "http",
                "supportedKinds": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute"}],
                "attachedRoutes": 1,
                "conditions": [cond("Accepted", "True", "Accepted", generation), cond("ResolvedRefs", "True", "ResolvedRefs", generation), cond("Programmed", "True", "Programmed", generation)],
            }],
        },
    })
}

fn route(parent_ref: serde_json::Value, conditions: serde_json::Value) -> serde_json::Value {
    json!({
        "kind": "HTTPRoute",
        "metadata": {"namespace": "infra", "name": "r", "generation": 1},
        "status": {"parents": [{
            "parentRef": parent_ref,
            "controllerName": CONTROLLER_NAME,
            "conditions": conditions,
        }]},
    })
}

const ROUTES_ACCEPTED: &str =
    "check: gateway-routes-accepted\ngateway: infra/gw\nroutes: [infra/r]\n";

#[test]
fn routes_accepted_needs_group_and_kind_written_out() {
    let accepted = json!([cond("Accepted", "True", "Accepted", 1)]);
    let full = route(
        json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}),
        accepted.clone(),
    );
    let status = doc(json!({"objects": [healthy_gateway(1), full]}));
    assert_eq!(
        run(&check(ROUTES_ACCEPTED), &status, &Manifests::default()),
        Verdict::Pass
    );

    let terse = route(json!({"name": "gw"}), accepted);
    let status = doc(json!({"objects": [healthy_gateway(1), terse]}));
    let Verdict::NotYet(reason) = run(&check(ROUTES_ACCEPTED), &status, &Manifests::default())
    else {
        panic!("a parentRef without group and kind must not pass");
    };
    assert!(reason.contains("no status.parents entry"), "{reason}");
}

#[test]
fn stale_observed_generation_is_not_yet() {
    let stale = route(
        json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw"}),
        json!([cond("Accepted", "True", "Accepted", 0)]),
    );
    let status = doc(json!({"objects": [healthy_gateway(1), stale]}));
    assert!(
        matches!(run(&check(ROUTES_ACCEPTED), &status, &Manifests::default()), Verdict::NotYet(r) if r.contains("observedGeneration"))
    );
}

#[test]
fn route_condition_finds_the_parent_by_name() {
    let c = check(
        "check: route-condition\nroute: infra/r\nparent: infra/gw\ncondition: {type: ResolvedRefs, status: 'False', reason: BackendNotFound}\n",
    );
    let r = route(
        json!({"name": "gw"}),
        json!([cond("ResolvedRefs", "False", "BackendNotFound", 1)]),
    );
    assert_eq!(
        run(&c, &doc(json!({"objects": [r]})), &Manifests::default()),
        Verdict::Pass
    );
    let other = route(
        json!({"name": "other"}),
        json!([cond("ResolvedRefs", "False", "BackendNotFound", 1)]),
    );
    assert!(matches!(
        run(&c, &doc(json!({"objects": [other]})), &Manifests::default()),
        Verdict::NotYet(_)
    ));
}

#[test]
fn no_accepted_parents_needs_an_empty_list_to_be_stable() {
    let c = check("check: route-no-accepted-parents\nroute: infra/r\n");
    let empty = json!({"kind": "HTTPRoute", "metadata": {"namespace": "infra", "name": "r", "generation": 1}, "status": {"parents": []}});
    assert_eq!(
        run(&c, &doc(json!({"objects": [empty]})), &Manifests::default()),
        Verdict::PassIfStable
    );
    let refused = route(
        json!({"name": "gw"}),
        json!([cond("Accepted", "False", "NotAllowedByListeners", 1)]),
    );
    assert_eq!(
        run(
            &c,
            &doc(json!({"objects": [refused]})),
            &Manifests::default()
        ),
        Verdict::Pass
    );
}

#[test]
fn gateway_listeners_compare_count_routes_conditions_and_kinds() {
    let status = doc(json!({"objects": [healthy_gateway(1)]}));
    let good = check(
        "check: gateway-listeners\ngateway: infra/gw\nlisteners:\n- {name: http, supported_kinds: [HTTPRoute], attached_routes: 1, conditions: [{type: Accepted, status: 'True', reason: any}]}\n",
    );
    assert_eq!(run(&good, &status, &Manifests::default()), Verdict::Pass);
    let wrong_count = check(
        "check: gateway-listeners\ngateway: infra/gw\nlisteners:\n- {name: http, supported_kinds: [HTTPRoute], attached_routes: 2}\n",
    );
    assert!(
        matches!(run(&wrong_count, &status, &Manifests::default()), Verdict::NotYet(r) if r.contains("attachedRoutes 1, want 2"))
    );
    let empty_kinds = check(
        "check: gateway-listeners\ngateway: infra/gw\nlisteners:\n- {name: http, supported_kinds: [], attached_routes: 1}\n",
    );
    assert!(
        matches!(run(&empty_kinds, &status, &Manifests::default()), Verdict::NotYet(r) if r.contains("must be empty"))
    );
}

#[test]
fn namespaces_ready_skips_annotated_gateways() {
    let m = manifests(
        "kind: Gateway\nmetadata: {namespace: infra, name: gw}\n---\n\
         kind: Gateway\nmetadata: {namespace: infra, name: lazy, annotations: {gateway-api/skip-this-for-readiness: 'true'}}\n",
    );
    let c = check("check: namespaces-ready\nnamespaces: [infra]\n");
    assert_eq!(
        run(&c, &doc(json!({"objects": [healthy_gateway(1)]})), &m),
        Verdict::Pass
    );
    let mut unready = healthy_gateway(1);
    unready["status"]["conditions"][1] = cond("Programmed", "False", "Invalid", 1);
    assert!(matches!(
        run(&c, &doc(json!({"objects": [unready]})), &m),
        Verdict::NotYet(_)
    ));
}

#[test]
fn generation_changed_compares_with_the_snapshot_before_the_phase() {
    let c = check("check: generation-changed\nkind: Gateway\nname: infra/gw\n");
    let mut before = HashMap::new();
    before.insert(ObjectKey::new("Gateway", "infra/gw"), Some(1));
    let empty = Manifests::default();
    let ctx = CheckContext {
        manifests: &empty,
        pools: &AddressPools::standard(),
        generations_before: &before,
    };
    assert!(matches!(
        evaluate(&c, &doc(json!({"objects": [healthy_gateway(1)]})), &ctx),
        Verdict::NotYet(_)
    ));
    assert_eq!(
        evaluate(&c, &doc(json!({"objects": [healthy_gateway(2)]})), &ctx),
        Verdict::Pass
    );
}

#[test]
fn static_addresses_must_report_only_the_usable_one() {
    let m = manifests(
        "kind: Gateway\nmetadata: {namespace: infra, name: gw}\nspec: {addresses: [{type: IPAddress, value: 127.0.101.10}]}\n",
    );
    let c = check("check: gateway-status-addresses\ngateway: infra/gw\nspec_addresses_count: 1\n");
    let mut gw = healthy_gateway(1);
    gw["status"]["addresses"] = json!([{"type": "IPAddress", "value": "127.0.101.10"}]);
    assert_eq!(
        run(&c, &doc(json!({"objects": [gw.clone()]})), &m),
        Verdict::Pass
    );
    gw["status"]["addresses"] = json!([{"type": "IPAddress", "value": "127.0.101.10"}, {"type": "IPAddress", "value": "198.51.100.7"}]);
    assert!(
        matches!(run(&c, &doc(json!({"objects": [gw]})), &m), Verdict::NotYet(r) if r.contains("198.51.100.7"))
    );
}

#[test]
fn zero_routes_accepts_no_listeners_or_one_empty_listener() {
    let c = check("check: gateway-zero-routes\ngateway: infra/gw\n");
    let mut gw = healthy_gateway(1);
    assert!(matches!(
        run(
            &c,
            &doc(json!({"objects": [gw.clone()]})),
            &Manifests::default()
        ),
        Verdict::NotYet(_)
    ));
    gw["status"]["listeners"][0]["attachedRoutes"] = json!(0);
    assert_eq!(
        run(&c, &doc(json!({"objects": [gw]})), &Manifests::default()),
        Verdict::Pass
    );
}
