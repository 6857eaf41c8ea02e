//! Role management for admins: list users, set a user's roles.

use axum::extract::Path;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::json;
use stratus_kit::{Json, Problem};
use stratus_token::{Claims, Verifier};

use crate::api::{AppState, Shared};
use crate::keys;
use crate::users::{self, User};

pub const MAX_ROLES: usize = 16;

/// Verifies the caller's bearer token against this service's own keys.
pub(crate) async fn verify_bearer(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Claims, Problem> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| Problem::unauthorized("a bearer token is required"))?;
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| {
            Problem::unauthorized("expected an `Authorization: Bearer <token>` header")
        })?;
    let jwks = keys::jwks(&state.pool, &state.sealer)
        .await
        .map_err(Problem::internal)?;
    Verifier::new(&jwks, &state.issuer, &state.audience)
        .verify(token)
        .map_err(|e| Problem::unauthorized(format!("invalid bearer token: {e}")))
}

/// Verifies the caller's token and requires `admin`.
pub(crate) async fn require_admin(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Claims, Problem> {
    let claims = verify_bearer(state, headers).await?;
    if !claims.has_role("admin") {
        return Err(Problem::forbidden("this needs the role `admin`"));
    }
    Ok(claims)
}

/// Verifies the caller's token and requires it to name a user (not a service account) that
/// still exists.
pub(crate) async fn require_user(state: &AppState, headers: &HeaderMap) -> Result<User, Problem> {
    let claims = verify_bearer(state, headers).await?;
    users::by_id(&state.pool, &claims.sub)
        .await
        .map_err(Problem::internal)?
        .ok_or_else(|| Problem::forbidden("only user accounts can do this"))
}

/// Role and permission names: short, lower case, `:`-separated words (`catalog:write`).
pub(crate) fn check_names(kind: &str, names: &[String]) -> Result<(), Problem> {
    if names.len() > MAX_ROLES {
        return Err(Problem::unprocessable(format!(
            "at most {MAX_ROLES} {kind}"
        )));
    }
    for name in names {
        let ok = !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b':')
            });
        if !ok {
            return Err(Problem::unprocessable(format!(
                "`{}` is not a valid {kind} name (lower-case letters, digits, '-', '_', ':')",
                name.chars().take(64).collect::<String>()
            )));
        }
    }
    Ok(())
}

pub async fn list_users(
    axum::extract::State(state): Shared,
    headers: HeaderMap,
) -> Result<impl IntoResponse, Problem> {
    require_admin(&state, &headers).await?;
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT id, email, roles FROM users ORDER BY id LIMIT 1000")
            .fetch_all(&state.pool)
            .await?;
    let users: Vec<_> = rows
        .into_iter()
        .map(|(id, email, roles)| {
            let roles: Vec<&str> = roles.split(',').filter(|r| !r.is_empty()).collect();
            json!({"id": id, "email": email, "roles": roles})
        })
        .collect();
    Ok(axum::Json(users))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolesBody {
    roles: Vec<String>,
}

pub async fn set_roles(
    axum::extract::State(state): Shared,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<RolesBody>,
) -> Result<impl IntoResponse, Problem> {
    let admin = require_admin(&state, &headers).await?;
    check_names("role", &body.roles)?;
    let mut roles = body.roles;
    roles.sort();
    roles.dedup();
    let result = sqlx::query("UPDATE users SET roles = $1 WHERE id = $2")
        .bind(roles.join(","))
        .bind(&id)
        .execute(&state.pool)
        .await?;
    if !stratus_kit::db::changed(&result) {
        return Err(Problem::not_found(format!("no user {id}")));
    }
    tracing::info!(user = %id, by = %admin.sub, roles = %roles.join(","), "roles changed");
    Ok(axum::Json(json!({"id": id, "roles": roles})))
}

/// `POST /auth/admin/keys/rotate`: a new signing key becomes current; the old ones stay in the
/// JWKS until the tokens they signed have expired (see `keys.rs`).
pub async fn rotate_keys(
    axum::extract::State(state): Shared,
    headers: HeaderMap,
) -> Result<impl IntoResponse, Problem> {
    let admin = require_admin(&state, &headers).await?;
    let (key, retiring) = keys::rotate(&state.pool, &state.sealer, state.access_ttl)
        .await
        .map_err(Problem::internal)?;
    let kid = key.kid().to_string();
    keys::install(&state.key, key);
    tracing::info!(kid = %kid, by = %admin.sub, "signing key rotated by an admin");
    Ok(axum::Json(json!({"kid": kid, "retiring": retiring})))
}
