//! The registry's view of every service and instance, kept current beside the sink so the
//! dashboard can show each instance's health next to its share of traffic.
//!
//! One task holds a blocking query open on the registry (`GET /v1/services?index=N`), which
//! answers the moment anything changes; the latest catalog is swapped in under a lock readers
//! hold only to clone it. A registry that is down leaves the last view in place (marked stale).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::Serialize;
use stratus_kit::model::{Catalog, Health};
use stratus_kit::registry_client::RegistryClient;

/// One instance as the dashboard shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstanceView {
    pub id: String,
    pub address: String,
    pub port: u16,
    pub version: String,
    pub health: Health,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RegistryView {
    /// False until the registry has answered once, and while it does not answer.
    pub reachable: bool,
    pub services: std::collections::BTreeMap<String, Vec<InstanceView>>,
    /// The broker the instances say they use (registration metadata `broker`: `nats`,
    /// `sqlite`); the first one found, as one system shares one broker.
    pub broker: Option<String>,
}

impl RegistryView {
    fn from_catalog(catalog: Catalog) -> Self {
        let broker = catalog
            .services
            .values()
            .flatten()
            .find_map(|i| i.metadata.get("broker").cloned());
        Self {
            reachable: true,
            broker,
            services: catalog
                .services
                .into_iter()
                .map(|(name, instances)| {
                    let views = instances
                        .into_iter()
                        .map(|i| InstanceView {
                            id: i.id,
                            address: i.address,
                            port: i.port,
                            version: i.version,
                            health: i.health,
                        })
                        .collect();
                    (name, views)
                })
                .collect(),
        }
    }
}

/// The shared, always-readable view.
#[derive(Clone, Default)]
pub struct Registry {
    view: Arc<RwLock<RegistryView>>,
}

impl Registry {
    pub fn snapshot(&self) -> RegistryView {
        self.view.read().map(|v| v.clone()).unwrap_or_default()
    }

    fn set(&self, view: RegistryView) {
        if let Ok(mut slot) = self.view.write() {
            *slot = view;
        }
    }

    fn mark_unreachable(&self) {
        if let Ok(mut slot) = self.view.write() {
            slot.reachable = false;
        }
    }

    /// Starts following the registry at `url`.
    pub fn follow(url: &str) -> anyhow::Result<Self> {
        let client = RegistryClient::new(url)?;
        let registry = Self::default();
        tokio::spawn(watch(client, registry.clone()));
        Ok(registry)
    }
}

async fn watch(client: RegistryClient, registry: Registry) {
    let mut index = 0;
    loop {
        match client.watch(index, Duration::from_secs(30)).await {
            Ok(catalog) => {
                index = catalog.index;
                registry.set(RegistryView::from_catalog(catalog));
            }
            Err(error) => {
                tracing::debug!(%error, "the registry does not answer");
                registry.mark_unreachable();
                index = 0;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}
