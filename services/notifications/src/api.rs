//! The notifications HTTP API: `GET /api/notifications`, the caller's own.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use stratus_kit::auth::Caller;
use stratus_kit::openapi::Api;
use stratus_kit::paging::Paging;
use stratus_kit::Problem;

const MAX_PAGE: i64 = 1000;

/// The router's state: the notifications database and the token checker.
pub use stratus_kit::state::PoolAndTokens as AppState;

/// The notifications API as an OpenAPI 3.0 document (`/openapi.json`, `/api/notifications/openapi.json`).
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every route the notifications service serves, each recorded against `openapi.json` by the kit's `Api`.
pub fn routes() -> Api<AppState> {
    Api::new(OPENAPI, "/api/notifications").get("/api/notifications", list)
}

#[derive(Debug, Serialize)]
pub struct Notification {
    pub id: String,
    pub order_id: String,
    pub kind: String,
    pub message: String,
    pub created_at: String,
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

type Row = (String, String, String, String, String);

/// The caller's notifications, newest first; `?order_id=` narrows them to one order.
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<impl IntoResponse, Problem> {
    let Query(query) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let Paging { limit, offset } = Paging::checked(query.limit, query.offset, MAX_PAGE)?;
    if query
        .order_id
        .as_ref()
        .is_some_and(|o| o.is_empty() || o.len() > 64)
    {
        return Err(Problem::bad_request("order_id must be 1 to 64 characters"));
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, order_id, kind, message, created_at FROM notifications WHERE user_id = $1 AND ($2 = '' OR order_id = $2) ORDER BY id DESC LIMIT $3 OFFSET $4",
    )
    .bind(&caller.0.sub)
    .bind(query.order_id.unwrap_or_default())
    .bind(limit)
    .bind(offset)
    .fetch_all(&state.pool)
    .await?;
    let notifications: Vec<Notification> = rows
        .into_iter()
        .map(|(id, order_id, kind, message, created_at)| Notification {
            id,
            order_id,
            kind,
            message,
            created_at,
        })
        .collect();
    Ok(axum::Json(notifications))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_openapi_document_describes_exactly_the_routes() {
        super::routes().check().unwrap();
    }
}
