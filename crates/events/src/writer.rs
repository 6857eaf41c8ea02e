//! The one task that writes records: batches from concurrent requests are merged into large
//! transactions, so the database pays for one commit per burst instead of one per request.
//!
//! Each request validates its batch, hands it over and waits for the answer; the writer takes
//! whatever has queued up (to [`MAX_ROWS_PER_TRANSACTION`]), stores it in one transaction and
//! answers every request. If a merged transaction fails, each batch is retried alone, so one
//! request's failure never becomes another's: a batch is still stored whole or not at all.
//!
//! The writer keeps its own connection. On SQLite (one writer at a time anyway) that connection
//! runs with `synchronous = NORMAL`: in WAL mode a commit then waits for no fsync; a power cut
//! can lose the last commits but never corrupts the file, which suits telemetry.

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyPool, Connection};
use tokio::sync::{mpsc, oneshot};

use crate::export::Exporter;
use crate::record::Row;
use crate::store;

/// Rows one merged transaction may carry.
pub const MAX_ROWS_PER_TRANSACTION: usize = 20_000;
/// Batches waiting for the writer; beyond this, requests wait to hand theirs over.
const QUEUE: usize = 64;

struct Job {
    rows: Vec<Row>,
    done: oneshot::Sender<Result<(), String>>,
}

#[derive(Clone)]
pub struct Writer {
    queue: mpsc::Sender<Job>,
}

impl Writer {
    pub fn start(pool: AnyPool, sqlite: bool, export: Option<Exporter>) -> Self {
        let (queue, receiver) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, sqlite, export, receiver));
        Self { queue }
    }

    /// Stores one batch (all or nothing) and returns once it is committed.
    pub async fn write(&self, rows: Vec<Row>) -> Result<(), String> {
        let (done, answer) = oneshot::channel();
        self.queue
            .send(Job { rows, done })
            .await
            .map_err(|_| "the writer has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the writer has stopped".to_string())?
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
        tx.commit().await
    }
    .await;
    if result.is_err() {
        // A broken connection is replaced on the next write.
        *connection = None;
    }
    result
}

async fn run(
    pool: AnyPool,
    sqlite: bool,
    export: Option<Exporter>,
    mut receiver: mpsc::Receiver<Job>,
) {
    let mut connection = None;
    while let Some(first) = receiver.recv().await {
        let mut rows = first.rows.len();
        let mut jobs = vec![first];
        while rows < MAX_ROWS_PER_TRANSACTION {
            match receiver.try_recv() {
                Ok(job) => {
                    rows += job.rows.len();
                    jobs.push(job);
                }
                Err(_) => break,
            }
        }
        let batches: Vec<&[Row]> = jobs.iter().map(|j| j.rows.as_slice()).collect();
        let merged = store_all(&mut connection, &pool, sqlite, &batches).await;
        let results: Vec<Result<(), String>> = match merged {
            Ok(()) => jobs.iter().map(|_| Ok(())).collect(),
            Err(error) if jobs.len() == 1 => vec![Err(error.to_string())],
            Err(_) => {
                let mut each = Vec::with_capacity(jobs.len());
                for job in &jobs {
                    let alone = store_all(&mut connection, &pool, sqlite, &[&job.rows]).await;
                    each.push(alone.map_err(|e| e.to_string()));
                }
                each
            }
        };
        for (job, result) in jobs.into_iter().zip(results) {
            if result.is_ok() {
                if let Some(export) = &export {
                    export.offer(&job.rows);
                }
            } else if let Err(error) = &result {
                tracing::warn!(%error, records = job.rows.len(), "storing a batch failed");
            }
            let _ = job.done.send(result);
        }
    }
}
