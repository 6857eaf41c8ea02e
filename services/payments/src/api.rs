//! The payments HTTP API, under `/api/payments`: read-only; payments are made by the consumer.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRef, Query, State};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde::{Deserialize, Serialize};
use sqlx::AnyPool;
use stratus_kit::auth::{Caller, Tokens};
use stratus_kit::{policy, Problem};

const MAX_PAGE: i64 = 1000;

#[derive(Clone)]
pub struct AppState {
    pub pool: AnyPool,
    pub tokens: Arc<Tokens>,
}

impl FromRef<AppState> for Arc<Tokens> {
    fn from_ref(state: &AppState) -> Self {
        state.tokens.clone()
    }
}

/// The payments API as an OpenAPI 3.0 document (`/openapi.json`, `/api/payments/openapi.json`).
pub const OPENAPI: &str = include_str!("openapi.json");

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/payments", get(list))
        .merge(stratus_kit::openapi::routes("/api/payments", OPENAPI))
        .with_state(state)
}

#[derive(Debug, Serialize)]
pub struct Payment {
    pub id: String,
    pub order_id: String,
    pub user_id: String,
    pub amount_cents: i64,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at: String,
}

type Row = (String, String, String, i64, String, Option<String>, String);
const COLUMNS: &str = "id, order_id, user_id, amount_cents, status, reason, created_at";

fn payment((id, order_id, user_id, amount_cents, status, reason, created_at): Row) -> Payment {
    Payment {
        id,
        order_id,
        user_id,
        amount_cents,
        status,
        reason,
        created_at,
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    order_id: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    offset: Option<i64>,
}

/// The payments of one order (`?order_id=`), or the caller's newest. A customer sees only their
/// own payments (another's order simply has none for them); an admin sees every one.
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<impl IntoResponse, Problem> {
    let Query(query) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let limit = query.limit.unwrap_or(100);
    let offset = query.offset.unwrap_or(0);
    if !(1..=MAX_PAGE).contains(&limit) || offset < 0 {
        return Err(Problem::bad_request(format!(
            "limit must be 1-{MAX_PAGE} and offset at least 0"
        )));
    }
    // `payments:read:any` (admins have every permission) reaches everyone's payments; anyone
    // else is scoped to their own (kit::policy, the rule every service shares).
    let everyone = policy::list_scope(&caller.0, "payments").is_none();
    let rows: Vec<Row> = match &query.order_id {
        Some(order_id) if order_id.is_empty() || order_id.len() > 64 => {
            return Err(Problem::bad_request("order_id must be 1 to 64 characters"))
        }
        Some(order_id) => {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM payments WHERE order_id = $1 AND (user_id = $2 OR $3 = 1) ORDER BY id"
            ))
            .bind(order_id)
            .bind(&caller.0.sub)
            .bind(i64::from(everyone))
            .fetch_all(&state.pool)
            .await?
        }
        None => {
            sqlx::query_as(&format!(
                "SELECT {COLUMNS} FROM payments WHERE user_id = $1 ORDER BY id DESC LIMIT $2 OFFSET $3"
            ))
            .bind(&caller.0.sub)
            .bind(limit)
            .bind(offset)
            .fetch_all(&state.pool)
            .await?
        }
    };
    Ok(axum::Json(
        rows.into_iter().map(payment).collect::<Vec<_>>(),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_openapi_document_names_every_route() {
        stratus_kit::openapi::check(super::OPENAPI, &[("/api/payments", "get")]).unwrap();
    }
}
