//! Live tail: every batch of log lines the writer commits, handed to whoever follows
//! `GET /v1/logs/stream`, filtered per follower, as server-sent events.
//!
//! A broadcast channel of committed batches: the writer never waits for a follower (a send is
//! a push into a ring), and a follower that falls behind by more than the ring loses the oldest
//! batches and is told how many (`event: lagged`), rather than holding memory for it. With no
//! follower, nothing is copied.

use std::convert::Infallible;
use std::sync::Arc;

use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;
use tokio::sync::broadcast;

use crate::log_line::LogLine;
use crate::log_store::LogFilter;

/// Committed batches a follower may be behind by before it misses some.
const RING: usize = 1_024;

#[derive(Clone)]
pub struct Tail {
    sender: broadcast::Sender<Arc<[LogLine]>>,
}

impl Default for Tail {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(RING).0,
        }
    }
}

/// Whether a line passes the filter's service, instance, level, trace and text (the time and
/// the limit are not a tail's).
pub fn matches(filter: &LogFilter, line: &LogLine) -> bool {
    let same = |wanted: &Option<String>, value: &str| wanted.as_deref().is_none_or(|w| w == value);
    same(&filter.service, &line.service)
        && same(&filter.instance, &line.instance)
        && filter.min_severity.is_none_or(|s| line.severity >= s)
        && filter
            .trace_id
            .as_deref()
            .is_none_or(|t| line.trace_id.as_deref() == Some(t))
        && filter.text.as_deref().is_none_or(|text| {
            let text = text.to_lowercase();
            line.message.to_lowercase().contains(&text)
                || line.fields.to_lowercase().contains(&text)
        })
}

impl Tail {
    /// Hands a committed batch to every follower (none: nothing is done).
    pub fn publish(&self, lines: &[LogLine]) {
        if self.sender.receiver_count() > 0 {
            let _ = self.sender.send(Arc::from(lines));
        }
    }

    /// `event: logs` with a JSON array of the lines of each committed batch that pass `filter`
    /// (a batch with none sends nothing); `event: lagged` with `{"missed_batches": n}`.
    pub fn follow(&self, filter: LogFilter) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
        let receiver = self.sender.subscribe();
        let events =
            futures_util::stream::unfold((receiver, filter), |(mut receiver, filter)| async move {
                loop {
                    let event = match receiver.recv().await {
                        Ok(batch) => {
                            let lines: Vec<serde_json::Value> = batch
                                .iter()
                                .filter(|line| matches(&filter, line))
                                .map(LogLine::to_json)
                                .collect();
                            if lines.is_empty() {
                                continue;
                            }
                            Event::default()
                                .event("logs")
                                .data(serde_json::Value::from(lines).to_string())
                        }
                        Err(broadcast::error::RecvError::Lagged(missed)) => Event::default()
                            .event("lagged")
                            .data(json!({"missed_batches": missed}).to_string()),
                        Err(broadcast::error::RecvError::Closed) => return None,
                    };
                    return Some((Ok(event), (receiver, filter)));
                }
            });
        Sse::new(events).keep_alive(KeepAlive::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_line::tests::line;

    #[test]
    fn filters_match_as_the_query_does() {
        let mut l = line(1);
        l.severity = 13;
        l.trace_id = Some("ab".repeat(16));
        l.fields = r#"{"order":"Ord-7"}"#.into();
        let all = LogFilter::default();
        assert!(matches(&all, &l));
        for (filter, expected) in [
            (
                LogFilter {
                    service: Some("orders".into()),
                    ..all.clone()
                },
                true,
            ),
            (
                LogFilter {
                    service: Some("catalog".into()),
                    ..all.clone()
                },
                false,
            ),
            (
                LogFilter {
                    instance: Some("orders-2".into()),
                    ..all.clone()
                },
                false,
            ),
            (
                LogFilter {
                    min_severity: Some(13),
                    ..all.clone()
                },
                true,
            ),
            (
                LogFilter {
                    min_severity: Some(17),
                    ..all.clone()
                },
                false,
            ),
            (
                LogFilter {
                    trace_id: Some("ab".repeat(16)),
                    ..all.clone()
                },
                true,
            ),
            (
                LogFilter {
                    trace_id: Some("cd".repeat(16)),
                    ..all.clone()
                },
                false,
            ),
            (
                LogFilter {
                    text: Some("ORD-7".into()),
                    ..all.clone()
                },
                true,
            ),
            (
                LogFilter {
                    text: Some("LINE 1".into()),
                    ..all.clone()
                },
                true,
            ),
            (
                LogFilter {
                    text: Some("absent".into()),
                    ..all.clone()
                },
                false,
            ),
        ] {
            assert_eq!(matches(&filter, &l), expected, "{filter:?}");
        }
    }
}
