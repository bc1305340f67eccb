//! The Kubernetes source and status writer against a fake API server: kube-rs's client on a
//! `tower-test` mock service, answered by [`FakeApi`].

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use futures::channel::mpsc as chan;
use http::{Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::StreamBody;
use model::{Kind, ResourceKey};
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use super::*;

type Frames = chan::UnboundedReceiver<Result<Frame<Bytes>, Infallible>>;
type FakeBody = StreamBody<Frames>;

const CONTROLLER: &str = "portcullis.dev/gateway-controller";
const WAIT: Duration = Duration::from_secs(20);

/// An API server in memory: lists per resource path, open watches the test can push
/// events into, objects served for status reads, and a log of every request.
#[derive(Clone, Default)]
struct FakeApi(Arc<Mutex<Inner>>);

#[derive(Default)]
struct Inner {
    /// List path (`/apis/g/v/plural`) to items.
    lists: HashMap<String, Vec<Value>>,
    /// List paths answered 404 (CRD not installed).
    missing: HashSet<String>,
    /// List paths whose answer waits for the notify.
    held: HashMap<String, Arc<Notify>>,
    /// Open watch streams by list path (by object URL for a watch of one object).
    watches: HashMap<String, chan::UnboundedSender<Result<Frame<Bytes>, Infallible>>>,
    /// Objects by their URL (`.../namespaces/ns/plural/name`), for GET of `/status`.
    objects: HashMap<String, Value>,
    /// Method, path and query, and body of every request.
    requests: Vec<(Method, String, Value)>,
}

// === impl FakeApi ===

impl FakeApi {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A kube client answered by this fake.
    fn client(&self) -> ::kube::Client {
        let (service, mut handle) =
            tower_test::mock::pair::<Request<::kube::client::Body>, Response<FakeBody>>();
        let fake = self.clone();
        tokio::spawn(async move {
            while let Some((request, respond)) = handle.next_request().await {
                let fake = fake.clone();
                tokio::spawn(async move {
                    let response = fake.answer(request).await;
                    respond.send_response(response);
                });
            }
        });
        ::kube::Client::new(service, "default")
    }

    async fn answer(&self, request: Request<::kube::client::Body>) -> Response<FakeBody> {
        let method = request.method().clone();
        let path = request.uri().path().to_string();
        let query = request.uri().query().unwrap_or_default().to_string();
        let body = match request.into_body().collect_bytes().await {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        self.lock()
            .requests
            .push((method.clone(), format!("{path}?{query}"), body.clone()));
        if method == Method::PATCH {
            return respond(StatusCode::OK, &body);
        }
        if query.contains("watch=true") {
            let (tx, rx) = chan::unbounded();
            // The watch of one named object is keyed by that object's URL.
            let key = match field_selector(&query)
                .into_iter()
                .find(|(field, _)| *field == "metadata.name")
            {
                Some((_, name)) => format!("{path}/{name}"),
                None => path,
            };
            self.lock().watches.insert(key, tx);
            return Response::new(StreamBody::new(rx));
        }
        let held = self.lock().held.get(&path).cloned();
        if let Some(notify) = held {
            notify.notified().await;
        }
        let inner = self.lock();
        // A namespaced collection is served from the cluster-wide list.
        let (all_path, namespace) = match namespaced_collection(&path) {
            Some((all, namespace)) => (all, Some(namespace)),
            None => (path.clone(), None),
        };
        if let Some(items) = inner.lists.get(&all_path) {
            let selector = field_selector(&query);
            let items: Vec<&Value> = items
                .iter()
                .filter(|item| {
                    namespace
                        .as_deref()
                        .is_none_or(|ns| item["metadata"]["namespace"] == ns)
                        && selector.iter().all(|(field, value)| {
                            let actual = match *field {
                                "metadata.name" => &item["metadata"]["name"],
                                "type" => &item["type"],
                                _ => &Value::Null,
                            };
                            actual.as_str().unwrap_or_default() == value
                        })
                })
                .collect();
            let list = json!({
                "apiVersion": "v1", "kind": "List",
                "metadata": {"resourceVersion": "100"},
                "items": items,
            });
            return respond(StatusCode::OK, &list);
        }
        if let Some(object) = inner.objects.get(path.trim_end_matches("/status")) {
            return respond(StatusCode::OK, object);
        }
        let missing = json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "the server could not find the requested resource",
            "reason": "NotFound", "code": 404,
        });
        respond(StatusCode::NOT_FOUND, &missing)
    }

    /// Every watched kind listed with no objects.
    fn empty() -> Self {
        let fake = Self::default();
        for watched in WATCHED {
            fake.lock().lists.insert(list_path(watched), Vec::new());
        }
        fake
    }

    fn add(&self, object: Value) {
        let kind = object["kind"].as_str().unwrap_or_default().to_string();
        let Some(watched) = WATCHED.iter().find(|w| w.kind.as_str() == kind) else {
            panic!("not a watched kind: {kind}");
        };
        let mut inner = self.lock();
        inner
            .objects
            .insert(object_path(watched, &object), object.clone());
        inner
            .lists
            .entry(list_path(watched))
            .or_default()
            .push(object);
    }

    fn push_event(&self, kind: Kind, kind_of_event: &str, object: Value) {
        let path = list_path(watched(kind));
        let line = format!("{}\n", json!({"type": kind_of_event, "object": object}));
        let inner = self.lock();
        let Some(stream) = inner.watches.get(&path) else {
            panic!("no watch open on {path}");
        };
        let _ = stream.unbounded_send(Ok(Frame::data(Bytes::from(line))));
    }

    /// Pushes an event into the watch of one object, keyed by the object's URL.
    fn push_event_at(&self, path: &str, kind_of_event: &str, object: Value) {
        let line = format!("{}\n", json!({"type": kind_of_event, "object": object}));
        let inner = self.lock();
        let Some(stream) = inner.watches.get(path) else {
            panic!("no watch open on {path}");
        };
        let _ = stream.unbounded_send(Ok(Frame::data(Bytes::from(line))));
    }

    fn requests(&self) -> Vec<(Method, String, Value)> {
        self.lock().requests.clone()
    }

    fn watching(&self, kind: Kind) -> bool {
        self.lock().watches.contains_key(&list_path(watched(kind)))
    }

    fn watching_at(&self, path: &str) -> bool {
        self.lock().watches.contains_key(path)
    }
}

