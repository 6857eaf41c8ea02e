//! Instance-based load balancing: which live instance of a service gets the next request.
//!
//! Each route names its algorithm (`balance = "..."` in the route file):
//!
//! | algorithm | picks | good for |
//! |---|---|---|
//! | `round_robin` | each instance in turn | identical instances, even load |
//! | `weighted_round_robin` | in turn, `weight` times as often (metadata `weight`) | mixed capacity |
//! | `least_connections` | the fewest requests in flight | long or uneven requests |
//! | `least_response_time` | the lower cost of two random picks, cost = peak-EWMA latency x (in flight + 1) | avoiding slow instances (Finagle, Linkerd) |
//! | `ip_hash` | the same instance for the same client address | crude stickiness |
//! | `consistent_hash` | the same instance for the same key (`hash_on`: header, cookie or ip), Maglev table | caches, sessions; adding an instance moves ~1/N of keys |
//! | `random` | uniformly at random | a baseline |
//!
//! Every algorithm skips instances whose circuit breaker is open and the one a retry is moving
//! away from; if that leaves nothing, or fewer than half the instances are healthy (the panic
//! threshold), it uses all of them (better a request that may fail than a certain 503).

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderName};
use serde::Deserialize;

use crate::upstream::instances::{Endpoint, InstancePool};
use crate::upstream::schedule::{random_u64, stable_hash};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    #[default]
    RoundRobin,
    WeightedRoundRobin,
    LeastConnections,
    LeastResponseTime,
    IpHash,
    ConsistentHash,
    Random,
}

/// What a hashing algorithm hashes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum HashOn {
    #[default]
    ClientIp,
    Header(HeaderName),
    Cookie(String),
}

