//! Three of the seed documents' four caching patterns, as small functions over a [`Cache`]
//! (the fourth, write-back, is [`super::write_back`]).
//!
//! - **Cache-aside** ([`get_or_load`]): the caller looks the key up; on a miss it loads from the
//!   database and fills the cache. Writers change the database, then [`Cache::invalidate`] the
//!   key, so the next read loads the new value. The caller owns both steps, so it can cache only
//!   what it chooses (found rows, say, never errors).
//! - **Read-through** ([`ReadThrough`]): the loader is bound to the cache once, and callers only
//!   ever ask the cache; a miss loads and fills behind the same call.
//! - **Write-through** ([`write_through`]): a write goes to the database and then, in the same
//!   call, into the cache, so the next read is a hit with the new value. The database write comes
//!   first: if it fails nothing is cached; if the cache write fails the value is still stored
//!   and the next read loads it.
//!
//! In every pattern the database is the truth: an error from the loader or the writer is the
//! caller's error, and an error from the cache is only a miss.

use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Cache, Outcome};

/// Cache-aside read: the cached value, or `load()`'s, which is cached when it is `Some`.
///
/// `None` (not found) is not cached, so a row created later is seen at once.
pub async fn get_or_load<V, E, F, Fut>(
    cache: &Cache,
    key: &str,
    load: F,
) -> Result<(Option<V>, Outcome), E>
where
    V: Serialize + DeserializeOwned,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Option<V>, E>>,
{
    if let Some(value) = cache.get(key).await {
        return Ok((Some(value), Outcome::Hit));
    }
    let loaded = load().await?;
    if let Some(value) = &loaded {
        cache.set(key, value).await;
    }
    Ok((loaded, Outcome::Miss))
}

/// Write-through: runs `write` (the database write, returning the value as stored), then caches
/// that value under `key`. Nothing is cached when the write fails.
pub async fn write_through<V, E, Fut>(cache: &Cache, key: &str, write: Fut) -> Result<V, E>
where
    V: Serialize,
    Fut: Future<Output = Result<V, E>>,
{
    let stored = write.await?;
    cache.set(key, &stored).await;
    Ok(stored)
}

type Loader<V, E> = Arc<dyn Fn(String) -> BoxFuture<'static, Result<Option<V>, E>> + Send + Sync>;

/// Read-through: a cache that knows how to load what it lacks.
///
/// ```ignore
/// let profiles = ReadThrough::new(cache, move |sub| {
///     let pool = pool.clone();
///     Box::pin(async move { load_profile(&pool, &sub).await })
/// });
/// let (profile, outcome) = profiles.get(&caller.sub).await?;
/// ```
pub struct ReadThrough<V, E> {
    cache: Cache,
    loader: Loader<V, E>,
}

impl<V, E> Clone for ReadThrough<V, E> {
    fn clone(&self) -> Self {
        Self {
            cache: self.cache.clone(),
            loader: self.loader.clone(),
        }
    }
}

impl<V, E> ReadThrough<V, E>
where
    V: Serialize + DeserializeOwned,
{
    pub fn new<F>(cache: Cache, loader: F) -> Self
    where
        F: Fn(String) -> BoxFuture<'static, Result<Option<V>, E>> + Send + Sync + 'static,
    {
        Self {
            cache,
            loader: Arc::new(loader),
        }
    }

    /// The value for `key`: from the cache, or loaded (and then cached when found).
    pub async fn get(&self, key: &str) -> Result<(Option<V>, Outcome), E> {
        let loader = self.loader.clone();
        get_or_load(&self.cache, key, || loader(key.to_string())).await
    }

    /// The cache underneath, for invalidation and write-through.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }
}
