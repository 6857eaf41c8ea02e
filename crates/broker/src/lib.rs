//! Asynchronous communication for Stratus services: durable topics that several services consume,
//! each at its own pace.
//!
//! # The model
//!
//! A publisher sends a [`Message`] to a *topic* (`payment.completed`). Consumers subscribe to a
//! topic as a *group*, normally named after their service (`notifications`, `orders`):
//!
//! - **pub-sub across groups**: every group subscribed to a topic gets every message published to
//!   it. `notifications` and `orders` both see each `payment.completed`.
//! - **work queue within a group**: the instances of one service subscribe with the same group and
//!   share its messages; each message goes to one of them.
//!
//! This is the durable-consumer model of Kafka and NATS JetStream. A group exists from its first
//! subscription on; it gets the messages published *after* that (pass [`StartAt::Earliest`] to
//! start from the oldest retained message instead, as a dead-letter reader would). A group keeps
//! its place while no instance is running: what is published meanwhile waits for it.
//!
//! # Delivery guarantees: at least once
//!
//! A consumer [`Delivery::ack`]s a message after its work is done. A message that is not acked
//! within the visibility timeout (the consumer crashed, hung, or was slow) is delivered again, to
//! any instance of the group; [`Delivery::nack`] asks for a retry after a delay. Each delivery
//! carries its attempt number. After `max_attempts` failed attempts the message is moved to the
//! dead-letter topic `<topic>.dlq` (readable with the same API) instead of being retried forever.
//!
//! So a message can be processed more than once (an ack lost in a crash, a slow consumer whose
//! lease ran out). **Consumers must be idempotent**: record the message id (or the business key it
//! carries) in the same database transaction as the work, and skip ids already recorded.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use stratus_broker::{Broker, Message, Options};
//!
//! # async fn example(traceparent: &str) -> stratus_broker::Result<()> {
//! let broker = Broker::from_env(std::path::Path::new(".stratus"), Options::default()).await?;
//!
//! // payments, after a payment went through (in practice from its outbox):
//! let event = Message::json(&serde_json::json!({"order_id": "o-1", "amount": 1299}))?
//!     .with_traceparent(traceparent);
//! broker.publish("payment.completed", &event).await?;
//!
//! // notifications, in every instance:
//! let mut payments = broker.subscribe("payment.completed", "notifications").await?;
//! loop {
//!     let delivery = match payments.next().await {
//!         Ok(delivery) => delivery,
//!         Err(stratus_broker::Error::Closed) => break,
//!         Err(error) => {
//!             // Usually transient (a NATS reconnect, a busy file): try again shortly.
//!             eprintln!("receiving: {error}");
//!             tokio::time::sleep(Duration::from_secs(1)).await;
//!             continue;
//!         }
//!     };
//!     let event: serde_json::Value = delivery.message.decode()?;
//!     match send_receipt(&delivery.message.id, &event).await {
//!         Ok(()) => delivery.ack().await?,
//!         Err(_) => delivery.nack(Duration::from_secs(5)).await?,
//!     }
//! }
//! # Ok(())
//! # }
//! # async fn send_receipt(_id: &str, _event: &serde_json::Value) -> Result<(), ()> { Ok(()) }
//! ```
//!
//! # Backends
//!
//! Chosen by URL (`BROKER_URL`): unset or `sqlite://<path>` is the embedded queue in one SQLite
//! file that every local process opens (see [`sqlite`](crate::sqlite) for the claim and polling
//! design); `nats://host:port` is NATS JetStream, `tls://host:port` the same over TLS (the
//! server's certificate checked against the system's roots, or `SSL_CERT_FILE`'s). A configured
//! NATS that cannot be reached, or that cannot speak TLS when the URL asks for it, is an error at
//! connect, never a silent fallback to SQLite or to plaintext.

mod error;
mod message;
mod metrics;
mod nats;
pub mod sqlite;
mod sqlite_wal;

use std::path::Path;
use std::time::Duration;

