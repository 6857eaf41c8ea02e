//! The registry: the live directory of which instance of which service is where.
//!
//! Every process registers its address with a lease (TTL) and renews it with heartbeats; an
//! instance that stops renewing is dropped. Watchers (the gateway, service clients, DNS) ask with
//! the last index they saw and get an answer the moment anything changes: no polling delay.
//!
//! Where the instances are kept is a [`store::Store`]: this process's memory (the default), or
//! etcd, which lets several registry processes serve one view and outlive each other.

pub mod api;
pub mod checks;
pub mod etcd_checks;
pub mod events;
pub mod identity;
pub mod prometheus;
pub mod store;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use stratus_kit::config::CommonArgs;
use stratus_kit::server::Service;

use store::{EtcdStore, MemoryStore, Store, StoreConfig};

/// `stratus serve registry`
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Port of the registry API.
    #[arg(long, env = "PORT", default_value_t = 8500)]
    pub port: u16,

    /// Where instances are kept: `memory` (this process only), or etcd as `etcd://host:port` or
    /// `http://host:port`, shared by every registry process pointed at it.
    #[arg(long, env = "STRATUS_REGISTRY_STORE", default_value = "memory")]
    pub store: StoreConfig,

    /// With the memory store: how long after start the catalog says `warming`, so watchers
    /// keep the instances they knew while those re-register (a restarted registry starts
    /// empty). At least the longest heartbeat period of any instance (a third of its TTL)
    /// plus the registration back-off (2 s).
    #[arg(long, env = "STRATUS_REGISTRY_WARMUP", default_value = "5s", value_parser = stratus_kit::duration::parse)]
    pub warmup: Duration,

    /// With the memory store: when most instances fall silent at once (this registry cut off
    /// from them, or paused), hold their lapsed leases for at most this long instead of
    /// dropping them, so watchers are not handed an empty view the moment the network heals.
    /// `0s` turns it off.
    #[arg(long, env = "STRATUS_REGISTRY_PRESERVE_FOR", default_value = "60s", value_parser = stratus_kit::duration::parse)]
    pub preserve_for: Duration,

    #[command(flatten)]
    pub common: CommonArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    match &args.store {
        StoreConfig::Memory => {
            let store =
                Arc::new(MemoryStore::warming_for(args.warmup).preserving_for(args.preserve_for));
            tokio::spawn({
                let store = store.clone();
                async move { store.end_warming().await }
            });
            tokio::spawn(store::memory::reap_expired(
                store.clone(),
                Duration::from_millis(100),
            ));
            tokio::spawn(checks::run(store.clone()));
            serve(store, &args).await
        }
        StoreConfig::Etcd(url) => {
            let store = EtcdStore::connect(url)
                .await
                .with_context(|| format!("connecting to etcd at {url} (STRATUS_REGISTRY_STORE)"))?;
            tracing::info!(etcd = %url, "keeping instances in etcd");
            tokio::spawn(etcd_checks::run(
                store.client().clone(),
                etcd_checks::member_name().to_string(),
            ));
            serve(store, &args).await
        }
    }
}

async fn serve<S: Store>(store: Arc<S>, args: &Args) -> anyhow::Result<()> {
    let service = Service::new("registry", args.port)
        .unregistered()
        .without_events();
    let checked = store.clone();
    service.health.add_check("registry store", move || {
        let store = checked.clone();
        async move { store.check().await }
    });
    service
        .run(&args.common, api::routes().with_state(store))
        .await
}
