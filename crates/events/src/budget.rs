//! The sink's storage budget: what it holds stays within `STRATUS_EVENTS_BUDGET` bytes
//! (database and WAL together), by deleting whole traces it may sample out, oldest first.
//!
//! Every record is stored as it comes (the aggregates count it before anything is decided), and
//! sampling happens here, at prune time, a trace at a time: a trace that has an error or a slow
//! record is kept for the whole retention; any other is sampled out at the current rate when
//! its hash says so ([`crate::sample`]), and deleted, whole, when room is needed. Deciding late
//! is what keeps traces whole: an error that arrives a few seconds after its trace's first
//! records still finds them, because a trace is only prunable once its records arrived more
//! than [`DECISION_WINDOW`] ago (Jaeger's tail-based sampling waits the same way).
//!
//! Every [`TICK`] the pruner:
//! 1. deletes traces whose oldest record passed the retention (whole traces);
//! 2. measures the database's used bytes, `(page_count - freelist_count) * page_size` on SQLite
//!    (freed pages are reused before the file grows, so this is what the next records need
//!    room beside), and the WAL's file;
//! 3. over [`HIGH`] of the database's share of the budget, deletes the traces the current rate
//!    samples out, oldest first (from where the last pass stopped), until it is under [`LOW`]:
//!    if it runs out of decided traces first, it lowers the rate (in proportion, by 10% to
//!    half) and starts again from the oldest record; if it got under [`LOW`] with sampled-out
//!    traces still held, or the database is under [`RAISE_BELOW`], it raises the rate by 1%,
//!    so the rate settles where the traffic fits;
//! 4. if kept and not-yet-decided traces alone overflow the share at the lowest rate, deletes
//!    the oldest traces whatever they hold (`events_pruned_total{reason="budget"}`): the disk
//!    is the harder promise, since a full disk loses everything.
//!
//! The budget is shared: the WAL's limit is `min(STRATUS_EVENTS_WAL_LIMIT, budget / 8)`, and
//! twice that is set aside for it, since the checkpointer keeps it near the limit but a busy
//! reader can let it pass it by up to one checkpoint's worth (`crate::checkpoint`); the
//! database gets the rest. Deleted rows
//! free a page only when it empties or falls under a third full and is merged, so thinning old
//! records at a high rate frees little: the rate goes on down until pages free, and so settles
//! lower than rows alone would need (README: "How much it holds").
//!
//! On PostgreSQL a table does not shrink when rows go: a deleted row's space is kept for new
//! rows once a vacuum has marked it free. So the pruner vacuums the table after it deletes (at
//! most every [`VACUUM_EVERY`], instead of waiting for autovacuum's next round, up to a minute
//! away, while the flood extends the file), and counts the bytes in use as live rows times the
//! bytes a row took when the table last grew ([`PostgresRows`]); its WAL is the server's.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::AnyPool;

use crate::deletion::{DeleteError, Deleter, Deletion, PRUNE_LOG_LINES};
use crate::{checkpoint, sample, store};

/// How often the pruner measures and prunes.
pub const TICK: Duration = Duration::from_millis(250);
/// A trace is prunable only once its records arrived at least this long ago: late records of
/// the same trace (an error at its end, a slow caller's record) are still to come before it.
pub const DECISION_WINDOW: Duration = Duration::from_secs(5);
/// Past this share of the database's budget the rate goes down and sampled traces are pruned.
pub const HIGH: f64 = 0.9;
/// Pruning stops once the database is under this share.
pub const LOW: f64 = 0.75;
/// Under this share the rate goes up again.
pub const RAISE_BELOW: f64 = 0.6;
/// The lowest rate: below it, the budget is kept by deleting the oldest traces of any kind.
pub const MIN_RATE: f64 = 0.001;
/// Record ids one pruning statement looks at. Each statement's deletions go to the WAL
/// (index pages all over the file) and hold the writer while they run, so a statement is kept
/// small, and the pruner waits for a checkpoint between them when the WAL is past half its
/// limit; but each is also a turn of the writer's, so small enough is a few thousand: the
/// pruner must get through ids as fast as ingest makes them (about 20,000 a second).
const CHUNK_IDS: i64 = 4_000;
/// Chunks handed to the writer together (see [`Pruner::prune_sampled`]): their ids (32,000)
/// outnumber the rows of the writer's largest transaction (20,000), so a turn can prune more
/// than a turn stores. With 4 (16,000 ids) pruning fell behind once the writer's queue was
/// full and each of its transactions took 20,000 rows (`bench/sink-load.sh`).
const CHUNKS_AT_ONCE: usize = 8;
/// The longest the pruner waits for the writer to checkpoint the WAL between statements.
const WAL_WAIT: Duration = Duration::from_millis(500);
/// On PostgreSQL, the least time between two vacuums of the table after pruning.
pub const VACUUM_EVERY: Duration = Duration::from_secs(1);

