//! Calling another service without letting its trouble become ours: a circuit breaker and
//! retries with exponential back-off and jitter.
//!
//! A service that calls a dependency which is down pays for every attempt: a timeout or a
//! refused connection per request, retries on top, and a queue of waiting clients behind them.
//! The [`CircuitBreaker`] counts consecutive failures; past a threshold it *opens* and refuses
//! calls at once (the caller answers 503 in microseconds instead of waiting), then after a
//! cool-down lets a single probe through (*half-open*): its success closes the breaker again, its
//! failure re-opens it for another cool-down.
//!
//! [`backoff`] spreads retries out: each attempt waits up to twice as long as the one before,
//! and a random share of that ("full jitter") keeps many clients from retrying in lock-step.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The breaker's state, as reported in metrics and event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow; failures are counted.
    Closed,
    /// Calls are refused until the cool-down ends.
    Open,
    /// One probe call is allowed; its outcome decides.
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }
}

/// A consecutive-failures circuit breaker. Share it (in an `Arc`) between all calls to one
/// dependency.
pub struct CircuitBreaker {
    failure_threshold: u32,
    open_for: Duration,
    inner: Mutex<Inner>,
}

struct Inner {
    state: BreakerState,
    failures: u32,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
}

impl CircuitBreaker {
    /// Opens after `failure_threshold` consecutive failures (at least 1), for `open_for`.
    pub fn new(failure_threshold: u32, open_for: Duration) -> Self {
        Self {
            failure_threshold: failure_threshold.max(1),
            open_for,
            inner: Mutex::new(Inner {
                state: BreakerState::Closed,
                failures: 0,
                opened_at: None,
                probe_in_flight: false,
            }),
        }
    }

    /// Whether a call may go ahead now. In half-open state only one caller gets `true` until
    /// that call reports its outcome.
    pub fn allow(&self) -> bool {
        self.allow_at(Instant::now())
    }

    /// [`CircuitBreaker::allow`] at a given time (for tests).
    pub fn allow_at(&self, now: Instant) -> bool {
        let mut inner = self.lock();
        match inner.state {
            BreakerState::Closed => true,
            BreakerState::Open => {
                let cooled = inner
                    .opened_at
                    .is_none_or(|at| now.duration_since(at) >= self.open_for);
                if cooled {
                    inner.state = BreakerState::HalfOpen;
                    inner.probe_in_flight = true;
                    true
                } else {
                    false
                }
            }
            BreakerState::HalfOpen => {
                if inner.probe_in_flight {
                    false
                } else {
                    inner.probe_in_flight = true;
                    true
                }
            }
        }
    }

    /// The call succeeded: the breaker closes and the failure count restarts.
    pub fn success(&self) {
        let mut inner = self.lock();
        inner.state = BreakerState::Closed;
        inner.failures = 0;
        inner.opened_at = None;
        inner.probe_in_flight = false;
    }

    /// The call failed: count it; open at the threshold, or at once after a failed probe.
    pub fn failure(&self) {
        self.failure_at(Instant::now())
    }

    /// [`CircuitBreaker::failure`] at a given time (for tests).
    pub fn failure_at(&self, now: Instant) {
        let mut inner = self.lock();
        inner.failures = inner.failures.saturating_add(1);
        let open =
            inner.state == BreakerState::HalfOpen || inner.failures >= self.failure_threshold;
        if open {
            inner.state = BreakerState::Open;
            inner.opened_at = Some(now);
            inner.probe_in_flight = false;
        }
    }

    pub fn state(&self) -> BreakerState {
        self.lock().state
    }

    /// Seconds until the breaker will let a probe through (for a `Retry-After`), at least 1.
    pub fn retry_after_secs(&self) -> u64 {
        let inner = self.lock();
        let left = match (inner.state, inner.opened_at) {
            (BreakerState::Open, Some(at)) => self.open_for.saturating_sub(at.elapsed()),
            _ => Duration::ZERO,
        };
        left.as_secs_f64().ceil().max(1.0) as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent plain data; keep using it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// How long to wait before retry number `attempt` (1 for the first retry): a random duration
/// between zero and `base * 2^(attempt-1)`, capped at `max` ("full jitter").
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let ceiling = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(max);
    ceiling.mul_f64(rand::random::<f64>())
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(5);

    #[test]
    fn opens_after_consecutive_failures_only() {
        let breaker = CircuitBreaker::new(3, COOL);
        let now = Instant::now();
        breaker.failure_at(now);
        breaker.failure_at(now);
        breaker.success();
        breaker.failure_at(now);
        breaker.failure_at(now);
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.allow_at(now));
        breaker.failure_at(now);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.allow_at(now + Duration::from_secs(1)));
        assert!(breaker.retry_after_secs() >= 1);
    }

    #[test]
    fn half_open_lets_one_probe_through() {
        let breaker = CircuitBreaker::new(1, COOL);
        let now = Instant::now();
        breaker.failure_at(now);
        let later = now + COOL;
        assert!(breaker.allow_at(later), "the probe");
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        assert!(!breaker.allow_at(later), "only one probe at a time");
        breaker.success();
        assert_eq!(breaker.state(), BreakerState::Closed);
        assert!(breaker.allow_at(later));
    }

    #[test]
    fn a_failed_probe_reopens() {
        let breaker = CircuitBreaker::new(5, COOL);
        let now = Instant::now();
        for _ in 0..5 {
            breaker.failure_at(now);
        }
        let later = now + COOL;
        assert!(breaker.allow_at(later));
        breaker.failure_at(later);
        assert_eq!(breaker.state(), BreakerState::Open);
        assert!(!breaker.allow_at(later + Duration::from_secs(1)));
        assert!(breaker.allow_at(later + COOL));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for _ in 0..100 {
            assert!(backoff(1, base, max) <= base);
            assert!(backoff(3, base, max) <= base * 4);
            assert!(backoff(30, base, max) <= max);
        }
    }
}
