//! The filters of `stratus logs` (`--trace`, `--level`, `--grep`): checked once when the control
//! API takes them, passed to the sink as its query's parameters, and applied to the replicas'
//! JSON lines when the lines come from their files.

use serde_json::Value;

/// The levels from least to most severe, as the JSON lines spell them.
const LEVELS: [&str; 5] = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// 32 lowercase hex digits.
    pub trace: Option<String>,
    /// This level or above (an index into [`LEVELS`]).
    pub level: Option<usize>,
    /// Text anywhere in the line, any case (kept in lower case).
    pub grep: Option<String>,
}

impl Filter {
    /// The filters as given; an error says which one is wrong.
    pub fn new(
        trace: Option<&str>,
        level: Option<&str>,
        grep: Option<&str>,
    ) -> Result<Self, String> {
        let trace = match trace {
            None => None,
            Some(id)
                if id.len() == 32
                    && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                    && id.bytes().any(|b| b != b'0') =>
            {
                Some(id.to_string())
            }
            Some(_) => return Err("--trace must be 32 lowercase hex digits, not all zero".into()),
        };
        let level = match level {
            None => None,
            Some(level) => {
                let upper = match level.to_ascii_uppercase().as_str() {
                    "WARNING" => "WARN".to_string(),
                    other => other.to_string(),
                };
                Some(LEVELS.iter().position(|l| *l == upper).ok_or_else(|| {
                    "--level must be one of trace, debug, info, warn, error".to_string()
                })?)
            }
        };
        let grep = match grep {
            Some("") => return Err("--grep must not be empty".into()),
            Some(text) if text.len() > 256 => return Err("--grep is at most 256 bytes".into()),
            other => other.map(str::to_lowercase),
        };
        Ok(Self { trace, level, grep })
    }

    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The sink's query parameters for these filters (`GET /v1/logs`, `/v1/logs/stream`).
    pub fn sink_params(&self) -> Vec<(&'static str, String)> {
        let mut params = Vec::new();
        if let Some(trace) = &self.trace {
            params.push(("trace_id", trace.clone()));
        }
        if let Some(level) = self.level {
            params.push(("level", LEVELS[level].to_ascii_lowercase()));
        }
        if let Some(grep) = &self.grep {
            params.push(("q", grep.clone()));
        }
        params
    }

    /// Whether a replica's line (one JSON object, as kit's logging writes it; anything else
    /// only by `--grep`) passes: its level at least the one asked, the trace its request span's
    /// or its own `trace_id` field, the text anywhere in it.
    pub fn passes(&self, line: &str) -> bool {
        if self.is_empty() {
            return true;
        }
        if let Some(grep) = &self.grep {
            if !line.to_lowercase().contains(grep) {
                return false;
            }
        }
        if self.level.is_none() && self.trace.is_none() {
            return true;
        }
        let Ok(json) = serde_json::from_str::<Value>(line) else {
            return false;
        };
        if let Some(min) = self.level {
            let level = json["level"].as_str().unwrap_or_default();
            let at = LEVELS.iter().position(|l| *l == level);
            if at.is_none_or(|at| at < min) {
                return false;
            }
        }
        if let Some(trace) = &self.trace {
            let ids = [&json["span"]["trace_id"], &json["fields"]["trace_id"]];
            if !ids.iter().any(|id| id.as_str() == Some(trace.as_str())) {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn filters_are_checked() {
        let filter = Filter::new(Some(TRACE), Some("Warning"), Some("No Such")).unwrap();
        assert_eq!(filter.level, Some(3));
        assert_eq!(
            filter.sink_params(),
            [
                ("trace_id", TRACE.to_string()),
                ("level", "warn".to_string()),
                ("q", "no such".to_string())
            ]
        );
        for (trace, level, grep) in [
            (Some("ABC"), None, None),
            (Some(&"0".repeat(32)[..]), None, None),
            (None, Some("loud"), None),
            (None, None, Some("")),
        ] {
            assert!(
                Filter::new(trace, level, grep).is_err(),
                "{trace:?} {level:?} {grep:?}"
            );
        }
        assert!(Filter::new(None, None, None).unwrap().is_empty());
    }

    #[test]
    fn file_lines_pass_by_level_trace_and_text() {
        let in_request = format!(
            r#"{{"level":"INFO","fields":{{"message":"order refused: no such product"}},"span":{{"trace_id":"{TRACE}"}}}}"#
        );
        let gateway = format!(
            r#"{{"level":"WARN","fields":{{"message":"request failed","trace_id":"{TRACE}"}}}}"#
        );
        let other = r#"{"level":"ERROR","fields":{"message":"elsewhere"}}"#;
        let pass = |filter: Filter| {
            [in_request.as_str(), gateway.as_str(), other, "not json"]
                .iter()
                .map(|line| filter.passes(line))
                .collect::<Vec<_>>()
        };
        let filter = |t, l, g| Filter::new(t, l, g).unwrap();
        assert_eq!(pass(filter(None, None, None)), [true, true, true, true]);
        assert_eq!(
            pass(filter(Some(TRACE), None, None)),
            [true, true, false, false]
        );
        assert_eq!(
            pass(filter(None, Some("warn"), None)),
            [false, true, true, false]
        );
        assert_eq!(
            pass(filter(None, None, Some("NO SUCH"))),
            [true, false, false, false]
        );
        assert_eq!(
            pass(filter(None, None, Some("json"))),
            [false, false, false, true]
        );
    }
}
