//! The profile API, under `/api/profile`: each caller reads and writes only their own profile,
//! found by the `sub` of their token (the seeds' `/login` in auth, `/profile` here).
//!
//! Reads are **read-through** (`kit::cache::ReadThrough`: the loader is bound to the cache) and
//! answer `x-server-cache: hit|miss`; writes are **write-through** (`kit::cache::write_through`): the
//! database first, then the cache in the same call, so the next read is a hit with the new value.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, FromRef, State};
use axum::response::IntoResponse;
use stratus_kit::auth::{Caller, Tokens};
use stratus_kit::cache::{write_through, Cache, ReadThrough};
use stratus_kit::db::Db;
use stratus_kit::openapi::Api;
use stratus_kit::{Json, Problem};

use crate::profile::{Profile, ProfileInput};

/// A profile is well under a KiB.
const MAX_BODY: usize = 16 * 1024;

/// The profile API as an OpenAPI 3.0 document (`/openapi.json`, `/api/profile/openapi.json`).
pub const OPENAPI: &str = include_str!("openapi.json");

#[derive(Clone)]
pub struct AppState {
    pub pool: Db,
    pub tokens: Arc<Tokens>,
    pub profiles: ReadThrough<Profile, sqlx::Error>,
}

impl FromRef<AppState> for Arc<Tokens> {
    fn from_ref(state: &AppState) -> Self {
        state.tokens.clone()
    }
}

/// Profiles by `sub`, loaded from `pool` on a miss.
pub fn profiles(cache: Cache, pool: Db) -> ReadThrough<Profile, sqlx::Error> {
    ReadThrough::new(cache, move |sub: String| {
        let pool = pool.clone();
        Box::pin(async move { load(&pool, &sub).await })
    })
}

/// Every route the profile service serves, each recorded against `openapi.json` by the kit's `Api`.
pub fn routes() -> Api<AppState> {
    Api::new(OPENAPI, "/api/profile")
        .get("/api/profile/me", fetch)
        .put("/api/profile/me", store)
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

type Row = (String, String, Option<String>, Option<String>, String);

async fn load(pool: &Db, sub: &str) -> Result<Option<Profile>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT sub, display_name, address, phone, updated_at FROM profiles WHERE sub = $1",
    )
    .bind(sub)
    .fetch_optional(pool)
    .await?;
    Ok(
        row.map(|(sub, display_name, address, phone, updated_at)| Profile {
            sub,
            display_name,
            address,
            phone,
            updated_at,
        }),
    )
}

async fn fetch(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<impl IntoResponse, Problem> {
    let sub = caller.0.sub;
    let (found, outcome) = state.profiles.get(&sub).await?;
    let profile = found
        .ok_or_else(|| Problem::not_found("no profile yet; create it with PUT /api/profile/me"))?;
    Ok((outcome, axum::Json(profile)))
}

async fn store(
    State(state): State<AppState>,
    caller: Caller,
    Json(input): Json<ProfileInput>,
) -> Result<impl IntoResponse, Problem> {
    let input = input.validate().map_err(Problem::unprocessable)?;
    let profile = Profile {
        sub: caller.0.sub,
        display_name: input.display_name,
        address: input.address,
        phone: input.phone,
        updated_at: stratus_kit::now_rfc3339(),
    };
    let key = profile.sub.clone();
    let stored = write_through(state.profiles.cache(), &key, upsert(&state.pool, profile)).await?;
    tracing::info!(sub = %stored.sub, "profile saved");
    Ok(axum::Json(stored))
}

async fn upsert(pool: &Db, profile: Profile) -> Result<Profile, sqlx::Error> {
    sqlx::query(
        "INSERT INTO profiles (sub, display_name, address, phone, updated_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (sub) DO UPDATE SET display_name = excluded.display_name, address = excluded.address, \
         phone = excluded.phone, updated_at = excluded.updated_at",
    )
    .bind(&profile.sub)
    .bind(&profile.display_name)
    .bind(&profile.address)
    .bind(&profile.phone)
    .bind(&profile.updated_at)
    .execute(pool)
    .await?;
    Ok(profile)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_openapi_document_describes_exactly_the_routes() {
        super::routes().check().unwrap();
    }
}
