//! The canary watch: beside the request path, a few times a second, it reads every split's
//! counts (`deploy.rs`), publishes them as metrics, and rolls back a failing canary.
//!
//! It is handed the route table in force as a function rather than the gateway's shared state,
//! so the route layer knows nothing of the proxy above it.

use std::sync::Arc;
use std::time::Instant;

use stratus_kit::events::EventReporter;

use crate::route::deploy::{Rollback, CHECK_EVERY};
use crate::route::routes::RouteTable;

/// Watches every canary of the route table in force and rolls back the failing ones: logged,
/// counted in `gateway_canary_rollbacks_total{route}`, kept on the admin API and reported to
/// the event sink. Also publishes each split's counts as metrics.
pub async fn watch<T>(table: T, reporter: Option<EventReporter>)
where
    T: Fn() -> Arc<RouteTable>,
{
    let mut ticker = tokio::time::interval(CHECK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let table = table();
        let now = Instant::now();
        for route in &table.routes {
            let deployment = &route.deployment;
            if deployment.plan().is_none() {
                continue;
            }
            for (group, tally) in [
                ("stable", &deployment.stable),
                ("canary", &deployment.canary),
            ] {
                let (requests, errors) = tally.read();
                metrics::counter!("gateway_split_requests_total", "route" => route.name.clone(), "group" => group)
                    .absolute(requests);
                metrics::counter!("gateway_split_errors_total", "route" => route.name.clone(), "group" => group)
                    .absolute(errors);
            }
            let Some(rollback) = deployment.check(now) else {
                continue;
            };
            tracing::warn!(
                route = %route.name,
                canary = %rollback.canary,
                stable = %rollback.stable,
                error_rate = rollback.error_rate.unwrap_or_default(),
                requests = rollback.requests.unwrap_or_default(),
                "canary rolled back: every request now goes to the stable version"
            );
            metrics::counter!("gateway_canary_rollbacks_total", "route" => route.name.clone())
                .increment(1);
            if let Some(reporter) = &reporter {
                report(reporter, &route.name, &rollback);
            }
        }
    }
}

/// One record on the event sink for a rollback, so it shows among the system's events.
fn report(reporter: &EventReporter, route: &str, rollback: &Rollback) {
    let trace = stratus_kit::trace::TraceContext::new_root();
    reporter.report(stratus_kit::events::EventRecord {
        trace_id: trace.trace_id_hex(),
        span_id: trace.span_id_hex(),
        parent_span_id: None,
        service: reporter.service().to_string(),
        instance: reporter.instance().to_string(),
        kind: "gateway".into(),
        name: format!(
            "canary rollback: route {route}, {} -> {}",
            rollback.canary, rollback.stable
        ),
        method: None,
        status: 0,
        ok: false,
        started_at: rollback.at.clone(),
        duration_us: 0,
        retries: None,
        cache: None,
        topic: None,
        breaker: None,
        peer: None,
    });
}
