//! The edge cache: the gateway keeps the answers instances mark as shareable and serves them
//! again without asking (the CDN layer of a self-hosted system; nginx's `proxy_cache`,
//! Varnish).
//!
//! It follows RFC 9111 for a shared cache, and no further:
//!
//! - Only routes with a `cache = { ... }` table use it, only for GET and HEAD, and only what the
//!   instance allows: an answer is kept when its `Cache-Control` gives it a lifetime for a shared
//!   cache (`s-maxage` or `max-age`) and says neither `private`, `no-store` nor `no-cache`, it
//!   sets no cookie, its `Vary` is not `*`, and its length is known and at most the cache's
//!   largest object. There are no heuristic lifetimes: an answer that says nothing is not kept.
//! - A request with credentials (`Authorization` or `Cookie`) goes past the cache unless the
//!   route says `authenticated = true`; then it may be answered from, and fill, the cache only
//!   with answers marked `public` or `s-maxage` (RFC 9111 3.5). The gateway checks the token
//!   before the cache either way, so a cached answer never skips a route's roles.
//! - The key is the route, the host and the path with its query as the client sent them; an
//!   entry also holds the values of the request headers its `Vary` names, and serves only
//!   requests with the same values (one variant per key: a request for another replaces it).
//! - Lifetimes: fresh answers are served with their `Age` and `x-cache: hit`; one past its
//!   lifetime but within `stale-while-revalidate` is served with `x-cache: stale` while one
//!   request fetches a fresh one; within `stale-if-error` (the answer's, or the route's own
//!   `stale_if_error` when longer, RFC 5861's "configured" case) it stands in for an instance
//!   that fails or is gone. `must-revalidate` answers are never served stale.
//! - A request's `no-cache` (or `max-age=0`) makes the gateway fetch a fresh answer (and keep
//!   it); its `no-store` goes past the cache entirely. A stored answer whose `ETag` the client
//!   names in `If-None-Match` is answered 304 by the gateway.
//! - Concurrent misses of one key make one request to an instance ([`flight`]).
//! - Purges: a write (any other method) through the gateway that succeeds purges the path it
//!   wrote to and every answer tagged with a surrogate key its answer names
//!   (`Surrogate-Key: product-7 products`, RFC-less but Fastly's and Varnish's convention); the
//!   admin API purges by path, by tag or everything. A reloaded route table empties the cache.
//!
//! Memory is bounded by [`EdgeCache::new`]'s budget in bytes (moka, weighed by body and
//! headers, each entry expiring when no use of it is allowed any more).

mod directives;
mod entry;
mod flight;
mod index;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AGE, AUTHORIZATION, CONTENT_LENGTH, COOKIE, SET_COOKIE, VARY};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use serde::Deserialize;

pub use directives::Directives;
pub use entry::{Entry, Freshness, X_CACHE};
pub use flight::{landed, Flight, Lead};

/// The header an instance names its answer's surrogate keys in (space-separated).
pub static SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");

/// The largest answer kept unless the route says otherwise.
pub const DEFAULT_MAX_OBJECT: usize = 1 << 20;

/// `cache = { ... }` on a route in the route file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// Requests with credentials may be answered from the cache, with `public` answers only.
    #[serde(default)]
    pub authenticated: bool,
    /// How long past its lifetime an answer stands in for a failing instance, at the least
    /// (e.g. "10m"; the answer's own `stale-if-error` counts when longer).
    #[serde(default)]
    pub stale_if_error: Option<String>,
    /// The largest answer kept, in bytes (default 1 MiB).
    #[serde(default)]
    pub max_object: Option<usize>,
}

/// A route's cache settings and metric handles, made when the route table loads.
#[derive(Debug, Clone)]
pub struct RouteCache {
    pub route: Arc<str>,
    pub authenticated: bool,
    pub stale_if_error: Duration,
    pub max_object: usize,
    metrics: Arc<CacheMetrics>,
}

impl RouteCache {
    pub fn new(route: &str, spec: &CacheSpec) -> Result<Self, String> {
        let stale_if_error = match &spec.stale_if_error {
            Some(text) => stratus_kit::duration::parse(text)
                .map_err(|e| format!("cache.stale_if_error: {e}"))?,
            None => Duration::ZERO,
        };
        Ok(Self {
            route: route.into(),
            authenticated: spec.authenticated,
            stale_if_error,
            max_object: spec.max_object.unwrap_or(DEFAULT_MAX_OBJECT),
            metrics: Arc::new(CacheMetrics::new(route)),
        })
    }

    pub fn count(&self, outcome: Outcome) {
        self.metrics.outcome[outcome as usize].increment(1);
    }
}

/// What the cache did for one request, as `gateway_cache_requests_total{result}` counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered from the cache, fresh (or after waiting for another request's fetch).
    Hit = 0,
    /// Answered from the cache past its lifetime (revalidating, or the instance failing).
    Stale = 1,
    /// Fetched from an instance (and kept, if it could be).
    Miss = 2,
    /// Not the cache's to answer: a write, credentials, `no-store`, an upgrade.
    Bypass = 3,
}

