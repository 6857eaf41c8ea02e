//! Upstreams: the live instances of every service, with the little state the gateway keeps on
//! each (marked down after a failure, requests in flight, latency), grouped into pools.
//!
//! The set of instances comes from the registry's watch and is swapped in atomically; the request
//! path only ever reads a snapshot. Choosing an instance from a pool is in [`crate::upstream::balance`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::uri::Authority;
use http::HeaderValue;
use stratus_kit::model::{Catalog, Instance};

use crate::upstream::breaker::{Breaker, State as BreakerState};
use crate::upstream::check::{Check, Probe};
use crate::upstream::schedule::{maglev_table, weighted_schedule};

/// How fast old latency samples lose weight in the EWMA (Linkerd uses 10 s).
const EWMA_DECAY: Duration = Duration::from_secs(10);
/// Assumed latency of an instance with no samples yet: new instances get tried, not flooded.
const DEFAULT_LATENCY_NS: u64 = 1_000_000;
/// Weights are capped so a weighted schedule stays small.
const MAX_WEIGHT: u32 = 100;

pub struct Endpoint {
    /// A number no other endpoint of this process has had: the workers' connection pools are
    /// keyed by it (an instance that leaves and comes back is a new endpoint, with new
    /// connections).
    pub key: u64,
    pub id: String,
    pub service: String,
    pub version: String,
    pub weight: u32,
    pub authority: Authority,
    /// `Host` for requests to it: its authority, built once.
    pub host: HeaderValue,
    /// `x-served-by: <service>/<instance-id>`, built once.
    pub served_by: HeaderValue,
    /// Circuit breaker and outlier detection: whether this endpoint gets traffic.
    pub breaker: Breaker,
    /// Active health checking: how this instance is asked (metadata `health_check`),
    /// consecutive probe outcomes, and the verdict.
    pub check: Check,
    pub probe: Probe,
    actively_healthy: AtomicBool,
    in_flight: AtomicUsize,
    /// Peak-EWMA latency in nanoseconds (0: no sample yet), and when it was last updated.
    ewma_ns: AtomicU64,
    ewma_at: AtomicU64,
    epoch: Instant,
}

