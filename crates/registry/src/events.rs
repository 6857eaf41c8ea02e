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

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;

use crate::api::{catalog_answer, store_problem, Registry};
use crate::store::Store;

/// How long one wait lasts before it is simply started again (keep-alives fill the silence).
const WAIT: Duration = Duration::from_secs(60);
/// After a store error, how long to wait before reading again.
const RETRY: Duration = Duration::from_secs(1);

pub async fn watch<S: Store>(
    State(registry): State<Registry<S>>,
    caller: stratus_kit::caller::Caller,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, stratus_kit::Problem> {
    caller.known()?;
    let stream = futures_util::stream::unfold((registry, None), |(registry, last)| async move {
        let event = next_event(&registry, last).await;
        let index = event.0;
        Some((Ok(event.1), (registry, Some(index))))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
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
