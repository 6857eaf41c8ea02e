//! Caching: one [`Cache`] per use, in this process (moka) or shared in Redis, chosen by
//! `CACHE_URL`, and the four patterns of the seed documents built on it.
//!
//! ```text
//! CACHE_URL unset      -> memory.rs: a bounded moka cache per instance (size + TTL)
//! CACHE_URL=redis://.. -> redis.rs:  one Redis shared by every instance (SET .. PX ttl)
//!
//! patterns.rs   cache-aside (get_or_load + invalidate), read-through (ReadThrough),
//!               write-through (write_through)
//! write_back.rs write-back (WriteBack: increments buffered, flushed in batches)
//! ```
//!
//! A cache is an optimisation, never a source of truth, so it must never be the reason a request
//! fails. A configured Redis that cannot be reached at start-up is an error (the operator asked for
//! it and something is wrong), but once running, every cache call **fails soft**: an error is
//! counted in `cache_errors_total{cache}`, logged at most once every few seconds, and answered as a
//! miss (reads) or a no-op (writes and invalidations), so the service carries on from its database.
//! Lookups count `cache_hits_total{cache}` and `cache_misses_total{cache}`.
//!
//! Values are stored as JSON, so a Redis cache can be read by any instance and any version that
//! knows the type. Keys are namespaced as `stratus:<cache name>:<key>`.

mod memory;
pub mod patterns;
mod redis;
pub mod write_back;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::HeaderValue;
use axum::response::{IntoResponseParts, ResponseParts};
use serde::de::DeserializeOwned;
use serde::Serialize;

pub use self::patterns::{get_or_load, write_through, ReadThrough};
pub use self::redis::connect as connect_redis;
pub use self::write_back::{WriteBack, WriteBackSettings};

/// Errors are logged at most this often per cache; the counter sees every one.
const LOG_EVERY: Duration = Duration::from_secs(5);

/// Cache settings, read from the environment by every service that caches.
#[derive(clap::Args, Debug, Clone)]
pub struct CacheArgs {
    /// Where cached values live: unset for a cache in this process (per instance), or
    /// `redis://host:port[/db]` for one Redis shared by every instance (`rediss://` over TLS,
    /// the server checked against the system's roots, or `SSL_CERT_FILE`'s).
    #[arg(long, env = "CACHE_URL")]
    pub cache_url: Option<String>,

    /// How long a cached value lives (0: caching off; every read goes to the database).
    #[arg(long, env = "CACHE_TTL", default_value = "60s", value_parser = crate::duration::parse)]
    pub cache_ttl: Duration,

    /// Most entries the in-process cache holds (least recently used go first).
    #[arg(long, env = "CACHE_CAPACITY", default_value_t = 10_000)]
    pub cache_capacity: u64,
}

/// Whether a read was answered from the cache.
///
/// As a response part it sets `x-server-cache: hit|miss` and leaves itself in the response's
/// extensions, where the event middleware finds it for the request's record (`cache` field).
/// (`x-cache` is the gateway's edge cache's: both layers show on an answer through it.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Hit,
    Miss,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
        }
    }
}

impl IntoResponseParts for Outcome {
    type Error = std::convert::Infallible;

    fn into_response_parts(self, mut parts: ResponseParts) -> Result<ResponseParts, Self::Error> {
        parts
            .headers_mut()
            .insert("x-server-cache", HeaderValue::from_static(self.as_str()));
        parts.extensions_mut().insert(self);
        Ok(parts)
    }
}

/// Where the bytes live.
enum Store {
    Memory(memory::Memory),
    Redis(redis::Redis),
    /// TTL 0: nothing is kept; every lookup misses.
    Off,
}

/// A named cache of JSON values. Cheap to clone; every clone is the same cache.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    prefix: String,
    ttl: Duration,
    store: Store,
    /// What Redis calls are counted against in the request's tally (`crate::tally`): the node
    /// `redis` (an in-process cache is not a node of the topology).
    peer: Arc<crate::tally::Peer>,
    /// Milliseconds since `epoch` when an error was last logged (0: never).
    last_logged: AtomicU64,
    epoch: Instant,
}

impl Cache {
    /// Opens the cache called `name` (also its metric label and key namespace) as `args` say.
    /// A Redis that cannot be reached now is an error.
    pub async fn open(name: &str, args: &CacheArgs) -> anyhow::Result<Self> {
        let store = if args.cache_ttl.is_zero() {
            Store::Off
        } else {
            match args.cache_url.as_deref().filter(|u| !u.is_empty()) {
                None => Store::Memory(memory::Memory::new(args.cache_capacity, args.cache_ttl)),
                Some(url) => Store::Redis(redis::Redis::connect(url).await?),
            }
        };
        Ok(Self::with_store(name, args.cache_ttl, store))
    }

