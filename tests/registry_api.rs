//! The registry's HTTP contract on its default (in-memory) store: bad registrations are refused
//! and change nothing, and the event stream reports every change.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::registry::{instance_ids, Registry};

#[tokio::test]
async fn bad_registrations_get_4xx_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start("registry", "memory", dir.path()).await;
    assert_eq!(registry.register("catalog", "good", 9001, 30.0).await, 201);
    let before = registry.catalog().await;

    let good = json!({"address": "127.0.0.1", "port": 9002, "ttl_seconds": 30});
    let with = |field: &str, value: Value| {
        let mut body = good.clone();
        body[field] = value;
        body
    };
    let without = |field: &str| {
        let mut body = good.clone();
        body.as_object_mut().unwrap().remove(field);
        body
    };
    let blob = "x".repeat(1024 * 1024);
    // (what, path under /v1/services, body)
    let cases: Vec<(&str, &str, String)> = vec![
        (
            "no address",
            "catalog/instances/x",
            without("address").to_string(),
        ),
        (
            "no port",
            "catalog/instances/x",
            without("port").to_string(),
        ),
        ("empty body", "catalog/instances/x", "{}".into()),
        (
            "not JSON",
            "catalog/instances/x",
            "address=127.0.0.1".into(),
        ),
        (
            "port 0",
            "catalog/instances/x",
            with("port", json!(0)).to_string(),
        ),
        (
            "port 70000",
            "catalog/instances/x",
            with("port", json!(70000)).to_string(),
        ),
        (
            "port -1",
            "catalog/instances/x",
            with("port", json!(-1)).to_string(),
        ),
        (
            "1 MB of metadata",
            "catalog/instances/x",
            with("metadata", json!({"blob": blob})).to_string(),
        ),
        (
            "a metadata value over the limit",
            "catalog/instances/x",
            with("metadata", json!({"blob": "y".repeat(2000)})).to_string(),
        ),
        (
            "a name with spaces",
            "my%20service/instances/x",
            good.to_string(),
        ),
        (
            "an upper-case name",
            "Catalog/instances/x",
            good.to_string(),
        ),
        (
            "a bad instance id",
            "catalog/instances/a%20b",
            good.to_string(),
        ),
        (
            "an unknown field",
            "catalog/instances/x",
            with("colour", json!("blue")).to_string(),
        ),
        (
            "a zero TTL",
            "catalog/instances/x",
            with("ttl_seconds", json!(0)).to_string(),
        ),
        (
            "an address with spaces",
            "catalog/instances/x",
            with("address", json!("a b")).to_string(),
        ),
        (
            "replacing a good instance with a bad one",
            "catalog/instances/good",
            with("port", json!(0)).to_string(),
        ),
    ];
    // Each bad request on a fresh connection, so none lands on one the server closed after
    // refusing the one before.
    let fresh = support::mesh::operator_builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for (what, path, body) in cases {
        let response = fresh
            .put(registry.url(&format!("/v1/services/{path}")))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        assert!((400..500).contains(&status), "{what}: got {status}");
        // The 1 MB body too: its declared length is refused as problem+json, after it is read.
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_string();
        assert_eq!(content_type, "application/problem+json", "{what}");
        assert_eq!(
            registry.catalog().await,
            before,
            "{what} changed the registry"
        );
    }
    // And one with no content type at all.
    let response = fresh
        .put(registry.url("/v1/services/catalog/instances/x"))
        .body(good.to_string())
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error());
    assert_eq!(registry.catalog().await, before);
}

