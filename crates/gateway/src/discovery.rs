//! Following the registry: a blocking query on the services the route table names
//! (`GET /v1/services?services=a,b`), which returns the moment one of them changes. Changes to
//! services no route names wake nothing here and are not held: the gateway's cost follows what
//! it serves, not the size of the system. When a reload names other services, the query is
//! dropped and asked again for them at once. A registry that refuses `services=` (one older
//! than it) is followed whole and its answers cut down here.
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
use crate::route::routes::RouteTable;

const WAIT: Duration = Duration::from_secs(30);
/// How often the route table is looked at for other services while a query is out.
const ROUTES_POLL: Duration = Duration::from_millis(200);

/// Follows the services of the current route table, and `pinned` (the services of the layer-4
/// listeners bound at start, which serve for the process's life whatever a reload says).
pub async fn follow(client: RegistryClient, shared: Arc<Shared>, pinned: Vec<String>) {
    let upstreams = &shared.upstreams;
    let mut index = 0;
    let mut backoff = Duration::from_millis(100);
    let mut last = Catalog::default();
    // Whether the registry takes `services=`; until it refuses once, it does.
    let mut filters = true;
    loop {
        let services = followed(&shared.routes.load(), &pinned);
        let asked = async {
            if filters {
                if let Some(catalog) = client.watch_services(index, WAIT, &services).await? {
                    return Ok(catalog);
                }
                tracing::warn!(
                    "the registry does not take ?services=; following the whole catalog"
                );
                filters = false;
            }
            let mut catalog = client.watch(index, WAIT).await?;
            catalog
                .services
                .retain(|name, _| services.binary_search(name).is_ok());
            Ok::<_, anyhow::Error>(catalog)
        };
        let answer = tokio::select! {
            answer = asked => answer,
            () = routes_change(&shared, &pinned, &services) => {
                // The route table names other services now: ask for those at once.
                index = 0;
                continue;
            }
        };
        match answer {
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

/// Returns once the route table names services other than `asked`.
async fn routes_change(shared: &Shared, pinned: &[String], asked: &[String]) {
    loop {
        tokio::time::sleep(ROUTES_POLL).await;
        if followed(&shared.routes.load(), pinned) != asked {
            return;
        }
    }
}

/// The services the gateway follows and checks: its route table's and `pinned`, sorted.
pub fn followed(table: &RouteTable, pinned: &[String]) -> Vec<String> {
    let mut services = services_of(table);
    services.extend(pinned.iter().cloned());
    services.sort();
    services.dedup();
    services
}

/// The services a route table sends traffic to: what the gateway follows in the registry (or
/// resolves through DNS) and health-checks.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_followed_services_are_the_routed_ones_and_the_pinned() {
        // Routes make their metric handles as they are parsed: the recorder comes first.
        stratus_kit::metrics::install();
        let table = RouteTable::parse(
            "[[routes]]\nprefix = \"/b\"\nservice = \"beta\"\n\n\
             [[routes]]\nprefix = \"/a\"\nservice = \"alpha\"\n\n\
             [[routes]]\nprefix = \"/a2\"\nservice = \"alpha\"\n",
        )
        .unwrap();
        assert_eq!(services_of(&table), ["alpha", "beta"]);
        let pinned = ["tcp-only".to_string(), "beta".to_string()];
        assert_eq!(followed(&table, &pinned), ["alpha", "beta", "tcp-only"]);
    }
}