/// `/api/v1/namespaces/NS/PLURAL` as (`/api/v1/PLURAL`, `NS`).
fn namespaced_collection(path: &str) -> Option<(String, String)> {
    let (base, rest) = path.split_once("/namespaces/")?;
    let (namespace, plural) = rest.split_once('/')?;
    (!plural.contains('/')).then(|| (format!("{base}/{plural}"), namespace.to_string()))
}

/// The `fieldSelector` of a query as (field, value) pairs.
fn field_selector(query: &str) -> Vec<(&'static str, String)> {
    let Some(encoded) = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("fieldSelector="))
    else {
        return Vec::new();
    };
    let decoded = percent_decode(encoded);
    decoded
        .split(',')
        .filter_map(|term| {
            let (field, value) = term.split_once('=')?;
            let field = ["metadata.name", "type"]
                .into_iter()
                .find(|f| *f == field)?;
            Some((field, value.to_string()))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn respond(status: StatusCode, body: &Value) -> Response<FakeBody> {
    let (tx, rx) = chan::unbounded();
    let _ = tx.unbounded_send(Ok(Frame::data(Bytes::from(body.to_string()))));
    let mut response = Response::new(StreamBody::new(rx));
    *response.status_mut() = status;
    response
}

fn watched(kind: Kind) -> &'static Watched {
    match Watched::of(kind) {
        Some(watched) => watched,
        None => panic!("{kind} is not watched"),
    }
}

fn list_path(watched: &Watched) -> String {
    match watched.kind.group() {
        "" => format!("/api/{}/{}", watched.version, watched.plural),
        group => format!("/apis/{group}/{}/{}", watched.version, watched.plural),
    }
}

fn object_path(watched: &Watched, object: &Value) -> String {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let base = match watched.kind.group() {
        "" => format!("/api/{}", watched.version),
        group => format!("/apis/{group}/{}", watched.version),
    };
    match object["metadata"]["namespace"].as_str() {
        Some(ns) if watched.kind.namespaced() => {
            format!("{base}/namespaces/{ns}/{}/{name}", watched.plural)
        }
        _ => format!("{base}/{}/{name}", watched.plural),
    }
}

/// A manifest as the API server returns it: defaulted namespace, generation, uid,
/// resourceVersion and creation time.
fn stored(manifest: &Value, index: usize) -> Value {
    let mut object = manifest.clone();
    let kind = object["kind"].as_str().unwrap_or_default().to_string();
    let namespaced = WATCHED
        .iter()
        .find(|w| w.kind.as_str() == kind)
        .is_some_and(|w| w.kind.namespaced());
    let meta = &mut object["metadata"];
    if namespaced && meta.get("namespace").is_none() {
        meta["namespace"] = json!("default");
    }
    meta["generation"] = json!(1);
    meta["uid"] = json!(format!("00000000-0000-0000-0000-{index:012}"));
    meta["resourceVersion"] = json!(format!("{}", 10 + index));
    meta["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
    meta["managedFields"] = json!([{"manager": "kubectl", "operation": "Apply"}]);
    object
}

fn manifests(yaml: &str) -> Vec<Value> {
    match model::yaml::load(yaml) {
        Ok(documents) => documents.into_iter().map(|d| d.value).collect(),
        Err(error) => panic!("fixture YAML: {error}"),
    }
}

async fn ready(state: &mut watch::Receiver<Option<Arc<ClusterState>>>) -> Arc<ClusterState> {
    let waited = tokio::time::timeout(WAIT, state.wait_for(Option::is_some)).await;
    match waited.ok().and_then(Result::ok).and_then(|s| s.clone()) {
        Some(state) => state,
        None => panic!("no state published"),
    }
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !condition() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const ROUTE: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: site, namespace: demo}
spec:
  parentRefs: [{name: web}]
  rules: [{backendRefs: [{name: docs, port: 80}]}]
";

const BAD_ROUTE: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bad, namespace: demo}
spec:
  rules: [{matches: [{heders: []}]}]
";

#[tokio::test]
async fn publishes_only_after_every_kind_is_listed() {
    let fake = FakeApi::empty();
    for (i, object) in manifests(ROUTE).iter().enumerate() {
        fake.add(stored(object, i));
    }
    let secrets = Arc::new(Notify::new());
    fake.lock()
        .held
        .insert(list_path(watched(Kind::Secret)), secrets.clone());

    let mut state = watch_cluster(fake.client(), WATCHED, translate::referenced_objects);
    let others = WATCHED
        .iter()
        .filter(|w| w.blanket && w.kind != Kind::Secret);
    let others: Vec<Kind> = others.map(|w| w.kind).collect();
    eventually("every other kind to be watched", || {
        others.iter().all(|k| fake.watching(*k))
    })
    .await;
    tokio::task::yield_now().await;
    assert!(
        state.borrow().is_none(),
        "published before Secrets were listed"
    );

    secrets.notify_one();
    let state = ready(&mut state).await;
    let routes: Vec<_> = state
        .snapshot
        .http_routes
        .keys()
        .map(ToString::to_string)
        .collect();
    assert_eq!(routes, ["demo/site"]);
    let route = &state.snapshot.http_routes[&model::ObjectName::new("demo", "site")];
    assert_eq!(
        route.metadata.managed_fields, None,
        "managedFields are dropped"
    );
    assert!(state.errors.is_empty() && state.warnings.is_empty());
}

#[tokio::test]
async fn a_watch_event_publishes_a_new_snapshot() {
    let fake = FakeApi::empty();
    let mut state = watch_cluster(fake.client(), WATCHED, translate::referenced_objects);
    assert!(ready(&mut state).await.snapshot.http_routes.is_empty());
    eventually("the HTTPRoute watch", || fake.watching(Kind::HttpRoute)).await;

    let route = stored(&manifests(ROUTE)[0], 1);
    fake.push_event(Kind::HttpRoute, "ADDED", route.clone());
    let published = tokio::time::timeout(WAIT, state.changed()).await;
    assert!(matches!(published, Ok(Ok(()))));
    let current = state.borrow_and_update().clone();
    assert_eq!(current.map(|s| s.snapshot.http_routes.len()), Some(1));

    fake.push_event(Kind::HttpRoute, "DELETED", route);
    let published = tokio::time::timeout(WAIT, state.changed()).await;
    assert!(matches!(published, Ok(Ok(()))));
    let current = state.borrow_and_update().clone();
    assert_eq!(current.map(|s| s.snapshot.http_routes.len()), Some(0));
}

#[tokio::test]
async fn an_object_that_does_not_decode_is_left_out_and_reported() {
    let fake = FakeApi::empty();
    let objects = manifests(&format!("{ROUTE}---{BAD_ROUTE}"));
    for (i, object) in objects.iter().enumerate() {
        fake.add(stored(object, i));
    }
    let mut state = watch_cluster(fake.client(), WATCHED, translate::referenced_objects);
    let state = ready(&mut state).await;
    assert_eq!(state.snapshot.http_routes.len(), 1, "the good route stays");
    let errors: Vec<String> = state
        .errors
        .iter()
        .map(|e| format!("{}: {}", e.file.display(), e.path))
        .collect();
    assert_eq!(
        errors,
        ["HTTPRoute demo/bad: spec.rules[0].matches[0].heders"],
        "{:?}",
        state.errors
    );
}

#[tokio::test]
async fn fields_newer_than_our_core_types_are_ignored_but_not_in_gateway_api_kinds() {
    let fake = FakeApi::empty();
    let objects = manifests(
        "
apiVersion: v1
kind: Service
metadata: {name: docs, namespace: demo}
spec:
  ports: [{port: 80, fromTheFuture: true}]
  fromTheFuture: {a: 1}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: future, namespace: demo}
spec: {fromTheFuture: 1}
",
    );
    for (i, object) in objects.iter().enumerate() {
        fake.add(stored(object, i));
    }
    let mut state = watch_cluster(fake.client(), WATCHED, translate::referenced_objects);
    let state = ready(&mut state).await;
    let services: Vec<_> = state
        .snapshot
        .services
        .keys()
        .map(ToString::to_string)
        .collect();
    assert_eq!(services, ["demo/docs"]);
    assert!(state.snapshot.http_routes.is_empty());
    let errors: Vec<_> = state.errors.iter().map(|e| e.path.clone()).collect();
    assert_eq!(errors, ["spec.fromTheFuture"]);
}

