//! The one writer: batches from concurrent requests are merged into large transactions, so the
//! database pays for one commit per burst instead of one per request.
//!
//! Each request validates its batch, hands the whole batch over through a bounded channel and
//! waits for the answer; the writer takes whatever has queued up (to
//! [`MAX_ROWS_PER_TRANSACTION`]), stores it in one transaction and answers every request, so a
//! 202 means committed. If a merged transaction fails, each batch is retried alone, so one
//! request's failure never becomes another's: a batch is still stored whole or not at all.
//!
//! SQLite files are written by [`crate::sqlite::SqliteWriter`] on a thread of its own (prepared
//! statement, no async driver in between); PostgreSQL (and an in-memory SQLite) through the sqlx
//! pool with multi-row `INSERT`s ([`store::insert_into`]).
//!
//! The writer also runs the pruner's deletions ([`Writer::delete`]): they wait on a list of
//! their own, not in the queue of batches, and the writer runs what is there after each of its
//! transactions, so a deletion waits for one transaction at most however busy ingest is
//! (crate::deletion).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyPool, Connection};
use tokio::sync::{mpsc, oneshot};

use crate::aggregate::Aggregates;
use crate::checkpoint::{self, WalKeeper};
use crate::deletion::Deletion;
use crate::export::Exports;
use crate::log_line::LogLine;
use crate::log_tail::Tail;
use crate::record::Row;
use crate::sqlite::{SqliteWriter, WRITE_TIMEOUT};
use crate::store;

/// Rows one merged transaction may carry.
pub const MAX_ROWS_PER_TRANSACTION: usize = 20_000;
/// Batches waiting for the writer; beyond this, requests wait to hand theirs over.
const QUEUE: usize = 64;

/// One request's batch: event records, or log lines (crate::log_store).
struct Job {
    rows: Vec<Row>,
    logs: Vec<LogLine>,
    done: oneshot::Sender<Result<(), String>>,
}

/// A deletion of the pruner's, answered with the records it deleted.
struct Delete {
    deletion: Deletion,
    done: oneshot::Sender<Result<u64, String>>,
}

/// The pruner's deletions waiting for the writer.
type Deletions = Arc<Mutex<VecDeque<Delete>>>;

fn waiting(deletions: &Deletions) -> VecDeque<Delete> {
    std::mem::take(&mut *deletions.lock().unwrap_or_else(|e| e.into_inner()))
}

/// What the writer is handed.
enum Message {
    Store(Job),
    /// Wakes the writer: to look after its WAL when no records come (crate::checkpoint), or to
    /// run a deletion.
    Tick,
}

#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Message>,
    deletions: Deletions,
    /// Every committed batch of log lines, for `GET /v1/logs/stream`.
    tail: Tail,
}

/// Why [`Writer::write_within`] did not store a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteError {
    /// No room in the writer's queue in time: nothing stored.
    Busy,
    Failed(String),
}

/// Where the writer stores.
pub enum Target {
    /// A SQLite database file, written by a connection of the writer's own, which also keeps
    /// the file's WAL near `wal_limit` bytes.
    SqliteFile { path: PathBuf, wal_limit: u64 },
    /// The pool (PostgreSQL, or an in-memory SQLite only the pool can see).
    Pool { pool: AnyPool, sqlite: bool },
}

