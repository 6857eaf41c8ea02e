//! The sink's HTTP API, under `/v1`.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prost::Message;
use serde_json::json;
use sqlx::AnyPool;
use stratus_kit::caller::Caller;
use stratus_kit::event_wire;
use stratus_kit::events::EventRecord;
use stratus_kit::fold;
use stratus_kit::openapi::Api;
use stratus_kit::{Json, Problem};

use crate::aggregate::Aggregates;
use crate::budget::Storage;
use crate::live::{self, Live};
use crate::record::{check_folded, is_hex, parse_time, validate_batch, validate_wire_batch, Row};
use crate::registry::Registry;
use crate::writer::{WriteError, Writer};
use crate::{dashboard, logs_api, otlp, proto, store, trace_list};

/// The largest ingest body: 4 MiB.
pub const MAX_BODY: usize = 4 * 1024 * 1024;
/// The most records one batch may carry.
pub const MAX_BATCH: usize = 10_000;
const MAX_LIMIT: i64 = 1_000;
const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);

#[derive(Clone)]
pub struct AppState {
    pub pool: AnyPool,
    pub registry: Registry,
    pub live: Live,
    /// The one task that writes (and hands stored batches to the OTLP exporter, if any).
    pub writer: Writer,
    /// Per-second and per-minute counts and latencies, fed by the writer: what stats are read
    /// from.
    pub aggregates: Aggregates,
    /// The storage budget and what the pruner last measured (`/v1/storage`).
    pub storage: Storage,
}

type Shared = State<AppState>;

/// The event sink's API as an OpenAPI 3.0 document, at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every route the sink serves, the dashboard's too, each recorded against `openapi.json` by the
/// kit's `Api`.
pub fn routes() -> Api<AppState> {
    // Queries and the dashboard: operators only (records name every caller and every path).
    // Intake: each service posts its own records.
    Api::new(OPENAPI, "")
        .get("/v1/events", list)
        .get("/v1/traces", traces)
        .get("/v1/traces/{trace_id}", trace)
        .get("/v1/stats", stats)
        .get("/v1/topology", topology)
        .get("/v1/instances", instances)
        .get("/v1/stream", stream)
        .get("/v1/storage", storage)
        .get("/v1/logs", logs_api::query)
        .get("/v1/logs/stream", logs_api::stream)
        .get("/", dashboard::page)
        .get("/dashboard/app.js", dashboard::script)
        .get("/dashboard/logs.js", dashboard::logs_script)
        .get("/dashboard/style.css", dashboard::style)
        .layer(axum::middleware::from_fn(
            stratus_kit::caller::operator_only,
        ))
        .post("/v1/events", ingest)
        .post("/v1/summaries", ingest_summary)
        .post("/v1/traces", ingest_otlp)
        .post("/v1/logs", logs_api::ingest)
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

async fn store_batch(state: &AppState, records: Vec<EventRecord>) -> Result<usize, Problem> {
    if records.len() > MAX_BATCH {
        return Err(too_many());
    }
    let rows = validate_batch(records).map_err(Problem::unprocessable)?;
    store_rows(state, rows).await
}

fn too_many() -> Problem {
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("a batch may carry at most {MAX_BATCH} records"),
    )
}

/// How long a batch may wait for room in the writer's queue before it is refused with 503:
/// under the reporters' 2 s timeout (kit::events), so a reporter hears "not stored" and folds the
/// batch into its summary rather than giving up unsure.
const HAND_OVER: Duration = Duration::from_secs(1);

async fn store_rows(state: &AppState, rows: Vec<Row>) -> Result<usize, Problem> {
    let count = rows.len();
    state
        .writer
        .write_within(rows, HAND_OVER)
        .await
        .map_err(|error| match error {
            WriteError::Busy => {
                metrics::counter!("events_batches_refused_total").increment(1);
                Problem::unavailable(
                    "the sink is storing as fast as it can; nothing was stored",
                    1,
                )
            }
            WriteError::Failed(error) => Problem::internal(error),
        })?;
    tracing::debug!(records = count, "stored");
    Ok(count)
}

/// With the mesh on, a service may post only records naming itself (an operator, any).
pub(crate) fn check_reporter<'a>(
    caller: &Caller,
    mut services: impl Iterator<Item = &'a str>,
) -> Result<(), Problem> {
    match caller {
        Caller::Unchecked => Ok(()),
        Caller::Nobody => Err(Problem::unauthorized(
            "posting records needs a Stratus certificate (mutual TLS)",
        )),
        Caller::Id(_) if caller.is_operator() => Ok(()),
        Caller::Id(id) => match services.find(|service| caller.acts_as(service).is_err()) {
            Some(other) => Err(Problem::forbidden(format!(
                "{} cannot post records as `{other}`",
                id.uri()
            ))),
            None => Ok(()),
        },
    }
}

