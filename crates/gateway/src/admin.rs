//! The admin API on its own port: the route table and every upstream instance's state.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use crate::proxy::Shared;
use crate::reload::SharedStatus;

#[derive(Clone)]
struct AdminState {
    proxy: Arc<Shared>,
    reload: SharedStatus,
}

pub fn router(proxy: Arc<Shared>, reload: SharedStatus) -> Router {
    Router::new()
        .route("/v1/routes", get(routes))
        .route("/v1/upstreams", get(upstreams))
        .with_state(AdminState { proxy, reload })
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
