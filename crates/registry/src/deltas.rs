//! `GET /v1/watch?deltas=true`: the incremental watch, a snapshot once and then only changes.
//!
//! The whole-catalog stream ([`crate::events`]) sends the whole catalog on every change, so one
//! change costs the catalog's size times the watchers. This one sends the view once (on connect,
//! or when the watcher is too far behind) and after it each change as it happens: which
//! instances of one service were added or changed (whole) and which ids left. Changes come from
//! the store's ring ([`crate::store::changes`]), each encoded once when recorded; every watcher
//! is sent those same bytes, with only its `id:` line its own.
//!
//! ```text
//! event: snapshot
//! id: 40
//! data: {"index":40,"services":{"catalog":[...]}}
//!
//! id: 42
//! event: change
//! data: {"index":42,"service":"catalog","instances":[{...}],"removed":["old"]}
//! ```
//!
//! A watcher that reconnects with `index=` (or the `Last-Event-ID` an `EventSource` sends) gets
//! every change after it, in order, and no snapshot, while the ring still holds them; from
//! further back, or from another run of a memory registry (`epoch=` differs), a snapshot first.
//! `services=a,b` keeps the stream to those services: changes elsewhere do not even wake it
//! (it waits on their own indexes, [`crate::store::service_index`]). Events that share an index
//! are sent together, and only the last of them carries the `id:`, so a watcher that drops
//! between them resumes before the index, not past half of it.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;

use crate::answers::encode_part;
use crate::api::{catalog_answer, store_problem, Registry};
use crate::store::changes::{Recorded, TooFarBehind};
use crate::store::{Store, StoreResult};

/// How long one wait lasts before a keep-alive comment is sent and the wait starts again.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// After a store error, how long to wait before reading again.
const RETRY: Duration = Duration::from_secs(1);

/// Where a watcher starts: the index its view is at (none: a snapshot first), the run of the
/// registry that index is from, and the services it follows (none: all), sorted.
pub struct Resume {
    pub index: Option<u64>,
    pub epoch: Option<String>,
    pub services: Option<Vec<String>>,
}

/// The `text/event-stream` response for one watcher.
pub fn stream<S: Store>(registry: Registry<S>, resume: Resume) -> Response {
    // A resumed index from another run of the registry means nothing here: snapshot.
    let same_run = resume
        .epoch
        .as_deref()
        .is_none_or(|epoch| epoch == registry.store.changes().epoch());
    let watcher = Watcher {
        registry,
        services: resume.services,
        at: resume.index.filter(|&index| index > 0 && same_run),
    };
    let frames = futures_util::stream::unfold(watcher, |mut watcher| async move {
        let frames = watcher.next().await;
        Some((frames, watcher))
    })
    .flat_map(|frames| futures_util::stream::iter(frames.into_iter().map(Ok::<_, Infallible>)));
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(frames),
    )
        .into_response()
}

struct Watcher<S> {
    registry: Registry<S>,
    services: Option<Vec<String>>,
    /// The index this watcher's view is complete through; `None` until it has a view.
    at: Option<u64>,
}

impl<S: Store> Watcher<S> {
    /// The next frames to send: a snapshot, changes, or a keep-alive comment.
    async fn next(&mut self) -> Vec<Bytes> {
        loop {
            let Some(at) = self.at else {
                match self.snapshot().await {
                    Ok(frames) => return frames,
                    Err(error) => {
                        // Logged once per failed read; the watcher keeps its connection.
                        let _ = store_problem(error);
                        tokio::time::sleep(RETRY).await;
                        continue;
                    }
                }
            };
            let store = &self.registry.store;
            let at = match store.changes().since(at, self.services.as_deref()) {
                Err(TooFarBehind) => {
                    self.at = None;
                    continue;
                }
                Ok(since) => {
                    self.at = Some(since.head);
                    if !since.changes.is_empty() {
                        return frames(&since.changes);
                    }
                    since.head
                }
            };
            let woke = match &self.services {
                None => store.wait_for_change(at, KEEP_ALIVE).await,
                Some(services) => {
                    store
                        .wait_for_services_change(services, at, KEEP_ALIVE)
                        .await
                }
            };
            if woke <= at {
                return vec![Bytes::from_static(b":\n\n")];
            }
            metrics::counter!("registry_watch_wakeups_total", "watch" => "deltas").increment(1);
        }
    }

    /// The whole view (or the part for this watcher's services) as a `snapshot` event. The whole
    /// catalog's JSON is the one every watcher and blocking query shares ([`crate::answers`]); a
    /// part is read on its own ([`Store::services_snapshot`]: on etcd, only those services' keys).
    async fn snapshot(&mut self) -> StoreResult<Vec<Bytes>> {
        let (index, json) = match &self.services {
            None => catalog_answer(&self.registry).await?,
            Some(services) => {
                let catalog = self.registry.store.services_snapshot(services).await?;
                (catalog.index, encode_part(&catalog))
            }
        };
        self.at = Some(index);
        metrics::counter!("registry_watch_snapshots_total").increment(1);
        Ok(vec![
            Bytes::from(format!("event: snapshot\nid: {index}\ndata: ")),
            json,
            Bytes::from_static(b"\n\n"),
        ])
    }
}

/// The changes' shared frames, with an `id:` line before the last of each index.
fn frames(changes: &[Arc<Recorded>]) -> Vec<Bytes> {
    metrics::counter!("registry_watch_deltas_sent_total").increment(changes.len() as u64);
    let mut frames = Vec::with_capacity(changes.len() * 2);
    for (n, change) in changes.iter().enumerate() {
        let last_of_index = changes
            .get(n + 1)
            .is_none_or(|next| next.index != change.index);
        if last_of_index {
            frames.push(Bytes::from(format!("id: {}\n", change.index)));
        }
        frames.push(change.frame.clone());
    }
    frames
}
