//! The in-memory store: instances by service, a change index, and lease expiry.
//!
//! Everything lives in this process, so it is gone when the process is; instances re-register
//! within one heartbeat of a restart (a 404 on heartbeat tells them to).

use std::collections::BTreeMap;
use std::future::{ready, Future};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use stratus_kit::model::{Catalog, Instance, Registration, ServiceInstances};
use tokio::sync::watch;

use super::{instance_from, wait_past, Store, StoreResult, DEFAULT_TTL};

struct Entry {
    instance: Instance,
    ttl: Duration,
    expires_at: Instant,
}

#[derive(Default)]
struct State {
    services: BTreeMap<String, BTreeMap<String, Entry>>,
}

/// Every change bumps the index and wakes every watcher.
pub struct MemoryStore {
    state: Mutex<State>,
    index: watch::Sender<u64>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            index: watch::Sender::new(1),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-updated (every update is a
        // single insert or remove), so a poisoned lock is still safe to use.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn bump(&self) {
        self.index.send_modify(|index| *index += 1);
    }

    pub fn index(&self) -> u64 {
        *self.index.borrow()
    }

    /// Adds or replaces an instance. Returns it and whether it was new.
    pub fn register(
        &self,
        service: &str,
        id: &str,
        registration: Registration,
    ) -> (Instance, bool) {
        let ttl = Duration::from_secs_f64(registration.ttl_seconds.unwrap_or(DEFAULT_TTL));
        let mut state = self.state();
        let instances = state.services.entry(service.to_string()).or_default();
        let previous = instances.get(id);
        let registered_at = previous.map(|e| e.instance.registered_at.clone());
        let instance = instance_from(service, id, registration, registered_at);
        let changed = previous.is_none_or(|e| e.instance != instance);
        let created = previous.is_none();
        instances.insert(
            id.to_string(),
            Entry {
                instance: instance.clone(),
                ttl,
                expires_at: Instant::now() + ttl,
            },
        );
        drop(state);
        if changed {
            self.bump();
        }
        (instance, created)
    }

    /// Renews a lease. `false` if the instance is unknown.
    pub fn heartbeat(&self, service: &str, id: &str) -> bool {
        let mut state = self.state();
        match state.services.get_mut(service).and_then(|s| s.get_mut(id)) {
            Some(entry) => {
                entry.expires_at = Instant::now() + entry.ttl;
                true
            }
            None => false,
        }
    }

    pub fn deregister(&self, service: &str, id: &str) -> bool {
        let mut state = self.state();
        let removed = remove(&mut state, service, id);
        drop(state);
        if removed {
            self.bump();
        }
        removed
    }

    /// Drops every instance whose lease has run out; returns them.
    pub fn expire(&self, now: Instant) -> Vec<Instance> {
        let mut state = self.state();
        let expired: Vec<Instance> = state
            .services
            .values()
            .flat_map(|instances| instances.values())
            .filter(|entry| entry.expires_at <= now)
            .map(|entry| entry.instance.clone())
            .collect();
        for instance in &expired {
            remove(&mut state, &instance.service, &instance.id);
        }
        drop(state);
        if !expired.is_empty() {
            self.bump();
        }
        expired
    }

    pub fn catalog(&self) -> Catalog {
        let state = self.state();
        Catalog {
            index: self.index(),
            services: state
                .services
                .iter()
                .map(|(name, instances)| {
                    (
                        name.clone(),
                        instances.values().map(|e| e.instance.clone()).collect(),
                    )
                })
                .collect(),
        }
    }

    pub fn service(&self, name: &str) -> ServiceInstances {
        let state = self.state();
        ServiceInstances {
            index: self.index(),
            name: name.to_string(),
            instances: state
                .services
                .get(name)
                .map(|instances| instances.values().map(|e| e.instance.clone()).collect())
                .unwrap_or_default(),
        }
    }

    /// Waits until the index passes `after`, or `wait` elapses. Returns the index then.
    pub async fn wait_for_change(&self, after: u64, wait: Duration) -> u64 {
        wait_past(&self.index, after, wait).await
    }
}