async fn ingest(
    State(state): Shared,
    caller: Caller,
    request: Request,
) -> Result<impl IntoResponse, Problem> {
    let binary = sent_as(&request, event_wire::CONTENT_TYPE);
    let accepted = if binary {
        let rows = decode_wire(request).await?;
        check_reporter(&caller, rows.iter().map(|row| row.service.as_str()))?;
        store_rows(&state, rows).await?
    } else {
        let records = decode_batch(request).await?;
        check_reporter(
            &caller,
            records.iter().map(|record| record.service.as_str()),
        )?;
        store_batch(&state, records).await?
    };
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"accepted": accepted})),
    ))
}

/// Whether the request's body is of `media_type` (parameters after it allowed).
fn sent_as(request: &Request, media_type: &str) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with(media_type))
}

/// A reporter's summary of the records it folded instead of sending (`kit::fold`): merged into
/// the stats and the topology's edges as if the records had arrived; no row is stored. Each
/// service may post only its own, as with records.
async fn ingest_summary(
    State(state): Shared,
    caller: Caller,
    request: Request,
) -> Result<impl IntoResponse, Problem> {
    if !sent_as(&request, fold::CONTENT_TYPE) {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("a summary is sent as {}", fold::CONTENT_TYPE),
        ));
    }
    let bytes = Bytes::from_request(request, &())
        .await
        .map_err(|e| Problem::new(e.status(), e.body_text()))?;
    let entries = fold::read_summary(&bytes, MAX_BATCH).map_err(|e| match e {
        fold::SummaryError::TooMany { .. } => Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a summary may carry at most {MAX_BATCH} entries"),
        ),
        other => Problem::new(StatusCode::BAD_REQUEST, other.to_string()),
    })?;
    check_folded(&entries).map_err(Problem::unprocessable)?;
    check_reporter(&caller, entries.iter().map(|entry| entry.service))?;
    state.aggregates.add_folded(&entries);
    let records: u64 = entries.iter().map(|entry| entry.tally.count).sum();
    metrics::counter!("events_summaries_total").increment(1);
    metrics::counter!("events_summary_records_total").increment(records);
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({"merged": entries.len(), "records": records})),
    ))
}

/// A binary batch ([`event_wire`]): framing checked, then every record as a JSON one is.
async fn decode_wire(request: Request) -> Result<Vec<Row>, Problem> {
    let bytes = Bytes::from_request(request, &())
        .await
        .map_err(|e| Problem::new(e.status(), e.body_text()))?;
    let records = event_wire::read_batch(&bytes, MAX_BATCH).map_err(|e| match e {
        event_wire::WireError::TooMany { .. } => too_many(),
        other => Problem::new(StatusCode::BAD_REQUEST, other.to_string()),
    })?;
    validate_wire_batch(&records).map_err(Problem::unprocessable)
}

/// A JSON batch, parsed straight from the body with serde_json. axum's `Json` (behind
/// `kit::Json`) records the path of every value it reads, so that an error can name it; on a
/// batch of records that cost more than storing them (callgrind: about 15,000 instructions a
/// record). A body that does not parse gets exactly `kit::Json`'s answer, from `kit::Json`.
async fn decode_batch(request: Request) -> Result<Vec<EventRecord>, Problem> {
    let plain_json = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !plain_json {
        // Not JSON (415), or a `+json` type kit::Json also takes.
        let Json(records) = Json::<Vec<EventRecord>>::from_request(request, &()).await?;
        return Ok(records);
    }
    let bytes = Bytes::from_request(request, &())
        .await
        .map_err(|e| Problem::new(e.status(), e.body_text()))?;
    if let Ok(records) = serde_json::from_slice(&bytes) {
        return Ok(records);
    }
    let again = Request::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(axum::body::Body::from(bytes))
        .map_err(|e| Problem::internal(e.to_string()))?;
    let Json(records) = Json::<Vec<EventRecord>>::from_request(again, &()).await?;
    Ok(records)
}

/// OTLP/HTTP: protobuf (`application/x-protobuf`) or JSON (`application/json`), answered in kind.
async fn ingest_otlp(
    State(state): Shared,
    caller: Caller,
    request: Request,
) -> Result<Response, Problem> {
    let protobuf = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-protobuf"));
    if !protobuf {
        let Json(body) = Json::<otlp::ExportRequest>::from_request(request, &()).await?;
        let records = otlp::records(body).map_err(Problem::unprocessable)?;
        check_reporter(
            &caller,
            records.iter().map(|record| record.service.as_str()),
        )?;
        store_batch(&state, records).await?;
        return Ok(axum::Json(json!({"partialSuccess": {}})).into_response());
    }
    let bytes = Bytes::from_request(request, &())
        .await
        .map_err(|e| Problem::new(e.status(), e.body_text()))?;
    let message = proto::ExportTraceServiceRequest::decode(bytes).map_err(|e| {
        Problem::bad_request(format!(
            "the body is not an OTLP ExportTraceServiceRequest: {e}"
        ))
    })?;
    let records = otlp::records(otlp::from_proto(message)).map_err(Problem::unprocessable)?;
    check_reporter(
        &caller,
        records.iter().map(|record| record.service.as_str()),
    )?;
    store_batch(&state, records).await?;
    let answer = proto::ExportTraceServiceResponse::default().encode_to_vec();
    Ok(([(header::CONTENT_TYPE, "application/x-protobuf")], answer).into_response())
}