impl Writer {
    /// `aggregates`, if any, are fed every committed batch, and `export`'s exporters, if any,
    /// its spans and its log lines.
    pub fn start(
        target: Target,
        export: Exports,
        aggregates: Option<Aggregates>,
    ) -> anyhow::Result<Self> {
        let tail = Tail::default();
        let after = After {
            export,
            aggregates,
            tail: tail.clone(),
        };
        let (queue, receiver) = mpsc::channel(QUEUE);
        let deletions = Deletions::default();
        let mine = deletions.clone();
        match target {
            Target::SqliteFile { path, wal_limit } => {
                // Open once here, so a file that cannot be written fails start-up clearly.
                let writer = SqliteWriter::open(&path).map_err(|error| {
                    anyhow::anyhow!("opening {} for writing: {error}", path.display())
                })?;
                let keeper = WalKeeper::new(&path, wal_limit);
                std::thread::Builder::new()
                    .name("events-writer".into())
                    .spawn(move || run_sqlite(path, writer, keeper, after, receiver, mine))?;
                // A full queue means the writer is awake anyway; a closed one, that it stopped.
                let ticks = queue.clone();
                std::thread::Builder::new()
                    .name("events-wal-tick".into())
                    .spawn(move || loop {
                        std::thread::sleep(checkpoint::TICK);
                        if let Err(mpsc::error::TrySendError::Closed(_)) =
                            ticks.try_send(Message::Tick)
                        {
                            return;
                        }
                    })?;
            }
            Target::Pool { pool, sqlite } => {
                tokio::spawn(run_pool(pool, sqlite, after, receiver, mine));
            }
        }
        Ok(Self {
            queue,
            deletions,
            tail,
        })
    }

    /// The live tail of committed log lines.
    pub fn tail(&self) -> &Tail {
        &self.tail
    }

    /// Runs one of the pruner's deletions between the writer's transactions; the records it
    /// deleted.
    pub async fn delete(&self, deletion: Deletion) -> Result<u64, String> {
        let (done, answer) = oneshot::channel();
        self.deletions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back(Delete { deletion, done });
        // Wakes an idle writer; a busy one (its queue full) looks at the list after its
        // transaction anyway.
        if let Err(mpsc::error::TrySendError::Closed(_)) = self.queue.try_send(Message::Tick) {
            return Err("the writer has stopped".to_string());
        }
        answer
            .await
            .map_err(|_| "the writer has stopped".to_string())?
    }

    /// Stores one batch (all or nothing) and returns once it is committed.
    pub async fn write(&self, rows: Vec<Row>) -> Result<(), String> {
        self.store(rows, Vec::new()).await
    }

    /// [`Writer::write`] for a batch of a reporter that cannot wait long (its POST times out
    /// after 2 s): if the writer's queue has no room within `wait`, the batch is refused as
    /// [`WriteError::Busy`], nothing stored, so the sink can answer 503 and the reporter knows
    /// for certain the batch was not stored and folds it into its summary (kit::fold) instead
    /// of timing out, unsure whether it was. Once handed over, the batch is stored however long
    /// that takes.
    pub async fn write_within(
        &self,
        rows: Vec<Row>,
        wait: std::time::Duration,
    ) -> Result<(), WriteError> {
        let (done, answer) = oneshot::channel();
        let job = Message::Store(Job {
            rows,
            logs: Vec::new(),
            done,
        });
        match self.queue.send_timeout(job, wait).await {
            Ok(()) => {}
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => return Err(WriteError::Busy),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => {
                return Err(WriteError::Failed("the writer has stopped".into()))
            }
        }
        answer
            .await
            .map_err(|_| WriteError::Failed("the writer has stopped".into()))?
            .map_err(WriteError::Failed)
    }

    /// Stores one batch of log lines (all or nothing), in the same transactions as records.
    pub async fn write_logs(&self, logs: Vec<LogLine>) -> Result<(), String> {
        self.store(Vec::new(), logs).await
    }

    async fn store(&self, rows: Vec<Row>, logs: Vec<LogLine>) -> Result<(), String> {
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Message::Store(Job { rows, logs, done }))
            .await
            .map_err(|_| "the writer has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the writer has stopped".to_string())?
    }
}

