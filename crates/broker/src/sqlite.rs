//! The embedded broker: a durable queue in one SQLite file that every local Stratus process opens.
//!
//! # Tables
//!
//! - `broker_messages(seq, id, topic, payload, headers, published_at, stored_ms)`: each message
//!   once, whatever the number of groups. `seq` orders them; `id` is unique, which makes publishing
//!   idempotent.
//! - `broker_groups(topic, grp)`: who subscribes to what. A group is registered by its first
//!   subscription and stays registered, so messages published while none of its instances runs
//!   are kept for it.
//! - `broker_deliveries(topic, grp, seq, attempts, visible_at)`: one row per message per group
//!   that has not finished with it (the *fan-out*, written in the publishing transaction). A row
//!   with `visible_at <= now` is ready; a claimed row is pushed into the future by the visibility
//!   timeout; a nacked one by the retry delay; an acked one is deleted. `attempts` counts claims.
//!
//! # Claiming, across processes
//!
//! A claim is one statement:
//!
//! ```sql
//! UPDATE broker_deliveries SET attempts = attempts + 1, visible_at = <now + visibility>
//! WHERE rowid IN (SELECT rowid FROM broker_deliveries
//!                 WHERE topic = ? AND grp = ? AND visible_at <= <now> AND attempts < <max>
//!                 ORDER BY seq LIMIT <prefetch>)
//! RETURNING seq, attempts
//! ```
//!
//! SQLite runs one writer at a time and an autocommit UPDATE takes the write lock before it
//! reads, so two processes can never claim the same row: the second one sees it already pushed
//! into the future. `busy_timeout` makes the loser wait for the lock instead of failing.
//!
//! The attempt number doubles as a fencing token: ack and nack only touch the row if `attempts`
//! is still what the consumer was given. A consumer whose lease expired and whose message was
//! claimed again gets [`Error::LeaseLost`](crate::Error::LeaseLost) instead of acking someone
//! else's delivery.
//!
//! # Polling
//!
//! Other processes cannot signal us, so a subscription polls: first a plain read (does this group
//! have anything ready?), which in WAL mode takes no lock and never blocks the writers, and only
//! then the claiming write. The interval adapts: no wait while messages keep coming,
//! [`poll_min`](crate::Options::poll_min) (10 ms) after the first empty poll, doubling up to
//! [`poll_max`](crate::Options::poll_max) (50 ms) while idle. Publishes from the same process wake
//! its subscriptions at once. So the latency across processes is at most ~50 ms, and an idle
//! subscription costs ~20 cheap reads a second.
//!
//! # Durability
//!
//! WAL mode. Publishes (and group registrations) commit with `synchronous = FULL`: once one
//! returns Ok the message is on disk and survives a crash of the process or of the machine.
//! Claims, acks, nacks and dead-letter moves commit with `synchronous = NORMAL` (no fsync of
//! their own): they survive a crash of the process, and a power loss can only roll the most
//! recent of them back, which puts messages back in the queue. That is a redelivery, which
//! at-least-once delivery allows anyway, and it makes consuming several times cheaper. (WAL is
//! one sequential log, so the next fully synced publish makes every earlier commit durable too.)

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Executor, SqlitePool};
use tokio::sync::Notify;

use crate::error::{Error, Result};
use crate::message::{self, dlq_topic, Message};
use crate::{Delivery, Options, Settle, StartAt};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS broker_messages (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    headers TEXT NOT NULL,
    published_at TEXT NOT NULL,
    stored_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS broker_messages_topic ON broker_messages (topic, seq);
CREATE INDEX IF NOT EXISTS broker_messages_stored ON broker_messages (stored_ms);
CREATE TABLE IF NOT EXISTS broker_groups (
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (topic, grp)
);
CREATE TABLE IF NOT EXISTS broker_deliveries (
    topic TEXT NOT NULL,
    grp TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    visible_at INTEGER NOT NULL,
    PRIMARY KEY (topic, grp, seq)
);
CREATE INDEX IF NOT EXISTS broker_deliveries_ready ON broker_deliveries (topic, grp, visible_at);
CREATE INDEX IF NOT EXISTS broker_deliveries_seq ON broker_deliveries (seq);
";

/// How often a handle deletes messages that every group has finished with and that are older
/// than the retention.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub(crate) struct SqliteBroker {
    shared: Arc<Shared>,
}

