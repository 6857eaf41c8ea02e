//! W3C trace context (`traceparent`), so one request can be followed across every hop.
//!
//! Format: `00-<32 hex trace id>-<16 hex parent span id>-<2 hex flags>`.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: u128,
    pub span_id: u64,
    pub sampled: bool,
}

impl TraceContext {
    /// Parses a `traceparent` header; anything malformed is ignored, as the spec asks.
    pub fn parse(header: &str) -> Option<Self> {
        Self::parse_bytes(header.as_bytes())
    }

    /// Parses a `traceparent` value given as bytes (W3C Trace Context, section 3.2).
    ///
    /// It works on bytes, never on `str` slices: a broker message's headers are any UTF-8, and
    /// slicing a string at fixed offsets panics when a character straddles one. Any input either
    /// parses or is `None`.
    ///
    /// - version `00`: exactly 55 characters;
    /// - a higher version is parsed leniently, as the spec asks of a version we do not know: its
    ///   first 55 characters as version 00, followed by nothing or by `-` and whatever it adds;
    /// - version `ff`, upper-case hex, and an all-zero trace id or parent id are invalid.
    pub fn parse_bytes(header: &[u8]) -> Option<Self> {
        let (head, rest) = header.split_at_checked(TRACEPARENT_LEN)?;
        if head[2] != b'-' || head[35] != b'-' || head[52] != b'-' {
            return None;
        }
        let version = lower_hex(&head[..2])?;
        let lenient = match version {
            0x00 => false,
            0xff => return None,
            _ => true,
        };
        if !rest.is_empty() && (!lenient || rest[0] != b'-') {
            return None;
        }
        let trace_id = lower_hex(&head[3..35])?;
        // 16 hex digits and 2 hex digits: the values fit, so the casts lose nothing.
        let span_id = lower_hex(&head[36..52])? as u64;
        let flags = lower_hex(&head[53..55])? as u8;
        if trace_id == 0 || span_id == 0 {
            return None;
        }
        Some(Self {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// A new trace, for a request that arrived without one.
    pub fn new_root() -> Self {
        Self {
            trace_id: nonzero_u128(),
            span_id: nonzero_u64(),
            sampled: true,
        }
    }

    /// The context to send downstream: same trace, a new span for this hop.
    pub fn child(&self) -> Self {
        Self {
            span_id: nonzero_u64(),
            ..*self
        }
    }

    pub fn trace_id_hex(&self) -> String {
        let mut out = [0u8; 32];
        hex_into(&mut out, self.trace_id);
        ascii(&out)
    }

    pub fn span_id_hex(&self) -> String {
        let mut out = [0u8; 16];
        hex_into(&mut out, u128::from(self.span_id));
        ascii(&out)
    }

    pub fn header_value(&self) -> String {
        ascii(&self.header_bytes())
    }

    /// The `traceparent` value as bytes, without allocating: the gateway writes one per request,
    /// and `format!` with `{:032x}` costs several times as much as this.
    pub fn header_bytes(&self) -> [u8; TRACEPARENT_LEN] {
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&mut out[3..35], self.trace_id);
        hex_into(&mut out[36..52], u128::from(self.span_id));
        out[54] = if self.sampled { b'1' } else { b'0' };
        out
    }
}

/// Length of a version-00 `traceparent` value.
pub const TRACEPARENT_LEN: usize = 55;

/// The value of at most 32 lower-case hex digits (the spec's HEXDIGLC); anything else is `None`.
fn lower_hex(digits: &[u8]) -> Option<u128> {
    debug_assert!(digits.len() <= 32);
    digits.iter().try_fold(0u128, |value, &byte| {
        let digit = match byte {
            b'0'..=b'9' => byte - b'0',
            b'a'..=b'f' => byte - b'a' + 10,
            _ => return None,
        };
        Some(value << 4 | u128::from(digit))
    })
}

/// Writes `value` as lower-case hex, right-aligned and zero-padded, filling all of `out`.
fn hex_into(out: &mut [u8], mut value: u128) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in out.iter_mut().rev() {
        *byte = DIGITS[(value & 0xf) as usize];
        value >>= 4;
    }
}

fn ascii(bytes: &[u8]) -> String {
    // Only hex digits and dashes are ever written.
    bytes.iter().map(|&b| b as char).collect()
}

fn nonzero_u64() -> u64 {
    loop {
        let value: u64 = rand_u64();
        if value != 0 {
            return value;
        }
    }
}

fn nonzero_u128() -> u128 {
    ((nonzero_u64() as u128) << 64) | rand_u64() as u128
}

/// A fast non-cryptographic random number: trace ids need uniqueness, not secrecy.
fn rand_u64() -> u64 {
    use std::cell::Cell;
    use std::hash::{BuildHasher, Hasher};
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u128(std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(1));
            h.finish() | 1
        });
    }
    // splitmix64
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let context = TraceContext::parse(header).unwrap();
        assert_eq!(context.header_value(), header);
        let child = context.child();
        assert_eq!(child.trace_id, context.trace_id);
        assert_ne!(child.span_id, context.span_id);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn later_versions_parse_leniently() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let span = "00f067aa0ba902b7";
        for good in [
            format!("01-{trace}-{span}-01"),
            format!("01-{trace}-{span}-01-"),
            format!("cc-{trace}-{span}-01-what-the-future-will-be-like"),
            format!("fe-{trace}-{span}-03-é"),
        ] {
            let context = TraceContext::parse(&good).unwrap_or_else(|| panic!("{good}"));
            assert_eq!(context.trace_id_hex(), trace);
            assert_eq!(context.span_id_hex(), span);
            assert!(context.sampled);
        }
        for bad in [
            format!("01-{trace}-{span}-01extra"),
            format!("01-{trace}-{span}-0"),
            format!("0A-{trace}-{span}-01"),
            format!("01-{trace}-{span}-0A"),
            format!("00-{trace}-{span}-01-"),
            format!("ff-{trace}-{span}-01-"),
            format!("-1-{trace}-{span}-01"),
            format!("01-{trace}-{span}-+1"),
        ] {
            assert!(TraceContext::parse(&bad).is_none(), "{bad}");
        }
    }

    /// A broker message's headers are any UTF-8: a character of two, three or four bytes at any
    /// offset is refused (or, after a later version's 55 characters, passed over), never a panic.
    #[test]
    fn non_ascii_at_every_offset_is_refused_without_a_panic() {
        let base = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-tail";
        for version in ["00", "01", "fe"] {
            let header = format!("{version}{}", &base[2..]);
            for offset in 0..header.len() {
                for odd in ["é", "€", "𝄞", "\u{80}", "\u{0}"] {
                    let replaced = format!("{}{odd}{}", &header[..offset], &header[offset + 1..]);
                    let inserted = format!("{}{odd}{}", &header[..offset], &header[offset..]);
                    for candidate in [&replaced, &inserted] {
                        let parsed = TraceContext::parse(candidate);
                        // Past the 56th byte a later version may carry anything.
                        if offset <= TRACEPARENT_LEN || version == "00" {
                            assert!(parsed.is_none(), "{candidate:?}");
                        }
                        let bytes = TraceContext::parse_bytes(candidate.as_bytes());
                        assert_eq!(bytes, parsed, "{candidate:?}");
                    }
                }
            }
        }
        // Bytes that are not UTF-8 at all, cut at every length.
        let mut invalid = base.as_bytes().to_vec();
        invalid[53] = 0xff;
        invalid[54] = 0xc3;
        for end in 0..=invalid.len() {
            assert!(TraceContext::parse_bytes(&invalid[..end]).is_none());
        }
    }

    #[test]
    fn hex_matches_the_formatter() {
        for _ in 0..100 {
            let context = TraceContext {
                sampled: false,
                ..TraceContext::new_root()
            };
            assert_eq!(context.trace_id_hex(), format!("{:032x}", context.trace_id));
            assert_eq!(context.span_id_hex(), format!("{:016x}", context.span_id));
            assert_eq!(
                context.header_value(),
                format!("00-{:032x}-{:016x}-00", context.trace_id, context.span_id)
            );
        }
        let small = TraceContext {
            trace_id: 1,
            span_id: 2,
            sampled: true,
        };
        assert_eq!(
            small.header_value(),
            "00-00000000000000000000000000000001-0000000000000002-01"
        );
    }

    #[test]
    fn new_ids_differ() {
        assert_ne!(
            TraceContext::new_root().trace_id,
            TraceContext::new_root().trace_id
        );
    }
}

/// This hop's trace context, for a handler that calls other services or publishes events:
/// send `hop.0.header_value()` as their `traceparent`, so they appear as this hop's children.
///
/// The event middleware ([`crate::events::record_requests`]) puts the span it reports into the
/// request; without it, the caller's `traceparent` is continued, or a new trace started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hop(pub TraceContext);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Hop {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        if let Some(hop) = parts.extensions.get::<Hop>() {
            return Ok(*hop);
        }
        let context = parts
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(TraceContext::parse)
            .map(|c| c.child())
            .unwrap_or_else(TraceContext::new_root);
        Ok(Hop(context))
    }
}
