//! The admin API on its own port: the route table and every upstream instance's state, and
//! the deployment controls: a route's split between versions can be read
//! (`GET /v1/routes/{name}/split`), replaced (`PUT`, the same fields as `split` in the route
//! file), removed (`DELETE`: every instance again) and its canary rolled back
//! (`POST /v1/routes/{name}/rollback`: every request to the stable version at once). The edge
//! cache's size is `GET /v1/cache`, and `POST /v1/cache/purge` purges by path, by surrogate key
//! or everything. Its OpenAPI document is `openapi.json`, served at `/openapi.json`.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use serde_json::{json, Value};
use stratus_kit::openapi::Api;
use stratus_kit::Problem;

use crate::route::deploy::SplitSpec;

use crate::proxy::Shared;
use crate::reload::SharedStatus;

#[derive(Clone)]
struct AdminState {
    proxy: Arc<Shared>,
    reload: SharedStatus,
}

/// The admin API as an OpenAPI 3.0 document, at `/openapi.json` on the admin port.
pub const OPENAPI: &str = include_str!("openapi.json");

/// A split is a handful of short fields.
const MAX_BODY: usize = 16 * 1024;

/// Every route of the admin API, each recorded against `openapi.json` by the kit's `Api`.
fn api() -> Api<AdminState> {
    let split = "/v1/routes/{name}/split";
    Api::new(OPENAPI, "")
        .get("/v1/routes", routes)
        .get("/v1/upstreams", upstreams)
        .get(split, get_split)
        .put(split, put_split)
        .delete(split, delete_split)
        .post("/v1/routes/{name}/rollback", rollback)
        .get("/v1/cache", cache_size)
        .post(PURGE, cache_purge)
        // It can move any route's traffic: operators only (with the mesh on), but for the
        // purges other gateways pass on (`purge_relay.rs`).
        .layer(axum::middleware::from_fn(operators_and_peer_purges))
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

/// Operators may use everything; another gateway (its certificate) may only purge.
async fn operators_and_peer_purges(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    use stratus_kit::caller::Caller;
    let caller = Caller::of(request.extensions().get::<stratus_kit::identity::Peer>());
    let allowed = if request.uri().path() == PURGE && request.method() == axum::http::Method::POST {
        caller.acts_as("gateway")
    } else {
        caller.operator()
    };
    match allowed {
        Ok(()) => next.run(request).await,
        Err(problem) => problem.into_response(),
    }
}

const PURGE: &str = "/v1/cache/purge";

pub fn router(proxy: Arc<Shared>, reload: SharedStatus) -> Api {
    api().with_state(AdminState { proxy, reload })
}

async fn routes(State(AdminState { proxy, reload }): State<AdminState>) -> axum::Json<Value> {
    let table = proxy.routes.load();
    let routes: Vec<Value> = table
        .routes
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "match": r.path.describe(),
                "host": r.host,
                "service": r.service,
                "methods": r.methods.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
                "roles": r.roles,
                "auth": format!("{:?}", r.auth).to_lowercase(),
                "balance": format!("{:?}", r.balance.algorithm),
                "deployment": r.deployment.describe(),
            })
        })
        .collect();
    let reload = reload.lock().map(|r| r.clone()).unwrap_or_default();
    axum::Json(json!({ "routes": routes, "reload": reload }))
}

async fn upstreams(State(AdminState { proxy, .. }): State<AdminState>) -> axum::Json<Value> {
    let snapshot = proxy.upstreams.snapshot();
    let mut services = serde_json::Map::new();
    for (name, pool) in snapshot.iter() {
        let instances: Vec<Value> = pool
            .endpoints
            .iter()
            .map(|e| {
                json!({
                    "id": e.id,
                    "address": e.authority.as_str(),
                    "version": e.version,
                    "state": if e.is_down() { "down" } else { "up" },
                    "breaker": e.breaker_state(),
                    "health_check": if e.is_actively_healthy() { "passing" } else { "failing" },
                    "check": e.check.as_str(),
                    "weight": e.weight,
                    "in_flight": e.in_flight(),
                    "latency_ewma_ms": e.latency_ewma().as_secs_f64() * 1000.0,
                })
            })
            .collect();
        services.insert(name.clone(), Value::Array(instances));
    }
    axum::Json(json!({ "registry_index": proxy.upstreams.index(), "services": services }))
}

/// The route named `name` in the table in force, or a 404 that says so.
fn deployment_of(
    proxy: &Shared,
    name: &str,
) -> Result<Arc<crate::route::deploy::Deployment>, Problem> {
    proxy
        .routes
        .load()
        .named(name)
        .map(|route| route.deployment.clone())
        .ok_or_else(|| Problem::not_found(format!("no route is named `{name}`")))
}

