//! Any request (host, path, query, method, headers) against the routes of the translate
//! fixtures: selection never panics.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;

/// Every HTTP listener of every fixture.
static LISTENERS: LazyLock<Vec<std::sync::Arc<ir::HttpListener>>> = LazyLock::new(|| {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../crates/translate/tests/fixtures");
    let mut listeners = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let Ok(text) = std::fs::read_to_string(&path) else { continue };
        let Ok(contents) = model::decode::decode_file(&path, &text) else { continue };
        let snapshot =
            model::Snapshot::from_objects(contents.objects.into_iter().map(|(object, _)| object));
        let config = translate::translate(&snapshot, &translate::Options::default()).config;
        for bind in config.binds.values() {
            listeners.extend(bind.http.iter().cloned());
        }
    }
    listeners
});

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut fields = text.split('\n');
    let host = fields.next().unwrap_or_default().to_ascii_lowercase();
    let target = fields.next().unwrap_or("/");
    let method = http::Method::from_bytes(fields.next().unwrap_or("GET").as_bytes())
        .unwrap_or(http::Method::GET);
    let mut headers = http::HeaderMap::new();
    for line in fields {
        if let Some((name, value)) = line.split_once(':')
            && let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name.as_bytes()),
                http::HeaderValue::from_str(value.trim()),
            )
        {
            headers.append(name, value);
        }
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let request = ir::HttpRequestParts {
        host: &host,
        path,
        query,
        method: &method,
        headers: &headers,
    };
    for listener in LISTENERS.iter() {
        let _ = listener.routes.select(&request);
    }
});
