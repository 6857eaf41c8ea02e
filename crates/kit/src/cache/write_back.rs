//! Write-back: the fourth caching pattern. Writes land in memory and reach the database later,
//! in batches.
//!
//! Made for counters that change far more often than anyone needs them exact: a product's view
//! count goes up on every read, and one `UPDATE` per view would make every read a write.
//! [`WriteBack::add`] adds to an in-memory total per key (a map insert under a lock, no I/O); a
//! task hands the totals to the flush function every `every`, or as soon as `max_pending` keys are
//! waiting, and [`WriteBack::close`] flushes what is left on shutdown.
//!
//! The price is the pattern's usual one: increments not yet flushed are lost if the process dies
//! without a clean shutdown (at most `every` worth), and readers see the total as of the last
//! flush. A failed flush puts its batch back, so a database that is briefly down delays
//! increments without losing them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// When to flush.
#[derive(Debug, Clone, Copy)]
pub struct WriteBackSettings {
    /// Flush at least this often while anything is pending.
    pub every: Duration,
    /// Flush early once this many keys are pending.
    pub max_pending: usize,
}

impl Default for WriteBackSettings {
    fn default() -> Self {
        Self {
            every: Duration::from_secs(1),
            max_pending: 1_000,
        }
    }
}

/// Writes one batch of `(key, increment)` pairs to the database.
type Flush =
    Arc<dyn Fn(Vec<(String, i64)>) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync>;

/// Increments per key, buffered and flushed in batches. Cheap to clone.
#[derive(Clone)]
pub struct WriteBack {
    shared: Arc<Shared>,
    task: Arc<Mutex<Option<JoinHandle<()>>>>,
}

struct Shared {
    name: String,
    settings: WriteBackSettings,
    pending: Mutex<HashMap<String, i64>>,
    wake: Notify,
    closed: AtomicBool,
    flush: Flush,
}

impl WriteBack {
    /// Starts the flushing task (on the current tokio runtime). `name` labels the metrics.
    pub fn start<F>(name: &str, mut settings: WriteBackSettings, flush: F) -> Self
    where
        F: Fn(Vec<(String, i64)>) -> BoxFuture<'static, anyhow::Result<()>> + Send + Sync + 'static,
    {
        // A zero interval would spin; 10 ms is already a flush per hundred reads under load.
        settings.every = settings.every.max(Duration::from_millis(10));
        settings.max_pending = settings.max_pending.max(1);
        let shared = Arc::new(Shared {
            name: name.to_string(),
            settings,
            pending: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            flush: Arc::new(flush),
        });
        let task = tokio::spawn(run(shared.clone()));
        Self {
            shared,
            task: Arc::new(Mutex::new(Some(task))),
        }
    }

    /// Adds `by` to `key`'s pending total. Never waits for I/O.
    pub fn add(&self, key: &str, by: i64) {
        let waiting = {
            let mut pending = self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *pending.entry(key.to_string()).or_insert(0) += by;
            pending.len()
        };
        if waiting >= self.shared.settings.max_pending {
            self.shared.wake.notify_one();
        }
    }

    /// Keys waiting to be flushed.
    pub fn pending(&self) -> usize {
        self.shared
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Flushes now, whatever is pending.
    pub async fn flush(&self) {
        flush_once(&self.shared).await;
    }

    /// Stops the task and flushes what is left (call on shutdown).
    pub async fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.wake.notify_one();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        flush_once(&self.shared).await;
    }
}

async fn run(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(shared.settings.every) => {}
            _ = shared.wake.notified() => {}
        }
        flush_once(&shared).await;
        if shared.closed.load(Ordering::SeqCst) {
            return;
        }
    }
}

async fn flush_once(shared: &Shared) {
    let batch: Vec<(String, i64)> = {
        let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
        std::mem::take(&mut *pending).into_iter().collect()
    };
    if batch.is_empty() {
        return;
    }
    let keys = batch.len() as u64;
    match (shared.flush)(batch.clone()).await {
        Ok(()) => {
            metrics::counter!("cache_writeback_flushed_total", "cache" => shared.name.clone())
                .increment(keys);
        }
        Err(error) => {
            metrics::counter!("cache_writeback_errors_total", "cache" => shared.name.clone())
                .increment(1);
            tracing::warn!(cache = %shared.name, error = %format!("{error:#}"), keys, "write-back flush failed; keeping the batch for the next one");
            let mut pending = shared.pending.lock().unwrap_or_else(|p| p.into_inner());
            for (key, by) in batch {
                *pending.entry(key).or_insert(0) += by;
            }
        }
    }
}