async fn get_split(
    State(AdminState { proxy, .. }): State<AdminState>,
    Path(name): Path<String>,
) -> Result<axum::Json<Value>, Problem> {
    Ok(axum::Json(deployment_of(&proxy, &name)?.describe()))
}

async fn put_split(
    State(AdminState { proxy, .. }): State<AdminState>,
    Path(name): Path<String>,
    stratus_kit::Json(spec): stratus_kit::Json<SplitSpec>,
) -> Result<axum::Json<Value>, Problem> {
    let deployment = deployment_of(&proxy, &name)?;
    deployment
        .set(Some(spec))
        .map_err(|e| Problem::unprocessable(format!("split: {e}")))?;
    tracing::info!(route = %name, split = %deployment.describe()["split"], "split changed through the admin API");
    Ok(axum::Json(deployment.describe()))
}

async fn delete_split(
    State(AdminState { proxy, .. }): State<AdminState>,
    Path(name): Path<String>,
) -> Result<axum::Json<Value>, Problem> {
    let deployment = deployment_of(&proxy, &name)?;
    deployment
        .set(None)
        .map_err(|e| Problem::unprocessable(format!("split: {e}")))?;
    tracing::info!(route = %name, "split removed through the admin API");
    Ok(axum::Json(deployment.describe()))
}

async fn rollback(
    State(AdminState { proxy, .. }): State<AdminState>,
    Path(name): Path<String>,
) -> Result<axum::Json<Value>, Problem> {
    let deployment = deployment_of(&proxy, &name)?;
    let rollback = deployment
        .rollback()
        .map_err(|e| Problem::new(StatusCode::CONFLICT, e))?;
    tracing::warn!(route = %name, canary = %rollback.canary, stable = %rollback.stable, "canary rolled back through the admin API");
    metrics::counter!("gateway_canary_rollbacks_total", "route" => name).increment(1);
    Ok(axum::Json(deployment.describe()))
}

async fn cache_size(State(AdminState { proxy, .. }): State<AdminState>) -> axum::Json<Value> {
    let (entries, bytes) = proxy.edge_cache.size();
    axum::Json(json!({ "entries": entries, "bytes": bytes, "budget": proxy.edge_cache.budget() }))
}

/// What `POST /v1/cache/purge` takes: exactly one of the three.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Purge {
    #[serde(default, deserialize_with = "present")]
    path: Option<String>,
    #[serde(default, deserialize_with = "present")]
    tags: Option<Vec<String>>,
    #[serde(default)]
    all: bool,
    /// Sent by another gateway: purge here, do not pass it on again.
    #[serde(default)]
    relayed: bool,
}

/// A field that, when given, must hold a value: `null` is refused, not read as absent.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

async fn cache_purge(
    State(AdminState { proxy, .. }): State<AdminState>,
    stratus_kit::Json(purge): stratus_kit::Json<Purge>,
) -> Result<axum::Json<Value>, Problem> {
    use crate::edge_cache::Purge as Do;
    let from_a_peer = purge.relayed;
    let purged = match (purge.path, purge.tags, purge.all) {
        (Some(path), None, false) if path.starts_with('/') => {
            proxy.purge(Do::Path(path.clone()), from_a_peer);
            json!({ "path": path })
        }
        (Some(_), None, false) => {
            return Err(Problem::unprocessable("path must start with '/'"));
        }
        (None, Some(tags), false) if !tags.is_empty() && tags.iter().all(|t| valid_tag(t)) => {
            proxy.purge(Do::Tags(tags.clone()), from_a_peer);
            json!({ "tags": tags })
        }
        (None, Some(_), false) => {
            return Err(Problem::unprocessable(
                "tags must be a non-empty list of surrogate keys (no spaces, at most 256 bytes each)",
            ));
        }
        (None, None, true) => {
            proxy.purge(Do::All, from_a_peer);
            json!({ "all": true })
        }
        _ => {
            return Err(Problem::unprocessable(
                "give exactly one of path, tags or all = true",
            ))
        }
    };
    tracing::info!(%purged, from_a_peer, "edge cache purged through the admin API");
    Ok(axum::Json(json!({ "purged": purged })))
}

fn valid_tag(tag: &str) -> bool {
    !tag.is_empty() && tag.len() <= 256 && !tag.chars().any(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_openapi_document_describes_exactly_the_routes() {
        super::api().check().unwrap();
    }
}
