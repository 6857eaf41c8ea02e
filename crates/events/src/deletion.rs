//! The pruner's deletions, and who runs them.
//!
//! On a SQLite file the one writer thread holds the database's write lock for a transaction
//! after another while records pour in, and SQLite's lock is not fair: a deletion from another
//! connection waits in its busy handler and finds the lock free only by luck. Measured under
//! about 18,000 records a second, each pruning statement waited 1-2 s and the pruner deleted a
//! few hundred records a second, so the database passed its budget threefold in two minutes.
//! So on a SQLite file the pruner hands its deletions to the writer ([`crate::writer::Writer`]),
//! which runs them between its own transactions in the order they were queued: pruning gets its
//! turn however busy ingest is. PostgreSQL locks rows, not the database: its deletions run on
//! the pool.

use std::sync::Arc;

use sqlx::AnyPool;

use crate::writer::Writer;

/// Records one statement may select (it deletes their traces' every record): few, since every
/// deletion goes to the WAL and holds the writer while it runs.
pub const PRUNE_TRACES: i64 = 500;

/// One pruning statement. Each deletes whole traces, never part of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deletion {
    /// The traces of up to [`PRUNE_TRACES`] records started before `before_us` (past the
    /// retention): a trace goes when its oldest record does.
    Expired { before_us: i64 },
    /// Every trace that has a record with an id in `after_id + 1 ..= up_to_id` whose sample
    /// value is at or above `threshold` (or that has none: stored before sampling), unless one
    /// of its records is an error or took at least `slow_us` (a kept trace).
    Sampled {
        after_id: i64,
        up_to_id: i64,
        threshold: i64,
        slow_us: i64,
    },
    /// The last resort of a budget that kept traces alone overflow: the traces of the oldest
    /// [`PRUNE_TRACES`] records, kept or not.
    Oldest,
    /// Up to [`PRUNE_LOG_LINES`] log lines older than `before_us` (past the retention).
    LogsExpired { before_us: i64 },
    /// Over the budget: up to `lines` of the oldest log lines older than the oldest event
    /// record (all of them, oldest first, when there is none). Logs and traces so keep
    /// about the same window: a line never outlives the traces the budget has already let go,
    /// and traces are not sampled away to keep older lines.
    LogsBeforeEvents { lines: i64 },
}

/// The most log lines one statement deletes: lines are not grouped like a trace's records, so each
/// statement takes a fixed number, oldest first.
pub const PRUNE_LOG_LINES: i64 = 5_000;

impl Deletion {
    /// The statement, with `$1`, `$2`... in the order of [`Deletion::params`] (both sqlx's
    /// drivers and SQLite's own number them so).
    pub fn sql(&self) -> String {
        match self {
            Deletion::Expired { .. } => format!(
                "DELETE FROM events WHERE trace_id IN (SELECT trace_id FROM events \
                 WHERE started_us < $1 ORDER BY started_us LIMIT {PRUNE_TRACES})"
            ),
            Deletion::Sampled { .. } => "DELETE FROM events WHERE trace_id IN (SELECT c.trace_id \
                 FROM events c WHERE c.id > $1 AND c.id <= $2 \
                 AND (c.sample IS NULL OR c.sample >= $3) \
                 AND NOT EXISTS (SELECT 1 FROM events k WHERE k.trace_id = c.trace_id \
                 AND (k.ok = 0 OR k.status >= 500 OR k.duration_us >= $4)))"
                .to_string(),
            Deletion::Oldest => format!(
                "DELETE FROM events WHERE trace_id IN (SELECT trace_id FROM events \
                 ORDER BY id LIMIT {PRUNE_TRACES})"
            ),
            Deletion::LogsExpired { .. } => format!(
                "DELETE FROM logs WHERE id IN (SELECT id FROM logs WHERE time_us < $1 \
                 ORDER BY time_us LIMIT {PRUNE_LOG_LINES})"
            ),
            Deletion::LogsBeforeEvents { lines } => format!(
                "DELETE FROM logs WHERE id IN (SELECT id FROM logs WHERE time_us < \
                 (SELECT COALESCE(MIN(started_us), {}) FROM events) \
                 ORDER BY time_us LIMIT {})",
                i64::MAX,
                (*lines).clamp(1, PRUNE_LOG_LINES)
            ),
        }
    }

    pub fn params(&self) -> Vec<i64> {
        match *self {
            Deletion::Expired { before_us } => vec![before_us],
            Deletion::Sampled {
                after_id,
                up_to_id,
                threshold,
                slow_us,
            } => vec![after_id, up_to_id, threshold, slow_us],
            Deletion::Oldest | Deletion::LogsBeforeEvents { .. } => Vec::new(),
            Deletion::LogsExpired { before_us } => vec![before_us],
        }
    }

    /// Runs it on the pool; the records deleted.
    pub async fn run_on_pool(&self, pool: &AnyPool) -> Result<u64, sqlx::Error> {
        let sql = self.sql();
        let mut query = sqlx::query(&sql);
        for value in self.params() {
            query = query.bind(value);
        }
        Ok(query.execute(pool).await?.rows_affected())
    }

    /// Runs it on a SQLite connection (the writer's); the records deleted.
    pub fn run_on(&self, connection: &rusqlite::Connection) -> rusqlite::Result<u64> {
        let deleted = connection.execute(&self.sql(), rusqlite::params_from_iter(self.params()))?;
        Ok(deleted as u64)
    }
}

/// Who runs the pruner's deletions.
#[derive(Clone)]
pub enum Deleter {
    /// The writer, between its transactions (a SQLite file).
    Writer(Writer),
    /// The pool (PostgreSQL, an in-memory SQLite), one deletion at a time: two deletions of
    /// neighbouring id ranges can share a trace, and on PostgreSQL two statements deleting the
    /// same rows in different orders deadlock (seen under `bench/sink-load.sh`).
    Pool(AnyPool, Arc<tokio::sync::Mutex<()>>),
}

#[derive(Debug, thiserror::Error)]
pub enum DeleteError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("the writer's deletion failed: {0}")]
    Writer(String),
}

impl Deleter {
    /// Runs `deletion`; the records deleted.
    pub async fn delete(&self, deletion: Deletion) -> Result<u64, DeleteError> {
        match self {
            Deleter::Writer(writer) => writer.delete(deletion).await.map_err(DeleteError::Writer),
            Deleter::Pool(pool, one_at_a_time) => {
                let _turn = one_at_a_time.lock().await;
                Ok(deletion.run_on_pool(pool).await?)
            }
        }
    }

    /// Deletions on the pool, one at a time.
    pub fn pool(pool: AnyPool) -> Self {
        Deleter::Pool(pool, Arc::default())
    }
}
