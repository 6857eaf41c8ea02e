//! Which traces the sink must keep and which it may sample out: the decision, apart from the
//! database.
//!
//! A trace is *kept* (held for the whole retention) when any of its records is an error (status
//! 500 or above, or `ok` false: a consumer's failed message has status 0) or took at least
//! `STRATUS_EVENTS_SLOW`. Every other trace is *sampled*: it may be deleted when the storage
//! budget needs room, if its sample value is at or above the current rate's threshold.
//!
//! The sample value is a hash of the trace id, stored with every record. The same trace id
//! always hashes the same, so every record of a trace (from any reporter, arriving at any time)
//! carries the same value and the decision is the trace's, never a record's: a pruned trace
//! goes whole, a held one stays whole. A hash and not the id's own digits because not every
//! tracer makes ids uniformly random (some put a time in the first bytes).
//! Changing [`of`] would split traces stored across the change: do not.

/// Sample values fall in `0..SPACE`.
pub const SPACE: i64 = 1 << 32;

/// The trace id's sample value, in `0..SPACE`: FNV-1a over its text, then the splitmix64
/// finaliser, so that ids differing in one digit land far apart.
pub fn of(trace_id: &str) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in trace_id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    (hash >> 32) as i64
}

/// Traces whose sample value is at or above this are sampled out at `rate` (0 to 1): rate 1
/// holds every trace, 0.25 a quarter of them.
pub fn threshold(rate: f64) -> i64 {
    (rate.clamp(0.0, 1.0) * SPACE as f64).round() as i64
}

/// Whether one record makes its whole trace one the sink keeps.
pub fn keeps_trace(status: i64, ok: bool, duration_us: i64, slow_us: i64) -> bool {
    !ok || status >= 500 || duration_us >= slow_us
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_id_always_gets_the_same_value() {
        let id = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(of(id), of(id));
        assert_eq!(of(id), of(String::from(id).as_str()));
        // Pinned: stored values are compared with new ones, so the hash must never change.
        assert_eq!(of(id), 2_154_413_257);
        assert_ne!(of(id), of("4bf92f3577b34da6a3ce929d0e0e4737"));
    }

    /// Sequential ids (a test's, or a tracer's with a counter in them) still spread evenly,
    /// so a rate of r holds about r of them.
    #[test]
    fn values_spread_evenly_over_the_space() {
        let n = 100_000;
        for rate in [0.01, 0.1, 0.5, 0.9] {
            let held = (0..n)
                .filter(|i| of(&format!("{i:032x}")) < threshold(rate))
                .count();
            let share = held as f64 / n as f64;
            assert!(
                (share - rate).abs() < 0.01,
                "rate {rate} held {share} of sequential ids"
            );
        }
        assert!((0..1000).all(|i| (0..SPACE).contains(&of(&format!("{i:032x}")))));
    }

    #[test]
    fn thresholds_span_none_to_all() {
        assert_eq!(threshold(0.0), 0);
        assert_eq!(threshold(1.0), SPACE);
        assert_eq!(threshold(2.0), SPACE);
        assert_eq!(threshold(0.5), SPACE / 2);
    }

    #[test]
    fn errors_and_slow_records_keep_their_trace() {
        let slow = 1_000_000;
        assert!(!keeps_trace(200, true, 999_999, slow));
        assert!(keeps_trace(200, true, 1_000_000, slow));
        assert!(keeps_trace(500, false, 10, slow));
        assert!(
            keeps_trace(503, true, 10, slow),
            "a 5xx marked ok is still an error"
        );
        assert!(keeps_trace(0, false, 10, slow), "a failed message");
        assert!(
            !keeps_trace(404, true, 10, slow),
            "a 4xx is the caller's, not an error"
        );
    }
}