/// The first job and whatever else is queued, up to [`MAX_ROWS_PER_TRANSACTION`] rows (ticks
/// in between are dropped: the writer looks after its WAL and its deletions after every
/// transaction anyway).
fn gather(first: Job, receiver: &mut mpsc::Receiver<Message>) -> Vec<Job> {
    let mut rows = first.rows.len() + first.logs.len();
    let mut jobs = vec![first];
    while rows < MAX_ROWS_PER_TRANSACTION {
        match receiver.try_recv() {
            Ok(Message::Store(job)) => {
                rows += job.rows.len() + job.logs.len();
                jobs.push(job);
            }
            Ok(Message::Tick) => {}
            Err(_) => break,
        }
    }
    jobs
}

/// Who is handed each committed batch.
struct After {
    export: Exports,
    aggregates: Option<Aggregates>,
    tail: Tail,
}

/// Answers every request, and hands what was stored to the aggregates, the live tail and the
/// exporters (which queue it without waiting, crate::export).
fn answer(jobs: Vec<Job>, results: Vec<Result<(), String>>, after: &After) {
    for (Job { rows, logs, done }, result) in jobs.into_iter().zip(results) {
        match &result {
            // Log lines feed neither the stats nor the span export: the live tail and the
            // log export.
            Ok(()) if rows.is_empty() => {
                after.tail.publish(&logs);
                if let Some(export) = &after.export.logs {
                    export.offer(logs);
                }
            }
            Ok(()) => {
                if let Some(aggregates) = &after.aggregates {
                    aggregates.add(&rows);
                }
                if let Some(export) = &after.export.spans {
                    export.offer(rows);
                }
            }
            Err(error) => {
                tracing::warn!(%error, records = rows.len(), log_lines = logs.len(), "storing a batch failed");
            }
        }
        let _ = done.send(result);
    }
}

/// Stores some batches in one transaction; a failed connection is reopened next time.
fn store_sqlite(
    writer: &mut Option<SqliteWriter>,
    path: &Path,
    batches: &[&[Row]],
    logs: &[&[LogLine]],
) -> Result<(), String> {
    let mut current = match writer.take() {
        Some(current) => current,
        None => SqliteWriter::open(path).map_err(|e| e.to_string())?,
    };
    let result = current.store(batches, logs).map_err(|e| e.to_string());
    *writer = Some(current);
    result
}

fn run_sqlite(
    path: PathBuf,
    writer: SqliteWriter,
    mut keeper: WalKeeper,
    after: After,
    mut receiver: mpsc::Receiver<Message>,
    deletions: Deletions,
) {
    let mut writer = Some(writer);
    while let Some(message) = receiver.blocking_recv() {
        if let Message::Store(first) = message {
            let jobs = gather(first, &mut receiver);
            let batches: Vec<&[Row]> = jobs.iter().map(|j| j.rows.as_slice()).collect();
            let logs: Vec<&[LogLine]> = jobs.iter().map(|j| j.logs.as_slice()).collect();
            let results = match store_sqlite(&mut writer, &path, &batches, &logs) {
                Ok(()) => jobs.iter().map(|_| Ok(())).collect(),
                Err(error) if jobs.len() == 1 => vec![Err(error)],
                Err(_) => batches
                    .iter()
                    .zip(&logs)
                    .map(|(rows, lines)| store_sqlite(&mut writer, &path, &[*rows], &[*lines]))
                    .collect(),
            };
            answer(jobs, results, &after);
        }
        if let Some(current) = &writer {
            keeper.after_write(current.connection(), WRITE_TIMEOUT);
        }
        for Delete { deletion, done } in waiting(&deletions) {
            let result = match &writer {
                Some(current) => deletion
                    .run_on(current.connection())
                    .map_err(|e| e.to_string()),
                None => Err("the database is not open for writing".to_string()),
            };
            let _ = done.send(result);
            if let Some(current) = &writer {
                keeper.after_write(current.connection(), WRITE_TIMEOUT);
            }
        }
    }
}

async fn connect(pool: &AnyPool, sqlite: bool) -> Result<PoolConnection<Any>, sqlx::Error> {
    let mut connection = pool.acquire().await?;
    if sqlite {
        sqlx::query("PRAGMA synchronous = NORMAL")
            .execute(&mut *connection)
            .await?;
    }
    Ok(connection)
}

