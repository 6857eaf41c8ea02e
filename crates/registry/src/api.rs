//! The registry's HTTP API (`/v1/...`).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde::Deserialize;
use stratus_kit::caller::Caller;
use stratus_kit::model::Registration;
use stratus_kit::openapi::Api;
use stratus_kit::{Json, Problem};

use crate::store::{Store, StoreError};
use crate::{events, validate};

/// Registrations are small; anything larger is refused before it is parsed.
const MAX_BODY: usize = 64 * 1024;
/// The longest a blocking query may wait.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// The registry API as an OpenAPI 3.0 document, at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every route the registry serves over a store of type `S`, each recorded against
/// `openapi.json` by the kit's `Api`.
pub fn routes<S: Store>() -> Api<Arc<S>> {
    let instance = "/v1/services/{name}/instances/{id}";
    Api::new(OPENAPI, "")
        .get("/v1/services", list_services::<S>)
        .get("/v1/services/{name}", get_service::<S>)
        .put(instance, register::<S>)
        .delete(instance, deregister::<S>)
        .put(
            "/v1/services/{name}/instances/{id}/heartbeat",
            heartbeat::<S>,
        )
        .get("/v1/watch", events::watch::<S>)
        .get("/v1/prometheus/targets", prometheus_targets::<S>)
        .layer(DefaultBodyLimit::max(MAX_BODY))
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
    caller: Caller,
    query: Result<Query<WatchQuery>, QueryRejection>,
) -> Result<impl IntoResponse, Problem> {
    caller.known()?;
    let Query(query) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    query.wait_on(&*store).await?;
    Ok(axum::Json(store.catalog().await.map_err(store_problem)?))
}

async fn get_service<S: Store>(
    State(store): State<Arc<S>>,
    caller: Caller,
    Path(name): Path<String>,
    query: Result<Query<WatchQuery>, QueryRejection>,
) -> Result<impl IntoResponse, Problem> {
    caller.known()?;
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
    caller: Caller,
) -> Result<impl IntoResponse, Problem> {
    caller.known()?;
    let catalog = store.catalog().await.map_err(store_problem)?;
    Ok(axum::Json(crate::prometheus::targets(&catalog)))
}

async fn register<S: Store>(
    State(store): State<Arc<S>>,
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
    Json(registration): Json<Registration>,
) -> Result<impl IntoResponse, Problem> {
    validate::service_name(&name).map_err(Problem::bad_request)?;
    validate::instance_id(&id).map_err(Problem::bad_request)?;
    // Only the service itself (its certificate) or an operator changes its instances.
    caller.acts_as(&name)?;
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
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    validate::service_name(&name).map_err(Problem::bad_request)?;
    validate::instance_id(&id).map_err(Problem::bad_request)?;
    // Only the service itself (its certificate) or an operator changes its instances.
    caller.acts_as(&name)?;
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
    caller: Caller,
    Path((name, id)): Path<(String, String)>,
) -> Result<StatusCode, Problem> {
    validate::service_name(&name).map_err(Problem::bad_request)?;
    validate::instance_id(&id).map_err(Problem::bad_request)?;
    // Only the service itself (its certificate) or an operator changes its instances.
    caller.acts_as(&name)?;
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
    use std::sync::Arc;

    use crate::store::memory::MemoryStore;

    #[test]
    fn the_openapi_document_describes_exactly_the_routes() {
        let store = Arc::new(MemoryStore::warming_for(std::time::Duration::ZERO));
        super::routes::<MemoryStore>()
            .with_state::<()>(store)
            .merge(crate::identity::api::routes().with_state(None))
            .check()
            .unwrap();
    }
}