/// Counts a request in flight until dropped.
pub struct InFlight(Arc<Endpoint>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Endpoint {
    fn from_instance(instance: &Instance, epoch: Instant) -> Option<Self> {
        let authority = instance.authority().parse::<Authority>().ok()?;
        let served_by =
            HeaderValue::from_str(&format!("{}/{}", instance.service, instance.id)).ok()?;
        let weight = instance
            .metadata
            .get("weight")
            .and_then(|w| w.parse::<u32>().ok())
            .unwrap_or(1)
            .clamp(1, MAX_WEIGHT);
        static KEYS: AtomicU64 = AtomicU64::new(1);
        Some(Self {
            key: KEYS.fetch_add(1, Ordering::Relaxed),
            id: instance.id.clone(),
            service: instance.service.clone(),
            version: instance.version.clone(),
            weight,
            host: HeaderValue::from_str(authority.as_str()).ok()?,
            authority,
            served_by,
            breaker: Breaker::default(),
            check: Check::of(instance),
            probe: Probe::default(),
            actively_healthy: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
            ewma_ns: AtomicU64::new(0),
            ewma_at: AtomicU64::new(0),
            epoch,
        })
    }

    /// Nanoseconds since the upstreams' epoch: the clock of the breaker and the EWMA.
    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Out of rotation: its breaker is open (or half-open with a trial out), or its active
    /// health check is failing.
    pub fn is_down(&self) -> bool {
        !self.is_actively_healthy()
            || (!self.breaker.is_closed() && !self.breaker.available(self.now_ns()))
    }

    pub fn is_actively_healthy(&self) -> bool {
        self.actively_healthy.load(Ordering::Relaxed)
    }

    pub fn set_actively_healthy(&self, healthy: bool) {
        self.actively_healthy.store(healthy, Ordering::Relaxed);
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state(self.now_ns())
    }

    /// Takes the endpoint out of rotation at once (a refused connection leaves no doubt).
    pub fn trip(&self) {
        self.breaker.trip(self.now_ns());
    }

    /// Records the outcome of a request sent here.
    pub fn record(&self, success: bool) {
        if success {
            self.breaker.on_success();
        } else if self.breaker.on_failure(self.now_ns()) {
            tracing::warn!(service = %self.service, instance = %self.id, "instance ejected after consecutive failures");
            metrics::counter!("gateway_ejections_total", "service" => self.service.clone())
                .increment(1);
        }
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request against this endpoint until the guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    /// Peak EWMA: a sample above the average replaces it at once (a slow instance is noticed on
    /// its first slow answer); below it, it is blended in with a weight that grows with the time
    /// since the last sample.
    pub fn observe_latency(&self, latency: Duration) {
        let now = self.now_ns();
        let sample = (latency.as_nanos() as u64).max(1);
        let previous = self.ewma_ns.load(Ordering::Relaxed);
        let updated = if previous == 0 || sample > previous {
            sample
        } else {
            let elapsed = now.saturating_sub(self.ewma_at.load(Ordering::Relaxed)) as f64;
            let keep = (-elapsed / EWMA_DECAY.as_nanos() as f64).exp();
            (previous as f64 * keep + sample as f64 * (1.0 - keep)) as u64
        };
        self.ewma_ns.store(updated.max(1), Ordering::Relaxed);
        self.ewma_at.store(now, Ordering::Relaxed);
    }

    pub fn latency_ewma(&self) -> Duration {
        Duration::from_nanos(self.ewma_ns.load(Ordering::Relaxed))
    }

    /// Expected cost of sending one more request here: latency times the queue it would join.
    pub fn cost(&self) -> f64 {
        let ewma = match self.ewma_ns.load(Ordering::Relaxed) {
            0 => DEFAULT_LATENCY_NS,
            ns => ns,
        };
        ewma as f64 * (self.in_flight() + 1) as f64
    }

    fn same_target(&self, instance: &Instance) -> bool {
        self.id == instance.id
            && authority_is(self.authority.as_str(), instance)
            && self.version == instance.version
            && instance
                .metadata
                .get("weight")
                .and_then(|w| w.parse::<u32>().ok())
                .unwrap_or(1)
                .clamp(1, MAX_WEIGHT)
                == self.weight
            && Check::of(instance) == self.check
    }
}

/// Whether `authority` is `instance`'s (as [`Instance::authority`] writes it), without writing
/// it: asked for every instance of a changed service on each registry change.
fn authority_is(authority: &str, instance: &Instance) -> bool {
    let Some((host, port)) = authority.rsplit_once(':') else {
        return false;
    };
    let unbracketed = host.strip_prefix('[').and_then(|h| h.strip_suffix(']'));
    port.parse::<u16>().ok() == Some(instance.port)
        && (host == instance.address || unbracketed == Some(instance.address.as_str()))
}

/// The instances of one service, and what the balancing algorithms precompute over them.
pub struct InstancePool {
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Smooth weighted round-robin order (indexes into `endpoints`).
    pub schedule: Vec<u16>,
    /// Maglev consistent-hashing table (indexes into `endpoints`).
    pub maglev: Vec<u16>,
    next: AtomicUsize,
    /// The version of every endpoint, when they all have the same one.
    uniform_version: Option<String>,
    /// When the endpoints run more than one version: a pool per version, with its own schedule,
    /// table and position, so a route split between versions balances evenly inside each.
    by_version: Vec<(String, Arc<InstancePool>)>,
}

impl InstancePool {
    pub fn new(endpoints: Vec<Arc<Endpoint>>, next: usize) -> Self {
        let weights: Vec<u32> = endpoints.iter().map(|e| e.weight).collect();
        let mut versions: Vec<&str> = endpoints.iter().map(|e| e.version.as_str()).collect();
        versions.sort_unstable();
        versions.dedup();
        let (uniform_version, by_version) = match versions.as_slice() {
            [] => (None, Vec::new()),
            [only] => (Some(only.to_string()), Vec::new()),
            many => {
                let pools = many
                    .iter()
                    .map(|version| {
                        let members = endpoints
                            .iter()
                            .filter(|e| e.version == *version)
                            .cloned()
                            .collect();
                        (
                            version.to_string(),
                            Arc::new(InstancePool::new(members, next)),
                        )
                    })
                    .collect();
                (None, pools)
            }
        };
        let ids: Vec<&str> = endpoints.iter().map(|e| e.id.as_str()).collect();
        let maglev = maglev_table(&ids);
        Self {
            schedule: weighted_schedule(&weights),
            maglev,
            endpoints,
            next: AtomicUsize::new(next),
            uniform_version,
            by_version,
        }
    }

    /// The endpoints running `version`, as a pool of their own (None: no such instance).
    pub fn version(&self, version: &str) -> Option<&InstancePool> {
        if self.uniform_version.as_deref() == Some(version) {
            return Some(self);
        }
        self.by_version
            .iter()
            .find(|(v, _)| v == version)
            .map(|(_, pool)| &**pool)
    }

    /// Whether this pool holds exactly these instances, in this order, each as it is now (the
    /// registry lists a service's instances in a stable order).
    fn holds_exactly(&self, instances: &[Instance]) -> bool {
        self.endpoints.len() == instances.len()
            && self
                .endpoints
                .iter()
                .zip(instances)
                .all(|(endpoint, instance)| endpoint.same_target(instance))
    }

    /// The round-robin position, advanced by one.
    pub fn next_position(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }
}

pub struct Upstreams {
    pools: ArcSwap<HashMap<String, Arc<InstancePool>>>,
    index: AtomicU64,
    /// Reference instant for the endpoints' compact timestamps.
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

    pub fn pool(&self, service: &str) -> Option<Arc<InstancePool>> {
        self.pools.load().get(service).cloned()
    }

    /// The registry index of the snapshot in force (0 before the first sync).
    pub fn index(&self) -> u64 {
        self.index.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> Arc<HashMap<String, Arc<InstancePool>>> {
        self.pools.load_full()
    }

    /// Installs a new view of the registry. Endpoints that did not change keep their state (and
    /// each pool its round-robin position), so a change elsewhere does not reset anything.
    ///
    /// A service whose instances are the ones its pool already holds keeps that pool as it is:
    /// a pool precomputes its balancing tables (the weighted schedule, the Maglev table), and
    /// rebuilding every service's on each change made one change cost the gateway tens of
    /// milliseconds with 10,000 instances (`bench/gateway-scale.sh`). Only the changed
    /// service's pool is built again.
    pub fn apply(&self, catalog: &Catalog) {
        let current = self.pools.load();
        let mut pools = HashMap::with_capacity(catalog.services.len());
        for (service, instances) in &catalog.services {
            let previous = current.get(service);
            if let Some(pool) = previous.filter(|pool| pool.holds_exactly(instances)) {
                pools.insert(service.clone(), Arc::clone(pool));
                continue;
            }
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
                Arc::new(InstancePool::new(endpoints, next)),
            );
        }
        self.pools.store(Arc::new(pools));
        self.index.store(catalog.index, Ordering::Relaxed);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::upstream::balance::Balance;
    use stratus_kit::model::Health;

    pub fn instance(id: &str, port: u16, weight: u32) -> Instance {
        let mut metadata = std::collections::BTreeMap::new();
        metadata.insert("weight".to_string(), weight.to_string());
        Instance {
            id: id.into(),
            service: "catalog".into(),
            address: "127.0.0.1".into(),
            port,
            version: "1".into(),
            metadata,
            health: Health::Passing,
            ttl_seconds: 3.0,
            registered_at: String::new(),
        }
    }

    /// An endpoint for an instance listening on 127.0.0.1:`port`.
    pub fn endpoint(port: u16) -> Endpoint {
        Endpoint::from_instance(&instance("i-1", port, 1), Instant::now()).unwrap()
    }

    /// An endpoint for an instance of `service` listening on 127.0.0.1:`port`.
    pub fn endpoint_of(service: &str, port: u16) -> Endpoint {
        let instance = Instance {
            service: service.to_string(),
            ..instance("i-1", port, 1)
        };
        Endpoint::from_instance(&instance, Instant::now()).unwrap()
    }

    fn catalog(index: u64, instances: Vec<Instance>) -> Catalog {
        let mut catalog = Catalog {
            index,
            ..Catalog::default()
        };
        catalog.services.insert("catalog".into(), instances);
        catalog
    }

    /// A pool of `(id, version)` endpoints, for the deployment tests.
    pub fn versioned_pool(specs: &[(&str, &str)]) -> Arc<InstancePool> {
        let upstreams = Upstreams::new();
        let instances = specs
            .iter()
            .enumerate()
            .map(|(i, (id, version))| Instance {
                version: version.to_string(),
                ..instance(id, 9000 + i as u16, 1)
            })
            .collect();
        upstreams.apply(&catalog(1, instances));
        upstreams.pool("catalog").unwrap()
    }

    #[test]
    fn a_pool_of_several_versions_has_a_pool_per_version() {
        let pool = versioned_pool(&[("a", "1.0"), ("b", "1.1"), ("c", "1.0")]);
        let ids = |p: &InstancePool| p.endpoints.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(pool.version("1.0").unwrap()), ["a", "c"]);
        assert_eq!(ids(pool.version("1.1").unwrap()), ["b"]);
        assert!(pool.version("2.0").is_none());
        let single = versioned_pool(&[("a", "1.0")]);
        assert!(std::ptr::eq(single.version("1.0").unwrap(), &*single));
    }

    /// A pool of `(id, weight)` endpoints, for the balancing tests.
    pub fn pool_of(specs: &[(&str, u32)]) -> Arc<InstancePool> {
        let upstreams = Upstreams::new();
        let instances = specs
            .iter()
            .enumerate()
            .map(|(i, (id, w))| instance(id, 9000 + i as u16, *w))
            .collect();
        upstreams.apply(&catalog(1, instances));
        upstreams.pool("catalog").unwrap()
    }

    #[test]
    fn all_down_still_tries_rather_than_refusing() {
        let pool = pool_of(&[("a", 1)]);
        pool.endpoints[0].trip();
        let balance = Balance::default();
        assert_eq!(pool.pick(&balance, None, None).unwrap().id, "a");
        assert!(pool.pick(&balance, None, Some("a")).is_none());
    }

    #[test]
    fn unchanged_endpoints_keep_their_state_across_updates() {
        let upstreams = Upstreams::new();
        upstreams.apply(&catalog(
            7,
            vec![instance("a", 9000, 1), instance("b", 9001, 1)],
        ));
        upstreams.pool("catalog").unwrap().endpoints[0].trip();
        upstreams.apply(&catalog(
            8,
            vec![instance("a", 9000, 1), instance("c", 9002, 1)],
        ));
        let pool = upstreams.pool("catalog").unwrap();
        assert_eq!(pool.endpoints.len(), 2);
        assert!(pool.endpoints[0].is_down());
        assert_eq!(upstreams.index(), 8);
    }

    #[test]
    fn a_change_rebuilds_only_the_changed_service_s_pool() {
        let upstreams = Upstreams::new();
        let mut view = catalog(1, vec![instance("a", 9000, 1), instance("b", 9001, 1)]);
        view.services
            .insert("orders".into(), vec![instance("o", 9100, 1)]);
        upstreams.apply(&view);
        let catalog_before = upstreams.pool("catalog").unwrap();
        let orders_before = upstreams.pool("orders").unwrap();

        // orders gains an instance: catalog's pool is the very same, orders' is new.
        view.index = 2;
        view.services.insert(
            "orders".into(),
            vec![instance("o", 9100, 1), instance("p", 9101, 1)],
        );
        upstreams.apply(&view);
        assert!(Arc::ptr_eq(
            &catalog_before,
            &upstreams.pool("catalog").unwrap()
        ));
        let orders_after = upstreams.pool("orders").unwrap();
        assert!(!Arc::ptr_eq(&orders_before, &orders_after));
        assert_eq!(orders_after.endpoints.len(), 2);
        assert!(Arc::ptr_eq(
            &orders_before.endpoints[0],
            &orders_after.endpoints[0]
        ));

        // A new weight is a change too: the pool is built again with it.
        view.index = 3;
        view.services.insert(
            "catalog".into(),
            vec![instance("a", 9000, 5), instance("b", 9001, 1)],
        );
        upstreams.apply(&view);
        let catalog_after = upstreams.pool("catalog").unwrap();
        assert!(!Arc::ptr_eq(&catalog_before, &catalog_after));
        assert_eq!(catalog_after.endpoints[0].weight, 5);
    }

    #[test]
    fn an_authority_is_compared_without_being_written() {
        let mut v4 = instance("a", 9000, 1);
        assert!(authority_is("127.0.0.1:9000", &v4));
        assert!(!authority_is("127.0.0.1:9001", &v4));
        assert!(!authority_is("127.0.0.2:9000", &v4));
        v4.address = "::1".into();
        assert!(authority_is("[::1]:9000", &v4));
        v4.address = "[::1]".into();
        assert!(authority_is("[::1]:9000", &v4));
        assert!(!authority_is("no-port", &v4));
    }

    #[test]
    fn in_flight_guards_count_and_release() {
        let pool = pool_of(&[("a", 1)]);
        let endpoint = &pool.endpoints[0];
        let first = endpoint.start();
        let second = endpoint.start();
        assert_eq!(endpoint.in_flight(), 2);
        drop(first);
        drop(second);
        assert_eq!(endpoint.in_flight(), 0);
    }

    #[test]
    fn peak_ewma_jumps_up_and_decays_down() {
        let pool = pool_of(&[("a", 1)]);
        let endpoint = &pool.endpoints[0];
        endpoint.observe_latency(Duration::from_millis(1));
        endpoint.observe_latency(Duration::from_millis(100));
        assert_eq!(endpoint.latency_ewma(), Duration::from_millis(100));
        endpoint.observe_latency(Duration::from_millis(1));
        assert!(endpoint.latency_ewma() <= Duration::from_millis(100));
        assert!(endpoint.latency_ewma() > Duration::from_millis(1));
    }
}