async fn store_all(
    connection: &mut Option<PoolConnection<Any>>,
    pool: &AnyPool,
    sqlite: bool,
    batches: &[&[Row]],
    logs: &[&[LogLine]],
) -> Result<(), sqlx::Error> {
    if connection.is_none() {
        *connection = Some(connect(pool, sqlite).await?);
    }
    let Some(conn) = connection.as_mut() else {
        return Err(sqlx::Error::PoolClosed);
    };
    let result = async {
        let mut tx = conn.begin().await?;
        for rows in batches {
            store::insert_into(&mut tx, rows).await?;
        }
        for lines in logs {
            crate::log_store::insert_into(&mut tx, lines).await?;
        }
        tx.commit().await
    }
    .await;
    if result.is_err() {
        // A broken connection is replaced on the next write.
        *connection = None;
    }
    result
}

async fn run_pool(
    pool: AnyPool,
    sqlite: bool,
    after: After,
    mut receiver: mpsc::Receiver<Message>,
    deletions: Deletions,
) {
    let mut connection = None;
    while let Some(message) = receiver.recv().await {
        if let Message::Store(first) = message {
            store_gathered(first, &mut receiver, &mut connection, &pool, sqlite, &after).await;
        }
        for Delete { deletion, done } in waiting(&deletions) {
            let _ = done.send(deletion.run_on_pool(&pool).await.map_err(|e| e.to_string()));
        }
    }
}