impl HashOn {
    /// Parses `ip`, `header:<name>` or `cookie:<name>`.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.split_once(':') {
            None if text == "ip" => Ok(HashOn::ClientIp),
            Some(("header", name)) => HeaderName::from_bytes(name.trim().as_bytes())
                .map(HashOn::Header)
                .map_err(|_| format!("`{name}` is not a header name")),
            Some(("cookie", name)) if !name.trim().is_empty() => {
                Ok(HashOn::Cookie(name.trim().to_string()))
            }
            _ => Err(format!(
                "hash_on `{text}` must be ip, header:<name> or cookie:<name>"
            )),
        }
    }

    /// The request's hash key, if it has one.
    pub fn key(&self, headers: &HeaderMap, client: IpAddr) -> Option<u64> {
        match self {
            HashOn::ClientIp => Some(stable_hash(&client)),
            HashOn::Header(name) => headers.get(name).map(|v| stable_hash(v.as_bytes())),
            HashOn::Cookie(name) => headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|pair| pair.trim().split_once('='))
                .find(|(key, _)| key == name)
                .map(|(_, value)| stable_hash(value.as_bytes())),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Balance {
    pub algorithm: Algorithm,
    pub hash_on: HashOn,
}

impl Balance {
    /// The hash key for `ip_hash` and `consistent_hash`; `None` for the others.
    pub fn key(&self, headers: &HeaderMap, client: IpAddr) -> Option<u64> {
        match self.algorithm {
            Algorithm::IpHash => Some(stable_hash(&client)),
            Algorithm::ConsistentHash => self.hash_on.key(headers, client),
            _ => None,
        }
    }
}

impl InstancePool {
    /// Chooses an endpoint for a request by `balance`, never `exclude`.
    pub fn pick(
        &self,
        balance: &Balance,
        key: Option<u64>,
        exclude: Option<&str>,
    ) -> Option<Arc<Endpoint>> {
        if self.endpoints.is_empty() {
            return None;
        }
        // Panic threshold (as in Envoy): when fewer than half the instances look healthy, the
        // health signal is more likely wrong than right, so spread over all of them rather than
        // pile everything onto the few that are left.
        let healthy = self.endpoints.iter().filter(|e| !e.is_down()).count();
        let panic = healthy * 2 < self.endpoints.len();
        let chosen = if panic {
            self.choose(balance.algorithm, key, exclude, false)
        } else {
            self.choose(balance.algorithm, key, exclude, true)
                .or_else(|| self.choose(balance.algorithm, key, exclude, false))
        };
        let chosen = chosen.cloned()?;
        // Claims the trial request if the instance's breaker is half-open (a closed one needs
        // no clock read).
        if !chosen.breaker.is_closed() {
            chosen.breaker.allows(chosen.now_ns());
        }
        Some(chosen)
    }

    fn choose(
        &self,
        algorithm: Algorithm,
        key: Option<u64>,
        exclude: Option<&str>,
        skip_down: bool,
    ) -> Option<&Arc<Endpoint>> {
        let eligible =
            |e: &Arc<Endpoint>| Some(e.id.as_str()) != exclude && !(skip_down && e.is_down());
        let n = self.endpoints.len();
        // Scan from `start`, in order, for the first eligible endpoint.
        let scan = |start: usize| {
            (0..n)
                .map(|i| &self.endpoints[(start + i) % n])
                .find(|e| eligible(e))
        };
        match algorithm {
            Algorithm::RoundRobin => scan(self.next_position()),
            Algorithm::WeightedRoundRobin => {
                let schedule = &self.schedule;
                let start = self.next_position();
                (0..schedule.len())
                    .map(|i| &self.endpoints[schedule[(start + i) % schedule.len()] as usize])
                    .find(|e| eligible(e))
            }
            Algorithm::LeastConnections => {
                let start = self.next_position();
                (0..n)
                    .map(|i| &self.endpoints[(start + i) % n])
                    .filter(|e| eligible(e))
                    .min_by_key(|e| e.in_flight())
            }
            Algorithm::LeastResponseTime => {
                // Power of two choices: two distinct random candidates, the cheaper one wins.
                // Cheap, and it never herds every request onto the one instance that looked best.
                let a = scan(random_u64() as usize % n)?;
                let offset = 1 + random_u64() as usize % n.max(2).saturating_sub(1);
                let b = (0..n)
                    .map(|i| &self.endpoints[(self.index_of(a) + offset + i) % n])
                    .find(|e| eligible(e) && !Arc::ptr_eq(e, a))
                    .unwrap_or(a);
                Some(if b.cost() < a.cost() { b } else { a })
            }
            Algorithm::IpHash | Algorithm::ConsistentHash => match key {
                Some(key) if !self.maglev.is_empty() => {
                    let m = self.maglev.len();
                    let start = (key % m as u64) as usize;
                    // The key's slot, or the next slots' endpoints while its own is unavailable.
                    (0..m)
                        .map(|i| &self.endpoints[self.maglev[(start + i) % m] as usize])
                        .find(|e| eligible(e))
                }
                _ => scan(self.next_position()),
            },
            Algorithm::Random => scan(random_u64() as usize % n),
        }
    }

    fn index_of(&self, endpoint: &Arc<Endpoint>) -> usize {
        self.endpoints
            .iter()
            .position(|e| Arc::ptr_eq(e, endpoint))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::Duration;

    use super::*;
    use crate::upstream::instances::tests::pool_of;
    use crate::upstream::schedule::weighted_schedule;

    fn counts(
        pool: &InstancePool,
        balance: &Balance,
        picks: usize,
        key: impl Fn(usize) -> Option<u64>,
    ) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for i in 0..picks {
            *counts
                .entry(pool.pick(balance, key(i), None).unwrap().id.clone())
                .or_insert(0) += 1;
        }
        counts
    }

    fn balance(algorithm: Algorithm) -> Balance {
        Balance {
            algorithm,
            hash_on: HashOn::ClientIp,
        }
    }

    #[test]
    fn round_robin_is_exactly_even() {
        let pool = pool_of(&[("a", 1), ("b", 1), ("c", 1)]);
        let counts = counts(&pool, &balance(Algorithm::RoundRobin), 300, |_| None);
        assert!(counts.values().all(|c| *c == 100), "{counts:?}");
    }

    #[test]
    fn weighted_round_robin_follows_weights_smoothly() {
        let pool = pool_of(&[("a", 5), ("b", 1), ("c", 1)]);
        let counts = counts(&pool, &balance(Algorithm::WeightedRoundRobin), 700, |_| {
            None
        });
        assert_eq!((counts["a"], counts["b"], counts["c"]), (500, 100, 100));
        // Smooth: the heavy instance never gets more than two in a row with these weights.
        assert_eq!(weighted_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn least_connections_prefers_the_idle() {
        let pool = pool_of(&[("a", 1), ("b", 1), ("c", 1)]);
        let _busy_a: Vec<_> = (0..3).map(|_| pool.endpoints[0].start()).collect();
        let _busy_b = pool.endpoints[1].start();
        let counts = counts(&pool, &balance(Algorithm::LeastConnections), 50, |_| None);
        assert_eq!(counts.get("c"), Some(&50), "{counts:?}");
    }

    #[test]
    fn least_connections_spreads_ties_evenly() {
        let pool = pool_of(&[("a", 1), ("b", 1)]);
        let counts = counts(&pool, &balance(Algorithm::LeastConnections), 100, |_| None);
        assert_eq!((counts["a"], counts["b"]), (50, 50));
    }

    #[test]
    fn least_response_time_avoids_the_slow_instance() {
        let pool = pool_of(&[("fast1", 1), ("fast2", 1), ("slow", 1)]);
        for _ in 0..10 {
            pool.endpoints[0].observe_latency(Duration::from_millis(2));
            pool.endpoints[1].observe_latency(Duration::from_millis(2));
            pool.endpoints[2].observe_latency(Duration::from_millis(200));
        }
        let counts = counts(&pool, &balance(Algorithm::LeastResponseTime), 3000, |_| {
            None
        });
        // P2C sends to the slow one only when both random picks are... never both, with distinct
        // candidates: the slow instance loses every comparison.
        assert_eq!(counts.get("slow"), None, "{counts:?}");
        assert!(
            counts["fast1"] > 1000 && counts["fast2"] > 1000,
            "{counts:?}"
        );
    }

    #[test]
    fn random_is_roughly_uniform() {
        let pool = pool_of(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)]);
        let counts = counts(&pool, &balance(Algorithm::Random), 8000, |_| None);
        assert!(
            counts.values().all(|c| (1600..2400).contains(c)),
            "{counts:?}"
        );
    }

    #[test]
    fn ip_hash_is_sticky_per_client() {
        let pool = pool_of(&[("a", 1), ("b", 1), ("c", 1)]);
        let balance = balance(Algorithm::IpHash);
        let headers = HeaderMap::new();
        for last in 1..50u8 {
            let client = IpAddr::from([10, 0, 0, last]);
            let key = balance.key(&headers, client);
            let first = pool.pick(&balance, key, None).unwrap().id.clone();
            for _ in 0..5 {
                assert_eq!(pool.pick(&balance, key, None).unwrap().id, first);
            }
        }
    }

    #[test]
    fn consistent_hash_moves_about_one_nth_of_keys_when_an_instance_joins() {
        let four = pool_of(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)]);
        let five = pool_of(&[("a", 1), ("b", 1), ("c", 1), ("d", 1), ("e", 1)]);
        let balance = balance(Algorithm::ConsistentHash);
        let keys: Vec<u64> = (0..10_000u32).map(|k| stable_hash(&k)).collect();
        let mut moved = 0;
        let mut moved_to_new = 0;
        let mut shares: HashMap<String, usize> = HashMap::new();
        for key in &keys {
            let before = four.pick(&balance, Some(*key), None).unwrap().id.clone();
            let after = five.pick(&balance, Some(*key), None).unwrap().id.clone();
            *shares.entry(after.clone()).or_insert(0) += 1;
            if before != after {
                moved += 1;
                moved_to_new += usize::from(after == "e");
            }
        }
        // Ideal is exactly 1/5 of the keys, all to the new instance; Maglev trades a little of
        // that (a few keys shuffle between old instances) for an even spread.
        let fraction = moved as f64 / keys.len() as f64;
        assert!((0.15..0.30).contains(&fraction), "moved {fraction}");
        assert!(
            moved_to_new as f64 >= 0.8 * moved as f64,
            "{moved_to_new} of {moved} moved to the new instance"
        );
        assert!(
            shares.values().all(|s| (1700..2300).contains(s)),
            "{shares:?}"
        );
    }

    #[test]
    fn consistent_hash_by_header_and_cookie() {
        let pool = pool_of(&[("a", 1), ("b", 1), ("c", 1)]);
        let client = IpAddr::from([127, 0, 0, 1]);
        let by_header = Balance {
            algorithm: Algorithm::ConsistentHash,
            hash_on: HashOn::parse("header:x-user").unwrap(),
        };
        let by_cookie = Balance {
            algorithm: Algorithm::ConsistentHash,
            hash_on: HashOn::parse("cookie:session").unwrap(),
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-user", "ann".parse().unwrap());
        headers.insert(
            http::header::COOKIE,
            "theme=dark; session=s-42".parse().unwrap(),
        );
        assert!(by_header.key(&headers, client).is_some());
        assert_eq!(
            by_cookie.key(&headers, client),
            Some(stable_hash("s-42".as_bytes()))
        );
        let first = pool
            .pick(&by_cookie, by_cookie.key(&headers, client), None)
            .unwrap()
            .id
            .clone();
        for _ in 0..10 {
            assert_eq!(
                pool.pick(&by_cookie, by_cookie.key(&headers, client), None)
                    .unwrap()
                    .id,
                first
            );
        }
        assert!(HashOn::parse("colour").is_err());
    }

    #[test]
    fn every_algorithm_skips_down_and_excluded_instances() {
        let pool = pool_of(&[("a", 1), ("b", 1), ("c", 1)]);
        pool.endpoints[0].trip();
        for algorithm in [
            Algorithm::RoundRobin,
            Algorithm::WeightedRoundRobin,
            Algorithm::LeastConnections,
            Algorithm::LeastResponseTime,
            Algorithm::IpHash,
            Algorithm::ConsistentHash,
            Algorithm::Random,
        ] {
            let balance = balance(algorithm);
            for i in 0..50u64 {
                let picked = pool
                    .pick(&balance, Some(stable_hash(&i)), Some("b"))
                    .unwrap();
                assert_eq!(picked.id, "c", "{algorithm:?}");
            }
        }
    }
}