pub use error::{Error, Result};
pub use message::{dlq_headers, dlq_topic, Message, TRACEPARENT};
pub use sqlite_wal::switch_to_wal;

/// Tuning shared by both backends.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long a delivered message stays invisible to the rest of its group before it is
    /// redelivered, unless acked or nacked. (JetStream: the consumer's `ack_wait`, fixed when the
    /// group is first created.)
    pub visibility_timeout: Duration,
    /// Deliveries to one group before the message goes to `<topic>.dlq`. At least 1.
    pub max_attempts: u32,
    /// Messages one subscription claims ahead of the consumer. Small keeps the work spread across
    /// instances and the visibility clock honest; larger saves round trips.
    pub prefetch: usize,
    /// The embedded backend polls the file: this fast when messages keep coming...
    pub poll_min: Duration,
    /// ...backing off to this when the topic is idle.
    pub poll_max: Duration,
    /// How long messages are kept after every group is done with them (embedded), or at all
    /// (JetStream's `max_age`). New [`StartAt::Earliest`] groups can read back this far. Zero
    /// keeps them forever.
    pub retention: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            visibility_timeout: Duration::from_secs(30),
            max_attempts: 5,
            prefetch: 8,
            poll_min: Duration::from_millis(10),
            poll_max: Duration::from_millis(50),
            retention: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Shorter would redeliver messages while their consumers are still at work.
const MIN_VISIBILITY_TIMEOUT: Duration = Duration::from_millis(100);

/// Where a group that does not exist yet starts reading. An existing group keeps its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartAt {
    /// Messages published after the group's first subscription (the default).
    #[default]
    New,
    /// Every retained message of the topic, then new ones.
    Earliest,
}

/// A handle on the broker. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct Broker {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Sqlite(sqlite::SqliteBroker),
    // Boxed: the NATS handles are large, the SQLite ones an Arc.
    Nats(Box<nats::NatsBroker>),
}

