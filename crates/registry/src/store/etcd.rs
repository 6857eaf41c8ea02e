//! The etcd store: instances live in etcd, so several registry processes share one view.
//!
//! Layout: each instance is the key `/stratus/services/<service>/<id>`, its value the instance's
//! JSON, attached to an etcd lease of the instance's TTL. So etcd itself does the bookkeeping the
//! in-memory store does by hand:
//!
//! - a heartbeat is a lease keepalive (it does not change the revision, so it wakes no watcher);
//! - an instance that stops renewing is deleted by etcd when its lease runs out, whichever
//!   registry process (if any) is still alive;
//! - deregistering deletes the key and revokes its lease;
//! - the change index is etcd's revision, which every write moves forward cluster-wide;
//! - a declared check is kept beside the instance (`/stratus/checks/<service>/<id>`, on the same
//!   lease) and its verdict in the instance's `health`, written by the registry that owns the
//!   check (`crate::etcd_checks`); critical instances are left out of every answer.
//!
//! Blocking queries must not each open their own etcd watch (a gateway fleet would open thousands),
//! so each registry process keeps exactly one watch stream on the prefix and turns its events into
//! a local index that waiting requests subscribe to ([`follow`]), and into each service's index
//! (the revision of the newest event on one of its keys), which a query blocked on one service
//! waits on.
//!
//! A service's answer carries the newest revision it is known to hold: the newest `mod_revision`
//! among its keys, or the revision of a delete or resynchronisation the watch stream reported for
//! it, if that is not past the revision the answer was read at. Every registry process computes
//! the same from the same history, so a watcher may move between them.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use stratus_kit::model::{Catalog, Health, Instance, Registration, ServiceInstances};
use tokio::sync::watch;

use super::changes::{ChangeRing, ServiceChange};
use super::etcd_api::{EtcdClient, KeyValue, WatchEvent};
use crate::checks::CheckSpec;
use crate::etcd_checks::{self as checks, CheckRecord};

use super::service_index::ServiceIndexes;
use super::{instance_from, wait_past, Store, StoreError, StoreResult};

/// Every Stratus key lives under this prefix, so etcd can be shared with other users.
pub const PREFIX: &str = "/stratus/services/";

/// A snapshot of up to this many services reads each one's keys; of more, the whole prefix once.
const SERVICE_READS_MAX: usize = 16;

pub struct EtcdStore {
    client: EtcdClient,
    /// The newest revision at which the watch stream saw a Stratus key change.
    index: Arc<watch::Sender<u64>>,
    /// Each service's newest event seen by the watch stream, and its blocked queries.
    service_indexes: Arc<ServiceIndexes>,
    /// Whether the watch stream is open; while it is not, blocking queries could miss changes,
    /// so the registry reports itself not ready.
    watching: Arc<AtomicBool>,
    /// The recent changes, as the one watch stream reports them (whichever registry made them).
    changes: Arc<ChangeRing>,
}

impl EtcdStore {
    /// Connects to etcd at `url` (`http://host:port`), reads the current revision and starts
    /// following changes, keeping the last `changes` of them for the incremental watch. Fails if
    /// etcd does not answer: a registry configured for etcd never falls back to keeping
    /// instances in memory.
    pub async fn connect(url: &str, changes: usize) -> StoreResult<Arc<EtcdStore>> {
        let client = EtcdClient::new(url)?;
        let revision = client.count_prefix(PREFIX).await?;
        let store = Arc::new(EtcdStore {
            client: client.clone(),
            index: Arc::new(watch::Sender::new(as_index(revision))),
            service_indexes: Arc::new(ServiceIndexes::default()),
            watching: Arc::new(AtomicBool::new(false)),
            changes: Arc::new(ChangeRing::new(as_index(revision), changes)),
        });
        tokio::spawn(follow(
            client,
            Followers {
                index: store.index.clone(),
                services: store.service_indexes.clone(),
                changes: store.changes.clone(),
            },
            store.watching.clone(),
            revision + 1,
        ));
        Ok(store)
    }

