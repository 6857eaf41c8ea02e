//! Following the registry: its incremental watch on the services the route table names
//! (`GET /v1/watch?deltas=true&services=a,b`): a snapshot once, then each change to one of
//! them as it happens, applied to the view the gateway routes with. Changes to services no
//! route names are not even sent: the gateway's cost follows what it serves and what changes,
//! not the size of the system. When a reload names other services, the watch is dropped and
//! opened again for them at once. A registry older than the incremental watch sends its whole
//! catalog per change instead (`event: catalog`); each is taken as a snapshot, cut down here.
//!
//! While the registry is unreachable the gateway keeps routing with the last view it had
//! (fail static) and retries with back-off; it resumes from the index its view is at, so a
//! short drop costs only the changes it missed. A restarted (memory) registry says it is
//! `warming` until its instances have re-registered; its snapshots are merged into the last
//! view until then ([`Catalog::merged_with`]), so a registry restart never empties the
//! gateway's rotation.
//!
//! Where DNS is the registry (`STRATUS_DISCOVERY=dns`), [`follow_dns`] asks DNS instead for the
//! services the route table names, and installs the same kind of view.

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use stratus_kit::deltas::{Delta, Resume};
use stratus_kit::dns_discovery::DnsFollower;
use stratus_kit::model::Catalog;
use stratus_kit::registry_client::RegistryClient;

use crate::proxy::Shared;
use crate::route::routes::RouteTable;
use crate::upstream::instances::Upstreams;

/// How often the route table is looked at for other services while the watch is open.
const ROUTES_POLL: Duration = Duration::from_millis(200);

/// The view the gateway routes with, and where the registry's watch resumes from.
#[derive(Default)]
struct Following {
    /// What is installed: the registry's view of the followed services (merged with the
    /// previous run's while a restarted registry warms up).
    view: Catalog,
    /// The registry index and run the view is complete through; `None`: a snapshot is needed.
    resume: Option<Resume>,
}

/// Follows the services of the current route table, and `pinned` (the services of the layer-4
/// listeners bound at start, which serve for the process's life whatever a reload says).
pub async fn follow(client: RegistryClient, shared: Arc<Shared>, pinned: Vec<String>) {
    let mut backoff = Duration::from_millis(100);
    let mut state = Following::default();
    loop {
        let services = followed(&shared.routes.load(), &pinned);
        let watched = watch(
            &client,
            &shared.upstreams,
            &services,
            &mut state,
            &mut backoff,
        );
        let ended = tokio::select! {
            ended = watched => ended,
            () = routes_change(&shared, &pinned, &services) => {
                // The route table names other services now: a snapshot of those at once.
                state.resume = None;
                continue;
            }
        };
        let error = ended.unwrap_err();
        tracing::warn!(error = %format!("{error:#}"), "registry unreachable; routing with the last known instances");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Holds the watch on `services` open, installing each view it gives, until it fails.
async fn watch(
    client: &RegistryClient,
    upstreams: &Upstreams,
    services: &[String],
    state: &mut Following,
    backoff: &mut Duration,
) -> anyhow::Result<std::convert::Infallible> {
    let Some(mut stream) = client
        .watch_deltas(Some(services), state.resume.as_ref())
        .await?
    else {
        anyhow::bail!("the registry has no incremental watch (404 on /v1/watch)");
    };
    loop {
        let Some(first) = stream.next().await? else {
            anyhow::bail!("the registry closed the watch");
        };
        *backoff = Duration::from_millis(100);
        if first == Delta::Alive {
            continue;
        }
        // Everything already arrived is applied before the view is installed once: a burst of
        // changes costs one installation, not one per change.
        let mut deltas = vec![first];
        while let Some(more) = stream.next().now_or_never() {
            match more? {
                Some(delta) => deltas.push(delta),
                None => break,
            }
        }
        for delta in &deltas {
            state.apply(delta, services);
        }
        let instances: usize = state.view.services.values().map(Vec::len).sum();
        tracing::debug!(
            index = state.view.index,
            instances,
            warming = state.view.warming,
            deltas = deltas.len(),
            "registry view updated"
        );
        upstreams.apply(&state.view);
    }
}

impl Following {
    fn apply(&mut self, delta: &Delta, services: &[String]) {
        match delta {
            Delta::Snapshot(catalog) => {
                let mut catalog = catalog.clone();
                catalog
                    .services
                    .retain(|name, _| services.binary_search(name).is_ok());
                self.view = catalog.merged_with(&self.view);
            }
            Delta::Change(change) => {
                if services.binary_search(&change.service).is_ok() {
                    change.apply_to(&mut self.view);
                }
            }
            Delta::Alive => {}
        }
        self.resume.get_or_insert_with(Resume::default).after(delta);
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
