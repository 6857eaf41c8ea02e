//! The `logs` table: log lines written by the one writer (crate::writer) beside the events,
//! read newest first by filter, and pruned by the same pruner (crate::budget) oldest first.
//!
//! Text search (`q`) is a case-insensitive substring match over the message and the fields'
//! JSON text: a scan of the rows the other filters leave, bounded by the limit and the
//! storage budget. The indexes serve the filters a user starts from (a service, a trace, a
//! time range), newest first.

use sqlx::any::AnyRow;
use sqlx::{AnyPool, Row as _};

use crate::log_line::{level_of, LogLine};
use crate::store::{fetch_filtered, Bind};

/// The logs table and its indexes: the same in both dialects but for the id column.
macro_rules! logs_schema {
    ($id:literal) => {
        concat!(
            "CREATE TABLE logs (id ",
            $id,
            ",
        time_us BIGINT NOT NULL,
        service TEXT NOT NULL,
        instance TEXT NOT NULL,
        severity BIGINT NOT NULL,
        target TEXT NOT NULL,
        message TEXT NOT NULL,
        fields TEXT NOT NULL,
        trace_id TEXT,
        span_id TEXT
    );
    CREATE INDEX logs_time ON logs (time_us);
    CREATE INDEX logs_service_time ON logs (service, time_us);
    CREATE INDEX logs_trace ON logs (trace_id)"
        )
    };
}

pub const SQLITE_SCHEMA: &str = logs_schema!("INTEGER PRIMARY KEY");
pub const POSTGRES_SCHEMA: &str = logs_schema!("BIGSERIAL PRIMARY KEY");

const COLUMNS: &str =
    "time_us, service, instance, severity, target, message, fields, trace_id, span_id";
const PER_ROW: usize = 9;
/// Rows per INSERT through the pool (PostgreSQL: 4,500 parameters of its 65,535).
const ROWS_PER_STATEMENT: usize = 500;

/// The writer's SQLite statement (crate::sqlite), one row at a time.
pub const SQLITE_INSERT: &str = "INSERT INTO logs (time_us, service, instance, severity, target, \
    message, fields, trace_id, span_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)";

impl<'r> sqlx::FromRow<'r, AnyRow> for LogLine {
    fn from_row(r: &'r AnyRow) -> Result<Self, sqlx::Error> {
        let severity: i64 = r.try_get(3)?;
        Ok(LogLine {
            time_us: r.try_get(0)?,
            service: r.try_get(1)?,
            instance: r.try_get(2)?,
            level: level_of(severity).to_string(),
            severity,
            target: r.try_get(4)?,
            message: r.try_get(5)?,
            fields: r.try_get(6)?,
            trace_id: r.try_get(7)?,
            span_id: r.try_get(8)?,
        })
    }
}

fn insert_sql(rows: usize, numbered: bool) -> String {
    let mut sql = format!("INSERT INTO logs ({COLUMNS}) VALUES ");
    let mut n = 0;
    for r in 0..rows {
        sql.push_str(if r > 0 { ",(" } else { "(" });
        for c in 0..PER_ROW {
            if c > 0 {
                sql.push(',');
            }
            n += 1;
            if numbered {
                sql.push_str(&format!("${n}"));
            } else {
                sql.push('?');
            }
        }
        sql.push(')');
    }
    sql
}

/// Inserts lines inside a transaction the caller commits (the pool writer's path).
pub async fn insert_into(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    lines: &[LogLine],
) -> Result<(), sqlx::Error> {
    let numbered = (**tx).backend_name() != "SQLite";
    for chunk in lines.chunks(ROWS_PER_STATEMENT) {
        let sql = insert_sql(chunk.len(), numbered);
        let mut query = sqlx::query(&sql);
        for line in chunk {
            query = query
                .bind(line.time_us)
                .bind(line.service.as_str())
                .bind(line.instance.as_str())
                .bind(line.severity)
                .bind(line.target.as_str())
                .bind(line.message.as_str())
                .bind(line.fields.as_str())
                .bind(line.trace_id.as_deref())
                .bind(line.span_id.as_deref());
        }
        query.execute(&mut **tx).await?;
    }
    Ok(())
}

/// Inserts lines on the SQLite writer's connection, inside its transaction.
pub fn insert_sqlite(tx: &rusqlite::Transaction<'_>, lines: &[&LogLine]) -> rusqlite::Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let mut insert = tx.prepare_cached(SQLITE_INSERT)?;
    for line in lines {
        insert.execute(rusqlite::params![
            line.time_us,
            line.service,
            line.instance,
            line.severity,
            line.target,
            line.message,
            line.fields,
            line.trace_id,
            line.span_id,
        ])?;
    }
    Ok(())
}

/// Filters for [`query`]; every one optional but the limit.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogFilter {
    pub service: Option<String>,
    pub instance: Option<String>,
    /// At least this severity number.
    pub min_severity: Option<i64>,
    pub trace_id: Option<String>,
    /// A substring of the message or the fields, any case.
    pub text: Option<String>,
    pub since_us: Option<i64>,
    /// Before this time (exclusive).
    pub until_us: Option<i64>,
    pub limit: i64,
}

