//! `stratus logs` from the event sink: every replica's lines (and those of replicas gone since),
//! merged by the sink in time order, filtered there (`service`, `trace_id`, `level`, `q`), and
//! with `-f` followed through its live tail. `up` asks as the operator it is, over mutual TLS.
//!
//! A line is printed as the files' lines are, `<label> | <JSON>`: the label is the replica's
//! (`orders-0`) while it runs, else `<service>/<instance id>`; the JSON is the line as the sink
//! gives it, without the service and instance the label already says.

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use tokio::sync::mpsc;

use crate::logs_filter::Filter;

/// The most lines the sink answers one query with.
const MAX_LINES: usize = 1_000;

/// What to read.
pub struct Wanted {
    pub component: Option<String>,
    /// The last this many lines, of all replicas together.
    pub lines: usize,
    pub follow: bool,
    pub filter: Filter,
}

/// What the sink answered: the last lines, oldest first, and the live tail when following.
pub struct Opened {
    lines: Vec<Value>,
    tail: Option<reqwest::Response>,
}

/// Asks the sink at `sink` (its base URL as reached: https with the mesh on). An error (not
/// running, not answering, or answering with an error) says why, and the caller reads files.
pub async fn open(http: &reqwest::Client, sink: &str, wanted: &Wanted) -> Result<Opened, String> {
    let mut params = wanted.filter.sink_params();
    if let Some(component) = &wanted.component {
        params.push(("service", component.clone()));
    }
    // The tail first: a line committed while the last lines are read is then in one or both,
    // never in neither (one in both is printed once).
    let tail = if wanted.follow {
        let url = reqwest::Url::parse_with_params(&format!("{sink}/v1/logs/stream"), &params)
            .map_err(|e| e.to_string())?;
        Some(answered(http.get(url).send().await).await?)
    } else {
        None
    };
    let mut lines = Vec::new();
    if wanted.lines > 0 {
        params.push(("limit", wanted.lines.min(MAX_LINES).to_string()));
        let url = reqwest::Url::parse_with_params(&format!("{sink}/v1/logs"), &params)
            .map_err(|e| e.to_string())?;
        let body: Value = answered(http.get(url).send().await)
            .await?
            .json()
            .await
            .map_err(|e| format!("reading its answer: {e}"))?;
        lines = body["logs"].as_array().cloned().unwrap_or_default();
        lines.reverse(); // The sink answers newest first.
    }
    Ok(Opened { lines, tail })
}

async fn answered(sent: reqwest::Result<reqwest::Response>) -> Result<reqwest::Response, String> {
    let response = sent.map_err(|e| e.to_string())?;
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    Err(match body["detail"].as_str() {
        Some(detail) => format!("{status}: {detail}"),
        None => status.to_string(),
    })
}

/// Sends what `opened` holds, each line labelled by `labels` (instance id → replica), then
/// follows the tail until it ends or the receiver goes away.
pub async fn send(opened: Opened, labels: HashMap<String, String>, out: mpsc::Sender<String>) {
    // A line in both the last lines and the tail is printed once.
    let mut seen = HashSet::new();
    for line in &opened.lines {
        seen.insert(key(line));
        if out.send(format(line, &labels)).await.is_err() {
            return;
        }
    }
    let Some(mut tail) = opened.tail else {
        return;
    };
    let mut pending = String::new();
    while let Ok(Some(chunk)) = tail.chunk().await {
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = pending.find("\n\n") {
            let event: String = pending.drain(..end + 2).collect();
            let texts = match parse(&event) {
                Event::Lines(lines) => lines
                    .iter()
                    .filter(|line| !seen.remove(&key(line)))
                    .map(|line| format(line, &labels))
                    .collect(),
                Event::Lagged => vec!["-- lines were skipped: this follower fell behind\n".into()],
                Event::Other => Vec::new(),
            };
            for text in texts {
                if out.send(text).await.is_err() {
                    return;
                }
            }
        }
    }
}

enum Event {
    Lines(Vec<Value>),
    Lagged,
    Other,
}

/// One server-sent event of the sink's live tail.
fn parse(event: &str) -> Event {
    let kind = event.lines().find_map(|l| l.strip_prefix("event: "));
    let data = event.lines().find_map(|l| l.strip_prefix("data: "));
    match (kind, data) {
        (Some("logs"), Some(data)) => Event::Lines(serde_json::from_str(data).unwrap_or_default()),
        (Some("lagged"), _) => Event::Lagged,
        _ => Event::Other,
    }
}

/// What tells two copies of a line apart from two lines.
fn key(line: &Value) -> String {
    format!("{}|{}|{}", line["time"], line["instance"], line["message"])
}

/// `<label> | <JSON>`.
fn format(line: &Value, labels: &HashMap<String, String>) -> String {
    let service = line["service"].as_str().unwrap_or("unknown");
    let instance = line["instance"].as_str().unwrap_or("unknown");
    let label = labels
        .get(instance)
        .cloned()
        .unwrap_or_else(|| format!("{service}/{instance}"));
    let mut shown = line.clone();
    if let Some(object) = shown.as_object_mut() {
        for key in ["service", "instance", "severity"] {
            object.remove(key);
        }
        object.retain(|_, value| !value.is_null());
    }
    format!("{label} | {shown}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_labelled_by_replica_and_tail_events_read() {
        let line = serde_json::json!({
            "time": "2026-12-07T17:50:03.125627Z", "service": "orders", "instance": "i-1",
            "level": "info", "severity": 9, "target": "stratus_orders::pricing",
            "message": "order refused", "fields": {"product": "p"}, "trace_id": null,
            "span_id": null
        });
        let labels = HashMap::from([("i-1".to_string(), "orders-0".to_string())]);
        assert_eq!(
            format(&line, &labels),
            "orders-0 | {\"fields\":{\"product\":\"p\"},\"level\":\"info\",\"message\":\"order refused\",\"target\":\"stratus_orders::pricing\",\"time\":\"2026-12-07T17:50:03.125627Z\"}\n"
        );
        assert!(format(&line, &HashMap::new()).starts_with("orders/i-1 | "));
        let event = format!("event: logs\ndata: [{line}]\n\n");
        assert!(matches!(parse(&event), Event::Lines(lines) if lines == [line]));
        assert!(matches!(parse("event: lagged\ndata: 3\n\n"), Event::Lagged));
        assert!(matches!(parse(": keep-alive\n\n"), Event::Other));
    }
}
