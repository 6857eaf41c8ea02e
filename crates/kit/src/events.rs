//! Reporting to the event sink: one record per hop (which service and instance handled it, did it
//! succeed, how long it took), sent in batches off the request path.
//!
//! [`EventReporter::report`] never waits and never fails: records go into a bounded queue
//! ([`QUEUE`] records, `STRATUS_EVENTS_QUEUE`). A background task sends the queue in batches (up
//! to [`MAX_BATCH`] records, or every [`FLUSH_EVERY`]) to `POST {STRATUS_EVENTS_URL}/v1/events`
//! with a short timeout, once: no retries, so a sink that is down costs one failed connection
//! per batch and nothing else.
//!
//! What does not fit the queue, and a batch the sink could not be reached with (no connection)
//! or refused for overload (503, 429), is not lost from the counts: it is folded into a bounded
//! summary ([`crate::fold`]: per second, service, instance, kind, name and caller, a count, an
//! error count and a latency sketch), counted in `events_folded_total`, and sent with the next
//! flush to `POST {STRATUS_EVENTS_URL}/v1/summaries`, which the sink merges into its stats and
//! edges. A summary the sink cannot be reached with is folded back and tried again at the next
//! flush. A batch that timed out is dropped and counted as before: the sink may have stored it,
//! and folding it too could count it twice.
//!
//! A request that used the service's database or a Redis cache is followed by one `client` record
//! per backing service ([`EventReporter::report_calls`], from the request's [`crate::tally`]):
//! `peer` names the node it called (`orders-db`, `redis`), the name what it speaks (`sqlite`,
//! `postgres`, `redis`), the duration is the calls' summed time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::event_wire::{hex_id, read_records, Batch, RecordRef, CONTENT_TYPE, MAGIC};
use crate::fold::Fold;
use crate::trace::TraceContext;

/// Records waiting to be sent, by default (`STRATUS_EVENTS_QUEUE`); beyond this, new records
/// are folded ([`crate::fold`]).
pub const QUEUE: usize = 10_000;
/// A POST is sent once it carries this many records (a little more when the last hand-over was
/// a pre-encoded batch; the gateway's are at most 128).
pub const MAX_BATCH: usize = 1_000;
/// A partial batch is sent after this long.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// How long one POST to the sink may take.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// One hop of one request (or one message), as the event sink stores it.
///
/// `started_at` is RFC 3339 in UTC (fractional seconds allowed); `duration_us` is microseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    pub trace_id: String,
    pub span_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_span_id: Option<String>,
    pub service: String,
    pub instance: String,
    /// `server`, `client`, `consumer`, `producer` or `gateway`.
    pub kind: String,
    /// The route (`/api/catalog/products/{id}`) or the topic.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The HTTP status, or 0 for messages.
    pub status: u16,
    pub ok: bool,
    pub started_at: String,
    pub duration_us: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
    /// `hit` or `miss`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<String>,
    /// The node a `client` record called, when it is not a service that reports its own records
    /// (OpenTelemetry's `peer.service`): `orders-db`, `redis`. The topology draws an edge
    /// service -> peer; the record's name says what the peer is (`sqlite`, `postgres`: a
    /// database; `redis`: a cache; `dns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
}

impl EventRecord {
    /// This record as the binary form borrows it, with its ids and start given as the numbers
    /// they are (the caller has parsed, or has no use for, the hex and RFC 3339 texts).
    pub fn as_ref_with(
        &self,
        trace_id: u128,
        span_id: u64,
        parent_span_id: Option<u64>,
        started_us: i64,
    ) -> RecordRef<'_> {
        RecordRef {
            trace_id,
            span_id,
            parent_span_id,
            service: &self.service,
            instance: &self.instance,
            kind: &self.kind,
            name: &self.name,
            method: self.method.as_deref(),
            status: self.status,
            ok: self.ok,
            started_us,
            duration_us: self.duration_us,
            retries: self.retries,
            cache: self.cache.as_deref(),
            topic: self.topic.as_deref(),
            breaker: self.breaker.as_deref(),
            peer: self.peer.as_deref(),
        }
    }
}

