//! Following the registry: a blocking query that returns the moment anything changes.
//!
//! While the registry is unreachable the gateway keeps routing with the last view it had
//! (fail static) and retries with back-off.

use std::sync::Arc;
use std::time::Duration;

use stratus_kit::registry_client::RegistryClient;

use crate::upstream::Upstreams;

const WAIT: Duration = Duration::from_secs(30);

pub async fn follow(client: RegistryClient, upstreams: Arc<Upstreams>) {
    let mut index = 0;
    let mut backoff = Duration::from_millis(100);
    loop {
        match client.watch(index, WAIT).await {
            Ok(catalog) => {
                backoff = Duration::from_millis(100);
                if catalog.index < index {
                    // The registry restarted and its index began again: take its view as new.
                    tracing::info!("registry index went back; resynchronising");
                }
                if catalog.index != index || upstreams.index() == 0 {
                    let instances: usize = catalog.services.values().map(Vec::len).sum();
                    tracing::debug!(index = catalog.index, instances, "registry view updated");
                    upstreams.apply(&catalog);
                }
                index = catalog.index;
            }
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "registry unreachable; routing with the last known instances");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                // Ask for the full view on reconnect, whatever its index.
                index = 0;
            }
        }
    }
}
