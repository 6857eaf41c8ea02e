//! The orders HTTP API, under `/api/orders`.
//!
//! Placing an order is the start of the shop's saga: the order is stored as `pending` together
//! with an `order.placed` event in the outbox (one transaction), payments charges it, and the
//! payment's outcome moves it to `paid` or `failed` (see `consume.rs`).

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRef, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use stratus_kit::auth::{Caller, Tokens};
use stratus_kit::db::Db;
use stratus_kit::openapi::Api;
use stratus_kit::outbox::{self, Relay};
use stratus_kit::paging::Paging;
use stratus_kit::trace::Hop;
use stratus_kit::{policy, Json, Problem};

use crate::events::{OrderPlaced, ORDER_PLACED};
use crate::order::{self, Item, Order, OrderInput};
use crate::pricing::Catalog;

/// 50 lines of an order fit in a few KiB.
const MAX_BODY: usize = 64 * 1024;
const MAX_PAGE: i64 = 1000;
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

#[derive(Clone)]
pub struct AppState {
    pub pool: Db,
    pub tokens: Arc<Tokens>,
    pub catalog: Arc<Catalog>,
    pub relay: Relay,
}

impl FromRef<AppState> for Arc<Tokens> {
    fn from_ref(state: &AppState) -> Self {
        state.tokens.clone()
    }
}

type Shared = State<AppState>;

/// The orders API as an OpenAPI 3.0 document (`/openapi.json`, `/api/orders/openapi.json`).
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every route the orders service serves, each recorded against `openapi.json` by the kit's `Api`.
pub fn routes() -> Api<AppState> {
    Api::new(OPENAPI, "/api/orders")
        .get("/api/orders", list)
        .post("/api/orders", place)
        .get("/api/orders/{id}", fetch)
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

/// The resource name in kit::policy's rules: `orders:read:any` lets a caller (an admin, or a
/// support service account) read every order; everyone else reads their own.
const RESOURCE: &str = "orders";

async fn place(
    State(state): Shared,
    caller: Caller,
    Hop(hop): Hop,
    headers: HeaderMap,
    body: Result<Json<OrderInput>, Problem>,
) -> Result<Response, Problem> {
    let key = headers
        .get(IDEMPOTENCY_KEY)
        .ok_or_else(|| {
            Problem::bad_request(
                "the Idempotency-Key header is required: a unique value per order, reused only when retrying the same request",
            )
        })?
        .to_str()
        .map_err(|_| Problem::bad_request("the Idempotency-Key header must be visible ASCII"))?
        .to_string();
    order::validate_key(&key).map_err(Problem::bad_request)?;
    let Json(input) = body?;
    input.validate().map_err(Problem::unprocessable)?;
    let user = caller.0.sub.clone();
    let request = serde_json::to_string(&input).map_err(Problem::internal)?;

    if let Some(replay) = replay(&state.pool, &user, &key, &request).await? {
        return Ok(replay);
    }

    let items = state.catalog.price(&input.items, hop).await?;
    let total = items
        .iter()
        .try_fold(0i64, |sum, item| sum.checked_add(item.line_total_cents))
        .ok_or_else(|| Problem::unprocessable("the order total is too large"))?;
    let now = stratus_kit::now_rfc3339();
    let order = Order {
        id: stratus_kit::new_id(),
        user_id: user.clone(),
        status: order::PENDING.into(),
        total,
        items,
        created_at: now.clone(),
        updated_at: now.clone(),
    };
    let response = serde_json::to_string(&order).map_err(Problem::internal)?;
    let items_json = serde_json::to_string(&order.items).map_err(Problem::internal)?;
    let event = serde_json::to_value(OrderPlaced {
        order_id: order.id.clone(),
        user_id: user.clone(),
        total_cents: total,
        items: order.items.clone(),
    })
    .map_err(Problem::internal)?;

    // The order and its event: both or neither.
    let mut tx = state.pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO orders (id, user_id, idempotency_key, request, response, status, total_cents, items, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)",
    )
    .bind(&order.id)
    .bind(&user)
    .bind(&key)
    .bind(&request)
    .bind(&response)
    .bind(order::PENDING)
    .bind(total)
    .bind(&items_json)
    .bind(&now)
    .execute(&mut *tx)
    .await;
    match inserted {
        Ok(_) => {}
        Err(error) if stratus_kit::db::is_unique_violation(&error) => {
            // A concurrent request with the same key won the race: answer with its order.
            drop(tx);
            return replay(&state.pool, &user, &key, &request)
                .await?
                .ok_or_else(|| {
                    Problem::internal("an idempotency key conflicted but no order holds it")
                });
        }
        Err(error) => return Err(error.into()),
    }
    outbox::enqueue(&mut tx, ORDER_PLACED, &event, Some(&hop.header_value())).await?;
    tx.commit().await?;
    state.relay.wake();
    tracing::info!(order = %order.id, user = %user, total, "order placed");

    let location = format!("/api/orders/{}", order.id);
    Ok((
        StatusCode::CREATED,
        [
            (header::LOCATION, location),
            (header::CONTENT_TYPE, "application/json".to_string()),
        ],
        response,
    )
        .into_response())
}