/// What the budget is and how it is shared.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The whole budget in bytes: database and WAL.
    pub budget: u64,
    /// The WAL's limit for the checkpointer (0 where the sink has no WAL of its own:
    /// PostgreSQL, in-memory SQLite); twice it is the WAL's share of the budget.
    pub wal_limit: u64,
    pub retention: Duration,
    /// A record at least this slow keeps its trace.
    pub slow: Duration,
    /// PostgreSQL: set aside from the database's share for the space deleted rows hold until
    /// a vacuum frees it for new ones (an eighth of the budget; 0 on SQLite, which reuses a
    /// freed page at once).
    pub reserve: u64,
}

impl Settings {
    /// `wal_limit`: `STRATUS_EVENTS_WAL_LIMIT`, if the sink writes a SQLite file (its WAL).
    pub fn new(budget: u64, wal_limit: Option<u64>, retention: Duration, slow: Duration) -> Self {
        let wal_limit = wal_limit.map_or(0, |limit| limit.min(budget / 8));
        Self {
            budget,
            wal_limit,
            retention,
            slow,
            reserve: 0,
        }
    }

    /// The same, for a PostgreSQL database: an eighth of the budget kept for vacuum's lag.
    pub fn on_postgres(self) -> Self {
        Self {
            reserve: self.budget / 8,
            ..self
        }
    }

    /// The database's share of the budget.
    pub fn database_share(&self) -> u64 {
        self.budget - 2 * self.wal_limit - self.reserve
    }

    pub fn slow_us(&self) -> i64 {
        self.slow.as_micros().min(i64::MAX as u128) as i64
    }
}

/// The share of sampled traces the sink holds on to: 1 holds all, 0.25 a quarter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(pub f64);

impl Rate {
    /// Pruning at this rate left the database at `fill` of its share, over [`LOW`]: lower it in
    /// proportion, at least 10% and at most by half.
    pub fn lower(&mut self, fill: f64) {
        let factor = (LOW / fill).clamp(0.5, 0.9);
        self.0 = (self.0 * factor).max(MIN_RATE);
    }

    /// There is room: 1% up (a tick), so the rate creeps back as traffic allows.
    pub fn raise(&mut self) {
        self.0 = (self.0 * 1.01).min(1.0);
    }
}

/// Bytes in use, as the budget counts them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Used {
    /// The database's used pages (SQLite), or its live rows' bytes (PostgreSQL).
    pub database: u64,
    /// The database file's size, free pages included (SQLite; PostgreSQL: its relation size).
    pub database_file: u64,
    pub wal: u64,
}

/// Where the bytes are measured.
#[derive(Debug, Clone)]
pub enum Measure {
    /// A SQLite database, with the path of its file (none in memory).
    Sqlite {
        file: Option<PathBuf>,
    },
    Postgres(Arc<PostgresRows>),
}

/// The bytes a row of PostgreSQL's `events` table takes, table and indexes together, learnt
/// when the table grows: it grows only when no page has room for a new row, so at that moment
/// its size over its rows (live, and dead ones not yet vacuumed) is what a row costs. Between
/// growths the size says nothing about what is held (freed space waits inside it for new rows).
#[derive(Debug, Default)]
pub struct PostgresRows(Mutex<RowBytes>);

#[derive(Debug, Default, Clone, Copy)]
struct RowBytes {
    /// The table's size when `per_row` was last learnt.
    size: u64,
    per_row: f64,
}

impl PostgresRows {
    /// The live rows' bytes, given the table's size and its live and dead rows now.
    fn used(&self, size: u64, live: u64, dead: u64) -> u64 {
        let mut learnt = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let rows = live + dead;
        if rows > 0 && (size > learnt.size || learnt.per_row == 0.0) {
            // The least ever seen: a table that grows while freed space still waits for its
            // vacuum (or for the free space map) is not full, and its size over its rows says
            // more than a row costs; taking that would count the held rows as more than they
            // are, and prune kept traces to make room that is there (seen under
            // `bench/sink-load.sh SINK_DB=postgres`).
            let per_row = size as f64 / rows as f64;
            *learnt = RowBytes {
                size,
                per_row: if learnt.per_row == 0.0 {
                    per_row
                } else {
                    learnt.per_row.min(per_row)
                },
            };
        }
        if rows == 0 {
            return 0;
        }
        ((live as f64 * learnt.per_row) as u64).min(size)
    }
}

