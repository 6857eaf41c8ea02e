//! The cache and its four patterns, on both stores: in-process (moka) and a real Redis (where
//! redis-server is not installed the Redis tests are reported ignored, under CI they fail).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use stratus_kit::cache::{
    get_or_load, write_through, Cache, CacheArgs, Outcome, ReadThrough, WriteBack,
    WriteBackSettings,
};
use stratus_testing::servers::Redis;
use stratus_testing::{Need, Test};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Item {
    id: String,
    price: i64,
}

fn args(url: Option<String>, ttl: Duration) -> CacheArgs {
    CacheArgs {
        cache_url: url,
        cache_ttl: ttl,
        cache_capacity: 1000,
    }
}

/// The store a test of the cache's patterns runs on: each runs on both.
#[derive(Debug, Clone, Copy)]
enum Store {
    Memory,
    Redis,
}

impl std::fmt::Display for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Store::Memory => "memory",
            Store::Redis => "redis",
        })
    }
}

/// A cache on `store`, with the Redis server behind it (kept alive as long as the cache is used).
async fn open(store: Store, name: &str, ttl: Duration) -> (Cache, Option<Redis>) {
    match store {
        Store::Memory => (Cache::open(name, &args(None, ttl)).await.unwrap(), None),
        Store::Redis => {
            let server = Redis::start();
            let cache = Cache::open(name, &args(Some(server.url()), ttl))
                .await
                .unwrap();
            (cache, Some(server))
        }
    }
}

/// A stand-in database table with a count of reads, so tests can see when the cache answered.
#[derive(Clone, Default)]
struct Table {
    rows: Arc<Mutex<HashMap<String, i64>>>,
    reads: Arc<AtomicUsize>,
}

impl Table {
    async fn load(&self, id: &str) -> Result<Option<Item>, String> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        Ok(self.rows.lock().unwrap().get(id).map(|&price| Item {
            id: id.to_string(),
            price,
        }))
    }

    fn put(&self, id: &str, price: i64) {
        self.rows.lock().unwrap().insert(id.to_string(), price);
    }

    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
}

async fn cache_aside_loads_once_and_invalidation_reloads(store: Store) {
    let (cache, _server) = open(store, "aside", Duration::from_secs(60)).await;
    let table = Table::default();
    table.put("a", 100);
    let (first, outcome) = get_or_load(&cache, "a", || table.load("a")).await.unwrap();
    assert_eq!(outcome, Outcome::Miss, "{store}");
    assert_eq!(first.unwrap().price, 100);
    let (second, outcome) = get_or_load(&cache, "a", || table.load("a")).await.unwrap();
    assert_eq!(outcome, Outcome::Hit, "{store}");
    assert_eq!(second.unwrap().price, 100);
    assert_eq!(table.reads(), 1, "{store}: the hit did not touch the table");

    // A write changes the table and invalidates: the next read loads the new value.
    table.put("a", 250);
    cache.invalidate("a").await;
    let (third, outcome) = get_or_load(&cache, "a", || table.load("a")).await.unwrap();
    assert_eq!(
        (third.unwrap().price, outcome),
        (250, Outcome::Miss),
        "{store}"
    );

    // Not found is not cached: a row created later is seen at once.
    let (missing, _) = get_or_load(&cache, "b", || table.load("b")).await.unwrap();
    assert!(missing.is_none());
    table.put("b", 7);
    let (found, outcome) = get_or_load(&cache, "b", || table.load("b")).await.unwrap();
    assert_eq!(
        (found.unwrap().price, outcome),
        (7, Outcome::Miss),
        "{store}"
    );

    // A loader error is the caller's error, and nothing is cached.
    let failed: Result<(Option<Item>, Outcome), String> =
        get_or_load(&cache, "c", || async { Err("database down".to_string()) }).await;
    assert!(failed.is_err());
    assert!(cache.get::<Item>("c").await.is_none(), "{store}");
}

async fn read_through_binds_the_loader(store: Store) {
    let (cache, _server) = open(store, "through", Duration::from_secs(60)).await;
    let table = Table::default();
    table.put("p", 5);
    let loader_table = table.clone();
    let items = ReadThrough::new(cache, move |id: String| {
        let table = loader_table.clone();
        Box::pin(async move { table.load(&id).await })
    });
    let outcomes: Vec<Outcome> = futures_outcomes(&items, "p", 3).await;
    assert_eq!(
        outcomes,
        [Outcome::Miss, Outcome::Hit, Outcome::Hit],
        "{store}"
    );
    assert_eq!(table.reads(), 1, "{store}");
    items.cache().invalidate("p").await;
    assert_eq!(items.get("p").await.unwrap().1, Outcome::Miss, "{store}");
}

