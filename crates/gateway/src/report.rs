//! The gateway's hop records for the event sink: which route, which status, how long, how many
//! retries, under which trace.
//!
//! Each worker thread buffers its records and hands them to the shared reporter in batches (or
//! every 200 ms), so the request path pays for building one record and pushing it onto a local
//! vector, never for waking another thread. The reporter drops (and counts) what the sink cannot
//! take; reporting never slows or fails a request.

use std::sync::Mutex;
use std::time::Duration;

use http::Method;
use stratus_kit::events::{EventRecord, EventReporter};
use stratus_kit::trace::TraceContext;

/// Records a worker hands over at once.
const BATCH: usize = 128;
/// How often a worker hands over a partial batch.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// One proxied request, as the gateway saw it.
pub struct Hop<'a> {
    pub trace: TraceContext,
    pub parent: Option<TraceContext>,
    pub route: &'a str,
    pub method: &'a Method,
    pub status: u16,
    pub elapsed: Duration,
    pub retries: u32,
}

pub struct WorkerEvents {
    reporter: EventReporter,
    pending: Mutex<Vec<EventRecord>>,
}

impl WorkerEvents {
    pub fn new(reporter: EventReporter) -> Self {
        Self {
            reporter,
            pending: Mutex::new(Vec::with_capacity(BATCH)),
        }
    }

    pub fn record(&self, hop: Hop<'_>) {
        let started = time::OffsetDateTime::now_utc() - hop.elapsed;
        let record = EventRecord {
            trace_id: hop.trace.trace_id_hex(),
            span_id: hop.trace.span_id_hex(),
            parent_span_id: hop.parent.map(|p| p.span_id_hex()),
            service: self.reporter.service().to_string(),
            instance: self.reporter.instance().to_string(),
            kind: "gateway".into(),
            name: hop.route.to_string(),
            method: Some(hop.method.as_str().to_string()),
            status: hop.status,
            ok: hop.status < 500,
            started_at: started
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            duration_us: hop.elapsed.as_micros() as u64,
            retries: (hop.retries > 0).then_some(hop.retries),
            cache: None,
            topic: None,
            breaker: None,
        };
        let full = {
            let Ok(mut pending) = self.pending.lock() else {
                return;
            };
            pending.push(record);
            (pending.len() >= BATCH)
                .then(|| std::mem::replace(&mut *pending, Vec::with_capacity(BATCH)))
        };
        if let Some(batch) = full {
            self.hand_over(batch);
        }
    }

    /// Hands whatever is buffered to the reporter.
    pub fn flush(&self) {
        let batch = match self.pending.lock() {
            Ok(mut pending) if !pending.is_empty() => std::mem::take(&mut *pending),
            _ => return,
        };
        self.hand_over(batch);
    }

    fn hand_over(&self, batch: Vec<EventRecord>) {
        for record in batch {
            self.reporter.report(record);
        }
    }
}
