//! The in-memory store: instances by service, a change index, and lease expiry.
//!
//! Everything lives in this process, so it is gone when the process is; instances re-register
//! within one heartbeat of a restart (a 404 on heartbeat tells them to).
//!
//! **Self-preservation** (Eureka's name for it). One instance going silent is a crash; most of
//! them going silent at once is far more likely to be this registry cut off from the network
//! (or paused) while they all run on. Dropping them would hand every watcher an empty view the
//! moment the network heals, and requests would fail until each instance re-registered. So
//! when a lease lapses while most leases are silent, nothing is dropped: the registry holds
//! the lapsed instances, as listed, until heartbeats come back (then each gets one more lease
//! to renew, and the dead ones expire a TTL later), or for at most `preserve_for`, after which
//! the lapsed are dropped as usual. Watchers meanwhile protect themselves from an instance
//! that really died with their own checks (the gateway's outlier detection and retries).

use std::collections::BTreeMap;
use std::future::{ready, Future};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use stratus_kit::model::{Catalog, Health, Instance, Registration, ServiceInstances};
use tokio::sync::watch;

use super::changes::{ChangeRing, ServiceChange, DEFAULT_CAPACITY};
use super::service_index::ServiceIndexes;
use super::{instance_from, wait_past, Store, StoreResult, DEFAULT_TTL};
use crate::checks::schedule::Schedule;
use crate::checks::{CheckSpec, Due};

struct Entry {
    instance: Instance,
    ttl: Duration,
    expires_at: Instant,
    /// The active check, if the registration declared one, as its probes see it (shared with
    /// the schedule and any probe in flight).
    check: Option<Arc<Due>>,
    /// Consecutive failed probes.
    failures: u32,
    next_check: Instant,
    /// A probe is out; no second one starts until it reports.
    probing: bool,
    generation: u64,
}

impl Entry {
    /// Silent for more than half its lease: it has missed at least one heartbeat (three go out
    /// per TTL), where a live instance on a working network is never silent for more than one.
    fn silent(&self, now: Instant) -> bool {
        now + self.ttl / 2 > self.expires_at
    }
}

#[derive(Default)]
struct State {
    services: BTreeMap<String, BTreeMap<String, Entry>>,
    generations: u64,
    /// When each check is due, soonest first (`checks::schedule`): `due_checks` looks at the
    /// due ones only.
    schedule: Schedule,
    /// Since when lapsed leases are held instead of dropped (see the module docs).
    preserving_since: Option<Instant>,
}

impl State {
    fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.services
            .values()
            .flat_map(|instances| instances.values())
    }

    /// Whether a lapse now looks like this registry's own isolation: at least two instances
    /// silent, and more than half of all.
    fn mostly_silent(&self, now: Instant) -> bool {
        let total = self.entries().count();
        let silent = self.entries().filter(|e| e.silent(now)).count();
        silent >= 2 && silent * 2 > total
    }

    /// Whether most instances with an active check are failing it: at least two, and more
    /// than half.
    fn mostly_failing(&self) -> bool {
        let checked = self.entries().filter(|e| e.check.is_some());
        let (total, failing) = checked.fold((0, 0), |(total, failing), e| {
            (total + 1, failing + usize::from(e.failures > 0))
        });
        failing >= 2 && failing * 2 > total
    }

    /// Gives every checked instance the health its failures say (what self-preservation held).
    /// Returns the instances whose health changed, as they are now.
    fn apply_held_health(&mut self) -> Vec<Instance> {
        let mut changed = Vec::new();
        for entry in self.services.values_mut().flat_map(|s| s.values_mut()) {
            if entry.check.is_none() {
                continue;
            }
            let health = CheckSpec::health_after(entry.failures);
            if entry.instance.health != health {
                entry.instance.health = health;
                changed.push(entry.instance.clone());
            }
        }
        changed
    }

    /// Ends self-preservation: every held lease gets one more TTL from `now`, so the instances
    /// that are alive renew it and the dead ones lapse (alone, this time) a TTL later.
    fn stop_preserving(&mut self, now: Instant) {
        self.preserving_since = None;
        for entry in self.services.values_mut().flat_map(|s| s.values_mut()) {
            if entry.expires_at <= now {
                entry.expires_at = now + entry.ttl;
            }
        }
    }
}

/// Critical instances are kept (their checks go on) but left out of every answer.
fn listed(entry: &Entry) -> bool {
    entry.instance.health != Health::Critical
}

