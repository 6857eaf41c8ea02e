use std::time::Duration;

use axum::response::IntoResponse;

use super::*;

#[test]
fn an_outcome_sets_the_header_and_the_extension() {
    let response = (Outcome::Hit, "body").into_response();
    assert_eq!(response.headers()["x-server-cache"], "hit");
    assert_eq!(response.extensions().get::<Outcome>(), Some(&Outcome::Hit));
}

#[tokio::test]
async fn hits_and_misses_are_counted_per_cache() {
    let handle = crate::metrics::install();
    let cache = Cache::memory("counted", 100, Duration::from_secs(60));
    assert_eq!(cache.get::<i64>("k").await, None);
    cache.set("k", &5).await;
    assert_eq!(cache.get::<i64>("k").await, Some(5));
    let metrics = handle.render();
    assert!(
        metrics.contains("cache_hits_total{cache=\"counted\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("cache_misses_total{cache=\"counted\"} 1"));
}

#[tokio::test]
async fn the_memory_store_is_bounded() {
    let cache = Cache::memory("bounded", 10, Duration::from_secs(60));
    for i in 0..1000 {
        cache.set(&format!("k{i}"), &i).await;
    }
    if let Store::Memory(memory) = &cache.inner.store {
        memory.sync().await;
        assert!(
            memory.entry_count() <= 10,
            "{} entries",
            memory.entry_count()
        );
    }
}