#[tokio::test]
async fn a_kind_without_its_crd_is_empty_with_one_warning() {
    let fake = FakeApi::empty();
    {
        let mut inner = fake.lock();
        let path = list_path(watched(Kind::TcpRoute));
        inner.lists.remove(&path);
        inner.missing.insert(path);
    }
    for (i, object) in manifests(ROUTE).iter().enumerate() {
        fake.add(stored(object, i));
    }
    let mut state = watch_cluster(fake.client(), WATCHED, translate::referenced_objects);
    let state = ready(&mut state).await;
    assert_eq!(state.snapshot.http_routes.len(), 1);
    assert!(state.snapshot.tcp_routes.is_empty());
    let warnings: Vec<String> = state.warnings.iter().map(|w| w.message.clone()).collect();
    assert_eq!(
        warnings,
        [
            "gateway.networking.k8s.io/v1alpha2 TCPRoute is not served by the API server (CRD \
          not installed?); no TCPRoute objects are read"
        ]
    );
}

const POLICY_SECRETS: &str = "
apiVersion: portcullis.dev/v1alpha1
kind: AuthenticationPolicy
metadata: {name: login, namespace: demo}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: site}]
  basicAuth: {users: {name: htpasswd}}
---
apiVersion: v1
kind: Secret
metadata: {name: htpasswd, namespace: demo}
type: Opaque
data: {.htpasswd: YWxpY2U6e1NIQX0=}
---
apiVersion: v1
kind: Secret
metadata: {name: token, namespace: demo}
type: Opaque
data: {.htpasswd: Ym9iOntTSEF9}
---
apiVersion: v1
kind: Secret
metadata: {name: unrelated, namespace: demo}
type: Opaque
data: {password: aHVudGVyMg==}
---
apiVersion: v1
kind: Secret
metadata: {name: site-cert, namespace: demo}
type: kubernetes.io/tls
data: {tls.crt: '', tls.key: ''}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: kube-root-ca.crt, namespace: demo}
data: {ca.crt: 'not read'}
";