impl From<&RecordRef<'_>> for EventRecord {
    /// The JSON form of a binary record: ids in hex, the start as RFC 3339.
    fn from(record: &RecordRef<'_>) -> Self {
        use time::format_description::well_known::Rfc3339;
        let started_at =
            time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(record.started_us) * 1000)
                .ok()
                .and_then(|t| t.format(&Rfc3339).ok())
                .unwrap_or_default();
        let owned = |text: Option<&str>| text.map(str::to_owned);
        EventRecord {
            trace_id: hex_id(record.trace_id.to_be_bytes()),
            span_id: hex_id(record.span_id.to_be_bytes()),
            parent_span_id: record.parent_span_id.map(|p| hex_id(p.to_be_bytes())),
            service: record.service.into(),
            instance: record.instance.into(),
            kind: record.kind.into(),
            name: record.name.into(),
            method: owned(record.method),
            status: record.status,
            ok: record.ok,
            started_at,
            duration_us: record.duration_us,
            retries: record.retries,
            cache: owned(record.cache),
            topic: owned(record.topic),
            breaker: owned(record.breaker),
            peer: owned(record.peer),
        }
    }
}

/// The client that posts to the sink (over mutual TLS when `mesh` is on; short timeouts, since
/// nothing waits for it but a background task) and the sink's base URL as it is reached.
/// Event records and log lines ([`crate::log_ship`]) are sent the same way.
pub fn sink_client(
    mesh: &crate::mesh::Mesh,
    sink: &str,
) -> anyhow::Result<(reqwest::Client, String)> {
    crate::install_crypto_provider();
    let client = mesh
        .client_builder("events")
        .timeout(SEND_TIMEOUT)
        .connect_timeout(Duration::from_millis(500))
        .build()?;
    Ok((client, mesh.url(sink.trim_end_matches('/'))))
}

/// What the sending task receives: one record, or records a caller already wrote in the binary
/// batch format ([`crate::event_wire`]).
// Boxing the record to shrink the enum would cost an allocation per record.
#[allow(clippy::large_enum_variant)]
enum Outgoing {
    Record(EventRecord),
    Encoded(Batch),
}

impl Outgoing {
    fn records(&self) -> usize {
        match self {
            Outgoing::Record(_) => 1,
            Outgoing::Encoded(batch) => batch.records,
        }
    }
}

/// The handle services report through. Cheap to clone.
///
/// The queue is bounded in records, not messages: a counter of records queued and not yet
/// taken by the sending task, checked before each hand-over.
#[derive(Clone)]
pub struct EventReporter {
    queue: mpsc::UnboundedSender<Outgoing>,
    queued: Arc<AtomicUsize>,
    /// The queue's bound in records.
    capacity: usize,
    /// What neither the queue nor the sink took, as counts (sent by the sending task).
    fold: Arc<std::sync::Mutex<Fold>>,
    /// Behind an `Arc`: the request layer takes the reporter as axum `State`, a clone per request.
    origin: Arc<Origin>,
}

/// Who reports.
struct Origin {
    service: String,
    instance: String,
}

impl EventReporter {
    /// Starts the sending task. `sink` is the sink's base URL (`http://127.0.0.1:8090`).
    pub fn start(sink: &str, service: &str, instance: &str) -> anyhow::Result<Self> {
        Self::with_queue(sink, service, instance, QUEUE)
    }

    /// [`EventReporter::start`] with a queue of `capacity` records (`STRATUS_EVENTS_QUEUE`).
    pub fn with_queue(
        sink: &str,
        service: &str,
        instance: &str,
        capacity: usize,
    ) -> anyhow::Result<Self> {
        let (client, base) = sink_client(crate::mesh::current(), sink)?;
        let urls = Urls {
            records: format!("{base}/v1/events"),
            summaries: format!("{base}/v1/summaries"),
        };
        let (queue, receiver) = mpsc::unbounded_channel();
        let queued = Arc::new(AtomicUsize::new(0));
        let fold = Arc::new(std::sync::Mutex::new(Fold::default()));
        let sender = Sender {
            client,
            urls,
            fold: fold.clone(),
        };
        tokio::spawn(send_loop(sender, receiver, queued.clone()));
        Ok(Self {
            queue,
            queued,
            capacity,
            fold,
            origin: Arc::new(Origin {
                service: service.into(),
                instance: instance.into(),
            }),
        })
    }

    pub fn service(&self) -> &str {
        &self.origin.service
    }

    pub fn instance(&self) -> &str {
        &self.origin.instance
    }

