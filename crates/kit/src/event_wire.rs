//! Event records written straight into a JSON buffer, for callers that make one per request.
//!
//! The gateway reports every proxied request. Building an [`EventRecord`] for that costs a dozen
//! small allocations (hex ids, the RFC 3339 time, copies of names) and serde then walks it again
//! to send it. [`RecordRef`] borrows everything and keeps ids and times as numbers;
//! [`RecordRef::write_json`] appends the same JSON object serde would write for the equivalent
//! `EventRecord` (the tests hold the two to that) to a buffer that is reused batch after batch.
//! What is the same for every record of a reporter (service, instance, kind) is encoded once
//! ([`Origin`]); ids go through a byte-to-hex-pair table; a time reuses the calendar part of the
//! previous one when both fall in the same second.
//!
//! [`EventRecord`]: crate::events::EventRecord

/// Who reports: the service, the instance and the kind of hop, the same for every record a
/// reporter writes. Encoded as JSON once, when the reporter starts, and copied into each record
/// in one piece.
#[derive(Debug, Clone)]
pub struct Origin {
    pub service: String,
    pub instance: String,
    pub kind: &'static str,
    /// `,"service":"…","instance":"…","kind":"…"`
    json: Box<[u8]>,
}

impl Origin {
    pub fn new(service: &str, instance: &str, kind: &'static str) -> Self {
        let mut json = Vec::new();
        text(&mut json, "service", service);
        text(&mut json, "instance", instance);
        text(&mut json, "kind", kind);
        Self {
            service: service.into(),
            instance: instance.into(),
            kind,
            json: json.into_boxed_slice(),
        }
    }
}

/// A field whose value repeats from record to record (a route's name), written as JSON once:
/// `,"key":"value"`.
#[derive(Debug, Clone)]
pub struct Field {
    value: String,
    json: Box<[u8]>,
}

impl Field {
    pub fn new(key: &str, value: &str) -> Self {
        let mut json = Vec::new();
        text(&mut json, key, value);
        Self {
            value: value.into(),
            json: json.into_boxed_slice(),
        }
    }

    pub fn value(&self) -> &str {
        &self.value
    }
}

/// A record's `name`: encoded once for names that repeat (a gateway route's), or any text.
#[derive(Debug, Clone, Copy)]
pub enum Name<'a> {
    /// A [`Field`] made with the key `name`.
    Encoded(&'a Field),
    Text(&'a str),
}

impl Name<'_> {
    pub fn as_str(&self) -> &str {
        match self {
            Name::Encoded(field) => field.value(),
            Name::Text(text) => text,
        }
    }
}

/// One record, borrowed: what [`crate::events::EventRecord`] holds, without owning any of it.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_span_id: Option<u64>,
    pub origin: &'a Origin,
    pub name: Name<'a>,
    /// An HTTP method: a token (RFC 9110), which never needs escaping.
    pub method: Option<&'a str>,
    pub status: u16,
    pub ok: bool,
    /// Microseconds since the Unix epoch.
    pub started_us: i64,
    pub duration_us: u64,
    pub retries: Option<u32>,
    pub cache: Option<&'a str>,
    pub topic: Option<&'a str>,
    pub breaker: Option<&'a str>,
    /// The node a `client` record called (`orders-db`).
    pub peer: Option<&'a str>,
}

impl RecordRef<'_> {
    /// Appends this record as one JSON object (no separator before or after it).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        // Fixed-width parts are formatted on the stack and copied in one piece: a push per byte
        // checks the capacity every time.
        out.reserve(320);
        // The ids in one piece: with the parent, or without it.
        let trace = self.trace_id.to_be_bytes();
        let span = self.span_id.to_be_bytes();
        if let Some(parent) = self.parent_span_id {
            let mut ids = *b"{\"trace_id\":\"################################\",\"span_id\":\"################\",\"parent_span_id\":\"################\"";
            hex(&mut ids[13..45], &trace);
            hex(&mut ids[58..74], &span);
            hex(&mut ids[94..110], &parent.to_be_bytes());
            out.extend_from_slice(&ids);
        } else {
            let mut ids =
                *b"{\"trace_id\":\"################################\",\"span_id\":\"################\"";
            hex(&mut ids[13..45], &trace);
            hex(&mut ids[58..74], &span);
            out.extend_from_slice(&ids);
        }
        out.extend_from_slice(&self.origin.json);
        match self.name {
            Name::Encoded(field) => out.extend_from_slice(&field.json),
            Name::Text(name) => text(out, "name", name),
        }
        if let Some(method) = self.method {
            write_method(out, method);
        }
        if (100..1000).contains(&self.status) {
            // The common case in one piece: `ok` (`true` padded with a space to the length of
            // `false`, which JSON allows), a three-digit status, the time, the next key.
            let mut middle = *b",\"ok\":false,\"status\":000,\"started_at\":\"0000-00-00T00:00:00.000000Z\",\"duration_us\":";
            if self.ok {
                middle[6..11].copy_from_slice(b"true ");
            }
            let status = u32::from(self.status);
            middle[21] = b'0' + (status / 100) as u8;
            two(&mut middle[22..24], status);
            rfc3339_into(&mut middle[39..66], self.started_us);
            out.extend_from_slice(&middle);
        } else {
            out.extend_from_slice(if self.ok {
                b",\"ok\":true"
            } else {
                b",\"ok\":false"
            });
            out.extend_from_slice(b",\"status\":");
            number(out, self.status);
            out.extend_from_slice(b",\"started_at\":\"");
            rfc3339_micros(out, self.started_us);
            out.extend_from_slice(b"\",\"duration_us\":");
        }
        number(out, self.duration_us);
        if let Some(retries) = self.retries {
            out.extend_from_slice(b",\"retries\":");
            number(out, retries);
        }
        if let Some(cache) = self.cache {
            text(out, "cache", cache);
        }
        if let Some(topic) = self.topic {
            text(out, "topic", topic);
        }
        if let Some(breaker) = self.breaker {
            text(out, "breaker", breaker);
        }
        if let Some(peer) = self.peer {
            text(out, "peer", peer);
        }
        out.push(b'}');
    }
}

