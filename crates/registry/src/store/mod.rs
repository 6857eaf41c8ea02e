//! Where the registry keeps its instances: one trait, two backends.
//!
//! [`memory::MemoryStore`] keeps everything in this process (the default: nothing to install,
//! and one registry is enough on a laptop). [`etcd::EtcdStore`] keeps everything in etcd, so any
//! number of registry processes serve one view and survive each other's deaths; leases, expiry
//! and the change index are then etcd's own.
//!
//! The API layer ([`crate::api`]) is generic over [`Store`], so both backends answer the same
//! HTTP contract with the same validation in front of them.

pub mod changes;
pub mod etcd;
pub mod etcd_api;
pub mod memory;
pub(crate) mod service_index;

use std::future::Future;
use std::time::Duration;

use stratus_kit::model::{Catalog, Instance, Registration, ServiceInstances};
use tokio::sync::watch;

pub use etcd::EtcdStore;
pub use memory::MemoryStore;

/// Lease length when a registration names none.
pub const DEFAULT_TTL: f64 = 10.0;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backing store could not be reached or refused the request: worth retrying later.
    #[error("the registry's store is unavailable: {0}")]
    Unavailable(String),
    /// The backing store answered with something the registry cannot read.
    #[error("the registry's store returned unreadable data: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What the registry needs from a place to keep instances.
///
/// Every change (register with new contents, deregister, lease expiry, health) moves the index
/// forward; a heartbeat never does, so watchers wake only for changes that matter to them. Each
/// service also has its own index, the registry index at which it last changed
/// ([`service_index`]): a service's answer carries it, and a query blocked on one service waits
/// on it, so a change elsewhere wakes nobody watching only that service.
pub trait Store: Send + Sync + 'static {
    /// Adds or replaces an instance and (re)starts its lease. Returns it and whether it was new.
    fn register(
        &self,
        service: &str,
        id: &str,
        registration: Registration,
    ) -> impl Future<Output = StoreResult<(Instance, bool)>> + Send;

    /// Renews a lease. `false` if the instance is unknown (never registered, or expired).
    fn heartbeat(&self, service: &str, id: &str) -> impl Future<Output = StoreResult<bool>> + Send;

    /// Removes an instance at once. `false` if it was not there.
    fn deregister(&self, service: &str, id: &str)
        -> impl Future<Output = StoreResult<bool>> + Send;

    /// Every service and its instances, with the index they were read at.
    fn catalog(&self) -> impl Future<Output = StoreResult<Catalog>> + Send;

    /// Only `services` (sorted names) and their instances, at one index: the snapshot an
    /// incremental watcher of those services starts from, so the ring's changes after that
    /// index are exactly what follows it. The default reads the whole catalog and keeps those
    /// services (one lock for the memory store); etcd reads only their keys, so a thousand
    /// watchers of one service each connecting cost a thousand small reads, not a thousand
    /// reads of every instance.
    fn services_snapshot(
        &self,
        services: &[String],
    ) -> impl Future<Output = StoreResult<Catalog>> + Send {
        async move {
            let mut catalog = self.catalog().await?;
            catalog
                .services
                .retain(|name, _| services.binary_search(name).is_ok());
            Ok(catalog)
        }
    }

    /// One service's instances, with the service's own index (when it last changed).
    fn service(&self, name: &str) -> impl Future<Output = StoreResult<ServiceInstances>> + Send {
        async move { Ok(self.service_versioned(name).await?.0) }
    }

    /// [`Store::service`], and a version that names exactly this answer: two reads with the same
    /// version hold the same instances, so one encoding serves both ([`crate::answers`]).
    fn service_versioned(
        &self,
        name: &str,
    ) -> impl Future<Output = StoreResult<(ServiceInstances, u64)>> + Send;

    /// The version of the whole catalog (its index, and whether it says `warming`), when the
    /// store can tell it without reading the catalog; `None` when only a read can (etcd). Lets
    /// a watcher be sent an answer already encoded without the catalog being read again.
    fn catalog_version(&self) -> Option<(u64, bool)> {
        None
    }

    /// As [`Store::catalog_version`], the version [`Store::service_versioned`] would give.
    fn service_version(&self, _name: &str) -> Option<u64> {
        None
    }

    /// Waits until the index passes `after`, or `wait` elapses. Returns the index then.
    fn wait_for_change(&self, after: u64, wait: Duration) -> impl Future<Output = u64> + Send;

    /// Waits until `service`'s own index passes `after`, or `wait` elapses. Returns it then.
    fn wait_for_service_change(
        &self,
        service: &str,
        after: u64,
        wait: Duration,
    ) -> impl Future<Output = u64> + Send;

    /// Waits until the own index of any of `services` passes `after`, or `wait` elapses.
    fn wait_for_services_change(
        &self,
        services: &[String],
        after: u64,
        wait: Duration,
    ) -> impl Future<Output = u64> + Send;

    /// The recent changes to instances, in order, for the incremental watch: recorded before the
    /// indexes move, so a watcher woken by a change finds it there.
    fn changes(&self) -> &changes::ChangeRing;

    /// Whether the store can serve requests now (for `/readyz`).
    fn check(&self) -> impl Future<Output = Result<(), String>> + Send;
}

