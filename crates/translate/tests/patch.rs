//! `translate::patch` against a full translation: for every fixture, each HTTPRoute removed,
//! copied under a new name, edited, and those changes chained (a patch of a patch), the
//! patched config must be the one `translate` returns for the same snapshot: the same
//! serialized config, and the same ranks behind each listener's order.

use std::path::Path;
use std::sync::Arc;

use model::decode::decode_file;
use model::gw::httproutes::HttpRoute;
use model::{ObjectName, Snapshot};

fn options() -> translate::Options {
    translate::Options {
        address_pool: Some("127.0.100.0/30".parse().expect("cidr")),
        ..translate::Options::default()
    }
}

fn fixtures() -> Vec<(String, Snapshot)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .expect("fixtures directory")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path).expect("fixture is readable");
            let contents = decode_file(&path, &text).expect("fixture decodes");
            let snapshot =
                Snapshot::from_objects(contents.objects.into_iter().map(|(object, _)| object));
            (path.display().to_string(), snapshot)
        })
        .collect()
}

/// A candidate's route, rule index, match index and rank.
type Placed = (String, usize, usize, usize);

/// Per listener: each candidate, in table order.
fn ranks(config: &ir::Config) -> Vec<(String, Vec<Placed>)> {
    let mut out = Vec::new();
    for (addr, bind) in &config.binds {
        let listeners = bind.http.iter().chain(bind.consumers.values());
        for listener in listeners {
            let candidates = listener
                .routes
                .candidates()
                .iter()
                .map(|c| {
                    let id = &c.rule.id;
                    (
                        format!("{}/{}", id.namespace, id.name),
                        id.rule,
                        c.match_index,
                        c.route_rank,
                    )
                })
                .collect();
            out.push((
                format!("{addr} {} {}", listener.gateway, listener.name),
                candidates,
            ));
        }
    }
    out
}

/// Patches `previous` (the config of `before`) for `after`; when the patch applies, checks it
/// against a full translation and returns it.
fn check(
    context: &str,
    before: &Snapshot,
    previous: &ir::Config,
    after: &Snapshot,
) -> Option<ir::Config> {
    let patched = translate::patch(before, previous, after, &options())?;
    let full = translate::translate(after, &options()).config;
    assert_eq!(
        serde_json::to_value(&patched).expect("serializes"),
        serde_json::to_value(&full).expect("serializes"),
        "{context}: the patched config differs from a full translation"
    );
    assert_eq!(ranks(&patched), ranks(&full), "{context}: ranks differ");
    Some(patched)
}

/// A copy of a route under another name, with its own hostname added when it has hostnames
/// (so that it does not only shadow the original), created at `created` (RFC 3339) when
/// given: routes without a timestamp come before every route with one.
fn copy_of(
    name: &ObjectName,
    route: &HttpRoute,
    suffix: &str,
    created: Option<&str>,
) -> (ObjectName, Arc<HttpRoute>) {
    let mut copy = route.clone();
    if let Some(created) = created {
        copy.metadata.creation_timestamp =
            Some(serde_json::from_value(serde_json::json!(created)).expect("a timestamp"));
    }
    let new_name = format!("{}{suffix}", name.name);
    copy.metadata.name = Some(new_name.clone());
    if let Some(hostnames) = &mut copy.spec.hostnames {
        hostnames.push(format!("{new_name}.patched.example"));
    }
    (ObjectName::new(&name.namespace, &new_name), Arc::new(copy))
}

/// An edit: its first rule dropped when it has several, else a hostname added.
fn edited(route: &HttpRoute) -> HttpRoute {
    let mut edited = route.clone();
    match &mut edited.spec.rules {
        Some(rules) if rules.len() > 1 => {
            rules.remove(0);
        }
        _ => edited
            .spec
            .hostnames
            .get_or_insert_with(Vec::new)
            .push("edited.patched.example".into()),
    }
    edited.metadata.generation = Some(edited.metadata.generation.unwrap_or(1) + 1);
    edited
}