/// `,"method":"GET"`: the common methods as one piece each.
fn write_method(out: &mut Vec<u8>, method: &str) {
    let field: &[u8] = match method {
        "GET" => b",\"method\":\"GET\"",
        "POST" => b",\"method\":\"POST\"",
        "PUT" => b",\"method\":\"PUT\"",
        "DELETE" => b",\"method\":\"DELETE\"",
        "PATCH" => b",\"method\":\"PATCH\"",
        "HEAD" => b",\"method\":\"HEAD\"",
        "OPTIONS" => b",\"method\":\"OPTIONS\"",
        other => return text(out, "method", other),
    };
    out.extend_from_slice(field);
}

/// True if `value` goes into a JSON string as it is. Written as a fold without early exit, so the
/// compiler checks many bytes at once.
fn is_plain(value: &str) -> bool {
    value.bytes().fold(true, |plain, b| {
        plain & (b >= 0x20) & (b != b'"') & (b != b'\\') & (b != 0x7f)
    })
}

/// `,"key":"value"`, the value escaped as JSON requires.
fn text(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    if is_plain(value) {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else {
        // Rare (names come from configuration): let serde_json do the escaping. Writing to a
        // Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, value);
    }
}

fn number(out: &mut Vec<u8>, value: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

/// Every byte's two lower-case hex digits.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [DIGITS[i >> 4], DIGITS[i & 0xf]];
        i += 1;
    }
    table
};

/// Lower-case hex of `bytes` (big-endian) into `out`, which is twice as long.
fn hex(out: &mut [u8], bytes: &[u8]) {
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*byte)]);
    }
}

/// Two decimal digits: a table is one load where `/ 10` and `% 10` are two multiplications.
const DECIMAL_PAIRS: [[u8; 2]; 100] = {
    let mut table = [[0u8; 2]; 100];
    let mut i = 0;
    while i < 100 {
        table[i] = [b'0' + (i / 10) as u8, b'0' + (i % 10) as u8];
        i += 1;
    }
    table
};

fn two(out: &mut [u8], value: u32) {
    out[..2].copy_from_slice(&DECIMAL_PAIRS[(value % 100) as usize]);
}

thread_local! {
    /// The last second written and its `YYYY-MM-DDTHH:MM:SS`: records come in bursts within
    /// one second, and the calendar arithmetic is the costly part of a time.
    static LAST_SECOND: std::cell::Cell<(i64, [u8; 19])> = const { std::cell::Cell::new((i64::MIN, [0; 19])) };
}

/// `2026-01-01T12:00:00.123456Z` from microseconds since the epoch (years 0-9999).
pub fn rfc3339_micros(out: &mut Vec<u8>, micros: i64) {
    let mut text = [0u8; 27];
    rfc3339_into(&mut text, micros);
    out.extend_from_slice(&text);
}

/// [`rfc3339_micros`] into the 27 bytes of `text`.
fn rfc3339_into(text: &mut [u8], micros: i64) {
    let seconds = micros.div_euclid(1_000_000);
    let fraction = micros.rem_euclid(1_000_000) as u32;
    let date_time = LAST_SECOND.with(|last| {
        let (second, text) = last.get();
        if second == seconds {
            return text;
        }
        let text = date_time(seconds);
        last.set((seconds, text));
        text
    });
    text[..19].copy_from_slice(&date_time);
    text[19] = b'.';
    two(&mut text[20..22], fraction / 10_000);
    two(&mut text[22..24], fraction / 100);
    two(&mut text[24..26], fraction);
    text[26] = b'Z';
}

