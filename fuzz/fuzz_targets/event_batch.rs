#![no_main]
//! The event sink's binary batch reader. Anything on the network can post to the sink, so a
//! body is untrusted: reading it gives records or an error, never a panic, and the sink's checks
//! take whatever was read, and a record they accept is one the JSON path accepts too (what the
//! sink stores can be shown). Writing the records again gives a batch that reads back the same
//! (but for methods too long to record, written as OTHER).

use libfuzzer_sys::fuzz_target;
use stratus_events::record::{validate, validate_wire};
use stratus_kit::event_wire::{read_batch, Batch, RecordRef, MAX_METHOD};

fuzz_target!(|data: &[u8]| {
    let Ok(records) = read_batch(data, 10_000) else {
        return;
    };
    let mut again = Batch::with_capacity(data.len());
    for record in &records {
        if let Ok(row) = validate_wire(record) {
            let shown = row.into_record();
            assert!(validate(shown.clone()).is_ok(), "{shown:?}");
        }
        again.push(record);
    }
    assert_eq!(again.records, records.len());
    let reread = read_batch(&again.bytes, 10_000).expect("a written batch reads back");
    // The writer records a method longer than the sink takes as OTHER; all else comes back.
    let expected: Vec<RecordRef<'_>> = records
        .iter()
        .map(|r| RecordRef {
            method: r
                .method
                .map(|m| if m.len() > MAX_METHOD { "OTHER" } else { m }),
            ..*r
        })
        .collect();
    assert_eq!(reread, expected);
});
