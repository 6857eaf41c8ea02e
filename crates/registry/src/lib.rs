//! The registry: the live directory of which instance of which service is where.
//!
//! Every process registers its address with a lease (TTL) and renews it with heartbeats; an
//! instance that stops renewing is dropped. Watchers (the gateway, service clients, DNS) ask with
//! the last index they saw and get an answer the moment anything changes: no polling delay.

pub mod api;
pub mod store;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use stratus_kit::config::CommonArgs;
use stratus_kit::server::Service;

/// `stratus serve registry`
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Port of the registry API.
    #[arg(long, env = "PORT", default_value_t = 8500)]
    pub port: u16,

    #[command(flatten)]
    pub common: CommonArgs,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let store = Arc::new(store::Store::new());
    tokio::spawn(store::reap_expired(
        store.clone(),
        Duration::from_millis(100),
    ));
    let app = api::router(store);
    Service::new("registry", args.port)
        .unregistered()
        .run(&args.common, app)
        .await
}
