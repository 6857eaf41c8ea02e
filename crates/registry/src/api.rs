//! The registry's HTTP API (`/v1/...`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRef, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use stratus_kit::caller::Caller;
use stratus_kit::model::Registration;
use stratus_kit::openapi::Api;
use stratus_kit::{Json, Problem};

use crate::answers::Answers;
use crate::coalesce::Coalesced;
use crate::store::{Store, StoreError, StoreResult};
use crate::{events, validate};

/// Registrations are small; anything larger is refused before it is parsed.
const MAX_BODY: usize = 64 * 1024;
/// The longest a blocking query may wait.
const MAX_WAIT: Duration = Duration::from_secs(300);
/// The most services one query on part of the catalog may name.
const MAX_SERVICES: usize = 1000;

/// The registry API as an OpenAPI 3.0 document, at `/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// What the routes are served with: the store, and its answers encoded once per change.
pub struct Registry<S> {
    pub store: Arc<S>,
    pub answers: Arc<Answers>,
    /// Reads of the whole catalog, shared by the watchers one change wakes (`coalesce.rs`).
    catalog_reads: Arc<Coalesced<StoreResult<(u64, Bytes)>>>,
}

impl<S> Registry<S> {
    pub fn new(store: Arc<S>) -> Self {
        Self {
            store,
            answers: Arc::default(),
            catalog_reads: Arc::default(),
        }
    }
}

impl<S> Clone for Registry<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            answers: self.answers.clone(),
            catalog_reads: self.catalog_reads.clone(),
        }
    }
}

/// Routes that only read and write instances take the store alone.
impl<S> FromRef<Registry<S>> for Arc<S> {
    fn from_ref(registry: &Registry<S>) -> Self {
        registry.store.clone()
    }
}

/// Every route the registry serves over a store of type `S`, each recorded against
/// `openapi.json` by the kit's `Api`.
pub fn routes<S: Store>() -> Api<Registry<S>> {
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
        // A declared length over the limit is read away before the 413, so the client sees it.
        .layer(axum::middleware::from_fn(
            |request: axum::extract::Request, next: axum::middleware::Next| {
                stratus_kit::body_limit::refuse_declared_over(MAX_BODY, request, next)
            },
        ))
}

/// `?index=N&wait=30s`: answer once the index passes N, or after `wait`. The whole catalog waits
/// on the registry's index; one service on its own (a change elsewhere does not wake it).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WatchQuery {
    index: Option<u64>,
    wait: Option<String>,
}

/// What is waited on: the registry's index, one service's, or any of several services'.
enum Waited<'a> {
    Registry,
    Service(&'a str),
    AnyOf(&'a [String]),
}

impl WatchQuery {
    async fn wait_on<S: Store>(&self, store: &S, waited: Waited<'_>) -> Result<(), Problem> {
        // A bad `wait` is refused whatever the index: the same query is checked the same way.
        let wait = match &self.wait {
            Some(text) => stratus_kit::duration::parse(text).map_err(Problem::bad_request)?,
            None => Duration::from_secs(30),
        };
        let wait = wait.min(MAX_WAIT);
        // No index is ever 0 in an answer, so 0 means "nothing seen yet": answer at once, even
        // for a service that has not changed since the registry started (its own index is 0).
        let Some(index) = self.index.filter(|&index| index > 0) else {
            return Ok(());
        };
        match waited {
            Waited::Registry => store.wait_for_change(index, wait).await,
            Waited::Service(service) => store.wait_for_service_change(service, index, wait).await,
            Waited::AnyOf(services) => store.wait_for_services_change(services, index, wait).await,
        };
        Ok(())
    }
}

/// `GET /v1/services`: a blocking query as [`WatchQuery`], and `services=a,b` for only those
/// services (woken only by their changes).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogQuery {
    index: Option<u64>,
    wait: Option<String>,
    services: Option<String>,
}

/// The names in `services=a,b`, checked, sorted and without repeats.
pub(crate) fn named_services(list: &str) -> Result<Vec<String>, Problem> {
    let mut names: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_string)
        .collect();
    for name in &names {
        validate::service_name(name).map_err(Problem::bad_request)?;
    }
    names.sort();
    names.dedup();
    if names.len() > MAX_SERVICES {
        return Err(Problem::bad_request(format!(
            "services names {} services; at most {MAX_SERVICES}",
            names.len()
        )));
    }
    Ok(names)
}

async fn list_services<S: Store>(
    State(registry): State<Registry<S>>,
    caller: Caller,
    query: Result<Query<CatalogQuery>, QueryRejection>,
) -> Result<impl IntoResponse, Problem> {
    caller.known()?;
    let Query(query) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let services = query.services.as_deref().map(named_services).transpose()?;
    let watch = WatchQuery {
        index: query.index,
        wait: query.wait,
    };
    let Some(services) = services else {
        watch.wait_on(&*registry.store, Waited::Registry).await?;
        let (_, encoded) = catalog_answer(&registry).await.map_err(store_problem)?;
        return Ok(json(encoded));
    };
    // Part of the catalog, at the registry's index: any later change to one of its services
    // moves that service's index past it.
    watch
        .wait_on(&*registry.store, Waited::AnyOf(&services))
        .await?;
    let catalog = registry
        .store
        .services_snapshot(&services)
        .await
        .map_err(store_problem)?;
    Ok(json(crate::answers::encode_part(&catalog)))
}

async fn get_service<S: Store>(
    State(registry): State<Registry<S>>,
    caller: Caller,
    Path(name): Path<String>,
    query: Result<Query<WatchQuery>, QueryRejection>,
) -> Result<impl IntoResponse, Problem> {
    caller.known()?;
    validate::service_name(&name).map_err(Problem::bad_request)?;
    let Query(query) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    query
        .wait_on(&*registry.store, Waited::Service(&name))
        .await?;
    let kept = registry.store.service_version(&name);
    if let Some(encoded) = kept.and_then(|version| registry.answers.service_at(&name, version)) {
        return Ok(json(encoded));
    }
    let (answer, version) = registry
        .store
        .service_versioned(&name)
        .await
        .map_err(store_problem)?;
    Ok(json(registry.answers.service(&answer, version).await))
}

/// The whole catalog's index and JSON: the encoding already made for its version when the store
/// can tell the version without reading (memory: every watcher woken by one change but the
/// first), else read (one read shared by the callers that ask at once) and encoded (once per
/// version).
pub(crate) async fn catalog_answer<S: Store>(registry: &Registry<S>) -> StoreResult<(u64, Bytes)> {
    if let Some(version) = registry.store.catalog_version() {
        if let Some(encoded) = registry.answers.catalog_at(version) {
            return Ok((version.0, encoded));
        }
    }
    registry
        .catalog_reads
        .read(|| async {
            let catalog = registry.store.catalog().await?;
            Ok((catalog.index, registry.answers.catalog(&catalog).await))
        })
        .await
}

/// An answer already encoded as JSON.
fn json(body: Bytes) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], body)
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
            .with_state::<()>(super::Registry::new(store))
            .merge(crate::identity::api::routes().with_state(None))
            .check()
            .unwrap();
    }
}