/// The first answer to `(user, key)`, if there was one: 200 with the same body. The same key
/// with a different body is refused, since it cannot mean a retry.
async fn replay(
    pool: &Db,
    user: &str,
    key: &str,
    request: &str,
) -> Result<Option<Response>, Problem> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT request, response FROM orders WHERE user_id = $1 AND idempotency_key = $2",
    )
    .bind(user)
    .bind(key)
    .fetch_optional(pool)
    .await?;
    match row {
        None => Ok(None),
        Some((stored, response)) if stored == request => Ok(Some(
            (
                StatusCode::OK,
                [
                    (header::CONTENT_TYPE, "application/json"),
                    (
                        header::HeaderName::from_static("idempotent-replayed"),
                        "true",
                    ),
                ],
                response,
            )
                .into_response(),
        )),
        Some(_) => Err(Problem::unprocessable(
            "this Idempotency-Key was already used for a different order; use a new key",
        )),
    }
}

type Row = (String, String, String, i64, String, String, String);
const COLUMNS: &str = "id, user_id, status, total_cents, items, created_at, updated_at";

fn to_order(
    (id, user_id, status, total, items, created_at, updated_at): Row,
) -> Result<Order, Problem> {
    let items: Vec<Item> = serde_json::from_str(&items).map_err(Problem::internal)?;
    Ok(Order {
        id,
        user_id,
        status,
        total,
        items,
        created_at,
        updated_at,
    })
}

async fn fetch(
    State(state): Shared,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, Problem> {
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM orders WHERE id = $1"))
        .bind(&id)
        .fetch_optional(&state.pool)
        .await?;
    // Another customer's order is "not found", not "forbidden": its existence is private.
    let row = row.ok_or_else(|| Problem::not_found(format!("no order {id}")))?;
    policy::require_read(&caller.0, RESOURCE, &row.1)?;
    Ok(axum::Json(to_order(row)?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    all: Option<bool>,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    offset: Option<i64>,
}

async fn list(
    State(state): Shared,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<impl IntoResponse, Problem> {
    let Query(query) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let Paging { limit, offset } = Paging::checked(query.limit, query.offset, MAX_PAGE)?;
    let all = query.all.unwrap_or(false);
    if all && policy::list_scope(&caller.0, RESOURCE).is_some() {
        return Err(Problem::forbidden(
            "all=true needs the role `admin` or the permission `orders:read:any`",
        ));
    }
    let rows: Vec<Row> = if all {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM orders ORDER BY id DESC LIMIT $1 OFFSET $2"
        ))
        .bind(limit)
        .bind(offset)
        .fetch_all(&state.pool)
        .await?
    } else {
        sqlx::query_as(&format!(
            "SELECT {COLUMNS} FROM orders WHERE user_id = $1 ORDER BY id DESC LIMIT $2 OFFSET $3"
        ))
        .bind(&caller.0.sub)
        .bind(limit)
        .bind(offset)
        .fetch_all(&state.pool)
        .await?
    };
    let orders = rows
        .into_iter()
        .map(to_order)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(axum::Json(orders))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_openapi_document_describes_exactly_the_routes() {
        super::routes().check().unwrap();
    }
}
