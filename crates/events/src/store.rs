//! The sink's own database: one `events` table, written in batches, read by trace, by filter and
//! for stats, and kept within its retention bound.

use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row as _};
use stratus_kit::db::Migration;

use crate::deletion::Deletion;
use crate::record::Row;

/// The events table: the same in both dialects but for the id column.
macro_rules! events_schema {
    ($id:literal) => {
        concat!(
            "CREATE TABLE events (id ",
            $id,
            ",
        trace_id TEXT NOT NULL,
        span_id TEXT NOT NULL,
        parent_span_id TEXT,
        service TEXT NOT NULL,
        instance TEXT NOT NULL,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        method TEXT,
        status BIGINT NOT NULL,
        ok BIGINT NOT NULL,
        started_us BIGINT NOT NULL,
        duration_us BIGINT NOT NULL,
        retries BIGINT,
        cache TEXT,
        topic TEXT,
        breaker TEXT
    );
    CREATE INDEX events_trace ON events (trace_id);
    CREATE INDEX events_service_started ON events (service, started_us);
    CREATE INDEX events_started ON events (started_us)"
        )
    };
}

pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "events",
        sqlite: events_schema!("INTEGER PRIMARY KEY"),
        postgres: events_schema!("BIGSERIAL PRIMARY KEY"),
    },
    // The node a `client` record called (`orders-db`, `redis`): an edge of the topology.
    Migration {
        version: 2,
        description: "events.peer",
        sqlite: "ALTER TABLE events ADD COLUMN peer TEXT",
        postgres: "ALTER TABLE events ADD COLUMN peer TEXT",
    },
    // The trace's sample value (crate::sample::of): which traces the storage budget may prune.
    // Records stored before it have none and are the first a budget prunes (crate::budget).
    Migration {
        version: 3,
        description: "events.sample",
        sqlite: "ALTER TABLE events ADD COLUMN sample BIGINT",
        postgres: "ALTER TABLE events ADD COLUMN sample BIGINT",
    },
    // The dashboard's recent errors and `/v1/events?status=5xx`: errors are few, so without an
    // index of their own the newest twenty were found by reading back through every record.
    Migration {
        version: 4,
        description: "events_errors",
        sqlite: "CREATE INDEX events_errors ON events (started_us) WHERE status >= 500",
        postgres: "CREATE INDEX events_errors ON events (started_us) WHERE status >= 500",
    },
    // Log lines (crate::log_store): written by the same writer, pruned by the same pruner.
    Migration {
        version: 5,
        description: "logs",
        sqlite: crate::log_store::SQLITE_SCHEMA,
        postgres: crate::log_store::POSTGRES_SCHEMA,
    },
];

const COLUMNS: &str = "trace_id, span_id, parent_span_id, service, instance, kind, name, method, status, ok, started_us, duration_us, retries, cache, topic, breaker, peer";
/// What an INSERT writes: the record's columns and its trace's sample value.
const INSERT_COLUMNS: &str = "trace_id, span_id, parent_span_id, service, instance, kind, name, method, status, ok, started_us, duration_us, retries, cache, topic, breaker, peer, sample";
const PER_ROW: usize = 18;
/// Rows per INSERT statement through the pool. PostgreSQL takes up to 65,535 parameters a
/// statement; 500 rows is 8,500. SQLite files are written by `sqlite.rs` instead; an in-memory
/// SQLite gets anonymous `?` parameters, because binding `$N` names costs SQLite a linear lookup
/// per parameter (quadratic in the statement's length: 1,000 `$N` rows a statement stored 2,300
/// records/s, 32 rows 31,000/s).
const ROWS_PER_STATEMENT: usize = 500;

/// A stored row, read by column position (17 columns: more than sqlx's tuples take).
impl<'r> sqlx::FromRow<'r, AnyRow> for Row {
    fn from_row(r: &'r AnyRow) -> Result<Self, sqlx::Error> {
        Ok(Row {
            trace_id: r.try_get(0)?,
            span_id: r.try_get(1)?,
            parent_span_id: r.try_get(2)?,
            service: r.try_get(3)?,
            instance: r.try_get(4)?,
            kind: r.try_get(5)?,
            name: r.try_get(6)?,
            method: r.try_get(7)?,
            status: r.try_get(8)?,
            ok: r.try_get::<i64, _>(9)? != 0,
            started_us: r.try_get(10)?,
            duration_us: r.try_get(11)?,
            retries: r.try_get(12)?,
            cache: r.try_get(13)?,
            topic: r.try_get(14)?,
            breaker: r.try_get(15)?,
            peer: r.try_get(16)?,
        })
    }
}