    async fn register_instance(
        &self,
        service: &str,
        id: &str,
        registration: Registration,
    ) -> StoreResult<(Instance, bool)> {
        let key = key(service, id);
        let previous = self
            .client
            .get(&key)
            .await?
            .and_then(|kv| decode(&kv).map(|instance| (instance, kv.lease)));
        let registered_at = previous.as_ref().map(|(i, _)| i.registered_at.clone());
        // The API validated the check; a registration made in-process with a bad one gets none.
        let spec = CheckSpec::from_registration(&registration).unwrap_or(None);
        let mut instance = instance_from(service, id, registration, registered_at);
        let check = spec
            .map(|spec| CheckRecord::new(&instance.authority(), &spec).encode())
            .transpose()?;
        let check_key = checks::check_key(service, id);
        let old_check = match &previous {
            Some(_) => self.client.get(&check_key).await?.map(|kv| kv.value),
            None => None,
        };

        // The same target with the same check keeps what the probes found so far.
        if let Some((old, _)) = &previous {
            if old.address == instance.address && old.port == instance.port && old_check == check {
                instance.health = old.health;
            }
        }

        // The same registration again (an instance re-registering after a restart of its
        // registry, say) only renews the lease: no write, no new revision, no watcher woken.
        if let Some((old, lease)) = &previous {
            if *old == instance
                && old_check == check
                && *lease != 0
                && self.client.keepalive(*lease).await?
            {
                return Ok((instance, false));
            }
        }

        let value = serde_json::to_vec(&instance)
            .map_err(|e| StoreError::Corrupt(format!("encoding {service}/{id}: {e}")))?;
        let lease = self
            .client
            .grant(lease_seconds(instance.ttl_seconds))
            .await?;
        // The check rides on the instance's lease, so it goes when the instance does.
        let written = async {
            self.client.put(&key, &value, lease).await?;
            match &check {
                Some(check) => self.client.put(&check_key, check, lease).await.map(|_| ()),
                None if old_check.is_some() => self.client.delete(&check_key).await.map(|_| ()),
                None => Ok(()),
            }
        };
        if let Err(error) = written.await {
            let _ = self.client.revoke(lease).await;
            return Err(error);
        }
        // The key has moved to the new lease; the old one holds nothing any more.
        if let Some((_, old_lease)) = previous {
            if old_lease != 0 && old_lease != lease {
                if let Err(error) = self.client.revoke(old_lease).await {
                    tracing::debug!(%error, "revoking a replaced lease; it will lapse by itself");
                }
            }
        }
        Ok((instance, previous.is_none()))
    }

    async fn heartbeat_instance(&self, service: &str, id: &str) -> StoreResult<bool> {
        match self.client.get(&key(service, id)).await? {
            Some(kv) if kv.lease != 0 => self.client.keepalive(kv.lease).await,
            _ => Ok(false),
        }
    }

    async fn deregister_instance(&self, service: &str, id: &str) -> StoreResult<bool> {
        let Some(previous) = self.client.delete(&key(service, id)).await? else {
            return Ok(false);
        };
        if previous.lease != 0 {
            if let Err(error) = self.client.revoke(previous.lease).await {
                tracing::debug!(%error, "revoking a deregistered instance's lease; it will lapse by itself");
            }
        }
        Ok(true)
    }

    async fn read_catalog(&self) -> StoreResult<Catalog> {
        let (revision, kvs) = self.client.range_prefix(PREFIX).await?;
        Ok(self.catalog_at(revision, &kvs))
    }

