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

/// Sent outbox rows are kept this long (to look into), then deleted.
const KEEP_SENT: Duration = Duration::from_secs(3600);
/// Processed-message ids are kept longer than the broker keeps messages (7 days by default), so
/// any redelivery still finds its id.
const KEEP_PROCESSED: Duration = Duration::from_secs(8 * 24 * 3600);
/// How often old rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

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
    let mut pruned = tokio::time::Instant::now();
    loop {
        if pruned.elapsed() >= PRUNE_EVERY {
            pruned = tokio::time::Instant::now();
            if let Err(error) = prune(&pool).await {
                tracing::warn!(%error, "pruning the outbox");
            }
        }
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

/// Deletes sent outbox rows and processed-message ids past their keeping time.
async fn prune(pool: &AnyPool) -> Result<(), sqlx::Error> {
    let before = |age: Duration| {
        let at = time::OffsetDateTime::now_utc() - age;
        at.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    sqlx::query("DELETE FROM outbox WHERE sent = 1 AND sent_at < $1")
        .bind(before(KEEP_SENT))
        .execute(pool)
        .await?;
    sqlx::query("DELETE FROM processed_messages WHERE processed_at < $1")
        .bind(before(KEEP_PROCESSED))
        .execute(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{open, Migration};

    const SCHEMA: &[Migration] = &[Migration {
        version: 1,
        description: "outbox",
        sqlite: OUTBOX_SCHEMA,
        postgres: OUTBOX_SCHEMA,
    }];

    async fn setup(dir: &std::path::Path) -> (AnyPool, Broker) {
        let url = format!("sqlite://{}?mode=rwc", dir.join("service.db").display());
        let (pool, _) = open(&url, SCHEMA).await.unwrap();
        let broker_url = format!("sqlite://{}", dir.join("broker.db").display());
        let broker = Broker::connect(&broker_url, Default::default())
            .await
            .unwrap();
        (pool, broker)
    }

    #[tokio::test]
    async fn committed_events_are_published_once_and_rolled_back_ones_never() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, broker) = setup(dir.path()).await;
        let mut subscription = broker.subscribe("order.placed", "test").await.unwrap();
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

        let mut tx = pool.begin().await.unwrap();
        enqueue(&mut tx, "order.placed", &serde_json::json!({"n": 1}), None)
            .await
            .unwrap();
        tx.rollback().await.unwrap();
        let mut tx = pool.begin().await.unwrap();
        let id = enqueue(
            &mut tx,
            "order.placed",
            &serde_json::json!({"n": 2}),
            Some(traceparent),
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();

        let relay = Relay::start(pool.clone(), broker.clone());
        relay.wake();
        let delivery = tokio::time::timeout(Duration::from_secs(5), subscription.next())
            .await
            .expect("the committed event is published")
            .unwrap();
        assert_eq!(
            delivery.message.id, id,
            "the message id is the outbox row's"
        );
        assert_eq!(delivery.message.traceparent(), Some(traceparent));
        let body: serde_json::Value = delivery.message.decode().unwrap();
        assert_eq!(body["n"], 2);
        delivery.ack().await.unwrap();

        // Marked sent: nothing more comes, the rolled-back event least of all.
        let unsent: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE sent = 0")
            .fetch_one(&pool)
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        let mut unsent = unsent.0;
        while unsent > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            unsent = sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM outbox WHERE sent = 0")
                .fetch_one(&pool)
                .await
                .unwrap()
                .0;
        }
        assert_eq!(unsent, 0);
        let more = tokio::time::timeout(Duration::from_millis(500), subscription.next()).await;
        assert!(more.is_err(), "one event, published once");
    }

    #[tokio::test]
    async fn a_message_id_is_processed_once() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, _) = setup(dir.path()).await;
        let mut conn = pool.acquire().await.unwrap();
        assert!(mark_processed(&mut conn, "m-1", "t").await.unwrap());
        assert!(!mark_processed(&mut conn, "m-1", "t").await.unwrap());
        assert!(mark_processed(&mut conn, "m-2", "t").await.unwrap());
    }
}
