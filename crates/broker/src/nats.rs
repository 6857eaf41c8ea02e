//! The NATS JetStream backend, for more than one machine.
//!
//! - One stream, `STRATUS`, holds every topic: topic `payment.completed` is the subject
//!   `stratus.payment.completed`, and its dead-letter topic `stratus.payment.completed.dlq`.
//!   File storage, limits retention (`max_age` = [`Options::retention`]), so each group reads at
//!   its own pace and a message stays whether or not anyone has read it.
//! - A group is a durable pull consumer named `<group>_<topic with '.' as '_'>` filtered on the
//!   topic's subject. Every instance of the group pulls from the same consumer, so JetStream
//!   hands each message to one of them (work queue); each group has its own consumer, so each gets
//!   every message (pub-sub). `ack_wait` is the visibility timeout.
//! - Publishing sets `Nats-Msg-Id` to the message id, so JetStream drops a duplicate publish
//!   within its two-minute window, and waits for the server's acknowledgement (stored).
//! - Dead letters: the consumer redelivers without limit; a subscription that receives a message
//!   whose delivery count is past `max_attempts` publishes it to the `.dlq` subject and then
//!   terminates it (`+TERM`). A nack on the last attempt does the same at once. (This works on
//!   the NATS 2.9 that Debian ships; no 2.10-only API is used.)
//! - Acks wait for the server's confirmation (`double_ack`), so an Ok ack will not come back.
//!   Unlike the embedded backend, JetStream still accepts an ack that arrives after the
//!   visibility timeout (the message may by then be redelivered too); at-least-once either way.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream, AckKind};
use futures_util::StreamExt;

use crate::error::{Error, Result};
use crate::message::{self, dlq_topic, Message};
use crate::{Delivery, Options, Settle, StartAt};

const STREAM: &str = "STRATUS";
const MSG_ID_HEADER: &str = "Nats-Msg-Id";
/// Carries [`Message::published_at`] (JetStream's own timestamp is when the server stored it).
pub(crate) const PUBLISHED_AT_HEADER: &str = "Stratus-Published-At";

#[derive(Clone)]
pub(crate) struct NatsBroker {
    client: async_nats::Client,
    js: jetstream::Context,
    options: Arc<Options>,
}

fn subject(topic: &str) -> String {
    format!("stratus.{topic}")
}

/// Topics and groups never contain '_' (see `validate_topic`), so this is one-to-one.
fn consumer_name(group: &str, topic: &str) -> String {
    format!("{group}_{}", topic.replace('.', "_"))
}

impl NatsBroker {
    pub(crate) async fn connect(url: &str, options: Options) -> Result<NatsBroker> {
        let client = async_nats::ConnectOptions::new()
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| Error::Connect {
                url: crate::redact_url(url),
                source: Box::new(e),
            })?;
        let js = jetstream::new(client.clone());
        js.get_or_create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec!["stratus.>".into()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age: options.retention,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .map_err(Error::nats(
            "creating the STRATUS stream (is JetStream enabled on the server, `-js`?)",
        ))?;
        Ok(NatsBroker {
            client,
            js,
            options: Arc::new(options),
        })
    }

    pub(crate) async fn publish(&self, topic: &str, message: &Message) -> Result<()> {
        self.publish_all(topic, std::slice::from_ref(message)).await
    }

    /// Sends every message before waiting for any acknowledgement, so a batch costs about one
    /// round trip rather than one per message.
    pub(crate) async fn publish_all(&self, topic: &str, messages: &[Message]) -> Result<()> {
        let mut acks = Vec::with_capacity(messages.len());
        for message in messages {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(MSG_ID_HEADER, message.id.as_str());
            headers.insert(PUBLISHED_AT_HEADER, message::rfc3339(message.published_at));
            for (name, value) in &message.headers {
                headers.insert(name.as_str(), value.as_str());
            }
            let ack = self
                .js
                .publish_with_headers(subject(topic), headers, message.payload.clone())
                .await
                .map_err(Error::nats("publishing"))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await
                .map_err(Error::nats("waiting for the server to store the message"))?;
        }
        Ok(())
    }

    pub(crate) async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        start: StartAt,
    ) -> Result<NatsSubscription> {
        let name = consumer_name(group, topic);
        let stream = self
            .js
            .get_stream(STREAM)
            .await
            .map_err(Error::nats("looking up the STRATUS stream"))?;
        let consumer = stream
            .get_or_create_consumer(
                &name,
                consumer::pull::Config {
                    durable_name: Some(name.clone()),
                    description: Some(format!("group {group} on topic {topic}")),
                    filter_subject: subject(topic),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: self.options.visibility_timeout,
                    deliver_policy: match start {
                        StartAt::New => consumer::DeliverPolicy::New,
                        StartAt::Earliest => consumer::DeliverPolicy::All,
                    },
                    ..Default::default()
                },
            )
            .await
            .map_err(Error::nats("creating the group's consumer"))?;
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.options.prefetch)
            .messages()
            .await
            .map_err(Error::nats("starting to pull messages"))?;
        Ok(NatsSubscription {
            broker: self.clone(),
            topic: topic.into(),
            group: group.into(),
            messages,
        })
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        self.client
            .flush()
            .await
            .map_err(Error::nats("checking the connection"))
    }
}

