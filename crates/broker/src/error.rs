//! The one error type of the broker, so callers can tell "your input is wrong" from "the backing
//! service is in trouble" without parsing strings.

/// What can go wrong when publishing, subscribing or acknowledging.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `BROKER_URL` names no backend this crate knows (the URL as [`crate::redact_url`] shows it).
    #[error("BROKER_URL must be sqlite://<path>, nats://host:port or tls://host:port (got {0:?})")]
    InvalidUrl(String),

    /// Topics are dot-separated words: `payment.completed`, `order.created`.
    #[error("invalid topic {0:?}: use dot-separated words of letters, digits and '-' (e.g. payment.completed)")]
    InvalidTopic(String),

    /// Groups name the consuming service: `notifications`, `orders`.
    #[error("invalid group {0:?}: use letters, digits and '-' (e.g. notifications)")]
    InvalidGroup(String),

    /// A header the backends cannot carry, or one the broker reserves for itself.
    #[error("invalid header {name:?}: {reason}")]
    InvalidHeader { name: String, reason: &'static str },

    /// The payload could not be encoded or decoded as JSON.
    #[error("message payload is not the expected JSON: {0}")]
    Json(#[from] serde_json::Error),

    /// The embedded broker's file could not be opened or set up.
    #[error("opening the embedded broker at {path}: {source}")]
    Open {
        path: String,
        #[source]
        source: sqlx::Error,
    },

    /// The embedded SQLite queue failed.
    #[error("embedded broker (SQLite): {context}: {source}")]
    Sqlite {
        context: &'static str,
        #[source]
        source: sqlx::Error,
    },

    /// A configured NATS server could not be reached (or not over TLS, when the URL asks for it).
    /// Never a silent fallback to SQLite or to plaintext. `url` is redacted.
    #[error("connecting to NATS at {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A NATS JetStream operation failed.
    #[error("NATS JetStream: {context}: {source}")]
    Nats {
        context: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// A stored message could not be read back (a corrupt row or a foreign publisher).
    #[error("stored message is malformed: {0}")]
    Malformed(String),

    /// The ack or nack came too late: the visibility timeout expired and the message was claimed
    /// again (attempt counts moved on), so another consumer may be working on it. The work done
    /// under this delivery may be repeated: this is why consumers must be idempotent.
    #[error("the delivery's lease expired before it was acknowledged; the message will be (or was) redelivered")]
    LeaseLost,

    /// The subscription's connection ended.
    #[error("the subscription was closed")]
    Closed,
}

impl Error {
    pub(crate) fn sqlite(context: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
        move |source| Error::Sqlite { context, source }
    }

    pub(crate) fn nats<E>(context: &'static str) -> impl FnOnce(E) -> Error
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        move |source| Error::Nats {
            context,
            source: Box::new(source),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