/// Every change bumps the index, and the changed service's own index to it; the whole-catalog
/// watchers wake on the first, each service's watchers on the second.
pub struct MemoryStore {
    state: Mutex<State>,
    index: watch::Sender<u64>,
    /// Each service's index, moved only while `state` is locked, so an answer read under that
    /// lock carries the index of exactly what it holds.
    service_indexes: ServiceIndexes,
    /// Until then the catalog says `warming`: a restarted registry starts empty, and the
    /// instances that are alive come back only with their next heartbeat.
    warm_at: Instant,
    /// This run's id, in every catalog.
    epoch: String,
    /// The longest self-preservation lasts; zero turns it off.
    preserve_for: Duration,
    /// The recent changes, pushed under `state`'s lock before the index moves.
    changes: ChangeRing,
}

/// How long lapsed leases are held at most when most instances fall silent at once.
pub const DEFAULT_PRESERVE_FOR: Duration = Duration::from_secs(60);

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store that is settled from the start (nothing to wait for).
    pub fn new() -> Self {
        Self::warming_for(Duration::ZERO)
    }

    /// A store whose catalog says `warming` for `warmup` after now. Call
    /// [`MemoryStore::end_warming`] then, so watchers learn that the view is settled.
    pub fn warming_for(warmup: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            index: watch::Sender::new(1),
            service_indexes: ServiceIndexes::default(),
            warm_at: Instant::now() + warmup,
            epoch: stratus_kit::new_id(),
            preserve_for: DEFAULT_PRESERVE_FOR,
            changes: ChangeRing::new(1, DEFAULT_CAPACITY),
        }
        .keeping_changes(DEFAULT_CAPACITY)
    }

    /// Keeps at most `capacity` recent changes for the incremental watch (see
    /// [`super::changes`]); a watcher further behind gets a snapshot.
    pub fn keeping_changes(mut self, capacity: usize) -> Self {
        self.changes = ChangeRing::new(self.index(), capacity).in_run(&self.epoch);
        self
    }

    /// Holds lapsed leases for at most `preserve_for` when most instances fall silent at once
    /// (zero: never; see the module docs).
    pub fn preserving_for(mut self, preserve_for: Duration) -> Self {
        self.preserve_for = preserve_for;
        self
    }

    /// Whether lapsed leases are being held because most instances fell silent at once.
    pub fn preserving(&self) -> bool {
        self.state().preserving_since.is_some()
    }

    /// Whether instances may still be missing because the registry started recently.
    pub fn warming(&self) -> bool {
        Instant::now() < self.warm_at
    }

    /// Waits until warming is over, then moves the index, so every blocking query returns with
    /// the settled view (and watchers drop what they were keeping for instances that left).
    pub async fn end_warming(&self) {
        tokio::time::sleep_until(self.warm_at.into()).await;
        let _state = self.state();
        // Incremental watchers are sent a snapshot again: it says the view is settled.
        self.changes.reset(self.index() + 1);
        self.bump(Vec::new());
        // A query on some services gets the catalog's `warming` too: every service's index
        // moves, so those queries learn that the view is settled.
        self.service_indexes.all_changed(self.index());
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the map half-updated (every update is a
        // single insert or remove), so a poisoned lock is still safe to use.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Moves the index on, records `changes` at it (one per service, see [`changed`]) and
    /// makes it the index of each service they touch. Called with the state locked, so no
    /// answer is read between a change and its index; the ring first, so that every watcher
    /// woken by an index finds the change in it.
    fn bump(&self, mut changes: Vec<ServiceChange>) {
        let index = self.index() + 1;
        for change in &mut changes {
            change.index = index;
        }
        let services: Vec<String> = changes.iter().map(|c| c.service.clone()).collect();
        self.changes.push(index, changes);
        self.index.send_modify(|current| *current = index);
        for service in &services {
            self.service_indexes.changed(service, index);
        }
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
        // The API validated the check; a registration made in-process with a bad one gets none.
        let check = CheckSpec::from_registration(&registration).unwrap_or(None);
        let now = Instant::now();
        let mut state = self.state();
        state.generations += 1;
        let generation = state.generations;
        let instances = state.services.entry(service.to_string()).or_default();
        let previous = instances.get(id);
        let registered_at = previous.map(|e| e.instance.registered_at.clone());
        let mut instance = instance_from(service, id, registration, registered_at);
        // The same instance with the same check keeps what its probes found so far; a new
        // instance starts passing, so it is routed to the moment it registers.
        let kept = previous.filter(|e| {
            e.check.as_ref().map(|due| &due.spec) == check.as_ref()
                && e.instance.address == instance.address
                && e.instance.port == instance.port
        });
        let failures = kept.map_or(0, |e| e.failures);
        if let Some(kept) = kept {
            instance.health = kept.instance.health;
        }
        let changed = previous.is_none_or(|e| e.instance != instance);
        let created = previous.is_none();
        let next_check = match (&check, kept) {
            (Some(_), Some(kept)) => kept.next_check,
            (Some(spec), None) => now + spec.interval,
            (None, _) => now,
        };
        let check = check.map(|spec| {
            let due = Due::new(service, id, instance.authority(), spec, generation);
            Arc::new(due)
        });
        if let Some(due) = &check {
            // The previous registration's entry, if any, stays in the schedule until its time
            // and is then skipped: its generation is gone.
            state.schedule.push(next_check, due.clone());
        }
        let instances = state.services.entry(service.to_string()).or_default();
        instances.insert(
            id.to_string(),
            Entry {
                instance: instance.clone(),
                ttl,
                expires_at: now + ttl,
                check,
                failures,
                next_check,
                probing: false,
                generation,
            },
        );
        if changed {
            let mut change = ServiceChange::new(0, service);
            change.set(&instance, instance.health != Health::Critical);
            self.bump(vec![change]);
        }
        drop(state);
        (instance, created)
    }

    /// Renews a lease. `false` if the instance is unknown.
    ///
    /// A heartbeat from an instance whose lease was being held ends self-preservation: the
    /// network is back.
    pub fn heartbeat(&self, service: &str, id: &str) -> bool {
        self.heartbeat_at(service, id, Instant::now())
    }

    fn heartbeat_at(&self, service: &str, id: &str, now: Instant) -> bool {
        let mut state = self.state();
        let Some(entry) = state.services.get_mut(service).and_then(|s| s.get_mut(id)) else {
            return false;
        };
        let was_held = entry.expires_at <= now;
        entry.expires_at = now + entry.ttl;
        if was_held && state.preserving_since.is_some() {
            state.stop_preserving(now);
            tracing::info!(%service, %id, "a held instance's heartbeat is back; self-preservation over, the others get one more lease");
        }
        true
    }

    pub fn deregister(&self, service: &str, id: &str) -> bool {
        let mut state = self.state();
        let removed = remove(&mut state, service, id);
        if removed {
            let mut change = ServiceChange::new(0, service);
            change.remove(id);
            self.bump(vec![change]);
        }
        drop(state);
        removed
    }

    /// Drops every instance whose lease has run out; returns them. Holds them instead while
    /// most instances are silent (self-preservation, see the module docs).
    pub fn expire(&self, now: Instant) -> Vec<Instance> {
        let mut state = self.state();
        let lapsed = state.entries().any(|entry| entry.expires_at <= now);
        let mut released = Vec::new();
        if let Some(since) = state.preserving_since {
            if now.saturating_duration_since(since) < self.preserve_for {
                return Vec::new();
            }
            state.preserving_since = None;
            released = state.apply_held_health();
            tracing::warn!(held_for = ?self.preserve_for, "no held instance came back; self-preservation over, dropping the lapsed");
        } else if lapsed && !self.preserve_for.is_zero() && state.mostly_silent(now) {
            state.preserving_since = Some(now);
            tracing::warn!(
                "most instances fell silent at once: this registry is more likely cut off than they are dead; \
                 holding their leases (self-preservation) until heartbeats come back"
            );
            return Vec::new();
        }
        let expired: Vec<Instance> = state
            .entries()
            .filter(|entry| entry.expires_at <= now)
            .map(|entry| entry.instance.clone())
            .collect();
        for instance in &expired {
            remove(&mut state, &instance.service, &instance.id);
        }
        if !released.is_empty() || !expired.is_empty() {
            let mut changes: BTreeMap<String, ServiceChange> = BTreeMap::new();
            for instance in &released {
                let change = changes
                    .entry(instance.service.clone())
                    .or_insert_with(|| ServiceChange::new(0, &instance.service));
                change.set(instance, instance.health != Health::Critical);
            }
            for instance in &expired {
                changes
                    .entry(instance.service.clone())
                    .or_insert_with(|| ServiceChange::new(0, &instance.service))
                    .remove(&instance.id);
            }
            self.bump(changes.into_values().collect());
        }
        drop(state);
        expired
    }

    /// The checks due at `now`, each marked as having a probe out. Costs O(due log n): only
    /// the schedule's due entries are looked at; stale ones (deregistered, re-registered, a
    /// probe already out, rescheduled) are dropped on the way.
    pub fn due_checks(&self, now: Instant) -> Vec<Arc<Due>> {
        let mut state = self.state();
        let State {
            services, schedule, ..
        } = &mut *state;
        schedule.pop_due(now, |at, due| {
            let entry = services
                .get_mut(&due.service)
                .and_then(|s| s.get_mut(&due.id))
                .filter(|e| e.generation == due.generation && e.check.is_some());
            match entry {
                Some(entry) if !entry.probing && entry.next_check == at => {
                    entry.probing = true;
                    true
                }
                _ => false,
            }
        })
    }

    /// Records a probe's outcome. Returns the health before and after when it changed (the
    /// index then moves, so every watcher hears of it).
    pub fn record_check(
        &self,
        service: &str,
        id: &str,
        generation: u64,
        passed: bool,
        now: Instant,
    ) -> Option<(Health, Health)> {
        let mut state = self.state();
        let entry = state
            .services
            .get_mut(service)
            .and_then(|s| s.get_mut(id))
            .filter(|e| e.generation == generation)?;
        let due = entry.check.clone()?;
        let spec = &due.spec;
        let recovered = passed && entry.failures > 0;
        entry.probing = false;
        entry.failures = if passed {
            0
        } else {
            entry.failures.saturating_add(1)
        };
        entry.next_check = now + spec.next_delay(entry.failures);
        let next_check = entry.next_check;
        let before = entry.instance.health;
        let after = CheckSpec::health_after(entry.failures);
        state.schedule.push(next_check, due);
        if recovered && state.preserving_since.is_some() {
            state.stop_preserving(now);
            tracing::info!(%service, %id, "a failing check passes again; self-preservation over");
        }
        if before == after {
            return None;
        }
        // Most checked instances failing at once looks like this registry cut off, as most
        // leases lapsing at once does: their health is held, not made critical.
        if after == Health::Critical && self.hold_failing(&mut state, now) {
            return None;
        }
        let entry = state.services.get_mut(service)?.get_mut(id)?;
        entry.instance.health = after;
        let mut change = ServiceChange::new(0, service);
        change.set(&entry.instance, after != Health::Critical);
        self.bump(vec![change]);
        drop(state);
        Some((before, after))
    }

    /// Whether a check failing now is held instead of making its instance critical: during
    /// self-preservation, or when most checked instances are failing (which starts it).
    fn hold_failing(&self, state: &mut State, now: Instant) -> bool {
        if state.preserving_since.is_some() {
            return true;
        }
        if self.preserve_for.is_zero() || !state.mostly_failing() {
            return false;
        }
        state.preserving_since = Some(now);
        tracing::warn!(
            "most checked instances failed at once: this registry is more likely cut off than they \
             are down; holding their health (self-preservation) until a check passes again"
        );
        true
    }

    pub fn catalog(&self) -> Catalog {
        let state = self.state();
        Catalog {
            index: self.index(),
            warming: self.warming(),
            epoch: self.epoch.clone(),
            services: state
                .services
                .iter()
                .map(|(name, instances)| {
                    (
                        name.clone(),
                        instances
                            .values()
                            .filter(|e| listed(e))
                            .map(|e| e.instance.clone())
                            .collect::<Vec<_>>(),
                    )
                })
                .filter(|(_, instances)| !instances.is_empty())
                .collect(),
        }
    }

    /// One service's instances, with the service's own index (the store's first index for a
    /// service that has not changed since start).
    pub fn service(&self, name: &str) -> ServiceInstances {
        let state = self.state();
        ServiceInstances {
            index: self.service_indexes.get(name).max(1),
            name: name.to_string(),
            instances: state
                .services
                .get(name)
                .map(|instances| {
                    instances
                        .values()
                        .filter(|e| listed(e))
                        .map(|e| e.instance.clone())
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// Waits until the index passes `after`, or `wait` elapses. Returns the index then.
    pub async fn wait_for_change(&self, after: u64, wait: Duration) -> u64 {
        wait_past(&self.index, after, wait).await
    }

    /// Waits until `service`'s own index passes `after`, or `wait` elapses. Returns it then.
    pub async fn wait_for_service_change(&self, service: &str, after: u64, wait: Duration) -> u64 {
        self.service_indexes
            .wait_past(service, after, wait)
            .await
            .max(1)
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

    fn service_versioned(
        &self,
        name: &str,
    ) -> impl Future<Output = StoreResult<(ServiceInstances, u64)>> + Send {
        // Every change to a service's listed instances moves its index: the index is a version.
        let answer = MemoryStore::service(self, name);
        let version = answer.index;
        ready(Ok((answer, version)))
    }

    fn catalog_version(&self) -> Option<(u64, bool)> {
        Some((self.index(), self.warming()))
    }

    fn service_version(&self, name: &str) -> Option<u64> {
        Some(self.service_indexes.get(name).max(1))
    }

    fn wait_for_change(&self, after: u64, wait: Duration) -> impl Future<Output = u64> + Send {
        MemoryStore::wait_for_change(self, after, wait)
    }

    fn wait_for_service_change(
        &self,
        service: &str,
        after: u64,
        wait: Duration,
    ) -> impl Future<Output = u64> + Send {
        MemoryStore::wait_for_service_change(self, service, after, wait)
    }

    fn wait_for_services_change(
        &self,
        services: &[String],
        after: u64,
        wait: Duration,
    ) -> impl Future<Output = u64> + Send {
        self.service_indexes.wait_past_any(services, after, wait)
    }

    fn changes(&self) -> &ChangeRing {
        &self.changes
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
        let preserving = if store.preserving() { 1.0 } else { 0.0 };
        metrics::gauge!("registry_self_preservation").set(preserving);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn registration(port: u16, ttl: f64) -> Registration {
        Registration {
            address: "127.0.0.1".into(),
            port,
            version: Some("1".into()),
            metadata: Default::default(),
            ttl_seconds: Some(ttl),
            check: None,
            interval: None,
            timeout: None,
        }
    }

    fn checked(port: u16) -> Registration {
        Registration {
            check: Some(stratus_kit::model::Check::Http("/healthz".into())),
            ..registration(port, 5.0)
        }
    }

    #[test]
    fn failing_checks_hide_an_instance_until_it_passes() {
        let store = MemoryStore::new();
        store.register("catalog", "a", checked(1000));
        store.register("catalog", "b", registration(1001, 5.0));
        let later = Instant::now() + Duration::from_secs(1);
        let due = store.due_checks(later);
        assert_eq!(due.len(), 1, "only instances with a check are probed");
        assert!(store.due_checks(later).is_empty(), "one probe at a time");
        let (service, id, generation) = (&due[0].service, &due[0].id, due[0].generation);

        let index = store.index();
        assert_eq!(
            store.record_check(service, id, generation, false, later),
            Some((Health::Passing, Health::Warning))
        );
        assert!(store.index() > index, "a change of health wakes watchers");
        assert_eq!(
            store.service("catalog").instances.len(),
            2,
            "warning is still listed"
        );

        let soon = later + crate::checks::RECHECK;
        let due = store.due_checks(soon);
        assert_eq!(
            due.len(),
            1,
            "a failure is confirmed sooner than the interval"
        );
        store.record_check(service, id, generation, false, soon);
        let listed = store.service("catalog").instances;
        assert_eq!(listed.len(), 1, "critical is left out");
        assert_eq!(listed[0].id, "b");
        assert_eq!(store.catalog().services["catalog"].len(), 1);

        let index = store.index();
        let again = soon + Duration::from_secs(1);
        assert_eq!(
            store.due_checks(again).len(),
            1,
            "critical instances are still probed"
        );
        assert_eq!(
            store.record_check(service, id, generation, true, again),
            Some((Health::Critical, Health::Passing))
        );
        assert!(store.index() > index);
        assert_eq!(store.service("catalog").instances.len(), 2);
        assert_eq!(
            store.record_check(service, id, generation + 99, false, again),
            None,
            "a result for an older registration is dropped"
        );
    }

    #[test]
    fn an_only_critical_instance_leaves_its_service_out() {
        let store = MemoryStore::new();
        store.register("catalog", "a", checked(1000));
        let mut now = Instant::now();
        for _ in 0..crate::checks::CRITICAL_AFTER {
            now += Duration::from_secs(1);
            let due = store.due_checks(now);
            store.record_check("catalog", "a", due[0].generation, false, now);
        }
        assert!(store.catalog().services.is_empty());
        assert!(store.service("catalog").instances.is_empty());
        assert!(
            store.heartbeat("catalog", "a"),
            "its lease is still its own"
        );
    }

    fn checked_every(port: u16, interval: &str) -> Registration {
        Registration {
            interval: Some(interval.into()),
            ..checked(port)
        }
    }

    fn ids(due: &[Arc<Due>]) -> Vec<&str> {
        due.iter().map(|d| d.id.as_str()).collect()
    }

    #[test]
    fn checks_come_due_in_time_order() {
        let store = MemoryStore::new();
        let t0 = Instant::now();
        store.register("catalog", "slow", checked_every(1000, "2s"));
        store.register("catalog", "fast", checked_every(1001, "500ms"));
        store.register("catalog", "mid", checked_every(1002, "1s"));
        store.register("catalog", "none", registration(1003, 5.0));
        assert!(store.due_checks(t0).is_empty(), "nothing is due at once");
        let due = store.due_checks(t0 + Duration::from_millis(1200));
        assert_eq!(
            ids(&due),
            ["fast", "mid"],
            "soonest first, the rest not yet"
        );
        let due = store.due_checks(t0 + Duration::from_secs(3));
        assert_eq!(ids(&due), ["slow"], "the others have a probe out");
    }

    #[test]
    fn a_failure_is_rechecked_sooner_and_a_pass_waits_the_interval() {
        let store = MemoryStore::new();
        let t0 = Instant::now();
        store.register("catalog", "a", checked_every(1000, "1s"));
        let at = t0 + Duration::from_millis(1100);
        let due = store.due_checks(at);
        store.record_check("catalog", "a", due[0].generation, false, at);
        let recheck = at + crate::checks::RECHECK;
        assert!(store
            .due_checks(recheck - Duration::from_millis(1))
            .is_empty());
        let due = store.due_checks(recheck);
        assert_eq!(ids(&due), ["a"]);
        store.record_check("catalog", "a", due[0].generation, true, recheck);
        assert!(store
            .due_checks(recheck + Duration::from_millis(999))
            .is_empty());
        assert_eq!(store.due_checks(recheck + Duration::from_secs(1)).len(), 1);
    }

    #[test]
    fn a_replaced_registration_is_probed_once_under_its_new_generation() {
        let store = MemoryStore::new();
        let t0 = Instant::now();
        store.register("catalog", "a", checked_every(1000, "1s"));
        let first = store.state().services["catalog"]["a"].generation;
        // The same check again: what the probes found is kept, the generation is new.
        store.register("catalog", "a", checked_every(1000, "1s"));
        // A new check: probed on its own interval.
        store.register("catalog", "a", checked_every(1000, "500ms"));
        let due = store.due_checks(t0 + Duration::from_secs(2));
        assert_eq!(due.len(), 1, "stale schedule entries are skipped");
        assert!(due[0].generation > first + 1);
        assert_eq!(due[0].spec.interval, Duration::from_millis(500));
        assert_eq!(
            store.record_check("catalog", "a", first, false, t0),
            None,
            "a result for an older registration is dropped"
        );
        assert!(store.state().schedule.is_empty(), "stale entries are gone");
    }

    #[test]
    fn a_deregistered_instance_is_never_probed() {
        let store = MemoryStore::new();
        let t0 = Instant::now();
        store.register("catalog", "a", checked(1000));
        store.register("catalog", "b", checked(1001));
        let out = store.due_checks(t0 + Duration::from_secs(1));
        assert_eq!(out.len(), 2);
        assert!(store.deregister("catalog", "a"));
        // Its probe in flight reports after it left: nothing is recorded or rescheduled.
        assert_eq!(
            store.record_check("catalog", "a", out[0].generation, false, t0),
            None
        );
        store.record_check("catalog", "b", out[1].generation, true, t0);
        assert!(store.deregister("catalog", "b"));
        assert!(store.due_checks(t0 + Duration::from_secs(60)).is_empty());
        assert!(store.state().schedule.is_empty());
    }

    #[test]
    fn the_schedule_holds_one_entry_per_checked_instance() {
        let store = MemoryStore::new();
        for port in 0..100u16 {
            store.register("catalog", &format!("i{port}"), checked(1000 + port));
        }
        let mut at = Instant::now();
        for round in 0..10 {
            at += Duration::from_secs(1);
            let due = store.due_checks(at);
            assert_eq!(due.len(), 100, "round {round}");
            for due in due {
                store.record_check(&due.service, &due.id, due.generation, true, at);
            }
        }
        assert_eq!(store.state().schedule.len(), 100, "no entry piles up");
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

    fn four_instances(store: &MemoryStore) {
        for (port, id) in [(1000, "a"), (1001, "b"), (1002, "c"), (1003, "d")] {
            store.register("catalog", id, registration(port, 3.0));
        }
    }

    #[test]
    fn most_leases_lapsing_at_once_are_held_until_a_heartbeat_comes_back() {
        let store = MemoryStore::new();
        four_instances(&store);
        let cut_off = Instant::now() + Duration::from_secs(4);
        assert!(store.expire(cut_off).is_empty(), "all four silent: held");
        assert!(store.preserving());
        assert_eq!(store.catalog().services["catalog"].len(), 4, "still listed");
        assert!(store.expire(cut_off + Duration::from_secs(20)).is_empty());

        // The network heals: one heartbeat ends it, and the rest get one more lease.
        let healed = cut_off + Duration::from_secs(30);
        assert!(store.heartbeat_at("catalog", "a", healed));
        assert!(!store.preserving());
        assert!(store.heartbeat_at("catalog", "b", healed + Duration::from_secs(1)));
        assert!(store.expire(healed + Duration::from_secs(2)).is_empty());
        for id in ["a", "b"] {
            assert!(store.heartbeat_at("catalog", id, healed + Duration::from_secs(2)));
        }
        // c and d never renew: they lapse a TTL later and, with a and b heard, are dropped.
        let mut dropped: Vec<_> = store
            .expire(healed + Duration::from_secs(3))
            .into_iter()
            .map(|i| i.id)
            .collect();
        dropped.sort();
        assert_eq!(dropped, ["c", "d"]);
        assert!(!store.preserving());
    }

    /// Probes every checked instance once at `at`, failing those in `failing`.
    fn probe(store: &MemoryStore, at: Instant, failing: &[&str]) -> Vec<(String, Health)> {
        let mut changes = Vec::new();
        for due in store.due_checks(at) {
            let passed = !failing.contains(&due.id.as_str());
            if let Some((_, after)) =
                store.record_check(&due.service, &due.id, due.generation, passed, at)
            {
                changes.push((due.id.clone(), after));
            }
        }
        changes.sort_by(|a, b| a.0.cmp(&b.0));
        changes
    }

    #[test]
    fn most_checks_failing_at_once_hold_health_until_one_passes() {
        let store = MemoryStore::new();
        for (port, id) in [(1000, "a"), (1001, "b"), (1002, "c"), (1003, "d")] {
            store.register("catalog", id, checked(port));
        }
        let mut at = Instant::now() + Duration::from_secs(6);
        // One failing instance among four is made critical as usual.
        probe(&store, at, &["d"]);
        at += Duration::from_secs(6);
        assert_eq!(probe(&store, at, &["d"]), [("d".into(), Health::Critical)]);
        assert!(!store.preserving());
        // Three failing at once: warning, then held there instead of critical.
        at += Duration::from_secs(6);
        let first = probe(&store, at, &["a", "b", "d"]);
        assert_eq!(first.len(), 2, "a and b warn: {first:?}");
        at += Duration::from_secs(6);
        assert!(probe(&store, at, &["a", "b", "d"]).is_empty());
        assert!(store.preserving());
        assert_eq!(
            store.catalog().services["catalog"].len(),
            3,
            "a, b, c listed"
        );
        // The network is back: a passes, and b, still failing, is judged as usual again.
        at += Duration::from_secs(6);
        let healed = probe(&store, at, &["b", "d"]);
        assert!(!store.preserving());
        assert_eq!(
            healed,
            [
                ("a".into(), Health::Passing),
                ("b".into(), Health::Critical)
            ]
        );
    }

    #[test]
    fn held_leases_are_dropped_after_preserve_for() {
        let store = MemoryStore::new().preserving_for(Duration::from_secs(10));
        four_instances(&store);
        let cut_off = Instant::now() + Duration::from_secs(4);
        assert!(store.expire(cut_off).is_empty());
        assert_eq!(store.expire(cut_off + Duration::from_secs(11)).len(), 4);
        assert!(!store.preserving());
        assert!(store.catalog().services.is_empty());
    }

    #[test]
    fn without_self_preservation_lapsed_leases_go_at_once() {
        let store = MemoryStore::new().preserving_for(Duration::ZERO);
        four_instances(&store);
        assert_eq!(
            store.expire(Instant::now() + Duration::from_secs(4)).len(),
            4
        );
    }

    #[test]
    fn one_silent_instance_among_many_is_dropped_as_usual() {
        let store = MemoryStore::new();
        four_instances(&store);
        let later = Instant::now() + Duration::from_secs(4);
        for id in ["a", "b", "c"] {
            assert!(store.heartbeat_at("catalog", id, later - Duration::from_millis(500)));
        }
        let dropped = store.expire(later);
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].id, "d");
        assert!(!store.preserving());
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

    #[test]
    fn a_service_index_moves_only_with_that_service() {
        let store = MemoryStore::new().preserving_for(Duration::ZERO);
        assert_eq!(
            store.service("catalog").index,
            1,
            "never changed: the first index"
        );
        store.register("catalog", "a", registration(1000, 5.0));
        let catalog = store.service("catalog").index;
        assert_eq!(
            catalog,
            store.index(),
            "the registry index of its last change"
        );
        for port in 2000..2010 {
            store.register("auth", &port.to_string(), registration(port, 5.0));
        }
        assert_eq!(store.service("catalog").index, catalog);
        assert!(store.index() > catalog + 9);
        assert!(store.deregister("catalog", "a"));
        let gone = store.service("catalog");
        assert!(gone.instances.is_empty());
        assert_eq!(
            gone.index,
            store.index(),
            "a removed service keeps moving on"
        );
        store.expire(Instant::now() + Duration::from_secs(6));
        assert_eq!(store.service("catalog").index, gone.index);
        assert_eq!(
            store.service("auth").index,
            store.index(),
            "expiry is a change"
        );
    }

    #[tokio::test]
    async fn the_end_of_warming_wakes_queries_on_some_services() {
        let store = Arc::new(MemoryStore::warming_for(Duration::from_millis(50)));
        store.register("catalog", "a", registration(1000, 5.0));
        let index = store.index();
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .service_indexes
                    .wait_past_any(&["catalog".into()], index, Duration::from_secs(5))
                    .await
            })
        };
        store.end_warming().await;
        let seen = tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(seen > index);
        assert!(!store.catalog().warming);
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

#[cfg(test)]
mod change_tests {
    use super::tests::registration;
    use super::*;

    #[test]
    fn every_change_is_in_the_ring_at_its_index() {
        let store = MemoryStore::new().preserving_for(Duration::ZERO);
        store.register("shop", "a", registration(1000, 60.0));
        store.register("other", "short", registration(1001, 1.0));
        let expired = store.expire(Instant::now() + Duration::from_secs(2));
        assert_eq!(expired.len(), 1);
        let since = store.changes.since(1, None).unwrap();
        let seen: Vec<_> = since
            .changes
            .iter()
            .map(|c| (c.index, c.service.clone()))
            .collect();
        assert_eq!(
            seen,
            [(2, "shop".into()), (3, "other".into()), (4, "other".into())]
        );
        assert_eq!(since.head, store.index());
    }

    #[test]
    fn an_instance_turning_critical_is_removed_and_comes_back_when_it_passes() {
        let store = MemoryStore::new().preserving_for(Duration::ZERO);
        let checked = Registration {
            check: Some(stratus_kit::model::Check::Http("/healthz".into())),
            ..registration(1000, 5.0)
        };
        store.register("shop", "a", checked);
        let start = store.index();
        let mut at = Instant::now();
        for passed in [false, false, false, true] {
            at += Duration::from_secs(10);
            for due in store.due_checks(at) {
                store.record_check(&due.service, &due.id, due.generation, passed, at);
            }
        }
        let said: Vec<(Vec<String>, Vec<String>)> = store
            .changes
            .since(start, None)
            .unwrap()
            .changes
            .iter()
            .map(|c| {
                let change: serde_json::Value =
                    serde_json::from_slice(c.frame.strip_prefix(b"event: change\ndata: ").unwrap())
                        .unwrap();
                let healths = change["instances"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["health"].as_str().unwrap().to_string())
                    .collect();
                let removed = change["removed"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i.as_str().unwrap().to_string())
                    .collect();
                (healths, removed)
            })
            .collect();
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            said,
            [
                (strings(&["warning"]), vec![]),
                (vec![], strings(&["a"])),
                (strings(&["passing"]), vec![]),
            ]
        );
    }
}
