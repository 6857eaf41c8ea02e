//! Following the registry: a blocking query that returns the moment anything changes.
//!
//! While the registry is unreachable the gateway keeps routing with the last view it had
//! (fail static) and retries with back-off. A restarted (memory) registry says it is `warming`
//! until its instances have re-registered; its answers are merged into the last view until then
//! ([`Catalog::merged_with`]), so a registry restart never empties the gateway's rotation.
//!
//! Where DNS is the registry (`STRATUS_DISCOVERY=dns`), [`follow_dns`] asks DNS instead for the
//! services the route table names, and installs the same kind of view.

use std::sync::Arc;
use std::time::Duration;

use stratus_kit::dns_discovery::DnsFollower;
use stratus_kit::model::Catalog;
use stratus_kit::registry_client::RegistryClient;

use crate::proxy::Shared;
use crate::routes::RouteTable;
use crate::upstream::Upstreams;

const WAIT: Duration = Duration::from_secs(30);

pub async fn follow(client: RegistryClient, upstreams: Arc<Upstreams>) {
    let mut index = 0;
    let mut backoff = Duration::from_millis(100);
    let mut last = Catalog::default();
    loop {
        match client.watch(index, WAIT).await {
            Ok(catalog) => {
                backoff = Duration::from_millis(100);
                if catalog.index < index {
                    // The registry restarted and its index began again: take its view as new.
                    tracing::info!("registry index went back; resynchronising");
                }
                if catalog.index != index || upstreams.index() == 0 {
                    let view = catalog.merged_with(&last);
                    let instances: usize = view.services.values().map(Vec::len).sum();
                    tracing::debug!(
                        index = catalog.index,
                        instances,
                        warming = catalog.warming,
                        "registry view updated"
                    );
                    upstreams.apply(&view);
                    last = view;
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

/// The services a route table sends traffic to: what the gateway must resolve through DNS.
pub fn services_of(table: &RouteTable) -> Vec<String> {
    let mut services: Vec<String> = table
        .routes
        .iter()
        .map(|route| route.service.clone())
        .chain(table.tcp.iter().map(|route| route.service.clone()))
        .collect();
    services.sort();
    services.dedup();
    services
}

/// The DNS source: every refresh period, resolves each service of the current route table (so
/// a reloaded table's new services are picked up). A lookup that fails keeps that service's
/// last answer (fail static); `discovery_registry_up` and `discovery_view_age_seconds` say how
/// fresh the view is, as for the registry.
pub async fn follow_dns(mut follower: DnsFollower, shared: Arc<Shared>) {
    let upstreams = &shared.upstreams;
    tracing::info!(
        server = %follower.settings().server,
        template = %follower.settings().template,
        "taking instances from DNS"
    );
    let mut last_answer: Option<std::time::Instant> = None;
    loop {
        let services = services_of(&shared.routes.load());
        let round = follower.round(&services).await;
        if round.complete {
            last_answer = Some(std::time::Instant::now());
        }
        if round.catalog.index > 0 && (round.changed || upstreams.index() != round.catalog.index) {
            upstreams.apply(&round.catalog);
        }
        metrics::gauge!("discovery_registry_up").set(if round.complete { 1.0 } else { 0.0 });
        if let Some(at) = last_answer {
            metrics::gauge!("discovery_view_age_seconds").set(at.elapsed().as_secs_f64());
        }
        tokio::time::sleep(round.next).await;
    }
}
