//! Checking records before anything is stored, and the row form they are stored in.

use stratus_kit::event_wire::{hex_id, RecordRef, MAX_METHOD};
use stratus_kit::events::EventRecord;
use stratus_kit::fold::{self, EntryRef};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

pub const KINDS: &[&str] = &["server", "client", "consumer", "producer", "gateway"];

/// The first and last microseconds RFC 3339 can write (0000-01-01 and 9999-12-31, UTC): a
/// start outside them could be stored but never shown.
const EARLIEST_US: i64 = -62_167_219_200_000_000;
const LATEST_US: i64 = 253_402_300_799_999_999;

/// The longest a recorded hop may last: one day.
const MAX_DURATION_US: u64 = 86_400_000_000;

/// A record as stored: the same fields, with the start time in microseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub service: String,
    pub instance: String,
    pub kind: String,
    pub name: String,
    pub method: Option<String>,
    pub status: i64,
    pub ok: bool,
    pub started_us: i64,
    pub duration_us: i64,
    pub retries: Option<i64>,
    pub cache: Option<String>,
    pub topic: Option<String>,
    pub breaker: Option<String>,
    pub peer: Option<String>,
}

impl Row {
    pub fn into_record(self) -> EventRecord {
        EventRecord {
            trace_id: self.trace_id,
            span_id: self.span_id,
            parent_span_id: self.parent_span_id,
            service: self.service,
            instance: self.instance,
            kind: self.kind,
            name: self.name,
            method: self.method,
            status: self.status.clamp(0, 999) as u16,
            ok: self.ok,
            started_at: format_micros(self.started_us),
            duration_us: self.duration_us.max(0) as u64,
            retries: self.retries.map(|r| r.clamp(0, u32::MAX as i64) as u32),
            cache: self.cache,
            topic: self.topic,
            breaker: self.breaker,
            peer: self.peer,
        }
    }
}

pub fn is_hex(text: &str, len: usize) -> bool {
    text.len() == len
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && text.bytes().any(|b| b != b'0')
}

/// RFC 3339 to microseconds since the epoch.
pub fn parse_time(text: &str) -> Option<i64> {
    let time = OffsetDateTime::parse(text, &Rfc3339).ok()?;
    i64::try_from(time.unix_timestamp_nanos() / 1000).ok()
}

