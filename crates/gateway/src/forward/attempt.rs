//! The attempt driver: one loop for HTTP/1.1 and HTTP/2 that sends a request to an instance and,
//! where that is safe and the route allows it, to another.
//!
//! ```text
//! deposit in the retry budget
//! loop: pick an instance (never the one that just failed) ─> none: 503 (504 after a timeout)
//!       ready the request for it (a bad request is refused here, before it counts against it)
//!       in flight +1 ─> send, bounded by the per-try timeout ─> latency, in flight -1
//!       answered  ─> breaker and split tallies ─> done, or a 502-504 retried where allowed
//!       failed    ─> trip the breaker (no connection) or count a failure ─> retry or 502
//!       timed out ─> count a failure ─> retry or 504
//!       retry     ─> retries +1, jittered back-off if the instance may have seen the request
//! ```
//!
//! What differs between the protocols is the one step that sends, [`SendStep`]: how the request
//! is built for an instance, whether an answer counts against it, and whether a request that may
//! have reached an instance can go again. Everything counted (in-flight, latency, breakers, the
//! split's tallies, metrics, the retry budget) is counted here, once, the same way for both.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use stratus_kit::Problem;

use crate::route::deploy::Group;
use crate::route::routes::Route;
use crate::upstream::instances::{Endpoint, InstancePool};

/// How one attempt ended, as the protocol's send step tells it.
pub enum Sent<R, E> {
    /// The instance answered. `failing`: the answer counts against it (a 5xx; for gRPC also
    /// UNAVAILABLE); `retryable`: another instance may be asked instead (HTTP/1.1's 502-504).
    Answered {
        response: R,
        failing: bool,
        retryable: bool,
    },
    /// No answer. `connect`: no connection was made (the breaker trips at once: a refused
    /// connection leaves no doubt); `reached`: the instance may have seen the request, so only
    /// a request that [`SendStep::resendable`] allows goes again, after a back-off.
    Failed {
        error: E,
        connect: bool,
        reached: bool,
    },
}

/// A protocol's "send one attempt": what the driver calls once an instance is picked.
pub trait SendStep {
    type Response;
    type Error: std::fmt::Display;

    /// Whether a request the instance may have seen can be sent again to another instance
    /// (HTTP/1.1: an idempotent method, whose body the gateway still holds; HTTP/2: never, the
    /// body has streamed away).
    fn resendable(&self) -> bool;

    /// Readies the request for `endpoint` before anything is counted against it; an error
    /// refuses the request itself (HTTP/2: a path that makes no valid URI).
    fn address(&mut self, _endpoint: &Endpoint) -> Result<(), Problem> {
        Ok(())
    }

    /// Sends the request to `endpoint` and says how that went. The driver bounds it with the
    /// per-try timeout: a send that is dropped there must leave nothing half done.
    fn send(
        &mut self,
        endpoint: &Arc<Endpoint>,
    ) -> impl std::future::Future<Output = Sent<Self::Response, Self::Error>>;
}

/// Where a request's attempts go: the route (its retries, budget, metrics, split), the pool of
/// the version chosen for it, its balancing key and its per-try timeout.
pub struct Attempts<'a> {
    pub route: &'a Route,
    pub pool: &'a InstancePool,
    pub group: Group,
    pub key: Option<u64>,
    pub timeout: Duration,
}

/// Why the driver goes round again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// The instance never saw the request: safe for any method, and at once.
    NotSent,
    /// The instance may have seen it.
    Failed,
}

impl<'a> Attempts<'a> {
    /// A request's attempts on `route`: a route split between versions balances inside the
    /// chosen version's pool, chosen (like the balancing key) on `headers` as given, so callers
    /// pass the request as the client sent it.
    pub fn new(
        route: &'a Route,
        pool: &'a InstancePool,
        headers: &http::HeaderMap,
        client: std::net::IpAddr,
        default_timeout: Duration,
    ) -> Self {
        let (pool, group) = route.deployment.choose(headers, pool);
        Self {
            route,
            pool,
            group,
            key: route.balance.key(headers, client),
            timeout: route.timeout.unwrap_or(default_timeout),
        }
    }