/// `numbered`: `$1, $2, ...` (PostgreSQL), else `?` (SQLite).
fn insert_sql(rows: usize, numbered: bool) -> String {
    let mut sql = String::with_capacity(64 + rows * PER_ROW * 6);
    sql.push_str("INSERT INTO events (");
    sql.push_str(INSERT_COLUMNS);
    sql.push_str(") VALUES ");
    let mut n = 0;
    for r in 0..rows {
        if r > 0 {
            sql.push(',');
        }
        sql.push('(');
        for c in 0..PER_ROW {
            if c > 0 {
                sql.push(',');
            }
            n += 1;
            if numbered {
                sql.push('$');
                sql.push_str(&n.to_string());
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
    sql
}

/// Stores a batch in one transaction: all of it or none of it.
pub async fn insert(pool: &AnyPool, rows: &[Row]) -> Result<(), sqlx::Error> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut tx = pool.begin().await?;
    insert_into(&mut tx, rows).await?;
    tx.commit().await
}

/// Inserts rows inside a transaction the caller commits.
pub async fn insert_into(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    rows: &[Row],
) -> Result<(), sqlx::Error> {
    let numbered = (**tx).backend_name() != "SQLite";
    for chunk in rows.chunks(ROWS_PER_STATEMENT) {
        let sql = insert_sql(chunk.len(), numbered);
        let mut query = sqlx::query(&sql);
        for r in chunk {
            query = query
                .bind(r.trace_id.as_str())
                .bind(r.span_id.as_str())
                .bind(r.parent_span_id.as_deref())
                .bind(r.service.as_str())
                .bind(r.instance.as_str())
                .bind(r.kind.as_str())
                .bind(r.name.as_str())
                .bind(r.method.as_deref())
                .bind(r.status)
                .bind(i64::from(r.ok))
                .bind(r.started_us)
                .bind(r.duration_us)
                .bind(r.retries)
                .bind(r.cache.as_deref())
                .bind(r.topic.as_deref())
                .bind(r.breaker.as_deref())
                .bind(r.peer.as_deref())
                .bind(crate::sample::of(&r.trace_id));
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Every record of one trace, in start order.
pub async fn trace(pool: &AnyPool, trace_id: &str) -> Result<Vec<Row>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM events WHERE trace_id = $1 ORDER BY started_us, id LIMIT 10000"
    );
    sqlx::query_as(&sql).bind(trace_id).fetch_all(pool).await
}

/// Filters for [`events`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filter {
    pub service: Option<String>,
    pub instance: Option<String>,
    /// Inclusive status range (`500` is 500..=500, `5xx` is 500..=599).
    pub status: Option<(i64, i64)>,
    pub since_us: Option<i64>,
    pub limit: i64,
}

/// A value of a filtered query's `$N`.
pub(crate) enum Bind {
    Text(String),
    Int(i64),
}

/// Runs a filtered SELECT (its `$N` values in order) into rows of `T`.
pub(crate) async fn fetch_filtered<T>(
    pool: &AnyPool,
    sql: &str,
    binds: Vec<Bind>,
) -> Result<Vec<T>, sqlx::Error>
where
    T: for<'r> sqlx::FromRow<'r, AnyRow> + Send + Unpin,
{
    let mut query = sqlx::query_as::<_, T>(sql);
    for bind in binds {
        query = match bind {
            Bind::Text(text) => query.bind(text),
            Bind::Int(value) => query.bind(value),
        };
    }
    query.fetch_all(pool).await
}

/// The statement and its values for [`events`].
fn events_sql(filter: &Filter) -> (String, Vec<Bind>) {
    let mut clauses = Vec::new();
    let mut binds = Vec::new();
    let mut push = |clause: &str, value: Bind| {
        binds.push(value);
        clauses.push(format!("{clause} ${}", binds.len()));
    };
    if let Some(service) = &filter.service {
        push("service =", Bind::Text(service.clone()));
    }
    if let Some(instance) = &filter.instance {
        push("instance =", Bind::Text(instance.clone()));
    }
    if let Some((low, high)) = filter.status {
        push("status >=", Bind::Int(low));
        push("status <=", Bind::Int(high));
    }
    if let Some(since) = filter.since_us {
        push("started_us >=", Bind::Int(since));
    }
    if filter.status.is_some_and(|(low, _)| low >= 500) {
        // The errors' partial index's own condition, spelled out: SQLite weighs bound values
        // when it plans, but PostgreSQL's generic plan for a prepared statement does not.
        clauses.push("status >= 500".to_string());
    }
    let mut sql = format!("SELECT {COLUMNS} FROM events");
    if !clauses.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&clauses.join(" AND "));
    }
    sql.push_str(&format!(
        " ORDER BY started_us DESC, id DESC LIMIT {}",
        filter.limit
    ));
    (sql, binds)
}