pub(crate) struct NatsSubscription {
    broker: NatsBroker,
    topic: String,
    group: String,
    messages: consumer::pull::Stream,
}

impl NatsSubscription {
    pub(crate) async fn next(&mut self) -> Result<Delivery> {
        loop {
            let raw = match self.messages.next().await {
                None => return Err(Error::Closed),
                Some(Err(e)) => return Err(Error::nats("receiving")(e)),
                Some(Ok(raw)) => raw,
            };
            let (attempt, published) = {
                let info = raw.info().map_err(|e| Error::Nats {
                    context: "reading the delivery's metadata",
                    source: e,
                })?;
                (
                    u32::try_from(info.delivered).unwrap_or(u32::MAX),
                    info.published,
                )
            };
            let message = decode(&raw, published);
            let lease = Lease {
                raw,
                broker: self.broker.clone(),
            };
            if attempt > self.broker.options.max_attempts {
                // Its last attempt timed out: this delivery is the one past the limit.
                lease
                    .dead_letter(&message, &self.topic, &self.group, attempt - 1)
                    .await?;
                crate::metrics::settled(&self.topic, &self.group, "dead_letter");
                continue;
            }
            return Ok(Delivery {
                message,
                topic: self.topic.clone(),
                group: self.group.clone(),
                attempt,
                settle: Settle::Nats(Box::new(lease)),
            });
        }
    }
}

/// Our message back from NATS headers. A message published by some other client (no
/// `Nats-Msg-Id`) gets a fresh id rather than being refused.
fn decode(raw: &jetstream::Message, stored: time::OffsetDateTime) -> Message {
    let mut id = None;
    let mut published_at = None;
    let mut headers = BTreeMap::new();
    if let Some(map) = &raw.headers {
        for (name, values) in map.iter() {
            let name: &str = name.as_ref();
            let Some(value) = values.last().map(|v| v.as_str().to_string()) else {
                continue;
            };
            if name.eq_ignore_ascii_case(MSG_ID_HEADER) {
                id = Some(value);
            } else if name.eq_ignore_ascii_case(PUBLISHED_AT_HEADER) {
                published_at = message::parse_rfc3339(&value).ok();
            } else {
                headers.insert(name.to_string(), value);
            }
        }
    }
    Message {
        id: id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string()),
        payload: raw.payload.clone(),
        headers,
        published_at: published_at.unwrap_or(stored),
    }
}

pub(crate) struct Lease {
    raw: jetstream::Message,
    broker: NatsBroker,
}

impl Lease {
    pub(crate) fn max_attempts(&self) -> u32 {
        self.broker.options.max_attempts
    }

    /// Waits for the server to confirm the ack, so Ok means it will not come back.
    pub(crate) async fn ack(self) -> Result<()> {
        self.raw.double_ack().await.map_err(|source| Error::Nats {
            context: "acknowledging",
            source,
        })
    }

    /// `+WPI`: JetStream restarts the ack wait.
    pub(crate) async fn extend(&self) -> Result<()> {
        self.raw
            .ack_with(AckKind::Progress)
            .await
            .map_err(|source| Error::Nats {
                context: "extending a lease",
                source,
            })
    }

    pub(crate) async fn nack(self, delay: Duration) -> Result<()> {
        let kind = if delay.is_zero() {
            AckKind::Nak(None)
        } else {
            AckKind::Nak(Some(delay))
        };
        self.raw.ack_with(kind).await.map_err(|source| Error::Nats {
            context: "scheduling a retry",
            source,
        })
    }

    /// Publishes the dead-letter copy, then tells JetStream to stop redelivering. A crash in
    /// between redelivers the message, which is moved again: the copy's id is derived, so the
    /// duplicate is dropped.
    pub(crate) async fn dead_letter(
        self,
        message: &Message,
        topic: &str,
        group: &str,
        attempts: u32,
    ) -> Result<()> {
        let dlq = dlq_topic(topic);
        self.broker
            .publish(&dlq, &message.dead_letter(topic, group, attempts))
            .await?;
        tracing::warn!(id = %message.id, topic, group, attempts,
            "message failed its last attempt: moved to {dlq}");
        self.raw
            .ack_with(AckKind::Term)
            .await
            .map_err(|source| Error::Nats {
                context: "ending redelivery of a dead letter",
                source,
            })
    }
}