    /// Drives attempts until one answers or none may follow: the answer and the instance that
    /// gave it, or the problem the client is to hear. `retries` counts the retries made, for the
    /// hop record, even when the request fails in the end.
    pub async fn run<S: SendStep>(
        &self,
        step: &mut S,
        retries: &mut u32,
    ) -> Result<(S::Response, Arc<Endpoint>), Problem> {
        let route = self.route;
        let resendable = step.resendable();
        route.retry_budget.deposit();
        let mut failed: Option<Arc<Endpoint>> = None;
        let mut attempt = 0;
        let mut timed_out = None;
        loop {
            let Some(endpoint) = self.pool.pick(
                &route.balance,
                self.key,
                failed.as_ref().map(|e| e.id.as_str()),
            ) else {
                // No other instance to retry on: the client hears what went wrong with the
                // last one (a timeout stays a 504), or that there is none at all.
                return Err(match timed_out {
                    Some(timeout) => gateway_timeout(&route.service, timeout),
                    None => no_instance(&route.service),
                });
            };
            step.address(&endpoint)?;
            let in_flight = endpoint.start();
            let sent = Instant::now();
            let outcome = tokio::time::timeout(self.timeout, step.send(&endpoint)).await;
            endpoint.observe_latency(sent.elapsed());
            drop(in_flight);
            // The budget is asked last: a retry that is not allowed anyway withdraws nothing.
            let may_retry = |reason: Retry| {
                let allowed = match reason {
                    Retry::NotSent => true,
                    Retry::Failed => resendable,
                };
                allowed && attempt < route.retries && route.retry_budget.withdraw()
            };
            let retry = match outcome {
                Ok(Sent::Answered {
                    response,
                    failing,
                    retryable,
                }) => {
                    endpoint.record(!failing);
                    route.deployment.record(self.group, failing);
                    if !(retryable && may_retry(Retry::Failed)) {
                        return Ok((response, endpoint));
                    }
                    Retry::Failed
                }
                Ok(Sent::Failed {
                    error,
                    connect,
                    reached,
                }) => {
                    route.metrics.upstream_failures.increment(1);
                    route.deployment.record(self.group, true);
                    tracing::warn!(service = %route.service, instance = %endpoint.id, %error, "upstream failed");
                    if connect {
                        endpoint.trip();
                    } else {
                        endpoint.record(false);
                    }
                    let reason = if reached {
                        Retry::Failed
                    } else {
                        Retry::NotSent
                    };
                    if !may_retry(reason) {
                        return Err(bad_gateway(&route.service));
                    }
                    reason
                }
                Err(_) => {
                    // The timeout is per try: a hung instance (stopped, swapping, deadlocked)
                    // costs an idempotent request one timeout, not the request. (Over HTTP/2,
                    // dropping the call resets its stream; the connection carries on.)
                    endpoint.record(false);
                    route.deployment.record(self.group, true);
                    route.metrics.upstream_failures.increment(1);
                    if !may_retry(Retry::Failed) {
                        return Err(gateway_timeout(&route.service, self.timeout));
                    }
                    timed_out = Some(self.timeout);
                    Retry::Failed
                }
            };
            route.metrics.retries.increment(1);
            if retry == Retry::Failed {
                tokio::time::sleep(backoff(attempt)).await;
            }
            attempt += 1;
            *retries = attempt;
            failed = Some(endpoint);
        }
    }
}

/// Exponential back-off with full jitter: a random wait below 25 ms x 2^attempt (at most 250 ms),
/// so retries from many clients spread out instead of arriving together.
fn backoff(attempt: u32) -> Duration {
    let ceiling = (25u64 << attempt.min(4)).min(250);
    Duration::from_millis(crate::upstream::schedule::random_u64() % (ceiling + 1))
}

pub fn gateway_timeout(service: &str, timeout: Duration) -> Problem {
    Problem::new(
        StatusCode::GATEWAY_TIMEOUT,
        format!("{service} did not answer within {timeout:?}"),
    )
}

pub fn bad_gateway(service: &str) -> Problem {
    Problem::new(
        StatusCode::BAD_GATEWAY,
        format!("{service} failed to answer"),
    )
}

pub fn no_instance(service: &str) -> Problem {
    Problem::unavailable(format!("no instance of {service} is available"), 1)
}

#[cfg(test)]
mod tests;
