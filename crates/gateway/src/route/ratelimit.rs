//! Rate limits per route: for the whole route, or for each client address.
//!
//! The algorithm is GCRA (the generic cell rate algorithm, a token bucket kept as one number):
//! each key remembers a "theoretical arrival time" (TAT). A request is allowed if the TAT is not
//! more than `burst` intervals ahead of now, and pushes the TAT one interval further. One atomic
//! compare-and-swap per request for a route-wide limit; a small sharded map for per-client ones.
//! With `STRATUS_RATE_LIMIT_REDIS_URL` the same algorithm runs in Redis, shared by every gateway
//! ([`crate::route::ratelimit_redis`]), and this limiter is the fallback while Redis is away.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One budget shared by every client of the route.
    Route,
    /// A budget per client address.
    #[default]
    Client,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSpec {
    pub requests_per_second: f64,
    #[serde(default)]
    pub burst: Option<u32>,
    #[serde(default)]
    pub per: Scope,
}

/// What to tell a client that is over its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub retry_after: Duration,
}

const SHARDS: usize = 16;
/// Per-client entries older than this are forgotten when their shard is swept.
const IDLE: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub struct RateLimiter {
    interval_ns: u64,
    tolerance_ns: u64,
    scope: Scope,
    epoch: Instant,
    route_tat: AtomicU64,
    clients: Vec<Mutex<HashMap<IpAddr, u64>>>,
}

impl RateLimiter {
    pub fn new(spec: &RateLimitSpec) -> Result<Self, String> {
        if !(spec.requests_per_second > 0.0 && spec.requests_per_second <= 10_000_000.0) {
            return Err("rate_limit.requests_per_second must be above 0".into());
        }
        let interval_ns = (1e9 / spec.requests_per_second) as u64;
        let burst = spec
            .burst
            .unwrap_or(spec.requests_per_second.ceil() as u32)
            .max(1);
        Ok(Self {
            interval_ns: interval_ns.max(1),
            tolerance_ns: interval_ns.max(1) * (burst as u64 - 1),
            scope: spec.per,
            epoch: Instant::now(),
            route_tat: AtomicU64::new(0),
            clients: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        })
    }

    /// Time between requests at the steady rate.
    pub fn interval_ns(&self) -> u64 {
        self.interval_ns
    }

    /// How far ahead of now the TAT may run (the burst, as time).
    pub fn tolerance_ns(&self) -> u64 {
        self.tolerance_ns
    }

    pub fn scope(&self) -> Scope {
        self.scope
    }

    pub fn check(&self, client: IpAddr) -> Result<(), Limited> {
        self.check_at(client, self.epoch.elapsed().as_nanos() as u64)
    }

    fn check_at(&self, client: IpAddr, now: u64) -> Result<(), Limited> {
        match self.scope {
            Scope::Route => {
                let mut current = self.route_tat.load(Ordering::Relaxed);
                loop {
                    let next = self.advance(current, now)?;
                    match self.route_tat.compare_exchange_weak(
                        current,
                        next,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    ) {
                        Ok(_) => return Ok(()),
                        Err(actual) => current = actual,
                    }
                }
            }
            Scope::Client => {
                let index = shard_of(&client);
                let mut clients = self.clients[index]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if clients.len() > 4096 {
                    let horizon = now.saturating_sub(IDLE.as_nanos() as u64);
                    clients.retain(|_, tat| *tat > horizon);
                }
                let current = clients.get(&client).copied().unwrap_or(0);
                let next = self.advance(current, now)?;
                clients.insert(client, next);
                Ok(())
            }
        }
    }

    /// The new TAT if a request at `now` is allowed.
    fn advance(&self, tat: u64, now: u64) -> Result<u64, Limited> {
        let tat = tat.max(now);
        if tat - now > self.tolerance_ns {
            let wait = tat - now - self.tolerance_ns;
            return Err(Limited {
                retry_after: Duration::from_nanos(wait),
            });
        }
        Ok(tat + self.interval_ns)
    }
}

fn shard_of(client: &IpAddr) -> usize {
    std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
        .hash_one(client) as usize
        % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn limiter(rps: f64, burst: u32, per: Scope) -> RateLimiter {
        RateLimiter::new(&RateLimitSpec {
            requests_per_second: rps,
            burst: Some(burst),
            per,
        })
        .unwrap()
    }

    #[test]
    fn allows_the_burst_then_the_rate() {
        let limiter = limiter(10.0, 5, Scope::Route);
        let client = IpAddr::from([127, 0, 0, 1]);
        for _ in 0..5 {
            assert!(limiter.check_at(client, 0).is_ok());
        }
        let refused = limiter.check_at(client, 0).unwrap_err();
        assert_eq!(refused.retry_after, Duration::from_millis(100));
        // One more every 100 ms.
        assert!(limiter.check_at(client, 100 * MS).is_ok());
        assert!(limiter.check_at(client, 100 * MS).is_err());
        // Over a long run, exactly the rate gets through.
        let allowed = (0..1000)
            .filter(|i| limiter.check_at(client, 1000 * MS + i * 10 * MS).is_ok())
            .count();
        assert!((100..=106).contains(&allowed), "{allowed}");
    }

    #[test]
    fn per_client_limits_are_independent() {
        let limiter = limiter(1.0, 2, Scope::Client);
        let (ann, bob) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        assert!(limiter.check_at(ann, 0).is_ok());
        assert!(limiter.check_at(ann, 0).is_ok());
        assert!(limiter.check_at(ann, 0).is_err());
        assert!(limiter.check_at(bob, 0).is_ok(), "bob has his own budget");
    }

    #[test]
    fn rejects_nonsense_rates() {
        for rps in [0.0, -1.0, f64::NAN] {
            assert!(RateLimiter::new(&RateLimitSpec {
                requests_per_second: rps,
                burst: None,
                per: Scope::Route
            })
            .is_err());
        }
    }
}