struct Shared {
    /// Consuming: claims, acks, nacks, polls (`synchronous = NORMAL`).
    pool: SqlitePool,
    /// Publishing and registering groups (`synchronous = FULL`).
    durable: SqlitePool,
    path: PathBuf,
    options: Options,
    /// Wakes this process's subscriptions when it publishes, so local delivery needs no poll.
    published: Notify,
    /// When this handle last pruned; `None` until its first idle poll.
    last_prune: Mutex<Option<Instant>>,
}

impl SqliteBroker {
    pub(crate) async fn open(path: &Path, options: Options) -> Result<SqliteBroker> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| Error::Open {
                path: parent.display().to_string(),
                source: sqlx::Error::Io(e),
            })?;
        }
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            // Several processes write the file: wait for the lock rather than fail.
            .busy_timeout(Duration::from_secs(10))
            // 1 MiB of page cache per connection, as for the services' own databases
            // (kit::db::SQLITE_CACHE): memory stays flat as the queue file grows.
            .pragma("cache_size", "-1024");
        // Readers (the polls) run beside the one writer: write-ahead logging, entered with
        // `switch_to_wal` because processes starting together race for it.
        let pool = SqlitePoolOptions::new()
            .after_connect(|conn, _| Box::pin(crate::switch_to_wal(conn)))
            .max_connections(4)
            // A fixed set of connections for the process's life (see kit::db::open): no
            // connection threads opened by a burst and closed later, fragmenting the heap.
            .min_connections(4)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(15))
            .connect_with(connect.clone().synchronous(SqliteSynchronous::Normal))
            .await
            .map_err(opening(path))?;
        // Publishing: Ok means on disk.
        let durable = SqlitePoolOptions::new()
            .after_connect(|conn, _| Box::pin(crate::switch_to_wal(conn)))
            .max_connections(2)
            .min_connections(2)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(Duration::from_secs(15))
            .connect_with(connect.synchronous(SqliteSynchronous::Full))
            .await
            .map_err(opening(path))?;
        let mut conn = pool.acquire().await.map_err(opening(path))?;
        for statement in SCHEMA.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            conn.execute(statement).await.map_err(opening(path))?;
        }
        drop(conn);
        tracing::debug!(path = %path.display(), "embedded broker open");
        Ok(SqliteBroker {
            shared: Arc::new(Shared {
                pool,
                durable,
                path: path.to_path_buf(),
                options,
                published: Notify::new(),
                last_prune: Mutex::new(None),
            }),
        })
    }

    /// One transaction, so one fsync, for the whole batch: all are stored or none.
    pub(crate) async fn publish_all(&self, topic: &str, messages: &[Message]) -> Result<()> {
        let mut tx = self
            .shared
            .durable
            .begin()
            .await
            .map_err(Error::sqlite("publishing"))?;
        for message in messages {
            insert_message(&mut tx, topic, message).await?;
        }
        tx.commit().await.map_err(Error::sqlite("publishing"))?;
        self.shared.published.notify_waiters();
        Ok(())
    }

    pub(crate) async fn subscribe(
        &self,
        topic: &str,
        group: &str,
        start: StartAt,
    ) -> Result<SqliteSubscription> {
        let context = "registering the group";
        let mut tx = self
            .shared
            .durable
            .begin()
            .await
            .map_err(Error::sqlite(context))?;
        let created = sqlx::query(
            "INSERT INTO broker_groups (topic, grp, created_at) VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(topic)
        .bind(group)
        .bind(message::rfc3339(message::now()))
        .execute(&mut *tx)
        .await
        .map_err(Error::sqlite(context))?
        .rows_affected()
            > 0;
        if created && start == StartAt::Earliest {
            sqlx::query(
                "INSERT INTO broker_deliveries (topic, grp, seq, attempts, visible_at)
                 SELECT topic, ?, seq, 0, ? FROM broker_messages WHERE topic = ?
                 ON CONFLICT DO NOTHING",
            )
            .bind(group)
            .bind(now_ms())
            .bind(topic)
            .execute(&mut *tx)
            .await
            .map_err(Error::sqlite(context))?;
        }
        tx.commit().await.map_err(Error::sqlite(context))?;
        Ok(SqliteSubscription {
            shared: self.shared.clone(),
            topic: topic.into(),
            group: group.into(),
            buffer: VecDeque::new(),
            idle: Duration::ZERO,
        })
    }

    pub(crate) async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.shared.pool)
            .await
            .map(|_| ())
            .map_err(Error::sqlite("checking the broker file"))
    }
}

