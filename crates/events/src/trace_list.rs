//! The trace list: the newest traces, found by reading the newest records back from the
//! newest, never by grouping a window's records.
//!
//! `GET /v1/traces` and the dashboard's list used to group every record of the window (an hour
//! by default) by trace: at 30,000 records a second that is a hundred million rows a query.
//! Instead, records are read newest first through the `started_us` index, a chunk at a time; the
//! traces they belong to are summed up through the `trace_id` index (all their records, however
//! old). Having read down to start time `P`, every trace not yet seen has all its records
//! before `P`, so it starts before `P`: once `limit` of the traces seen start at or after `P`,
//! they are the newest, and reading stops. The cost follows `limit`, not the traffic.

use std::collections::HashSet;

use sqlx::AnyPool;

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

/// Records read per step back.
fn chunk_for(limit: i64) -> i64 {
    (limit * 8).clamp(200, 5_000)
}

/// `$first, $first+1, ...` for `n` values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The newest `limit` traces that start between `since_us` and `until_us`, newest first. (The
/// dashboard lists traces a second old, so that their callers' records, which flush later,
/// are in.)
pub async fn newest(
    pool: &AnyPool,
    since_us: i64,
    until_us: i64,
    limit: i64,
) -> Result<Vec<TraceSummary>, sqlx::Error> {
    let chunk = chunk_for(limit);
    let mut seen: HashSet<String> = HashSet::new();
    let mut found: Vec<TraceSummary> = Vec::new();
    // Where the reading is: the last record read, by (started_us, id).
    let mut at: Option<(i64, i64)> = None;
    loop {
        let page: Vec<(String, i64, i64)> = match at {
            None => {
                sqlx::query_as(&format!(
                    "SELECT trace_id, started_us, id FROM events WHERE started_us >= $1 \
                     AND started_us <= $2 ORDER BY started_us DESC, id DESC LIMIT {chunk}"
                ))
                .bind(since_us)
                .bind(until_us)
                .fetch_all(pool)
                .await?
            }
            Some((started_us, id)) => {
                sqlx::query_as(&format!(
                    "SELECT trace_id, started_us, id FROM events WHERE started_us >= $1 \
                     AND (started_us < $2 OR (started_us = $2 AND id < $3)) \
                     ORDER BY started_us DESC, id DESC LIMIT {chunk}"
                ))
                .bind(since_us)
                .bind(started_us)
                .bind(id)
                .fetch_all(pool)
                .await?
            }
        };
        let exhausted = (page.len() as i64) < chunk;
        at = page.last().map(|(_, started_us, id)| (*started_us, *id));
        let new: Vec<String> = page
            .into_iter()
            .map(|(trace_id, _, _)| trace_id)
            .filter(|trace_id| seen.insert(trace_id.clone()))
            .collect();
        found.extend(summaries(pool, &new).await?);
        let certain = match at {
            Some((reached, _)) => found.iter().filter(|t| t.started_us >= reached).count(),
            None => found.len(),
        };
        if exhausted || certain as i64 >= limit {
            break;
        }
    }
    found.retain(|t| t.started_us >= since_us && t.started_us <= until_us);
    found.sort_by(|a, b| (b.started_us, &b.trace_id).cmp(&(a.started_us, &a.trace_id)));
    found.truncate(limit.max(0) as usize);
    name_roots(pool, &mut found).await?;
    Ok(found)
}

/// Start, end, records and errors of each trace, over all its records.
async fn summaries(pool: &AnyPool, ids: &[String]) -> Result<Vec<TraceSummary>, sqlx::Error> {
    let mut out = Vec::with_capacity(ids.len());
    for ids in ids.chunks(500) {
        let sql = format!(
            "SELECT trace_id, MIN(started_us), MAX(started_us + duration_us), COUNT(*), \
             CAST(SUM(1 - ok) AS BIGINT) FROM events WHERE trace_id IN ({}) GROUP BY trace_id",
            placeholders(1, ids.len())
        );
        let mut query = sqlx::query_as::<_, (String, i64, i64, i64, i64)>(&sql);
        for id in ids {
            query = query.bind(id);
        }
        for (trace_id, start, end, spans, errors) in query.fetch_all(pool).await? {
            out.push(TraceSummary {
                trace_id,
                service: String::new(),
                name: String::new(),
                started_us: start,
                duration_us: end - start,
                spans,
                errors,
            });
        }
    }
    Ok(out)
}