impl Measure {
    /// The WAL file's bytes (0 without one).
    pub fn wal(&self) -> u64 {
        match self {
            Measure::Sqlite { file: Some(file) } => checkpoint::wal_bytes(file),
            _ => 0,
        }
    }

    pub async fn used(&self, pool: &AnyPool) -> Result<Used, sqlx::Error> {
        match self {
            Measure::Sqlite { file } => {
                let pragma = |name: &'static str| async move {
                    let (value,): (i64,) = sqlx::query_as(name).fetch_one(pool).await?;
                    Ok::<u64, sqlx::Error>(value.max(0) as u64)
                };
                let pages = pragma("PRAGMA page_count").await?;
                let free = pragma("PRAGMA freelist_count").await?;
                let size = pragma("PRAGMA page_size").await?;
                Ok(Used {
                    database: pages.saturating_sub(free) * size,
                    database_file: pages * size,
                    wal: file.as_deref().map_or(0, checkpoint::wal_bytes),
                })
            }
            Measure::Postgres(rows) => {
                let (total, live, dead, logs): (i64, i64, i64, i64) = sqlx::query_as(
                    "SELECT CAST(pg_total_relation_size('events') AS BIGINT), \
                     CAST(COALESCE(SUM(n_live_tup), 0) AS BIGINT), \
                     CAST(COALESCE(SUM(n_dead_tup), 0) AS BIGINT), \
                     CAST(pg_total_relation_size('logs') AS BIGINT) \
                     FROM pg_stat_user_tables WHERE relname = 'events'",
                )
                .fetch_one(pool)
                .await?;
                let total = total.max(0) as u64;
                // The log lines' table counts whole (freed space too, until its vacuum): the
                // budget holds logs and events together (crate::deletion::Deletion::LogsBeforeEvents).
                let logs = logs.max(0) as u64;
                Ok(Used {
                    database: rows.used(total, live.max(0) as u64, dead.max(0) as u64) + logs,
                    database_file: total + logs,
                    wal: 0,
                })
            }
        }
    }
}

/// Records deleted, by why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    /// Their trace's oldest record passed the retention.
    pub expired: u64,
    /// Sampled out to fit the budget.
    pub sampled: u64,
    /// The oldest traces, kept ones too, because kept traces alone overflowed the budget.
    pub budget: u64,
}

/// The pruner's last word, for `/v1/storage`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Report {
    pub used: Used,
    pub sampling_rate: f64,
    pub pruned: Pruned,
}

/// The budget's settings and the pruner's last report, shared with the API.
#[derive(Clone)]
pub struct Storage {
    pub settings: Arc<Settings>,
    report: Arc<Mutex<Report>>,
}

impl Storage {
    pub fn new(settings: Settings) -> Self {
        metrics::gauge!("events_storage_budget_bytes").set(settings.budget as f64);
        metrics::gauge!("events_sampling_rate").set(1.0);
        for part in ["db", "wal"] {
            metrics::gauge!("events_storage_bytes", "part" => part).set(0.0);
        }
        for reason in ["expired", "sampled", "budget"] {
            metrics::counter!("events_pruned_total", "reason" => reason).increment(0);
        }
        for reason in ["expired", "budget"] {
            metrics::counter!("events_log_lines_pruned_total", "reason" => reason).increment(0);
        }
        Self {
            settings: Arc::new(settings),
            report: Arc::new(Mutex::new(Report {
                used: Used::default(),
                sampling_rate: 1.0,
                pruned: Pruned::default(),
            })),
        }
    }