fn secret_names(state: &ClusterState) -> Vec<String> {
    state
        .snapshot
        .secrets
        .keys()
        .map(ToString::to_string)
        .collect()
}

#[tokio::test]
async fn other_secrets_and_config_maps_are_read_only_where_something_names_them() {
    let fake = FakeApi::empty();
    let objects: Vec<Value> = manifests(POLICY_SECRETS)
        .iter()
        .enumerate()
        .map(|(i, object)| stored(object, i))
        .collect();
    for object in &objects {
        fake.add(object.clone());
    }
    let mut state = watch_cluster(fake.client(), WATCHED, translate::referenced_objects);
    let first = ready(&mut state).await;
    assert_eq!(
        secret_names(&first),
        ["demo/htpasswd", "demo/site-cert"],
        "TLS Secrets by type, the policy's Secret by name, nothing else"
    );
    assert!(
        first.snapshot.config_maps.is_empty(),
        "no ConfigMap is named"
    );
    let by_name: Vec<String> = fake
        .requests()
        .into_iter()
        .map(|(_, url, _)| url)
        .filter(|url| url.contains("metadata.name"))
        .collect();
    assert!(
        by_name.iter().all(|url| {
            url.starts_with("/api/v1/namespaces/demo/secrets?")
                && url.contains("fieldSelector=metadata.name%3Dhtpasswd")
        }),
        "{by_name:?}"
    );
    assert!(!by_name.is_empty());

    // The policy now names another Secret: it is read, and the first one is dropped.
    let mut policy = objects[0].clone();
    policy["spec"]["basicAuth"]["users"]["name"] = json!("token");
    policy["metadata"]["resourceVersion"] = json!("50");
    fake.push_event(Kind::AuthenticationPolicy, "MODIFIED", policy);
    let token = "/api/v1/namespaces/demo/secrets/token";
    eventually("a watch on the named Secret", || fake.watching_at(token)).await;
    let second = tokio::time::timeout(
        WAIT,
        state.wait_for(|s| {
            s.as_ref()
                .is_some_and(|s| secret_names(s).contains(&"demo/token".into()))
        }),
    )
    .await;
    let second = second.ok().and_then(Result::ok).and_then(|s| s.clone());
    let Some(second) = second else {
        panic!("the newly named Secret never arrived");
    };
    assert_eq!(secret_names(&second), ["demo/site-cert", "demo/token"]);

    // A change to the named Secret arrives through its own watch.
    let mut changed = objects[2].clone();
    changed["data"][".htpasswd"] = json!("Y2Fyb2w6e1NIQX0=");
    changed["metadata"]["resourceVersion"] = json!("51");
    fake.push_event_at(token, "MODIFIED", changed);
    let key = model::ObjectName::new("demo", "token");
    let updated = tokio::time::timeout(
        WAIT,
        state.wait_for(|s| {
            s.as_ref()
                .and_then(|s| s.snapshot.secrets.get(&key))
                .is_some_and(|secret| {
                    secret
                        .data
                        .as_ref()
                        .and_then(|d| d.get(".htpasswd"))
                        .map(|b| b.0.as_slice())
                        == Some(b"carol:{SHA}".as_slice())
                })
        }),
    )
    .await;
    assert!(
        updated.is_ok_and(|r| r.is_ok()),
        "the Secret's change never arrived"
    );
}

