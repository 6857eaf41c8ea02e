//! Prometheus metrics: one recorder per process, rendered on `/metrics`, and a layer that counts
//! and times every HTTP request by route and status.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Latency buckets in seconds: 0.5 ms to 10 s.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the process's recorder (once; later calls return the same handle).
///
/// The rule: this is the first thing a process does, before anything can create a metric
/// handle. The `metrics` facade gives a handle made before a recorder exists to nobody: it is a
/// no-op for the rest of its life, and a handle kept for the process's life (the gateway's
/// per-route counters, made when the route table loads) would never reach `/metrics`. `main`
/// calls it before parsing the command line; a test that runs a component in its own process
/// calls it first too.
///
/// Every `*_seconds` metric recorded as a histogram is a Prometheus histogram with [`BUCKETS`]
/// (`_bucket`, `_sum`, `_count`), not a summary, so quantiles can be taken across instances.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is already installed (a test linking another exporter):
                // keep a private one so `/metrics` still renders.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// Whether [`install`] has run in this process: what a handle kept for the process's life
/// asserts before it is made.
pub fn installed() -> bool {
    HANDLE.get().is_some()
}

/// `GET /metrics`: the installed recorder's text, with the memory gauges read fresh.
pub fn routes() -> Router {
    debug_assert!(
        installed(),
        "stratus_kit::metrics::install() must run before a component serves /metrics"
    );
    let handle = install();
    Router::new().route(
        "/metrics",
        get(move || {
            crate::memory::record();
            std::future::ready(handle.render())
        }),
    )
}

/// Middleware: `http_server_requests_total` and `http_server_request_duration_seconds`, labelled
/// by method, matched route and status.
pub async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::counter!("http_server_requests_total", &labels).increment(1);
    metrics::histogram!("http_server_request_duration_seconds", &labels)
        .record(started.elapsed().as_secs_f64());
    response
}
