//! Shipping this process's log lines to the event sink, beside stdout.
//!
//! Every line a process logs still goes to stdout as it always did (factor 11: a container's log
//! collector keeps working). With shipping on, a second tracing layer ([`layer::ShipLayer`])
//! also copies each line at or above a level (`STRATUS_LOG_SHIP_LEVEL`, info by default) into a
//! bounded queue: level, target, message, fields, and the trace and span of the request or
//! message it was logged in. A background task ([`send`]) posts the queue in batches to the
//! sink's `POST /v1/logs` as OTLP protobuf, over the same mutual TLS client as event records.
//!
//! The request path pays for copying the line into the queue and nothing else: the queue is
//! taken with `try_send`, so a full queue (a sink that is slow or down) drops the line and counts
//! it (`logs_dropped_total{reason="queue_full"}`); a batch the sink refuses or cannot be reached
//! for is dropped and counted too (`sink_refused`, `sink_unreachable`), never retried.
//! `logs_shipped_total` counts what the sink took.
//!
//! [`flush`] sends what is queued before the process exits (its last lines say why it stops).
//!
//! The shipping task's own lines (and everything else logged while it runs, as the HTTP client's)
//! are never queued: a sink that is down would otherwise fill the queue with lines saying so.

pub mod layer;
pub mod line;
pub mod send;

use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use tracing::Level;
use tracing_subscriber::filter::{Filtered, LevelFilter};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Lines waiting to be sent; beyond this, new lines are dropped.
pub const QUEUE: usize = 10_000;
/// A POST carries at most this many lines...
pub const MAX_BATCH: usize = 1_000;
/// ...and about this many bytes of messages and fields (the sink takes 4 MiB a request).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// A partial batch is sent after this long.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Who ships, where to, and from which level up.
#[derive(Debug, Clone)]
pub struct Settings {
    pub service: String,
    pub instance: String,
    /// The sink's base URL (`http://127.0.0.1:8090`).
    pub sink: String,
    /// Below it, lines are not shipped (the layer is filtered to it).
    pub min_level: Level,
}

/// Counters at 0 from the start, so a dashboard sees them before any line is dropped.
pub fn describe_metrics() {
    metrics::counter!("logs_shipped_total").increment(0);
    for reason in ["queue_full", "sink_refused", "sink_unreachable"] {
        metrics::counter!("logs_dropped_total", "reason" => reason).increment(0);
    }
}

/// The layer to add beside stdout's (filtered to `min_level`), and the task that ships what it
/// queues. Needs a tokio runtime (the task is spawned on it); the task waits for the mesh to be
/// installed before it builds its client, so lines logged while joining are shipped once it has
/// joined.
pub fn start<S>(settings: Settings) -> Filtered<layer::ShipLayer, LevelFilter, S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    describe_metrics();
    let min_level = LevelFilter::from_level(settings.min_level);
    let (queue, receiver) = tokio::sync::mpsc::channel(QUEUE);
    let (flushes, flush_requests) = tokio::sync::mpsc::unbounded_channel();
    let _ = FLUSH.set(flushes);
    tokio::spawn(layer::quiet(send::run(settings, receiver, flush_requests)));
    layer::ShipLayer::new(queue).with_filter(min_level)
}

/// Asks the shipping task to send what is queued now; the answer comes once it has been posted.
static FLUSH: OnceLock<UnboundedSender<oneshot::Sender<()>>> = OnceLock::new();

/// Sends the lines queued so far, waiting at most `within`: for a process about to exit, whose
/// last lines (why it stops) would otherwise die in the queue. Returns at once when nothing
/// ships, or before the process has joined the mesh (there is no client to send with yet).
pub async fn flush(within: Duration) {
    let Some(flushes) = FLUSH.get() else {
        return;
    };
    if crate::mesh::installed().is_none() {
        return;
    }
    let (done, sent) = oneshot::channel();
    if flushes.send(done).is_ok() {
        let _ = tokio::time::timeout(within, sent).await;
    }
}