const OUTCOMES: [&str; 4] = ["hit", "stale", "miss", "bypass"];

struct CacheMetrics {
    outcome: [metrics::Counter; 4],
}

impl CacheMetrics {
    fn new(route: &str) -> Self {
        Self {
            outcome: OUTCOMES.map(|result| {
                metrics::counter!("gateway_cache_requests_total", "route" => route.to_string(), "result" => result)
            }),
        }
    }
}

impl std::fmt::Debug for CacheMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CacheMetrics")
    }
}

/// Where a stored answer lives.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    route: Arc<str>,
    host: Option<Box<str>>,
    /// The path and query as the client sent them.
    target: Box<str>,
}

impl Key {
    /// The path, without the query.
    fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or(&self.target)
    }
}

/// How the cache takes part in one request, decided from the request alone.
#[derive(Debug)]
pub enum Plan {
    /// Not the cache's: forward as usual.
    Bypass,
    /// A GET or HEAD the cache may answer: look it up (unless `fetch_fresh`), else fetch it.
    Read {
        key: Key,
        head: bool,
        /// The client asked for a fresh answer (`no-cache`, `max-age=0`): fetch, then keep.
        fetch_fresh: bool,
        /// The client sent credentials (the route allows that): only `public` answers count.
        credentials: bool,
    },
}

/// Decides how the cache takes part in a request on a route with a cache.
pub fn plan(
    cache: &RouteCache,
    method: &Method,
    host: Option<&str>,
    target: &str,
    headers: &HeaderMap,
) -> Plan {
    let head = *method == Method::HEAD;
    if *method != Method::GET && !head {
        return Plan::Bypass;
    }
    let credentials = headers.contains_key(AUTHORIZATION) || headers.contains_key(COOKIE);
    if credentials && !cache.authenticated {
        return Plan::Bypass;
    }
    let asked = Directives::of(headers);
    if asked.no_store || headers.contains_key(http::header::UPGRADE) {
        return Plan::Bypass;
    }
    Plan::Read {
        key: Key {
            route: cache.route.clone(),
            host: host.map(Into::into),
            target: target.into(),
        },
        head,
        fetch_fresh: asked.no_cache || asked.max_age == Some(Duration::ZERO),
        credentials,
    }
}

/// Statuses a cache may keep when the answer gives a lifetime (RFC 9110 15.1's "heuristically
/// cacheable" ones; others are not kept at all here).
fn storable_status(status: StatusCode) -> bool {
    matches!(
        status.as_u16(),
        200 | 203 | 204 | 300 | 301 | 308 | 404 | 405 | 410 | 414 | 501
    )
}

/// Whether an answer may be kept, and for how long: `None` when it may not. `length` is the
/// body's length when known.
pub fn storable(
    cache: &RouteCache,
    credentials: bool,
    request: &HeaderMap,
    status: StatusCode,
    headers: &HeaderMap,
    length: Option<u64>,
) -> Option<Storable> {
    if !storable_status(status) || headers.contains_key(SET_COOKIE) {
        return None;
    }
    let said = Directives::of(headers);
    if said.no_store || said.private || said.no_cache {
        return None;
    }
    // RFC 9111 3.5: an answer to a request with credentials is shared only when it says so.
    if credentials && !(said.public || said.s_maxage.is_some()) {
        return None;
    }
    let fresh_for = said.shared_lifetime()?;
    if length.is_none_or(|l| l > cache.max_object as u64) {
        return None;
    }
    let mut vary = Vec::new();
    for value in headers.get_all(VARY) {
        let text = value.to_str().ok()?;
        for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if name == "*" {
                return None;
            }
            let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
            let value = request.get(&name).cloned();
            vary.push((name, value));
        }
    }
    let age_at_arrival = headers
        .get(AGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(Duration::ZERO, Duration::from_secs);
    let tags = headers
        .get_all(&SURROGATE_KEY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(str::split_ascii_whitespace)
        .map(Into::into)
        .collect();
    Some(Storable {
        fresh_for,
        stale_while_revalidate: said.stale_while_revalidate.unwrap_or_default(),
        stale_if_error: said
            .stale_if_error
            .unwrap_or_default()
            .max(cache.stale_if_error),
        must_revalidate: said.must_revalidate,
        public: said.public || said.s_maxage.is_some(),
        vary,
        tags,
        age_at_arrival,
    })
}

/// What [`storable`] found out about an answer, to make its entry once the body is read.
#[derive(Debug)]
pub struct Storable {
    fresh_for: Duration,
    stale_while_revalidate: Duration,
    stale_if_error: Duration,
    must_revalidate: bool,
    public: bool,
    vary: Vec<(HeaderName, Option<HeaderValue>)>,
    tags: Vec<Box<str>>,
    age_at_arrival: Duration,
}

impl Storable {
    pub fn into_entry(self, status: StatusCode, mut headers: HeaderMap, body: Bytes) -> Entry {
        for name in [&AGE, &X_CACHE, &SURROGATE_KEY] {
            headers.remove(name);
        }
        headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
        Entry {
            status,
            headers,
            body,
            stored: Instant::now(),
            age_at_arrival: self.age_at_arrival,
            fresh_for: self.fresh_for,
            stale_while_revalidate: self.stale_while_revalidate,
            stale_if_error: self.stale_if_error,
            must_revalidate: self.must_revalidate,
            public: self.public,
            vary: self.vary,
            tags: self.tags,
        }
    }
}

/// Each entry lives as long as some use of it is allowed.
struct KeepFor;

impl moka::Expiry<Key, Arc<Entry>> for KeepFor {
    fn expire_after_create(
        &self,
        _key: &Key,
        entry: &Arc<Entry>,
        _now: Instant,
    ) -> Option<Duration> {
        Some(entry.keep_for())
    }
}

/// One purge, as the admin API takes it and as gateways pass it to each other.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Purge {
    /// Every answer stored for this path (any route, host or query).
    Path(String),
    /// Every answer tagged with any of these surrogate keys.
    Tags(Vec<String>),
    /// Everything.
    All,
}