/// The pool writer's transaction: the first job and what is queued behind it.
async fn store_gathered(
    first: Job,
    receiver: &mut mpsc::Receiver<Message>,
    connection: &mut Option<PoolConnection<Any>>,
    pool: &AnyPool,
    sqlite: bool,
    after: &After,
) {
    let jobs = gather(first, receiver);
    let batches: Vec<&[Row]> = jobs.iter().map(|j| j.rows.as_slice()).collect();
    let logs: Vec<&[LogLine]> = jobs.iter().map(|j| j.logs.as_slice()).collect();
    let merged = store_all(connection, pool, sqlite, &batches, &logs).await;
    let results: Vec<Result<(), String>> = match merged {
        Ok(()) => jobs.iter().map(|_| Ok(())).collect(),
        Err(error) if jobs.len() == 1 => vec![Err(error.to_string())],
        Err(_) => {
            let mut each = Vec::with_capacity(jobs.len());
            for (rows, lines) in batches.iter().zip(&logs) {
                let alone = store_all(connection, pool, sqlite, &[*rows], &[*lines]).await;
                each.push(alone.map_err(|e| e.to_string()));
            }
            each
        }
    };
    answer(jobs, results, after);
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::record::tests::record;
    use crate::record::validate;

    /// `n` valid records of trace pairs (every second one a child), tagged apart by `tag`.
    pub(crate) fn batch(n: usize, tag: usize) -> Vec<Row> {
        let base = validate(record()).unwrap();
        (0..n)
            .map(|i| {
                let mut r = base.clone();
                r.trace_id = format!("{:016x}{:016x}", tag + 1, i / 2 + 1);
                r.span_id = format!("{:016x}", i + 1);
                r.started_us += i as i64;
                r.parent_span_id = (i % 2 == 1).then(|| format!("{i:016x}"));
                r.cache = None;
                r
            })
            .collect()
    }

    /// A writer on a new SQLite file, and a pool on the same file to read it back.
    async fn file_writer() -> (tempfile::TempDir, AnyPool, Writer) {
        let dir = tempfile::tempdir().unwrap();
        let url = stratus_kit::db::url_for("events", None, dir.path()).unwrap();
        let (pool, _) = stratus_kit::db::open(&url, store::MIGRATIONS)
            .await
            .unwrap();
        let file = crate::sqlite::file_of(&url).unwrap();
        let target = Target::SqliteFile {
            path: file,
            wal_limit: 64 << 20,
        };
        (
            dir,
            pool,
            Writer::start(target, Exports::default(), None).unwrap(),
        )
    }

    /// A writer whose queue stays full refuses a batch after the wait, storing nothing; one with
    /// room takes it.
    #[tokio::test]
    async fn a_full_queue_refuses_a_batch_in_time() {
        // A writer nobody runs: its queue fills and stays full.
        let (queue, mut receiver) = mpsc::channel(QUEUE);
        let writer = Writer {
            queue,
            deletions: Deletions::default(),
            tail: Tail::default(),
        };
        for _ in 0..QUEUE {
            writer.queue.try_send(Message::Tick).unwrap();
        }
        let wait = std::time::Duration::from_millis(50);
        let started = std::time::Instant::now();
        assert_eq!(
            writer.write_within(batch(3, 0), wait).await,
            Err(WriteError::Busy)
        );
        assert!(started.elapsed() >= wait);
        // Room again: the batch is handed over, and answered once stored.
        let _ = receiver.recv().await;
        let answered = tokio::spawn({
            let writer = writer.clone();
            async move { writer.write_within(batch(3, 0), wait).await }
        });
        let job = loop {
            match receiver.recv().await {
                Some(Message::Store(job)) => break job,
                Some(_) => continue,
                None => panic!("the queue closed"),
            }
        };
        assert_eq!(job.rows.len(), 3);
        job.done.send(Ok(())).unwrap();
        assert_eq!(answered.await.unwrap(), Ok(()));
    }

    /// Concurrent batches through the SQLite file writer: every acknowledged batch is in the
    /// database, whole, with every field as sent.
    #[tokio::test]
    async fn every_acknowledged_batch_is_stored_whole() {
        let (_dir, pool, writer) = file_writer().await;
        let mut tasks = Vec::new();
        for tag in 0..20 {
            let writer = writer.clone();
            tasks.push(tokio::spawn(
                async move { writer.write(batch(500, tag)).await },
            ));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(store::count(&pool).await.unwrap(), 10_000);
        let trace = store::trace(&pool, &format!("{:016x}{:016x}", 8, 3))
            .await
            .unwrap();
        assert_eq!(trace, batch(500, 7)[4..6].to_vec());
    }

    /// The pruner's deletions run on the writer between its transactions: under a stream of
    /// writes each is answered in its turn, and what it deleted is gone, whole traces only.
    #[tokio::test]
    async fn deletions_take_their_turn_between_transactions() {
        let (_dir, pool, writer) = file_writer().await;
        writer.write(batch(500, 1_000)).await.unwrap();
        let writes = {
            let writer = writer.clone();
            tokio::spawn(async move {
                for tag in 0..40 {
                    writer.write(batch(500, tag)).await.unwrap();
                }
            })
        };
        let mut deleted = 0;
        for _ in 0..10 {
            deleted += writer.delete(Deletion::Oldest).await.unwrap();
        }
        writes.await.unwrap();
        assert!(deleted >= 500, "deleted {deleted}");
        assert_eq!(deleted % 2, 0, "whole traces (pairs) only");
        assert_eq!(store::count(&pool).await.unwrap(), 20_500 - deleted as i64);
    }

    /// The pool writer (PostgreSQL's path; here on a SQLite file) stores the same way.
    #[tokio::test]
    async fn the_pool_writer_stores_too() {
        let dir = tempfile::tempdir().unwrap();
        let url = stratus_kit::db::url_for("events", None, dir.path()).unwrap();
        let (pool, _) = stratus_kit::db::open(&url, store::MIGRATIONS)
            .await
            .unwrap();
        let writer = Writer::start(
            Target::Pool {
                pool: pool.clone(),
                sqlite: true,
            },
            Exports::default(),
            None,
        )
        .unwrap();
        writer.write(batch(1200, 0)).await.unwrap();
        writer.write(batch(3, 1)).await.unwrap();
        assert_eq!(store::count(&pool).await.unwrap(), 1203);
    }
}
