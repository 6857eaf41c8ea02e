//! Keeps the sink's SQLite write-ahead log bounded while it ingests and is read at the same time.
//!
//! SQLite's own auto-checkpoint is PASSIVE: it copies what it can into the database but never
//! waits, and the WAL file only starts over from its beginning when no reader still holds a
//! snapshot that needs it. Under load the sink always has a reader (the live snapshot every
//! second, topology and stats queries, retention), so the WAL grew without end: 3.9 GB beside a
//! 295 MB database (bench/README.md, `sink-load.sh`).
//!
//! So the writer's own thread runs `PRAGMA wal_checkpoint(TRUNCATE)` on its own connection,
//! between transactions: once a second while the WAL holds anything, and at once when it passes
//! half of `STRATUS_EVENTS_WAL_LIMIT`. On the writer's thread because a checkpoint from another
//! connection must first win the write lock from a writer that takes it back the moment it lets
//! go: under load it lost for seconds while the WAL grew by hundreds of megabytes. A ticker
//! thread wakes the writer when no records come, so the WAL is also cut after a load ends.
//!
//! TRUNCATE copies the log into the database, waits for readers of older snapshots to finish
//! (new readers read the database, not the log, once it is copied) and cuts the file to zero
//! bytes. While it waits no record is stored, so a short busy timeout bounds it: if the readers
//! hold on it gives up (`result="busy"`, having copied what it could) and tries again after the
//! next transaction; past the limit it waits longer, since the disk budget is a promise. Long
//! reads are what hold it up: queries read few rows, and the rebuild on start reads by pages.
//!
//! `/metrics`: `events_wal_bytes` (the file's size, each tick) and
//! `events_wal_checkpoints_total{result="done|busy"}`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::Connection;

/// How often the writer is woken to look at the WAL when no records come.
pub const TICK: Duration = Duration::from_millis(100);
/// A WAL that holds anything is checkpointed at least this often.
const EVERY: Duration = Duration::from_secs(1);
/// The longest a checkpoint waits for the writer and for readers of older snapshots; it holds
/// the write lock while it waits, so this is also the longest it delays ingest.
const BUSY_TIMEOUT: Duration = Duration::from_millis(250);
/// The same once the WAL is past its limit: disk use is a promise, so ingest waits longer
/// (its requests queue; the writer's own busy timeout is 5 s) for the readers to let go.
const BUSY_TIMEOUT_PAST_LIMIT: Duration = Duration::from_secs(2);

/// What one checkpoint did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The whole log was copied into the database and the file cut to zero bytes.
    Done,
    /// A reader or the writer held on past the busy timeout; part of the log may be copied.
    Busy,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Done => "done",
            Outcome::Busy => "busy",
        }
    }
}

/// The `-wal` file beside a SQLite database file.
pub fn wal_of(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// The WAL's size in bytes (0 when there is none).
pub fn wal_bytes(database: &Path) -> u64 {
    std::fs::metadata(wal_of(database))
        .map(|m| m.len())
        .unwrap_or(0)
}

/// Parses a size in bytes: `67108864`, `64MiB`, `64M`, `512KiB`, `1GiB` (binary units).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (like 64MiB)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => return Err(format!("{other:?} is not a size unit (B, KiB, MiB, GiB)")),
    };
    number
        .checked_mul(scale)
        .filter(|bytes| *bytes > 0)
        .ok_or_else(|| format!("{text:?} is not a size above zero that fits in 64 bits"))
}

/// When and how the writer's connection checkpoints its database's WAL.
pub struct WalKeeper {
    database: PathBuf,
    limit: u64,
    last: Instant,
    /// The last checkpoint was busy: below the limit, the next waits for the second to pass
    /// rather than stalling every transaction for the busy timeout.
    busy: bool,
}

impl WalKeeper {
    pub fn new(database: &Path, limit: u64) -> Self {
        // Both results are on /metrics from the start, so a dashboard sees 0, not nothing.
        for outcome in [Outcome::Done, Outcome::Busy] {
            metrics::counter!("events_wal_checkpoints_total", "result" => outcome.label())
                .increment(0);
        }
        metrics::gauge!("events_wal_bytes").set(wal_bytes(database) as f64);
        Self {
            database: database.to_owned(),
            limit,
            last: Instant::now(),
            busy: false,
        }
    }

    /// Called by the writer between transactions (and on each tick): checkpoints when the WAL
    /// is past the limit, past half of it (unless the last checkpoint was busy), or holds
    /// anything and was not checkpointed for a second.
    pub fn after_write(&mut self, connection: &Connection, write_timeout: Duration) {
        let bytes = wal_bytes(&self.database);
        metrics::gauge!("events_wal_bytes").set(bytes as f64);
        let past_limit = bytes >= self.limit;
        let past_half = bytes >= self.limit / 2 && !self.busy;
        let due = bytes > 0 && self.last.elapsed() >= EVERY;
        if !(past_limit || past_half || due) {
            return;
        }
        self.last = Instant::now();
        let patience = if bytes >= self.limit {
            BUSY_TIMEOUT_PAST_LIMIT
        } else {
            BUSY_TIMEOUT
        };
        let outcome = checkpoint(connection, patience);
        self.busy = !matches!(outcome, Ok(Outcome::Done));
        match outcome {
            Ok(Outcome::Done) => {}
            Ok(Outcome::Busy) => tracing::debug!(bytes, "WAL checkpoint busy: readers held on"),
            Err(error) => tracing::warn!(%error, bytes, "WAL checkpoint failed"),
        }
        if let Err(error) = connection.busy_timeout(write_timeout) {
            tracing::warn!(%error, "restoring the writer's busy timeout failed");
        }
        metrics::gauge!("events_wal_bytes").set(wal_bytes(&self.database) as f64);
    }
}

