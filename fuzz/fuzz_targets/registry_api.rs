#![no_main]
//! The registry's HTTP API (in memory store), with any method, path, query and body.
//!
//! Every answer is a deliberate one: a 2xx or a 4xx problem. A 5xx or a panic on some input is
//! a bug. One store lives across runs, so registrations made by one input meet heartbeats,
//! deregistrations and watches from the next.
//!
//! Input: `<method> <path and query>\n<body>`

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::Body;
use libfuzzer_sys::fuzz_target;
use stratus_registry::store::memory::MemoryStore;
use tower::ServiceExt;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    store: Arc<MemoryStore>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| Fixture {
        runtime: tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime"),
        store: Arc::new(MemoryStore::new()),
    })
}

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == b'\n').unwrap_or(data.len());
    let Ok(line) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let body = data.get(split + 1..).unwrap_or_default().to_vec();
    let Some((method, target)) = line.split_once(' ') else {
        return;
    };
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else {
        return;
    };
    let Ok(request) = http::Request::builder()
        .method(method)
        .uri(target)
        .header("content-type", "application/json")
        .body(Body::from(body))
    else {
        return;
    };
    let fixture = fixture();
    let _guard = fixture.runtime.enter();
    let app: axum::Router = stratus_registry::api::routes()
        .with_state(stratus_registry::api::Registry::new(fixture.store.clone()))
        .into_router();
    // A blocking query waits for a change; a short wait is enough to see it answer or park.
    let answer = fixture.runtime.block_on(async {
        tokio::time::timeout(Duration::from_millis(20), app.oneshot(request)).await
    });
    if let Ok(Ok(response)) = answer {
        assert!(
            response.status().as_u16() < 500,
            "{line}: {}",
            response.status()
        );
    }
});