#[tokio::test]
async fn the_directory_and_the_cluster_translate_the_same() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/basic");
    let mut directory = crate::Directory::new(&root);
    assert!(directory.rescan().is_ok());
    assert!(directory.store().errors().is_empty());
    let from_files = directory.store().snapshot();

    let fake = FakeApi::empty();
    let mut index = 0;
    let mut files: Vec<_> = std::fs::read_dir(&root)
        .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for object in manifests(&text) {
            fake.add(stored(&object, index));
            index += 1;
        }
    }
    assert!(index > 5, "examples/basic has manifests");
    let mut state = watch_cluster(fake.client(), WATCHED, translate::referenced_objects);
    let from_cluster = ready(&mut state).await;
    assert!(from_cluster.errors.is_empty(), "{:?}", from_cluster.errors);

    let options = translate::Options::default();
    let expected = translate::translate(&from_files, &options);
    let actual = translate::translate(&from_cluster.snapshot, &options);
    let json = |v: &ir::Config| serde_json::to_value(v).unwrap_or_default();
    assert_eq!(json(&actual.config), json(&expected.config));
    assert_eq!(actual.status, expected.status);
    assert!(!expected.status.0.is_empty());
}

// === status ===

const TWO_GATEWAYS: &str = "
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portcullis}
spec: {controllerName: portcullis.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: internal, namespace: infra}
spec:
  gatewayClassName: portcullis
  listeners:
  - {name: http, port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: public, namespace: infra}