    /// Counts `records` into the queue if they fit.
    fn reserve(&self, records: usize) -> bool {
        let before = self.queued.fetch_add(records, Ordering::Relaxed);
        if before + records > self.capacity {
            self.queued.fetch_sub(records, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn hand_over(&self, outgoing: Outgoing, records: usize) {
        if self.queue.send(outgoing).is_err() {
            // The sending task is gone (the runtime is shutting down).
            self.queued.fetch_sub(records, Ordering::Relaxed);
            metrics::counter!("events_dropped_total", "reason" => "queue_full")
                .increment(records as u64);
        }
    }

    /// Queues a record; never waits. A full queue folds it (counted).
    pub fn report(&self, record: EventRecord) {
        if self.reserve(1) {
            self.hand_over(Outgoing::Record(record), 1);
        } else {
            fold_json(&self.fold, std::slice::from_ref(&record), "queue_full");
        }
    }

    /// Reports what one request or message (the hop `context`, which started at `started`, wall
    /// clock `wall`) spent on its backing services: one `client` record per database or cache
    /// it called, a child of the hop, timed as the sum of its calls and failed if any call did.
    /// The record starts when the first call did.
    ///
    /// Written straight into a binary batch ([`crate::event_wire`]): ids and times as numbers,
    /// no `EventRecord` of owned strings for serde to walk.
    pub fn report_calls(
        &self,
        context: &TraceContext,
        started: Instant,
        wall: time::OffsetDateTime,
        spent: crate::tally::Finished,
    ) {
        let mut batch = Batch::with_capacity(256);
        self.write_calls(&mut batch, context, started, wall, spent);
        self.report_encoded(batch);
    }

    /// Appends the `client` records of [`EventReporter::report_calls`] to `batch`.
    fn write_calls(
        &self,
        batch: &mut Batch,
        context: &TraceContext,
        started: Instant,
        wall: time::OffsetDateTime,
        spent: crate::tally::Finished,
    ) {
        let wall_us = (wall.unix_timestamp_nanos() / 1000) as i64;
        for (peer, counts) in [spent.db, spent.cache].into_iter().flatten() {
            let offset = counts
                .first
                .map(|first| first.saturating_duration_since(started))
                .unwrap_or_default();
            batch.push(&RecordRef {
                trace_id: context.trace_id,
                span_id: context.child().span_id,
                parent_span_id: Some(context.span_id),
                service: &self.origin.service,
                instance: &self.origin.instance,
                kind: "client",
                name: peer.system,
                method: None,
                status: 0,
                ok: counts.errors == 0,
                started_us: wall_us + offset.as_micros() as i64,
                duration_us: counts.total_us,
                retries: None,
                cache: None,
                topic: None,
                breaker: None,
                peer: Some(&peer.name),
            });
        }
    }

    /// Queues records already written in the binary batch format; never waits. If they do not
    /// all fit in the queue, they are all folded (counted).
    pub fn report_encoded(&self, batch: Batch) {
        let records = batch.records;
        if records == 0 {
            return;
        }
        if self.reserve(records) {
            self.hand_over(Outgoing::Encoded(batch), records);
        } else {
            fold_encoded(&self.fold, batch.records_bytes(), "queue_full");
        }
    }
}

/// Folds records written in the binary format (without the magic in front), counting them in
/// `events_folded_total{reason}`, or in `events_dropped_total{reason="fold_full"}` past the
/// fold's bound.
fn fold_encoded(fold: &std::sync::Mutex<Fold>, records: &[u8], reason: &'static str) {
    // The reporter wrote these itself; a batch that does not read back is a bug, not input.
    match read_records(records, usize::MAX) {
        Ok(records) => fold_refs(fold, records.iter(), reason),
        Err(error) => tracing::warn!(%error, "a batch of our own does not read back"),
    }
}

/// [`fold_encoded`] for records reported one by one.
fn fold_json(fold: &std::sync::Mutex<Fold>, records: &[EventRecord], reason: &'static str) {
    use time::format_description::well_known::Rfc3339;
    let refs: Vec<RecordRef<'_>> = records
        .iter()
        .map(|record| {
            let started_us = time::OffsetDateTime::parse(&record.started_at, &Rfc3339)
                .map_or(0, |t| (t.unix_timestamp_nanos() / 1000) as i64);
            // The fold keeps no ids: only whether the hop had a parent.
            let parent = record.parent_span_id.as_ref().map(|_| 1);
            record.as_ref_with(0, 0, parent, started_us)
        })
        .collect();
    fold_refs(fold, refs.iter(), reason);
}

fn fold_refs<'a>(
    fold: &std::sync::Mutex<Fold>,
    records: impl Iterator<Item = &'a RecordRef<'a>>,
    reason: &'static str,
) {
    let (mut folded, mut lost) = (0u64, 0u64);
    {
        let mut fold = fold
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for record in records {
            if fold.add(record) {
                folded += 1;
            } else {
                lost += 1;
            }
        }
    }
    metrics::counter!("events_folded_total", "reason" => reason).increment(folded);
    if lost > 0 {
        metrics::counter!("events_dropped_total", "reason" => "fold_full").increment(lost);
    }
}

impl EventReporter {
    /// Records folded and not yet sent (tests).
    pub fn folded(&self) -> u64 {
        self.fold.lock().map_or(0, |fold| fold.records())
    }
}

/// What one flush sends: the records reported one by one as a JSON array, and the binary
/// batches one after another behind a single [`MAGIC`] (a POST each, when there are both).
///
/// Binary batches (the gateway's, 128 records each) are kept as they came and sent in order
/// ([`Chunks`]), not copied into one buffer: that copy was a quarter of what reporting cost the
/// gateway per request.
struct Body {
    json: Vec<u8>,
    json_records: usize,
    binary: Vec<Bytes>,
    binary_records: usize,
}

impl Body {
    fn new() -> Self {
        Self {
            json: Vec::new(),
            json_records: 0,
            binary: Vec::new(),
            binary_records: 0,
        }
    }

    fn records(&self) -> usize {
        self.json_records + self.binary_records
    }

    fn add(&mut self, outgoing: Outgoing) {
        match outgoing {
            Outgoing::Record(record) => {
                self.json
                    .push(if self.json_records == 0 { b'[' } else { b',' });
                // Writing to a Vec cannot fail, and an EventRecord always serialises.
                let _ = serde_json::to_writer(&mut self.json, &record);
                self.json_records += 1;
            }
            Outgoing::Encoded(batch) => {
                if self.binary.is_empty() {
                    self.binary.push(Bytes::from_static(MAGIC));
                }
                let records = batch.records;
                // The batch's records without its own magic: no copy, a view of the same buffer.
                self.binary
                    .push(Bytes::from(batch.bytes).slice(MAGIC.len()..));
                self.binary_records += records;
            }
        }
    }

    /// The POSTs to send: content type, body and how many records it carries.
    fn finish(mut self) -> Vec<(&'static str, Chunks, usize)> {
        let mut posts = Vec::with_capacity(2);
        if self.json_records > 0 {
            self.json.push(b']');
            posts.push((
                "application/json",
                Chunks::new(vec![Bytes::from(self.json)]),
                self.json_records,
            ));
        }
        if self.binary_records > 0 {
            posts.push((CONTENT_TYPE, Chunks::new(self.binary), self.binary_records));
        }
        posts
    }
}

/// A request body of several buffers, sent in order with its exact length known up front (so
/// the request carries `Content-Length`, not chunked encoding).
struct Chunks {
    chunks: std::collections::VecDeque<Bytes>,
    remaining: u64,
}

impl Chunks {
    /// The parts still to be sent (cheap: each a reference to the same buffer).
    fn parts(&self) -> Vec<Bytes> {
        self.chunks.iter().cloned().collect()
    }

    fn new(chunks: Vec<Bytes>) -> Self {
        let chunks: std::collections::VecDeque<Bytes> =
            chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let remaining = chunks.iter().map(|c| c.len() as u64).sum();
        Self { chunks, remaining }
    }
}

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let next = self.chunks.pop_front();
        if let Some(chunk) = &next {
            self.remaining -= chunk.len() as u64;
        }
        std::task::Poll::Ready(next.map(|chunk| Ok(http_body::Frame::data(chunk))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

/// Where the sending task posts.
struct Urls {
    records: String,
    summaries: String,
}

/// The sending task's means: its client, the sink's URLs, and the fold it sends.
struct Sender {
    client: reqwest::Client,
    urls: Urls,
    fold: Arc<std::sync::Mutex<Fold>>,
}

async fn send_loop(
    sender: Sender,
    mut receiver: mpsc::UnboundedReceiver<Outgoing>,
    queued: Arc<AtomicUsize>,
) {
    let mut body = Body::new();
    let mut ticker = tokio::time::interval(FLUSH_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            received = receiver.recv() => match received {
                Some(outgoing) => {
                    let records = outgoing.records();
                    if records == 0 {
                        continue;
                    }
                    queued.fetch_sub(records, Ordering::Relaxed);
                    body.add(outgoing);
                    if body.records() >= MAX_BATCH {
                        sender.send(std::mem::replace(&mut body, Body::new())).await;
                    }
                }
                None => {
                    sender.send(body).await;
                    sender.send_summary().await;
                    return;
                }
            },
            _ = ticker.tick() => {
                if body.records() > 0 {
                    sender.send(std::mem::replace(&mut body, Body::new())).await;
                }
                sender.send_summary().await;
            }
        }
    }
}

/// How one POST went.
enum Sent {
    Taken,
    /// Not delivered, and certainly not stored: no connection, or refused for overload. What
    /// it carried is folded.
    NotTaken(&'static str),
    /// Refused for another reason, or no answer in time (the sink may have stored it).
    Lost(&'static str),
}

impl Sender {
    async fn send(&self, body: Body) {
        for (content_type, chunks, records) in body.finish() {
            let kept = chunks.parts();
            match self.post(&self.urls.records, content_type, chunks).await {
                Sent::Taken => metrics::counter!("events_sent_total").increment(records as u64),
                Sent::NotTaken(reason) if content_type == CONTENT_TYPE => {
                    // The first part is the magic, the rest records.
                    for part in kept.iter().skip(1) {
                        fold_encoded(&self.fold, part, reason);
                    }
                }
                Sent::NotTaken(reason) => {
                    match serde_json::from_slice::<Vec<EventRecord>>(&kept.concat()) {
                        Ok(records) => fold_json(&self.fold, &records, reason),
                        Err(error) => {
                            tracing::warn!(%error, "a batch of our own does not read back")
                        }
                    }
                }
                Sent::Lost(reason) => {
                    metrics::counter!("events_dropped_total", "reason" => reason)
                        .increment(records as u64);
                }
            }
        }
    }

    /// Sends what was folded since the last flush; folds it back if the sink was not reached.
    async fn send_summary(&self) {
        let summary = {
            let mut fold = self
                .fold
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let expired = fold.expire(time::OffsetDateTime::now_utc().unix_timestamp());
            if expired > 0 {
                metrics::counter!("events_dropped_total", "reason" => "fold_full")
                    .increment(expired);
            }
            if fold.is_empty() {
                return;
            }
            std::mem::take(&mut *fold)
        };
        let records = summary.records();
        let chunks = Chunks::new(vec![Bytes::from(summary.encode())]);
        match self
            .post(&self.urls.summaries, crate::fold::CONTENT_TYPE, chunks)
            .await
        {
            Sent::Taken => metrics::counter!("events_folded_sent_total").increment(records),
            Sent::NotTaken(_) => {
                let mut fold = self
                    .fold
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let lost = fold.absorb(summary);
                if lost > 0 {
                    metrics::counter!("events_dropped_total", "reason" => "fold_full")
                        .increment(lost);
                }
            }
            Sent::Lost(reason) => {
                metrics::counter!("events_dropped_total", "reason" => reason).increment(records);
            }
        }
    }

    async fn post(&self, url: &str, content_type: &str, chunks: Chunks) -> Sent {
        let result = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(reqwest::Body::wrap(chunks))
            .send()
            .await;
        let sent = match result {
            Ok(response) if response.status().is_success() => return Sent::Taken,
            Ok(response) => {
                tracing::debug!(status = %response.status(), url, "the event sink refused a batch");
                let status = response.status();
                if status == reqwest::StatusCode::SERVICE_UNAVAILABLE
                    || status == reqwest::StatusCode::TOO_MANY_REQUESTS
                {
                    Sent::NotTaken("sink_refused")
                } else {
                    Sent::Lost("sink_refused")
                }
            }
            Err(error) => {
                tracing::debug!(%error, url, "the event sink is unreachable");
                if error.is_connect() {
                    Sent::NotTaken("sink_unreachable")
                } else {
                    Sent::Lost("sink_unreachable")
                }
            }
        };
        metrics::counter!("events_send_failures_total").increment(1);
        sent
    }
}

/// Paths that are about the process itself, not requests worth a record.
fn is_internal(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// Middleware: one `server` record per request (health, readiness and metrics excepted), and
/// after it the request's calls to databases and caches ([`EventReporter::report_calls`]).
///
/// The trace id comes from the incoming `traceparent` (a new trace when there is none), the
/// parent span is the caller's span, and this hop gets a span id of its own. The records are
/// written straight into a binary batch ([`crate::event_wire`]) and handed over together.
pub async fn record_requests(
    State(reporter): State<EventReporter>,
    request: Request,
    next: Next,
) -> Response {
    if is_internal(request.uri().path()) {
        return next.run(request).await;
    }
    let started = Instant::now();
    let wall = time::OffsetDateTime::now_utc();
    let incoming = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceContext::parse);
    let (context, parent) = match incoming {
        Some(context) => (context.child(), Some(context.span_id)),
        None => (TraceContext::new_root(), None),
    };
    // With the mesh on, the caller's verified identity goes on the record.
    let caller = request
        .extensions()
        .get::<crate::identity::Peer>()
        .map(|peer| peer.0.uri());
    // Handlers continue the trace from this hop (see `trace::Hop`).
    let mut request = request;
    request.extensions_mut().insert(crate::trace::Hop(context));
    let method = request.method().clone();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    // The handler's database and cache calls are counted in its task (`tally`).
    let (response, spent) = crate::tally::scope(next.run(request)).await;
    let status = response.status().as_u16();
    // A handler that read through a cache says how it went (kit::cache::Outcome as a response
    // part), and the record carries it.
    let cache = response
        .extensions()
        .get::<crate::cache::Outcome>()
        .map(|outcome| outcome.as_str());
    let mut batch = Batch::with_capacity(256);
    batch.push(&RecordRef {
        trace_id: context.trace_id,
        span_id: context.span_id,
        parent_span_id: parent,
        service: &reporter.origin.service,
        instance: &reporter.origin.instance,
        kind: "server",
        name: &route,
        method: Some(method.as_str()),
        status,
        ok: status < 500,
        started_us: (wall.unix_timestamp_nanos() / 1000) as i64,
        duration_us: started.elapsed().as_micros() as u64,
        retries: None,
        cache,
        topic: None,
        breaker: None,
        peer: caller.as_deref(),
    });
    reporter.write_calls(&mut batch, &context, started, wall, spent);
    reporter.report_encoded(batch);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> EventRecord {
        EventRecord {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: "00f067aa0ba902b7".into(),
            parent_span_id: None,
            service: "catalog".into(),
            instance: "i-1".into(),
            kind: "server".into(),
            name: "/api/catalog/products".into(),
            method: Some("GET".into()),
            status: 200,
            ok: true,
            started_at: "2026-01-01T00:00:00Z".into(),
            duration_us: 1200,
            retries: None,
            cache: None,
            topic: None,
            breaker: None,
            peer: None,
        }
    }

    #[test]
    fn records_serialise_without_empty_options() {
        let json = serde_json::to_value(record()).unwrap();
        assert!(json.get("parent_span_id").is_none());
        assert_eq!(json["status"], 200);
        let back: EventRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record());
    }

    #[tokio::test]
    async fn a_missing_sink_never_blocks_reporting() {
        // Nothing listens on port 9 of loopback: every batch fails and is dropped.
        let reporter = EventReporter::start("http://127.0.0.1:9", "catalog", "i-1").unwrap();
        let started = Instant::now();
        for _ in 0..(QUEUE * 2) {
            reporter.report(record());
        }
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    /// A stand-in sink on a free port that keeps every record posted to it.
    async fn test_sink() -> (
        std::net::SocketAddr,
        Arc<std::sync::Mutex<Vec<EventRecord>>>,
    ) {
        let received: Arc<std::sync::Mutex<Vec<EventRecord>>> = Arc::default();
        let app = axum::Router::new().route(
            "/v1/events",
            axum::routing::post({
                let received = received.clone();
                move |headers: axum::http::HeaderMap, body: Bytes| async move {
                    let binary = headers[axum::http::header::CONTENT_TYPE] == CONTENT_TYPE;
                    let batch: Vec<EventRecord> = if binary {
                        let records = crate::event_wire::read_batch(&body, 10_000).unwrap();
                        records.iter().map(EventRecord::from).collect()
                    } else {
                        serde_json::from_slice(&body).unwrap()
                    };
                    received.lock().unwrap().extend(batch);
                    axum::http::StatusCode::ACCEPTED
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (address, received)
    }

    /// A stand-in sink that refuses record batches as overloaded (503) and takes summaries,
    /// keeping the records they count.
    async fn overloaded_sink() -> (std::net::SocketAddr, Arc<std::sync::Mutex<u64>>) {
        let counted: Arc<std::sync::Mutex<u64>> = Arc::default();
        let app = axum::Router::new()
            .route(
                "/v1/events",
                axum::routing::post(|| async { axum::http::StatusCode::SERVICE_UNAVAILABLE }),
            )
            .route(
                "/v1/summaries",
                axum::routing::post({
                    let counted = counted.clone();
                    move |body: Bytes| async move {
                        let entries = crate::fold::read_summary(&body, 10_000).unwrap();
                        *counted.lock().unwrap() +=
                            entries.iter().map(|e| e.tally.count).sum::<u64>();
                        axum::http::StatusCode::ACCEPTED
                    }
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (address, counted)
    }

    /// A gateway hop of trace 7 as the gateway writes it.
    fn gateway_hop(span_id: u64, status: u16, started_us: i64) -> RecordRef<'static> {
        RecordRef {
            trace_id: 7,
            span_id,
            parent_span_id: None,
            service: "gw",
            instance: "i-1",
            kind: "gateway",
            name: "catalog",
            method: Some("GET"),
            status,
            ok: status < 500,
            started_us,
            duration_us: 5,
            retries: None,
            cache: None,
            topic: None,
            breaker: None,
            peer: None,
        }
    }

    /// A batch of `records` gateway hops started now.
    fn encoded(records: usize) -> Batch {
        let now_us = time::OffsetDateTime::now_utc().unix_timestamp() * 1_000_000;
        let mut batch = Batch::with_capacity(0);
        for span in 1..=records as u64 {
            batch.push(&gateway_hop(span, 200, now_us));
        }
        batch
    }

    /// What the queue cannot take and what the sink refuses for overload is folded and reaches
    /// the sink as a summary: every record counted, none as a record.
    #[tokio::test]
    async fn what_the_queue_or_the_sink_cannot_take_arrives_folded() {
        let (address, counted) = overloaded_sink().await;
        let reporter =
            EventReporter::with_queue(&format!("http://{address}"), "gw", "i-1", 3).unwrap();
        // Nothing is taken off the queue before this task yields: the first batch fits, the
        // other 19 are folded at once, the one record fits; then the sink refuses the first
        // batch and the record (503), and they are folded too.
        for _ in 0..20 {
            reporter.report_encoded(encoded(2));
        }
        // A record of now: a folded second older than fold::SECONDS_KEPT would be dropped.
        let now = time::OffsetDateTime::now_utc();
        let started_at = now.format(&time::format_description::well_known::Rfc3339);
        reporter.report(EventRecord {
            started_at: started_at.unwrap(),
            ..record()
        });
        assert_eq!(reporter.folded(), 38);
        let deadline = Instant::now() + Duration::from_secs(5);
        while *counted.lock().unwrap() < 41 {
            assert!(
                Instant::now() < deadline,
                "the summaries never arrived: {} counted, {} folded",
                counted.lock().unwrap(),
                reporter.folded()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(FLUSH_EVERY * 2).await;
        assert_eq!(*counted.lock().unwrap(), 41);
        assert_eq!(reporter.folded(), 0);
    }

    /// A summary the sink cannot be reached with is kept (folded back) for the next flush.
    #[tokio::test]
    async fn a_summary_waits_for_a_sink_that_is_down() {
        let reporter = EventReporter::with_queue("http://127.0.0.1:9", "gw", "i-1", 1).unwrap();
        for _ in 0..10 {
            reporter.report_encoded(encoded(2));
        }
        assert_eq!(reporter.folded(), 20);
        // A few flushes, each failing to connect.
        tokio::time::sleep(FLUSH_EVERY * 4).await;
        assert_eq!(reporter.folded(), 20);
    }

    /// Records reported one by one and records handed over already encoded reach the sink (a
    /// JSON array and one binary batch) and read back as the same records.
    #[tokio::test]
    async fn reported_and_encoded_records_arrive_in_order_of_their_kind() {
        let (address, received) = test_sink().await;

        let reporter = EventReporter::start(&format!("http://{address}"), "gw", "i-1").unwrap();
        reporter.report(record());
        let encoded = RecordRef {
            retries: Some(1),
            ..gateway_hop(9, 502, 1_767_225_600_000_000)
        };
        for _ in 0..2 {
            let mut batch = Batch::with_capacity(0);
            batch.push(&encoded);
            batch.push(&encoded);
            reporter.report_encoded(batch);
        }
        reporter.report(record());

        let deadline = Instant::now() + Duration::from_secs(5);
        while received.lock().unwrap().len() < 6 {
            assert!(Instant::now() < deadline, "the records never arrived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let received = received.lock().unwrap().clone();
        assert_eq!(received.len(), 6);
        // One flush: the JSON POST, then the binary one with both batches behind one magic.
        assert_eq!(&received[..2], &[record(), record()]);
        assert_eq!(received[2].trace_id, format!("{:032x}", 7));
        assert_eq!(received[2].started_at, "2026-01-01T00:00:00Z");
        assert_eq!(received[2].retries, Some(1));
        assert!(received[3..].iter().all(|r| *r == received[2]));
        assert_eq!(reporter.queued.load(Ordering::Relaxed), 0);
    }

    /// A request whose handler called the database is followed by a `client` record: a child
    /// of the request's span, naming the database, timed as the calls' sum.
    #[tokio::test]
    async fn database_calls_follow_the_request_as_a_client_record() {
        let (sink_address, received) = test_sink().await;
        let reporter =
            EventReporter::start(&format!("http://{sink_address}"), "orders", "o-1").unwrap();

        let peer = Arc::new(crate::tally::Peer {
            name: "orders-db".into(),
            system: "postgres",
        });
        let app = axum::Router::new()
            .route(
                "/work",
                axum::routing::get(move || {
                    let peer = peer.clone();
                    async move {
                        let kind = crate::tally::Kind::Database;
                        let earlier = Instant::now() - Duration::from_millis(2);
                        crate::tally::record(kind, &peer, earlier, true);
                        crate::tally::record(kind, &peer, Instant::now(), false);
                        "done"
                    }
                }),
            )
            .route("/idle", axum::routing::get(|| async { "nothing" }))
            .layer(axum::middleware::from_fn_with_state(
                reporter,
                record_requests,
            ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        crate::install_crypto_provider();
        let client = reqwest::Client::new();
        for path in ["/work", "/idle"] {
            let response = client.get(format!("http://{address}{path}")).send().await;
            assert_eq!(response.unwrap().status(), 200);
        }

        let deadline = Instant::now() + Duration::from_secs(5);
        while received.lock().unwrap().len() < 3 {
            assert!(Instant::now() < deadline, "the records never arrived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(FLUSH_EVERY * 2).await;
        let received = received.lock().unwrap().clone();
        // /work: its record and one for the database; /idle: its record alone.
        assert_eq!(received.len(), 3, "{received:#?}");
        let work = received.iter().find(|r| r.name == "/work").unwrap();
        let call = received.iter().find(|r| r.kind == "client").unwrap();
        assert_eq!(call.parent_span_id.as_ref(), Some(&work.span_id));
        assert_eq!(call.trace_id, work.trace_id);
        assert_ne!(call.span_id, work.span_id);
        assert_eq!(call.peer.as_deref(), Some("orders-db"));
        assert_eq!((call.name.as_str(), call.ok), ("postgres", false));
        assert!(call.duration_us >= 2_000, "{call:?}");
        assert_eq!(work.peer, None);
    }

    #[tokio::test]
    async fn the_queue_is_bounded_in_records() {
        let reporter = EventReporter::start("http://127.0.0.1:9", "gw", "i-1").unwrap();
        // Nothing is taken off the queue before this task yields.
        let batch = |records| Batch {
            bytes: MAGIC.to_vec(),
            records,
        };
        reporter.report_encoded(batch(QUEUE - 1));
        reporter.report_encoded(batch(2));
        assert_eq!(reporter.queued.load(Ordering::Relaxed), QUEUE - 1);
        reporter.report(record());
        assert_eq!(reporter.queued.load(Ordering::Relaxed), QUEUE);
        reporter.report(record());
        assert_eq!(reporter.queued.load(Ordering::Relaxed), QUEUE);
    }

    #[test]
    fn internal_paths_are_not_recorded() {
        assert!(is_internal("/healthz"));
        assert!(is_internal("/metrics"));
        assert!(!is_internal("/api/catalog/products"));
    }
}
