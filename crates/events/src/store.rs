//! The sink's own database: one `events` table, written in batches, read by trace, by filter and
//! for stats, and kept within its retention bound.

use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row as _};
use stratus_kit::db::Migration;

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

enum Bind {
    Text(String),
    Int(i64),
}

/// The newest records matching the filter, newest first.
pub async fn events(pool: &AnyPool, filter: &Filter) -> Result<Vec<Row>, sqlx::Error> {
    let mut clauses = Vec::new();
    let mut binds = Vec::new();
    let mut push = |clause: &str, value: Bind, binds: &mut Vec<Bind>| {
        binds.push(value);
        clauses.push(format!("{clause} ${}", binds.len()));
    };
    if let Some(service) = &filter.service {
        push("service =", Bind::Text(service.clone()), &mut binds);
    }
    if let Some(instance) = &filter.instance {
        push("instance =", Bind::Text(instance.clone()), &mut binds);
    }
    if let Some((low, high)) = filter.status {
        push("status >=", Bind::Int(low), &mut binds);
        push("status <=", Bind::Int(high), &mut binds);
    }
    if let Some(since) = filter.since_us {
        push("started_us >=", Bind::Int(since), &mut binds);
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
    let mut query = sqlx::query_as::<_, Row>(&sql);
    for bind in binds {
        query = match bind {
            Bind::Text(text) => query.bind(text),
            Bind::Int(value) => query.bind(value),
        };
    }
    query.fetch_all(pool).await
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

/// What the aggregates need of one stored record a service handled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub started_us: i64,
    pub service: String,
    pub instance: String,
    pub name: String,
    pub ok: bool,
    pub duration_us: i64,
}

/// The newest record's id (0 for none): records stored after it are new.
pub async fn max_id(pool: &AnyPool) -> Result<i64, sqlx::Error> {
    let (id,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(id), 0) FROM events")
        .fetch_one(pool)
        .await?;
    Ok(id)
}

/// Up to `limit` records services handled with `after < id <= up_to`, started since
/// `since_us`, by id; and the last id read. Paged by primary key, so each page is a short read
/// (a long one would hold back SQLite's WAL checkpoints).
pub async fn served_page(
    pool: &AnyPool,
    after: i64,
    up_to: i64,
    since_us: i64,
    limit: i64,
) -> Result<(Vec<Served>, Option<i64>), sqlx::Error> {
    type ServedTuple = (i64, i64, String, String, String, i64, i64);
    let rows: Vec<ServedTuple> = sqlx::query_as(&format!(
        "SELECT id, started_us, service, instance, name, ok, duration_us FROM events \
         WHERE id > $1 AND id <= $2 AND started_us >= $3 \
         AND NOT (kind = 'client' AND peer IS NOT NULL) ORDER BY id LIMIT {limit}"
    ))
    .bind(after)
    .bind(up_to)
    .bind(since_us)
    .fetch_all(pool)
    .await?;
    let last = rows.last().map(|row| row.0);
    let served = rows
        .into_iter()
        .map(
            |(_, started_us, service, instance, name, ok, duration_us)| Served {
                started_us,
                service,
                instance,
                name,
                ok: ok != 0,
                duration_us,
            },
        )
        .collect();
    Ok((served, last))
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

/// The most records one window query reads: a dashboard over a busy minute stays bounded.
pub const MAX_WINDOW_ROWS: i64 = 200_000;

/// Records one statement of [`hops`] reads: each chunk is its own short read transaction, so no
/// snapshot lives long enough to keep the sink's WAL from being checkpointed (crate::checkpoint).
const HOPS_CHUNK: i64 = 10_000;

/// The newest records (up to [`MAX_WINDOW_ROWS`]) started since `since_us`, as hops.
///
/// Read newest first in chunks of [`HOPS_CHUNK`], each after the last one's (started_us, id):
/// one statement over 200,000 rows held a snapshot for seconds under load, and while any reader
/// holds one SQLite cannot start its WAL over. Chunks are separate snapshots, so a record
/// pruned meanwhile may be missing and one stored meanwhile is not read (it starts after the
/// first chunk's newest, or is older than where the reading is): a window that is a moment old.
pub async fn hops(pool: &AnyPool, since_us: i64) -> Result<Vec<Hop>, sqlx::Error> {
    type HopTuple = (
        i64,
        String,
        Option<String>,
        String,
        String,
        String,
        i64,
        i64,
        i64,
        Option<String>,
        String,
        Option<String>,
        i64,
    );
    const SELECT: &str = "SELECT id, span_id, parent_span_id, service, instance, kind, ok, \
        duration_us, started_us, topic, name, peer, status FROM events WHERE started_us >= $1";
    let mut rows: Vec<HopTuple> = Vec::new();
    let mut after: Option<(i64, i64)> = None;
    while (rows.len() as i64) < MAX_WINDOW_ROWS {
        let limit = HOPS_CHUNK.min(MAX_WINDOW_ROWS - rows.len() as i64);
        let chunk: Vec<HopTuple> = match after {
            None => {
                sqlx::query_as(&format!(
                    "{SELECT} ORDER BY started_us DESC, id DESC LIMIT {limit}"
                ))
                .bind(since_us)
                .fetch_all(pool)
                .await?
            }
            Some((started_us, id)) => {
                sqlx::query_as(&format!(
                    "{SELECT} AND (started_us < $2 OR (started_us = $2 AND id < $3)) \
                     ORDER BY started_us DESC, id DESC LIMIT {limit}"
                ))
                .bind(since_us)
                .bind(started_us)
                .bind(id)
                .fetch_all(pool)
                .await?
            }
        };
        let full = chunk.len() as i64 == limit;
        after = chunk.last().map(|row| (row.8, row.0));
        rows.extend(chunk);
        if !full {
            break;
        }
    }
    Ok(rows
        .into_iter()
        .map(
            |(
                _id,
                span_id,
                parent_span_id,
                service,
                instance,
                kind,
                ok,
                duration_us,
                _started_us,
                topic,
                name,
                peer,
                status,
            )| Hop {
                span_id,
                parent_span_id,
                service,
                instance,
                kind,
                ok: ok != 0,
                duration_us,
                topic,
                name,
                peer,
                status,
            },
        )
        .collect())
}

/// One trace in the trace list.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TraceSummary {
    pub trace_id: String,
    /// The first record's service and name (normally the gateway's route).
    pub service: String,
    pub name: String,
    pub started_us: i64,
    pub duration_us: i64,
    pub spans: i64,
    pub errors: i64,
}

/// The newest traces started between `since_us` and `until_us`, newest first. (The dashboard
/// lists traces a second old, so that their callers' records, which flush later, are in.)
pub async fn traces(
    pool: &AnyPool,
    since_us: i64,
    until_us: i64,
    limit: i64,
) -> Result<Vec<TraceSummary>, sqlx::Error> {
    type SummaryTuple = (String, i64, i64, i64, i64);
    let rows: Vec<SummaryTuple> = sqlx::query_as(&format!(
        "SELECT trace_id, MIN(started_us), MAX(started_us + duration_us), COUNT(*), \
         CAST(SUM(1 - ok) AS BIGINT) FROM events WHERE started_us >= $1 GROUP BY trace_id \
         HAVING MIN(started_us) <= $2 ORDER BY MIN(started_us) DESC LIMIT {limit}"
    ))
    .bind(since_us)
    .bind(until_us)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for (trace_id, start, end, spans, errors) in rows {
        let first: Option<(String, String)> = sqlx::query_as(
            "SELECT service, name FROM events WHERE trace_id = $1 ORDER BY started_us, id LIMIT 1",
        )
        .bind(&trace_id)
        .fetch_optional(pool)
        .await?;
        let (service, name) = first.unwrap_or_default();
        out.push(TraceSummary {
            trace_id,
            service,
            name,
            started_us: start,
            duration_us: end - start,
            spans,
            errors,
        });
    }
    Ok(out)
}

/// Records one pruning statement may select (it deletes their traces' every record): few, since
/// every deletion goes to the WAL.
const PRUNE_TRACES: i64 = 500;

/// Deletes, whole, the traces of up to [`PRUNE_TRACES`] records started before `before_us`
/// (past the retention): a trace goes when its oldest record does, never in part. Returns how
/// many records went; the caller repeats while that is more than 0.
pub async fn prune_expired(pool: &AnyPool, before_us: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(&format!(
        "DELETE FROM events WHERE trace_id IN (SELECT trace_id FROM events \
         WHERE started_us < $1 ORDER BY started_us LIMIT {PRUNE_TRACES})"
    ))
    .bind(before_us)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Deletes, whole, every trace that has a record with an id in `after_id + 1 ..= up_to_id`
/// whose sample value is at or above `threshold` (or that has none: stored before sampling),
/// unless one of its records is an error or took at least `slow_us` (a kept trace). Returns how
/// many records went.
pub async fn prune_sampled(
    pool: &AnyPool,
    after_id: i64,
    up_to_id: i64,
    threshold: i64,
    slow_us: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM events WHERE trace_id IN (SELECT c.trace_id FROM events c \
         WHERE c.id > $1 AND c.id <= $2 AND (c.sample IS NULL OR c.sample >= $3) \
         AND NOT EXISTS (SELECT 1 FROM events k WHERE k.trace_id = c.trace_id \
         AND (k.ok = 0 OR k.status >= 500 OR k.duration_us >= $4)))",
    )
    .bind(after_id)
    .bind(up_to_id)
    .bind(threshold)
    .bind(slow_us)
    .execute(pool)
    .await?
    .rows_affected())
}

