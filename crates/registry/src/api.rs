//! The registry's HTTP API (`/v1/...`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, put};
use axum::Router;
use serde::Deserialize;
use stratus_kit::model::Registration;
use stratus_kit::{Json, Problem};

use crate::store::{Store, StoreError};
use crate::{events, validate};

/// Registrations are small; anything larger is refused before it is parsed.
const MAX_BODY: usize = 64 * 1024;
/// The longest a blocking query may wait.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// The registry API as an OpenAPI 3.0 document, at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

pub fn router<S: Store>(store: Arc<S>) -> Router {
    Router::new()
        .route("/v1/services", get(list_services::<S>))
        .route("/v1/services/{name}", get(get_service::<S>))
        .route(
            "/v1/services/{name}/instances/{id}",
            put(register::<S>).delete(deregister::<S>),
        )
        .route(
            "/v1/services/{name}/instances/{id}/heartbeat",
            put(heartbeat::<S>),
        )
        .route("/v1/watch", get(events::watch::<S>))
        .route("/v1/prometheus/targets", get(prometheus_targets::<S>))
        .merge(stratus_kit::openapi::routes("", OPENAPI))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(store)
}

/// `?index=N&wait=30s`: answer once the registry's index passes N, or after `wait`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchQuery {
    index: Option<u64>,
    wait: Option<String>,
}

impl WatchQuery {
    async fn wait_on<S: Store>(&self, store: &S) -> Result<(), Problem> {
        let Some(index) = self.index else {
            return Ok(());
        };
        let wait = match &self.wait {
            Some(text) => stratus_kit::duration::parse(text).map_err(Problem::bad_request)?,
            None => Duration::from_secs(30),
        };
        store.wait_for_change(index, wait.min(MAX_WAIT)).await;
        Ok(())
    }
}

async fn list_services<S: Store>(
    State(store): State<Arc<S>>,
    query: Result<Query<WatchQuery>, QueryRejection>,
) -> Result<impl IntoResponse, Problem> {
    let Query(query) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    query.wait_on(&*store).await?;
    Ok(axum::Json(store.catalog().await.map_err(store_problem)?))
}

async fn get_service<S: Store>(
    State(store): State<Arc<S>>,
    Path(name): Path<String>,
    query: Result<Query<WatchQuery>, QueryRejection>,
) -> Result<impl IntoResponse, Problem> {
    validate::service_name(&name).map_err(Problem::bad_request)?;
    let Query(query) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    query.wait_on(&*store).await?;
    Ok(axum::Json(
        store.service(&name).await.map_err(store_problem)?,
    ))
}

/// Prometheus's HTTP service discovery: every instance that serves metrics (`prometheus.rs`).
async fn prometheus_targets<S: Store>(
    State(store): State<Arc<S>>,
) -> Result<impl IntoResponse, Problem> {
    let catalog = store.catalog().await.map_err(store_problem)?;
    Ok(axum::Json(crate::prometheus::targets(&catalog)))
}

async fn register<S: Store>(
    State(store): State<Arc<S>>,
    Path((name, id)): Path<(String, String)>,
    Json(registration): Json<Registration>,
) -> Result<impl IntoResponse, Problem> {
    validate::service_name(&name).map_err(Problem::bad_request)?;
    validate::instance_id(&id).map_err(Problem::bad_request)?;
    validate::registration(&registration).map_err(Problem::unprocessable)?;
    let (instance, created) = store
        .register(&name, &id, registration)
        .await
        .map_err(store_problem)?;
    if created {
        tracing::info!(service = %name, id = %id, address = %instance.authority(), "registered");
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(instance)))
}

async fn heartbeat<S: Store>(
    State(store): State<Arc<S>>,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    validate::service_name(&name).map_err(Problem::bad_request)?;
    validate::instance_id(&id).map_err(Problem::bad_request)?;
    if store.heartbeat(&name, &id).await.map_err(store_problem)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!(
            "no instance {name}/{id}; register it again"
        )))
    }
}

async fn deregister<S: Store>(
    State(store): State<Arc<S>>,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    validate::service_name(&name).map_err(Problem::bad_request)?;
    validate::instance_id(&id).map_err(Problem::bad_request)?;
    if store.deregister(&name, &id).await.map_err(store_problem)? {
        tracing::info!(service = %name, id = %id, "deregistered");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("no instance {name}/{id}")))
    }
}

/// A store failure as the client sees it: a 503 worth retrying (with the cause logged here, not
/// sent), or a 500 when the store holds something unreadable.
pub(crate) fn store_problem(error: StoreError) -> Problem {
    match error {
        StoreError::Unavailable(_) => {
            tracing::error!(%error, "registry store unavailable");
            Problem::unavailable("the registry cannot reach its store; try again shortly", 1)
        }
        StoreError::Corrupt(_) => Problem::internal(error),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_openapi_document_names_every_route() {
        let routes = [
            ("/v1/services", "get"),
            ("/v1/services/{name}", "get"),
            ("/v1/services/{name}/instances/{id}", "put"),
            ("/v1/services/{name}/instances/{id}", "delete"),
            ("/v1/services/{name}/instances/{id}/heartbeat", "put"),
            ("/v1/watch", "get"),
            ("/v1/prometheus/targets", "get"),
        ];
        stratus_kit::openapi::check(super::OPENAPI, &routes).unwrap();
    }
}
