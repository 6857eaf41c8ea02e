//! Keeping a current copy of the registry's catalog, with the same blocking query the gateway
//! uses: each answer arrives the moment something changes, so DNS is never behind by a poll.
//!
//! While the registry is unreachable the last view keeps being served (fail static); before the
//! first answer there is no view, and queries get SERVFAIL rather than a wrong NXDOMAIN.
//! A restarted registry's `warming` view is merged into the last one
//! ([`Catalog::merged_with`]), so its brief emptiness is never answered as NXDOMAIN.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use stratus_kit::model::Catalog;
use stratus_kit::registry_client::RegistryClient;

const WAIT: Duration = Duration::from_secs(30);

pub async fn follow(client: RegistryClient, view: Arc<ArcSwapOption<Catalog>>) {
    let mut index = 0;
    let mut backoff = Duration::from_millis(100);
    loop {
        match client.watch(index, WAIT).await {
            Ok(catalog) => {
                backoff = Duration::from_millis(100);
                if catalog.index != index {
                    tracing::debug!(index = catalog.index, "registry view updated");
                }
                index = catalog.index;
                let merged = match view.load_full() {
                    Some(previous) => catalog.merged_with(&previous),
                    None => catalog,
                };
                view.store(Some(Arc::new(merged)));
            }
            Err(error) => {
                tracing::warn!(error = %format!("{error:#}"), "registry unreachable; answering from the last known view");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                index = 0;
            }
        }
    }
}