fn links(rows: Vec<Row>) -> Vec<serde_json::Value> {
    let spans: std::collections::HashSet<String> = rows.iter().map(|r| r.span_id.clone()).collect();
    rows.into_iter()
        .map(|row| {
            let root = row
                .parent_span_id
                .as_ref()
                .is_none_or(|parent| !spans.contains(parent));
            let mut value = serde_json::to_value(row.into_record()).unwrap_or_default();
            value["root"] = json!(root);
            value
        })
        .collect()
}

async fn trace(
    State(state): Shared,
    Path(trace_id): Path<String>,
) -> Result<impl IntoResponse, Problem> {
    if !is_hex(&trace_id, 32) {
        return Err(Problem::bad_request(
            "a trace id is 32 lowercase hex digits, not all zero",
        ));
    }
    let rows = store::trace(&state.pool, &trace_id).await?;
    if rows.is_empty() {
        return Err(Problem::not_found(format!(
            "no records of trace {trace_id}"
        )));
    }
    Ok(axum::Json(
        json!({"trace_id": trace_id, "records": links(rows)}),
    ))
}

fn now_us() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

/// `since`: an RFC 3339 time, or a duration back from now (`5m`).
pub(crate) fn since(text: &str) -> Result<i64, Problem> {
    if let Some(micros) = parse_time(text) {
        return Ok(micros);
    }
    let ago = stratus_kit::duration::parse(text).map_err(|_| {
        Problem::bad_request("since must be an RFC 3339 time or a duration like 5m")
    })?;
    Ok(now_us() - ago.as_micros().min(i64::MAX as u128) as i64)
}

/// `status`: one status (`503`), a class (`5xx`), `error` (500-599) or `ok` (0-499).
fn status(text: &str) -> Result<(i64, i64), Problem> {
    let bad =
        || Problem::bad_request("status must be a status like 503, a class like 5xx, ok or error");
    match text {
        "ok" => Ok((0, 499)),
        "error" => Ok((500, 599)),
        _ if text.len() == 3 && text.ends_with("xx") => {
            let class: i64 = text[..1].parse().map_err(|_| bad())?;
            if !(1..=9).contains(&class) {
                return Err(bad());
            }
            Ok((class * 100, class * 100 + 99))
        }
        _ => {
            let code: i64 = text.parse().map_err(|_| bad())?;
            if !(0..=999).contains(&code) {
                return Err(bad());
            }
            Ok((code, code))
        }
    }
}

pub(crate) fn only(params: &HashMap<String, String>, allowed: &[&str]) -> Result<(), Problem> {
    match params.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(unknown) => Err(Problem::bad_request(format!(
            "unknown parameter {unknown} (allowed: {})",
            allowed.join(", ")
        ))),
        None => Ok(()),
    }
}

fn parse_filter(params: &HashMap<String, String>) -> Result<store::Filter, Problem> {
    only(params, &["service", "instance", "status", "since", "limit"])?;
    let text = |key: &str| -> Result<Option<String>, Problem> {
        match params.get(key) {
            Some(v) if v.is_empty() || v.len() > 128 => {
                Err(Problem::bad_request(format!("{key} must be 1-128 bytes")))
            }
            other => Ok(other.cloned()),
        }
    };
    let limit = match params.get("limit") {
        None => 100,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| Problem::bad_request(format!("limit must be 1-{MAX_LIMIT}")))?,
    };
    Ok(store::Filter {
        service: text("service")?,
        instance: text("instance")?,
        status: params.get("status").map(|s| status(s)).transpose()?,
        since_us: params.get("since").map(|s| since(s)).transpose()?,
        limit,
    })
}