#[tokio::test]
async fn the_event_stream_sends_the_catalog_on_connect_and_on_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start("registry", "memory", dir.path()).await;
    assert_eq!(registry.register("catalog", "a", 9001, 30.0).await, 201);
    let mut events = registry.events().await;
    let first = events.next_catalog(Duration::from_secs(5)).await;
    assert_eq!(
        first,
        registry.catalog().await,
        "the same JSON as GET /v1/services"
    );
    assert_eq!(instance_ids(&first["services"]["catalog"]), ["a"]);

    // A heartbeat is not a change; a new instance is.
    let beat = registry
        .http
        .put(registry.url("/v1/services/catalog/instances/a/heartbeat"))
        .send()
        .await
        .unwrap();
    assert_eq!(beat.status(), 204);
    assert_eq!(registry.register("auth", "b", 9002, 30.0).await, 201);
    let second = events.next_catalog(Duration::from_secs(5)).await;
    assert!(second["index"].as_u64() > first["index"].as_u64());
    assert_eq!(instance_ids(&second["services"]["auth"]), ["b"]);

    // An expired lease is a change too.
    assert_eq!(registry.register("catalog", "short", 9003, 1.0).await, 201);
    let third = events.next_catalog(Duration::from_secs(5)).await;
    assert_eq!(instance_ids(&third["services"]["catalog"]), ["a", "short"]);
    let fourth = events.next_catalog(Duration::from_secs(5)).await;
    assert_eq!(instance_ids(&fourth["services"]["catalog"]), ["a"]);

    // A second watcher gets the current view at once.
    let mut late = registry.events().await;
    assert_eq!(late.next_catalog(Duration::from_secs(5)).await, fourth);
}

#[tokio::test]
async fn a_watcher_of_one_service_wakes_only_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start("registry", "memory", dir.path()).await;
    support::registry::one_service_watch_wakes_for_that_service_only(&registry, &registry).await;
    // On the memory store a service's index is exactly the registry index of its last change.
    let alpha = registry.service("alpha").await["index"].as_u64().unwrap();
    assert_eq!(alpha, registry.catalog().await["index"].as_u64().unwrap());
}

#[tokio::test]
async fn one_change_is_encoded_once_for_every_watcher() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start("registry", "memory", dir.path()).await;
    support::registry::one_change_is_encoded_once_for_every_watcher(&registry).await;
}

#[tokio::test]
async fn a_query_on_part_of_the_catalog_wakes_only_for_its_services() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start("registry", "memory", dir.path()).await;
    support::registry::part_of_the_catalog_wakes_for_its_services_only(&registry, &registry).await;
}

/// The incremental watch on the memory store: see `support::deltas`.
#[tokio::test]
async fn an_incremental_watcher_of_one_service_is_woken_only_by_its_services() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start("registry", "memory", dir.path()).await;
    support::deltas::a_service_watcher_is_woken_only_by_its_services(&registry, &registry).await;
}

#[tokio::test]
async fn an_incremental_watcher_resumes_from_its_index_missing_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start("registry", "memory", dir.path()).await;
    support::deltas::a_resumed_watcher_misses_nothing_and_sees_changes_in_order(
        &registry, &registry,
    )
    .await;
}

#[tokio::test]
async fn an_incremental_watcher_too_far_behind_gets_a_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let port = support::free_port();
    let env = [("STRATUS_REGISTRY_CHANGE_RING", "8")];
    let registry = Registry::start_with("registry", "memory", dir.path(), port, &env).await;
    support::deltas::a_watcher_too_far_behind_gets_a_snapshot(&registry, &registry).await;
    // An index from another run of this registry (another epoch): a snapshot, whatever it is.
    let epoch = registry.catalog().await["epoch"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!epoch.is_empty());
    let index = registry.catalog().await["index"].as_u64().unwrap();
    let mut same =
        support::deltas::open(&registry, &format!("index={index}&epoch={epoch}"), None).await;
    assert!(
        same.next(Duration::from_millis(300)).await.is_none(),
        "same run, up to date"
    );
    let mut other =
        support::deltas::open(&registry, &format!("index={index}&epoch=another"), None).await;
    assert!(other.expect(Duration::from_secs(5)).await.is_snapshot());
}

#[tokio::test]
async fn every_incremental_view_equals_the_registry_after_random_changes() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start("registry", "memory", dir.path()).await;
    support::deltas::every_view_equals_the_registry_after_random_changes(&registry, &registry)
        .await;
}

#[tokio::test]
async fn the_incremental_watch_refuses_bad_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start("registry", "memory", dir.path()).await;
    for query in [
        "index=5",
        "services=a",
        "deltas=true&index=minus",
        "deltas=true&services=Not%20A%20Name",
        "deltas=maybe",
        "deltas=true&unknown=1",
    ] {
        let response = registry
            .http
            .get(registry.url(&format!("/v1/watch?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{query}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "{query}"
        );
    }
    let response = registry
        .http
        .get(registry.url("/v1/watch?deltas=true"))
        .header("last-event-id", "not-an-index")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
}
