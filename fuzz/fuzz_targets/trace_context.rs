#![no_main]
//! The `traceparent` parser (W3C Trace Context): the gateway and every service read it from
//! requests, and every consumer from broker messages, whose headers may hold any UTF-8.
//!
//! Input: a header value as bytes. Parsing returns a context or nothing, never panics; the
//! `&str` and byte entry points agree; a parsed context has non-zero ids equal to the hex it was
//! read from, and what it writes back parses to the same context.

use libfuzzer_sys::fuzz_target;
use stratus_kit::trace::{TraceContext, TRACEPARENT_LEN};

fuzz_target!(|data: &[u8]| {
    let parsed = TraceContext::parse_bytes(data);
    if let Ok(text) = std::str::from_utf8(data) {
        assert_eq!(TraceContext::parse(text), parsed);
    }
    let Some(context) = parsed else {
        return;
    };
    assert_ne!(context.trace_id, 0);
    assert_ne!(context.span_id, 0);
    assert!(data.len() == TRACEPARENT_LEN || data[TRACEPARENT_LEN] == b'-');
    assert_ne!(&data[..2], b"ff");
    assert_eq!(context.trace_id_hex().as_bytes(), &data[3..35]);
    assert_eq!(context.span_id_hex().as_bytes(), &data[36..52]);
    let last_flag_digit = char::from(data[54]).to_digit(16).expect("a hex digit");
    assert_eq!(context.sampled, last_flag_digit & 1 == 1);
    let written = context.header_bytes();
    assert_eq!(TraceContext::parse_bytes(&written), Some(context));
    if data.len() == TRACEPARENT_LEN
        && &data[..2] == b"00"
        && matches!(&data[53..55], b"00" | b"01")
    {
        assert_eq!(&written[..], data);
    }
});
