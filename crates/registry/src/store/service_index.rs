//! An index per service, so a blocking query on one service wakes only when that service changes.
//!
//! The registry's index moves on every change to any service; a watcher of one service that waited
//! on it would wake (and be sent its unchanged service again) for every change anywhere. So each
//! store also remembers, per service, the registry index at which that service last changed (as
//! Consul's `X-Consul-Index` for a service is its last modify index), answers a service's query
//! with that index, and keeps one wake-up channel per service for the queries blocked on it.
//!
//! A service's index is a registry index, so it never runs ahead of the registry's: a watcher can
//! move between the whole catalog and one service without its index meaning something else. A
//! removed service keeps its index (a watcher blocked on it must still learn it went), so this
//! map grows with the names of services that ever existed, not with instances or changes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use super::wait_past;

#[derive(Default)]
pub(crate) struct ServiceIndexes {
    /// Each channel's value is the index at which its service last changed; 0 means the service
    /// has not changed since this process started (an entry made only for a waiter).
    services: Mutex<HashMap<String, Arc<watch::Sender<u64>>>>,
}

impl ServiceIndexes {
    fn services(&self) -> MutexGuard<'_, HashMap<String, Arc<watch::Sender<u64>>>> {
        // Every update is one insert or one value change: a poisoned lock is still consistent.
        self.services
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The index at which `service` last changed (0: not since this process started).
    pub fn get(&self, service: &str) -> u64 {
        self.services()
            .get(service)
            .map_or(0, |index| *index.borrow())
    }

    /// Records that `service` changed at `index` and wakes its blocked queries. An index older
    /// than the one recorded is ignored: a service's index never goes back.
    pub fn changed(&self, service: &str, index: u64) {
        let mut services = self.services();
        match services.get(service) {
            Some(current) => {
                current.send_if_modified(|current| raise(current, index));
            }
            None => {
                services.insert(service.to_string(), Arc::new(watch::Sender::new(index)));
            }
        }
    }

    /// Records that every known service may have changed at `index` (the store lost track of
    /// what changed, as when etcd compacts past a watch), and wakes every blocked query.
    pub fn all_changed(&self, index: u64) {
        for current in self.services().values() {
            current.send_if_modified(|current| raise(current, index));
        }
    }

    /// Waits until `service`'s index passes `after`, or `wait` elapses. Returns its index then.
    pub async fn wait_past(&self, service: &str, after: u64, wait: Duration) -> u64 {
        let channel = self.channel(service);
        let index = wait_past(&channel, after, wait).await;
        drop(channel);
        self.forget_if_unused(service);
        index
    }

    /// Waits until the index of any of `services` passes `after`, or `wait` elapses. Returns
    /// the newest of their indexes then.
    pub async fn wait_past_any(&self, services: &[String], after: u64, wait: Duration) -> u64 {
        let channels: Vec<_> = services.iter().map(|s| self.channel(s)).collect();
        let mut receivers: Vec<_> = channels.iter().map(|c| c.subscribe()).collect();
        let deadline = tokio::time::Instant::now() + wait;
        let newest = loop {
            let newest = receivers
                .iter_mut()
                .map(|r| *r.borrow_and_update())
                .max()
                .unwrap_or(0);
            if newest > after {
                break newest;
            }
            if receivers.is_empty() {
                tokio::time::sleep_until(deadline).await;
                break newest;
            }
            let changes = receivers.iter_mut().map(|r| Box::pin(r.changed()));
            match tokio::time::timeout_at(deadline, futures_util::future::select_all(changes)).await
            {
                Ok((Ok(()), _, _)) => continue,
                _ => break newest,
            }
        };
        drop(receivers);
        drop(channels);
        for service in services {
            self.forget_if_unused(service);
        }
        newest
    }

    fn channel(&self, service: &str) -> Arc<watch::Sender<u64>> {
        self.services()
            .entry(service.to_string())
            .or_insert_with(|| Arc::new(watch::Sender::new(0)))
            .clone()
    }

    /// A name asked about that never changed is forgotten once nobody waits on it, so queries
    /// for services that do not exist leave nothing behind.
    fn forget_if_unused(&self, service: &str) {
        let mut services = self.services();
        if let Some(channel) = services.get(service) {
            if *channel.borrow() == 0 && Arc::strong_count(channel) == 1 {
                services.remove(service);
            }
        }
    }

    /// How many services have an entry (for tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.services().len()
    }
}

fn raise(current: &mut u64, index: u64) -> bool {
    if index > *current {
        *current = index;
        true
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_wakes_for_its_own_service_only() {
        let indexes = Arc::new(ServiceIndexes::default());
        indexes.changed("a", 5);
        let waiter = {
            let indexes = indexes.clone();
            tokio::spawn(async move { indexes.wait_past("a", 5, Duration::from_secs(5)).await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        for index in 6..56 {
            indexes.changed("b", index);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "a change to b woke a's waiter");
        indexes.changed("a", 57);
        let seen = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen, 57);
        indexes.changed("a", 3);
        assert_eq!(indexes.get("a"), 57, "never goes back");
    }

    #[tokio::test]
    async fn a_waiter_on_several_services_wakes_for_any_of_them_only() {
        let indexes = Arc::new(ServiceIndexes::default());
        let named = vec!["a".to_string(), "c".to_string()];
        let waiter = {
            let (indexes, named) = (indexes.clone(), named.clone());
            tokio::spawn(async move {
                indexes
                    .wait_past_any(&named, 1, Duration::from_secs(5))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        for index in 2..20 {
            indexes.changed("b", index);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiter.is_finished(),
            "a change to b woke a waiter on a and c"
        );
        indexes.changed("c", 21);
        let seen = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen, 21);
        assert_eq!(indexes.len(), 2, "b and c changed; a is forgotten");
        assert_eq!(
            indexes
                .wait_past_any(&[], 0, Duration::from_millis(10))
                .await,
            0,
            "nothing named: the wait runs out"
        );
    }

    #[tokio::test]
    async fn names_nobody_changed_are_forgotten_after_the_wait() {
        let indexes = ServiceIndexes::default();
        assert_eq!(
            indexes
                .wait_past("ghost", 1, Duration::from_millis(10))
                .await,
            0
        );
        assert_eq!(indexes.len(), 0);
        indexes.changed("real", 2);
        indexes
            .wait_past("real", 2, Duration::from_millis(10))
            .await;
        assert_eq!(indexes.len(), 1, "a changed service keeps its index");
    }
}
