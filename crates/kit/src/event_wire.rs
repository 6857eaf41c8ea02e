//! Event records in Stratus's binary batch format: what the gateway and the services send the
//! event sink for every request.
//!
//! JSON costs on both ends of a record made per request: hex ids, RFC 3339 times and quoted
//! keys to write, and at the sink a parser that allocates a `String` per field. Here a record is
//! its numbers in fixed width and its texts length-prefixed: writing one is a few copies into a
//! buffer reused batch after batch ([`RecordRef::write`]), reading one borrows every text from
//! the body ([`read_batch`]). The sink takes JSON as well (`EventRecord`), for anything else
//! that reports.
//!
//! `POST /v1/events` with `content-type: application/vnd.stratus.events` ([`CONTENT_TYPE`]):
//!
//! ```text
//! batch  = "SEV1" record*
//! record = flags:u8 trace_id:[16] span_id:[8] parent_span_id:[8]
//!          started_us:i64 duration_us:u64 status:u16 retries:u32
//!          service instance kind name method cache topic breaker peer      (9 texts)
//! text   = length:u16 UTF-8 bytes; length 0 = absent (for the optional five)
//! ```
//!
//! Integers are little-endian; ids are big-endian, byte for byte their hex form. `flags`: 1 the
//! parent span id is present, 2 the hop succeeded (`ok`), 4 `retries` is present; other bits
//! are 0. An absent id or count is written as zeros.

/// The media type of a binary batch.
pub const CONTENT_TYPE: &str = "application/vnd.stratus.events";
/// The first four bytes of a batch (the format's version is the digit).
pub const MAGIC: &[u8; 4] = b"SEV1";

const HAS_PARENT: u8 = 1;
const OK: u8 = 2;
const HAS_RETRIES: u8 = 4;
/// flags, trace, span, parent, started, duration, status, retries.
const FIXED: usize = 1 + 16 + 8 + 8 + 8 + 8 + 2 + 4;

/// One record, borrowed: what [`crate::events::EventRecord`] holds, with ids and times as the
/// numbers they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub trace_id: u128,
    pub span_id: u64,
    pub parent_span_id: Option<u64>,
    pub service: &'a str,
    pub instance: &'a str,
    /// `server`, `client`, `consumer`, `producer` or `gateway`.
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
    /// Appends this record to a batch (after [`MAGIC`], which the caller writes once).
    pub fn write(&self, out: &mut Vec<u8>) {
        self.write_with(out, None, None);
    }

    /// [`RecordRef::write`] with texts encoded beforehand: `origin` holds this record's service,
    /// instance and kind ([`Encoded::origin`]), `name` its name ([`Encoded::text`]). For a
    /// caller that writes a record per request with the same few texts (the gateway: its own
    /// origin, a route's name), each is then one copy instead of a length and a copy per text.
    pub fn write_with(&self, out: &mut Vec<u8>, origin: Option<&Encoded>, name: Option<&Encoded>) {
        // The fixed-width part is put together on the stack and copied in one piece.
        let mut fixed = [0u8; FIXED];
        let flag = |set: bool, bit: u8| if set { bit } else { 0 };
        fixed[0] = flag(self.parent_span_id.is_some(), HAS_PARENT)
            | flag(self.ok, OK)
            | flag(self.retries.is_some(), HAS_RETRIES);
        fixed[1..17].copy_from_slice(&self.trace_id.to_be_bytes());
        fixed[17..25].copy_from_slice(&self.span_id.to_be_bytes());
        fixed[25..33].copy_from_slice(&self.parent_span_id.unwrap_or(0).to_be_bytes());
        fixed[33..41].copy_from_slice(&self.started_us.to_le_bytes());
        fixed[41..49].copy_from_slice(&self.duration_us.to_le_bytes());
        fixed[49..51].copy_from_slice(&self.status.to_le_bytes());
        fixed[51..55].copy_from_slice(&self.retries.unwrap_or(0).to_le_bytes());
        out.reserve(
            FIXED
                + 18
                + self.service.len()
                + self.instance.len()
                + self.kind.len()
                + self.name.len()
                + self.method.map_or(0, str::len),
        );
        out.extend_from_slice(&fixed);
        match origin {
            Some(origin) => {
                debug_assert_eq!(
                    origin.0,
                    Encoded::origin(self.service, self.instance, self.kind).0
                );
                out.extend_from_slice(&origin.0);
            }
            None => {
                text(out, self.service);
                text(out, self.instance);
                text(out, self.kind);
            }
        }
        match name {
            Some(name) => {
                debug_assert_eq!(name.0, Encoded::text(self.name).0);
                out.extend_from_slice(&name.0);
            }
            None => text(out, self.name),
        }
        method(out, self.method);
        if let (None, None, None, None) = (self.cache, self.topic, self.breaker, self.peer) {
            // The usual case: four absent texts in one piece.
            out.extend_from_slice(&[0; 8]);
        } else {
            for optional in [self.cache, self.topic, self.breaker, self.peer] {
                text(out, optional.unwrap_or(""));
            }
        }
    }
}

