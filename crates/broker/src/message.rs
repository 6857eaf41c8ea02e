//! What travels through the broker: an id, a JSON payload, a few headers and a timestamp.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use time::OffsetDateTime;

use crate::error::{Error, Result};

/// The W3C trace-context header. Every message should carry the `traceparent` of the request that
/// caused it, so a trace continues from the publisher into every consumer.
pub const TRACEPARENT: &str = "traceparent";

/// Headers the broker adds to a message it moves to a dead-letter topic (`<topic>.dlq`).
pub mod dlq_headers {
    /// The id of the message that failed. The dead-letter copy has an id of its own, a UUIDv5
    /// derived from this id and the group.
    pub const ORIGINAL_ID: &str = "stratus-dlq-original-id";
    /// The topic it was published to.
    pub const ORIGINAL_TOPIC: &str = "stratus-dlq-original-topic";
    /// The group whose consumers gave up on it.
    pub const GROUP: &str = "stratus-dlq-group";
    /// How many times it was delivered to that group.
    pub const ATTEMPTS: &str = "stratus-dlq-attempts";
}

/// A message. Its `id` is a UUIDv7 chosen by the publisher, so publishing the same message again
/// (an outbox retrying after a crash) is recognised as a duplicate rather than stored twice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub id: String,
    /// JSON, by convention (see [`Message::json`] and [`Message::decode`]).
    pub payload: Bytes,
    pub headers: BTreeMap<String, String>,
    pub published_at: OffsetDateTime,
}

impl Message {
    /// A message with a fresh UUIDv7 id, stamped now, and a new root `traceparent`, so that
    /// every message can be followed even when it was not caused by a traced request. Set the
    /// caller's with [`Message::with_traceparent`] when there is one.
    pub fn new(payload: impl Into<Bytes>) -> Self {
        Self {
            id: uuid::Uuid::now_v7().to_string(),
            payload: payload.into(),
            headers: BTreeMap::from([(TRACEPARENT.to_string(), root_traceparent())]),
            published_at: now(),
        }
    }

    /// A message whose payload is `value` as JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        Ok(Self::new(serde_json::to_vec(value)?))
    }

    /// The payload, decoded from JSON.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        Ok(serde_json::from_slice(&self.payload)?)
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Sets the W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
    pub fn with_traceparent(self, traceparent: impl Into<String>) -> Self {
        self.with_header(TRACEPARENT, traceparent)
    }

    pub fn traceparent(&self) -> Option<&str> {
        self.header(TRACEPARENT)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// Checks what both backends can carry: header names are HTTP-style tokens, values one line,
    /// and names starting with `nats-` are the server's own.
    pub fn validate(&self) -> Result<()> {
        if uuid::Uuid::parse_str(&self.id).is_err() {
            return Err(Error::InvalidHeader {
                name: "id".into(),
                reason: "the message id must be a UUID",
            });
        }
        for (name, value) in &self.headers {
            let invalid = |reason| {
                Err(Error::InvalidHeader {
                    name: name.clone(),
                    reason,
                })
            };
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return invalid("names are letters, digits, '-', '_' and '.'");
            }
            if name.to_ascii_lowercase().starts_with("nats-")
                || name.eq_ignore_ascii_case(crate::nats::PUBLISHED_AT_HEADER)
            {
                return invalid("this name is reserved by the broker");
            }
            if value.bytes().any(|b| b == b'\r' || b == b'\n') {
                return invalid("values must be a single line");
            }
        }
        Ok(())
    }

    /// The copy that goes to `<topic>.dlq` when `group` gave up on this message.
    pub(crate) fn dead_letter(&self, topic: &str, group: &str, attempts: u32) -> Message {
        let mut copy = Message::new(self.payload.clone());
        // Derived, not random: moving the same message for the same group twice (a crash
        // between the move and the ack) stores one copy, as publishing is idempotent by id.
        copy.id = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("stratus-dlq/{}/{group}", self.id).as_bytes(),
        )
        .to_string();
        copy.headers = self.headers.clone();
        copy.headers
            .insert(dlq_headers::ORIGINAL_ID.into(), self.id.clone());
        copy.headers
            .insert(dlq_headers::ORIGINAL_TOPIC.into(), topic.into());
        copy.headers.insert(dlq_headers::GROUP.into(), group.into());
        copy.headers
            .insert(dlq_headers::ATTEMPTS.into(), attempts.to_string());
        copy
    }
}

/// `00-<random trace id>-<random span id>-01` (sampled).
fn root_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = uuid::Uuid::new_v4().simple().to_string();
    format!("00-{trace}-{}-01", &span[..16])
}

pub(crate) fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

pub(crate) fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

pub(crate) fn parse_rfc3339(text: &str) -> Result<OffsetDateTime> {
    OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| Error::Malformed(format!("published_at {text:?}: {e}")))
}

/// The dead-letter topic of `topic`.
pub fn dlq_topic(topic: &str) -> String {
    format!("{topic}.dlq")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_uuid_v7_and_json_round_trips() {
        let message = Message::json(&serde_json::json!({"order": 42})).unwrap();
        let id = uuid::Uuid::parse_str(&message.id).unwrap();
        assert_eq!(id.get_version_num(), 7);
        let value: serde_json::Value = message.decode().unwrap();
        assert_eq!(value["order"], 42);
    }

    #[test]
    fn new_messages_start_a_trace() {
        let message = Message::new("x");
        let traceparent = message.traceparent().unwrap();
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(
            (parts[0], parts[1].len(), parts[2].len(), parts[3]),
            ("00", 32, 16, "01")
        );
        assert!(parts[1..3]
            .iter()
            .all(|p| p.bytes().all(|b| b.is_ascii_hexdigit())));
        assert_ne!(Message::new("y").traceparent(), Some(traceparent));
    }

    #[test]
    fn headers_are_checked() {
        let ok = Message::new("x")
            .with_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
        assert!(ok.validate().is_ok());
        assert!(Message::new("x")
            .with_header("bad name", "v")
            .validate()
            .is_err());
        assert!(Message::new("x")
            .with_header("a", "two\nlines")
            .validate()
            .is_err());
        assert!(Message::new("x")
            .with_header("Nats-Msg-Id", "x")
            .validate()
            .is_err());
    }
}
