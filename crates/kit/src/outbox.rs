//! The transactional outbox, and its mirror image, the processed-message table.
//!
//! A service that changes its database *and* tells others about it cannot do both atomically:
//! commit first and crash before publishing, and the event is lost; publish first and fail to
//! commit, and others act on something that never happened. The outbox turns the second write
//! into part of the first: the event is inserted into the `outbox` table **in the same
//! transaction** as the change ([`enqueue`]). A [`Relay`] task then publishes unsent rows to the
//! broker and marks them sent. A crash between publishing and marking publishes the row again
//! later, under the same message id (the row's id), which the broker drops as a duplicate and
//! consumers skip anyway.
//!
//! On the consuming side, [`mark_processed`] records a message id in the same transaction as the
//! work it caused; a redelivered message finds its id already there and changes nothing. Together
//! they give effectively-once processing over an at-least-once broker.
//!
//! Both tables go into each service's own migrations ([`OUTBOX_SCHEMA`]); the SQL is the same
//! on SQLite and PostgreSQL.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{AnyConnection, AnyPool};
use stratus_broker::{Broker, Message};
use tokio::sync::Notify;

/// The outbox and processed-message tables, for a service's migrations.
pub const OUTBOX_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    payload TEXT NOT NULL,
    traceparent TEXT,
    created_at TEXT NOT NULL,
    sent BIGINT NOT NULL DEFAULT 0,
    sent_at TEXT
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (sent, id);
CREATE TABLE IF NOT EXISTS processed_messages (
    id TEXT PRIMARY KEY,
    topic TEXT NOT NULL,
    processed_at TEXT NOT NULL
)
";

/// Rows one relay pass publishes at most.
const BATCH: i64 = 100;
/// How often the relay looks for rows it was not woken for (another instance's, or left over
/// from a crash).
const POLL: Duration = Duration::from_millis(200);

/// Adds an event to the outbox inside the caller's transaction. Returns the message id.
pub async fn enqueue(
    conn: &mut AnyConnection,
    topic: &str,
    payload: &serde_json::Value,
    traceparent: Option<&str>,
) -> Result<String, sqlx::Error> {
    let id = crate::new_id();
    sqlx::query(
        "INSERT INTO outbox (id, topic, payload, traceparent, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&id)
    .bind(topic)
    .bind(payload.to_string())
    .bind(traceparent)
    .bind(crate::now_rfc3339())
    .execute(conn)
    .await?;
    Ok(id)
}

/// Records that message `id` was processed, inside the caller's transaction. `false` means it
/// was already: the caller should change nothing and just acknowledge the message.
///
/// It is an insert (a write before any read), so on SQLite the transaction takes the write lock
/// at once rather than failing to upgrade a read lock under contention.
pub async fn mark_processed(
    conn: &mut AnyConnection,
    id: &str,
    topic: &str,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "INSERT INTO processed_messages (id, topic, processed_at) VALUES ($1, $2, $3) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id)
    .bind(topic)
    .bind(crate::now_rfc3339())
    .execute(conn)
    .await?;
    Ok(result.rows_affected() > 0)
}

/// Publishes the outbox to the broker in the background. Call [`Relay::wake`] after committing
/// a transaction that enqueued something, so the event leaves at once instead of at the next
/// poll.
#[derive(Clone)]
pub struct Relay {
    wake: Arc<Notify>,
}

impl Relay {
    /// Starts the relay task for `pool`'s outbox.
    pub fn start(pool: AnyPool, broker: Broker) -> Relay {
        let wake = Arc::new(Notify::new());
        tokio::spawn(run(pool, broker, wake.clone()));
        Relay { wake }
    }

    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

type Row = (String, String, String, Option<String>);

async fn run(pool: AnyPool, broker: Broker, wake: Arc<Notify>) {
    let mut failures = 0u32;
    loop {
        match relay_once(&pool, &broker).await {
            Ok(sent) => {
                failures = 0;
                if sent as i64 >= BATCH {
                    continue;
                }
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(POLL) => {}
                }
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                metrics::counter!("outbox_relay_failures_total").increment(1);
                let delay = crate::resilience::backoff(
                    failures,
                    Duration::from_millis(100),
                    Duration::from_secs(2),
                )
                .max(Duration::from_millis(20));
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "outbox relay");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Publishes one batch of unsent rows (in id order, per topic) and marks them sent.
async fn relay_once(pool: &AnyPool, broker: &Broker) -> anyhow::Result<usize> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, topic, payload, traceparent FROM outbox WHERE sent = 0 ORDER BY id LIMIT $1",
    )
    .bind(BATCH)
    .fetch_all(pool)
    .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    // Consecutive rows of one topic go out as one batch; the order of rows is kept.
    let mut start = 0;
    while start < rows.len() {
        let topic = &rows[start].1;
        let end = rows[start..]
            .iter()
            .position(|r| &r.1 != topic)
            .map_or(rows.len(), |n| start + n);
        let messages: Vec<Message> = rows[start..end].iter().map(message).collect();
        broker.publish_all(topic, &messages).await?;
        start = end;
    }
    let placeholders: Vec<String> = (2..rows.len() + 2).map(|n| format!("${n}")).collect();
    let sql = format!(
        "UPDATE outbox SET sent = 1, sent_at = $1 WHERE id IN ({})",
        placeholders.join(", ")
    );
    let mut update = sqlx::query(&sql).bind(crate::now_rfc3339());
    for row in &rows {
        update = update.bind(&row.0);
    }
    update.execute(pool).await?;
    metrics::counter!("outbox_relayed_total").increment(rows.len() as u64);
    Ok(rows.len())
}

fn message((id, _, payload, traceparent): &Row) -> Message {
    let mut message = Message::new(payload.clone().into_bytes());
    message.id = id.clone();
    match traceparent {
        Some(traceparent) => message.with_traceparent(traceparent.clone()),
        None => message,
    }
}