/// The gateway's one cache, shared by its worker threads.
pub struct EdgeCache {
    budget: u64,
    entries: moka::sync::Cache<Key, Arc<Entry>>,
    index: Arc<index::PurgeIndex<Key>>,
    /// Bumped by every purge: a fetch that began before one is not kept (its answer may be
    /// what the purge was for).
    generation: AtomicU64,
    flights: flight::Flights<Key>,
    purges: metrics::Counter,
}

impl EdgeCache {
    /// A cache holding at most `budget` bytes of answers.
    pub fn new(budget: u64) -> Self {
        let index = Arc::new(index::PurgeIndex::default());
        let forget = index.clone();
        let entries = moka::sync::Cache::builder()
            .max_capacity(budget)
            .weigher(|_key: &Key, entry: &Arc<Entry>| entry.weight())
            .expire_after(KeepFor)
            .eviction_listener(move |key: Arc<Key>, entry: Arc<Entry>, cause| {
                // A replaced entry's key is listed again by the insert that replaced it.
                if cause != moka::notification::RemovalCause::Replaced {
                    forget.remove(key.as_ref(), key.path(), &entry.tags);
                }
            })
            .build();
        let cache = Self {
            budget,
            entries,
            index,
            generation: AtomicU64::new(0),
            flights: flight::Flights::default(),
            purges: metrics::counter!("gateway_cache_purges_total"),
        };
        cache.publish_size();
        cache
    }

    /// The stored answer for `key` that `request` may be given, usable or not.
    pub fn get(&self, key: &Key, request: &HeaderMap, credentials: bool) -> Option<Arc<Entry>> {
        let entry = self.entries.get(key)?;
        let shared = !credentials || entry.public;
        (shared && entry.matches(request)).then_some(entry)
    }

    /// The moment a fetch begins, for [`EdgeCache::insert`].
    pub fn begin(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Keeps `entry` under `key`, unless a purge came after its fetch `began`.
    ///
    /// A purge bumps the generation, then takes the keys it names from the index. Listing the
    /// key first and checking the generation on both sides of the store means that a purge
    /// either finds the entry or is seen here, whatever the interleaving.
    pub fn insert(&self, key: Key, entry: Entry, began: u64) {
        let tags = entry.tags.clone();
        self.index.add(&key, key.path(), &tags);
        if self.generation.load(Ordering::Acquire) != began {
            self.index.remove(&key, key.path(), &tags);
            return;
        }
        self.entries.insert(key.clone(), Arc::new(entry));
        if self.generation.load(Ordering::Acquire) != began {
            self.entries.invalidate(&key);
        }
        // moka counts entries and weight in its housekeeping; a miss (never the hit path) is
        // the moment to let it catch up, so the gauges say what is held.
        self.entries.run_pending_tasks();
        self.publish_size();
    }

    pub fn join(&self, key: &Key) -> Flight<Key> {
        self.flights.join(key)
    }

    pub fn in_flight(&self, key: &Key) -> bool {
        self.flights.in_flight(key)
    }

    pub fn purge(&self, purge: &Purge) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let keys = match purge {
            Purge::Path(path) => self.index.take_path(path),
            Purge::Tags(tags) => tags
                .iter()
                .flat_map(|tag| self.index.take_tag(tag))
                .collect(),
            Purge::All => {
                self.entries.invalidate_all();
                self.index.clear();
                Vec::new()
            }
        };
        for key in keys {
            self.entries.invalidate(&key);
        }
        self.purges.increment(1);
        self.publish_size();
    }

    /// The most bytes it holds.
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Entries and bytes held, as moka last counted them.
    pub fn size(&self) -> (u64, u64) {
        (self.entries.entry_count(), self.entries.weighted_size())
    }

    fn publish_size(&self) {
        let (entries, bytes) = self.size();
        metrics::gauge!("gateway_cache_entries").set(entries as f64);
        metrics::gauge!("gateway_cache_bytes").set(bytes as f64);
    }
}

/// The surrogate keys an answer names (for the purge a successful write makes).
pub fn tags_of(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all(&SURROGATE_KEY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(str::split_ascii_whitespace)
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests;