fn remove(state: &mut State, service: &str, id: &str) -> bool {
    let Some(instances) = state.services.get_mut(service) else {
        return false;
    };
    let removed = instances.remove(id).is_some();
    if instances.is_empty() {
        state.services.remove(service);
    }
    removed
}

impl Store for MemoryStore {
    fn register(
        &self,
        service: &str,
        id: &str,
        registration: Registration,
    ) -> impl Future<Output = StoreResult<(Instance, bool)>> + Send {
        ready(Ok(MemoryStore::register(self, service, id, registration)))
    }

    fn heartbeat(&self, service: &str, id: &str) -> impl Future<Output = StoreResult<bool>> + Send {
        ready(Ok(MemoryStore::heartbeat(self, service, id)))
    }

    fn deregister(
        &self,
        service: &str,
        id: &str,
    ) -> impl Future<Output = StoreResult<bool>> + Send {
        ready(Ok(MemoryStore::deregister(self, service, id)))
    }

    fn catalog(&self) -> impl Future<Output = StoreResult<Catalog>> + Send {
        ready(Ok(MemoryStore::catalog(self)))
    }

    fn service(&self, name: &str) -> impl Future<Output = StoreResult<ServiceInstances>> + Send {
        ready(Ok(MemoryStore::service(self, name)))
    }

    fn wait_for_change(&self, after: u64, wait: Duration) -> impl Future<Output = u64> + Send {
        MemoryStore::wait_for_change(self, after, wait)
    }

    fn check(&self) -> impl Future<Output = Result<(), String>> + Send {
        ready(Ok(()))
    }
}

/// Background task: expires lapsed leases every `period`.
pub async fn reap_expired(store: Arc<MemoryStore>, period: Duration) {
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        for instance in store.expire(Instant::now()) {
            tracing::warn!(service = %instance.service, id = %instance.id, "lease expired; instance dropped");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(port: u16, ttl: f64) -> Registration {
        Registration {
            address: "127.0.0.1".into(),
            port,
            version: Some("1".into()),
            metadata: Default::default(),
            ttl_seconds: Some(ttl),
        }
    }

    #[test]
    fn register_list_deregister() {
        let store = MemoryStore::new();
        let before = store.index();
        let (_, created) = store.register("catalog", "a", registration(1000, 5.0));
        assert!(created);
        assert!(store.index() > before);
        store.register("catalog", "b", registration(1001, 5.0));
        assert_eq!(store.service("catalog").instances.len(), 2);
        assert!(store.deregister("catalog", "a"));
        assert!(!store.deregister("catalog", "a"));
        assert_eq!(store.service("catalog").instances.len(), 1);
    }

    #[test]
    fn re_registering_the_same_thing_changes_nothing() {
        let store = MemoryStore::new();
        store.register("catalog", "a", registration(1000, 5.0));
        let index = store.index();
        let (_, created) = store.register("catalog", "a", registration(1000, 5.0));
        assert!(!created);
        assert_eq!(store.index(), index);
    }

    #[test]
    fn leases_expire_unless_renewed() {
        let store = MemoryStore::new();
        store.register("catalog", "short", registration(1000, 1.0));
        store.register("catalog", "long", registration(1001, 10.0));
        assert!(store.expire(Instant::now()).is_empty());
        let expired = store.expire(Instant::now() + Duration::from_secs(2));
        assert_eq!(
            expired.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
            ["short"]
        );
        assert!(
            !store.heartbeat("catalog", "short"),
            "an expired instance must register again"
        );
        assert!(store.heartbeat("catalog", "long"));
        assert_eq!(
            store.expire(Instant::now() + Duration::from_secs(11)).len(),
            1
        );
        assert!(store.catalog().services.is_empty());
    }

    #[tokio::test]
    async fn watchers_wake_on_change() {
        let store = Arc::new(MemoryStore::new());
        let index = store.index();
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move { store.wait_for_change(index, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        store.register("catalog", "a", registration(1000, 5.0));
        let seen = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(seen > index);
    }

    #[tokio::test]
    async fn watchers_time_out_without_change() {
        let store = MemoryStore::new();
        let index = store.index();
        let seen = store
            .wait_for_change(index, Duration::from_millis(50))
            .await;
        assert_eq!(seen, index);
    }
}