/// Stores `message` and fans it out to the topic's groups, inside the caller's transaction.
/// A message id already stored is left alone (idempotent publish).
async fn insert_message(conn: &mut SqliteConnection, topic: &str, message: &Message) -> Result<()> {
    let context = "storing a message";
    let headers = serde_json::to_string(&message.headers)?;
    let seq: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO broker_messages (id, topic, payload, headers, published_at, stored_ms)
         VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING RETURNING seq",
    )
    .bind(&message.id)
    .bind(topic)
    .bind(message.payload.as_ref())
    .bind(headers)
    .bind(message::rfc3339(message.published_at))
    .bind(now_ms())
    .fetch_optional(&mut *conn)
    .await
    .map_err(Error::sqlite(context))?;
    if let Some((seq,)) = seq {
        sqlx::query(
            "INSERT INTO broker_deliveries (topic, grp, seq, attempts, visible_at)
             SELECT topic, grp, ?, 0, ? FROM broker_groups WHERE topic = ?",
        )
        .bind(seq)
        .bind(now_ms())
        .bind(topic)
        .execute(&mut *conn)
        .await
        .map_err(Error::sqlite(context))?;
    }
    Ok(())
}

pub(crate) struct SqliteSubscription {
    shared: Arc<Shared>,
    topic: String,
    group: String,
    /// Claimed, not yet handed out.
    buffer: VecDeque<Delivery>,
    /// The current poll interval (zero while messages keep coming).
    idle: Duration,
}

impl SqliteSubscription {
    pub(crate) async fn next(&mut self) -> Result<Delivery> {
        loop {
            if let Some(delivery) = self.buffer.pop_front() {
                return Ok(delivery);
            }
            // Created before the poll, so a publish during the poll still wakes us.
            let shared = self.shared.clone();
            let published = shared.published.notified();
            if self.poll().await? {
                self.idle = Duration::ZERO;
                continue;
            }
            let options = &self.shared.options;
            self.idle = (self.idle * 2).clamp(options.poll_min, options.poll_max);
            self.prune_now_and_then().await;
            tokio::select! {
                _ = tokio::time::sleep(self.idle) => {}
                _ = published => {}
            }
        }
    }

    /// One poll: dead-letters exhausted messages, claims ready ones into the buffer. True when it
    /// found anything.
    async fn poll(&mut self) -> Result<bool> {
        let options = &self.shared.options;
        let now = now_ms();
        // A plain read first: in WAL mode it takes no lock, so idle subscriptions never queue
        // behind (or hold up) the writers.
        let ready: Vec<(i64,)> = sqlx::query_as(
            "SELECT attempts FROM broker_deliveries WHERE topic = ? AND grp = ? AND visible_at <= ?
             ORDER BY seq LIMIT ?",
        )
        .bind(&self.topic)
        .bind(&self.group)
        .bind(now)
        .bind(options.prefetch as i64)
        .fetch_all(&self.shared.pool)
        .await
        .map_err(Error::sqlite("polling"))?;
        if ready.is_empty() {
            return Ok(false);
        }
        let max = i64::from(options.max_attempts);
        if ready.iter().any(|(attempts,)| *attempts >= max) {
            self.dead_letter_exhausted(now).await?;
        }
        if ready.iter().any(|(attempts,)| *attempts < max) {
            self.claim(now).await?;
        }
        Ok(true)
    }

    async fn claim(&mut self, now: i64) -> Result<()> {
        let options = &self.shared.options;
        let visible_at = now + millis(options.visibility_timeout);
        let claimed: Vec<(i64, i64)> = sqlx::query_as(
            "UPDATE broker_deliveries SET attempts = attempts + 1, visible_at = ?
             WHERE rowid IN (SELECT rowid FROM broker_deliveries
                             WHERE topic = ? AND grp = ? AND visible_at <= ? AND attempts < ?
                             ORDER BY seq LIMIT ?)
             RETURNING seq, attempts",
        )
        .bind(visible_at)
        .bind(&self.topic)
        .bind(&self.group)
        .bind(now)
        .bind(i64::from(options.max_attempts))
        .bind(options.prefetch as i64)
        .fetch_all(&self.shared.pool)
        .await
        .map_err(Error::sqlite("claiming messages"))?;
        if claimed.is_empty() {
            return Ok(());
        }
        let mut messages = load_messages(&self.shared.pool, claimed.iter().map(|c| c.0)).await?;
        let mut claimed = claimed;
        claimed.sort_unstable();
        for (seq, attempts) in claimed {
            let Some(message) = messages.remove(&seq) else {
                tracing::warn!(seq, topic = %self.topic, "claimed a delivery whose message is gone");
                continue;
            };
            let attempt = u32::try_from(attempts).unwrap_or(u32::MAX);
            self.buffer.push_back(Delivery {
                message,
                topic: self.topic.clone(),
                group: self.group.clone(),
                attempt,
                settle: Settle::Sqlite(Lease {
                    shared: self.shared.clone(),
                    topic: self.topic.clone(),
                    group: self.group.clone(),
                    seq,
                    attempts,
                }),
            });
        }
        Ok(())
    }