async fn list(
    State(state): Shared,
    Query(params): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, Problem> {
    let filter = parse_filter(&params)?;
    let rows = store::events(&state.pool, &filter).await?;
    let records: Vec<EventRecord> = rows.into_iter().map(Row::into_record).collect();
    Ok(axum::Json(json!({"events": records})))
}

/// `window`: a duration like `60s` or `5m`, at most a day; `default` when absent.
fn window(params: &HashMap<String, String>, default: Duration) -> Result<Duration, Problem> {
    match params.get("window") {
        None => Ok(default),
        Some(text) => stratus_kit::duration::parse(text)
            .ok()
            .filter(|w| !w.is_zero() && *w <= MAX_WINDOW)
            .ok_or_else(|| Problem::bad_request("window must be a duration like 5m, at most 24h")),
    }
}

/// `GET /v1/topology?window=60s`: who called whom, how often, how often it failed, how slowly.
async fn topology(
    State(state): Shared,
    Query(params): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, Problem> {
    only(&params, &["window"])?;
    let window = window(&params, live::WINDOW)?;
    Ok(axum::Json(live::topology(
        &state.aggregates,
        now_us(),
        window,
        &state.registry.snapshot(),
    )))
}

/// `GET /v1/instances?window=60s`: every instance's health and share of its service's traffic.
async fn instances(
    State(state): Shared,
    Query(params): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, Problem> {
    only(&params, &["window"])?;
    let window = window(&params, live::WINDOW)?;
    let view = state.registry.snapshot();
    let services = state.aggregates.stats(now_us() - window.as_micros() as i64);
    Ok(axum::Json(json!({
        "window_seconds": window.as_secs_f64(),
        "registry_reachable": view.reachable,
        "services": live::instances(&view, &services),
    })))
}

/// `GET /v1/traces?limit=25&since=15m`: the newest traces, newest first.
async fn traces(
    State(state): Shared,
    Query(params): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, Problem> {
    only(&params, &["limit", "since"])?;
    let limit = match params.get("limit") {
        None => 25,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| Problem::bad_request(format!("limit must be 1-{MAX_LIMIT}")))?,
    };
    let since_us = match params.get("since") {
        None => now_us() - 3_600_000_000,
        Some(text) => since(text)?,
    };
    let traces = trace_list::newest(&state.pool, since_us, now_us(), limit).await?;
    Ok(axum::Json(json!({"traces": traces})))
}

/// `GET /v1/stream`: server-sent events, one `snapshot` a second.
async fn stream(State(state): Shared) -> impl IntoResponse {
    state.live.stream()
}

/// `GET /v1/storage`: what the sink holds against its budget and retention, and the rate at
/// which it samples traces that are neither errors nor slow.
async fn storage(State(state): Shared) -> Result<impl IntoResponse, Problem> {
    let settings = &state.storage.settings;
    let report = state.storage.report();
    let (rows, oldest, kept) = store::holdings(&state.pool, settings.slow_us()).await?;
    Ok(axum::Json(json!({
        "budget_bytes": settings.budget,
        "wal_limit_bytes": settings.wal_limit,
        "bytes": {
            "database": report.used.database,
            "database_file": report.used.database_file,
            "wal": report.used.wal,
        },
        "sampling_rate": report.sampling_rate,
        "retention_seconds": settings.retention.as_secs_f64(),
        "slow_ms": settings.slow.as_secs_f64() * 1000.0,
        "rows": rows,
        "oldest": oldest.map(crate::record::format_micros),
        "kept_traces": kept,
        "pruned": report.pruned,
    })))
}

async fn stats(
    State(state): Shared,
    Query(params): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, Problem> {
    only(&params, &["window"])?;
    let window = window(&params, Duration::from_secs(300))?;
    let services = state.aggregates.stats(now_us() - window.as_micros() as i64);
    Ok(axum::Json(json!({
        "window_seconds": window.as_secs_f64(),
        "services": services,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_document_describes_exactly_the_routes() {
        routes().check().unwrap();
    }

    #[test]
    fn statuses() {
        assert_eq!(status("503").unwrap(), (503, 503));
        assert_eq!(status("5xx").unwrap(), (500, 599));
        assert_eq!(status("error").unwrap(), (500, 599));
        assert_eq!(status("ok").unwrap(), (0, 499));
        for bad in ["", "x", "1000", "-1", "0xx", "axx", "5x"] {
            assert!(status(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn filters() {
        let params = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let filter = parse_filter(&params(&[
            ("service", "catalog"),
            ("since", "2026-01-01T00:00:00Z"),
            ("limit", "5"),
        ]))
        .unwrap();
        assert_eq!(filter.service.as_deref(), Some("catalog"));
        assert_eq!(filter.since_us, Some(1_767_225_600_000_000));
        assert_eq!(filter.limit, 5);
        assert!(parse_filter(&params(&[("since", "5m")])).unwrap().since_us < Some(now_us()));
        for bad in [
            ("limit", "0"),
            ("limit", "many"),
            ("since", "later"),
            ("service", ""),
            ("colour", "red"),
        ] {
            assert!(parse_filter(&params(&[bad])).is_err(), "{bad:?}");
        }
    }
}
