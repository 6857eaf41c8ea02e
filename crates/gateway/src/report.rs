//! The gateway's hop records for the event sink: which route, which status, how long, how many
//! retries, under which trace.
//!
//! Each worker thread writes its records in the binary batch format
//! ([`stratus_kit::event_wire`]: ids and times as fixed-width numbers, its origin and the
//! route's name encoded once, nothing allocated per record) into a buffer of its own, and hands the buffer to the shared
//! reporter every [`BATCH`] records or every 200 ms. So the request path pays for a few copies
//! into memory it already has; waking the sending task and building the POST happen once per
//! batch. What the reporter's queue or the sink cannot take is folded into per-second counts
//! and latency sketches (`stratus_kit::fold`; a gateway hop is placed as a call from `clients`)
//! and sent as a summary, so the sink still counts every request; reporting never slows or
//! fails a request.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;
use stratus_kit::event_wire::{Batch, Encoded, RecordRef};
use stratus_kit::events::EventReporter;
use stratus_kit::trace::TraceContext;

/// The kind of hop the gateway reports.
const KIND: &str = "gateway";
/// Records a worker hands over at once.
const BATCH: usize = 128;
/// Bytes reserved for a batch's buffer (a record is about 120 bytes).
const BATCH_BYTES: usize = BATCH * 160;
/// How often a worker hands over a partial batch.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// One proxied request, as the gateway saw it.
pub struct Hop<'a> {
    pub trace: TraceContext,
    pub parent: Option<TraceContext>,
    /// The route's name, the record's `name`.
    pub route: &'a str,
    /// The same, encoded once when the route table loaded.
    pub route_encoded: &'a Encoded,
    pub method: &'a Method,
    pub status: u16,
    pub elapsed: Duration,
    pub retries: u32,
    /// The edge cache's part: `hit` (answered by the gateway, no instance asked) or `miss`.
    pub cache: Option<&'static str>,
}

pub struct WorkerEvents {
    reporter: EventReporter,
    /// This gateway's service, instance and kind, encoded once.
    origin: Encoded,
    /// The records not handed over yet.
    pending: Mutex<Batch>,
}

impl WorkerEvents {
    pub fn new(reporter: EventReporter) -> Self {
        Self {
            origin: Encoded::origin(reporter.service(), reporter.instance(), KIND),
            reporter,
            pending: Mutex::new(Batch::with_capacity(BATCH_BYTES)),
        }
    }

    pub fn record(&self, hop: Hop<'_>) {
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        let duration_us = hop.elapsed.as_micros() as u64;
        let record = RecordRef {
            trace_id: hop.trace.trace_id,
            span_id: hop.trace.span_id,
            parent_span_id: hop.parent.map(|p| p.span_id),
            service: self.reporter.service(),
            instance: self.reporter.instance(),
            kind: KIND,
            name: hop.route,
            method: Some(hop.method.as_str()),
            status: hop.status,
            ok: hop.status < 500,
            started_us: now_us - duration_us as i64,
            duration_us,
            retries: (hop.retries > 0).then_some(hop.retries),
            cache: hop.cache,
            topic: None,
            breaker: None,
            peer: None,
        };
        let full = {
            let Ok(mut pending) = self.pending.lock() else {
                return;
            };
            pending.push_with(&record, &self.origin, hop.route_encoded);
            (pending.records >= BATCH).then(|| take(&mut pending))
        };
        if let Some(batch) = full {
            self.reporter.report_encoded(batch);
        }
    }

    /// Hands whatever is buffered to the reporter.
    pub fn flush(&self) {
        let batch = match self.pending.lock() {
            Ok(mut pending) if pending.records > 0 => take(&mut pending),
            _ => return,
        };
        self.reporter.report_encoded(batch);
    }
}

/// A line for a forwarded request that failed: at warn for a 5xx (the instance's, or the
/// gateway's 502-504 when none answered), at info for an instance's 4xx. It names the trace and
/// the gateway's span, so the line is found beside the trace's hops (on the sink, when lines are
/// shipped there: `kit::log_ship`). Successful requests have no line: a line each would cost the
/// request path more than the record does.
pub fn log_failed(hop: &Hop<'_>, service: &str) {
    if hop.status < 400 {
        return;
    }
    let trace_id = hop.trace.trace_id_hex();
    let span_id = hop.trace.span_id_hex();
    let duration_ms = hop.elapsed.as_secs_f64() * 1000.0;
    if hop.status >= 500 {
        tracing::warn!(%trace_id, %span_id, route = hop.route, service, method = %hop.method, status = hop.status, duration_ms, retries = hop.retries, "request failed");
    } else {
        tracing::info!(%trace_id, %span_id, route = hop.route, service, method = %hop.method, status = hop.status, duration_ms, retries = hop.retries, "request refused by the service");
    }
}

fn take(pending: &mut Batch) -> Batch {
    std::mem::replace(pending, Batch::with_capacity(BATCH_BYTES))
}
