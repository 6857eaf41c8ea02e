//! The tracing layer that copies each line into the shipping queue.
//!
//! Spans that name a `trace_id` or `span_id` keep the ids in their extensions (read once, when
//! the span is made or the field recorded), so a line finds its ids by walking up its spans
//! without formatting anything again.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc::{self, error::TrySendError};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use super::line::{IdVisitor, Ids, Line, LineVisitor};

thread_local! {
    /// Set while the shipping task runs on this thread: what it logs is not shipped.
    static SHIPPING: Cell<bool> = const { Cell::new(false) };
}

/// Runs `future` with this thread's lines kept out of the queue whenever it is polled.
pub fn quiet<F: Future>(future: F) -> Quiet<F> {
    Quiet(Box::pin(future))
}

pub struct Quiet<F>(Pin<Box<F>>);

impl<F: Future> Future for Quiet<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let before = SHIPPING.with(|s| s.replace(true));
        let result = self.0.as_mut().poll(cx);
        SHIPPING.with(|s| s.set(before));
        result
    }
}

pub struct ShipLayer {
    queue: mpsc::Sender<Line>,
}

impl ShipLayer {
    pub fn new(queue: mpsc::Sender<Line>) -> Self {
        Self { queue }
    }
}

impl<S> Layer<S> for ShipLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attributes: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut visitor = IdVisitor::default();
        attributes.record(&mut visitor);
        if let (false, Some(span)) = (visitor.0.is_empty(), ctx.span(id)) {
            span.extensions_mut().insert(visitor.0);
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        let mut visitor = IdVisitor(extensions.get_mut::<Ids>().copied().unwrap_or_default());
        values.record(&mut visitor);
        if !visitor.0.is_empty() {
            extensions.replace(visitor.0);
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if SHIPPING.with(Cell::get) {
            return;
        }
        let metadata = event.metadata();
        let mut visitor = LineVisitor::default();
        event.record(&mut visitor);
        let mut ids = visitor.ids;
        if ids.trace_id.is_none() {
            let found = ctx.event_scope(event).and_then(|scope| {
                scope
                    .into_iter()
                    .find_map(|span| span.extensions().get::<Ids>().copied())
            });
            if let Some(found) = found {
                ids = found;
            }
        }
        let line = Line {
            time_unix_nano: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64),
            level: *metadata.level(),
            target: metadata.target(),
            message: visitor.message,
            fields: visitor.fields,
            trace_id: ids.trace_id,
            span_id: ids.span_id,
        };
        match self.queue.try_send(line) {
            Ok(()) => {}
            // Closed: the runtime that ran the task is gone (the process is ending).
            Err(TrySendError::Full(_) | TrySendError::Closed(_)) => {
                metrics::counter!("logs_dropped_total", "reason" => "queue_full").increment(1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;
    use crate::log_ship::line::FieldValue;

    /// Runs `body` under a subscriber with only the shipping layer; what it queued.
    fn shipped(capacity: usize, body: impl FnOnce()) -> Vec<Line> {
        let (queue, mut receiver) = mpsc::channel(capacity);
        let subscriber = tracing_subscriber::registry().with(ShipLayer::new(queue));
        tracing::subscriber::with_default(subscriber, body);
        let mut lines = Vec::new();
        while let Ok(line) = receiver.try_recv() {
            lines.push(line);
        }
        lines
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn a_line_takes_the_ids_of_its_nearest_span_that_has_them() {
        let lines = shipped(16, || {
            tracing::info!(user = "u-1", "outside any request");
            let request =
                tracing::info_span!("request", trace_id = %TRACE, span_id = "00f067aa0ba902b7");
            let _request = request.enter();
            let inner = tracing::info_span!("step", name = "pricing");
            let _inner = inner.enter();
            tracing::warn!(attempt = 2, ok = false, error = %"timed out", "catalog slow");
        });
        assert_eq!(lines.len(), 2);
        assert_eq!((lines[0].trace_id, lines[0].span_id), (None, None));
        assert_eq!(lines[0].fields, [("user", FieldValue::Text("u-1".into()))]);
        let line = &lines[1];
        assert_eq!(line.message, "catalog slow");
        assert_eq!(line.level, tracing::Level::WARN);
        assert_eq!(line.target, module_path!());
        assert_eq!(
            line.trace_id,
            Some(u128::from_str_radix(TRACE, 16).unwrap())
        );
        assert_eq!(line.span_id, Some(0x00f067aa0ba902b7));
        assert_eq!(
            line.fields,
            [
                ("attempt", FieldValue::Int(2)),
                ("ok", FieldValue::Bool(false)),
                ("error", FieldValue::Text("timed out".into())),
            ]
        );
    }

    #[test]
    fn ids_a_line_names_itself_win_and_are_not_fields() {
        let lines = shipped(16, || {
            let request = tracing::info_span!("request", trace_id = %"ab".repeat(16));
            let _request = request.enter();
            tracing::info!(trace_id = %TRACE, span_id = "00f067aa0ba902b7", status = 422u64, "refused");
        });
        assert_eq!(
            lines[0].trace_id,
            Some(u128::from_str_radix(TRACE, 16).unwrap())
        );
        assert_eq!(lines[0].fields, [("status", FieldValue::Int(422))]);
    }

    #[test]
    fn ids_recorded_later_are_taken() {
        let lines = shipped(16, || {
            let request = tracing::info_span!("request", trace_id = tracing::field::Empty);
            request.record("trace_id", TRACE);
            let _request = request.enter();
            tracing::info!("after");
        });
        assert_eq!(
            lines[0].trace_id,
            Some(u128::from_str_radix(TRACE, 16).unwrap())
        );
    }

    #[test]
    fn lines_logged_while_shipping_are_not_queued() {
        let lines = shipped(16, || {
            let waker = futures_util::task::noop_waker();
            let mut cx = TaskContext::from_waker(&waker);
            let mut future = quiet(async { tracing::warn!("the sink is unreachable") });
            assert!(Pin::new(&mut future).poll(&mut cx).is_ready());
            tracing::info!("after shipping");
        });
        let messages: Vec<&str> = lines.iter().map(|l| l.message.as_str()).collect();
        assert_eq!(messages, ["after shipping"]);
    }

    #[test]
    fn a_full_queue_drops_lines_without_waiting() {
        let started = std::time::Instant::now();
        let lines = shipped(2, || {
            for i in 0..1_000 {
                tracing::info!(i, "line");
            }
        });
        assert_eq!(lines.len(), 2);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
}
