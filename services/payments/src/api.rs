//! The payments HTTP API, under `/api/payments`: read-only; payments are made by the consumer.

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use stratus_kit::auth::Caller;
use stratus_kit::openapi::Api;
use stratus_kit::paging::Paging;
use stratus_kit::{policy, Problem};

const MAX_PAGE: i64 = 1000;

/// The router's state: the payments database and the token checker.
pub use stratus_kit::state::PoolAndTokens as AppState;

/// The payments API as an OpenAPI 3.0 document (`/openapi.json`, `/api/payments/openapi.json`).
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every route the payments service serves, each recorded against `openapi.json` by the kit's `Api`.
pub fn routes() -> Api<AppState> {
    Api::new(OPENAPI, "/api/payments").get("/api/payments", list)
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
    let Paging { limit, offset } = Paging::checked(query.limit, query.offset, MAX_PAGE)?;
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
    fn the_openapi_document_describes_exactly_the_routes() {
        super::routes().check().unwrap();
    }
}
