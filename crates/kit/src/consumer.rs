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
//!   until the broker answers again, and a subscription whose stream ended is made again.

use std::future::Future;
use std::time::{Duration, Instant};

use stratus_broker::{Broker, Message};

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
/// group even while the handler is busy.
pub async fn spawn<H, F>(
    broker: &Broker,
    topic: &'static str,
    group: &'static str,
    reporter: Option<EventReporter>,
    handler: H,
) -> anyhow::Result<tokio::task::JoinHandle<()>>
where
    H: Fn(Message, TraceContext) -> F + Send + Sync + 'static,
    F: Future<Output = Result<(), HandlerError>> + Send,
{
    let mut subscription = broker.subscribe(topic, group).await?;
    let broker = broker.clone();
    Ok(tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let delivery = match subscription.next().await {
                Ok(delivery) => {
                    failures = 0;
                    delivery
                }
                Err(stratus_broker::Error::Closed) => {
                    // The connection's stream ended: subscribe again (the group keeps its place).
                    failures = failures.saturating_add(1);
                    tracing::warn!(topic, group, "subscription closed; subscribing again");
                    tokio::time::sleep(backoff(
                        failures,
                        Duration::from_millis(100),
                        Duration::from_secs(2),
                    ))
                    .await;
                    match broker.subscribe(topic, group).await {
                        Ok(again) => subscription = again,
                        Err(error) => tracing::warn!(topic, group, %error, "subscribing again"),
                    }
                    continue;
                }
                Err(error) => {
                    failures = failures.saturating_add(1);
                    let delay =
                        backoff(failures, Duration::from_millis(100), Duration::from_secs(2))
                            .max(Duration::from_millis(50));
                    tracing::warn!(topic, group, %error, "receiving; retrying");
                    tokio::time::sleep(delay).await;
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
            // The handler's database and cache calls are counted in this task (`tally`).
            let (outcome, spent) =
                crate::tally::scope(handler(delivery.message.clone(), context)).await;
            let ok = outcome.is_ok();
            let settled = match outcome {
                Ok(()) => delivery.ack().await,
                Err(error) => {
                    let delay =
                        backoff(attempt, Duration::from_millis(200), Duration::from_secs(5))
                            .max(Duration::from_millis(50));
                    tracing::warn!(topic, group, id = %delivery.message.id, attempt, %error, "message not processed; nacking");
                    delivery.nack(delay).await
                }
            };
            if let Err(error) = settled {
                // The message comes back after the visibility timeout; handlers are idempotent.
                tracing::warn!(topic, group, %error, "settling a message");
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
    }))
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
    Ok(Some(EventReporter::start(
        &common.events_url,
        service,
        &common.instance_id(),
    )?))
}
