//! Rate limits shared by every gateway instance, kept in Redis (`STRATUS_RATE_LIMIT_REDIS_URL`).
//!
//! With one gateway, [`crate::route::ratelimit`]'s in-memory GCRA is exact. With several, each would
//! allow the full rate and N gateways would let N times the limit through. Here the same GCRA
//! runs inside Redis as one Lua script ([`GCRA`], called with EVALSHA), so the read of the TAT,
//! the decision and the write are atomic across every gateway, and time comes from Redis's clock
//! (`TIME`), so gateways whose clocks disagree still share one limit. Keys are
//! `stratus:ratelimit:<route>` (per route) or `stratus:ratelimit:<route>:<client address>` (per
//! client), and expire once their TAT is in the past, so idle clients cost nothing.
//!
//! Each worker thread has its own connection (its own runtime drives it), so a decision is one
//! round trip on the worker's own thread and never blocks it. When Redis cannot answer within
//! `STRATUS_RATE_LIMIT_REDIS_TIMEOUT` (100 ms), the limit **fails open**: the request is decided by the route's local limiter
//! (per instance, so the total may reach N times the limit while Redis is away), the failure is
//! counted in `ratelimit_redis_errors_total`, and Redis is left alone for [`BACK_OFF`] before it
//! is asked again, so an outage costs one timeout per worker per back-off, not one per request.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::ConnectionManager;

use crate::route::ratelimit::{Limited, RateLimiter, Scope};

/// After a failure, decide locally for this long before trying Redis again.
pub const BACK_OFF: Duration = Duration::from_millis(500);

/// GCRA in Redis. KEYS[1]: the limit's key; ARGV[1]: the emission interval, ARGV[2]: the burst
/// tolerance (both microseconds). Returns 0 when allowed, else how long to wait (microseconds).
const GCRA: &str = r#"
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
if tat - now > tolerance then
  return tat - now - tolerance
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.floor((new_tat - now) / 1000) + 1000)
return 0
"#;

static SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(GCRA));

/// One worker's handle on the shared limits.
pub struct SharedLimits {
    connection: Arc<ArcSwapOption<ConnectionManager>>,
    timeout: Duration,
    epoch: Instant,
    /// Milliseconds since `epoch` until which Redis is not asked (after a failure).
    skip_until_ms: AtomicU64,
}

impl SharedLimits {
    /// Starts connecting on the current (worker's) runtime; until connected, limits are local.
    pub fn start(url: &str, timeout: Duration) -> Self {
        let connection = Arc::new(ArcSwapOption::empty());
        let slot = connection.clone();
        let url = url.to_string();
        tokio::spawn(async move {
            let mut delay = Duration::from_millis(100);
            loop {
                match stratus_kit::cache::connect_redis(&url).await {
                    Ok(manager) => {
                        slot.store(Some(Arc::new(manager)));
                        return;
                    }
                    Err(error) => {
                        metrics::counter!("ratelimit_redis_errors_total").increment(1);
                        tracing::warn!(error = %format!("{error:#}"), "rate-limit Redis unreachable; limits are per instance until it answers");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
        Self {
            connection,
            timeout,
            epoch: Instant::now(),
            skip_until_ms: AtomicU64::new(0),
        }
    }

    /// Decides one request against the limit shared in Redis, or against `local` when Redis is
    /// unavailable.
    pub async fn check(
        &self,
        route: &str,
        local: &RateLimiter,
        client: IpAddr,
    ) -> Result<(), Limited> {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        if now_ms >= self.skip_until_ms.load(Ordering::Relaxed) {
            if let Some(connection) = self.connection.load_full() {
                match self.ask(&connection, route, local, client).await {
                    Ok(verdict) => return verdict,
                    Err(error) => {
                        metrics::counter!("ratelimit_redis_errors_total").increment(1);
                        let until = self.epoch.elapsed() + BACK_OFF;
                        self.skip_until_ms
                            .store(until.as_millis() as u64, Ordering::Relaxed);
                        tracing::debug!(%error, "rate-limit Redis failed; deciding locally");
                    }
                }
            }
        }
        metrics::counter!("ratelimit_redis_fallbacks_total").increment(1);
        local.check(client)
    }

    async fn ask(
        &self,
        connection: &ConnectionManager,
        route: &str,
        local: &RateLimiter,
        client: IpAddr,
    ) -> Result<Result<(), Limited>, String> {
        let key = match local.scope() {
            Scope::Route => format!("stratus:ratelimit:{route}"),
            Scope::Client => format!("stratus:ratelimit:{route}:{client}"),
        };
        let interval_us = (local.interval_ns() / 1000).max(1);
        let tolerance_us = local.tolerance_ns() / 1000;
        let mut connection = connection.clone();
        let mut invocation = SCRIPT.key(key);
        invocation.arg(interval_us).arg(tolerance_us);
        let wait_us: i64 =
            tokio::time::timeout(self.timeout, invocation.invoke_async(&mut connection))
                .await
                .map_err(|_| "timed out".to_string())?
                .map_err(|e| e.to_string())?;
        Ok(if wait_us <= 0 {
            Ok(())
        } else {
            Err(Limited {
                retry_after: Duration::from_micros(wait_us as u64),
            })
        })
    }
}
