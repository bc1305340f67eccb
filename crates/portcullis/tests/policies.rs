//! AuthenticationPolicy and RateLimitPolicy through the running gateway: JWT (valid,
//! expired, wrong audience, unknown key), basic auth (bcrypt and {SHA}), API keys (header and
//! query), a local limit holding under load, and a global limit shared by two gateway
//! processes through a Redis started by the test.

mod support;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use sha1::Digest;

use support::{Gateway, Upstream, free_port, send};

/// A signing key and its JWK.
struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    jwk: serde_json::Value,
}

fn signing_key(kid: &str) -> SigningKey {
    let pair = rcgen::KeyPair::generate().expect("P-256 key");
    let point = pair.public_key_raw();
    assert_eq!(point.len(), 65, "an uncompressed P-256 point");
    let jwk = serde_json::json!({
        "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    });
    let encoding = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).expect("PEM key");
    SigningKey {
        kid: kid.to_string(),
        encoding,
        jwk,
    }
}

fn token(key: &SigningKey, audience: &str, expires_in: i64) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let claims = serde_json::json!({
        "iss": "https://issuer.test", "aud": audience, "sub": "alice",
        "iat": now, "exp": now + expires_in,
    });
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, &claims, &key.encoding).expect("signs")
}

/// A Redis on a loopback port, stopped (by its PID) when dropped.
struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    async fn start() -> Self {
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        let redis = Self { child, port };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        redis
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn manifests(port: u16, backend: u16, jwks: &serde_json::Value) -> String {
    let bcrypt = bcrypt::hash("wonderland", 4).expect("bcrypt");
    let sha = STANDARD.encode(sha1::Sha1::digest(b"builder"));
    let mut yaml = support::gateway_yaml(port);
    yaml.push_str(&support::service_yaml("backend", backend));
    yaml.push_str(&format!(
        r#"---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: app}}
spec:
  parentRefs: [{{name: edge}}]
  rules:
  - name: jwt
    matches: [{{path: {{type: PathPrefix, value: /jwt}}}}]
    backendRefs: [{{name: backend, port: 80}}]
  - name: basic
    matches: [{{path: {{type: PathPrefix, value: /basic}}}}]
    backendRefs: [{{name: backend, port: 80}}]
  - name: key
    matches: [{{path: {{type: PathPrefix, value: /key}}}}]
    backendRefs: [{{name: backend, port: 80}}]
  - name: local
    matches: [{{path: {{type: PathPrefix, value: /local}}}}]
    backendRefs: [{{name: backend, port: 80}}]
  - name: global
    matches: [{{path: {{type: PathPrefix, value: /global}}}}]
    backendRefs: [{{name: backend, port: 80}}]
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: jwks}}
data:
  jwks.json: '{jwks}'
---
apiVersion: v1
kind: Secret
metadata: {{name: htpasswd}}
stringData:
  .htpasswd: |
    alice:{bcrypt}
    bob:{{SHA}}{sha}
---
apiVersion: v1
kind: Secret
metadata: {{name: api-keys}}
stringData: {{client-a: key-aaa, client-b: key-bbb}}
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthenticationPolicy
metadata: {{name: jwt}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app, sectionName: jwt}}]
  jwt:
    providers:
    - name: test
      issuer: https://issuer.test
      audiences: [portcullis]
      jwks: {{kind: ConfigMap, name: jwks}}
      claimToHeaders: [{{claim: sub, header: x-user}}]
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthenticationPolicy
metadata: {{name: basic}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app, sectionName: basic}}]
  basicAuth: {{users: {{name: htpasswd}}, realm: test}}
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthenticationPolicy
metadata: {{name: keys}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app, sectionName: key}}]
  apiKey:
    credentials: [{{name: api-keys}}]
    extractFrom: [{{header: x-api-key}}, {{queryParameter: api_key}}]
    forwardClientIdHeader: x-client-id
---
apiVersion: portcullis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: local}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app, sectionName: local}}]
  limits: [{{scope: Local, requests: 50, unit: Second}}]
---
apiVersion: portcullis.dev/v1alpha1
kind: RateLimitPolicy
metadata: {{name: shared}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: HTTPRoute, name: app, sectionName: global}}]
  limits: [{{name: per-client, scope: Global, requests: 30, unit: Hour, clientKey: {{type: Header, name: x-client}}}}]
"#,
        jwks = jwks,
    ));
    yaml
}

async fn started(dir: &std::path::Path, port: u16, args: &[&str]) -> Gateway {
    let gateway = Gateway::start_with(dir, args).await;
    let url = format!("http://127.0.0.1:{port}/key?api_key=key-aaa");
    gateway
        .wait_until(|| async {
            send("GET", &url, &[], "")
                .await
                .is_ok_and(|a| a.status == 200)
        })
        .await;
    gateway
}