    /// The catalog the keys read at `revision` hold. The answer is at that revision, which the
    /// watch stream may not have delivered yet: the ring is told so.
    fn catalog_at<'a>(
        &self,
        revision: i64,
        kvs: impl IntoIterator<Item = &'a KeyValue>,
    ) -> Catalog {
        self.changes.reached(as_index(revision));
        let mut services: BTreeMap<String, Vec<Instance>> = BTreeMap::new();
        for instance in kvs.into_iter().filter_map(decode).filter(listed) {
            services
                .entry(instance.service.clone())
                .or_default()
                .push(instance);
        }
        Catalog {
            index: as_index(revision),
            services,
            // etcd keeps every instance across registry restarts: never warming.
            ..Catalog::default()
        }
    }

    /// Only `names`' instances, each service's keys read at the revision of the first read, so
    /// the whole is etcd's state at one revision (the snapshot's index). Should etcd compact
    /// that revision between the reads, they fail as any store error does (a watcher reads its
    /// snapshot again a second later, a query is a 503). Past a few services one read of the
    /// whole prefix costs etcd less than one read per service.
    async fn read_services(&self, names: &[String]) -> StoreResult<Catalog> {
        if names.len() > SERVICE_READS_MAX {
            let mut catalog = self.read_catalog().await?;
            catalog
                .services
                .retain(|name, _| names.binary_search(name).is_ok());
            return Ok(catalog);
        }
        let Some((first, rest)) = names.split_first() else {
            let revision = self.client.count_prefix(PREFIX).await?;
            return Ok(self.catalog_at(revision, []));
        };
        let (revision, kvs) = self
            .client
            .range_prefix(&format!("{PREFIX}{first}/"))
            .await?;
        let rest = futures_util::future::try_join_all(rest.iter().map(|name| async move {
            let prefix = format!("{PREFIX}{name}/");
            self.client.range_prefix_at(&prefix, revision).await
        }))
        .await?;
        Ok(self.catalog_at(revision, kvs.iter().chain(rest.iter().flatten())))
    }

    /// The service's instances, and the revision they were read at as their version (the
    /// service's own index can stay while a delete not yet seen by the watch stream shows).
    async fn read_service(&self, name: &str) -> StoreResult<(ServiceInstances, u64)> {
        let (revision, kvs) = self
            .client
            .range_prefix(&format!("{PREFIX}{name}/"))
            .await?;
        self.changes.reached(as_index(revision));
        // The newest revision this answer holds (see the module docs): never past the read, so
        // a change the answer does not show always moves the index beyond it.
        let newest_key = kvs.iter().map(|kv| as_index(kv.mod_revision)).max();
        let seen = self.service_indexes.get(name);
        let seen = if seen <= as_index(revision) { seen } else { 0 };
        let answer = ServiceInstances {
            index: newest_key.unwrap_or(0).max(seen).max(1),
            name: name.to_string(),
            instances: kvs.iter().filter_map(decode).filter(listed).collect(),
        };
        Ok((answer, as_index(revision)))
    }

    /// The etcd client, for the health-check runner that shares this store's etcd.
    pub fn client(&self) -> &EtcdClient {
        &self.client
    }

    async fn probe(&self) -> Result<(), String> {
        if !self.watching.load(Ordering::SeqCst) {
            return Err(format!(
                "etcd at {}: the watch stream is not open",
                self.client.base()
            ));
        }
        self.client
            .count_prefix(PREFIX)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl Store for EtcdStore {
    fn register(
        &self,
        service: &str,
        id: &str,
        registration: Registration,
    ) -> impl Future<Output = StoreResult<(Instance, bool)>> + Send {
        self.register_instance(service, id, registration)
    }

    fn heartbeat(&self, service: &str, id: &str) -> impl Future<Output = StoreResult<bool>> + Send {
        self.heartbeat_instance(service, id)
    }

    fn deregister(
        &self,
        service: &str,
        id: &str,
    ) -> impl Future<Output = StoreResult<bool>> + Send {
        self.deregister_instance(service, id)
    }

    fn catalog(&self) -> impl Future<Output = StoreResult<Catalog>> + Send {
        self.read_catalog()
    }

    fn services_snapshot(
        &self,
        services: &[String],
    ) -> impl Future<Output = StoreResult<Catalog>> + Send {
        self.read_services(services)
    }

    fn service_versioned(
        &self,
        name: &str,
    ) -> impl Future<Output = StoreResult<(ServiceInstances, u64)>> + Send {
        self.read_service(name)
    }

    fn wait_for_change(&self, after: u64, wait: Duration) -> impl Future<Output = u64> + Send {
        wait_past(&self.index, after, wait)
    }

    fn wait_for_service_change(
        &self,
        service: &str,
        after: u64,
        wait: Duration,
    ) -> impl Future<Output = u64> + Send {
        self.service_indexes.wait_past(service, after, wait)
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
        self.probe()
    }
}

/// What the watch stream feeds, in this order: the ring of changes, each service's index, the
/// registry's index (so whoever an index wakes finds the change in the ring).
struct Followers {
    index: Arc<watch::Sender<u64>>,
    services: Arc<ServiceIndexes>,
    changes: Arc<ChangeRing>,
}

/// Background task: the one watch stream of this registry process. Each batch of events is
/// recorded in the ring of changes, then moves the local index to their revision and wakes every
/// waiting request. When the stream breaks it reopens from the next revision it has not seen, so
/// nothing in between is missed; if etcd has compacted that history away, it forgets the ring
/// and wakes everyone so they read the current state afresh.
async fn follow(
    client: EtcdClient,
    followers: Followers,
    watching: Arc<AtomicBool>,
    mut next: i64,
) {
    let Followers {
        index,
        services,
        changes,
    } = followers;
    let mut backoff = Duration::from_millis(100);
    loop {
        match client.watch(PREFIX, next).await {
            Ok(mut stream) => loop {
                match stream.next().await {
                    Ok(Some(message)) => {
                        if message.created {
                            watching.store(true, Ordering::SeqCst);
                            backoff = Duration::from_millis(100);
                        }
                        if message.canceled {
                            if message.compact_revision > 0 {
                                tracing::warn!(
                                    compacted = message.compact_revision,
                                    "etcd compacted past our watch; resynchronising"
                                );
                                next = message.compact_revision;
                                let now = message.revision().max(next);
                                // What changed in the compacted history is unknown: every
                                // service's watchers read afresh, incremental ones a snapshot.
                                changes.reset(as_index(now));
                                services.all_changed(as_index(now));
                                advance(&index, now);
                            } else {
                                tracing::warn!(reason = %message.cancel_reason, "etcd cancelled the watch");
                            }
                            break;
                        }
                        record(&changes, &message.events);
                        for event in &message.events {
                            if let Some(service) = service_of(&event.kv.key) {
                                services.changed(service, as_index(event.kv.mod_revision));
                            }
                        }
                        if let Some(last) = message.events.iter().map(|e| e.kv.mod_revision).max() {
                            next = last + 1;
                            advance(&index, last);
                        }
                    }
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(%error, "etcd watch stream broke; reopening");
                        break;
                    }
                }
            },
            Err(error) => {
                tracing::warn!(%error, "cannot watch etcd; retrying");
            }
        }
        watching.store(false, Ordering::SeqCst);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Records a batch of watch events in the ring: one entry per service and revision, in order. A
/// put of an instance that is critical is its removal from every answer, as a delete is.
fn record(changes: &ChangeRing, events: &[WatchEvent]) {
    let mut at: Option<u64> = None;
    let mut batch: BTreeMap<String, ServiceChange> = BTreeMap::new();
    for event in events {
        let revision = as_index(event.kv.mod_revision);
        let Some((service, id)) = service_and_id(&event.kv.key) else {
            continue;
        };
        if let Some(previous) = at.filter(|&at| at != revision) {
            changes.push(previous, std::mem::take(&mut batch).into_values().collect());
        }
        at = Some(revision);
        let change = batch
            .entry(service.to_string())
            .or_insert_with(|| ServiceChange::new(revision, service));
        match decode_put(event) {
            Some(instance) => change.set(&instance, listed(&instance)),
            None => change.remove(id),
        }
    }
    if let Some(at) = at {
        changes.push(at, batch.into_values().collect());
    }
}

/// The instance a put event wrote; `None` for a delete (or a value that is not an instance,
/// which no answer lists either).
fn decode_put(event: &WatchEvent) -> Option<Instance> {
    if event.is_delete() {
        return None;
    }
    decode(&event.kv)
}

fn advance(index: &watch::Sender<u64>, revision: i64) {
    let revision = as_index(revision);
    index.send_if_modified(|current| {
        if revision > *current {
            *current = revision;
            true
        } else {
            false
        }
    });
}

/// Critical instances stay in etcd (their checks go on) but are left out of every answer.
fn listed(instance: &Instance) -> bool {
    instance.health != Health::Critical
}

pub(crate) fn key(service: &str, id: &str) -> String {
    format!("{PREFIX}{service}/{id}")
}

/// The service an instance's key belongs to (`/stratus/services/<service>/<id>`).
fn service_of(key: &[u8]) -> Option<&str> {
    let rest = key.strip_prefix(PREFIX.as_bytes())?;
    let end = rest.iter().position(|&b| b == b'/')?;
    std::str::from_utf8(&rest[..end]).ok()
}

/// The service and id an instance's key names (`/stratus/services/<service>/<id>`).
fn service_and_id(key: &[u8]) -> Option<(&str, &str)> {
    let rest = std::str::from_utf8(key.strip_prefix(PREFIX.as_bytes())?).ok()?;
    let (service, id) = rest.split_once('/')?;
    (!service.is_empty() && !id.is_empty()).then_some((service, id))
}

/// etcd leases are whole seconds; round up so an instance never gets less than it asked for.
/// (etcd also raises any TTL below its own minimum, about 2 s with default settings.)
fn lease_seconds(ttl: f64) -> i64 {
    (ttl.ceil() as i64).max(1)
}

fn as_index(revision: i64) -> u64 {
    u64::try_from(revision).unwrap_or(0)
}

/// An instance from its key's value. A value that is not an instance (written by something
/// else under our prefix) is skipped with a warning rather than failing every read.
pub(crate) fn decode(kv: &KeyValue) -> Option<Instance> {
    match serde_json::from_slice(&kv.value) {
        Ok(instance) => Some(instance),
        Err(error) => {
            tracing::warn!(
                key = %String::from_utf8_lossy(&kv.key),
                %error,
                "skipping an unreadable registry entry in etcd"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_service() {
        assert_eq!(service_of(key("catalog", "a").as_bytes()), Some("catalog"));
        assert_eq!(service_of(b"/stratus/services/catalog"), None);
        assert_eq!(service_of(b"/stratus/checks/catalog/a"), None);
        assert_eq!(
            service_and_id(key("catalog", "a").as_bytes()),
            Some(("catalog", "a"))
        );
        assert_eq!(service_and_id(b"/stratus/services/catalog/"), None);
    }

    #[test]
    fn leases_round_up_to_whole_seconds() {
        assert_eq!(lease_seconds(3.0), 3);
        assert_eq!(lease_seconds(2.1), 3);
        assert_eq!(lease_seconds(0.1), 1);
    }
}
