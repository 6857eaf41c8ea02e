//! One log line as it waits in the queue, and how it is read out of a tracing event.
//!
//! The trace and span ids come from fields named `trace_id` and `span_id` (32 and 16 lowercase
//! hex digits): the event's own (the gateway names them on the line, having no span per request)
//! or else the nearest enclosing span's that has them (a kit service's request span, a consumer's
//! message span). They become the OTLP record's ids, not fields.
//!
//! A line is cut to fit the sink's limits (a line over them would refuse its whole batch):
//! the message to [`MAX_MESSAGE`] bytes, at most [`MAX_FIELDS`] fields, string values to
//! [`MAX_FIELD_TEXT`] bytes each and [`MAX_FIELDS_TEXT`] in all.

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::Level;

/// The sink takes 64 KiB of message and 64 KiB of fields (as JSON) a line; these leave room
/// for JSON's escapes and quotes.
pub const MAX_MESSAGE: usize = 60 * 1024;
pub const MAX_FIELDS: usize = 100;
pub const MAX_FIELD_TEXT: usize = 16 * 1024;
pub const MAX_FIELDS_TEXT: usize = 40 * 1024;

#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Text(String),
    Int(i64),
    Bool(bool),
    Double(f64),
}

#[derive(Debug, Clone)]
pub struct Line {
    pub time_unix_nano: u64,
    pub level: Level,
    pub target: &'static str,
    pub message: String,
    pub fields: Vec<(&'static str, FieldValue)>,
    pub trace_id: Option<u128>,
    pub span_id: Option<u64>,
}

impl Line {
    /// Roughly what the line adds to a POST, to keep batches under the sink's body limit.
    pub fn size(&self) -> usize {
        let fields: usize = self
            .fields
            .iter()
            .map(|(key, value)| {
                key.len()
                    + match value {
                        FieldValue::Text(text) => text.len(),
                        _ => 8,
                    }
                    + 8
            })
            .sum();
        64 + self.target.len() + self.message.len() + fields
    }
}

/// A trace or span id found in a span's or an event's fields.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ids {
    pub trace_id: Option<u128>,
    pub span_id: Option<u64>,
}

impl Ids {
    pub fn is_empty(&self) -> bool {
        self.trace_id.is_none() && self.span_id.is_none()
    }

    /// Takes `field` if it is one of the ids; true if it was.
    fn take(&mut self, field: &str, text: &str) -> bool {
        match field {
            "trace_id" => {
                self.trace_id = hex_id(text, 32).or(self.trace_id);
                true
            }
            "span_id" => {
                // 16 hex digits fit in 64 bits.
                self.span_id = hex_id(text, 16).map(|id| id as u64).or(self.span_id);
                true
            }
            _ => false,
        }
    }
}

/// `digits` lowercase hex digits, not all zero (what W3C trace context and OTLP call an id).
fn hex_id(text: &str, digits: usize) -> Option<u128> {
    if text.len() != digits || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    u128::from_str_radix(text, 16).ok().filter(|id| *id != 0)
}

/// Reads only the ids out of a span's fields.
#[derive(Default)]
pub struct IdVisitor(pub Ids);

impl Visit for IdVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.take(field.name(), value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if matches!(field.name(), "trace_id" | "span_id") {
            let text = format!("{value:?}");
            self.0.take(field.name(), &text);
        }
    }
}

/// Reads an event: its message, its other fields, and ids it names itself.
#[derive(Default)]
pub struct LineVisitor {
    pub message: String,
    pub fields: Vec<(&'static str, FieldValue)>,
    pub ids: Ids,
    /// Bytes of text taken into fields so far.
    text: usize,
}

impl LineVisitor {
    fn push(&mut self, field: &Field, value: FieldValue) {
        if self.fields.len() < MAX_FIELDS {
            self.fields.push((field.name(), value));
        }
    }

    fn push_text(&mut self, field: &Field, mut text: String) {
        let room = MAX_FIELD_TEXT.min(MAX_FIELDS_TEXT.saturating_sub(self.text));
        cut(&mut text, room);
        self.text += text.len();
        self.push(field, FieldValue::Text(text));
    }
}

/// Cuts `text` to at most `max` bytes, at a character boundary.
pub fn cut(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

impl Visit for LineVisitor {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.ids.take(field.name(), value) {
            return;
        }
        if field.name() == "message" {
            self.message.clear();
            self.message.push_str(value);
            cut(&mut self.message, MAX_MESSAGE);
        } else {
            self.push_text(field, value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.record_str(field, &text);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, FieldValue::Int(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match i64::try_from(value) {
            Ok(value) => self.push(field, FieldValue::Int(value)),
            Err(_) => self.push_text(field, value.to_string()),
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, FieldValue::Bool(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, FieldValue::Double(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_str(field, &value.to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_lowercase_hex_of_their_length_and_not_zero() {
        let mut ids = Ids::default();
        assert!(ids.take("trace_id", &"ab".repeat(16)));
        assert!(ids.take("span_id", "00f067aa0ba902b7"));
        assert_eq!(
            ids.trace_id,
            Some(u128::from_str_radix(&"ab".repeat(16), 16).unwrap())
        );
        assert_eq!(ids.span_id, Some(0x00f067aa0ba902b7));
        let mut none = Ids::default();
        for (field, text) in [
            ("trace_id", "".to_string()),
            ("trace_id", "0".repeat(32)),
            ("trace_id", "AB".repeat(16)),
            ("span_id", "abc".to_string()),
        ] {
            none.take(field, &text);
        }
        assert!(none.is_empty());
        assert!(!none.take("user", "x"));
    }

    #[test]
    fn cutting_keeps_whole_characters() {
        let mut text = "é".repeat(10);
        cut(&mut text, 5);
        assert_eq!(text, "éé");
    }
}
