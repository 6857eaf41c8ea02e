//! The admin API on its own port: the route table and every upstream instance's state.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use crate::proxy::Shared;

pub fn router(proxy: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/routes", get(routes))
        .route("/v1/upstreams", get(upstreams))
        .with_state(proxy)
}

async fn routes(State(proxy): State<Arc<Shared>>) -> axum::Json<Value> {
    let table = proxy.routes.load();
    let routes: Vec<Value> = table
        .routes
        .iter()
        .map(|r| {
            json!({
                "name": r.name,
                "prefix": r.prefix,
                "service": r.service,
                "methods": r.methods.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
                "roles": r.roles,
                "auth": format!("{:?}", r.auth).to_lowercase(),
            })
        })
        .collect();
    axum::Json(json!({ "routes": routes }))
}

async fn upstreams(State(proxy): State<Arc<Shared>>) -> axum::Json<Value> {
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
                })
            })
            .collect();
        services.insert(name.clone(), Value::Array(instances));
    }
    axum::Json(json!({ "registry_index": proxy.upstreams.index(), "services": services }))
}
