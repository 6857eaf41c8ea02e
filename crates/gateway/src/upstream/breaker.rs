//! A circuit breaker per upstream instance, which is also its outlier detection.
//!
//! ```text
//!   closed ──(5 consecutive failures, or a refused connection)──> open
//!     ^                                                            │ ejection time passes
//!     └──────────── trial request succeeds ── half-open <─────────┘
//!                   trial request fails ──> open again, for twice as long (up to 5 min)
//! ```
//!
//! A failure is a refused or broken connection, a timeout, or a 5xx answer. While open, the
//! instance gets no requests; in half-open it gets exactly one, the trial. The state lives in
//! atomics: the request path never takes a lock, and two requests racing on a transition at
//! worst let one extra trial through.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::time::Duration;

pub const FAILURE_THRESHOLD: u32 = 5;
pub const BASE_EJECTION: Duration = Duration::from_secs(1);
pub const MAX_EJECTION: Duration = Duration::from_secs(300);

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

#[derive(Default)]
pub struct Breaker {
    state: AtomicU8,
    failures: AtomicU32,
    /// How many times in a row it has opened: each time the ejection doubles.
    ejections: AtomicU32,
    /// While open: when it may let a trial through (nanoseconds on the caller's clock).
    open_until: AtomicU64,
}

impl Breaker {
    /// Closed: every request may pass, whatever the time. Callers check this first, so the
    /// common case costs no clock read.
    pub fn is_closed(&self) -> bool {
        self.state.load(Ordering::Acquire) == CLOSED
    }

    pub fn state(&self, now: u64) -> State {
        match self.state.load(Ordering::Acquire) {
            OPEN if now >= self.open_until.load(Ordering::Acquire) => State::HalfOpen,
            OPEN => State::Open,
            HALF_OPEN => State::HalfOpen,
            _ => State::Closed,
        }
    }

    /// Whether a request may be sent now. An open breaker whose time is up lets exactly one
    /// trial through and turns half-open.
    pub fn allows(&self, now: u64) -> bool {
        match self.state.load(Ordering::Acquire) {
            CLOSED => true,
            OPEN if now >= self.open_until.load(Ordering::Acquire) => self
                .state
                .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok(),
            _ => false,
        }
    }

    /// Whether the balancer may choose this instance: closed, or open with its ejection over
    /// (a trial is due). Half-open with the trial still out is unavailable.
    pub fn available(&self, now: u64) -> bool {
        match self.state.load(Ordering::Acquire) {
            CLOSED => true,
            OPEN => now >= self.open_until.load(Ordering::Acquire),
            _ => false,
        }
    }

    pub fn on_success(&self) {
        self.failures.store(0, Ordering::Release);
        if self.state.swap(CLOSED, Ordering::AcqRel) != CLOSED {
            self.ejections.store(0, Ordering::Release);
        }
    }

    /// Records a failure; returns true if this opened the breaker.
    pub fn on_failure(&self, now: u64) -> bool {
        let failures = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let state = self.state.load(Ordering::Acquire);
        if state == HALF_OPEN || (state == CLOSED && failures >= FAILURE_THRESHOLD) {
            self.open(now);
            return true;
        }
        false
    }

    /// Opens at once: for failures that leave no doubt, like a refused connection.
    pub fn trip(&self, now: u64) {
        if self.state.load(Ordering::Acquire) != OPEN {
            self.open(now);
        }
    }

    fn open(&self, now: u64) {
        let ejections = self.ejections.fetch_add(1, Ordering::AcqRel);
        let ejection = BASE_EJECTION
            .saturating_mul(1 << ejections.min(10))
            .min(MAX_EJECTION);
        self.open_until
            .store(now + ejection.as_nanos() as u64, Ordering::Release);
        self.failures.store(0, Ordering::Release);
        self.state.store(OPEN, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    #[test]
    fn opens_after_consecutive_failures_only() {
        let breaker = Breaker::default();
        for _ in 0..FAILURE_THRESHOLD - 1 {
            assert!(!breaker.on_failure(0));
        }
        breaker.on_success();
        for _ in 0..FAILURE_THRESHOLD - 1 {
            breaker.on_failure(0);
        }
        assert_eq!(
            breaker.state(0),
            State::Closed,
            "a success in between resets the count"
        );
        assert!(breaker.on_failure(0));
        assert_eq!(breaker.state(0), State::Open);
        assert!(!breaker.allows(SECOND / 2));
    }

    #[test]
    fn half_open_lets_one_trial_through() {
        let breaker = Breaker::default();
        breaker.trip(0);
        assert!(!breaker.available(0));
        assert!(breaker.available(SECOND));
        assert!(breaker.allows(SECOND), "the ejection time is over");
        assert_eq!(breaker.state(SECOND), State::HalfOpen);
        assert!(!breaker.allows(SECOND), "only one trial at a time");
        assert!(!breaker.available(SECOND));
        breaker.on_success();
        assert_eq!(breaker.state(SECOND), State::Closed);
        assert!(breaker.allows(SECOND));
    }

    #[test]
    fn a_failed_trial_reopens_for_longer() {
        let breaker = Breaker::default();
        breaker.trip(0); // 1 s
        assert!(breaker.allows(SECOND));
        assert!(breaker.on_failure(SECOND)); // 2 s more
        assert!(!breaker.allows(2 * SECOND));
        assert!(breaker.allows(3 * SECOND));
        assert!(breaker.on_failure(3 * SECOND)); // 4 s more
        assert!(!breaker.allows(6 * SECOND));
        assert!(breaker.allows(7 * SECOND));
        breaker.on_success();
        breaker.trip(7 * SECOND); // back to 1 s after recovering
        assert!(breaker.allows(8 * SECOND));
    }

    #[test]
    fn ejection_is_capped() {
        let breaker = Breaker::default();
        let mut now = 0;
        for _ in 0..20 {
            breaker.trip(now);
            now += MAX_EJECTION.as_nanos() as u64;
            assert!(breaker.allows(now));
        }
    }
}