    pub fn report(&self) -> Report {
        *self
            .report
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn publish(&self, used: Used, rate: Rate, pruned: Pruned) {
        metrics::gauge!("events_storage_bytes", "part" => "db").set(used.database as f64);
        metrics::gauge!("events_storage_bytes", "part" => "wal").set(used.wal as f64);
        metrics::gauge!("events_sampling_rate").set(rate.0);
        *self
            .report
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Report {
            used,
            sampling_rate: rate.0,
            pruned,
        };
    }
}

fn now_us() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

/// The pruner's state between ticks.
pub struct Pruner {
    /// For measuring and reading; deletions go through `deleter`.
    pool: AnyPool,
    deleter: Deleter,
    measure: Measure,
    storage: Storage,
    rate: Rate,
    /// The highest id stored at each recent tick: ids up to the one seen [`DECISION_WINDOW`]
    /// ago arrived long enough ago to be decided.
    arrivals: VecDeque<(Instant, i64)>,
    /// Sampled pruning went up to this id at the current rate (reset when the rate goes down).
    cursor: Option<i64>,
    pruned: Pruned,
    /// Log lines deleted, for any reason.
    log_lines_pruned: u64,
    decision_window: Duration,
    /// PostgreSQL: when the table was last vacuumed, and the records pruned by then.
    vacuumed: (Instant, u64),
}

impl Pruner {
    pub fn new(pool: AnyPool, deleter: Deleter, measure: Measure, storage: Storage) -> Self {
        Self {
            pool,
            deleter,
            measure,
            storage,
            rate: Rate(1.0),
            arrivals: VecDeque::new(),
            cursor: None,
            pruned: Pruned::default(),
            log_lines_pruned: 0,
            decision_window: DECISION_WINDOW,
            vacuumed: (Instant::now(), 0),
        }
    }

    /// The sampling rate now.
    pub fn rate(&self) -> f64 {
        self.rate.0
    }

    /// Runs for ever, a pass every [`TICK`] (later if a pass takes longer).
    pub async fn run(mut self) {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            if let Err(error) = self.pass().await {
                tracing::warn!(%error, "pruning events failed");
            }
        }
    }

    /// The highest id that arrived at least [`DECISION_WINDOW`] ago.
    fn decided_up_to(&mut self, newest: i64) -> Option<i64> {
        let now = Instant::now();
        self.arrivals.push_back((now, newest));
        while self
            .arrivals
            .get(1)
            .is_some_and(|(at, _)| now.duration_since(*at) >= self.decision_window)
        {
            self.arrivals.pop_front();
        }
        self.arrivals
            .front()
            .filter(|(at, _)| now.duration_since(*at) >= self.decision_window)
            .map(|(_, id)| *id)
    }

    /// One tick's work: retention, measure, rate, and pruning to fit.
    pub async fn pass(&mut self) -> Result<(), DeleteError> {
        let settings = self.storage.settings.clone();
        let cutoff = now_us() - settings.retention.as_micros().min(i64::MAX as u128 / 2) as i64;
        // Past the retention: traces (whole), then log lines.
        let expired = [
            (Deletion::Expired { before_us: cutoff }, Reason::Expired),
            (
                Deletion::LogsExpired { before_us: cutoff },
                Reason::LogsExpired,
            ),
        ];
        for (deletion, reason) in expired {
            loop {
                self.let_the_wal_be_checkpointed().await;
                let deleted = self.deleter.delete(deletion).await?;
                self.count(deleted, reason);
                if deleted == 0 {
                    break;
                }
            }
        }
        let range = store::id_range(&self.pool).await?;
        let decided = self.decided_up_to(range.map_or(0, |(_, high)| high));
        let share = settings.database_share();
        let mut used = self.measure.used(&self.pool).await?;
        let fill = |used: &Used| used.database as f64 / share.max(1) as f64;
        // Log lines older than every trace go first: traces are not sampled away to keep them.
        if fill(&used) > HIGH {
            while self.prune_old_logs(fill(&used)).await? > 0 {
                used = self.measure.used(&self.pool).await?;
                if fill(&used) < LOW {
                    break;
                }
            }
        }
        if fill(&used) > HIGH {
            // First what the current rate already samples out, from where the last pass
            // stopped; if that is not enough, a lower rate, from the oldest record again.
            // Nothing decided yet (the sink just started): nothing to prune, nothing learnt.
            if decided.is_some() {
                // At rate 1 nothing is sampled out: no walk through every record to learn it.
                let reached_the_edge =
                    self.rate.0 >= 1.0 || self.prune_sampled(range, decided, &mut used).await?;
                if reached_the_edge && fill(&used) > LOW {
                    self.rate.lower(fill(&used));
                    self.cursor = None;
                    self.prune_sampled(range, decided, &mut used).await?;
                } else if !reached_the_edge {
                    // Sampled-out traces are still held past where pruning stopped: room to
                    // spare.
                    self.rate.raise();
                }
            }
            // Kept and undecided traces alone overflow the share at the lowest rate.
            while self.rate.0 <= MIN_RATE && used.database > share {
                self.let_the_wal_be_checkpointed().await;
                let deleted = self.deleter.delete(Deletion::Oldest).await?;
                self.count(deleted, Reason::Budget);
                // And the log lines older than the traces that are left.
                let lines = self.prune_old_logs(fill(&used)).await?;
                if deleted == 0 && lines == 0 {
                    break;
                }
                tracing::warn!(
                    deleted,
                    "kept traces overflow the storage budget: the oldest go"
                );
                used = self.measure.used(&self.pool).await?;
                if fill(&used) < LOW {
                    break;
                }
            }
        } else if fill(&used) < RAISE_BELOW {
            self.rate.raise();
        }
        self.vacuum_after_pruning().await?;
        self.storage.publish(used, self.rate, self.pruned);
        Ok(())
    }