/// One `wal_checkpoint(TRUNCATE)` waiting at most `patience`, counted on `/metrics`.
pub fn checkpoint(connection: &Connection, patience: Duration) -> rusqlite::Result<Outcome> {
    connection.busy_timeout(patience)?;
    // The pragma answers (busy, frames in the log, frames copied); a busy checkpoint is an
    // answer, not an error, unless the lock could not be had at all.
    let busy = match connection.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
        row.get::<_, i64>(0)
    }) {
        Ok(busy) => busy != 0,
        Err(rusqlite::Error::SqliteFailure(error, _))
            if error.code == rusqlite::ErrorCode::DatabaseBusy =>
        {
            true
        }
        Err(error) => return Err(error),
    };
    let outcome = if busy { Outcome::Busy } else { Outcome::Done };
    metrics::counter!("events_wal_checkpoints_total", "result" => outcome.label()).increment(1);
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store;
    use crate::writer::tests::batch;
    use crate::writer::{Target, Writer};
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;

    const LIMIT: u64 = 16 << 20;

    /// Writes continuously for a few seconds while readers, overlapping so that one always
    /// holds a snapshot, scan the table: the WAL stays within the limit plus one checkpoint's
    /// worth, is cut to nothing once the writes stop, and every acknowledged record is stored.
    /// (Without the checkpointer the same load leaves a WAL of tens of megabytes.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_wal_stays_bounded_under_a_continuous_read_load() {
        let dir = tempfile::tempdir().unwrap();
        let url = stratus_kit::db::url_for("events", None, dir.path()).unwrap();
        let (pool, _) = stratus_kit::db::open(&url, store::MIGRATIONS)
            .await
            .unwrap();
        let file = crate::sqlite::file_of(&url).unwrap();
        let target = Target::SqliteFile {
            path: file.clone(),
            wal_limit: LIMIT,
        };
        let writer = Writer::start(target, crate::export::Exports::default(), None).unwrap();

        let stop = Arc::new(AtomicBool::new(false));
        let reads = Arc::new(AtomicU64::new(0));
        let mut readers = Vec::new();
        for _ in 0..3 {
            let (pool, stop, reads) = (pool.clone(), stop.clone(), reads.clone());
            readers.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    // The rebuild's read on start, and as long as a query gets: 20,000 rows.
                    store::page(&pool, 0, i64::MAX, 0, 20_000).await.unwrap();
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }

        let started = Instant::now();
        let (mut written, mut largest, mut tag) = (0i64, 0u64, 0usize);
        // About the load: 30,000 records a second, in batches of 1,000.
        let mut pace = tokio::time::interval(Duration::from_millis(33));
        while started.elapsed() < Duration::from_secs(4) {
            pace.tick().await;
            let rows = batch(1000, tag);
            tag += 1;
            writer.write(rows).await.unwrap();
            written += 1000;
            largest = largest.max(wal_bytes(&file));
        }
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            reader.await.unwrap();
        }
        // Shown with --nocapture: what the checkpoints cost ingest, and how near the bound it was.
        eprintln!("written {written}, the WAL at most {largest} bytes");
        assert!(
            reads.load(Ordering::Relaxed) > 10,
            "the readers hardly read"
        );
        assert!(written > 10_000, "the writer hardly wrote: {written}");
        // One checkpoint's worth: what is written between two ticks and while a checkpoint
        // waits on a busy reader.
        assert!(
            largest <= 2 * LIMIT,
            "the WAL reached {largest} bytes with a limit of {LIMIT}"
        );

        let deadline = Instant::now() + Duration::from_secs(5);
        while wal_bytes(&file) > 0 {
            assert!(
                Instant::now() < deadline,
                "the WAL was not truncated after the writes: {} bytes",
                wal_bytes(&file)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(store::count(&pool).await.unwrap(), written);
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("64MiB"), Ok(64 << 20));
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_bytes("1gib"), Ok(1 << 30));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert!(parse_bytes("0").is_err());
        assert!(parse_bytes("MiB").is_err());
        assert!(parse_bytes("64 parsecs").is_err());
        assert!(parse_bytes("99999999999GiB").is_err());
    }

    #[test]
    fn the_wal_sits_beside_the_database() {
        assert_eq!(
            wal_of(Path::new("/data/events.db")),
            PathBuf::from("/data/events.db-wal")
        );
    }
}
