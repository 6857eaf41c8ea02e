//! The catalog's HTTP API, under `/api/catalog`.
//!
//! Reading one product is **cache-aside** (`kit::cache::get_or_load`): look in the cache, on a
//! miss read the database and fill the cache; `PUT` and `DELETE` write the database and then
//! invalidate the product's key. Each such read answers `x-server-cache: hit|miss` and records the same
//! in its event record. The product list is not cached: it changes with every write to any
//! product, and paging makes its keys many.
//!
//! Each read by id also counts a **view**, write-back (`kit::cache::WriteBack`): the increment goes
//! into memory and reaches the `views` column in batches (`flush_views`), which then invalidates
//! the flushed products so their next read shows the new count.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRef, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use stratus_kit::auth::{Caller, Tokens};
use stratus_kit::cache::{get_or_load, Cache, WriteBack};
use stratus_kit::db::Db;
use stratus_kit::http_cache;
use stratus_kit::openapi::Api;
use stratus_kit::paging::Paging;
use stratus_kit::{Json, Problem};

use crate::product::{Product, ProductInput};

/// A product is a few KiB at most.
const MAX_BODY: usize = 64 * 1024;
const MAX_PAGE: i64 = 200;

#[derive(Clone)]
pub struct AppState {
    pub pool: Db,
    pub tokens: Arc<Tokens>,
    /// Products by id (cache-aside).
    pub products: Cache,
    /// View counts on their way to the database (write-back).
    pub views: WriteBack,
}

impl FromRef<AppState> for Arc<Tokens> {
    fn from_ref(state: &AppState) -> Self {
        state.tokens.clone()
    }
}

type Shared = State<AppState>;

/// Products are the same for everyone: any cache may keep a read for this many seconds...
const MAX_AGE: u32 = 5;
/// ...and serve it this many seconds more while it fetches a fresh one.
const STALE: u32 = 30;

/// The catalog's OpenAPI document (also through the gateway, at `/api/catalog/openapi.json`).
pub const OPENAPI: &str = include_str!("openapi.json");

/// Every route the catalog serves, each recorded against `openapi.json` by the kit's `Api`.
pub fn routes() -> Api<AppState> {
    Api::new(OPENAPI, "/api/catalog")
        .get("/api/catalog/products", list)
        .post("/api/catalog/products", create)
        .get("/api/catalog/products/{id}", fetch)
        .put("/api/catalog/products/{id}", update)
        .delete("/api/catalog/products/{id}", remove)
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    offset: Option<i64>,
}

type Row = (String, String, String, i64, i64, i64);

const COLUMNS: &str = "id, name, description, price_cents, stock, views";

fn product((id, name, description, price_cents, stock, views): Row) -> Product {
    Product {
        id,
        name,
        description,
        price_cents,
        stock,
        views,
    }
}

async fn load(pool: &Db, id: &str) -> Result<Option<Product>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(&format!("SELECT {COLUMNS} FROM products WHERE id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(product))
}

/// Writes one batch of view increments in one transaction, then invalidates those products so
/// their next read shows the new count.
pub async fn flush_views(
    pool: &Db,
    products: &Cache,
    batch: Vec<(String, i64)>,
) -> anyhow::Result<()> {
    let mut tx = pool.begin().await?;
    for (id, by) in &batch {
        sqlx::query("UPDATE products SET views = views + $1 WHERE id = $2")
            .bind(*by)
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    for (id, _) in &batch {
        products.invalidate(id).await;
    }
    Ok(())
}

async fn list(
    State(state): Shared,
    page: Result<Query<Page>, QueryRejection>,
) -> Result<impl IntoResponse, Problem> {
    // axum's own rejection is plain text; a client of this API gets problem+json for every error.
    let Query(page) = page.map_err(|e| Problem::bad_request(e.body_text()))?;
    let Paging { limit, offset } = Paging::checked(page.limit, page.offset, MAX_PAGE)?;
    let rows: Vec<Row> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM products ORDER BY id LIMIT $1 OFFSET $2"
    ))
    .bind(limit)
    .bind(offset)
    .fetch_all(&state.pool)
    .await?;
    Ok((
        [
            (header::CACHE_CONTROL, http_cache::public(MAX_AGE, STALE)),
            http_cache::surrogate_keys([LIST_KEY]),
        ],
        axum::Json(rows.into_iter().map(product).collect::<Vec<_>>()),
    ))
}

async fn fetch(State(state): Shared, Path(id): Path<String>) -> Result<impl IntoResponse, Problem> {
    let (found, outcome) = get_or_load(&state.products, &id, || load(&state.pool, &id)).await?;
    let product = found.ok_or_else(|| Problem::not_found(format!("no product {id}")))?;
    state.views.add(&id, 1);
    Ok((
        [
            (header::CACHE_CONTROL, http_cache::public(MAX_AGE, STALE)),
            http_cache::surrogate_keys([product_key(&id)]),
        ],
        outcome,
        axum::Json(product),
    ))
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
        views: 0,
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
        [http_cache::surrogate_keys([LIST_KEY])],
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
    // The database changed first, so a read that fills the cache from now on sees the new row.
    state.products.invalidate(&id).await;
    let updated = load(&state.pool, &id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no product {id}")))?;
    let changed = http_cache::surrogate_keys([product_key(&id).as_str(), LIST_KEY]);
    Ok(([changed], axum::Json(updated)))
}

async fn remove(
    State(state): Shared,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, Problem> {
    caller.require_role_or_permission("admin", "catalog:write")?;
    let result = sqlx::query("DELETE FROM products WHERE id = $1")
        .bind(&id)
        .execute(&state.pool)
        .await?;
    if !stratus_kit::db::changed(&result) {
        return Err(Problem::not_found(format!("no product {id}")));
    }
    state.products.invalidate(&id).await;
    let changed = http_cache::surrogate_keys([product_key(&id).as_str(), LIST_KEY]);
    Ok((StatusCode::NO_CONTENT, [changed]))
}

/// The surrogate key of every answer that lists products (the gateway's edge cache purges by
/// it when a write's answer names it).
const LIST_KEY: &str = "products";

/// The surrogate key of one product's answers.
fn product_key(id: &str) -> String {
    format!("product-{id}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_openapi_document_describes_exactly_the_routes() {
        super::routes().check().unwrap();
    }
}
