//! One stored log line, and the rules every line passes before it is handed to the writer.
//!
//! Lines come from OTLP (`POST /v1/logs`, [`crate::otlp_logs`]); whatever the sender, a line is
//! checked here, so the table holds only lines the query API can give back as they came.

use serde::Serialize;

use crate::record::{format_micros, is_hex};

/// The longest message, and the longest fields object (as JSON text), one line may carry: a log
/// line is not a place for a file. A longer one refuses its whole batch (413).
pub const MAX_LINE_BYTES: usize = 64 * 1024;
/// The most attributes one line may carry.
pub const MAX_FIELDS: usize = 128;
/// Service, instance and target: at most this many bytes.
const MAX_NAME: usize = 128;

/// A log line as stored: `severity` is OTLP's number (1-24; 0 unspecified), `level` its name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogLine {
    #[serde(skip)]
    pub time_us: i64,
    pub service: String,
    pub instance: String,
    pub level: String,
    pub severity: i64,
    pub target: String,
    pub message: String,
    /// The attributes as a JSON object's text.
    #[serde(skip)]
    pub fields: String,
    pub trace_id: Option<String>,
    pub span_id: Option<String>,
}

impl LogLine {
    /// The line as the query API answers it: `time` as RFC 3339, `fields` as an object.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        value["time"] = serde_json::json!(format_micros(self.time_us));
        value["fields"] = serde_json::from_str(&self.fields).unwrap_or_default();
        value
    }
}

/// The levels, each with the lowest OTLP severity number it covers (OTLP's ranges: TRACE 1-4,
/// DEBUG 5-8, INFO 9-12, WARN 13-16, ERROR 17-20, FATAL 21-24).
pub const LEVELS: [(&str, i64); 6] = [
    ("trace", 1),
    ("debug", 5),
    ("info", 9),
    ("warn", 13),
    ("error", 17),
    ("fatal", 21),
];

/// The level a severity number falls in (`unspecified` for 0).
pub fn level_of(severity: i64) -> &'static str {
    LEVELS
        .iter()
        .rev()
        .find(|(_, low)| severity >= *low)
        .map_or("unspecified", |(name, _)| name)
}

/// The lowest severity number of a level named in text (`WARN`, `warning`, `Error`...).
pub fn severity_of(level: &str) -> Option<i64> {
    let level = level.to_ascii_lowercase();
    let level = match level.as_str() {
        "warning" => "warn",
        "critical" | "panic" => "fatal",
        "err" => "error",
        other => other,
    };
    LEVELS
        .iter()
        .find(|(name, _)| *name == level)
        .map(|(_, low)| *low)
}

/// Why a line was refused: too large (413) or not acceptable (422).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Invalid(String),
}

fn name(index: usize, field: &str, value: &str) -> Result<(), LineError> {
    if value.is_empty() || value.len() > MAX_NAME || value.chars().any(char::is_control) {
        return Err(LineError::Invalid(format!(
            "log record {index}: {field} must be 1-{MAX_NAME} bytes without control characters"
        )));
    }
    Ok(())
}

/// Checks one line (`index`, its place in the batch, names it in the error).
pub fn check(index: usize, line: &LogLine) -> Result<(), LineError> {
    name(index, "service", &line.service)?;
    name(index, "instance", &line.instance)?;
    if !line.target.is_empty() {
        name(index, "target", &line.target)?;
    }
    if !(0..=24).contains(&line.severity) {
        return Err(LineError::Invalid(format!(
            "log record {index}: severityNumber must be 0-24"
        )));
    }
    for (field, text) in [("body", &line.message), ("attributes", &line.fields)] {
        if text.len() > MAX_LINE_BYTES {
            return Err(LineError::TooLarge(format!(
                "log record {index}: its {field} is {} bytes, at most {MAX_LINE_BYTES}",
                text.len()
            )));
        }
    }
    if line.trace_id.as_deref().is_some_and(|t| !is_hex(t, 32)) {
        return Err(LineError::Invalid(format!(
            "log record {index}: traceId must be 32 hex digits, not all zero"
        )));
    }
    if line.span_id.as_deref().is_some_and(|s| !is_hex(s, 16)) {
        return Err(LineError::Invalid(format!(
            "log record {index}: spanId must be 16 hex digits, not all zero"
        )));
    }
    // Years 1970-9999: what RFC 3339 can give back.
    if !(0..=253_402_300_799_000_000).contains(&line.time_us) {
        return Err(LineError::Invalid(format!(
            "log record {index}: its time is out of range"
        )));
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn line(i: usize) -> LogLine {
        LogLine {
            time_us: 1_700_000_000_000_000 + i as i64,
            service: "orders".into(),
            instance: "orders-1".into(),
            level: "info".into(),
            severity: 9,
            target: "orders::api".into(),
            message: format!("line {i}"),
            fields: r#"{"n":1}"#.into(),
            trace_id: None,
            span_id: None,
        }
    }

    #[test]
    fn levels_and_severities_map_both_ways() {
        assert_eq!(level_of(0), "unspecified");
        assert_eq!(level_of(9), "info");
        assert_eq!(level_of(16), "warn");
        assert_eq!(level_of(24), "fatal");
        assert_eq!(severity_of("WARNING"), Some(13));
        assert_eq!(severity_of("Error"), Some(17));
        assert_eq!(severity_of("loud"), None);
    }

    #[test]
    fn bad_lines_are_named() {
        assert_eq!(check(0, &line(0)), Ok(()));
        let mut long = line(1);
        long.message = "x".repeat(MAX_LINE_BYTES + 1);
        assert!(matches!(check(1, &long), Err(LineError::TooLarge(_))));
        let mut bad = line(2);
        bad.trace_id = Some("xyz".into());
        assert!(check(2, &bad)
            .unwrap_err()
            .to_string()
            .contains("log record 2"));
        let mut bad = line(3);
        bad.service = "a\nb".into();
        assert!(matches!(check(3, &bad), Err(LineError::Invalid(_))));
    }
}
