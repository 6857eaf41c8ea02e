//! Consuming a topic: the loop every service that reacts to events runs.
//!
//! [`spawn`] subscribes as a group and hands each message to a handler. What the loop takes care
//! of, so handlers only do their work:
//!
//! - **trace context**: the message's `traceparent` is continued as a child span, which the
//!   handler gets (to put on whatever it publishes in turn), and one `consumer` event record per
//!   message hop is reported with the topic, so a trace follows the event from service to service,
//!   and after it one `client` record per database or cache the handler called (`tally`);
//! - **settling**: `Ok` acks; `Err` nacks with exponential back-off, and after the broker's
//!   `max_attempts` the message moves to `<topic>.dlq`. A poison message (one that cannot be
//!   decoded) therefore costs a few attempts and then waits in the dead-letter topic: it never
//!   crashes the consumer and is never retried forever;
//! - **broker trouble**: a failed receive (NATS reconnecting, a busy file) is retried with back-off
//!   until the broker answers again, and a subscription whose stream ended is made again;
//! - **panics**: a handler that panics is a failed attempt like an `Err` (nacked, and in
//!   `<topic>.dlq` after `max_attempts`), logged as an error; the loop goes on. Had the panic
//!   ended the loop's task, the messages it had claimed ahead would each lose an attempt too;
//! - **the loop itself ending**: a supervisor task watches the loop. When it ends for whatever
//!   reason (a panic outside the handler, say), the error is logged, readiness fails
//!   ([`Consumer::watch`]) and the loop is started again after a jittered back-off (up to 100 ms,
//!   doubling up to 30 s while it keeps ending). A service that stopped consuming is never silently "ready".

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use stratus_broker::{Broker, Message, Subscription};
use tracing::Instrument;

use crate::events::{EventRecord, EventReporter};
use crate::resilience::backoff;
use crate::trace::TraceContext;

/// Why a handler did not finish a message.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// The message can never be processed (undecodable, or missing what it must carry).
    #[error("poison message: {0}")]
    Poison(String),
    /// Something that may work next time (a database error).
    #[error("{0}")]
    Transient(#[from] anyhow::Error),
}

impl From<sqlx::Error> for HandlerError {
    fn from(error: sqlx::Error) -> Self {
        HandlerError::Transient(error.into())
    }
}

/// Starts consuming `topic` as `group`. `handler` gets each message and this hop's trace context.
///
/// Subscribing happens before this returns, so messages published from then on are kept for the
/// group even while the handler is busy. The loop runs under a supervisor that starts it again
/// whenever it ends; the returned [`Consumer`] tells whether it is running now.
pub async fn spawn<H, F>(
    broker: &Broker,
    topic: &'static str,
    group: &'static str,
    reporter: Option<EventReporter>,
    handler: H,
) -> anyhow::Result<Consumer>
where
    H: Fn(Message, TraceContext) -> F + Send + Sync + 'static,
    F: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let first = broker.subscribe(topic, group).await?;
    let consumer = Consumer::new(topic, group);
    let handler = Arc::new(handler);
    let broker = broker.clone();
    // The first run uses the subscription made above; a restarted one subscribes again (the
    // group keeps its place).
    let mut first = Some(first);
    let run = move || {
        let (broker, reporter, handler) = (broker.clone(), reporter.clone(), handler.clone());
        let subscription = first.take();
        consume(broker, topic, group, reporter, handler, subscription)
    };
    // Running from here on, so readiness never sees a consumer that has not started yet.
    consumer.state.running.store(true, Ordering::SeqCst);
    tokio::spawn(supervise(consumer.clone(), run));
    Ok(consumer)
}

/// A consumer loop's state, as its supervisor sees it. Cheap to clone.
#[derive(Clone)]
pub struct Consumer {
    state: Arc<State>,
}

struct State {
    topic: &'static str,
    group: &'static str,
    running: AtomicBool,
    restarts: AtomicU64,
    /// Why the loop last ended (a panic's message), for readiness and logs.
    last_end: Mutex<Option<String>>,
}

impl Consumer {
    fn new(topic: &'static str, group: &'static str) -> Self {
        Self {
            state: Arc::new(State {
                topic,
                group,
                running: AtomicBool::new(false),
                restarts: AtomicU64::new(0),
                last_end: Mutex::new(None),
            }),
        }
    }