impl Broker {
    /// Connects to the broker `url` names: `sqlite://<path>` (the file is created if missing; a
    /// query string such as kit's `?mode=rwc` is ignored), `nats://host:port` or
    /// `tls://host:port` (NATS over TLS, required: never plaintext).
    pub async fn connect(url: &str, options: Options) -> Result<Broker> {
        let poll_min = options.poll_min.max(Duration::from_millis(1));
        let options = Options {
            poll_min,
            poll_max: options.poll_max.max(poll_min),
            max_attempts: options.max_attempts.max(1),
            prefetch: options.prefetch.max(1),
            visibility_timeout: options.visibility_timeout.max(MIN_VISIBILITY_TIMEOUT),
            ..options
        };
        let sqlite_path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"));
        let backend = if let Some(path) = sqlite_path {
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err(Error::InvalidUrl(url.into()));
            }
            Backend::Sqlite(sqlite::SqliteBroker::open(Path::new(path), options).await?)
        } else if is_nats(url) {
            Backend::Nats(Box::new(nats::NatsBroker::connect(url, options).await?))
        } else {
            return Err(Error::InvalidUrl(redact_url(url)));
        };
        Ok(Broker { backend })
    }

    /// The broker `BROKER_URL` names, or the embedded one in `<data_dir>/broker.db` (shared by every
    /// local process using the same data directory) when it is unset or empty.
    pub async fn from_env(data_dir: &Path, options: Options) -> Result<Broker> {
        let url = url_or_default(std::env::var("BROKER_URL").ok().as_deref(), data_dir);
        Broker::connect(&url, options).await
    }

    /// Publishes `message` to `topic`. When this returns Ok the message is stored durably (fsynced
    /// to the SQLite file, or acknowledged by the JetStream server) and every group subscribed to
    /// the topic will get it. Publishing the same message id again is a no-op (the embedded
    /// backend while the first copy is retained; JetStream within its two-minute duplicate
    /// window).
    pub async fn publish(&self, topic: &str, message: &Message) -> Result<()> {
        validate_topic(topic)?;
        message.validate()?;
        match &self.backend {
            Backend::Sqlite(b) => b.publish_all(topic, std::slice::from_ref(message)).await,
            Backend::Nats(b) => b.publish(topic, message).await,
        }?;
        metrics::published(topic, 1);
        Ok(())
    }

    /// Publishes several messages to `topic` at the cost of about one: one transaction (and one
    /// fsync) on the embedded backend, pipelined acknowledgements on JetStream. For an outbox
    /// relay draining its table. On the embedded backend the batch is stored whole or not at all;
    /// on JetStream an error may leave a prefix stored, and retrying the batch is safe (publishing
    /// is idempotent by message id).
    pub async fn publish_all(&self, topic: &str, messages: &[Message]) -> Result<()> {
        validate_topic(topic)?;
        for message in messages {
            message.validate()?;
        }
        match &self.backend {
            Backend::Sqlite(b) => b.publish_all(topic, messages).await,
            Backend::Nats(b) => b.publish_all(topic, messages).await,
        }?;
        metrics::published(topic, messages.len());
        Ok(())
    }

    /// Subscribes to `topic` as `group` (see the crate docs for what groups mean), creating the
    /// group if needed so that messages published from now on are kept for it.
    pub async fn subscribe(&self, topic: &str, group: &str) -> Result<Subscription> {
        self.subscribe_at(topic, group, StartAt::New).await
    }

    /// Like [`Broker::subscribe`], choosing where a new group starts.
    pub async fn subscribe_at(
        &self,
        topic: &str,
        group: &str,
        start: StartAt,
    ) -> Result<Subscription> {
        validate_topic(topic)?;
        validate_group(group)?;
        let inner = match &self.backend {
            Backend::Sqlite(b) => {
                SubscriptionInner::Sqlite(b.subscribe(topic, group, start).await?)
            }
            Backend::Nats(b) => {
                SubscriptionInner::Nats(Box::new(b.subscribe(topic, group, start).await?))
            }
        };
        Ok(Subscription { inner })
    }

    /// Which backend this is: `"sqlite"` or `"nats"`.
    pub fn backend_name(&self) -> &'static str {
        match &self.backend {
            Backend::Sqlite(_) => "sqlite",
            Backend::Nats(_) => "nats",
        }
    }

    /// A readiness check: the backend answers.
    pub async fn ping(&self) -> Result<()> {
        match &self.backend {
            Backend::Sqlite(b) => b.ping().await,
            Backend::Nats(b) => b.ping().await,
        }
    }
}

/// Whether `url` names a NATS server: `nats://` (TLS if the server requires it) or `tls://`
/// (TLS required by the client: a server that cannot speak it is an error).
fn is_nats(url: &str) -> bool {
    url.starts_with("nats://") || url.starts_with("tls://")
}

/// A broker URL for messages and logs: a NATS URL's user part (`user:password@` or a token
/// `token@`, secrets either way) becomes `***@`. An SQLite URL is a path and stays as it is.
pub fn redact_url(url: &str) -> String {
    let Some(rest) = url.split_once("://").map(|(_, rest)| rest) else {
        return url.to_string();
    };
    if url.starts_with("sqlite:") {
        return url.to_string();
    }
    let scheme = &url[..url.len() - rest.len()];
    // The user part ends at the last `@` before the path; a raw `/` in a secret makes it the
    // last `@` of all, which hides more, never less.
    let path_at = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..path_at].rfind('@').or_else(|| rest.rfind('@')) {
        Some(at) => format!("{scheme}***{}", &rest[at..]),
        None => url.to_string(),
    }
}

/// `BROKER_URL`, or the embedded broker's file in `data_dir`.
pub fn url_or_default(broker_url: Option<&str>, data_dir: &Path) -> String {
    match broker_url.filter(|u| !u.trim().is_empty()) {
        Some(url) => url.to_string(),
        None => format!("sqlite://{}", data_dir.join("broker.db").display()),
    }
}