    /// PostgreSQL: once records were deleted, a vacuum marks their space free for new rows
    /// (without one the table grows on past the budget until autovacuum comes round). A plain
    /// VACUUM takes no lock that stops inserts or reads.
    async fn vacuum_after_pruning(&mut self) -> Result<(), sqlx::Error> {
        let pruned =
            self.pruned.expired + self.pruned.sampled + self.pruned.budget + self.log_lines_pruned;
        let (at, then) = self.vacuumed;
        if !matches!(self.measure, Measure::Postgres(_))
            || pruned == then
            || at.elapsed() < VACUUM_EVERY
        {
            return Ok(());
        }
        sqlx::raw_sql("VACUUM events, logs")
            .execute(&self.pool)
            .await?;
        self.vacuumed = (Instant::now(), pruned);
        Ok(())
    }

    /// Deletes the traces the current rate samples out, from the cursor (or the oldest record)
    /// up to the last decided id, until the database is under [`LOW`] of its share. Returns
    /// whether it got to the decided edge (nothing more to prune at this rate).
    async fn prune_sampled(
        &mut self,
        range: Option<(i64, i64)>,
        decided: Option<i64>,
        used: &mut Used,
    ) -> Result<bool, DeleteError> {
        let (Some((low, _)), Some(decided)) = (range, decided) else {
            return Ok(true);
        };
        let settings = self.storage.settings.clone();
        let share = settings.database_share() as f64;
        let threshold = sample::threshold(self.rate.0);
        let mut after = self.cursor.unwrap_or(low - 1).max(low - 1);
        while after < decided {
            if used.database as f64 <= LOW * share {
                return Ok(false);
            }
            self.let_the_wal_be_checkpointed().await;
            // A few chunks at once: the writer runs every deletion waiting after each of its
            // transactions, so they cost one turn, not one each.
            let mut chunks = Vec::with_capacity(CHUNKS_AT_ONCE);
            while chunks.len() < CHUNKS_AT_ONCE && after < decided {
                let up_to = (after + CHUNK_IDS).min(decided);
                chunks.push(self.deleter.delete(Deletion::Sampled {
                    after_id: after,
                    up_to_id: up_to,
                    threshold,
                    slow_us: settings.slow_us(),
                }));
                after = up_to;
            }
            let mut deleted = 0;
            for result in futures_util::future::join_all(chunks).await {
                deleted += result?;
            }
            self.count(deleted, Reason::Sampled);
            self.cursor = Some(after);
            if deleted > 0 {
                *used = self.measure.used(&self.pool).await?;
            }
        }
        Ok(true)
    }

    /// Pruning writes to the WAL faster than ingest does; past half its limit, waits (a
    /// while at most) for the writer's checkpointer to truncate it before deleting more.
    async fn let_the_wal_be_checkpointed(&self) {
        let limit = self.storage.settings.wal_limit;
        let until = Instant::now() + WAL_WAIT;
        while limit > 0 && self.measure.wal() > limit / 2 && Instant::now() < until {
            tokio::time::sleep(checkpoint::TICK / 2).await;
        }
    }

    /// One statement's worth of the log lines older than every trace held, with the database
    /// at `fill` of its share; the lines deleted. How many: the share of the lines held that
    /// would bring the database down to [`LOW`] if lines were all it held (so never more than
    /// that), at most [`PRUNE_LOG_LINES`]. A fixed count took a small budget from over it to
    /// empty in one statement.
    async fn prune_old_logs(&mut self, fill: f64) -> Result<u64, DeleteError> {
        let held = crate::log_store::count(&self.pool).await?;
        let over = (1.0 - LOW / fill.max(LOW)).max(0.0);
        let lines = ((held as f64 * over).ceil() as i64).clamp(1, PRUNE_LOG_LINES);
        if held == 0 {
            return Ok(0);
        }
        self.let_the_wal_be_checkpointed().await;
        let deleted = self
            .deleter
            .delete(Deletion::LogsBeforeEvents { lines })
            .await?;
        self.count(deleted, Reason::LogsBudget);
        Ok(deleted)
    }