    /// Whether the loop is running now (false between its end and its restart).
    pub fn is_running(&self) -> bool {
        self.state.running.load(Ordering::SeqCst)
    }

    /// How many times the loop has been started again after it ended.
    pub fn restarts(&self) -> u64 {
        self.state.restarts.load(Ordering::SeqCst)
    }

    /// Ok while the loop runs; otherwise why it ended.
    pub fn check(&self) -> Result<(), String> {
        if self.is_running() {
            return Ok(());
        }
        let why = self
            .state
            .last_end
            .lock()
            .map(|last| last.clone())
            .unwrap_or_default()
            .unwrap_or_else(|| "not started".into());
        Err(format!("not consuming ({why}); restarting"))
    }

    /// Makes `/readyz` fail while this consumer's loop is not running.
    pub fn watch(&self, health: &crate::health::Health) {
        let consumer = self.clone();
        let name = format!(
            "the consumer of {} (group {})",
            self.state.topic, self.state.group
        );
        health.add_check(name, move || std::future::ready(consumer.check()));
    }
}

/// Runs the loop `run` makes, and makes it again each time it ends, with a growing back-off. A
/// loop that ran for a minute before it ended starts the back-off from the beginning.
async fn supervise<R, L>(consumer: Consumer, mut run: R)
where
    R: FnMut() -> L,
    L: Future<Output = ()> + Send + 'static,
{
    const STABLE: Duration = Duration::from_secs(60);
    let state = &consumer.state;
    let (topic, group) = (state.topic, state.group);
    let mut streak = 0u32;
    loop {
        let started = Instant::now();
        state.running.store(true, Ordering::SeqCst);
        // Its own task, so a panic ends that task (the JoinError says so) and not this one.
        let ended = tokio::spawn(run()).await;
        state.running.store(false, Ordering::SeqCst);
        let why = match ended {
            Ok(()) => "the loop returned".to_string(),
            Err(error) if error.is_panic() => {
                format!("panicked: {}", panic_message(error.into_panic()))
            }
            // Cancelled: the runtime is shutting down.
            Err(_) => return,
        };
        if let Ok(mut last) = state.last_end.lock() {
            *last = Some(why.clone());
        }
        streak = if started.elapsed() >= STABLE {
            1
        } else {
            streak.saturating_add(1)
        };
        let restarts = state.restarts.fetch_add(1, Ordering::SeqCst) + 1;
        let delay = backoff(streak, Duration::from_millis(100), Duration::from_secs(30))
            .max(Duration::from_millis(50));
        tracing::error!(topic, group, reason = %why, restarts, delay_ms = delay.as_millis() as u64,
            "the consumer loop ended; starting it again");
        tokio::time::sleep(delay).await;
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(text) => *text,
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map_or_else(|| "a non-text panic".to_string(), |text| text.to_string()),
    }
}