#[test]
fn patches_equal_full_translations() {
    let mut applied = 0;
    let mut declined = 0;
    for (file, base) in fixtures() {
        let config = translate::translate(&base, &options()).config;
        let names: Vec<ObjectName> = base.http_routes.keys().cloned().collect();
        let mut count = |result: Option<ir::Config>| match result {
            Some(_) => applied += 1,
            None => declined += 1,
        };
        // Nothing changed.
        count(check(&format!("{file}: unchanged"), &base, &config, &base));
        for name in &names {
            let route = Arc::clone(&base.http_routes[name]);

            let mut without = base.clone();
            without.http_routes.remove(name);
            let removed = check(&format!("{file}: {name} removed"), &base, &config, &without);
            // Put back, from the patched config: a patch of a patch.
            if let Some(removed) = &removed {
                count(check(
                    &format!("{file}: {name} removed, then restored"),
                    &without,
                    removed,
                    &base,
                ));
            }
            count(removed);

            let mut with_copies = base.clone();
            let copies = [
                ("-a", None),
                ("-z", Some("2020-01-01T00:00:00Z")),
                ("0", Some("2030-01-01T00:00:00Z")),
            ];
            for (suffix, created) in copies {
                let (copy_name, copy) = copy_of(name, &route, suffix, created);
                with_copies.http_routes.insert(copy_name, copy);
            }
            let copied = check(
                &format!("{file}: {name} copied three times"),
                &base,
                &config,
                &with_copies,
            );
            // Then the original removed from the patched config.
            if let Some(copied) = &copied {
                let mut then_without = with_copies.clone();
                then_without.http_routes.remove(name);
                count(check(
                    &format!("{file}: {name} copied, then removed"),
                    &with_copies,
                    copied,
                    &then_without,
                ));
            }
            count(copied);

            let mut changed = base.clone();
            changed
                .http_routes
                .insert(name.clone(), Arc::new(edited(&route)));
            count(check(
                &format!("{file}: {name} edited"),
                &base,
                &config,
                &changed,
            ));
        }
    }
    // Most fixtures have GRPCRoutes, policies or ListenerSets, where patching declines; the
    // rest must have been patched, or this test checks nothing.
    assert!(
        applied >= 60,
        "only {applied} patches applied ({declined} declined)"
    );
    assert!(declined > 0);
}

#[test]
fn declines_when_anything_but_http_routes_changes() {
    for (file, base) in fixtures() {
        let config = translate::translate(&base, &options()).config;
        for name in base.services.keys() {
            let mut without = base.clone();
            without.services.remove(name);
            assert!(
                translate::patch(&base, &config, &without, &options()).is_none(),
                "{file}: patched a Service removal"
            );
        }
        for name in base.gateways.keys() {
            let mut without = base.clone();
            without.gateways.remove(name);
            assert!(
                translate::patch(&base, &config, &without, &options()).is_none(),
                "{file}: patched a Gateway removal"
            );
        }
    }
}

#[test]
fn declines_beyond_the_change_limit() {
    let (_, base) = fixtures()
        .into_iter()
        .find(|(file, _)| file.ends_with("attachment.yaml"))
        .expect("attachment fixture");
    let config = translate::translate(&base, &options()).config;
    let (name, route) = base.http_routes.iter().next().expect("a route");
    let mut many = base.clone();
    for i in 0..=translate::MAX_CHANGED {
        let (copy_name, copy) = copy_of(name, route, &format!("-{i}"), None);
        many.http_routes.insert(copy_name, copy);
    }
    assert!(translate::patch(&base, &config, &many, &options()).is_none());
    let mut few = base.clone();
    for i in 0..translate::MAX_CHANGED {
        let (copy_name, copy) = copy_of(name, route, &format!("-{i}"), None);
        few.http_routes.insert(copy_name, copy);
    }
    assert!(check("64 copies", &base, &config, &few).is_some());
}