async fn futures_outcomes(items: &ReadThrough<Item, String>, key: &str, n: usize) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    for _ in 0..n {
        outcomes.push(items.get(key).await.unwrap().1);
    }
    outcomes
}

async fn write_through_caches_what_was_stored(store: Store) {
    let (cache, _server) = open(store, "write", Duration::from_secs(60)).await;
    let table = Table::default();
    let stored = write_through(&cache, "w", async {
        table.put("w", 42);
        Ok::<_, String>(Item {
            id: "w".into(),
            price: 42,
        })
    })
    .await
    .unwrap();
    assert_eq!(stored.price, 42);
    let (read, outcome) = get_or_load(&cache, "w", || table.load("w")).await.unwrap();
    assert_eq!(
        (read.unwrap().price, outcome),
        (42, Outcome::Hit),
        "{store}"
    );
    assert_eq!(table.reads(), 0, "{store}: read straight from the cache");

    // A failed write caches nothing.
    let failed = write_through(&cache, "x", async {
        Err::<Item, _>("constraint violated".to_string())
    })
    .await;
    assert!(failed.is_err());
    assert!(cache.get::<Item>("x").await.is_none(), "{store}");
}

async fn values_expire_after_the_ttl_and_ttl_zero_is_off(store: Store) {
    let (cache, _server) = open(store, "ttl", Duration::from_millis(300)).await;
    cache
        .set(
            "t",
            &Item {
                id: "t".into(),
                price: 1,
            },
        )
        .await;
    assert!(cache.get::<Item>("t").await.is_some(), "{store}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while cache.get::<Item>("t").await.is_some() {
        assert!(
            Instant::now() < deadline,
            "{store}: the value never expired"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let off = Cache::open("off", &args(None, Duration::ZERO))
        .await
        .unwrap();
    off.set("k", &1).await;
    assert_eq!(off.get::<i64>("k").await, None);
}

async fn redis_is_shared_between_instances() {
    let server = Redis::start();
    let settings = args(Some(server.url()), Duration::from_secs(60));
    let one = Cache::open("shared", &settings).await.unwrap();
    let two = Cache::open("shared", &settings).await.unwrap();
    one.set(
        "k",
        &Item {
            id: "k".into(),
            price: 3,
        },
    )
    .await;
    assert_eq!(two.get::<Item>("k").await.unwrap().price, 3);
    two.invalidate("k").await;
    assert!(
        one.get::<Item>("k").await.is_none(),
        "an invalidation reaches every instance"
    );
    // Another cache name is another namespace.
    let other = Cache::open("other", &settings).await.unwrap();
    one.set("k", &1).await;
    assert!(other.get::<i64>("k").await.is_none());
}

async fn an_unreachable_redis_at_start_is_an_error() {
    let port = stratus_testing::free_port();
    let error = Cache::open(
        "nowhere",
        &args(
            Some(format!("redis://127.0.0.1:{port}")),
            Duration::from_secs(1),
        ),
    )
    .await
    .err()
    .expect("opening must fail");
    assert!(format!("{error:#}").contains("Redis"), "{error:#}");
}

async fn a_redis_that_dies_later_fails_soft() {
    let metrics = stratus_kit::metrics::install();
    let mut server = Redis::start();
    let cache = Cache::open("dies", &args(Some(server.url()), Duration::from_secs(60)))
        .await
        .unwrap();
    let table = Table::default();
    table.put("a", 9);
    get_or_load(&cache, "a", || table.load("a")).await.unwrap();
    assert_eq!(
        get_or_load(&cache, "a", || table.load("a"))
            .await
            .unwrap()
            .1,
        Outcome::Hit
    );

    server.kill();
    let started = Instant::now();
    for _ in 0..20 {
        let (value, outcome) = get_or_load(&cache, "a", || table.load("a")).await.unwrap();
        assert_eq!((value.unwrap().price, outcome), (9, Outcome::Miss));
        cache.invalidate("a").await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "calls to a dead Redis must fail fast: {:?}",
        started.elapsed()
    );
    let metrics = metrics.render();
    let errors = metrics
        .lines()
        .find(|l| l.starts_with("cache_errors_total{cache=\"dies\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    assert!(errors >= 20.0, "errors counted: {errors}\n{metrics}");
}

/// The write-back buffer does not depend on the store: it sits between callers and the database.
#[derive(Clone, Default)]
struct Counters {
    totals: Arc<Mutex<HashMap<String, i64>>>,
    batches: Arc<AtomicUsize>,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl Counters {
    fn writer(&self, settings: WriteBackSettings) -> WriteBack {
        let counters = self.clone();
        WriteBack::start("views-test", settings, move |batch| {
            let counters = counters.clone();
            Box::pin(async move {
                if counters.failing.load(Ordering::SeqCst) {
                    anyhow::bail!("database down");
                }
                counters.batches.fetch_add(1, Ordering::SeqCst);
                let mut totals = counters.totals.lock().unwrap();
                for (key, by) in batch {
                    *totals.entry(key).or_insert(0) += by;
                }
                Ok(())
            })
        })
    }

    fn total(&self, key: &str) -> i64 {
        self.totals.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn write_back_flushes_in_batches() {
    let counters = Counters::default();
    let views = counters.writer(WriteBackSettings {
        every: Duration::from_millis(100),
        max_pending: 1000,
    });
    for _ in 0..500 {
        views.add("a", 1);
    }
    views.add("b", 3);
    assert_eq!(counters.total("a"), 0, "nothing is written on add");
    until("the timed flush", || counters.total("a") == 500).await;
    assert_eq!(counters.total("b"), 3);
    assert!(
        counters.batches.load(Ordering::SeqCst) <= 2,
        "501 increments took {} writes",
        counters.batches.load(Ordering::SeqCst)
    );
    views.close().await;
}

async fn write_back_flushes_early_when_many_keys_wait() {
    let counters = Counters::default();
    let views = counters.writer(WriteBackSettings {
        every: Duration::from_secs(3600),
        max_pending: 10,
    });
    for i in 0..10 {
        views.add(&format!("k{i}"), 1);
    }
    until("the early flush", || counters.total("k9") == 1).await;
    views.close().await;
}

async fn write_back_keeps_a_failed_batch_and_flushes_on_close() {
    let counters = Counters::default();
    let views = counters.writer(WriteBackSettings {
        every: Duration::from_millis(50),
        max_pending: 1000,
    });
    counters.failing.store(true, Ordering::SeqCst);
    views.add("a", 2);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(counters.total("a"), 0);
    assert_eq!(views.pending(), 1, "the failed batch is back in the buffer");
    counters.failing.store(false, Ordering::SeqCst);
    views.add("a", 1);
    views.close().await;
    assert_eq!(
        counters.total("a"),
        3,
        "close flushed everything, nothing lost or doubled"
    );
}

/// Each pattern's test twice: `memory::<name>` and `redis::<name>` (on a redis-server of its own).
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        vec![
            $(Test::new(concat!("memory::", stringify!($name)), || $name(Store::Memory)),)*
            $(
                Test::new(concat!("redis::", stringify!($name)), || $name(Store::Redis))
                    .needs(&[Need::Redis]),
            )*
        ]
    };
}

fn main() -> std::process::ExitCode {
    let mut tests = on_both_stores!(
        cache_aside_loads_once_and_invalidation_reloads,
        read_through_binds_the_loader,
        write_through_caches_what_was_stored,
        values_expire_after_the_ttl_and_ttl_zero_is_off,
    );
    tests.extend([
        Test::new(
            "redis_is_shared_between_instances",
            redis_is_shared_between_instances,
        )
        .needs(&[Need::Redis]),
        Test::new(
            "an_unreachable_redis_at_start_is_an_error",
            an_unreachable_redis_at_start_is_an_error,
        ),
        Test::new(
            "a_redis_that_dies_later_fails_soft",
            a_redis_that_dies_later_fails_soft,
        )
        .needs(&[Need::Redis]),
        Test::new(
            "write_back_flushes_in_batches",
            write_back_flushes_in_batches,
        ),
        Test::new(
            "write_back_flushes_early_when_many_keys_wait",
            write_back_flushes_early_when_many_keys_wait,
        ),
        Test::new(
            "write_back_keeps_a_failed_batch_and_flushes_on_close",
            write_back_keeps_a_failed_batch_and_flushes_on_close,
        ),
    ]);
    stratus_testing::run(tests)
}