/// The loop: receive, hand to the handler, settle, report. It never returns by itself.
async fn consume<H, F>(
    broker: Broker,
    topic: &'static str,
    group: &'static str,
    reporter: Option<EventReporter>,
    handler: Arc<H>,
    subscription: Option<Subscription>,
) where
    H: Fn(Message, TraceContext) -> F + Send + Sync + 'static,
    F: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let mut failures = 0u32;
    let mut subscription = subscription;
    loop {
        // None: the first run's subscription was not handed over (a restart), or the last
        // one's stream ended. Subscribe again; the group keeps its place.
        let Some(current) = subscription.as_mut() else {
            match broker.subscribe(topic, group).await {
                Ok(again) => subscription = Some(again),
                Err(error) => {
                    failures = failures.saturating_add(1);
                    tracing::warn!(topic, group, %error, "subscribing again");
                    broker_back_off(failures).await;
                }
            }
            continue;
        };
        let delivery = match current.next().await {
            Ok(delivery) => {
                failures = 0;
                delivery
            }
            Err(stratus_broker::Error::Closed) => {
                // The connection's stream ended.
                failures = failures.saturating_add(1);
                tracing::warn!(topic, group, "subscription closed; subscribing again");
                subscription = None;
                broker_back_off(failures).await;
                continue;
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::warn!(topic, group, %error, "receiving; retrying");
                broker_back_off(failures).await;
                continue;
            }
        };
        let started = Instant::now();
        let wall = time::OffsetDateTime::now_utc();
        let incoming = delivery.message.traceparent().and_then(TraceContext::parse);
        let (context, parent) = match incoming {
            Some(incoming) => (incoming.child(), Some(incoming.span_id_hex())),
            None => (TraceContext::new_root(), None),
        };
        let attempt = delivery.attempt;
        // The handler's lines, and those about this message, carry its trace and span.
        let span = tracing::info_span!(
            "message",
            trace_id = %context.trace_id_hex(),
            span_id = %context.span_id_hex(),
            topic
        );
        // The handler's database and cache calls are counted in this task (`tally`).
        let handled = AssertUnwindSafe(handler(delivery.message.clone(), context)).catch_unwind();
        let (outcome, spent) = crate::tally::scope(handled).instrument(span.clone()).await;
        let outcome = outcome.unwrap_or_else(|panic| {
            let why = panic_message(panic);
            span.in_scope(|| tracing::error!(topic, group, id = %delivery.message.id, attempt, panic = %why, "the handler panicked"));
            Err(HandlerError::Transient(anyhow::anyhow!(
                "the handler panicked: {why}"
            )))
        });
        let ok = outcome.is_ok();
        let settled = match outcome {
            Ok(()) => delivery.ack().await,
            Err(error) => {
                let delay = backoff(attempt, Duration::from_millis(200), Duration::from_secs(5))
                    .max(Duration::from_millis(50));
                span.in_scope(|| tracing::warn!(topic, group, id = %delivery.message.id, attempt, %error, "message not processed; nacking"));
                delivery.nack(delay).await
            }
        };
        if let Err(error) = settled {
            // The message comes back after the visibility timeout; handlers are idempotent.
            span.in_scope(|| tracing::warn!(topic, group, %error, "settling a message"));
        }
        if let Some(reporter) = &reporter {
            reporter.report(EventRecord {
                trace_id: context.trace_id_hex(),
                span_id: context.span_id_hex(),
                parent_span_id: parent,
                service: reporter.service().to_string(),
                instance: reporter.instance().to_string(),
                kind: "consumer".into(),
                name: topic.to_string(),
                method: None,
                status: 0,
                ok,
                started_at: wall
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
                duration_us: started.elapsed().as_micros() as u64,
                retries: (attempt > 1).then(|| attempt - 1),
                cache: None,
                topic: Some(topic.to_string()),
                breaker: None,
                peer: None,
            });
            reporter.report_calls(&context, started, wall, spent);
        }
    }
}

/// The wait before trying the broker again after `failures` failures in a row: jittered, up to
/// 100 ms doubling up to 2 s, never under 50 ms.
async fn broker_back_off(failures: u32) {
    let delay = backoff(failures, Duration::from_millis(100), Duration::from_secs(2))
        .max(Duration::from_millis(50));
    tokio::time::sleep(delay).await;
}