/// One group's stream of deliveries from one topic. Several subscriptions with the same group (in
/// one process or many) share the messages.
pub struct Subscription {
    inner: SubscriptionInner,
}

enum SubscriptionInner {
    Sqlite(sqlite::SqliteSubscription),
    Nats(Box<nats::NatsSubscription>),
}

impl Subscription {
    /// Waits for the next message. Messages this subscription claimed but has not handed out yet
    /// are redelivered after the visibility timeout if the subscription is dropped.
    ///
    /// An error is usually transient (a lost connection to NATS that the client is re-establishing,
    /// a busy SQLite file): log it, pause briefly and call `next` again. [`Error::Closed`] is final.
    pub async fn next(&mut self) -> Result<Delivery> {
        let delivery = match &mut self.inner {
            SubscriptionInner::Sqlite(s) => s.next().await,
            SubscriptionInner::Nats(s) => s.next().await,
        }?;
        metrics::delivered(&delivery.topic, &delivery.group, delivery.attempt);
        Ok(delivery)
    }

    /// The deliveries as a [`Stream`](futures_util::Stream), ending after [`Error::Closed`].
    pub fn into_stream(self) -> impl futures_util::Stream<Item = Result<Delivery>> + Send {
        futures_util::stream::unfold(Some(self), |subscription| async move {
            let mut subscription = subscription?;
            match subscription.next().await {
                Err(Error::Closed) => Some((Err(Error::Closed), None)),
                item => Some((item, Some(subscription))),
            }
        })
    }
}

/// One delivery of a message to a group. Settle it with [`ack`](Delivery::ack) or
/// [`nack`](Delivery::nack); dropping it unsettled means the message comes back after the
/// visibility timeout, as if the consumer had crashed.
pub struct Delivery {
    pub message: Message,
    pub topic: String,
    pub group: String,
    /// 1 on the first delivery to this group, 2 on the first retry, and so on.
    pub attempt: u32,
    settle: Settle,
}

enum Settle {
    Sqlite(sqlite::Lease),
    Nats(Box<nats::Lease>),
}

impl Delivery {
    /// The work is done: the message will not be delivered to this group again.
    pub async fn ack(self) -> Result<()> {
        match self.settle {
            Settle::Sqlite(lease) => lease.ack().await,
            Settle::Nats(lease) => lease.ack().await,
        }?;
        metrics::settled(&self.topic, &self.group, "ack");
        Ok(())
    }

    /// Still working: restart the visibility timeout, so a long job keeps its message. Call it
    /// well within each timeout (e.g. every third of it).
    pub async fn extend_lease(&self) -> Result<()> {
        match &self.settle {
            Settle::Sqlite(lease) => lease.extend().await,
            Settle::Nats(lease) => lease.extend().await,
        }
    }

    /// The work failed: deliver the message again after `delay` (to any instance of the group). On
    /// the last allowed attempt the message goes to `<topic>.dlq` instead.
    pub async fn nack(self, delay: Duration) -> Result<()> {
        let last = self.attempt >= self.max_attempts();
        let outcome = if last { "dead_letter" } else { "nack" };
        match self.settle {
            Settle::Sqlite(lease) if last => lease.dead_letter(&self.message).await,
            Settle::Sqlite(lease) => lease.nack(delay).await,
            Settle::Nats(lease) if last => {
                lease
                    .dead_letter(&self.message, &self.topic, &self.group, self.attempt)
                    .await
            }
            Settle::Nats(lease) => lease.nack(delay).await,
        }?;
        metrics::settled(&self.topic, &self.group, outcome);
        Ok(())
    }