/// Which backend `STRATUS_REGISTRY_STORE` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    Memory,
    /// etcd's client URL, as `http://host:port`.
    Etcd(String),
}

impl std::str::FromStr for StoreConfig {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.is_empty() || text == "memory" {
            return Ok(StoreConfig::Memory);
        }
        if let Some(rest) = text.strip_prefix("etcd://") {
            if rest.is_empty() {
                return Err("etcd:// needs a host and port, e.g. etcd://127.0.0.1:2379".into());
            }
            return Ok(StoreConfig::Etcd(format!(
                "http://{}",
                rest.trim_end_matches('/')
            )));
        }
        if text.starts_with("http://") || text.starts_with("https://") {
            return Ok(StoreConfig::Etcd(text.trim_end_matches('/').to_string()));
        }
        Err(format!(
            "`{text}` is not a registry store: use `memory`, `etcd://host:port` or `http://host:port` (etcd)"
        ))
    }
}

/// Waits until the index in `index` passes `after`, or `wait` elapses. Returns the index then.
/// Both backends keep their change index in a `watch` channel, so they wait the same way.
pub(crate) async fn wait_past(index: &watch::Sender<u64>, after: u64, wait: Duration) -> u64 {
    let mut changes = index.subscribe();
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let index = *changes.borrow_and_update();
        if index > after {
            return index;
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => continue,
            _ => return index,
        }
    }
}

/// The stored form of a registration: what both backends write for an instance.
pub(crate) fn instance_from(
    service: &str,
    id: &str,
    registration: Registration,
    registered_at: Option<String>,
) -> Instance {
    let ttl = registration.ttl_seconds.unwrap_or(DEFAULT_TTL);
    Instance {
        id: id.to_string(),
        service: service.to_string(),
        address: registration.address,
        port: registration.port,
        version: registration.version.unwrap_or_else(|| "unknown".into()),
        metadata: registration.metadata,
        health: stratus_kit::model::Health::Passing,
        ttl_seconds: ttl,
        registered_at: registered_at.unwrap_or_else(stratus_kit::now_rfc3339),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_settings() {
        assert_eq!("memory".parse(), Ok(StoreConfig::Memory));
        assert_eq!("".parse(), Ok(StoreConfig::Memory));
        assert_eq!(
            "etcd://127.0.0.1:2379".parse(),
            Ok(StoreConfig::Etcd("http://127.0.0.1:2379".into()))
        );
        assert_eq!(
            "http://10.0.0.1:2379/".parse(),
            Ok(StoreConfig::Etcd("http://10.0.0.1:2379".into()))
        );
        assert!("etcd://".parse::<StoreConfig>().is_err());
        assert!("redis://x".parse::<StoreConfig>().is_err());
    }
}
