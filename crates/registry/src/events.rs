//! `GET /v1/watch`: the catalog as a stream of server-sent events.
//!
//! A blocking query costs a request per change; a stream costs one connection for as long as the
//! watcher lives, and works from a browser (`EventSource`) or `curl -N`. On connect the watcher
//! gets the whole catalog (the same JSON as `GET /v1/services`), and again after every change, so
//! it never has to merge deltas: each event is the truth at its index. The JSON is encoded once
//! per change for every stream and blocking query ([`crate::answers`]).
//!
//! ```text
//! event: catalog
//! id: 42
//! data: {"index":42,"services":{...}}
//! ```
//!
//! With `?deltas=true` the stream is incremental instead: a snapshot, then only the changes
//! ([`crate::deltas`]), resumable from an index and optionally kept to some services.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use crate::api::{catalog_answer, named_services, store_problem, Registry};
use crate::deltas::{self, Resume};
use crate::store::Store;

/// How long one wait lasts before it is simply started again (keep-alives fill the silence).
const WAIT: Duration = Duration::from_secs(60);
/// After a store error, how long to wait before reading again.
const RETRY: Duration = Duration::from_secs(1);

/// `?deltas=true[&index=N][&epoch=E][&services=a,b]`; without `deltas`, the whole catalog per
/// change (and none of the others may be given).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchParams {
    deltas: Option<bool>,
    index: Option<u64>,
    epoch: Option<String>,
    services: Option<String>,
}

pub async fn watch<S: Store>(
    State(registry): State<Registry<S>>,
    caller: stratus_kit::caller::Caller,
    headers: HeaderMap,
    params: Result<Query<WatchParams>, QueryRejection>,
) -> Result<Response, stratus_kit::Problem> {
    caller.known()?;
    let Query(params) = params.map_err(|e| stratus_kit::Problem::bad_request(e.body_text()))?;
    if params.deltas != Some(true) {
        if params.index.is_some() || params.epoch.is_some() || params.services.is_some() {
            return Err(stratus_kit::Problem::bad_request(
                "index, epoch and services are for the incremental watch: add deltas=true",
            ));
        }
        return Ok(whole_catalog(registry).into_response());
    }
    // An `EventSource` reconnecting sends the last id it saw; it is newer than the URL's index.
    let last_event_id = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|text| text.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    stratus_kit::Problem::bad_request("Last-Event-ID is not an index")
                })?,
        ),
        None => None,
    };
    let services = params.services.as_deref().map(named_services).transpose()?;
    Ok(deltas::stream(
        registry,
        Resume {
            index: last_event_id.or(params.index),
            epoch: params.epoch,
            services,
        },
    ))
}

/// The whole catalog on connect and after every change.
fn whole_catalog<S: Store>(registry: Registry<S>) -> impl IntoResponse {
    let stream = futures_util::stream::unfold((registry, None), |(registry, last)| async move {
        let event = next_event(&registry, last).await;
        let index = event.0;
        Some((Ok::<_, Infallible>(event.1), (registry, Some(index))))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// Waits for the catalog after `last` (at once when there is no `last`) and returns its index
/// and event.
async fn next_event<S: Store>(registry: &Registry<S>, last: Option<u64>) -> (u64, Event) {
    loop {
        if let Some(last) = last {
            if registry.store.wait_for_change(last, WAIT).await <= last {
                continue;
            }
        }
        let (index, encoded) = match catalog_answer(registry).await {
            Ok(answer) => answer,
            Err(error) => {
                // Logged once per failed read; the watcher keeps its connection and its last view.
                let _ = store_problem(error);
                tokio::time::sleep(RETRY).await;
                continue;
            }
        };
        // A read can land on the same index as before (the change was undone by the time we
        // looked, or the store's revision moved for something that is not ours): say nothing.
        if Some(index) == last {
            continue;
        }
        let data = std::str::from_utf8(&encoded).unwrap_or("{}");
        let event = Event::default()
            .event("catalog")
            .id(index.to_string())
            .data(data);
        return (index, event);
    }
}
