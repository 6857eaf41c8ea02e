#![no_main]
//! The event sink's reader of reporters' summaries (`POST /v1/summaries`). Anything on the
//! network can post one, so a body is untrusted: reading it gives entries or an error, never a
//! panic; an entry read has counts that agree (errors, mutual TLS and refused within its count,
//! its sketch holding exactly the count); the sink's checks take whatever was read; and merging
//! what they accept into the aggregates, then every query of them, never panics either.

use libfuzzer_sys::fuzz_target;
use stratus_events::aggregate::Aggregates;
use stratus_events::record::check_folded;
use stratus_events::topology::Known;
use stratus_kit::fold::read_summary;

const NOW: i64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(entries) = read_summary(data, 10_000) else {
        return;
    };
    for entry in &entries {
        let tally = &entry.tally;
        assert!(tally.errors <= tally.count && tally.refused <= tally.mutual_tls);
        assert_eq!(tally.latency.count(), tally.count);
    }
    if check_folded(&entries).is_err() {
        return;
    }
    let aggregates = Aggregates::at(std::time::Duration::from_secs(3600), NOW);
    // Twice: a second merge adds to cells the first made.
    aggregates.add_folded_at(&entries, NOW);
    aggregates.add_folded_at(&entries, NOW);
    let since = (NOW - 3600) * 1_000_000;
    let _ = aggregates.stats_at(since, NOW);
    let _ = aggregates.routes_at(since, NOW);
    let _ = aggregates.topology_at(since, NOW, 3600.0, &Known::default());
});
