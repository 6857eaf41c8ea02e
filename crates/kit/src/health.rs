//! Liveness and readiness.
//!
//! `/healthz` answers as long as the process can answer at all. `/readyz` answers 200 only while
//! the process wants traffic and its dependencies (its database, say) respond: it turns 503 the
//! moment a shutdown begins, so orchestrators and gateways stop sending work before it leaves.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use futures_util::future::BoxFuture;
use serde_json::json;

use crate::problem::Problem;

type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    ready: AtomicBool,
    checks: std::sync::RwLock<Vec<(String, Check)>>,
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::SeqCst)
    }

    /// Adds a dependency check that `/readyz` runs on every call.
    pub fn add_check<F, Fut>(&self, name: impl Into<String>, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        let check: Check = Arc::new(move || Box::pin(check()));
        if let Ok(mut checks) = self.inner.checks.write() {
            checks.push((name.into(), check));
        }
    }

    pub fn routes(&self) -> Router {
        Router::new()
            .route("/healthz", get(|| async { (StatusCode::OK, "ok") }))
            .route("/readyz", get(readyz))
            .with_state(self.clone())
    }
}

async fn readyz(State(health): State<Health>) -> Response {
    if !health.is_ready() {
        return Problem::unavailable("not ready: starting or shutting down", 1).into_response();
    }
    let checks: Vec<(String, Check)> = health
        .inner
        .checks
        .read()
        .map(|c| c.clone())
        .unwrap_or_default();
    for (name, check) in checks {
        let outcome = tokio::time::timeout(std::time::Duration::from_secs(2), check()).await;
        let failure = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(error)) => error,
            Err(_) => "timed out".to_string(),
        };
        return Problem::unavailable(format!("{name} is not reachable: {failure}"), 1)
            .into_response();
    }
    axum::Json(json!({"status": "ready"})).into_response()
}