    fn count(&mut self, deleted: u64, reason: Reason) {
        if deleted == 0 {
            return;
        }
        let log_reason = match reason {
            Reason::LogsExpired => Some("expired"),
            Reason::LogsBudget => Some("budget"),
            _ => None,
        };
        if let Some(label) = log_reason {
            self.log_lines_pruned += deleted;
            metrics::counter!("events_log_lines_pruned_total", "reason" => label)
                .increment(deleted);
            return;
        }
        let (total, label) = match reason {
            Reason::Expired => (&mut self.pruned.expired, "expired"),
            Reason::Sampled => (&mut self.pruned.sampled, "sampled"),
            Reason::Budget => (&mut self.pruned.budget, "budget"),
            Reason::LogsExpired | Reason::LogsBudget => return,
        };
        *total += deleted;
        metrics::counter!("events_pruned_total", "reason" => label).increment(deleted);
    }
}

/// Why records were pruned.
#[derive(Debug, Clone, Copy)]
enum Reason {
    Expired,
    Sampled,
    Budget,
    /// Log lines past the retention.
    LogsExpired,
    /// Log lines older than every trace held, over the budget.
    LogsBudget,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::record;
    use crate::record::validate;
    use crate::record::Row;

    #[test]
    fn the_wal_gets_at_most_a_quarter_of_the_budget_and_an_eighth_as_its_limit() {
        let hour = Duration::from_secs(3600);
        let second = Duration::from_secs(1);
        let settings = Settings::new(256 << 20, Some(64 << 20), hour, second);
        assert_eq!(settings.wal_limit, 32 << 20);
        assert_eq!(settings.database_share(), 192 << 20);
        let small = Settings::new(8 << 20, Some(64 << 20), hour, second);
        assert_eq!(small.wal_limit, 1 << 20);
        assert_eq!(small.database_share(), 6 << 20);
        let roomy = Settings::new(1 << 30, Some(64 << 20), hour, second);
        assert_eq!(roomy.wal_limit, 64 << 20);
        let postgres = Settings::new(8 << 20, None, hour, second).on_postgres();
        assert_eq!(postgres.database_share(), 7 << 20);
        assert_eq!(settings.slow_us(), 1_000_000);
    }

    #[test]
    fn postgres_counts_live_rows_at_what_a_row_took_when_the_table_grew() {
        let rows = PostgresRows::default();
        // Growing: 1,000 rows in 300,000 bytes.
        assert_eq!(rows.used(300_000, 1_000, 0), 300_000);
        // Half deleted, not yet vacuumed: the same size, half of it live.
        assert_eq!(rows.used(300_000, 500, 500), 150_000);
        // Vacuumed (no dead rows counted), the freed space not reused yet: still half.
        assert_eq!(rows.used(300_000, 500, 0), 150_000);
        // New rows fill the freed space: the size stays, the bytes in use follow the rows.
        assert_eq!(rows.used(300_000, 900, 0), 270_000);
        // Full again, the table grows: 400 bytes a row now? The least seen (300) stands.
        assert_eq!(rows.used(400_000, 1_000, 0), 300_000);
        // It grows with few rows held (freed space not reused yet): not 4,000 bytes a row.
        assert_eq!(rows.used(500_000, 100, 25), 30_000);
        // Denser than ever: learnt.
        assert_eq!(rows.used(600_000, 2_400, 0), 600_000);
        assert_eq!(rows.used(600_000, 0, 0), 0);
    }

    #[test]
    fn the_rate_goes_down_in_proportion_and_up_slowly() {
        let mut rate = Rate(1.0);
        rate.lower(0.8);
        assert!((rate.0 - 0.9).abs() < 1e-9, "at least 10% down: {rate:?}");
        rate.lower(3.0);
        assert!((rate.0 - 0.45).abs() < 1e-9, "at most halved: {rate:?}");
        for _ in 0..100 {
            rate.lower(10.0);
        }
        assert_eq!(rate.0, MIN_RATE);
        rate.raise();
        assert!((rate.0 - MIN_RATE * 1.01).abs() < 1e-12);
        let mut full = Rate(0.995);
        full.raise();
        full.raise();
        assert_eq!(full.0, 1.0);
    }