#[tokio::test(flavor = "multi_thread")]
async fn authentication_methods_accept_and_refuse() {
    let backend = Upstream::echo_headers().await;
    let key = signing_key("k1");
    let stranger = signing_key("k2");
    let jwks = serde_json::json!({"keys": [key.jwk]});
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    support::replace(
        dir.path(),
        "all.yaml",
        &manifests(port, backend.port, &jwks),
    );
    let _gateway = started(dir.path(), port, &[]).await;
    let base = format!("http://127.0.0.1:{port}");
    let get = |path: &str, headers: Vec<(&'static str, String)>| {
        let url = format!("{base}{path}");
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            send("GET", &url, &headers, "").await.expect("answer")
        }
    };
    let bearer = |token: String| vec![("authorization", format!("Bearer {token}"))];

    // JWT.
    let answer = get("/jwt", bearer(token(&key, "portcullis", 300))).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(answer.body.contains("x-user: alice"), "{}", answer.body);
    let answer = get("/jwt", bearer(token(&key, "portcullis", -3600))).await;
    assert_eq!(answer.status, 401, "expired");
    let challenge = answer.headers["www-authenticate"]
        .to_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        challenge.contains("invalid_token") && challenge.contains("expired"),
        "{challenge}"
    );
    let answer = get("/jwt", bearer(token(&key, "someone-else", 300))).await;
    assert_eq!(answer.status, 403, "wrong audience");
    let answer = get("/jwt", bearer(token(&stranger, "portcullis", 300))).await;
    assert_eq!(answer.status, 401, "unknown key");
    let answer = get("/jwt", vec![]).await;
    assert_eq!(answer.status, 401, "no token");
    assert_eq!(answer.headers["www-authenticate"], "Bearer");
    let mut tampered = token(&key, "portcullis", 300);
    tampered.push('x');
    assert_eq!(
        get("/jwt", bearer(tampered)).await.status,
        401,
        "bad signature"
    );

    // Basic auth: bcrypt and {SHA}.
    let basic = |user: &str, password: &str| {
        vec![(
            "authorization",
            format!("Basic {}", STANDARD.encode(format!("{user}:{password}"))),
        )]
    };
    assert_eq!(
        get("/basic", basic("alice", "wonderland")).await.status,
        200
    );
    assert_eq!(
        get("/basic", basic("alice", "wonderland")).await.status,
        200,
        "remembered"
    );
    assert_eq!(get("/basic", basic("bob", "builder")).await.status, 200);
    let answer = get("/basic", basic("alice", "looking-glass")).await;
    assert_eq!(answer.status, 401);
    assert_eq!(
        answer.headers["www-authenticate"],
        "Basic realm=\"test\", charset=\"UTF-8\""
    );
    assert_eq!(get("/basic", basic("mallory", "builder")).await.status, 401);
    assert_eq!(get("/basic", vec![]).await.status, 401);

    // API keys, from a header or the query.
    let answer = get("/key", vec![("x-api-key", "key-aaa".into())]).await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.body.contains("x-client-id: client-a"),
        "{}",
        answer.body
    );
    let answer = get("/key?api_key=key-bbb", vec![]).await;
    assert_eq!(answer.status, 200);
    assert!(
        answer.body.contains("x-client-id: client-b"),
        "{}",
        answer.body
    );
    assert_eq!(
        get("/key", vec![("x-api-key", "key-ccc".into())])
            .await
            .status,
        401
    );
    assert_eq!(get("/key", vec![]).await.status, 401);

    // Refused requests never reach the backend.
    let before = backend.hits();
    assert_eq!(
        get("/jwt", bearer(token(&key, "someone-else", 300)))
            .await
            .status,
        403
    );
    assert_eq!(get("/basic", basic("alice", "nope")).await.status, 401);
    assert_eq!(
        get("/key", vec![("x-api-key", "nope".into())]).await.status,
        401
    );
    assert_eq!(backend.hits(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_limit_holds_under_load() {
    let backend = Upstream::echo_headers().await;
    let port = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let jwks = serde_json::json!({"keys": [signing_key("k1").jwk]});
    support::replace(
        dir.path(),
        "all.yaml",
        &manifests(port, backend.port, &jwks),
    );
    let _gateway = started(dir.path(), port, &[]).await;
    let url = format!("http://127.0.0.1:{port}/local");

    // A bounded loop: 8 clients for 2 s, at most 20,000 requests.
    let allowed = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let run_for = Duration::from_secs(2);
    let mut clients = Vec::new();
    for _ in 0..8 {
        let (url, allowed, limited) = (url.clone(), allowed.clone(), limited.clone());
        clients.push(tokio::spawn(async move {
            for _ in 0..2_500 {
                if started.elapsed() >= run_for {
                    break;
                }
                match send("GET", &url, &[], "").await {
                    Ok(answer) if answer.status == 200 => {
                        assert!(answer.headers.contains_key("ratelimit-remaining"));
                        allowed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(answer) if answer.status == 429 => {
                        assert!(answer.headers.contains_key("retry-after"));
                        assert_eq!(answer.headers["ratelimit-limit"], "50");
                        limited.fetch_add(1, Ordering::Relaxed);
                    }
                    other => panic!("unexpected answer: {:?}", other.map(|a| a.status)),
                }
            }
        }));
    }
    for client in clients {
        client.await.expect("client");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let allowed = allowed.load(Ordering::Relaxed) as f64;
    let limited = limited.load(Ordering::Relaxed);
    // A bucket of 50 that refills at 50/s: the burst plus the rate over the run.
    let expected = 50.0 + 50.0 * elapsed;
    assert!(limited > 0, "the load went beyond the limit");
    assert!(
        (allowed - expected).abs() <= expected * 0.10,
        "allowed {allowed} in {elapsed:.2} s; expected {expected:.0} ± 10%"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_global_limit_is_shared_by_two_gateways() {
    let redis = Redis::start().await;
    let redis_url = format!("redis://127.0.0.1:{}", redis.port);
    let backend = Upstream::echo_headers().await;
    let jwks = serde_json::json!({"keys": [signing_key("k1").jwk]});
    let mut gateways = Vec::new();
    let mut ports = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        support::replace(
            dir.path(),
            "all.yaml",
            &manifests(port, backend.port, &jwks),
        );
        gateways.push(started(dir.path(), port, &["--rate-limit-redis", &redis_url]).await);
        ports.push(port);
        dirs.push(dir);
    }
    // 20 requests through each gateway for one client: 30 pass in all, whichever gateway.
    let mut allowed = 0;
    let mut refused = 0;
    for round in 0..20 {
        for port in &ports {
            let url = format!("http://127.0.0.1:{port}/global");
            let answer = send("GET", &url, &[("x-client", "c1")], "")
                .await
                .expect("answer");
            match answer.status {
                200 => allowed += 1,
                429 => {
                    refused += 1;
                    assert!(answer.headers.contains_key("retry-after"));
                }
                other => panic!("round {round}: status {other}"),
            }
        }
    }
    assert_eq!((allowed, refused), (30, 10));
    // Another client has its own count.
    let url = format!("http://127.0.0.1:{}/global", ports[0]);
    let answer = send("GET", &url, &[("x-client", "c2")], "")
        .await
        .expect("answer");
    assert_eq!(answer.status, 200);
    drop(gateways);
}

/// A JWKS server whose document can be replaced; counts fetches.
struct JwksServer {
    port: u16,
    document: Arc<std::sync::Mutex<String>>,
    fetches: Arc<AtomicU64>,
}

impl JwksServer {
    async fn start(document: String) -> Self {
        use http_body_util::Full;
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let document = Arc::new(std::sync::Mutex::new(document));
        let fetches = Arc::new(AtomicU64::new(0));
        let (served, counter) = (document.clone(), fetches.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (served, counter) = (served.clone(), counter.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |_request| {
                        counter.fetch_add(1, Ordering::Relaxed);
                        let body = served.lock().expect("lock").clone();
                        async move {
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                                bytes::Bytes::from(body),
                            )))
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            port,
            document,
            fetches,
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn remote_jwks_are_fetched_cached_and_refreshed() {
    let backend = Upstream::echo_headers().await;
    let (first, second) = (signing_key("first"), signing_key("second"));
    let jwks = JwksServer::start(serde_json::json!({"keys": [first.jwk]}).to_string()).await;
    let port = free_port();
    let mut yaml = support::gateway_yaml(port);
    yaml.push_str(&support::service_yaml("backend", backend.port));
    yaml.push_str(&format!(
        "---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: app}}
spec:
  parentRefs: [{{name: edge}}]
  rules: [{{backendRefs: [{{name: backend, port: 80}}]}}]
---
apiVersion: portcullis.dev/v1alpha1
kind: AuthenticationPolicy
metadata: {{name: remote}}
spec:
  targetRefs: [{{group: gateway.networking.k8s.io, kind: Gateway, name: edge}}]
  jwt:
    providers:
    - name: remote
      audiences: [portcullis]
      remoteJWKS: {{uri: 'http://127.0.0.1:{}/jwks.json', cacheDuration: 1s}}
",
        jwks.port
    ));
    let dir = tempfile::tempdir().expect("tempdir");
    support::replace(dir.path(), "all.yaml", &yaml);
    let gateway = Gateway::start(dir.path()).await;
    let url = format!("http://127.0.0.1:{port}/");
    let call = |key: &SigningKey| {
        let header = format!("Bearer {}", token(key, "portcullis", 300));
        let url = url.clone();
        async move {
            send("GET", &url, &[("authorization", header.as_str())], "")
                .await
                .map(|a| a.status)
                .unwrap_or(0)
        }
    };
    gateway
        .wait_until(|| async { call(&first).await == 200 })
        .await;
    let fetched = jwks.fetches.load(Ordering::Relaxed);
    for _ in 0..5 {
        assert_eq!(call(&first).await, 200);
    }
    assert_eq!(
        jwks.fetches.load(Ordering::Relaxed),
        fetched,
        "the keys are cached"
    );

    // The issuer rotates its key: after the cache duration, new tokens verify.
    *jwks.document.lock().expect("lock") = serde_json::json!({"keys": [second.jwk]}).to_string();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(call(&second).await, 200);
    assert_eq!(call(&first).await, 401, "the old key is gone");
    assert!(jwks.fetches.load(Ordering::Relaxed) > fetched);
}