/// The newest records matching the filter, newest first.
pub async fn events(pool: &AnyPool, filter: &Filter) -> Result<Vec<Row>, sqlx::Error> {
    let (sql, binds) = events_sql(filter);
    fetch_filtered(pool, &sql, binds).await
}

/// (service, instance, ok, duration_us) of every record started since `since_us`: the hops
/// services handled (a `client` record of calls to a database or cache, which has a `peer`, is
/// not one; a `server` record's `peer` is its caller under the mesh, and it is one).
pub async fn window(
    pool: &AnyPool,
    since_us: i64,
) -> Result<Vec<(String, String, bool, i64)>, sqlx::Error> {
    let rows: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT service, instance, ok, duration_us FROM events WHERE started_us >= $1 \
         AND NOT (kind = 'client' AND peer IS NOT NULL)",
    )
    .bind(since_us)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(s, i, ok, d)| (s, i, ok != 0, d))
        .collect())
}

/// The newest record's id (0 for none): records stored after it are new.
pub async fn max_id(pool: &AnyPool) -> Result<i64, sqlx::Error> {
    let (id,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(id), 0) FROM events")
        .fetch_one(pool)
        .await?;
    Ok(id)
}

/// Up to `limit` records with `after < id <= up_to`, started since `since_us`, by id (the order
/// they arrived in); and the last id read. Paged by primary key, so each page is a short read
/// (a long one would hold back SQLite's WAL checkpoints).
pub async fn page(
    pool: &AnyPool,
    after: i64,
    up_to: i64,
    since_us: i64,
    limit: i64,
) -> Result<(Vec<Row>, Option<i64>), sqlx::Error> {
    use sqlx::FromRow;
    let stored = sqlx::query(&format!(
        "SELECT {COLUMNS}, id FROM events WHERE id > $1 AND id <= $2 AND started_us >= $3 \
         ORDER BY id LIMIT {limit}"
    ))
    .bind(after)
    .bind(up_to)
    .bind(since_us)
    .fetch_all(pool)
    .await?;
    let last = match stored.last() {
        // `id` follows the record's 17 columns.
        Some(row) => Some(row.try_get::<i64, _>(17)?),
        None => None,
    };
    let rows = stored
        .iter()
        .map(Row::from_row)
        .collect::<Result<Vec<Row>, _>>()?;
    Ok((rows, last))
}

/// What the topology needs of one record: its span, its parent and who handled it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub service: String,
    pub instance: String,
    pub kind: String,
    pub ok: bool,
    pub duration_us: i64,
    pub topic: Option<String>,
    /// The record's name: the route, the topic, or for a call to a peer what the peer is.
    pub name: String,
    /// The node a `client` record called (`orders-db`); on a record a service made of a call
    /// it served, the caller's verified identity (mutual TLS).
    pub peer: Option<String>,
    /// The answer's status (HTTP, or 0).
    pub status: i64,
}

/// Deletes, whole, the traces of up to [`crate::deletion::PRUNE_TRACES`] records started
/// before `before_us` ([`Deletion::Expired`]). Returns how many records went; the caller repeats
/// while that is more than 0.
pub async fn prune_expired(pool: &AnyPool, before_us: i64) -> Result<u64, sqlx::Error> {
    Deletion::Expired { before_us }.run_on_pool(pool).await
}

/// Deletes the sampled-out traces of a range of ids ([`Deletion::Sampled`]).
pub async fn prune_sampled(
    pool: &AnyPool,
    after_id: i64,
    up_to_id: i64,
    threshold: i64,
    slow_us: i64,
) -> Result<u64, sqlx::Error> {
    Deletion::Sampled {
        after_id,
        up_to_id,
        threshold,
        slow_us,
    }
    .run_on_pool(pool)
    .await
}

