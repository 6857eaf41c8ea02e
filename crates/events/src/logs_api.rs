//! `POST /v1/logs` (OTLP/HTTP logs, protobuf or JSON) and `GET /v1/logs` (the stored lines,
//! newest first, by service, instance, level, trace, text and time).
//!
//! Intake follows `/v1/traces`: the body limit of every intake route (4 MiB), then every record
//! mapped and checked ([`crate::otlp_logs`]; protobuf straight through
//! [`crate::otlp_logs_proto`]; [`crate::log_line`]) before any is handed to the writer, so a
//! refused request stores nothing; with the mesh on, a service posts only lines naming itself.
//! The writer commits the lines before the answer, as it does records.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::{FromRequest, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prost::Message;
use serde_json::json;
use stratus_kit::caller::Caller;
use stratus_kit::{Json, Problem};

use crate::api::{check_reporter, only, since, AppState};
use crate::log_line::{severity_of, LineError, LogLine, LEVELS};
use crate::log_store::{self, LogFilter};
use crate::otlp_logs::{self, LogsRequest};
use crate::otlp_logs_proto;
use crate::proto_logs::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use crate::record::is_hex;

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 1_000;
/// The longest text search.
const MAX_QUERY: usize = 256;

/// The intake's counters, at 0 from the start so a dashboard sees them before any traffic.
pub fn describe_metrics() {
    metrics::counter!("events_log_lines_total").increment(0);
    metrics::counter!("events_log_lines_rejected_total").increment(0);
    metrics::counter!("events_log_requests_rejected_total").increment(0);
}

/// A refused request: its answer, and the lines it carried if they could be counted.
struct Refused {
    problem: Problem,
    lines: usize,
}

impl From<Problem> for Refused {
    fn from(problem: Problem) -> Self {
        Refused { problem, lines: 0 }
    }
}

fn refused(error: LineError, lines: usize) -> Refused {
    let problem = match error {
        LineError::TooLarge(detail) => Problem::new(StatusCode::PAYLOAD_TOO_LARGE, detail),
        LineError::Invalid(detail) => Problem::unprocessable(detail),
    };
    Refused { problem, lines }
}

fn now_us() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1000) as i64
}

fn records_in(request: &LogsRequest) -> usize {
    request
        .resource_logs
        .iter()
        .flat_map(|r| &r.scope_logs)
        .map(|s| s.log_records.len())
        .sum()
}

/// `POST /v1/logs`: answered in kind (protobuf or JSON), 200 once every line is committed.
pub async fn ingest(
    State(state): State<AppState>,
    caller: Caller,
    request: Request,
) -> Result<Response, Problem> {
    match accept(&state, &caller, request).await {
        Ok(response) => Ok(response),
        Err(Refused { problem, lines }) => {
            metrics::counter!("events_log_requests_rejected_total").increment(1);
            metrics::counter!("events_log_lines_rejected_total").increment(lines as u64);
            Err(problem)
        }
    }
}

async fn accept(state: &AppState, caller: &Caller, request: Request) -> Result<Response, Refused> {
    let protobuf = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-protobuf"));
    let lines = if protobuf {
        let bytes = Bytes::from_request(request, &())
            .await
            .map_err(|e| Problem::new(e.status(), e.body_text()))?;
        let message = ExportLogsServiceRequest::decode(bytes).map_err(|e| {
            Problem::bad_request(format!(
                "the body is not an OTLP ExportLogsServiceRequest: {e}"
            ))
        })?;
        let count = otlp_logs_proto::count(&message);
        otlp_logs_proto::lines(message, now_us()).map_err(|e| refused(e, count))?
    } else {
        let Json(body) = Json::<LogsRequest>::from_request(request, &()).await?;
        let count = records_in(&body);
        otlp_logs::lines(body, now_us()).map_err(|e| refused(e, count))?
    };
    let count = lines.len();
    check_reporter(caller, lines.iter().map(|line| line.service.as_str())).map_err(|problem| {
        Refused {
            problem,
            lines: count,
        }
    })?;
    store(state, lines).await?;
    Ok(if protobuf {
        let answer = ExportLogsServiceResponse::default().encode_to_vec();
        ([(header::CONTENT_TYPE, "application/x-protobuf")], answer).into_response()
    } else {
        axum::Json(json!({"partialSuccess": {}})).into_response()
    })
}

async fn store(state: &AppState, lines: Vec<LogLine>) -> Result<(), Problem> {
    let count = lines.len();
    if count == 0 {
        return Ok(());
    }
    state
        .writer
        .write_logs(lines)
        .await
        .map_err(Problem::internal)?;
    metrics::counter!("events_log_lines_total").increment(count as u64);
    Ok(())
}

