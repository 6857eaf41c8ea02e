//! Request coalescing: of any number of concurrent misses of one key, one goes to the instance
//! (the leader) and the rest wait for it (nginx's `proxy_cache_lock`, Varnish's waiting list).
//!
//! The leader holds a [`Lead`]; dropping it (the answer stored, or found not storable, or the
//! request gone) wakes every follower, who then looks in the cache again and, finding nothing
//! (the answer was private, or failed), goes to the instance itself. A follower never waits on
//! a second leader after the first: that could chain waits behind answers that are never kept.
//! Works across the gateway's worker threads (each has its own runtime): the wake-up is a
//! `tokio::sync::watch` channel's sender going away.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

pub struct Flights<K> {
    leaders: Arc<Mutex<HashMap<K, watch::Receiver<()>>>>,
}

impl<K> Default for Flights<K> {
    fn default() -> Self {
        Self {
            leaders: Arc::default(),
        }
    }
}

/// What a miss does: fetch (and store) the answer, or wait for the one who does.
pub enum Flight<K: Hash + Eq> {
    Lead(Lead<K>),
    Follow(watch::Receiver<()>),
}

/// The leader's token: while it lives, other misses of the key wait.
pub struct Lead<K: Hash + Eq> {
    key: Option<K>,
    leaders: Arc<Mutex<HashMap<K, watch::Receiver<()>>>>,
    _done: watch::Sender<()>,
}

impl<K: Hash + Eq + Clone> Flights<K> {
    /// Joins the flight for `key`: the first caller leads, the others follow until it lands.
    pub fn join(&self, key: &K) -> Flight<K> {
        let Ok(mut leaders) = self.leaders.lock() else {
            // A poisoned map only loses coalescing: everyone fetches for themselves.
            let (done, _) = watch::channel(());
            return Flight::Lead(Lead {
                key: None,
                leaders: self.leaders.clone(),
                _done: done,
            });
        };
        if let Some(waiting) = leaders.get(key) {
            return Flight::Follow(waiting.clone());
        }
        let (done, waiting) = watch::channel(());
        leaders.insert(key.clone(), waiting);
        Flight::Lead(Lead {
            key: Some(key.clone()),
            leaders: self.leaders.clone(),
            _done: done,
        })
    }

    /// Whether someone is fetching `key` now (a stale answer's refresh need not start another).
    pub fn in_flight(&self, key: &K) -> bool {
        self.leaders.lock().is_ok_and(|l| l.contains_key(key))
    }
}

impl<K: Hash + Eq> Drop for Lead<K> {
    fn drop(&mut self) {
        if let (Some(key), Ok(mut leaders)) = (self.key.take(), self.leaders.lock()) {
            leaders.remove(&key);
        }
        // `_done` goes with it: every follower's `changed()` returns.
    }
}

/// Waits until the leader of this flight is done (or gone).
pub async fn landed(mut waiting: watch::Receiver<()>) {
    // `changed()` fails once the sender is dropped, which is the only thing the leader does.
    while waiting.changed().await.is_ok() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_leads_the_rest_follow_until_it_lands() {
        let flights = Flights::default();
        let Flight::Lead(lead) = flights.join(&"k") else {
            panic!("the first miss leads");
        };
        assert!(flights.in_flight(&"k"));
        let followers: Vec<_> = (0..10)
            .map(|_| match flights.join(&"k") {
                Flight::Follow(waiting) => tokio::spawn(landed(waiting)),
                Flight::Lead(_) => panic!("a second leader"),
            })
            .collect();
        // Another key has a flight of its own.
        assert!(matches!(flights.join(&"other"), Flight::Lead(_)));
        tokio::task::yield_now().await;
        assert!(followers.iter().all(|f| !f.is_finished()));
        drop(lead);
        for follower in followers {
            tokio::time::timeout(std::time::Duration::from_secs(1), follower)
                .await
                .expect("woken")
                .unwrap();
        }
        assert!(!flights.in_flight(&"k"));
        assert!(matches!(flights.join(&"k"), Flight::Lead(_)));
    }
}
