//! The in-process store: a moka cache per instance, bounded in entries (least recently and least
//! frequently used go first) and in age (the TTL).
//!
//! Each instance has its own: an invalidation reaches only the instance that made it, so other
//! instances may serve the old value until its TTL runs out. Keep the TTL short where that
//! matters, or use Redis.

use std::sync::Arc;
use std::time::Duration;

pub struct Memory {
    entries: moka::future::Cache<String, Arc<[u8]>>,
}

impl Memory {
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        Self {
            entries: moka::future::Cache::builder()
                .max_capacity(capacity.max(1))
                .time_to_live(ttl)
                .build(),
        }
    }

    pub async fn get(&self, key: &str) -> Option<Arc<[u8]>> {
        self.entries.get(key).await
    }

    pub async fn put(&self, key: String, value: Arc<[u8]>) {
        self.entries.insert(key, value).await;
    }

    pub async fn remove(&self, key: &str) {
        self.entries.invalidate(key).await;
    }
}

#[cfg(test)]
impl Memory {
    /// Applies pending evictions (moka evicts lazily), for tests that count entries.
    pub async fn sync(&self) {
        self.entries.run_pending_tasks().await;
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }
}