spec:
  gatewayClassName: portcullis
  listeners:
  - {name: web, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
---
apiVersion: v1
kind: Service
metadata: {name: app, namespace: shop}
spec: {ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: store, namespace: shop, generation: 3}
spec:
  parentRefs:
  - {name: internal, namespace: infra}
  - {name: public, namespace: infra, sectionName: web}
  rules: [{backendRefs: [{name: app, port: 80}]}]
";

/// The status document object of the route, as the binary builds it (translate's status,
/// stamped with a time).
fn desired_route_status() -> Value {
    let decoded = model::decode::decode_file(Path::new("fixture.yaml"), TWO_GATEWAYS);
    let Ok(contents) = decoded else {
        panic!("fixture: {decoded:?}")
    };
    let objects = contents.objects.into_iter().map(|(o, _)| o);
    let snapshot = model::Snapshot::from_objects(objects);
    let mut status = translate::translate(&snapshot, &translate::Options::default()).status;
    for resource in status.0.values_mut() {
        for condition in resource.conditions_mut() {
            condition.last_transition_time = Some("2026-11-26T12:00:00Z".into());
        }
    }
    let key = ResourceKey::new(Kind::HttpRoute, "shop", "store");
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "store", "namespace": "shop", "generation": 3},
        "status": serde_json::to_value(&status.0[&key]).unwrap_or_default(),
    })
}

/// The route as the API server holds it: another controller's parent entry, and an
/// entry of ours from an earlier write whose Accepted condition has not changed since.
fn current_route() -> Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "store", "namespace": "shop", "generation": 3,
                     "resourceVersion": "4711"},
        "spec": {},
        "status": {"parents": [
            {
                "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                              "namespace": "infra", "name": "other"},
                "controllerName": "example.com/other-controller",
                "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                "message": "", "observedGeneration": 2,
                                "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            },
            {
                "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                              "namespace": "infra", "name": "internal"},
                "controllerName": CONTROLLER,
                "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                "message": "", "observedGeneration": 2,
                                "lastTransitionTime": "2026-02-02T00:00:00Z"}],
            },
        ]},
    })
}

fn condition(kind: &str, message: &str, time: &str) -> Value {
    json!({
        "type": kind, "status": "True", "reason": kind, "message": message,
        "observedGeneration": 3, "lastTransitionTime": time,
    })
}

