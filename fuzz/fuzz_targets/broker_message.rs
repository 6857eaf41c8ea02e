#![no_main]
//! The embedded broker's stored-message decoding. The queue file is shared by every local
//! process, so a row is untrusted input: decoding it is an error or a message, never a panic, and
//! a decoded message's checks and payload decoding behave the same way.
//!
//! Input: `<id>\0<headers JSON>\0<published_at>\0<payload>`

use libfuzzer_sys::fuzz_target;
use stratus_broker::sqlite::decode_row;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |&b| b == 0);
    let id = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let headers = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let published_at = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let payload = parts.next().unwrap_or_default().to_vec();
    let Ok(message) = decode_row(id, payload, &headers, &published_at) else {
        return;
    };
    let _ = message.validate();
    let _ = message.traceparent();
    let _ = message.decode::<serde_json::Value>();
});