/// Each trace's first record's service and name, in one statement.
async fn name_roots(pool: &AnyPool, traces: &mut [TraceSummary]) -> Result<(), sqlx::Error> {
    if traces.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "SELECT trace_id, service, name FROM (SELECT trace_id, service, name, ROW_NUMBER() \
         OVER (PARTITION BY trace_id ORDER BY started_us, id) AS n FROM events \
         WHERE trace_id IN ({})) AS firsts WHERE n = 1",
        placeholders(1, traces.len())
    );
    let mut query = sqlx::query_as::<_, (String, String, String)>(&sql);
    for trace in traces.iter() {
        query = query.bind(trace.trace_id.clone());
    }
    let roots: std::collections::HashMap<String, (String, String)> = query
        .fetch_all(pool)
        .await?
        .into_iter()
        .map(|(trace_id, service, name)| (trace_id, (service, name)))
        .collect();
    for trace in traces {
        if let Some((service, name)) = roots.get(&trace.trace_id) {
            trace.service.clone_from(service);
            trace.name.clone_from(name);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Row;
    use crate::store;
    use crate::store::tests::open;

    /// `traces` traces of up to five records each, started a millisecond apart, each record
    /// a little after its trace's root; every seventh record an error. Stored children first
    /// (as reporters send them).
    fn traces(traces: usize) -> Vec<Row> {
        let base = crate::record::validate(crate::record::tests::record()).unwrap();
        let mut rows = Vec::new();
        for t in 0..traces {
            let spans = 1 + t % 5;
            for s in (0..spans).rev() {
                let mut r = base.clone();
                r.trace_id = format!("{:032x}", t + 1);
                r.span_id = format!("{:016x}", t * 10 + s + 1);
                r.service = if s == 0 { "gateway" } else { "catalog" }.into();
                r.name = format!("/t{t}/s{s}");
                // Every other trace is slow: its calls start 400 ms after its root, among
                // the records of 400 newer traces, so reading back meets many traces that
                // started long before the records around them.
                let late = if t % 2 == 0 && s > 0 { 400_000 } else { 0 };
                r.started_us = 1_800_000_000_000_000 + t as i64 * 1_000 + s as i64 * 10 + late;
                r.duration_us = 500 - s as i64 * 10 + late;
                r.ok = (t + s) % 7 != 0;
                rows.push(r);
            }
        }
        rows
    }

    /// The answer the old query gave: every record of the window grouped by trace.
    fn grouped(rows: &[Row], since_us: i64, until_us: i64, limit: usize) -> Vec<TraceSummary> {
        let mut by_trace: std::collections::BTreeMap<&str, Vec<&Row>> = Default::default();
        for r in rows {
            by_trace.entry(&r.trace_id).or_default().push(r);
        }
        let mut out: Vec<TraceSummary> = by_trace
            .into_iter()
            .map(|(trace_id, records)| {
                let first = records.iter().min_by_key(|r| r.started_us).unwrap();
                let start = first.started_us;
                let end = records
                    .iter()
                    .map(|r| r.started_us + r.duration_us)
                    .max()
                    .unwrap();
                TraceSummary {
                    trace_id: trace_id.to_string(),
                    service: first.service.clone(),
                    name: first.name.clone(),
                    started_us: start,
                    duration_us: end - start,
                    spans: records.len() as i64,
                    errors: records.iter().filter(|r| !r.ok).count() as i64,
                }
            })
            .filter(|t| t.started_us >= since_us && t.started_us <= until_us)
            .collect();
        out.sort_by_key(|t| std::cmp::Reverse(t.started_us));
        out.truncate(limit);
        out
    }

    #[tokio::test]
    async fn the_newest_traces_equal_a_grouping_of_every_record() {
        let (_dir, pool) = open().await;
        let rows = traces(3_000);
        for batch in rows.chunks(1_000) {
            store::insert(&pool, batch).await.unwrap();
        }
        let start = rows.iter().map(|r| r.started_us).min().unwrap();
        let end = rows.iter().map(|r| r.started_us).max().unwrap();
        for (since, until, limit) in [
            (start, end, 15),
            (start, end, 1_000),
            (start, end - 1_500_000, 25),
            (start + 2_990_000, end, 100),
            (start, start + 3_000, 10),
            (end + 1, end + 10, 5),
        ] {
            let got = newest(&pool, since, until, limit).await.unwrap();
            assert_eq!(
                got,
                grouped(&rows, since, until, limit as usize),
                "{since} {until} {limit}"
            );
        }
    }
}