/// The last resort of a budget that kept traces alone overflow: deletes, whole, the traces of
/// the oldest [`PRUNE_TRACES`] records, kept or not. Returns how many records went.
pub async fn prune_oldest(pool: &AnyPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(&format!(
        "DELETE FROM events WHERE trace_id IN (SELECT trace_id FROM events \
         ORDER BY id LIMIT {PRUNE_TRACES})"
    ))
    .execute(pool)
    .await?
    .rows_affected())
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
mod tests {
    use super::*;
    use crate::record::tests::record;
    use crate::record::validate;

    async fn open() -> (tempfile::TempDir, AnyPool) {
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

    /// The window is read in chunks, each after the last one's (started_us, id): every record
    /// once, newest first, also where records sharing a start time straddle a chunk's edge.
    #[tokio::test]
    async fn hops_read_in_chunks_miss_and_repeat_nothing() {
        let (_dir, pool) = open().await;
        let mut all = rows(25_003);
        let base = all[0].started_us;
        for (i, row) in all.iter_mut().enumerate() {
            // Three records per start time; 10,000 is not a multiple of 3.
            row.started_us = base + (i / 3) as i64;
        }
        for chunk in all.chunks(5_000) {
            insert(&pool, chunk).await.unwrap();
        }
        let hops = hops(&pool, 0).await.unwrap();
        let expected: Vec<&str> = all.iter().rev().map(|r| r.span_id.as_str()).collect();
        let got: Vec<&str> = hops.iter().map(|h| h.span_id.as_str()).collect();
        assert_eq!(got, expected);
        let since = hops_since(&pool, base + 5_000).await;
        assert_eq!(since, 25_003 - 15_000);
    }

    async fn hops_since(pool: &AnyPool, since_us: i64) -> usize {
        hops(pool, since_us).await.unwrap().len()
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
