//! Active health checks: the gateway asks every instance `GET /healthz` on an interval, and takes
//! an instance out of rotation after `unhealthy` failures in a row, back after `healthy`
//! successes. This catches an instance that is up but broken before a client request finds
//! out, and it complements the passive checks (the circuit breaker), which only see instances
//! that get traffic.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;

use crate::upstream::{Endpoint, Upstreams};

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy: u32,
    pub healthy: u32,
}

/// Per-endpoint counters of consecutive outcomes.
#[derive(Default)]
pub struct Probe {
    failures: AtomicU32,
    successes: AtomicU32,
}

pub async fn run(upstreams: Arc<Upstreams>, settings: Settings) {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(settings.timeout));
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(hyper_util::rt::TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .build(connector);
    let mut ticker = tokio::time::interval(settings.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        // Probe every instance at once, and wait for all before the next round.
        let mut round = tokio::task::JoinSet::new();
        for pool in upstreams.snapshot().values() {
            for endpoint in &pool.endpoints {
                round.spawn(check(client.clone(), endpoint.clone(), settings));
            }
        }
        while round.join_next().await.is_some() {}
    }
}

async fn check(
    client: Client<HttpConnector, Empty<Bytes>>,
    endpoint: Arc<Endpoint>,
    settings: Settings,
) {
    let uri: Uri = match format!("http://{}/healthz", endpoint.authority).parse() {
        Ok(uri) => uri,
        Err(_) => return,
    };
    let request = match Request::get(uri).body(Empty::new()) {
        Ok(request) => request,
        Err(_) => return,
    };
    let passed = matches!(
        tokio::time::timeout(settings.timeout, client.request(request)).await,
        Ok(Ok(response)) if response.status().is_success()
    );
    let probe = &endpoint.probe;
    if passed {
        probe.failures.store(0, Ordering::Relaxed);
        let successes = probe.successes.fetch_add(1, Ordering::Relaxed) + 1;
        if !endpoint.is_actively_healthy() && successes >= settings.healthy {
            tracing::info!(service = %endpoint.service, instance = %endpoint.id, "health check passing again");
            endpoint.set_actively_healthy(true);
        }
    } else {
        probe.successes.store(0, Ordering::Relaxed);
        let failures = probe.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if endpoint.is_actively_healthy() && failures >= settings.unhealthy {
            tracing::warn!(service = %endpoint.service, instance = %endpoint.id, "health check failing; out of rotation");
            metrics::counter!("gateway_health_check_failures_total", "service" => endpoint.service.clone()).increment(1);
            endpoint.set_actively_healthy(false);
        }
    }
}
