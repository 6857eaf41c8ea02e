//! Upstreams: the live instances of every service, and choosing one for a request.
//!
//! The set of instances comes from the registry's watch and is swapped in atomically; the request
//! path only ever reads a snapshot. Each instance keeps a little local state of its own: after a
//! connection failure it is marked down for a while, so the next requests skip it at once,
//! before the registry has even noticed the instance is gone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::uri::Authority;
use http::HeaderValue;
use stratus_kit::model::{Catalog, Instance};

/// How long an instance that refused a connection is skipped.
pub const MARK_DOWN_FOR: Duration = Duration::from_secs(5);

pub struct Endpoint {
    pub id: String,
    pub service: String,
    pub version: String,
    pub authority: Authority,
    /// `x-served-by: <service>/<instance-id>`, built once.
    pub served_by: HeaderValue,
    /// Milliseconds since `epoch` until which this endpoint is skipped; 0 when up.
    down_until: AtomicU64,
    epoch: Instant,
}

impl Endpoint {
    fn from_instance(instance: &Instance, epoch: Instant) -> Option<Self> {
        let authority = instance.authority().parse::<Authority>().ok()?;
        let served_by =
            HeaderValue::from_str(&format!("{}/{}", instance.service, instance.id)).ok()?;
        Some(Self {
            id: instance.id.clone(),
            service: instance.service.clone(),
            version: instance.version.clone(),
            authority,
            served_by,
            down_until: AtomicU64::new(0),
            epoch,
        })
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    pub fn is_down(&self) -> bool {
        let until = self.down_until.load(Ordering::Relaxed);
        until != 0 && until > self.now_ms()
    }

    pub fn mark_down(&self, duration: Duration) {
        let until = self.now_ms() + duration.as_millis() as u64;
        self.down_until.store(until.max(1), Ordering::Relaxed);
    }

    fn same_target(&self, instance: &Instance) -> bool {
        self.id == instance.id
            && self.authority.as_str() == instance.authority()
            && self.version == instance.version
    }
}

/// The instances of one service, and its round-robin position.
pub struct Pool {
    pub endpoints: Vec<Arc<Endpoint>>,
    next: AtomicUsize,
}

impl Pool {
    /// Round robin over the endpoints that are up, skipping `exclude` (the instance a retry is
    /// moving away from). If every endpoint is marked down, they are tried anyway: better a
    /// request that might fail than a certain 503.
    pub fn pick(&self, exclude: Option<&str>) -> Option<Arc<Endpoint>> {
        let count = self.endpoints.len();
        if count == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let candidate = |skip_down: bool| {
            (0..count)
                .map(|offset| &self.endpoints[(start + offset) % count])
                .find(|e| Some(e.id.as_str()) != exclude && !(skip_down && e.is_down()))
                .cloned()
        };
        candidate(true).or_else(|| candidate(false))
    }
}

pub struct Upstreams {
    pools: ArcSwap<HashMap<String, Arc<Pool>>>,
    index: AtomicU64,
    /// Reference instant for the endpoints' compact "down until" timestamps.
    epoch: Instant,
}

impl Default for Upstreams {
    fn default() -> Self {
        Self::new()
    }
}

impl Upstreams {
    pub fn new() -> Self {
        Self {
            pools: ArcSwap::default(),
            index: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    pub fn pool(&self, service: &str) -> Option<Arc<Pool>> {
        self.pools.load().get(service).cloned()
    }

    /// The registry index of the snapshot in force (0 before the first sync).
    pub fn index(&self) -> u64 {
        self.index.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Arc<HashMap<String, Arc<Pool>>> {
        self.pools.load_full()
    }

    /// Installs a new view of the registry. Endpoints that did not change keep their state (and
    /// each pool its round-robin position), so a change elsewhere does not reset anything.
    pub fn apply(&self, catalog: &Catalog) {
        let current = self.pools.load();
        let mut pools = HashMap::with_capacity(catalog.services.len());
        for (service, instances) in &catalog.services {
            let previous = current.get(service);
            let endpoints: Vec<Arc<Endpoint>> = instances
                .iter()
                .filter_map(|instance| {
                    let kept = previous.and_then(|pool| {
                        pool.endpoints
                            .iter()
                            .find(|e| e.same_target(instance))
                            .cloned()
                    });
                    kept.or_else(|| Endpoint::from_instance(instance, self.epoch).map(Arc::new))
                })
                .collect();
            let next = previous.map_or(0, |p| p.next.load(Ordering::Relaxed));
            pools.insert(
                service.clone(),
                Arc::new(Pool {
                    endpoints,
                    next: AtomicUsize::new(next),
                }),
            );
        }
        self.pools.store(Arc::new(pools));
        self.index.store(catalog.index, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stratus_kit::model::Health;

    fn instance(id: &str, port: u16) -> Instance {
        Instance {
            id: id.into(),
            service: "catalog".into(),
            address: "127.0.0.1".into(),
            port,
            version: "1".into(),
            metadata: Default::default(),
            health: Health::Passing,
            ttl_seconds: 3.0,
            registered_at: String::new(),
        }
    }

    fn upstreams(ids: &[&str]) -> Upstreams {
        let upstreams = Upstreams::new();
        let mut catalog = Catalog {
            index: 7,
            services: Default::default(),
        };
        catalog.services.insert(
            "catalog".into(),
            ids.iter()
                .enumerate()
                .map(|(i, id)| instance(id, 9000 + i as u16))
                .collect(),
        );
        upstreams.apply(&catalog);
        upstreams
    }

    #[test]
    fn round_robin_visits_every_instance_evenly() {
        let upstreams = upstreams(&["a", "b", "c"]);
        let pool = upstreams.pool("catalog").unwrap();
        let mut counts = HashMap::new();
        for _ in 0..300 {
            *counts
                .entry(pool.pick(None).unwrap().id.clone())
                .or_insert(0) += 1;
        }
        assert_eq!(
            counts.values().copied().collect::<Vec<_>>(),
            vec![100, 100, 100]
        );
    }

    #[test]
    fn skips_marked_down_and_excluded() {
        let upstreams = upstreams(&["a", "b", "c"]);
        let pool = upstreams.pool("catalog").unwrap();
        pool.endpoints[0].mark_down(Duration::from_secs(60));
        for _ in 0..30 {
            let picked = pool.pick(Some("b")).unwrap();
            assert_eq!(picked.id, "c");
        }
    }

    #[test]
    fn all_down_still_tries_rather_than_refusing() {
        let upstreams = upstreams(&["a"]);
        let pool = upstreams.pool("catalog").unwrap();
        pool.endpoints[0].mark_down(Duration::from_secs(60));
        assert_eq!(pool.pick(None).unwrap().id, "a");
        assert!(pool.pick(Some("a")).is_none());
    }

    #[test]
    fn unchanged_endpoints_keep_their_state_across_updates() {
        let upstreams = upstreams(&["a", "b"]);
        upstreams.pool("catalog").unwrap().endpoints[0].mark_down(Duration::from_secs(60));
        let mut catalog = Catalog {
            index: 8,
            services: Default::default(),
        };
        catalog.services.insert(
            "catalog".into(),
            vec![instance("a", 9000), instance("c", 9002)],
        );
        upstreams.apply(&catalog);
        let pool = upstreams.pool("catalog").unwrap();
        assert_eq!(pool.endpoints.len(), 2);
        assert!(pool.endpoints[0].is_down());
        assert_eq!(upstreams.index(), 8);
    }
}