/// The reporter for a service's message hops (its requests are reported by the kit's server),
/// or `None` when `STRATUS_EVENTS` is off.
pub fn reporter(
    common: &crate::config::CommonArgs,
    service: &str,
) -> anyhow::Result<Option<EventReporter>> {
    if !common.events {
        return Ok(None);
    }
    Ok(Some(EventReporter::with_queue(
        &common.events_url,
        service,
        &common.instance_id(),
        common.events_queue,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;

    /// The embedded broker in a directory of its own, redelivering quickly.
    async fn broker(dir: &std::path::Path) -> Broker {
        let options = stratus_broker::Options {
            visibility_timeout: Duration::from_millis(300),
            max_attempts: 2,
            ..Default::default()
        };
        let url = format!("sqlite://{}", dir.join("broker.db").display());
        Broker::connect(&url, options).await.unwrap()
    }

    /// The payloads the handler saw, in order, until `want` have come or 10 s have passed.
    async fn received(seen: &mut mpsc::UnboundedReceiver<String>, want: usize) -> Vec<String> {
        let mut payloads = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while payloads.len() < want {
            match tokio::time::timeout_at(deadline, seen.recv()).await {
                Ok(Some(payload)) => payloads.push(payload),
                _ => break,
            }
        }
        payloads
    }

    /// A header is any UTF-8: a non-ASCII `traceparent` starts a new trace; the message is
    /// handled and so is the next one.
    #[tokio::test]
    async fn a_non_ascii_traceparent_starts_a_new_trace_and_consuming_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let broker = broker(dir.path()).await;
        let (tx, mut seen) = mpsc::unbounded_channel();
        let _consumer = spawn(&broker, "odd.trace", "test", None, move |message, hop| {
            let tx = tx.clone();
            async move {
                let payload = String::from_utf8_lossy(&message.payload).into_owned();
                tx.send(format!("{payload} {}", hop.trace_id_hex())).ok();
                Ok(())
            }
        })
        .await
        .unwrap();
        // A later version (parsed leniently) whose flags hold a two-byte character.
        let odd = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é";
        let message = Message::new(&b"odd"[..]).with_traceparent(odd);
        broker.publish("odd.trace", &message).await.unwrap();
        let plain = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let message = Message::new(&b"plain"[..]).with_traceparent(plain);
        broker.publish("odd.trace", &message).await.unwrap();

        let payloads = received(&mut seen, 2).await;
        assert_eq!(payloads.len(), 2, "only {payloads:?} handled");
        assert!(payloads[0].starts_with("odd "), "{payloads:?}");
        assert!(!payloads[0].ends_with("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(payloads[1], "plain 4bf92f3577b34da6a3ce929d0e0e4736");
    }

    /// A handler that panics is a failed attempt: the next message is handled, and the one
    /// that panicked goes to the dead-letter topic after its attempts.
    #[tokio::test]
    async fn a_handler_that_panics_does_not_stop_consuming() {
        let dir = tempfile::tempdir().unwrap();
        let broker = broker(dir.path()).await;
        let mut dead = broker.subscribe("panics.dlq", "test").await.unwrap();
        let (tx, mut seen) = mpsc::unbounded_channel();
        let _consumer = spawn(&broker, "panics", "test", None, move |message, _| {
            let tx = tx.clone();
            async move {
                let payload = String::from_utf8_lossy(&message.payload).into_owned();
                if payload == "boom" {
                    panic!("the handler met {payload}");
                }
                tx.send(payload).ok();
                Ok(())
            }
        })
        .await
        .unwrap();
        for payload in ["boom", "after"] {
            let message = Message::new(payload.as_bytes().to_vec());
            broker.publish("panics", &message).await.unwrap();
        }
        assert_eq!(received(&mut seen, 1).await, ["after"]);
        let moved = tokio::time::timeout(Duration::from_secs(10), dead.next())
            .await
            .expect("the message that panicked reaches panics.dlq")
            .unwrap();
        assert_eq!(&moved.message.payload[..], b"boom");
        moved.ack().await.unwrap();
    }

    /// While the loop is down readiness says why; once it runs again, readiness is back.
    #[tokio::test]
    async fn the_supervisor_restarts_an_ended_loop_and_readiness_follows_it() {
        let consumer = Consumer::new("topic", "group");
        let (started, mut restarted) = mpsc::unbounded_channel();
        let mut runs = 0;
        let run = move || {
            runs += 1;
            let (first, started) = (runs == 1, started.clone());
            async move {
                if first {
                    panic!("boom");
                }
                started.send(()).ok();
                std::future::pending::<()>().await;
            }
        };
        tokio::spawn(supervise(consumer.clone(), run));
        // On this single-threaded runtime the supervisor cannot wake from its back-off while
        // this task runs, so the state between the end and the restart can be looked at.
        while consumer.restarts() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(!consumer.is_running());
        let why = consumer.check().unwrap_err();
        assert!(why.contains("panicked: boom"), "{why}");

        tokio::time::timeout(Duration::from_secs(5), restarted.recv())
            .await
            .expect("the loop is started again")
            .unwrap();
        assert!(consumer.is_running());
        assert_eq!(consumer.check(), Ok(()));
        assert_eq!(consumer.restarts(), 1);
    }
}