    /// A flood of fast traces into a SQLite file with a small budget: the pruner keeps the
    /// database under its share, lowers the rate, keeps every error and slow trace, and leaves
    /// every trace it holds whole.
    #[tokio::test]
    async fn a_flood_is_sampled_to_fit_and_kept_traces_stay() {
        let dir = tempfile::tempdir().unwrap();
        let url = stratus_kit::db::url_for("events", None, dir.path()).unwrap();
        let (pool, _) = stratus_kit::db::open(&url, store::MIGRATIONS)
            .await
            .unwrap();
        let budget = 4 << 20;
        let settings = Settings::new(
            budget,
            None,
            Duration::from_secs(3600),
            Duration::from_secs(1),
        );
        let storage = Storage::new(settings);
        let mut pruner = Pruner::new(
            pool.clone(),
            Deleter::pool(pool.clone()),
            Measure::Sqlite { file: None },
            storage.clone(),
        );
        pruner.decision_window = Duration::ZERO;
        let base = validate(record()).unwrap();
        let now = now_us();
        let row = |trace: usize, span: usize| -> Row {
            let mut r = base.clone();
            r.trace_id = format!("{:032x}", trace + 1);
            r.span_id = format!("{:016x}", span + 1);
            r.started_us = now - 1_000_000 + span as i64;
            r.duration_us = 1_000;
            r
        };
        let mut special = Vec::new();
        let mut span = 0;
        for round in 0..40 {
            let mut batch = Vec::new();
            for t in 0..500 {
                let trace = round * 500 + t;
                for _ in 0..3 {
                    batch.push(row(trace, span));
                    span += 1;
                }
                if t == 0 {
                    // An error at the end of the trace.
                    let last = batch.len() - 1;
                    batch[last].status = 503;
                    batch[last].ok = false;
                    special.push(trace);
                } else if t == 1 {
                    let middle = batch.len() - 2;
                    batch[middle].duration_us = 1_500_000;
                    special.push(trace);
                }
            }
            store::insert(&pool, &batch).await.unwrap();
            pruner.pass().await.unwrap();
            let used = storage.report().used.database;
            assert!(
                used <= budget,
                "round {round}: {used} bytes with a budget of {budget}"
            );
        }
        let report = storage.report();
        assert!(report.sampling_rate < 0.9, "{report:?}");
        assert!(report.pruned.sampled > 0, "{report:?}");
        assert_eq!(report.pruned.budget, 0, "{report:?}");
        assert!(
            report.used.database as f64 <= HIGH * budget as f64,
            "{report:?}"
        );
        for trace in &special {
            let rows = store::trace(&pool, &format!("{:032x}", trace + 1))
                .await
                .unwrap();
            assert_eq!(rows.len(), 3, "kept trace {trace}");
        }
        let (rows, _, kept) = store::holdings(&pool, 1_000_000).await.unwrap();
        assert_eq!(kept, special.len() as i64);
        assert_eq!(rows % 3, 0, "a trace was pruned in part");
        let (partial,): (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM (SELECT trace_id FROM events GROUP BY trace_id HAVING COUNT(*) <> 3) t",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(partial, 0, "traces held in part");
        eprintln!(
            "held {rows} of {span} records at rate {:.3}: {} bytes, {:.0} bytes a record",
            report.sampling_rate,
            report.used.database,
            report.used.database as f64 / rows as f64
        );
    }

    /// An error that arrives after the rest of its trace, within the decision window, keeps the
    /// whole trace, though its hash is sampled out at any rate; a trace like it without the
    /// error goes, whole, once decided.
    #[tokio::test]
    async fn a_late_error_keeps_its_trace_whole() {
        let dir = tempfile::tempdir().unwrap();
        let url = stratus_kit::db::url_for("events", None, dir.path()).unwrap();
        let (pool, _) = stratus_kit::db::open(&url, store::MIGRATIONS)
            .await
            .unwrap();
        // Far over budget from the start: every pass wants to prune.
        let settings = Settings::new(
            64 << 10,
            None,
            Duration::from_secs(3600),
            Duration::from_secs(1),
        );
        let storage = Storage::new(settings);
        let mut pruner = Pruner::new(
            pool.clone(),
            Deleter::pool(pool.clone()),
            Measure::Sqlite { file: None },
            storage.clone(),
        );
        pruner.decision_window = Duration::from_millis(300);
        // Two trace ids sampled out at any rate below 0.99.
        let mut high = (1u64..)
            .map(|n| format!("{n:032x}"))
            .filter(|id| sample::of(id) >= sample::threshold(0.99));
        let (late, plain) = (high.next().unwrap(), high.next().unwrap());
        let base = validate(record()).unwrap();
        let now = now_us();
        let row = |trace: &str, span: u64| -> Row {
            let mut r = base.clone();
            r.trace_id = trace.into();
            r.span_id = format!("{span:016x}");
            r.started_us = now + span as i64;
            r.duration_us = 1_000;
            r
        };
        let filler: Vec<Row> = (0..3_000u64)
            .map(|n| row(&format!("{:032x}", n + 1_000_000), n + 100))
            .collect();
        store::insert(&pool, &filler).await.unwrap();
        store::insert(
            &pool,
            &[row(&late, 1), row(&late, 2), row(&plain, 3), row(&plain, 4)],
        )
        .await
        .unwrap();
        pruner.pass().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut error = row(&late, 5);
        error.status = 500;
        error.ok = false;
        store::insert(&pool, &[error]).await.unwrap();
        pruner.pass().await.unwrap();
        assert_eq!(store::trace(&pool, &late).await.unwrap().len(), 3);
        assert_eq!(
            store::trace(&pool, &plain).await.unwrap().len(),
            2,
            "undecided yet"
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        pruner.pass().await.unwrap();
        assert!(pruner.rate() < 0.99, "rate {}", pruner.rate());
        assert_eq!(store::trace(&pool, &late).await.unwrap().len(), 3);
        assert!(store::trace(&pool, &plain).await.unwrap().is_empty());
        assert!(storage.report().pruned.sampled > 0);
    }

    /// Log lines share the budget: past the retention they go like records; over the budget,
    /// the lines older than every trace go, oldest first, and no trace is sampled away for them.
    #[tokio::test]
    async fn log_lines_older_than_the_traces_go_first_and_expire() {
        let (_dir, pool) = store::tests::open().await;
        let settings = Settings::new(
            4 << 20,
            None,
            Duration::from_secs(3600),
            Duration::from_secs(1),
        );
        let mut pruner = Pruner::new(
            pool.clone(),
            Deleter::pool(pool.clone()),
            Measure::Sqlite { file: None },
            Storage::new(settings),
        );
        pruner.decision_window = Duration::ZERO;
        let now = now_us();
        // 30,000 lines over the last half hour (several times the budget), ten expired ones.
        let lines: Vec<crate::log_line::LogLine> = (0..30_010)
            .map(|i| {
                let mut line = crate::log_line::tests::line(i);
                line.time_us = if i < 10 {
                    now - 7_200_000_000
                } else {
                    now - 1_800_000_000 + i as i64 * 1_000
                };
                line.message = format!("{i:08} {}", "x".repeat(400));
                line
            })
            .collect();
        let mut tx = pool.begin().await.unwrap();
        crate::log_store::insert_into(&mut tx, &lines)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let base = validate(record()).unwrap();
        let records: Vec<Row> = (0..30)
            .map(|i| {
                let mut r = base.clone();
                r.trace_id = format!("{:032x}", i / 3 + 1);
                r.span_id = format!("{:016x}", i + 1);
                r.started_us = now - 1_000_000 + i as i64;
                r
            })
            .collect();
        store::insert(&pool, &records).await.unwrap();

        pruner.pass().await.unwrap();
        let used = Measure::Sqlite { file: None }.used(&pool).await.unwrap();
        assert!(used.database <= 4 << 20, "{used:?}");
        assert_eq!(store::count(&pool).await.unwrap(), 30, "every trace stays");
        assert_eq!(pruner.rate(), 1.0);
        let held = crate::log_store::count(&pool).await.unwrap();
        assert!(held > 0 && held < 30_000, "{held} lines held");
        // The newest lines are the ones held.
        let newest = crate::log_store::query(
            &pool,
            &crate::log_store::LogFilter {
                limit: 1_000,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(newest[0], lines[30_009]);
        assert_eq!(pruner.log_lines_pruned, 30_010 - held as u64);
        let oldest: (i64,) = sqlx::query_as("SELECT MIN(time_us) FROM logs")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(oldest.0, lines[30_010 - held as usize].time_us);
    }
}