/// Texts written once and copied into every record that carries them (see
/// [`RecordRef::write_with`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded(Box<[u8]>);

impl Encoded {
    /// A record's service, instance and kind, in that order.
    pub fn origin(service: &str, instance: &str, kind: &str) -> Self {
        let mut out = Vec::new();
        for value in [service, instance, kind] {
            text(&mut out, value);
        }
        Self(out.into_boxed_slice())
    }

    /// One text.
    pub fn text(value: &str) -> Self {
        let mut out = Vec::new();
        text(&mut out, value);
        Self(out.into_boxed_slice())
    }
}

/// The longest method a record carries (the sink refuses longer); longer is written as `OTHER`.
pub const MAX_METHOD: usize = 16;

/// The method's text: the common methods as constant pieces (a length and the letters). A
/// method is the client's to choose: one longer than the sink takes would get the whole batch,
/// everyone's records, refused.
fn method(out: &mut Vec<u8>, method: Option<&str>) {
    let piece: &[u8] = match method {
        Some("GET") => b"\x03\x00GET",
        Some("POST") => b"\x04\x00POST",
        Some("PUT") => b"\x03\x00PUT",
        Some("DELETE") => b"\x06\x00DELETE",
        Some("PATCH") => b"\x05\x00PATCH",
        Some("HEAD") => b"\x04\x00HEAD",
        None => b"\x00\x00",
        Some(other) if other.len() <= MAX_METHOD => return text(out, other),
        Some(_) => b"\x05\x00OTHER",
    };
    out.extend_from_slice(piece);
}

/// A text: its length (at most 65,535 bytes; longer is cut at a character boundary, and the
/// sink refuses texts that long anyway) and its bytes.
pub(crate) fn text(out: &mut Vec<u8>, value: &str) {
    let mut len = value.len().min(usize::from(u16::MAX));
    while !value.is_char_boundary(len) {
        len -= 1;
    }
    out.extend_from_slice(&(len as u16).to_le_bytes());
    out.extend_from_slice(&value.as_bytes()[..len]);
}

/// Why a body is not a batch. Nothing of a batch that fails is to be stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("a binary event batch starts with \"SEV1\"")]
    Magic,
    #[error("record {record}: the body ends inside it")]
    Truncated { record: usize },
    #[error("record {record}: unknown flags {flags:#04x}")]
    Flags { record: usize, flags: u8 },
    #[error("record {record}: {field} is not UTF-8")]
    Utf8 { record: usize, field: &'static str },
    #[error("a batch may carry at most {max} records")]
    TooMany { max: usize },
}

/// The records of a batch, borrowing their texts from `body`; at most `max` of them. Checks the
/// framing only: what the values may be is the reader's business.
pub fn read_batch(body: &[u8], max: usize) -> Result<Vec<RecordRef<'_>>, WireError> {
    read_records(body.strip_prefix(MAGIC).ok_or(WireError::Magic)?, max)
}

/// [`read_batch`] of records without the [`MAGIC`] in front (a part of a batch: a reporter
/// folding what the sink could not take reads back the pieces it sent).
pub fn read_records(body: &[u8], max: usize) -> Result<Vec<RecordRef<'_>>, WireError> {
    let mut rest = body;
    let mut records = Vec::new();
    while !rest.is_empty() {
        if records.len() == max {
            return Err(WireError::TooMany { max });
        }
        let record = records.len();
        let mut reader = Reader { rest, record };
        records.push(reader.record()?);
        rest = reader.rest;
    }
    Ok(records)
}

/// A cursor over one record.
pub(crate) struct Reader<'a> {
    rest: &'a [u8],
    record: usize,
}

/// The same cursor over texts written by [`text`] elsewhere (a summary's, [`crate::fold`]).
pub(crate) type TextReader<'a> = Reader<'a>;