/// `text` as a LIKE pattern matching it anywhere, its own `%`, `_` and `\` taken literally.
fn contains_pattern(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

fn query_sql(filter: &LogFilter) -> (String, Vec<Bind>) {
    let mut clauses = Vec::new();
    let mut binds = Vec::new();
    let mut push = |clause: &str, value: Bind| {
        binds.push(value);
        clauses.push(clause.replace('?', &format!("${}", binds.len())));
    };
    if let Some(service) = &filter.service {
        push("service = ?", Bind::Text(service.clone()));
    }
    if let Some(instance) = &filter.instance {
        push("instance = ?", Bind::Text(instance.clone()));
    }
    if let Some(severity) = filter.min_severity {
        push("severity >= ?", Bind::Int(severity));
    }
    if let Some(trace_id) = &filter.trace_id {
        push("trace_id = ?", Bind::Text(trace_id.clone()));
    }
    if let Some(since) = filter.since_us {
        push("time_us >= ?", Bind::Int(since));
    }
    if let Some(until) = filter.until_us {
        push("time_us < ?", Bind::Int(until));
    }
    if let Some(text) = &filter.text {
        // LOWER on both sides: SQLite's LIKE ignores ASCII case, PostgreSQL's does not.
        push(
            "(LOWER(message) LIKE ? ESCAPE '\\' OR LOWER(fields) LIKE ? ESCAPE '\\')",
            Bind::Text(contains_pattern(text)),
        );
    }
    let mut sql = format!("SELECT {COLUMNS} FROM logs");
    if !clauses.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&clauses.join(" AND "));
    }
    sql.push_str(&format!(
        " ORDER BY time_us DESC, id DESC LIMIT {}",
        filter.limit
    ));
    (sql, binds)
}

/// The newest lines matching the filter, newest first.
pub async fn query(pool: &AnyPool, filter: &LogFilter) -> Result<Vec<LogLine>, sqlx::Error> {
    let (sql, binds) = query_sql(filter);
    fetch_filtered(pool, &sql, binds).await
}

pub async fn count(pool: &AnyPool) -> Result<i64, sqlx::Error> {
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM logs")
        .fetch_one(pool)
        .await?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_line::tests::line;

    async fn store(pool: &AnyPool, lines: &[LogLine]) {
        let mut tx = pool.begin().await.unwrap();
        insert_into(&mut tx, lines).await.unwrap();
        tx.commit().await.unwrap();
    }

    #[test]
    fn patterns_take_wildcards_literally() {
        assert_eq!(contains_pattern("50%_A\\"), "%50\\%\\_a\\\\%");
    }

    /// Every filter narrows, newest first; text search reads the fields too, any case.
    #[tokio::test]
    async fn filters_narrow_newest_first() {
        let (_dir, pool) = crate::store::tests::open().await;
        let lines: Vec<LogLine> = (0..100)
            .map(|i| {
                let mut l = line(i);
                l.service = if i % 2 == 0 { "orders" } else { "catalog" }.into();
                l.severity = [9, 13, 17][i % 3];
                l.level = level_of(l.severity).into();
                l.trace_id = (i % 10 == 0).then(|| format!("{:032x}", 7));
                l.fields = format!(r#"{{"order":"Ord-{i}"}}"#);
                l
            })
            .collect();
        store(&pool, &lines).await;
        assert_eq!(count(&pool).await.unwrap(), 100);
        let get = |filter: LogFilter| {
            let pool = pool.clone();
            async move {
                query(
                    &pool,
                    &LogFilter {
                        limit: 1000,
                        ..filter
                    },
                )
                .await
                .unwrap()
            }
        };
        let all = get(LogFilter::default()).await;
        assert_eq!(all.len(), 100);
        assert_eq!(all[0], lines[99]);
        let orders = get(LogFilter {
            service: Some("orders".into()),
            ..Default::default()
        })
        .await;
        assert_eq!(orders.len(), 50);
        let errors = get(LogFilter {
            min_severity: Some(17),
            ..Default::default()
        })
        .await;
        assert!(errors.iter().all(|l| l.level == "error") && errors.len() == 33);
        let traced = get(LogFilter {
            trace_id: Some(format!("{:032x}", 7)),
            ..Default::default()
        })
        .await;
        assert_eq!(traced.len(), 10);
        let found = get(LogFilter {
            text: Some("ORD-42".into()),
            ..Default::default()
        })
        .await;
        assert_eq!(found, vec![lines[42].clone()]);
        let found = get(LogFilter {
            text: Some("line 7".into()),
            ..Default::default()
        })
        .await;
        assert_eq!(found.len(), 11); // line 7, 70-79
        let window = get(LogFilter {
            since_us: Some(lines[10].time_us),
            until_us: Some(lines[20].time_us),
            ..Default::default()
        })
        .await;
        assert_eq!(window.len(), 10);
        assert_eq!(window[0], lines[19]);
        let limited = query(
            &pool,
            &LogFilter {
                limit: 3,
                ..Default::default()
            },
        )
        .await
        .unwrap();
        assert_eq!(limited.len(), 3);
    }
}
