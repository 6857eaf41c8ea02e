//! The catalog's HTTP API, under `/api/catalog`.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRef, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;
use sqlx::AnyPool;
use stratus_kit::auth::{Caller, Tokens};
use stratus_kit::{Json, Problem};

use crate::product::{Product, ProductInput};

/// A product is a few KiB at most.
const MAX_BODY: usize = 64 * 1024;
const MAX_PAGE: i64 = 200;

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

type Shared = State<AppState>;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/catalog/products", get(list).post(create))
        .route(
            "/api/catalog/products/{id}",
            get(fetch).put(update).delete(remove),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    offset: Option<i64>,
}

type Row = (String, String, String, i64, i64);

fn product((id, name, description, price_cents, stock): Row) -> Product {
    Product {
        id,
        name,
        description,
        price_cents,
        stock,
    }
}

async fn list(
    State(state): Shared,
    Query(page): Query<Page>,
) -> Result<impl IntoResponse, Problem> {
    let limit = page.limit.unwrap_or(100);
    let offset = page.offset.unwrap_or(0);
    if !(1..=MAX_PAGE).contains(&limit) || offset < 0 {
        return Err(Problem::bad_request(format!(
            "limit must be 1-{MAX_PAGE} and offset at least 0"
        )));
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, name, description, price_cents, stock FROM products ORDER BY id LIMIT $1 OFFSET $2",
    )
    .bind(limit)
    .bind(offset)
    .fetch_all(&state.pool)
    .await?;
    Ok(axum::Json(
        rows.into_iter().map(product).collect::<Vec<_>>(),
    ))
}

async fn fetch(State(state): Shared, Path(id): Path<String>) -> Result<impl IntoResponse, Problem> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT id, name, description, price_cents, stock FROM products WHERE id = $1",
    )
    .bind(&id)
    .fetch_optional(&state.pool)
    .await?;
    row.map(|r| axum::Json(product(r)))
        .ok_or_else(|| Problem::not_found(format!("no product {id}")))
}

async fn create(
    State(state): Shared,
    caller: Caller,
    Json(input): Json<ProductInput>,
) -> Result<impl IntoResponse, Problem> {
    caller.require_role_or_permission("admin", "catalog:write")?;
    input.validate().map_err(Problem::unprocessable)?;
    let product = Product {
        id: stratus_kit::new_id(),
        name: input.name.trim().to_string(),
        description: input.description,
        price_cents: input.price_cents,
        stock: input.stock,
    };
    let now = stratus_kit::now_rfc3339();
    sqlx::query(
        "INSERT INTO products (id, name, description, price_cents, stock, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(&product.id)
    .bind(&product.name)
    .bind(&product.description)
    .bind(product.price_cents)
    .bind(product.stock)
    .bind(&now)
    .execute(&state.pool)
    .await?;
    tracing::info!(product = %product.id, by = %caller.0.sub, "product created");
    let location = format!("/api/catalog/products/{}", product.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        axum::Json(product),
    ))
}

async fn update(
    State(state): Shared,
    caller: Caller,
    Path(id): Path<String>,
    Json(input): Json<ProductInput>,
) -> Result<impl IntoResponse, Problem> {
    caller.require_role_or_permission("admin", "catalog:write")?;
    input.validate().map_err(Problem::unprocessable)?;
    let result = sqlx::query(
        "UPDATE products SET name = $1, description = $2, price_cents = $3, stock = $4, updated_at = $5 WHERE id = $6",
    )
    .bind(input.name.trim())
    .bind(&input.description)
    .bind(input.price_cents)
    .bind(input.stock)
    .bind(stratus_kit::now_rfc3339())
    .bind(&id)
    .execute(&state.pool)
    .await?;
    if !stratus_kit::db::changed(&result) {
        return Err(Problem::not_found(format!("no product {id}")));
    }
    Ok(axum::Json(Product {
        id,
        name: input.name.trim().to_string(),
        description: input.description,
        price_cents: input.price_cents,
        stock: input.stock,
    }))
}

async fn remove(
    State(state): Shared,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    caller.require_role_or_permission("admin", "catalog:write")?;
    let result = sqlx::query("DELETE FROM products WHERE id = $1")
        .bind(&id)
        .execute(&state.pool)
        .await?;
    if !stratus_kit::db::changed(&result) {
        return Err(Problem::not_found(format!("no product {id}")));
    }
    Ok(StatusCode::NO_CONTENT)
}