    /// An in-process cache (tests, and services that never share).
    pub fn memory(name: &str, capacity: u64, ttl: Duration) -> Self {
        Self::with_store(name, ttl, Store::Memory(memory::Memory::new(capacity, ttl)))
    }

    fn with_store(name: &str, ttl: Duration, store: Store) -> Self {
        let kind = match &store {
            Store::Memory(_) => "memory",
            Store::Redis(_) => "redis",
            Store::Off => "off",
        };
        tracing::info!(
            cache = name,
            store = kind,
            ttl_ms = ttl.as_millis() as u64,
            "cache ready"
        );
        Self {
            inner: Arc::new(Inner {
                name: name.to_string(),
                prefix: format!("stratus:{name}:"),
                ttl,
                store,
                peer: Arc::new(crate::tally::Peer {
                    name: "redis".into(),
                    system: "redis",
                }),
                last_logged: AtomicU64::new(0),
                epoch: Instant::now(),
            }),
        }
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Whether values are shared between instances (Redis), so an invalidation reaches them all.
    pub fn is_shared(&self) -> bool {
        matches!(self.inner.store, Store::Redis(_))
    }

    /// Looks `key` up, counting a hit or a miss. An unreadable value or a failing store is a miss.
    pub async fn get<V: DeserializeOwned>(&self, key: &str) -> Option<V> {
        let value = self.get_raw(key).await.and_then(|bytes| {
            serde_json::from_slice(&bytes)
                .map_err(|error| self.failed("decode", &error))
                .ok()
        });
        let counter = if value.is_some() {
            "cache_hits_total"
        } else {
            "cache_misses_total"
        };
        metrics::counter!(counter, "cache" => self.inner.name.clone()).increment(1);
        value
    }

    /// Stores `value` under `key` for the cache's TTL.
    pub async fn set<V: Serialize>(&self, key: &str, value: &V) {
        match serde_json::to_vec(value) {
            Ok(bytes) => self.set_raw(key, bytes).await,
            Err(error) => self.failed("encode", &error),
        }
    }

    /// Forgets `key` (every instance's view of it, with Redis).
    pub async fn invalidate(&self, key: &str) {
        let key = self.key(key);
        match &self.inner.store {
            Store::Memory(memory) => memory.remove(&key).await,
            Store::Redis(redis) => {
                if let Err(error) = self.timed(redis.remove(&key)).await {
                    self.failed("invalidate", &error);
                }
            }
            Store::Off => {}
        }
    }

    async fn get_raw(&self, key: &str) -> Option<Arc<[u8]>> {
        let key = self.key(key);
        match &self.inner.store {
            Store::Memory(memory) => memory.get(&key).await,
            Store::Redis(redis) => match self.timed(redis.get(&key)).await {
                Ok(found) => found.map(Arc::from),
                Err(error) => {
                    self.failed("get", &error);
                    None
                }
            },
            Store::Off => None,
        }
    }

    async fn set_raw(&self, key: &str, bytes: Vec<u8>) {
        let key = self.key(key);
        match &self.inner.store {
            Store::Memory(memory) => memory.put(key, Arc::from(bytes)).await,
            Store::Redis(redis) => {
                if let Err(error) = self.timed(redis.put(&key, bytes, self.inner.ttl)).await {
                    self.failed("set", &error);
                }
            }
            Store::Off => {}
        }
    }

    /// Runs one Redis call, adding it to the request's tally (when there is one).
    async fn timed<T>(
        &self,
        call: impl std::future::Future<Output = ::redis::RedisResult<T>>,
    ) -> ::redis::RedisResult<T> {
        if !crate::tally::active() {
            return call.await;
        }
        let started = Instant::now();
        let result = call.await;
        crate::tally::record(
            crate::tally::Kind::Cache,
            &self.inner.peer,
            started,
            result.is_ok(),
        );
        result
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.inner.prefix)
    }

    /// Counts a failure and logs it unless another was logged within [`LOG_EVERY`], so a Redis
    /// that is down costs a metric per call, not a log line per call.
    fn failed(&self, operation: &'static str, error: &dyn std::fmt::Display) {
        metrics::counter!("cache_errors_total", "cache" => self.inner.name.clone()).increment(1);
        let now = self.inner.epoch.elapsed().as_millis() as u64 + 1;
        let last = self.inner.last_logged.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= LOG_EVERY.as_millis() as u64)
            && self
                .inner
                .last_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                cache = %self.inner.name,
                operation,
                %error,
                "cache unavailable; serving from the database (further errors are counted in cache_errors_total)"
            );
        }
    }
}

#[cfg(test)]
mod tests;