    fn max_attempts(&self) -> u32 {
        match &self.settle {
            Settle::Sqlite(lease) => lease.max_attempts(),
            Settle::Nats(lease) => lease.max_attempts(),
        }
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .field("topic", &self.topic)
            .field("group", &self.group)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// Topics are dot-separated words of ASCII letters, digits and '-'. No '_' and no wildcards: the
/// JetStream backend maps `a.b` to the subject `stratus.a.b` and to consumer names with '_' in
/// place of '.', and that mapping must be one-to-one.
fn validate_topic(topic: &str) -> Result<()> {
    let word_ok =
        |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if topic.len() > 200 || !topic.split('.').all(word_ok) {
        return Err(Error::InvalidTopic(topic.into()));
    }
    Ok(())
}

fn validate_group(group: &str) -> Result<()> {
    if group.is_empty()
        || group.len() > 100
        || !group
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(Error::InvalidGroup(group.into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_groups() {
        assert!(validate_topic("payment.completed").is_ok());
        assert!(validate_topic("payment.completed.dlq").is_ok());
        for bad in ["", "a..b", ".a", "a.", "a.*", "a.>", "a b", "a_b"] {
            assert!(validate_topic(bad).is_err(), "{bad:?}");
        }
        assert!(validate_group("notifications").is_ok());
        for bad in ["", "a.b", "a_b", "a b"] {
            assert!(validate_group(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn url_defaults_to_the_data_dir() {
        let dir = Path::new("/var/lib/stratus");
        assert_eq!(
            url_or_default(None, dir),
            "sqlite:///var/lib/stratus/broker.db"
        );
        assert_eq!(
            url_or_default(Some(""), dir),
            "sqlite:///var/lib/stratus/broker.db"
        );
        assert_eq!(url_or_default(Some("nats://n:4222"), dir), "nats://n:4222");
    }

    #[tokio::test]
    async fn odd_options_are_made_sane() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("b.db").display());
        let options = Options {
            poll_min: Duration::from_millis(200),
            poll_max: Duration::ZERO,
            max_attempts: 0,
            prefetch: 0,
            visibility_timeout: Duration::ZERO,
            ..Options::default()
        };
        let broker = Broker::connect(&url, options).await.unwrap();
        let mut subscription = broker.subscribe("t", "g").await.unwrap();
        let idle = tokio::time::timeout(Duration::from_millis(300), subscription.next()).await;
        assert!(idle.is_err(), "nothing to deliver, and no panic");
    }

    #[tokio::test]
    async fn an_unusable_sqlite_path_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        let url = format!("sqlite://{}/broker.db", file.display());
        let error = Broker::connect(&url, Options::default())
            .await
            .err()
            .unwrap();
        assert!(matches!(error, Error::Open { .. }), "{error}");
        assert!(error.to_string().contains("not-a-dir"), "{error}");
    }

    #[tokio::test]
    async fn unknown_schemes_are_refused() {
        let error = Broker::connect("redis://x", Options::default()).await.err();
        assert!(matches!(error, Some(Error::InvalidUrl(_))));
        let error = Broker::connect("amqp://u:secret@x", Options::default())
            .await
            .err()
            .unwrap();
        assert!(!error.to_string().contains("secret"), "{error}");
    }

    #[test]
    fn broker_urls_lose_their_secrets_in_messages() {
        assert_eq!(redact_url("nats://u:secret@n:4222"), "nats://***@n:4222");
        assert_eq!(redact_url("tls://s3cr3t-token@n:4222"), "tls://***@n:4222");
        assert_eq!(redact_url("tls://n:4222"), "tls://n:4222");
        assert_eq!(
            redact_url("sqlite:///data/a@b/broker.db"),
            "sqlite:///data/a@b/broker.db"
        );
        assert_eq!(redact_url("nats://u:se/cr@et@n"), "nats://***@n");
    }

    #[tokio::test]
    async fn a_tls_url_to_a_closed_port_is_an_error_that_hides_its_token() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("tls://s3cr3t@127.0.0.1:{port}");
        let error = Broker::connect(&url, Options::default())
            .await
            .err()
            .unwrap();
        assert!(matches!(error, Error::Connect { .. }), "{error}");
        let shown = error.to_string();
        assert!(
            shown.contains(&format!("tls://***@127.0.0.1:{port}")),
            "{shown}"
        );
        assert!(!shown.contains("s3cr3t"), "{shown}");
    }
}
