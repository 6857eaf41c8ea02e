//! Keeping a current copy of the registry's catalog through its incremental watch
//! (`GET /v1/watch?deltas=true`): the whole view once, then each change the moment it happens,
//! applied to the copy, so DNS is never behind by a poll and a change costs its own size. After
//! a drop the watch resumes from the copy's index. A registry without the watch (404) is
//! followed with blocking queries on the whole catalog instead.
//!
//! While the registry is unreachable the last view keeps being served (fail static); before the
//! first answer there is no view, and queries get SERVFAIL rather than a wrong NXDOMAIN.
//! A restarted registry's `warming` view is merged into the last one
//! ([`Catalog::merged_with`]), so its brief emptiness is never answered as NXDOMAIN.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use stratus_kit::deltas::{Delta, Resume};
use stratus_kit::model::Catalog;
use stratus_kit::registry_client::RegistryClient;

const WAIT: Duration = Duration::from_secs(30);

pub async fn follow(client: RegistryClient, view: Arc<ArcSwapOption<Catalog>>) {
    let mut backoff = Duration::from_millis(100);
    let mut resume: Option<Resume> = None;
    loop {
        let error = match client.watch_deltas(None, resume.as_ref()).await {
            Ok(Some(mut stream)) => loop {
                match stream.next().await {
                    Ok(Some(Delta::Alive)) => continue,
                    Ok(Some(delta)) => {
                        backoff = Duration::from_millis(100);
                        let previous = view.load_full();
                        let next = match (&delta, previous) {
                            (Delta::Snapshot(catalog), Some(previous)) => {
                                catalog.merged_with(&previous)
                            }
                            (Delta::Snapshot(catalog), None) => catalog.clone(),
                            (Delta::Change(change), Some(previous)) => {
                                let mut next = (*previous).clone();
                                change.apply_to(&mut next);
                                next
                            }
                            // A change always follows a snapshot on the same stream.
                            (Delta::Change(_), None) | (Delta::Alive, _) => continue,
                        };
                        tracing::debug!(index = next.index, "registry view updated");
                        resume.get_or_insert_with(Resume::default).after(&delta);
                        view.store(Some(Arc::new(next)));
                    }
                    Ok(None) => break anyhow::anyhow!("the registry closed the watch"),
                    Err(error) => break error,
                }
            },
            Ok(None) => return follow_blocking(client, view).await,
            Err(error) => error,
        };
        tracing::warn!(error = %format!("{error:#}"), "registry unreachable; answering from the last known view");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// A registry older than the incremental watch: a blocking query on the whole catalog, asked
/// again after every answer.
async fn follow_blocking(client: RegistryClient, view: Arc<ArcSwapOption<Catalog>>) {
    tracing::info!("the registry has no incremental watch; following it with blocking queries");
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
