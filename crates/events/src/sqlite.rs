//! The SQLite writer: one connection of its own, on a thread of its own, with one prepared
//! `INSERT` run once per row inside one transaction per burst of batches.
//!
//! Why not sqlx here, as everywhere else: sqlx runs every statement on a worker thread it talks
//! to through channels, turns each argument into an owned value, and binds `$N` parameters by
//! looking each name up (SQLite's lookup is linear, so a statement of many rows costs quadratic
//! time). A prepared single-row statement executed in place costs a few microseconds a row, most
//! of it SQLite's own B-tree work, which is what lets the sink store well over 100,000 records
//! a second (bench/events.sh). Reads and the schema stay on the sqlx pool; SQLite serialises
//! this connection's writes with the pool's (retention) through its file lock and busy timeout.
//!
//! Durability: WAL with `synchronous = NORMAL`. A commit is in the WAL (and so survives the
//! process being killed) before the sink answers 202; only a power cut or an OS crash can lose the
//! last commits, never corrupt the file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};

use crate::log_line::LogLine;
use crate::record::Row;

const INSERT: &str = "INSERT INTO events (trace_id, span_id, parent_span_id, service, instance, \
    kind, name, method, status, ok, started_us, duration_us, retries, cache, topic, breaker, peer, \
    sample) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";

/// The database file a `sqlite:` URL names, or `None` for an in-memory database (which only the
/// pool's own connections can see, so it is written through the pool).
pub fn file_of(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" || url.contains("mode=memory") {
        return None;
    }
    Some(PathBuf::from(path))
}

/// How long a write waits for the database's lock (retention deletes through the pool).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SqliteWriter {
    connection: Connection,
}

impl SqliteWriter {
    /// Opens the (already migrated) database file for writing.
    pub fn open(path: &Path) -> rusqlite::Result<Self> {
        let connection = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.busy_timeout(WRITE_TIMEOUT)?;
        // journal_mode is WAL already (kit::db sets it, and it stays with the file). A 16 MiB page
        // cache keeps the hot end of the indexes in memory; the trace_id index's inserts land
        // anywhere in it, and what misses comes from the OS's cache of the file. It is the
        // sink's largest memory use: 64 MiB made the sink grow by half again as the database
        // filled (bench/README.md, soak).
        // No auto-checkpoint on commit: the writer runs TRUNCATE checkpoints between transactions
        // (crate::checkpoint), which PASSIVE ones would only duplicate.
        connection.execute_batch(
            "PRAGMA synchronous = NORMAL; PRAGMA cache_size = -16384; PRAGMA temp_store = MEMORY; \
             PRAGMA wal_autocheckpoint = 0;",
        )?;
        Ok(Self { connection })
    }

    /// The connection, for checkpoints between transactions.
    pub fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Stores every batch of records and of log lines in one transaction: all of them or none.
    pub fn store(&mut self, batches: &[&[Row]], logs: &[&[LogLine]]) -> rusqlite::Result<()> {
        // IMMEDIATE takes the write lock up front (waiting out the busy timeout), rather than
        // failing half-way when a reader holds the lock and another writer arrives.
        let tx = self
            .connection
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(INSERT)?;
            for row in batches.iter().flat_map(|rows| rows.iter()) {
                insert.execute(params![
                    row.trace_id,
                    row.span_id,
                    row.parent_span_id,
                    row.service,
                    row.instance,
                    row.kind,
                    row.name,
                    row.method,
                    row.status,
                    i64::from(row.ok),
                    row.started_us,
                    row.duration_us,
                    row.retries,
                    row.cache,
                    row.topic,
                    row.breaker,
                    row.peer,
                    crate::sample::of(&row.trace_id),
                ])?;
            }
        }
        let lines: Vec<&LogLine> = logs.iter().flat_map(|lines| lines.iter()).collect();
        crate::log_store::insert_sqlite(&tx, &lines)?;
        tx.commit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_files() {
        assert_eq!(
            file_of("sqlite:///data/events.db?mode=rwc"),
            Some(PathBuf::from("/data/events.db"))
        );
        assert_eq!(
            file_of("sqlite:events.db"),
            Some(PathBuf::from("events.db"))
        );
        assert_eq!(file_of("sqlite::memory:"), None);
        assert_eq!(file_of("sqlite://x.db?mode=memory&cache=shared"), None);
        assert_eq!(file_of("postgres://u@h/db"), None);
    }
}