/// The apply body for an HTTPRoute accepted by two Gateways, field for field: the other
/// controller's entry kept as it was, one entry per parentRef of ours with the parentRef
/// echoed (group and kind written out; namespace and sectionName as given),
/// `controllerName`, and conditions with `observedGeneration` of the route's generation and
/// the unchanged Accepted condition keeping its earlier `lastTransitionTime`.
fn expected_route_patch() -> Value {
    let new = "2026-11-26T12:00:00Z";
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "store", "namespace": "shop", "resourceVersion": "4711"},
        "status": {"parents": [
            {
                "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                              "namespace": "infra", "name": "other"},
                "controllerName": "example.com/other-controller",
                "conditions": [{"type": "Accepted", "status": "True", "reason": "Accepted",
                                "message": "", "observedGeneration": 2,
                                "lastTransitionTime": "2026-01-01T00:00:00Z"}],
            },
            {
                "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                              "namespace": "infra", "name": "internal"},
                "controllerName": CONTROLLER,
                "conditions": [
                    condition("Accepted", "accepted", "2026-02-02T00:00:00Z"),
                    condition("ResolvedRefs", "resolved", new),
                ],
            },
            {
                "parentRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                              "namespace": "infra", "name": "public", "sectionName": "web"},
                "controllerName": CONTROLLER,
                "conditions": [
                    condition("Accepted", "accepted", new),
                    condition("ResolvedRefs", "resolved", new),
                ],
            },
        ]},
    })
}

#[test]
fn route_patch_keeps_other_controllers_and_unchanged_transition_times() {
    let body = patch_body(
        watched(Kind::HttpRoute),
        &current_route(),
        &desired_route_status(),
        CONTROLLER,
    );
    assert_eq!(body, Some(expected_route_patch()));
}

#[test]
fn no_patch_when_the_cluster_already_shows_the_status() {
    let desired = desired_route_status();
    let mut current = current_route();
    let Some(written) = patch_body(watched(Kind::HttpRoute), &current, &desired, CONTROLLER) else {
        panic!("first write expected");
    };
    current["status"] = written["status"].clone();
    assert_eq!(
        patch_body(watched(Kind::HttpRoute), &current, &desired, CONTROLLER),
        None
    );
}

fn patches(fake: &FakeApi) -> Vec<(String, Value)> {
    fake.requests()
        .into_iter()
        .filter(|(method, _, _)| method == Method::PATCH)
        .map(|(_, url, body)| (url, body))
        .collect()
}

#[tokio::test]
async fn only_the_leader_writes_status() {
    let fake = FakeApi::default();
    fake.add(current_route());
    let (leader_tx, leader) = watch::channel(false);
    let writer = StatusWriter::spawn(fake.client(), CONTROLLER.into(), leader);

    writer.submit(vec![desired_route_status()]);
    // Give the writer every chance to (wrongly) write.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        fake.requests().is_empty(),
        "a follower sent {:?}",
        fake.requests()
    );

    leader_tx.send_replace(true);
    eventually("a status patch", || !patches(&fake).is_empty()).await;
    let written = patches(&fake);
    assert_eq!(written.len(), 1);
    let (url, body) = &written[0];
    assert_eq!(
        url,
        "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/store/status?\
         &force=true&fieldManager=portcullis"
    );
    assert_eq!(body, &expected_route_patch());
    assert_eq!(
        writer
            .metrics()
            .writes
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );

    // The same status again: nothing to write.
    writer.submit(vec![desired_route_status()]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(patches(&fake).len(), 1);

    // Leadership lost: a changed status is not written.
    leader_tx.send_replace(false);
    let mut changed = desired_route_status();
    changed["metadata"]["generation"] = json!(4);
    changed["status"]["parents"][0]["conditions"][0]["observedGeneration"] = json!(4);
    writer.submit(vec![changed]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(patches(&fake).len(), 1);
}

#[tokio::test]
async fn the_leader_applies_provisioned_objects_once() {
    let fake = FakeApi::default();
    let (_leader_tx, leader) = watch::channel(true);
    let writer = StatusWriter::spawn(fake.client(), CONTROLLER.into(), leader);
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "eg-portcullis", "namespace": "apps"},
        "spec": {"selector": {"matchLabels": {"gateway.networking.k8s.io/gateway-name": "eg"}}},
    });
    let service = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "eg-portcullis", "namespace": "apps"},
        "spec": {"type": "LoadBalancer"},
    });
    writer.provision(vec![deployment.clone(), service.clone()]);
    eventually("two applies", || patches(&fake).len() == 2).await;
    assert_eq!(
        patches(&fake),
        [
            (
                "/apis/apps/v1/namespaces/apps/deployments/eg-portcullis?&force=true&fieldManager=portcullis"
                    .to_string(),
                deployment.clone()
            ),
            (
                "/api/v1/namespaces/apps/services/eg-portcullis?&force=true&fieldManager=portcullis"
                    .to_string(),
                service.clone()
            ),
        ]
    );
    writer.provision(vec![deployment, service]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        patches(&fake).len(),
        2,
        "unchanged objects are not applied again"
    );
}

