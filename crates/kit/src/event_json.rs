//! Event records written straight into a JSON buffer, for callers that make one per request.
//!
//! The gateway reports every proxied request. Building an [`EventRecord`] for that costs a dozen
//! small allocations (hex ids, the RFC 3339 time, copies of names) and serde then walks it again
//! to send it. [`RecordRef`] borrows everything and keeps ids and times as numbers;
//! [`RecordRef::write_json`] appends the same JSON object serde would write for the equivalent
//! `EventRecord` (the tests hold the two to that) to a buffer that is reused batch after batch.
//!
//! [`EventRecord`]: crate::events::EventRecord

/// One record, borrowed: what [`crate::events::EventRecord`] holds, without owning any of it.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_span_id: Option<u64>,
    pub service: &'a str,
    pub instance: &'a str,
    pub kind: &'a str,
    pub name: &'a str,
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
        out.extend_from_slice(b"{\"trace_id\":\"");
        hex(out, self.trace_id, 32);
        out.extend_from_slice(b"\",\"span_id\":\"");
        hex(out, u128::from(self.span_id), 16);
        out.push(b'"');
        if let Some(parent) = self.parent_span_id {
            out.extend_from_slice(b",\"parent_span_id\":\"");
            hex(out, u128::from(parent), 16);
            out.push(b'"');
        }
        text(out, "service", self.service);
        text(out, "instance", self.instance);
        text(out, "kind", self.kind);
        text(out, "name", self.name);
        if let Some(method) = self.method {
            text(out, "method", method);
        }
        out.extend_from_slice(b",\"status\":");
        number(out, self.status);
        out.extend_from_slice(if self.ok {
            b",\"ok\":true"
        } else {
            b",\"ok\":false"
        });
        out.extend_from_slice(b",\"started_at\":\"");
        rfc3339_micros(out, self.started_us);
        out.extend_from_slice(b"\",\"duration_us\":");
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

/// `,"key":"value"`, the value escaped as JSON requires.
fn text(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(b"\":");
    if value
        .bytes()
        .all(|b| b >= 0x20 && b != b'"' && b != b'\\' && b != 0x7f)
    {
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

/// Lower-case hex, zero-padded to `digits` (at most 32).
fn hex(out: &mut Vec<u8>, mut value: u128, digits: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buffer = [0u8; 32];
    for byte in buffer[..digits].iter_mut().rev() {
        *byte = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
    out.extend_from_slice(&buffer[..digits]);
}

fn two(out: &mut [u8], value: u32) {
    out[0] = b'0' + (value / 10) as u8;
    out[1] = b'0' + (value % 10) as u8;
}

/// `2026-01-01T12:00:00.123456Z` from microseconds since the epoch (years 0-9999). The civil
/// date comes from Howard Hinnant's `civil_from_days`: a few integer operations instead of a
/// calendar library's formatter.
pub fn rfc3339_micros(out: &mut Vec<u8>, micros: i64) {
    let seconds = micros.div_euclid(1_000_000);
    let fraction = micros.rem_euclid(1_000_000) as u32;
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
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    two(&mut text[0..2], year / 100);
    two(&mut text[2..4], year % 100);
    two(&mut text[5..7], month);
    two(&mut text[8..10], day);
    two(&mut text[11..13], of_day / 3600);
    two(&mut text[14..16], of_day / 60 % 60);
    two(&mut text[17..19], of_day % 60);
    let mut fraction = fraction;
    for digit in text[20..26].iter_mut().rev() {
        *digit = b'0' + (fraction % 10) as u8;
        fraction /= 10;
    }
    out.extend_from_slice(&text);
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
        let mut out = Vec::new();
        rfc3339_micros(&mut out, 951_782_400_000_000 + 86_399_999_999);
        assert_eq!(out, b"2000-02-29T23:59:59.999999Z");
    }

    #[test]
    fn the_json_is_what_serde_writes_for_the_same_record() {
        let full = RecordRef {
            trace_id: 0x4bf92f3577b34da6a3ce929d0e0e4736,
            span_id: 0xf067aa0ba902b7,
            parent_span_id: Some(1),
            service: "gateway",
            instance: "gw-\"1\"\n\\é",
            kind: "gateway",
            name: "/api/catalog/{id}",
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
            service: r.service.into(),
            instance: r.instance.into(),
            kind: r.kind.into(),
            name: r.name.into(),
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
            instance: "gw-1",
            ..full
        };
        for record in [full, bare] {
            let mut out = Vec::new();
            record.write_json(&mut out);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                serde_json::to_string(&owned(&record)).unwrap()
            );
        }
    }
}