pub fn format_micros(micros: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(micros as i128 * 1000)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

fn text(field: &str, value: &str, max: usize) -> Result<(), String> {
    if value.is_empty() || value.len() > max {
        return Err(format!("{field} must be 1-{max} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("{field} must not contain control characters"));
    }
    Ok(())
}

fn optional(field: &str, value: Option<&str>, max: usize) -> Result<(), String> {
    match value {
        Some(value) => text(field, value, max),
        None => Ok(()),
    }
}

/// Reads a JSON id: `len` lower-case hex digits, not all zero.
fn parse_id(field: &str, text: &str, len: usize) -> Result<u128, String> {
    if !is_hex(text, len) {
        return Err(format!(
            "{field} must be {len} lowercase hex digits, not all zero"
        ));
    }
    u128::from_str_radix(text, 16).map_err(|e| format!("{field}: {e}"))
}

/// What every record must be, however it came (JSON or the binary format).
fn check(record: &RecordRef<'_>) -> Result<(), String> {
    if record.trace_id == 0 {
        return Err("trace_id must not be all zero".into());
    }
    if record.span_id == 0 {
        return Err("span_id must not be all zero".into());
    }
    if record.parent_span_id == Some(0) {
        return Err("parent_span_id must not be all zero".into());
    }
    text("service", record.service, 128)?;
    text("instance", record.instance, 128)?;
    if !KINDS.contains(&record.kind) {
        return Err(format!("kind must be one of {}", KINDS.join(", ")));
    }
    text("name", record.name, 512)?;
    optional("method", record.method, MAX_METHOD)?;
    if record.status > 999 {
        return Err("status must be an HTTP status (100-999) or 0 for messages".into());
    }
    if !(EARLIEST_US..=LATEST_US).contains(&record.started_us) {
        return Err("started_at must fall in the years 0000-9999 (UTC)".into());
    }
    if record.duration_us > MAX_DURATION_US {
        return Err(format!("duration_us must be at most {MAX_DURATION_US}"));
    }
    if let Some(cache) = record.cache {
        if cache != "hit" && cache != "miss" {
            return Err("cache must be hit or miss".into());
        }
    }
    optional("topic", record.topic, 256)?;
    optional("breaker", record.breaker, 32)?;
    optional("peer", record.peer, 128)?;
    Ok(())
}

/// What every entry of a reporter's summary (`kit::fold`) must be: its texts as a record's, its
/// second a time a record could start at. The counts were checked as it was read.
pub fn check_folded(entries: &[EntryRef<'_>]) -> Result<(), String> {
    let check = |entry: &EntryRef<'_>| -> Result<(), String> {
        text("service", entry.service, 128)?;
        text("instance", entry.instance, 128)?;
        if !KINDS.contains(&entry.kind) {
            return Err(format!("kind must be one of {}", KINDS.join(", ")));
        }
        text("name", entry.name, 512)?;
        if entry.link.0 != fold::NO_LINK {
            text("link", entry.link.1, 128)?;
        }
        let seconds = EARLIEST_US / 1_000_000..=LATEST_US / 1_000_000;
        if !seconds.contains(&entry.second) {
            return Err("second must fall in the years 0000-9999 (UTC)".into());
        }
        Ok(())
    };
    entries
        .iter()
        .enumerate()
        .try_for_each(|(i, entry)| check(entry).map_err(|e| format!("entry {i}: {e}")))
}

/// Checks one JSON record and turns it into a row; the error names the field.
pub fn validate(record: EventRecord) -> Result<Row, String> {
    let trace_id = parse_id("trace_id", &record.trace_id, 32)?;
    let span_id = parse_id("span_id", &record.span_id, 16)? as u64;
    let parent_span_id = record
        .parent_span_id
        .as_deref()
        .map(|parent| parse_id("parent_span_id", parent, 16).map(|id| id as u64))
        .transpose()?;
    let started_us = parse_time(&record.started_at)
        .ok_or("started_at must be an RFC 3339 time, like 2026-01-01T12:00:00.123Z")?;
    check(&record.as_ref_with(trace_id, span_id, parent_span_id, started_us))?;
    Ok(Row {
        trace_id: record.trace_id,
        span_id: record.span_id,
        parent_span_id: record.parent_span_id,
        service: record.service,
        instance: record.instance,
        kind: record.kind,
        name: record.name,
        method: record.method,
        status: record.status as i64,
        ok: record.ok,
        started_us,
        duration_us: record.duration_us as i64,
        retries: record.retries.map(i64::from),
        cache: record.cache,
        topic: record.topic,
        breaker: record.breaker,
        peer: record.peer,
    })
}

/// Checks one record of a binary batch and turns it into a row; the error names the field.
pub fn validate_wire(record: &RecordRef<'_>) -> Result<Row, String> {
    check(record)?;
    let owned = |text: Option<&str>| text.map(str::to_owned);
    Ok(Row {
        trace_id: hex_id(record.trace_id.to_be_bytes()),
        span_id: hex_id(record.span_id.to_be_bytes()),
        parent_span_id: record.parent_span_id.map(|p| hex_id(p.to_be_bytes())),
        service: record.service.into(),
        instance: record.instance.into(),
        kind: record.kind.into(),
        name: record.name.into(),
        method: owned(record.method),
        status: i64::from(record.status),
        ok: record.ok,
        started_us: record.started_us,
        duration_us: record.duration_us as i64,
        retries: record.retries.map(i64::from),
        cache: owned(record.cache),
        topic: owned(record.topic),
        breaker: owned(record.breaker),
        peer: owned(record.peer),
    })
}

/// Checks a whole batch: every record valid, or an error naming the first bad one.
pub fn validate_batch(records: Vec<EventRecord>) -> Result<Vec<Row>, String> {
    records
        .into_iter()
        .enumerate()
        .map(|(index, record)| validate(record).map_err(|e| format!("record {index}: {e}")))
        .collect()
}

/// [`validate_batch`] for the records of a binary batch.
pub fn validate_wire_batch(records: &[RecordRef<'_>]) -> Result<Vec<Row>, String> {
    records
        .iter()
        .enumerate()
        .map(|(index, record)| validate_wire(record).map_err(|e| format!("record {index}: {e}")))
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn record() -> EventRecord {
        EventRecord {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: "00f067aa0ba902b7".into(),
            parent_span_id: Some("a3ce929d0e0e4736".into()),
            service: "catalog".into(),
            instance: "i-1".into(),
            kind: "server".into(),
            name: "/api/catalog/products".into(),
            method: Some("GET".into()),
            status: 200,
            ok: true,
            started_at: "2026-01-01T00:00:00.00025Z".into(),
            duration_us: 1200,
            retries: Some(1),
            cache: Some("hit".into()),
            topic: None,
            breaker: None,
            peer: None,
        }
    }

    #[test]
    fn a_good_record_round_trips() {
        let row = validate(record()).unwrap();
        assert_eq!(row.started_us % 1_000_000, 250);
        assert_eq!(row.into_record(), record());
    }

    #[test]
    fn bad_fields_are_named() {
        type Change = fn(&mut EventRecord);
        let cases: Vec<(Change, &str)> = vec![
            (
                |r| r.trace_id = "4BF92F3577B34DA6A3CE929D0E0E4736".into(),
                "trace_id",
            ),
            (|r| r.trace_id = "0".repeat(32), "trace_id"),
            (|r| r.trace_id = "abc".into(), "trace_id"),
            (|r| r.span_id = "xyz".into(), "span_id"),
            (|r| r.parent_span_id = Some("".into()), "parent_span_id"),
            (|r| r.service = "".into(), "service"),
            (|r| r.instance = "x".repeat(200), "instance"),
            (|r| r.kind = "internal".into(), "kind"),
            (|r| r.name = "a\nb".into(), "name"),
            (|r| r.status = 1000, "status"),
            (|r| r.started_at = "yesterday".into(), "started_at"),
            (
                |r| r.started_at = "0000-01-01T00:00:00+05:00".into(),
                "started_at",
            ),
            (|r| r.duration_us = u64::MAX, "duration_us"),
            (|r| r.cache = Some("warm".into()), "cache"),
            (|r| r.peer = Some("".into()), "peer"),
            (|r| r.peer = Some("x".repeat(129)), "peer"),
            (|r| r.peer = Some("orders\u{7f}db".into()), "peer"),
        ];
        for (change, field) in cases {
            let mut bad = record();
            change(&mut bad);
            let error = validate(bad).unwrap_err();
            assert!(error.starts_with(field), "{field}: {error}");
        }
    }

    #[test]
    fn a_peer_round_trips() {
        let mut call = record();
        call.kind = "client".into();
        call.name = "postgres".into();
        call.peer = Some("orders-db".into());
        let row = validate(call.clone()).unwrap();
        assert_eq!(row.peer.as_deref(), Some("orders-db"));
        assert_eq!(row.into_record(), call);
    }

    #[test]
    fn one_bad_record_fails_the_batch() {
        let mut bad = record();
        bad.kind = "nope".into();
        let error = validate_batch(vec![record(), bad]).unwrap_err();
        assert!(error.starts_with("record 1: kind"), "{error}");
    }
}