impl<'a> Reader<'a> {
    pub(crate) fn new(rest: &'a [u8]) -> Self {
        Self { rest, record: 0 }
    }

    pub(crate) fn rest(&self) -> &'a [u8] {
        self.rest
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let (head, rest) = self
            .rest
            .split_first_chunk::<N>()
            .ok_or(WireError::Truncated {
                record: self.record,
            })?;
        self.rest = rest;
        Ok(*head)
    }

    pub(crate) fn text(&mut self, field: &'static str) -> Result<&'a str, WireError> {
        let len = usize::from(u16::from_le_bytes(self.take()?));
        if self.rest.len() < len {
            return Err(WireError::Truncated {
                record: self.record,
            });
        }
        let (bytes, rest) = self.rest.split_at(len);
        self.rest = rest;
        std::str::from_utf8(bytes).map_err(|_| WireError::Utf8 {
            record: self.record,
            field,
        })
    }

    fn optional(&mut self, field: &'static str) -> Result<Option<&'a str>, WireError> {
        Ok(Some(self.text(field)?).filter(|t| !t.is_empty()))
    }

    fn record(&mut self) -> Result<RecordRef<'a>, WireError> {
        let [flags] = self.take()?;
        if flags & !(HAS_PARENT | OK | HAS_RETRIES) != 0 {
            return Err(WireError::Flags {
                record: self.record,
                flags,
            });
        }
        let trace_id = u128::from_be_bytes(self.take()?);
        let span_id = u64::from_be_bytes(self.take()?);
        let parent = u64::from_be_bytes(self.take()?);
        let started_us = i64::from_le_bytes(self.take()?);
        let duration_us = u64::from_le_bytes(self.take()?);
        let status = u16::from_le_bytes(self.take()?);
        let retries = u32::from_le_bytes(self.take()?);
        Ok(RecordRef {
            trace_id,
            span_id,
            parent_span_id: (flags & HAS_PARENT != 0).then_some(parent),
            started_us,
            duration_us,
            status,
            ok: flags & OK != 0,
            retries: (flags & HAS_RETRIES != 0).then_some(retries),
            service: self.text("service")?,
            instance: self.text("instance")?,
            kind: self.text("kind")?,
            name: self.text("name")?,
            method: self.optional("method")?,
            cache: self.optional("cache")?,
            topic: self.optional("topic")?,
            breaker: self.optional("breaker")?,
            peer: self.optional("peer")?,
        })
    }
}

/// A batch being written: [`MAGIC`] then records, and how many.
#[derive(Debug)]
pub struct Batch {
    pub bytes: Vec<u8>,
    pub records: usize,
}

impl Batch {
    /// An empty batch with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut bytes = Vec::with_capacity(capacity.max(MAGIC.len()));
        bytes.extend_from_slice(MAGIC);
        Self { bytes, records: 0 }
    }

    pub fn push(&mut self, record: &RecordRef<'_>) {
        record.write(&mut self.bytes);
        self.records += 1;
    }

    /// [`Batch::push`] with the origin and the name encoded beforehand
    /// ([`RecordRef::write_with`]).
    pub fn push_with(&mut self, record: &RecordRef<'_>, origin: &Encoded, name: &Encoded) {
        record.write_with(&mut self.bytes, Some(origin), Some(name));
        self.records += 1;
    }

    /// The records alone, without the [`MAGIC`] in front.
    pub fn records_bytes(&self) -> &[u8] {
        &self.bytes[MAGIC.len()..]
    }
}