/// A level as the query takes it (openapi.json's enum): a level's name or `warning`, all in
/// lower or all in upper case. Stricter than OTLP's severityText: a parameter is typed by hand.
fn query_level(text: &str) -> Option<i64> {
    let lower = text.to_ascii_lowercase();
    let named = lower == "warning" || LEVELS.iter().any(|(name, _)| *name == lower);
    let one_case = text == lower || text == text.to_ascii_uppercase();
    (named && one_case).then(|| severity_of(&lower)).flatten()
}

/// The query's parameters; every one checked, an unknown one refused.
fn parse_filter(params: &HashMap<String, String>) -> Result<LogFilter, Problem> {
    only(
        params,
        &[
            "service", "instance", "level", "trace_id", "q", "since", "until", "limit",
        ],
    )?;
    let text = |key: &str, max: usize| -> Result<Option<String>, Problem> {
        match params.get(key) {
            Some(v) if v.is_empty() || v.len() > max => {
                Err(Problem::bad_request(format!("{key} must be 1-{max} bytes")))
            }
            other => Ok(other.cloned()),
        }
    };
    let min_severity = match params.get("level") {
        None => None,
        Some(level) => Some(query_level(level).ok_or_else(|| {
            Problem::bad_request(
                "level must be one of trace, debug, info, warn (or warning), error, fatal, \
                 in lower or upper case",
            )
        })?),
    };
    let trace_id = match params.get("trace_id") {
        None => None,
        Some(id) if is_hex(id, 32) => Some(id.clone()),
        Some(_) => {
            return Err(Problem::bad_request(
                "trace_id must be 32 lowercase hex digits, not all zero",
            ))
        }
    };
    let limit = match params.get("limit") {
        None => DEFAULT_LIMIT,
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| Problem::bad_request(format!("limit must be 1-{MAX_LIMIT}")))?,
    };
    let filter = LogFilter {
        service: text("service", 128)?,
        instance: text("instance", 128)?,
        min_severity,
        trace_id,
        text: text("q", MAX_QUERY)?,
        since_us: params.get("since").map(|s| since(s)).transpose()?,
        until_us: params.get("until").map(|s| since(s)).transpose()?,
        limit,
    };
    if let (Some(since), Some(until)) = (filter.since_us, filter.until_us) {
        if since >= until {
            return Err(Problem::bad_request("since must be before until"));
        }
    }
    Ok(filter)
}

/// `GET /v1/logs/stream`: the lines committed from now on that pass the filters (service,
/// instance, level, trace_id, q), as server-sent events (crate::log_tail).
pub async fn stream(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, Problem> {
    only(&params, &["service", "instance", "level", "trace_id", "q"])?;
    let filter = parse_filter(&params)?;
    Ok(state.writer.tail().follow(filter))
}

/// `GET /v1/logs`: the newest lines matching every filter given, newest first.
pub async fn query(
    State(state): State<AppState>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, Problem> {
    let filter = parse_filter(&params)?;
    let lines = log_store::query(&state.pool, &filter).await?;
    let logs: Vec<serde_json::Value> = lines.iter().map(LogLine::to_json).collect();
    Ok(axum::Json(json!({"logs": logs})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn filters_parse_and_bad_ones_are_refused() {
        let trace = "5b8efff798038103d269b633813fc60c";
        let filter = parse_filter(&params(&[
            ("service", "orders"),
            ("level", "WARN"),
            ("trace_id", trace),
            ("q", "no such"),
            ("since", "2026-01-01T00:00:00Z"),
            ("until", "5m"),
            ("limit", "7"),
        ]))
        .unwrap();
        assert_eq!(filter.service.as_deref(), Some("orders"));
        assert_eq!(filter.min_severity, Some(13));
        assert_eq!(filter.trace_id.as_deref(), Some(trace));
        assert_eq!(filter.text.as_deref(), Some("no such"));
        assert_eq!(filter.since_us, Some(1_767_225_600_000_000));
        assert!(filter.until_us.unwrap() < now_us());
        assert_eq!(filter.limit, 7);
        assert_eq!(parse_filter(&params(&[])).unwrap().limit, DEFAULT_LIMIT);
        let long = "x".repeat(MAX_QUERY + 1);
        for bad in [
            ("level", "loud"),
            ("level", "Warn"),
            ("level", "err"),
            ("trace_id", "ABC"),
            ("limit", "0"),
            ("limit", "1001"),
            ("since", "later"),
            ("until", "never"),
            ("q", ""),
            ("q", long.as_str()),
            ("colour", "red"),
        ] {
            assert!(parse_filter(&params(&[bad])).is_err(), "{bad:?}");
        }
        assert!(parse_filter(&params(&[("since", "1m"), ("until", "5m")])).is_err());
    }
}