    /// Messages whose last allowed attempt timed out go to `<topic>.dlq`, in one transaction with
    /// removing them from the group, so a crash between the two loses nothing.
    async fn dead_letter_exhausted(&self, now: i64) -> Result<()> {
        let context = "moving messages to the dead-letter topic";
        let mut tx = self
            .shared
            .pool
            .begin()
            .await
            .map_err(Error::sqlite(context))?;
        let exhausted: Vec<(i64, i64)> = sqlx::query_as(
            "DELETE FROM broker_deliveries
             WHERE rowid IN (SELECT rowid FROM broker_deliveries
                             WHERE topic = ? AND grp = ? AND visible_at <= ? AND attempts >= ?
                             LIMIT 100)
             RETURNING seq, attempts",
        )
        .bind(&self.topic)
        .bind(&self.group)
        .bind(now)
        .bind(i64::from(self.shared.options.max_attempts))
        .fetch_all(&mut *tx)
        .await
        .map_err(Error::sqlite(context))?;
        let messages = load_messages(&mut *tx, exhausted.iter().map(|e| e.0)).await?;
        let dlq = dlq_topic(&self.topic);
        for (seq, attempts) in exhausted {
            if let Some(message) = messages.get(&seq) {
                let attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
                crate::metrics::settled(&self.topic, &self.group, "dead_letter");
                tracing::warn!(id = %message.id, topic = %self.topic, group = %self.group, attempts,
                    "message not acknowledged after its last attempt: moved to {dlq}");
                let copy = message.dead_letter(&self.topic, &self.group, attempts);
                insert_message(&mut tx, &dlq, &copy).await?;
            }
        }
        tx.commit().await.map_err(Error::sqlite(context))?;
        self.shared.published.notify_waiters();
        Ok(())
    }

    /// Deletes messages that no group still needs and that are past the retention. Best effort:
    /// a failure here is logged, not returned, as it hurts nobody but the disk.
    async fn prune_now_and_then(&self) {
        {
            let Ok(mut last) = self.shared.last_prune.lock() else {
                return;
            };
            if last.is_some_and(|at| at.elapsed() < PRUNE_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        if self.shared.options.retention.is_zero() {
            return; // kept forever
        }
        let cutoff = now_ms() - millis(self.shared.options.retention);
        let result = sqlx::query(
            "DELETE FROM broker_messages WHERE stored_ms < ?
             AND NOT EXISTS (SELECT 1 FROM broker_deliveries d WHERE d.seq = broker_messages.seq)",
        )
        .bind(cutoff)
        .execute(&self.shared.pool)
        .await;
        match result {
            Ok(done) if done.rows_affected() > 0 => {
                tracing::debug!(deleted = done.rows_affected(), "pruned old messages")
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, path = %self.shared.path.display(), "pruning old messages")
            }
        }
    }
}

async fn load_messages<'c, E>(
    executor: E,
    seqs: impl Iterator<Item = i64>,
) -> Result<HashMap<i64, Message>>
where
    E: sqlx::Executor<'c, Database = sqlx::Sqlite>,
{
    let seqs: Vec<i64> = seqs.collect();
    if seqs.is_empty() {
        return Ok(HashMap::new());
    }
    let placeholders = vec!["?"; seqs.len()].join(", ");
    let sql = format!(
        "SELECT seq, id, payload, headers, published_at FROM broker_messages WHERE seq IN ({placeholders})"
    );
    let mut query = sqlx::query_as::<_, (i64, String, Vec<u8>, String, String)>(&sql);
    for seq in &seqs {
        query = query.bind(seq);
    }
    let rows = query
        .fetch_all(executor)
        .await
        .map_err(Error::sqlite("reading messages"))?;
    rows.into_iter()
        .map(|(seq, id, payload, headers, published_at)| {
            Ok((seq, decode_row(id, payload, &headers, &published_at)?))
        })
        .collect()
}