#[test]
fn gateway_patch_keeps_transition_times_of_unchanged_conditions_and_listeners() {
    let accepted = |time: &str| {
        json!({"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
               "observedGeneration": 2, "lastTransitionTime": time})
    };
    let programmed = |status: &str, time: &str| {
        json!({"type": "Programmed", "status": status, "reason": "Programmed", "message": "",
               "observedGeneration": 2, "lastTransitionTime": time})
    };
    let status = |gateway: Vec<Value>, listener: Vec<Value>| {
        json!({
            "addresses": [],
            "conditions": gateway,
            "listeners": [{"name": "http", "attachedRoutes": 1, "conditions": listener,
                           "supportedKinds": [{"group": "gateway.networking.k8s.io",
                                               "kind": "HTTPRoute"}]}],
        })
    };
    let old = "2026-01-01T00:00:00Z";
    let new = "2026-11-26T12:00:00Z";
    let mut current = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "web", "namespace": "infra", "resourceVersion": "9"},
        "status": status(
            vec![accepted(old), programmed("False", old)],
            vec![accepted(old)],
        ),
    });
    // Another manager's condition type: the list is a map keyed by type, so it is neither
    // sent nor a reason to write.
    if let Some(conditions) = current["status"]["conditions"].as_array_mut() {
        conditions.push(json!({"type": "example.com/Healthy", "status": "True"}));
    }
    let desired = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": "web", "namespace": "infra", "generation": 2},
        "status": status(vec![accepted(new), programmed("True", new)], vec![accepted(new)]),
    });
    let Some(body) = patch_body(watched(Kind::Gateway), &current, &desired, CONTROLLER) else {
        panic!("Programmed changed: a write is due");
    };
    assert_eq!(
        body,
        json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
            "metadata": {"name": "web", "namespace": "infra", "resourceVersion": "9"},
            "status": status(vec![accepted(old), programmed("True", new)], vec![accepted(old)]),
        })
    );
    current["status"]["conditions"][1] = programmed("True", new);
    assert_eq!(
        patch_body(watched(Kind::Gateway), &current, &desired, CONTROLLER),
        None
    );
}

#[test]
fn policy_patch_keeps_other_controllers_ancestors_and_unchanged_times() {
    let accepted = |time: &str| {
        json!({"type": "Accepted", "status": "True", "reason": "Accepted", "message": "",
               "observedGeneration": 1, "lastTransitionTime": time})
    };
    let ancestor = |gateway: &str, controller: &str, time: &str| {
        json!({"ancestorRef": {"group": "gateway.networking.k8s.io", "kind": "Gateway",
                               "namespace": "infra", "name": gateway},
               "controllerName": controller, "conditions": [accepted(time)]})
    };
    let old = "2026-01-01T00:00:00Z";
    let new = "2026-11-26T12:00:00Z";
    let current = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
        "metadata": {"name": "tls", "namespace": "apps", "resourceVersion": "4"},
        "status": {"ancestors": [
            ancestor("theirs", "example.com/other", old),
            ancestor("web", CONTROLLER, old),
        ]},
    });
    let desired = json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "BackendTLSPolicy",
        "metadata": {"name": "tls", "namespace": "apps", "generation": 1},
        "status": {"ancestors": [ancestor("web", CONTROLLER, new), ancestor("edge", CONTROLLER, new)]},
    });
    let Some(body) = patch_body(
        watched(Kind::BackendTlsPolicy),
        &current,
        &desired,
        CONTROLLER,
    ) else {
        panic!("a new ancestor: a write is due");
    };
    assert_eq!(
        body["status"]["ancestors"],
        json!([
            ancestor("theirs", "example.com/other", old),
            ancestor("web", CONTROLLER, old),
            ancestor("edge", CONTROLLER, new),
        ])
    );
}