/// The lowest and highest record ids stored (`None` when there is none).
pub async fn id_range(pool: &AnyPool) -> Result<Option<(i64, i64)>, sqlx::Error> {
    let (low, high): (Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT MIN(id), MAX(id) FROM events")
            .fetch_one(pool)
            .await?;
    Ok(low.zip(high))
}

/// What the database holds: records, the oldest one's start, and traces the sink keeps (one
/// record an error or at least `slow_us`). A scan of the table: for `/v1/storage`, not a hot path.
pub async fn holdings(
    pool: &AnyPool,
    slow_us: i64,
) -> Result<(i64, Option<i64>, i64), sqlx::Error> {
    let (rows, oldest): (i64, Option<i64>) =
        sqlx::query_as("SELECT COUNT(*), MIN(started_us) FROM events")
            .fetch_one(pool)
            .await?;
    let (kept,): (i64,) = sqlx::query_as(
        "SELECT COUNT(DISTINCT trace_id) FROM events \
         WHERE ok = 0 OR status >= 500 OR duration_us >= $1",
    )
    .bind(slow_us)
    .fetch_one(pool)
    .await?;
    Ok((rows, oldest, kept))
}

pub async fn count(pool: &AnyPool) -> Result<i64, sqlx::Error> {
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM events")
        .fetch_one(pool)
        .await?;
    Ok(count)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::record::tests::record;
    use crate::record::validate;

    pub(crate) async fn open() -> (tempfile::TempDir, AnyPool) {
        let dir = tempfile::tempdir().unwrap();
        let url = stratus_kit::db::url_for("events", None, dir.path()).unwrap();
        let (pool, _) = stratus_kit::db::open(&url, MIGRATIONS).await.unwrap();
        (dir, pool)
    }

    fn rows(n: usize) -> Vec<Row> {
        let base = validate(record()).unwrap();
        (0..n)
            .map(|i| {
                let mut r = base.clone();
                r.trace_id = format!("{:032x}", i / 4 + 1);
                r.span_id = format!("{:016x}", i + 1);
                r.service = if i % 2 == 0 { "catalog" } else { "auth" }.into();
                r.instance = format!("i-{}", i % 3);
                r.status = if i % 10 == 0 { 503 } else { 200 };
                r.ok = i % 10 != 0;
                r.started_us += i as i64;
                r.duration_us = 100 + i as i64;
                r
            })
            .collect()
    }

    #[test]
    fn insert_statements_number_their_parameters() {
        let sql = insert_sql(2, true);
        assert!(sql.ends_with(
            "$18),($19,$20,$21,$22,$23,$24,$25,$26,$27,$28,$29,$30,$31,$32,$33,$34,$35,$36)"
        ));
        assert!(insert_sql(2, false).ends_with("?),(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"));
    }

    /// Pages read every record up to `up_to` once, in the order they were stored, and only
    /// those started since `since_us`.
    #[tokio::test]
    async fn pages_read_every_record_once_in_arrival_order() {
        let (_dir, pool) = open().await;
        let all = rows(25_003);
        for chunk in all.chunks(5_000) {
            insert(&pool, chunk).await.unwrap();
        }
        let since = all[100].started_us;
        let (mut after, mut got) = (0, Vec::new());
        loop {
            let (page, last) = page(&pool, after, 25_000, since, 10_000).await.unwrap();
            got.extend(page.into_iter().map(|r| r.span_id));
            match last {
                Some(last) => after = last,
                None => break,
            }
        }
        let expected: Vec<String> = all[100..25_000].iter().map(|r| r.span_id.clone()).collect();
        assert_eq!(got, expected);
    }

    /// The dashboard's recent errors read the errors' own index, not every record back from
    /// the newest.
    #[tokio::test]
    async fn recent_errors_are_read_through_their_index() {
        let (_dir, pool) = open().await;
        insert(&pool, &rows(100)).await.unwrap();
        let (sql, _) = events_sql(&Filter {
            status: Some((500, 599)),
            since_us: Some(0),
            limit: 20,
            ..Default::default()
        });
        let plan: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(&format!("EXPLAIN QUERY PLAN {sql}"))
                .bind(500)
                .bind(599)
                .bind(0)
                .fetch_all(&pool)
                .await
                .unwrap();
        let plan: Vec<&str> = plan.iter().map(|p| p.3.as_str()).collect();
        assert!(
            plan.iter().any(|step| step.contains("events_errors")),
            "{plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.contains("TEMP B-TREE")),
            "{plan:?}"
        );
    }

    #[tokio::test]
    async fn stores_queries_and_prunes() {
        let (_dir, pool) = open().await;
        insert(&pool, &rows(2500)).await.unwrap();
        assert_eq!(count(&pool).await.unwrap(), 2500);
        let trace = trace(&pool, &format!("{:032x}", 1)).await.unwrap();
        assert_eq!(trace.len(), 4);
        assert!(trace.windows(2).all(|w| w[0].started_us <= w[1].started_us));
        assert_eq!(trace[0], rows(1)[0]);

        let filter = Filter {
            service: Some("catalog".into()),
            instance: Some("i-0".into()),
            status: Some((500, 599)),
            since_us: None,
            limit: 1000,
        };
        let found = events(&pool, &filter).await.unwrap();
        assert!(!found.is_empty());
        assert!(found
            .iter()
            .all(|r| r.service == "catalog" && r.instance == "i-0" && r.status == 503));
        let newest = events(
            &pool,
            &Filter {
                limit: 3,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(newest.len(), 3);
        assert!(newest[0].started_us > newest[2].started_us);

        let start = rows(1)[0].started_us;
        assert_eq!(window(&pool, start + 2000).await.unwrap().len(), 500);
        // Records 0-99 started before the cut; their traces (four records each) go whole.
        assert_eq!(prune_expired(&pool, start + 100).await.unwrap(), 100);
        assert_eq!(prune_expired(&pool, start + 100).await.unwrap(), 0);
        assert_eq!(count(&pool).await.unwrap(), 2400);
        assert_eq!(prune_expired(&pool, start + 102).await.unwrap(), 4);
        assert!(super::trace(&pool, &format!("{:032x}", 26))
            .await
            .unwrap()
            .is_empty());
    }

    /// Sampled pruning deletes whole traces whose sample value is at or above the threshold,
    /// never one with an error or a slow record, and leaves every other trace whole.
    #[tokio::test]
    async fn sampled_pruning_takes_whole_traces_and_spares_kept_ones() {
        let (_dir, pool) = open().await;
        // 2,000 traces of four records; in each, at most one record is an error or slow.
        let mut all = rows(8_000);
        for (i, row) in all.iter_mut().enumerate() {
            row.status = 200;
            row.ok = true;
            row.duration_us = 1_000;
            let trace = i / 4;
            if i % 4 == 3 && trace % 7 == 0 {
                row.status = 503;
                row.ok = false;
            }
            if i % 4 == 2 && trace % 11 == 0 {
                row.duration_us = 2_000_000;
            }
        }
        insert(&pool, &all).await.unwrap();
        let threshold = crate::sample::threshold(0.3);
        let kept = |trace: usize| trace.is_multiple_of(7) || trace.is_multiple_of(11);
        // Only ids up to 6,000 are looked at: traces 0-1499 (and nothing past them).
        let deleted = prune_sampled(&pool, 0, 6_000, threshold, 1_000_000)
            .await
            .unwrap();
        let mut expected_deleted = 0;
        for t in 0..2_000usize {
            let id = format!("{:032x}", t + 1);
            let sampled_out = crate::sample::of(&id) >= threshold;
            let held = super::trace(&pool, &id).await.unwrap().len();
            let goes = t < 1_500 && sampled_out && !kept(t);
            if goes {
                expected_deleted += 4;
            }
            assert_eq!(held, if goes { 0 } else { 4 }, "trace {t}");
        }
        assert_eq!(deleted, expected_deleted);
        assert!(expected_deleted > 2_000, "the test pruned too little");
        let (_, _, kept_traces) = holdings(&pool, 1_000_000).await.unwrap();
        assert_eq!(kept_traces, (0..2_000).filter(|t| kept(*t)).count() as i64);
    }

    /// Ingest speed into SQLite: `cargo test -p stratus-events --release -- --ignored --nocapture`.
    #[tokio::test]
    #[ignore]
    async fn ingest_benchmark() {
        let (_dir, pool) = open().await;
        let batches: Vec<Vec<Row>> = (0..100).map(|_| rows(2000)).collect();
        let started = std::time::Instant::now();
        for batch in &batches {
            insert(&pool, batch).await.unwrap();
        }
        let seconds = started.elapsed().as_secs_f64();
        let total = batches.len() * 2000;
        println!(
            "events ingest: {total} records in {seconds:.2}s = {:.0} records/s (batches of 2000, SQLite WAL)",
            total as f64 / seconds
        );
    }
}