/// `YYYY-MM-DDTHH:MM:SS` of a second since the epoch. The civil date comes from Howard Hinnant's
/// `civil_from_days`: a few integer operations instead of a calendar library's formatter.
fn date_time(seconds: i64) -> [u8; 19] {
    let days = seconds.div_euclid(86_400);
    let of_day = seconds.rem_euclid(86_400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = (yoe + era * 400 + i64::from(month <= 2)).clamp(0, 9999) as u32;
    let mut text = *b"0000-00-00T00:00:00";
    two(&mut text[0..2], year / 100);
    two(&mut text[2..4], year % 100);
    two(&mut text[5..7], month);
    two(&mut text[8..10], day);
    two(&mut text[11..13], of_day / 3600);
    two(&mut text[14..16], of_day / 60 % 60);
    two(&mut text[17..19], of_day % 60);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventRecord;
    use time::format_description::well_known::Rfc3339;
    use time::OffsetDateTime;

    fn parse_us(text: &str) -> i64 {
        (OffsetDateTime::parse(text, &Rfc3339)
            .unwrap()
            .unix_timestamp_nanos()
            / 1000) as i64
    }

    #[test]
    fn times_match_a_calendar_library() {
        let mut micros: i64 = -62_135_596_800_000_000; // 0001-01-01
        let mut seen = 0;
        while micros < 253_402_300_799_000_000 {
            let mut out = Vec::new();
            rfc3339_micros(&mut out, micros);
            let text = String::from_utf8(out).unwrap();
            assert_eq!(parse_us(&text), micros, "{text}");
            micros += 86_399_999_937 * 29 + 123_457; // about a month, a different time of day each
            seen += 1;
        }
        assert!(seen > 100_000);
        let mut out = Vec::new();
        rfc3339_micros(&mut out, 1_767_225_600_000_250);
        assert_eq!(out, b"2026-01-01T00:00:00.000250Z");
        // The same second again: the calendar part is reused, the fraction is not.
        let mut out = Vec::new();
        rfc3339_micros(&mut out, 1_767_225_600_999_999);
        assert_eq!(out, b"2026-01-01T00:00:00.999999Z");
        let mut out = Vec::new();
        rfc3339_micros(&mut out, 951_782_400_000_000 + 86_399_999_999);
        assert_eq!(out, b"2000-02-29T23:59:59.999999Z");
    }

    #[test]
    fn the_json_is_what_serde_writes_for_the_same_record() {
        let full_origin = Origin::new("gateway", "gw-\"1\"\n\\é", "gateway");
        let bare_origin = Origin::new("gateway", "gw-1", "gateway");
        let name = Field::new("name", "/api/catalog/{id}");
        let full = RecordRef {
            trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
            span_id: 0xf067aa0ba902b7,
            parent_span_id: Some(1),
            origin: &full_origin,
            name: Name::Encoded(&name),
            method: Some("GET"),
            status: 503,
            ok: false,
            started_us: 1_767_225_600_000_250,
            duration_us: 1200,
            retries: Some(2),
            cache: Some("hit"),
            topic: Some("order.placed"),
            breaker: Some("open"),
            peer: Some("orders-db"),
        };
        let owned = |r: &RecordRef| EventRecord {
            trace_id: format!("{:032x}", r.trace_id),
            span_id: format!("{:016x}", r.span_id),
            parent_span_id: r.parent_span_id.map(|p| format!("{p:016x}")),
            service: r.origin.service.clone(),
            instance: r.origin.instance.clone(),
            kind: r.origin.kind.into(),
            name: r.name.as_str().into(),
            method: r.method.map(Into::into),
            status: r.status,
            ok: r.ok,
            started_at: "2026-01-01T00:00:00.000250Z".into(),
            duration_us: r.duration_us,
            retries: r.retries,
            cache: r.cache.map(Into::into),
            topic: r.topic.map(Into::into),
            breaker: r.breaker.map(Into::into),
            peer: r.peer.map(Into::into),
        };
        let bare = RecordRef {
            parent_span_id: None,
            method: None,
            retries: None,
            cache: None,
            topic: None,
            breaker: None,
            peer: None,
            ok: true,
            status: 200,
            origin: &bare_origin,
            ..full
        };
        // A message hop has status 0, outside the three-digit fast path.
        let message = RecordRef { status: 0, ..bare };
        for record in [full, bare, message] {
            let mut out = Vec::new();
            record.write_json(&mut out);
            let written: serde_json::Value = serde_json::from_slice(&out).unwrap();
            assert_eq!(written, serde_json::to_value(owned(&record)).unwrap());
            // And it reads back as the record it was written from.
            let back: EventRecord = serde_json::from_slice(&out).unwrap();
            assert_eq!(back, owned(&record));
        }
    }
}