/// A stored row back into a message. The file is shared by every local process (and anyone can
/// open it), so a row is input like any other: a malformed one is an error for that delivery,
/// never a panic in the consumer. (Fuzzed by `fuzz/fuzz_targets/broker_message.rs`.)
pub fn decode_row(
    id: String,
    payload: Vec<u8>,
    headers: &str,
    published_at: &str,
) -> Result<Message> {
    let headers = serde_json::from_str(headers)
        .map_err(|e| Error::Malformed(format!("headers of message {id}: {e}")))?;
    Ok(Message {
        id,
        payload: payload.into(),
        headers,
        published_at: message::parse_rfc3339(published_at)?,
    })
}

/// The right to settle one delivery: valid while `attempts` in the row is still ours.
pub(crate) struct Lease {
    shared: Arc<Shared>,
    topic: String,
    group: String,
    seq: i64,
    attempts: i64,
}

impl Lease {
    pub(crate) fn max_attempts(&self) -> u32 {
        self.shared.options.max_attempts
    }

    pub(crate) async fn ack(self) -> Result<()> {
        let done = sqlx::query(
            "DELETE FROM broker_deliveries WHERE topic = ? AND grp = ? AND seq = ? AND attempts = ?",
        )
        .bind(&self.topic)
        .bind(&self.group)
        .bind(self.seq)
        .bind(self.attempts)
        .execute(&self.shared.pool)
        .await
        .map_err(Error::sqlite("acknowledging"))?;
        fenced(done.rows_affected())
    }

    pub(crate) async fn extend(&self) -> Result<()> {
        let done = sqlx::query(
            "UPDATE broker_deliveries SET visible_at = ?
             WHERE topic = ? AND grp = ? AND seq = ? AND attempts = ?",
        )
        .bind(now_ms() + millis(self.shared.options.visibility_timeout))
        .bind(&self.topic)
        .bind(&self.group)
        .bind(self.seq)
        .bind(self.attempts)
        .execute(&self.shared.pool)
        .await
        .map_err(Error::sqlite("extending a lease"))?;
        fenced(done.rows_affected())
    }

    pub(crate) async fn nack(self, delay: Duration) -> Result<()> {
        let done = sqlx::query(
            "UPDATE broker_deliveries SET visible_at = ?
             WHERE topic = ? AND grp = ? AND seq = ? AND attempts = ?",
        )
        .bind(now_ms() + millis(delay))
        .bind(&self.topic)
        .bind(&self.group)
        .bind(self.seq)
        .bind(self.attempts)
        .execute(&self.shared.pool)
        .await
        .map_err(Error::sqlite("scheduling a retry"))?;
        fenced(done.rows_affected())
    }

    /// The last attempt failed: remove the delivery and store the dead-letter copy, atomically.
    pub(crate) async fn dead_letter(self, message: &Message) -> Result<()> {
        let context = "moving a message to the dead-letter topic";
        let mut tx = self
            .shared
            .pool
            .begin()
            .await
            .map_err(Error::sqlite(context))?;
        let done = sqlx::query(
            "DELETE FROM broker_deliveries WHERE topic = ? AND grp = ? AND seq = ? AND attempts = ?",
        )
        .bind(&self.topic)
        .bind(&self.group)
        .bind(self.seq)
        .bind(self.attempts)
        .execute(&mut *tx)
        .await
        .map_err(Error::sqlite(context))?;
        fenced(done.rows_affected())?;
        let attempts = u32::try_from(self.attempts).unwrap_or(u32::MAX);
        let copy = message.dead_letter(&self.topic, &self.group, attempts);
        insert_message(&mut tx, &dlq_topic(&self.topic), &copy).await?;
        tx.commit().await.map_err(Error::sqlite(context))?;
        tracing::warn!(id = %message.id, topic = %self.topic, group = %self.group, attempts,
            "message failed its last attempt: moved to the dead-letter topic");
        self.shared.published.notify_waiters();
        Ok(())
    }
}

fn opening(path: &Path) -> impl Fn(sqlx::Error) -> Error + '_ {
    move |source| Error::Open {
        path: path.display().to_string(),
        source,
    }
}

fn fenced(rows: u64) -> Result<()> {
    if rows == 0 {
        Err(Error::LeaseLost)
    } else {
        Ok(())
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX / 4)
}