/// Lower-case hex of an id, as JSON and the sink's queries show it.
pub fn hex_id<const N: usize>(id: [u8; N]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(N * 2);
    for byte in id {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0xf)]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> RecordRef<'static> {
        RecordRef {
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
        }
    }

    fn bare() -> RecordRef<'static> {
        RecordRef {
            parent_span_id: None,
            method: None,
            retries: None,
            cache: None,
            topic: None,
            breaker: None,
            peer: None,
            ok: true,
            status: 0,
            started_us: -5,
            ..full()
        }
    }

    #[test]
    fn records_read_back_as_written() {
        let mut batch = Batch::with_capacity(0);
        for record in [full(), bare(), full()] {
            batch.push(&record);
        }
        assert_eq!(batch.records, 3);
        let read = read_batch(&batch.bytes, 10).unwrap();
        assert_eq!(read, vec![full(), bare(), full()]);
        // Retries of zero and a parent of zero are still "present".
        let zeros = RecordRef {
            retries: Some(0),
            parent_span_id: Some(0),
            ..bare()
        };
        let mut batch = Batch::with_capacity(0);
        batch.push(&zeros);
        assert_eq!(read_batch(&batch.bytes, 1).unwrap(), vec![zeros]);
        assert_eq!(read_batch(MAGIC, 1).unwrap(), vec![]);
    }

    #[test]
    fn texts_encoded_beforehand_write_the_same_bytes() {
        for record in [full(), bare()] {
            for method in [
                None,
                Some("GET"),
                Some("POST"),
                Some("PUT"),
                Some("DELETE"),
                Some("PATCH"),
                Some("HEAD"),
                Some("PURGE"),
            ] {
                let record = RecordRef { method, ..record };
                let mut plain = Vec::new();
                record.write(&mut plain);
                let origin = Encoded::origin(record.service, record.instance, record.kind);
                let name = Encoded::text(record.name);
                let mut encoded = Vec::new();
                record.write_with(&mut encoded, Some(&origin), Some(&name));
                assert_eq!(plain, encoded);
                let mut batch = MAGIC.to_vec();
                batch.extend_from_slice(&encoded);
                assert_eq!(read_batch(&batch, 1).unwrap(), vec![record]);
            }
        }
    }

    #[test]
    fn a_method_longer_than_the_sink_takes_is_written_as_other() {
        let long = "A".repeat(MAX_METHOD + 1);
        let fits = "B".repeat(MAX_METHOD);
        for (method, read) in [(long.as_str(), "OTHER"), (fits.as_str(), fits.as_str())] {
            let mut batch = Batch::with_capacity(0);
            batch.push(&RecordRef {
                method: Some(method),
                ..bare()
            });
            assert_eq!(read_batch(&batch.bytes, 1).unwrap()[0].method, Some(read));
        }
    }

    #[test]
    fn every_cut_of_a_batch_is_refused_or_reads_whole_records() {
        let mut batch = Batch::with_capacity(0);
        batch.push(&full());
        let one = batch.bytes.len();
        batch.push(&bare());
        for cut in 0..batch.bytes.len() {
            let result = read_batch(&batch.bytes[..cut], 10);
            match cut {
                4 => assert_eq!(result.unwrap(), vec![]),
                _ if cut == one => assert_eq!(result.unwrap(), vec![full()]),
                0..4 => assert_eq!(result.unwrap_err(), WireError::Magic),
                _ => assert!(
                    matches!(result, Err(WireError::Truncated { record }) if record == usize::from(cut > one)),
                    "cut at {cut}: {result:?}"
                ),
            }
        }
    }

    #[test]
    fn bad_framing_is_named() {
        let mut batch = Batch::with_capacity(0);
        batch.push(&bare());
        batch.push(&bare());
        assert_eq!(
            read_batch(&batch.bytes, 1).unwrap_err(),
            WireError::TooMany { max: 1 }
        );
        let mut flags = batch.bytes.clone();
        flags[4] |= 0x80;
        assert_eq!(
            read_batch(&flags, 2).unwrap_err(),
            WireError::Flags {
                record: 0,
                flags: 0x82
            }
        );
        // The service's text is the first after the fixed part: make its first byte invalid.
        let mut utf8 = batch.bytes.clone();
        utf8[4 + FIXED + 2] = 0xff;
        assert_eq!(
            read_batch(&utf8, 2).unwrap_err(),
            WireError::Utf8 {
                record: 0,
                field: "service"
            }
        );
        assert_eq!(read_batch(b"[{}]", 2).unwrap_err(), WireError::Magic);
    }

    #[test]
    fn overlong_texts_are_cut_at_a_character_boundary() {
        let long = "é".repeat(40_000);
        let record = RecordRef {
            name: &long,
            ..bare()
        };
        let mut batch = Batch::with_capacity(0);
        batch.push(&record);
        let read = read_batch(&batch.bytes, 1).unwrap();
        assert_eq!(read[0].name.len(), 65_534);
        assert!(long.starts_with(read[0].name));
    }

    #[test]
    fn ids_are_lower_case_hex() {
        assert_eq!(
            hex_id(0xf067aa0ba902b7u64.to_be_bytes()),
            "00f067aa0ba902b7"
        );
        assert_eq!(
            hex_id(0x4bf92f3577b34da6a3ce929d0e0e4736u128.to_be_bytes()),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }
}
